"""What a prediction leaves behind: one image's files (heatmaps, label map, findings, overlay;
:mod:`.files`), its DICOM outputs (SEG, SC, SR; :mod:`.dicom`) and the PACS exchange
(:mod:`.dicomweb`). Import the modules themselves: this package file imports nothing, so
importing one of them does not load the others."""
