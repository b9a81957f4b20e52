"""Metrics of the poster's table and beyond, computed from predictions (no hard-coded values).

Patch level (multi-label, threshold per class): accuracy, precision, recall, F1 and support
per class, "No Finding" included (true when a patch has no class, predicted when no class
passes its threshold); support-weighted averages with and without No Finding; ROC AUC
(Mann-Whitney); calibration (reliability bins, expected calibration error).
Image level: abnormal vs normal AUC from each image's maximum heatmap value.
Lesion level: FROC (sensitivity at given false positives per image).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..vocabulary import NO_FINDING, box_iou
from .numbers import fmt


def _binary_counts(truth: np.ndarray, pred: np.ndarray) -> Tuple[int, int, int, int]:
    tp = int(np.sum(truth & pred))
    fp = int(np.sum(~truth & pred))
    fn = int(np.sum(truth & ~pred))
    tn = int(np.sum(~truth & ~pred))
    return tp, fp, fn, tn


def binary_metrics(truth: np.ndarray, pred: np.ndarray) -> Dict[str, float]:
    """Accuracy, precision, recall, F1 and support of boolean arrays (0 where undefined)."""
    truth, pred = np.asarray(truth, bool), np.asarray(pred, bool)
    tp, fp, fn, tn = _binary_counts(truth, pred)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / max(len(truth), 1), "precision": precision, "recall": recall, "f1": f1,
            "support": int(truth.sum())}


def roc_auc(truth: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (probability a positive outranks a negative; ties count half).
    NaN when only one class is present."""
    truth = np.asarray(truth, bool)
    score = np.asarray(score, float)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), float)
    sorted_scores = score[order]
    i = 0
    while i < len(score):  # average ranks over ties
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def calibration(truth: np.ndarray, prob: np.ndarray, bins: int = 10) -> Dict[str, object]:
    """Reliability bins (mean predicted, observed frequency, count) and the expected
    calibration error (count-weighted |observed - predicted|)."""
    truth = np.asarray(truth, float).ravel()
    prob = np.asarray(prob, float).ravel()
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(prob, edges[1:-1]), 0, bins - 1)
    table = []
    ece = 0.0
    for b in range(bins):
        sel = index == b
        if not sel.any():
            table.append({"bin": b, "predicted": float("nan"), "observed": float("nan"), "count": 0})
            continue
        predicted, observed = float(prob[sel].mean()), float(truth[sel].mean())
        ece += sel.sum() / len(prob) * abs(observed - predicted)
        table.append({"bin": b, "predicted": predicted, "observed": observed, "count": int(sel.sum())})
    return {"ece": float(ece), "bins": table}


def patch_metrics(targets: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                  thresholds: Optional[Sequence[float]] = None) -> Dict[str, object]:
    """The poster's per-class table plus weighted averages, AUC and calibration."""
    targets = np.asarray(targets) > 0.5
    probs = np.asarray(probs, float)
    thresholds = np.asarray(thresholds if thresholds is not None else [0.5] * len(classes), float)
    predicted = probs >= thresholds[None, :]
    rows: Dict[str, Dict[str, float]] = {}
    rows[NO_FINDING] = binary_metrics(~targets.any(axis=1), ~predicted.any(axis=1))
    rows[NO_FINDING]["auc"] = roc_auc(~targets.any(axis=1), 1.0 - probs.max(axis=1)) if len(probs) else float("nan")
    for k, name in enumerate(classes):
        rows[name] = binary_metrics(targets[:, k], predicted[:, k])
        rows[name]["auc"] = roc_auc(targets[:, k], probs[:, k])
    result: Dict[str, object] = {"per_class": rows}
    for label, names in (("", list(rows)), ("_without_no_finding", [n for n in rows if n != NO_FINDING])):
        support = np.array([rows[n]["support"] for n in names], float)
        for metric in ("accuracy", "precision", "recall", "f1"):
            values = np.array([rows[n][metric] for n in names])
            result[f"weighted_{metric}{label}"] = float((values * support).sum() / support.sum()) if support.sum() else 0.0
        result[f"support{label}"] = int(support.sum())
    present = targets.any(axis=0)
    result["calibration"] = calibration(targets[:, present], probs[:, present]) if present.any() else {"ece": float("nan"), "bins": []}
    return result


