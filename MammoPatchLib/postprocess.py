"""From per-class heatmaps to findings (detections) and a label map.

Findings are detections, not thresholded regions: for each class, the local maxima of its
heatmap above the class threshold, at least ``min_distance_mm`` apart, each with a box from
the heatmap's extent around it (the watershed basin of the peak, where the heatmap is at
least ``relative_extent`` x the peak, at most one window across), non-maximum suppression
between boxes of the same class, and at most ``max_per_class`` per class. With
``one_class_per_place``, the same suppression then runs across classes: a place is reported
once, as its highest-scoring class. The label map
paints each finding's region with its class (1-based, model class order), higher scores on
top, so it shows exactly what the findings list says.

Detections run on a coarse grid of the source image (``grid_mm``, 1.6 mm by default: 8 px at
the bundled model's 0.2 mm, a quarter of a heatmap cell), so their cost does not grow with
the image's pixel count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .config import config_from_dict, config_to_dict
from .vocabulary import box_iou


@dataclass
class DetectedFinding:
    """One reported finding. Boxes are (xmin, ymin, xmax, ymax): pixels of the source image
    (x = column; pixel edges) and, for ``box_mm``, mm from the image's first pixel corner.
    ``peak_px`` is the (x, y) pixel of the heatmap's maximum."""

    category: str
    score: float
    box_px: Tuple[int, int, int, int]
    box_mm: Tuple[float, float, float, float]
    area_mm2: float
    peak_px: Tuple[int, int]

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


@dataclass
class DetectionConfig:
    """How findings are picked from heatmaps (see module docstring).

    Attributes:
        grid_mm: detection grid spacing in mm.
        min_distance_mm: two findings of one class are at least this far apart (lesion scale).
        relative_extent: a finding's region is where the heatmap is >= this x its peak.
        max_per_class: at most this many findings per class and image.
        nms_iou: a box overlapping a higher-scoring box of its class by this IoU is dropped.
        max_box_mm: boxes are at most this wide and high (None: one window).
        suppress_inside: also drop a finding whose peak lies inside a higher-scoring box of its
            class (fewer duplicate false positives on the validation women; it can hide a
            second lesion under a large box).
        centre_fraction: a finding's location is the heat-weighted centre of the part of its
            region within this fraction of its peak (1: the maximum itself). A window-level
            classifier answers "this window holds a finding" for every window around it, so
            its heatmap can have a plateau whose centre marks the finding better than its
            maximum (made no difference on the validation women; 1 by default).
        image_threshold: findings are kept only on images whose score (the highest heatmap
            value of the reported classes) reaches it; 0: on every image. Fitted so that a
            bounded share of normal images gets a finding (:func:`~MammoPatchLib.evaluation.
            lesions.image_gate`).
        one_class_per_place: also suppress across classes (the ``nms_iou`` and
            ``suppress_inside`` rules), so one place gives one finding, of its highest-scoring
            class. A lesion lights up the heatmaps of several classes at once; reported per
            class, every extra class at the same place is a false positive for a reader and
            for the class-judged FROC, and the label map shows only one class there anyway.
    """

    grid_mm: float = 1.6
    min_distance_mm: float = 12.0
    relative_extent: float = 0.5
    max_per_class: int = 5
    nms_iou: float = 0.3
    max_box_mm: Optional[float] = None
    suppress_inside: bool = True
    centre_fraction: float = 1.0
    image_threshold: float = 0.0
    one_class_per_place: bool = False

    def to_dict(self) -> Dict[str, object]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values) -> "DetectionConfig":
        return config_from_dict(cls, values, "detection")

    def __post_init__(self) -> None:
        if not (self.grid_mm > 0 and self.min_distance_mm >= 0 and 0 < self.relative_extent <= 1
                and self.max_per_class >= 1 and 0 < self.nms_iou <= 1 and 0.0 <= self.image_threshold <= 1.0
                and isinstance(self.suppress_inside, bool) and isinstance(self.one_class_per_place, bool)):
            raise ValueError(f"invalid detection settings: {self}")


@dataclass
class _Candidate:
    klass: int
    score: float
    region: np.ndarray  # bool mask on the detection grid
    box_grid: Tuple[int, int, int, int]  # row0, row1, col0, col1 (exclusive ends)
    peak_grid: Tuple[int, int]


def _class_candidates(heat: np.ndarray, klass: int, threshold: float, config: DetectionConfig, cell_mm: float,
                      max_box_cells: int) -> List[_Candidate]:
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    if not np.isfinite(threshold) or float(heat.max()) < threshold:
        return []
    distance = max(1, int(round(config.min_distance_mm / cell_mm)))
    peaks = peak_local_max(heat, min_distance=distance, threshold_abs=threshold, exclude_border=False,
                           num_peaks=4 * config.max_per_class)
    if len(peaks) == 0:  # a plateau touching the border can hide its maximum from peak_local_max
        peaks = np.array([np.unravel_index(int(np.argmax(heat)), heat.shape)])
    values = heat[peaks[:, 0], peaks[:, 1]]
    order = np.argsort(-values, kind="stable")
    peaks, values = peaks[order], values[order]
    markers = np.zeros(heat.shape, dtype=np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1)
    floor = float(config.relative_extent * values.min())
    basins = watershed(-heat, markers, mask=heat >= floor)
    half = max_box_cells // 2
    out = []
    for index, ((r, c), value) in enumerate(zip(peaks, values), start=1):
        r0, r1 = max(0, r - half), min(heat.shape[0], r + half + 1)
        c0, c1 = max(0, c - half), min(heat.shape[1], c + half + 1)
        region = np.zeros(heat.shape, dtype=bool)
        region[r0:r1, c0:c1] = (basins[r0:r1, c0:c1] == index) & (heat[r0:r1, c0:c1] >= config.relative_extent * value)
        region[r, c] = True
        rows, cols = np.nonzero(region)
        centre = (int(r), int(c))
        if config.centre_fraction < 1.0:
            top = region & (heat >= config.centre_fraction * value)
            tr, tc = np.nonzero(top)
            weights = heat[tr, tc]
            centre = (int(round(float((tr * weights).sum() / weights.sum()))),
                      int(round(float((tc * weights).sum() / weights.sum()))))
        out.append(_Candidate(klass, float(value), region,
                              (int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1),
                              centre))
    return out


