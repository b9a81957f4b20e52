"""How closely fast mode reproduces exact mode: computed, never asserted by hand.

For each class: Pearson r between the two heatmaps (over the breast box, where both are
defined), the largest absolute difference, and whether both modes report the same findings
(same number of regions above threshold, and each exact box matched by a fast box with
IoU >= 0.5).
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np

from ..vocabulary import box_iou
from .predictor import PredictionResult


def mode_agreement(exact: PredictionResult, fast: PredictionResult) -> Dict[str, Dict[str, float]]:
    """Per-class agreement of two results for the same image (see module docstring)."""
    if exact.heatmaps.shape != fast.heatmaps.shape:
        raise ValueError(f"heatmap shapes differ: {exact.heatmaps.shape} vs {fast.heatmaps.shape}")
    support = (exact.heatmaps.max(axis=0) > 0) | (fast.heatmaps.max(axis=0) > 0)
    result: Dict[str, Dict[str, float]] = {}
    for k, name in enumerate(exact.classes):
        a, b = exact.heatmaps[k][support], fast.heatmaps[k][support]
        if a.size < 2 or a.std() == 0 or b.std() == 0:
            r = 1.0 if np.allclose(a, b) else 0.0
        else:
            r = float(np.corrcoef(a, b)[0, 1])
        boxes_a = [f.box_px for f in exact.findings if f.category == name]
        boxes_b = [f.box_px for f in fast.findings if f.category == name]
        same = len(boxes_a) == len(boxes_b) and all(any(box_iou(x, y) >= 0.5 for y in boxes_b) for x in boxes_a)
        result[name] = {"pearson_r": r, "max_abs_diff": float(np.abs(a - b).max()) if a.size else 0.0,
                        "same_findings": float(same), "exact_findings": float(len(boxes_a)),
                        "fast_findings": float(len(boxes_b))}
    return result


def summarise_agreement(rows: List[Dict[str, Dict[str, float]]]) -> Dict[str, Dict[str, float]]:
    """Mean / minimum over images of each class's agreement figures."""
    summary: Dict[str, Dict[str, float]] = {}
    for name in rows[0]:
        rs = [row[name]["pearson_r"] for row in rows]
        summary[name] = {"mean_r": float(np.mean(rs)), "min_r": float(np.min(rs)),
                         "max_abs_diff": float(max(row[name]["max_abs_diff"] for row in rows)),
                         "same_findings_fraction": float(np.mean([row[name]["same_findings"] for row in rows]))}
    return summary


def top_findings_match(exact: PredictionResult, fast: PredictionResult) -> bool:
    """True when both modes report no finding, or their highest-scoring findings have the
    same class and each one's peak lies inside the other's box."""
    if not exact.findings or not fast.findings:
        return not exact.findings and not fast.findings
    a, b = exact.findings[0], fast.findings[0]

    def inside(peak, box) -> bool:
        return box[0] <= peak[0] <= box[2] and box[1] <= peak[1] <= box[3]

    return a.category == b.category and inside(a.peak_px, b.box_px) and inside(b.peak_px, a.box_px)
