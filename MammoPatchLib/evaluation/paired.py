"""Paired comparison of two models on the same images: the bootstrap over women of the
difference of their figures, so "better" comes with an interval.

Both models' cases must cover the same images (e.g. two recipes' out-of-fold predictions on
the same folds). Each draw resamples women with replacement, recomputes both models' figures
on the same drawn women, and keeps the difference; the 2.5th / 97.5th percentiles give the
95 % interval, and the share of draws where the difference is positive says how often the
second model came out ahead.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from ..errors import MammoPatchError
from .lesions import FP_RATES, ImageCase, image_outcomes, pooled_figures

#: The figures compared: pooled sensitivity at each rate, the FROC score and the image AUC.
COMPARED = tuple(f"sens@{r}" for r in FP_RATES) + ("score", "image_auc")


def paired_difference(baseline: Sequence[ImageCase], other: Sequence[ImageCase], classes: Sequence[str],
                      draws: int = 1000, seed: int = 0) -> Dict[str, Dict[str, float]]:
    """{figure: {"difference", "low", "high", "share_better"}} of ``other`` minus ``baseline``."""
    by_image = {c.image_id: c for c in other}
    if set(by_image) != {c.image_id for c in baseline}:
        raise MammoPatchError("a paired comparison needs both models' predictions on the same images")
    women: Dict[str, List[int]] = {}
    for index, case in enumerate(baseline):
        women.setdefault(case.patient_id, []).append(index)
    first = [image_outcomes(c, classes) for c in baseline]
    second = [image_outcomes(by_image[c.image_id], classes) for c in baseline]
    names = sorted(women)
    a_all, b_all = pooled_figures(first), pooled_figures(second)
    observed = {k: b_all[k] - a_all[k] for k in COMPARED}
    rng = np.random.default_rng(seed)
    samples: Dict[str, List[float]] = {k: [] for k in COMPARED}
    for _ in range(draws):
        drawn = [i for k in rng.integers(0, len(names), len(names)) for i in women[names[k]]]
        a = pooled_figures([first[i] for i in drawn])
        b = pooled_figures([second[i] for i in drawn])
        for key in COMPARED:
            if np.isfinite(a[key]) and np.isfinite(b[key]):
                samples[key].append(b[key] - a[key])
    out: Dict[str, Dict[str, float]] = {}
    for key in COMPARED:
        values = np.asarray(samples[key])
        if not len(values):
            out[key] = {"difference": float("nan"), "low": float("nan"), "high": float("nan"),
                        "share_better": float("nan")}
            continue
        out[key] = {"difference": float(observed[key]), "low": float(np.percentile(values, 2.5)),
                    "high": float(np.percentile(values, 97.5)), "share_better": float(np.mean(values > 0))}
    return out