def poster_table_lines(patch: Dict[str, Any]) -> List[str]:
    """The poster's table (:func:`~.metrics.patch_metrics`) in Markdown: accuracy, precision,
    recall, F1, support and ROC AUC per class, the weighted averages and the calibration error."""
    lines = ["| class | accuracy | precision | recall | F1 | support | ROC AUC |", "|---|---|---|---|---|---|---|"]
    for name, m in patch["per_class"].items():
        lines.append(f"| {name} | {fmt(m['accuracy'])} | {fmt(m['precision'])} | {fmt(m['recall'])} | "
                     f"{fmt(m['f1'])} | {m['support']} | {fmt(m['auc'])} |")
    return lines + ["", f"Weighted average with No Finding: accuracy {fmt(patch['weighted_accuracy'])}, F1 "
                    f"{fmt(patch['weighted_f1'])} (support {patch['support']}).  ",
                    f"Weighted average without No Finding: accuracy "
                    f"{fmt(patch['weighted_accuracy_without_no_finding'])}, F1 "
                    f"{fmt(patch['weighted_f1_without_no_finding'])} (support {patch['support_without_no_finding']}).  ",
                    f"Expected calibration error: {fmt(patch['calibration']['ece'])}."]


def is_hit(detection_box, peak, truth_box, iou_threshold: float = 0.1) -> bool:
    """Our lesion-hit rule: the reported box overlaps the true box with IoU >= 0.1, or its peak
    lies inside the true box (heatmap regions are coarser than radiologists' boxes)."""
    inside = truth_box[0] <= peak[0] <= truth_box[2] and truth_box[1] <= peak[1] <= truth_box[3]
    return inside or box_iou(detection_box, truth_box) >= iou_threshold


#: The lesion-hit rule's signature: (detection box, peak, true box) -> hit.
HitRule = Callable[[tuple, tuple, tuple], bool]

#: What :func:`match_image` says of a detection: it found a lesion not yet found, it lies on no
#: lesion (a false positive), or it found a lesion already found (neither; ``None``).
NEW_LESION, FALSE_POSITIVE, FOUND_AGAIN = True, False, None


def match_image(detections: Sequence[Tuple[float, tuple, tuple]], truths: Sequence[tuple], hit: HitRule = is_hit
                ) -> List[Tuple[float, Optional[bool]]]:
    """One image's detections matched to its true boxes, highest score first (ties in the given
    order): ``(score, NEW_LESION / FALSE_POSITIVE / FOUND_AGAIN)`` each. Matching never crosses
    images, so every pooled figure (FROC, its bootstrap, operating thresholds) only has to merge
    these lists by score instead of matching boxes again."""
    found: set = set()
    out: List[Tuple[float, Optional[bool]]] = []
    for score, box, peak in sorted(detections, key=lambda d: -d[0]):
        match = next((j for j, t in enumerate(truths) if j not in found and hit(box, peak, t)), None)
        if match is not None:
            found.add(match)
            out.append((score, NEW_LESION))
        else:
            out.append((score, FOUND_AGAIN if any(hit(box, peak, t) for t in truths) else FALSE_POSITIVE))
    return out


def merged_by_score(per_image: Sequence[Sequence[Tuple[float, Optional[bool]]]]
                    ) -> List[Tuple[float, Optional[bool]]]:
    """The images' matched detections in one list, highest score first; ties keep image order."""
    return sorted((m for matched in per_image for m in matched), key=lambda m: -m[0])


def froc(detections: List[List[Tuple[float, tuple, tuple]]], truths: List[List[tuple]],
         fp_rates: Sequence[float] = (0.25, 0.5, 1, 2, 4), hit: HitRule = is_hit) -> Dict[str, object]:
    """FROC over images.

    Args:
        detections: per image, a list of (score, box, peak).
        truths: per image, a list of true boxes.
        hit: ``hit(box, peak, truth)`` -> bool, the lesion-hit rule (:func:`is_hit` by default).
    Returns sensitivity at each false-positive rate per image, and the curve.
    """
    n_images = len(truths)
    n_truth = sum(len(t) for t in truths)
    matched = merged_by_score([match_image(d, t, hit) for d, t in zip(detections, truths)])
    curve = [(0.0, 0.0)]
    fps = found = 0
    for _, outcome in matched:
        if outcome is FOUND_AGAIN:
            continue  # a second detection of an already-found lesion is neither TP nor FP
        fps += outcome is FALSE_POSITIVE
        found += outcome is NEW_LESION
        curve.append((fps / max(n_images, 1), found / max(n_truth, 1)))
    sensitivity = {}
    for rate in fp_rates:
        reachable = [s for f, s in curve if f <= rate]
        sensitivity[str(rate)] = float(max(reachable)) if reachable and n_truth else float("nan")
    return {"sensitivity_at_fp": sensitivity, "curve": curve, "lesions": n_truth, "images": n_images}
