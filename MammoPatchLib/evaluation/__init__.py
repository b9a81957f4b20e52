"""Evaluation: the poster's patch table, AUC, calibration, image-level AUC and FROC."""
