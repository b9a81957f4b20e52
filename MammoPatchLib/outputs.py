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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import MammoPatchError
from .inference.predictor import PredictionResult
from .io import atomic_path, write_png, write_volume
from .io.image import ImageGeometry
from .visualize import heatmap_overlay
from .vocabulary import PathLike, class_slug  # noqa: F401 - class_slug: the file-name mapping, also used from here

FINDING_CSV_COLUMNS = ["image", "class", "score", "xmin_px", "ymin_px", "xmax_px", "ymax_px",
                       "xmin_mm", "ymin_mm", "xmax_mm", "ymax_mm", "area_mm2"]
VOLUME_FORMATS = {"nrrd": ".nrrd", "nifti": ".nii.gz"}


def _write_text(path: Path, text: str, overwrite: bool) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text)


HEATMAP_CHOICES = ("none", "selected", "all")
HEATMAP_DTYPES = ("float32", "uint8")


@dataclass
class OutputOptions:
    """What is written per image besides findings (JSON, CSV), label map and overlay, which are
    always written.

    Attributes:
        formats: volume formats of the heatmaps and label map ("nrrd", "nifti").
        heatmaps: "none", "selected" (the classes reported: ``--classes``, else the model's
            trained classes; the default, sized for batch runs) or "all" (every output).
        heatmap_spacing_mm: write heatmaps at this pixel spacing (e.g. 1.0 mm) instead of the
            source's: a 3000 x 2400 heatmap at 0.085 mm is 29 MB of float32, at 1 mm 0.2 MB.
        heatmap_dtype: "float32" probabilities, or "uint8" (probability x 255, a quarter of the
            size; NRRD / NIfTI writers have no float16).
        dicom: also write DICOM SEG, heatmap SEG, overlay SC and SR (DICOM inputs only).
    """

    formats: Tuple[str, ...] = ("nrrd",)
    heatmaps: str = "selected"
    heatmap_spacing_mm: Optional[float] = None
    heatmap_dtype: str = "float32"
    dicom: bool = False

    def __post_init__(self) -> None:
        self.formats = tuple(self.formats)
        unknown = [f for f in self.formats if f not in VOLUME_FORMATS]
        if unknown:
            raise MammoPatchError(f"unknown output format(s) {unknown}; choose from {sorted(VOLUME_FORMATS)}")
        if self.heatmaps not in HEATMAP_CHOICES:
            raise MammoPatchError(f"heatmaps must be one of {HEATMAP_CHOICES}, got {self.heatmaps!r}")
        if self.heatmap_dtype not in HEATMAP_DTYPES:
            raise MammoPatchError(f"heatmap dtype must be one of {HEATMAP_DTYPES}, got {self.heatmap_dtype!r}")
        if self.heatmap_spacing_mm is not None and not self.heatmap_spacing_mm > 0:
            raise MammoPatchError(f"heatmap spacing must be positive, got {self.heatmap_spacing_mm}")


def heatmap_classes(result: PredictionResult, choice: str, selected: Optional[Sequence[str]] = None) -> List[str]:
    """The classes whose heatmaps are written for ``choice``."""
    if choice == "none":
        return []
    if choice == "all":
        return list(result.classes)
    wanted = selected or result.model_info.get("reported_classes") or result.classes
    return [c for c in result.classes if c in wanted]


def _downsampled(result: PredictionResult, spacing_mm: Optional[float], classes: Sequence[str]):
    """(maps of ``classes``, geometry, step) of the heatmaps at ``spacing_mm`` (every step-th
    pixel's block centre)."""
    geometry = result.image.geometry
    channels = [result.classes.index(c) for c in classes]
    step = 1 if spacing_mm is None else max(1, int(round(spacing_mm / geometry.mean_spacing)))
    if step == 1:
        return result.heatmaps_every(1, channels), geometry, 1
    direction = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    shift = direction @ np.array([(step - 1) / 2 * geometry.spacing[0], (step - 1) / 2 * geometry.spacing[1], 0.0])
    coarse = ImageGeometry(spacing=(geometry.spacing[0] * step, geometry.spacing[1] * step, geometry.spacing[2]),
                           origin=tuple(float(o + d) for o, d in zip(geometry.origin, shift)),
                           direction=geometry.direction)
    return result.heatmaps_every(step, channels), coarse, step


