"""Writing one image's results, and a batch's summary, atomically.

Per image, in ``<out>/<image stem>/``:
- ``heatmap_<class>.nrrd`` (or .nii.gz): per-class probability maps, float32, source geometry;
- ``labelmap.nrrd``: uint8 label map (0 = no finding, k = class k) with the class names in
  ``labelmap.json``;
- ``findings.json`` (source metadata, model, findings) and ``findings.csv`` (one row per finding);
- ``overlay.png``: the mammogram with the heatmap and labelled boxes.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Dict, List, Sequence

from .errors import MammoPatchError
from .inference.predictor import PredictionResult
from .io import atomic_path, write_png, write_volume
from .visualize import heatmap_overlay
from .vocabulary import PathLike

FINDING_CSV_COLUMNS = ["image", "class", "score", "xmin_px", "ymin_px", "xmax_px", "ymax_px",
                       "xmin_mm", "ymin_mm", "xmax_mm", "ymax_mm", "area_mm2"]
VOLUME_FORMATS = {"nrrd": ".nrrd", "nifti": ".nii.gz"}


def class_slug(name: str) -> str:
    """'Suspicious Calcification' -> 'suspicious_calcification' (for file names)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _write_text(path: Path, text: str, overwrite: bool) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text)


def write_result(result: PredictionResult, out_dir: PathLike, formats: Sequence[str] = ("nrrd",),
                 overwrite: bool = False) -> Dict[str, List[str]]:
    """Write every output of one image; returns the written paths by kind.

    Raises:
        MammoPatchError: when outputs exist already and ``overwrite`` is False (nothing is
            written then), or an unknown format is asked for.
    """
    out = Path(out_dir)
    unknown = [f for f in formats if f not in VOLUME_FORMATS]
    if unknown:
        raise MammoPatchError(f"unknown output format(s) {unknown}; choose from {sorted(VOLUME_FORMATS)}")
    if not overwrite and (out / "findings.json").exists():
        raise MammoPatchError("outputs exist already (use --overwrite / overwrite=True to replace them)", out)
    geometry = result.image.geometry
    written: Dict[str, List[str]] = {"heatmaps": [], "labelmap": [], "findings": [], "overlay": []}
    for fmt in formats:
        ext = VOLUME_FORMATS[fmt]
        for k, name in enumerate(result.classes):
            written["heatmaps"].append(write_volume(result.heatmaps[k], geometry, out / f"heatmap_{class_slug(name)}{ext}"))
        written["labelmap"].append(write_volume(result.label_map, geometry, out / f"labelmap{ext}"))
    labels = {"0": "No Finding", **{str(k + 1): name for k, name in enumerate(result.classes)}}
    _write_text(out / "labelmap.json", json.dumps(labels, indent=1), True)
    document = {
        "source": result.image.metadata(),
        "model": result.model_info,
        "mode": result.mode,
        "classes": result.classes,
        "thresholds": result.thresholds,
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "findings": [f.to_dict() for f in result.findings],
    }
    _write_text(out / "findings.json", json.dumps(document, indent=1), True)
    written["findings"].append(str(out / "findings.json"))
    with atomic_path(out / "findings.csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
            writer = csv.writer(handle)
            writer.writerow(FINDING_CSV_COLUMNS)
            for f in result.findings:
                writer.writerow([result.image.path, f.category, f"{f.score:.4f}", *f.box_px,
                                 *(f"{v:.2f}" for v in f.box_mm), f"{f.area_mm2:.1f}"])
    written["findings"].append(str(out / "findings.csv"))
    overlay = heatmap_overlay(result.image.pixels, result.heatmaps.max(axis=0), result.findings, result.classes)
    written["overlay"].append(write_png(overlay, out / "overlay.png"))
    return written


SUMMARY_COLUMNS = ["image", "status", "error", "findings", "top_class", "top_score", "seconds", "output", "warnings"]


def write_summary(rows: List[Dict[str, object]], path: PathLike) -> str:
    """The batch's summary CSV: one row per input, ok or failed with the error."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
            writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return os.fspath(path)