def _suppress(candidates: List[_Candidate], config: DetectionConfig, limit: Optional[int] = None
              ) -> List[_Candidate]:
    """``candidates`` highest score first, less those that clash with a kept one (box IoU >=
    ``nms_iou``, or, with ``suppress_inside``, a peak inside its box); at most ``limit`` kept
    (``max_per_class`` by default)."""
    limit = config.max_per_class if limit is None else limit
    kept: List[_Candidate] = []
    for cand in sorted(candidates, key=lambda c: -c.score):
        r0, r1, c0, c1 = cand.box_grid
        box = (c0, r0, c1, r1)
        clash = False
        for other in kept:
            o = other.box_grid
            other_box = (o[2], o[0], o[3], o[1])
            inside = config.suppress_inside and o[0] <= cand.peak_grid[0] < o[1] and o[2] <= cand.peak_grid[1] < o[3]
            if inside or box_iou(box, other_box) >= config.nms_iou:
                clash = True
                break
        if not clash:
            kept.append(cand)
        if len(kept) >= limit:
            break
    return kept


def _cap_per_class(candidates: List[_Candidate], limit: int) -> List[_Candidate]:
    """The ``limit`` highest-scoring candidates of each class, in the given (score) order."""
    counts: Dict[int, int] = {}
    kept = []
    for cand in candidates:
        counts[cand.klass] = counts.get(cand.klass, 0) + 1
        if counts[cand.klass] <= limit:
            kept.append(cand)
    return kept


def detect_findings(heat_grid: np.ndarray, classes: Sequence[str], thresholds: Sequence[float], factor: int,
                    spacing_rc: Tuple[float, float], source_shape: Tuple[int, int],
                    config: Optional[DetectionConfig] = None, max_box_px: Optional[float] = None
                    ) -> Tuple[List[DetectedFinding], List[Tuple[int, np.ndarray]]]:
    """Findings from (K, h, w) heatmaps sampled on the detection grid (every ``factor``-th
    source pixel).

    Returns:
        (findings sorted by descending score, [(1-based class label, region mask on the grid)]
        in the same order) - the regions feed :func:`label_map_from_findings`.
    """
    config = config or DetectionConfig()
    if len(thresholds) != heat_grid.shape[0]:
        raise ValueError(f"{heat_grid.shape[0]} heatmaps but {len(thresholds)} thresholds")
    row_mm, col_mm = spacing_rc
    cell_mm = factor * 0.5 * (row_mm + col_mm)  # the grid's actual cell size (config.grid_mm is the one asked for)
    box_px = max_box_px if max_box_px is not None else (
        config.max_box_mm / (0.5 * (row_mm + col_mm)) if config.max_box_mm else float("inf"))
    max_box_cells = int(min(max(heat_grid.shape) * 2 + 1, box_px / factor)) if np.isfinite(box_px) else \
        2 * max(heat_grid.shape) + 1
    reported = [k for k, t in enumerate(thresholds) if np.isfinite(t)]
    if config.image_threshold > 0 and (not reported or float(heat_grid[reported].max()) < config.image_threshold):
        return [], []  # below the image gate: the image has no findings
    kept: List[_Candidate] = []
    for k in range(heat_grid.shape[0]):
        candidates = _class_candidates(heat_grid[k], k, float(thresholds[k]), config, cell_mm, max(1, max_box_cells))
        # across classes, a class's places are capped only after the other classes have had their say
        kept += _suppress(candidates, config, limit=len(candidates) if config.one_class_per_place else None)
    kept.sort(key=lambda c: -c.score)
    if config.one_class_per_place:
        kept = _cap_per_class(_suppress(kept, config, limit=len(kept)), config.max_per_class)
    height, width = source_shape
    findings, regions = [], []
    for cand in kept:
        r0, r1, c0, c1 = cand.box_grid
        x0, y0 = c0 * factor, r0 * factor
        x1, y1 = min(width, c1 * factor), min(height, r1 * factor)
        pr, pc = cand.peak_grid
        peak = (int(min(width - 1, pc * factor + factor // 2)), int(min(height - 1, pr * factor + factor // 2)))
        findings.append(DetectedFinding(
            category=classes[cand.klass], score=cand.score, box_px=(int(x0), int(y0), int(x1), int(y1)),
            box_mm=(x0 * col_mm, y0 * row_mm, x1 * col_mm, y1 * row_mm),
            area_mm2=float(cand.region.sum()) * factor * factor * row_mm * col_mm, peak_px=peak))
        regions.append((cand.klass + 1, cand.region))
    return findings, regions


def label_map_from_findings(regions: Sequence[Tuple[int, np.ndarray]], grid_shape: Tuple[int, int], factor: int,
                            source_shape: Tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 label map: each finding's region painted with its label, the
    highest-scoring finding on top (``regions`` in descending score order)."""
    grid = np.zeros(grid_shape, dtype=np.uint8)
    for label, region in reversed(list(regions)):
        grid[region] = label
    full = np.repeat(np.repeat(grid, factor, axis=0), factor, axis=1)
    return np.ascontiguousarray(full[: source_shape[0], : source_shape[1]])
