"""Writing one image's results, and a batch's summary, atomically.

Per image, in ``<out>/<image stem>/``:
- ``heatmap_<class>.nrrd`` (or .nii.gz): per-class probability maps, float32, compressed, on the
  network's own cells (one voxel per cell, e.g. 32 px at the model's spacing) placed in the
  source image's frame, so viewers overlay them in place (at every source pixel on request:
  ``full_resolution_heatmaps``);
- ``labelmap.nrrd``: uint8 label map (0 = no finding, k = class k) with the class names in
  ``labelmap.json``;
- ``findings.json`` (source metadata, model, findings, the image score and each learned class's
  highest heatmap value, which an image of the other breast is read against:
  :func:`breast_scores_of`; a class the model never learned has no maximum and a null threshold)
  and ``findings.csv`` (one row per finding);
- ``overlay.png``: the mammogram with the heatmap and labelled boxes.

The choices (volume formats, which heatmaps, their type) are the shared vocabulary's.
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

from ..errors import MammoPatchError
from ..inference.predictor import PredictionResult
from ..other_breast import BreastScores
from ..io import atomic_path, write_png, write_volume
from ..io.image import ImageGeometry
from ..inference.resample import CellGrid
from ..visualize import heatmap_overlay
from ..vocabulary import (HEATMAP_CHOICES, HEATMAP_DTYPES, VOLUME_FORMATS, HeatmapChoice, HeatmapDtype, PathLike,  # noqa: F401
                          class_slug, heatmap_stem)  # the file-name mappings, also used from here

#: File names inside an image's output folder (the readers below and the manifest use them).
FINDINGS_FILE = "findings.json"
FINDINGS_CSV_FILE = "findings.csv"
LABELMAP_LEGEND_FILE = "labelmap.json"
LABELMAP_STEM = "labelmap"
OVERLAY_FILE = "overlay.png"

FINDING_CSV_COLUMNS = ["image", "class", "score", "xmin_px", "ymin_px", "xmax_px", "ymax_px",
                       "xmin_mm", "ymin_mm", "xmax_mm", "ymax_mm", "area_mm2"]


def _write_text(path: Path, text: str, overwrite: bool) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text)


@dataclass
class OutputOptions:
    """What is written per image besides findings (JSON, CSV), label map and overlay, which are
    always written.

    Attributes:
        formats: volume formats of the heatmaps and label map ("nrrd", "nifti").
        heatmaps: "none", "selected" (the classes reported: ``--classes``, else the model's
            trained classes; the default, sized for batch runs) or "all" (every output).
        full_resolution_heatmaps: write heatmaps at every source pixel (a 3000 x 2400 image:
            29 MB of float32 per class before compression) instead of on the network's cells
            (the default: all they hold; a viewer's linear interpolation, zero outside the
            analysed region findings.json records, gives the full-resolution map back). A run
            at several scales writes full resolution: no one cell grid holds its heatmaps.
        heatmap_spacing_mm: write heatmaps sampled at this pixel spacing (e.g. 1.0 mm) instead
            of on the network's cells.
        heatmap_dtype: "float32" probabilities, or "uint8" (probability x 255, a quarter of the
            size; NRRD / NIfTI writers have no float16).
        dicom: also write DICOM SEG, heatmap SEG, overlay SC and SR (DICOM inputs only).
        activation_maps: also write Grad-CAM maps (NRRD + PNG) of this many top findings.
    """

    formats: Tuple[str, ...] = ("nrrd",)
    heatmaps: str = HeatmapChoice.SELECTED.value
    full_resolution_heatmaps: bool = False
    heatmap_spacing_mm: Optional[float] = None
    heatmap_dtype: str = HeatmapDtype.FLOAT32.value
    dicom: bool = False
    activation_maps: int = 0

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
        if not isinstance(self.full_resolution_heatmaps, bool):
            raise MammoPatchError("full_resolution_heatmaps must be true or false, "
                                  f"got {self.full_resolution_heatmaps!r}")
        if self.full_resolution_heatmaps and self.heatmap_spacing_mm is not None:
            raise MammoPatchError("full-resolution heatmaps and a heatmap spacing exclude each other: choose one")
        if isinstance(self.activation_maps, bool) or not isinstance(self.activation_maps, int) \
                or self.activation_maps < 0:
            raise MammoPatchError(f"activation maps must be a whole number >= 0, got {self.activation_maps!r}")


def heatmap_classes(result: PredictionResult, choice: str, selected: Optional[Sequence[str]] = None) -> List[str]:
    """The classes whose heatmaps are written for ``choice``."""
    if choice == HeatmapChoice.NONE:
        return []
    if choice == HeatmapChoice.ALL:
        return list(result.classes)
    wanted = selected or result.reported_classes or result.classes
    return [c for c in result.classes if c in wanted]


def _heatmap_volumes(result: PredictionResult, options: OutputOptions, classes: Sequence[str]
                     ) -> Tuple[np.ndarray, ImageGeometry, Dict[str, object]]:
    """(maps of ``classes``, their volume geometry, what findings.json records of them): on the
    network's cells by default (when they lie on one: a single scale), else at every source
    pixel or every step-th pixel's block centre (``heatmap_spacing_mm``)."""
    geometry = result.image.geometry
    channels = [result.classes.index(c) for c in classes]
    if not options.full_resolution_heatmaps and options.heatmap_spacing_mm is None and result.on_one_cell_grid:
        maps, grid = result.cell_grid_heatmaps(channels)
        return maps, grid.geometry(geometry), _grid_record(grid)
    step = 1 if options.heatmap_spacing_mm is None else max(
        1, int(round(options.heatmap_spacing_mm / geometry.mean_spacing)))
    record: Dict[str, object] = {"grid": "pixels", "every_nth_pixel": step}
    if step == 1:
        return result.heatmaps_every(1, channels), geometry, record
    height, width = result.image.shape
    blocks = CellGrid(rows=np.arange(0, height, step) + (step - 1) / 2,  # each step x step block's centre
                      cols=np.arange(0, width, step) + (step - 1) / 2, region=(0, 0, width, height))
    return result.heatmaps_every(step, channels), blocks.geometry(geometry), record


