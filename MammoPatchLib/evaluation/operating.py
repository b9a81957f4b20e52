"""Operating points fitted on out-of-fold predictions, and what a user sees at them.

An operating point is the per-class thresholds (at most ``fp_per_image`` false positives per
image per class) and the image gate (at most ``normal_with_finding`` of the normal images get a
finding). The nested view fits each fold's point on the other folds' out-of-fold cases only, so
the figures never judge a fold at thresholds chosen on it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from .lesions import ImageCase, gated, image_gate, operating_thresholds
from .metrics import is_hit
from .out_of_fold import OutOfFold


def image_level_view(cases: Sequence[ImageCase], thresholds: Dict[str, float]) -> Dict[str, float]:
    """At per-class thresholds: share of abnormal images with a finding, of normal images
    with none, false findings per image and the share of lesions hit by a finding."""
    abnormal = [c for c in cases if c.abnormal]
    normal = [c for c in cases if not c.abnormal]

    def findings(case: ImageCase):
        return [(name, d) for name, dets in case.detections.items() if name in thresholds
                for d in dets if d[0] >= thresholds[name]]

    false, hit, lesions = 0, 0, 0
    for case in cases:
        kept = findings(case)
        for name, (score, box, peak) in kept:
            if not any(is_hit(box, peak, t) for t in case.truths.get(name, [])):
                false += 1
        for name, truths in case.truths.items():
            if name not in thresholds:
                continue
            for truth in truths:
                lesions += 1
                hit += any(n == name and is_hit(b, p, truth) for n, (s, b, p) in kept)
    return {"abnormal_with_finding": float(np.mean([bool(findings(c)) for c in abnormal])) if abnormal else float("nan"),
            "normal_without_finding": float(np.mean([not findings(c) for c in normal])) if normal else float("nan"),
            "false_findings_per_image": false / max(len(cases), 1),
            "lesions_hit": hit / max(lesions, 1), "lesions": lesions,
            "abnormal": len(abnormal), "normal": len(normal)}


def above(case: ImageCase, thresholds: Dict[str, float]) -> ImageCase:
    """``case`` with only the findings at or above their class's threshold."""
    return replace(case, detections={name: [d for d in case.detections.get(name, []) if d[0] >= thresholds[name]]
                                     for name in thresholds})


def operating_point(cases: Sequence[ImageCase], recipe: Mapping[str, Any]) -> Tuple[Dict[str, float], float]:
    """The recipe's operating point fitted on ``cases``: per-class thresholds (at most
    ``fp_per_image`` false positives per image per class), then the image gate that keeps the
    share of normal images with a finding within ``normal_with_finding`` (1.0: no gate)."""
    classes = list(recipe["classes"])
    thresholds = dict(zip(classes, operating_thresholds(cases, classes, fp_per_image=recipe["fp_per_image"])))
    if recipe["normal_with_finding"] >= 1.0:
        return thresholds, 0.0
    return thresholds, image_gate([above(c, thresholds) for c in cases], recipe["normal_with_finding"])


def nested_operating_view(outcome: OutOfFold, draws: int = 1000) -> Dict[str, Any]:
    """The image-level view with each fold's operating point fitted on the other folds'
    out-of-fold predictions, pooled over folds."""
    judged: List[ImageCase] = []
    fold_thresholds, fold_gates = {}, {}
    for fold in sorted(set(outcome.fold_of_image.values())):
        others = [c for c in outcome.cases if outcome.fold_of_image[c.image_id] != fold]
        mine = [c for c in outcome.cases if outcome.fold_of_image[c.image_id] == fold]
        fold_thresholds[fold], fold_gates[fold] = operating_point(others, outcome.recipe)
        judged.extend(gated(above(case, fold_thresholds[fold]), fold_gates[fold]) for case in mine)
    view = image_level_view(judged, {name: 0.0 for name in outcome.classes})  # already thresholded per fold
    view["intervals"] = image_level_intervals(judged, draws)
    view["thresholds_by_fold"] = {str(k): v for k, v in fold_thresholds.items()}
    view["image_gate_by_fold"] = {str(k): v for k, v in fold_gates.items()}
    return view


def image_level_intervals(judged: Sequence[ImageCase], draws: int = 1000, seed: int = 0) -> Dict[str, List[float]]:
    """95 % bootstrap intervals over women of the shares of abnormal images with a finding and
    of normal images without one (``judged``: cases already cut at their operating point)."""
    women: Dict[str, List[Tuple[bool, bool]]] = {}
    for case in judged:
        women.setdefault(case.patient_id, []).append((case.abnormal, any(case.detections.values())))
    names = sorted(women)
    rng = np.random.default_rng(seed)
    samples: Dict[str, List[float]] = {"abnormal_with_finding": [], "normal_without_finding": []}
    for _ in range(draws):
        drawn = [image for k in rng.integers(0, len(names), len(names)) for image in women[names[k]]]
        abnormal = [found for is_abnormal, found in drawn if is_abnormal]
        normal = [not found for is_abnormal, found in drawn if not is_abnormal]
        if abnormal and normal:
            samples["abnormal_with_finding"].append(float(np.mean(abnormal)))
            samples["normal_without_finding"].append(float(np.mean(normal)))
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else [float("nan")] * 2
            for k, v in samples.items()}
