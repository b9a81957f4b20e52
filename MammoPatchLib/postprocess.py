"""From per-class heatmaps to a label map and a list of findings.

- Label map: 0 = no finding; k = class k (1-based, model class order) where class k's
  probability passes its threshold; where several pass, the one with the highest probability.
- Findings: for each class, the 8-connected regions of the thresholded heatmap become a box
  with the class, the peak probability inside the region, and the region's area in mm^2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
from scipy import ndimage


@dataclass
class DetectedFinding:
    """One reported finding. Boxes are (xmin, ymin, xmax, ymax): pixels of the source image
    (x = column) and, for ``box_mm``, mm from the image's first pixel corner."""

    category: str
    score: float
    box_px: Tuple[int, int, int, int]
    box_mm: Tuple[float, float, float, float]
    area_mm2: float
    peak_px: Tuple[int, int]

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


def label_map_from_heatmaps(heatmaps: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """(classes, H, W) probabilities -> (H, W) uint8 labels (0 = none, k = class k)."""
    thresholds = np.asarray(thresholds, dtype=np.float32)[:, None, None]
    if thresholds.shape[0] != heatmaps.shape[0]:
        raise ValueError(f"{heatmaps.shape[0]} heatmaps but {thresholds.shape[0]} thresholds")
    passing = np.where(heatmaps >= thresholds, heatmaps, -1.0)
    best = passing.argmax(axis=0)
    labels = (best + 1).astype(np.uint8)
    labels[passing.max(axis=0) < 0] = 0
    return labels


def findings_from_heatmaps(heatmaps: np.ndarray, classes: Sequence[str], thresholds: Sequence[float],
                           spacing_rc: Tuple[float, float], min_area_mm2: float = 0.0) -> List[DetectedFinding]:
    """Connected regions above threshold, per class, sorted by descending score."""
    row_mm, col_mm = spacing_rc
    found: List[DetectedFinding] = []
    structure = np.ones((3, 3), dtype=bool)
    for k, (name, threshold) in enumerate(zip(classes, thresholds)):
        heat = heatmaps[k]
        mask = heat >= threshold
        if not mask.any():
            continue
        labels, _ = ndimage.label(mask, structure=structure)
        # Per region, work inside its bounding box only: O(region area), unlike
        # ndimage.maximum_position, which sorts the whole image.
        for region, slc in enumerate(ndimage.find_objects(labels), start=1):
            if slc is None:
                continue
            inside = labels[slc] == region
            area_mm2 = float(inside.sum()) * row_mm * col_mm
            if area_mm2 < min_area_mm2:
                continue
            local = np.where(inside, heat[slc], -np.inf)
            pr, pc = np.unravel_index(int(np.argmax(local)), local.shape)
            peak = (slc[0].start + pr, slc[1].start + pc)
            y0, y1, x0, x1 = slc[0].start, slc[0].stop, slc[1].start, slc[1].stop
            found.append(DetectedFinding(
                category=name, score=float(heat[peak]), box_px=(int(x0), int(y0), int(x1), int(y1)),
                box_mm=(x0 * col_mm, y0 * row_mm, x1 * col_mm, y1 * row_mm), area_mm2=area_mm2,
                peak_px=(int(peak[1]), int(peak[0])),
            ))
    return sorted(found, key=lambda f: -f.score)