def _grid_record(grid: CellGrid) -> Dict[str, object]:
    """findings.json's note of a cell grid: where its first cell's centre and its steps lie in
    source pixels, and the analysed region outside which the heatmaps are zero."""
    step = [float(grid.rows[1] - grid.rows[0]) if len(grid.rows) > 1 else None,
            float(grid.cols[1] - grid.cols[0]) if len(grid.cols) > 1 else None]
    return {"grid": "cells", "every_nth_pixel": None,
            "first_cell_centre_px": [float(grid.cols[0]), float(grid.rows[0])],
            "cell_px": [step[1], step[0]], "analysed_region_px": list(grid.region)}


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
    if not overwrite and (out / FINDINGS_FILE).exists():
        raise MammoPatchError("outputs exist already (use --overwrite / overwrite=True to replace them)", out)
    geometry = result.image.geometry
    written: Dict[str, List[str]] = {"heatmaps": [], "labelmap": [], "findings": [], "overlay": [], "dicom": []}
    classes = heatmap_classes(result, options.heatmaps, selected_classes)
    maps, map_geometry, grid_record = _heatmap_volumes(result, options, classes) if classes else (None, None, {})
    volumes = []  # (kind, array, geometry, path): compressed in parallel threads (SimpleITK releases the GIL)
    for fmt in options.formats:
        ext = VOLUME_FORMATS[fmt]
        for name, values in zip(classes, maps if classes else []):
            if options.heatmap_dtype == HeatmapDtype.UINT8:
                values = np.rint(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)
            volumes.append(("heatmaps", values, map_geometry, out / f"{heatmap_stem(name)}{ext}"))
        volumes.append(("labelmap", result.label_map, geometry, out / f"{LABELMAP_STEM}{ext}"))
    with ThreadPoolExecutor(max_workers=max(1, min(len(volumes), os.cpu_count() or 1, 8))) as pool:
        paths = list(pool.map(lambda v: write_volume(v[1], v[2], v[3]), volumes))
    for (kind, *_), path in zip(volumes, paths):
        written[kind].append(path)
    labels = {"0": "No Finding", **{str(k + 1): name for k, name in enumerate(result.classes)}}
    _write_text(out / LABELMAP_LEGEND_FILE, json.dumps(labels, indent=1), True)
    scores = result.breast_scores()
    document = {
        "source": result.image.metadata(),
        "model": result.model_record(),
        "mode": result.mode,
        "classes": result.classes,
        "thresholds": result.learned_thresholds(),
        "image_score": scores.image_score,
        "class_maxima": scores.class_maxima,
        "other_breast": result.other_breast or None,
        "heatmaps": {"classes": classes, "spacing_mm": [map_geometry.spacing[1], map_geometry.spacing[0]]
                     if classes else None, **grid_record, "dtype": options.heatmap_dtype,
                     "scale": (1 / 255) if options.heatmap_dtype == HeatmapDtype.UINT8 else 1.0},
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "findings": [f.to_dict() for f in result.findings],
    }
    _write_text(out / FINDINGS_FILE, json.dumps(document, indent=1), True)
    written["findings"].append(str(out / FINDINGS_FILE))
    with atomic_path(out / FINDINGS_CSV_FILE) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
            writer = csv.writer(handle)
            writer.writerow(FINDING_CSV_COLUMNS)
            for f in result.findings:
                writer.writerow([result.image.path, f.category, f"{f.score:.4f}", *f.box_px,
                                 *(f"{v:.2f}" for v in f.box_mm), f"{f.area_mm2:.1f}"])
    written["findings"].append(str(out / FINDINGS_CSV_FILE))
    overlay_step = max(1, int(np.ceil(max(result.image.shape) / 1400)))
    shown = [result.classes.index(c) for c in (heatmap_classes(result, "selected", selected_classes) or result.classes)]
    overlay = heatmap_overlay(result.image.pixels, result.heatmaps_every(overlay_step, shown).max(axis=0),
                              result.findings, result.classes)
    written["overlay"].append(write_png(overlay, out / OVERLAY_FILE))
    if options.dicom:
        from .dicom import write_dicom_outputs

        full_size = maps if grid_record.get("every_nth_pixel") == 1 else None  # the SEG needs every pixel
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


def findings_document(folder: PathLike) -> Optional[Dict[str, object]]:
    """The ``findings.json`` document an earlier run wrote to ``folder``, or None when that file
    is missing, unreadable or not a JSON object."""
    try:
        document = json.loads((Path(folder) / FINDINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def findings_of(document: Optional[Dict[str, object]]) -> Optional[List[Dict[str, object]]]:
    """The findings of a ``findings.json`` document (:func:`findings_document`), None without."""
    findings = document.get("findings") if document is not None else None
    return findings if isinstance(findings, list) else None


def breast_scores_of(document: Optional[Dict[str, object]]) -> Optional[BreastScores]:
    """What an image of the other breast is read against of the image a ``findings.json``
    document describes (:meth:`PredictionResult.breast_scores`), or None when it does not
    record it (written before findings.json recorded each class's highest heatmap value)."""
    if document is None:
        return None
    maxima, score, source = document.get("class_maxima"), document.get("image_score"), document.get("source")
    if not isinstance(maxima, dict) or not _is_number(score) or not all(_is_number(v) for v in maxima.values()):
        return None
    image = source.get("path") if isinstance(source, dict) else None
    return BreastScores(str(image or ""), {str(c): float(v) for c, v in maxima.items()}, float(score))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