def write_result(result: PredictionResult, out_dir: PathLike, formats: Optional[Sequence[str]] = None,
                 overwrite: bool = False, options: Optional[OutputOptions] = None,
                 selected_classes: Optional[Sequence[str]] = None) -> Dict[str, List[str]]:
    """Write every output of one image; returns the written paths by kind.

    Raises:
        MammoPatchError: when outputs exist already and ``overwrite`` is False (nothing is
            written then), or an option is invalid.
    """
    options = options or OutputOptions()
    if formats is not None:
        options = OutputOptions(**{**options.__dict__, "formats": tuple(formats)})
    out = Path(out_dir)
    if not overwrite and (out / "findings.json").exists():
        raise MammoPatchError("outputs exist already (use --overwrite / overwrite=True to replace them)", out)
    geometry = result.image.geometry
    written: Dict[str, List[str]] = {"heatmaps": [], "labelmap": [], "findings": [], "overlay": [], "dicom": []}
    classes = heatmap_classes(result, options.heatmaps, selected_classes)
    maps, map_geometry, step = _downsampled(result, options.heatmap_spacing_mm, classes) if classes else (None, None, 1)
    volumes = []  # (kind, array, geometry, path): compressed in parallel threads (SimpleITK releases the GIL)
    for fmt in options.formats:
        ext = VOLUME_FORMATS[fmt]
        for name, values in zip(classes, maps if classes else []):
            if options.heatmap_dtype == "uint8":
                values = np.rint(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)
            volumes.append(("heatmaps", values, map_geometry, out / f"heatmap_{class_slug(name)}{ext}"))
        volumes.append(("labelmap", result.label_map, geometry, out / f"labelmap{ext}"))
    with ThreadPoolExecutor(max_workers=max(1, min(len(volumes), os.cpu_count() or 1, 8))) as pool:
        paths = list(pool.map(lambda v: write_volume(v[1], v[2], v[3]), volumes))
    for (kind, *_), path in zip(volumes, paths):
        written[kind].append(path)
    labels = {"0": "No Finding", **{str(k + 1): name for k, name in enumerate(result.classes)}}
    _write_text(out / "labelmap.json", json.dumps(labels, indent=1), True)
    document = {
        "source": result.image.metadata(),
        "model": result.model_info,
        "mode": result.mode,
        "classes": result.classes,
        "thresholds": result.thresholds,
        "heatmaps": {"classes": classes, "spacing_mm": [map_geometry.spacing[1], map_geometry.spacing[0]]
                     if classes else None, "every_nth_pixel": step, "dtype": options.heatmap_dtype,
                     "scale": (1 / 255) if options.heatmap_dtype == "uint8" else 1.0},
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
    overlay_step = max(1, int(np.ceil(max(result.image.shape) / 1400)))
    shown = [result.classes.index(c) for c in (heatmap_classes(result, "selected", selected_classes) or result.classes)]
    overlay = heatmap_overlay(result.image.pixels, result.heatmaps_every(overlay_step, shown).max(axis=0),
                              result.findings, result.classes)
    written["overlay"].append(write_png(overlay, out / "overlay.png"))
    if options.dicom:
        from .dicom_outputs import write_dicom_outputs

        full_size = maps if step == 1 else None  # the SEG needs every pixel: reuse what the volumes had
        for path in write_dicom_outputs(result, out, classes, overlay_rgb=_full_size(overlay, result.image.shape),
                                        heatmaps=full_size).values():
            written["dicom"].append(path)
    return written


def _full_size(rgb: np.ndarray, shape) -> np.ndarray:
    """The overlay at the source's size (a Secondary Capture shows it in the source's place)."""
    from PIL import Image

    if rgb.shape[:2] == tuple(shape):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((shape[1], shape[0]), Image.BILINEAR))


SUMMARY_COLUMNS = ["image", "status", "error", "findings", "top_class", "top_score", "seconds", "output", "warnings",
                   "rank"]


def write_summary(rows: List[Dict[str, object]], path: PathLike, columns: Sequence[str] = SUMMARY_COLUMNS) -> str:
    """The batch's summary CSV: one row per input, ok or failed with the error (atomically)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return os.fspath(path)
