"""The other breast as context for the image-level score and for the findings.

Asymmetries and distortions are defined by comparing a breast with the other one, and what is
ordinary for one woman's tissue (density, a scanner's contrast) shows on both sides. So an
image's score is read against the same view of her other breast: its score minus
:data:`OTHER_BREAST_WEIGHT` times the other side's. The weight was set once, on the pooled
out-of-fold predictions of an earlier bundled recipe (0.25-1 all helped, 0.5 and 0.75 most),
and is reported for every recipe since beside the plain score (``mammopatch crossval``).

A finding is read the same way (:func:`relative_score`): its score minus the weight times the
highest heatmap value of its class in the other breast, so a place stands out only if it
stands out against what the same class finds in her other breast. A model fitted that way
carries a second operating point for pairs (:class:`OtherBreastPoint`); the Predictor applies
it as per-class thresholds raised by the weight times the other breast's maxima
(:func:`threshold_against_other_breast`), the same rule turned around.

Pure Python on (key, score) pairs: the batch runner reads them from its outputs, the
cross-validation from its records. What a reading takes of the other image is its
:class:`BreastScores`, which its ``findings.json`` records, so a resumed batch can read an
image against one done in an earlier run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .config import config_from_dict, config_to_dict

#: How much of the other breast's image score is taken off an image's own.
OTHER_BREAST_WEIGHT = 0.5

#: (woman or study, view, side): two images are the two breasts of one view when they differ
#: only in side ("L" / "R" from the file, or any two distinct labels where the data set says
#: which films are one woman's two breasts but not which is which).
BreastKey = Tuple[str, str, str]


@dataclass
class OtherBreastPoint:
    """A model's operating point for an image read against the other breast, fitted on the
    pooled out-of-fold predictions read that way (``mammopatch crossval``).

    Attributes:
        weight: how much of the other breast's per-class maxima (and image score) is taken off
            (0: the model has no such operating point).
        thresholds: per-class thresholds on the relative finding scores, in the model's class
            order (they may be below 0: a relative score is).
        image_threshold: the image gate on the relative image score (0: no gate).
    """

    weight: float = 0.0
    thresholds: List[float] = field(default_factory=list)
    image_threshold: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.weight, (int, float)) and 0.0 <= self.weight <= 1.0):
            raise ValueError(f"other-breast weight must be in [0, 1], got {self.weight!r}")
        if any(not isinstance(t, (int, float)) or not math.isfinite(t) or not -1.0 <= t <= 1.0
               for t in self.thresholds):
            raise ValueError(f"other-breast thresholds must be numbers in [-1, 1], got {self.thresholds!r}")
        if self.weight and not self.thresholds:
            raise ValueError("an other-breast operating point with a weight needs its thresholds")
        if not -1.0 <= float(self.image_threshold) <= 1.0:
            raise ValueError(f"other-breast image_threshold must be in [-1, 1], got {self.image_threshold!r}")

    @property
    def active(self) -> bool:
        return self.weight > 0

    def to_dict(self) -> Dict[str, object]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values) -> "OtherBreastPoint":
        return config_from_dict(cls, values, "other_breast")


#: Decimals of the scores :class:`BreastScores` keeps (and ``findings.json`` records).
SCORE_DECIMALS = 6


@dataclass(frozen=True)
class BreastScores:
    """What reading an image against the other breast takes of that other image: each class's
    highest heatmap value and its image score (and its file, for the record). Kept rounded as
    the other image's ``findings.json`` records them (:meth:`rounded`), so that an image read
    against one done in an earlier run of a batch gets the findings it gets when both are read
    in one run."""

    image: str
    class_maxima: Dict[str, float]
    image_score: float

    @classmethod
    def rounded(cls, image: str, class_maxima: Mapping[str, float], image_score: float) -> "BreastScores":
        return cls(image, {c: round(float(v), SCORE_DECIMALS) for c, v in class_maxima.items()},
                   round(float(image_score), SCORE_DECIMALS))


def relative_score(score: float, other: float, weight: float = OTHER_BREAST_WEIGHT) -> float:
    """A score read against the other breast's (the same class's highest heatmap value there,
    or her other image's score)."""
    return score - weight * other


def threshold_against_other_breast(threshold: float, other: float, weight: float = OTHER_BREAST_WEIGHT) -> float:
    """The plain-score threshold that :func:`relative_score` >= ``threshold`` amounts to."""
    return threshold + weight * other


def breast_key(woman: str, view: str, side: str) -> Optional[BreastKey]:
    """The key of one image, or None when the woman or the side is unknown (no pairing then)."""
    woman, side = (woman or "").strip(), (side or "").strip().upper()
    if not woman or not side:
        return None
    return (woman, (view or "").strip().upper(), side)


def source_breast_key(source: Mapping[str, Any]) -> Optional[BreastKey]:
    """The key of an image from its description (``MammogramImage.metadata()``, or the "source"
    of its ``findings.json``): its study (or patient), view and side from the DICOM header; None
    for a file that states no study or no side."""
    return breast_key(source_study(source), str(source.get("view_position") or ""),
                      str(source.get("laterality") or ""))


def source_study(source: Mapping[str, Any]) -> str:
    """The study an image belongs to (its StudyInstanceUID, else its PatientID; "" if neither)."""
    uids = source.get("uids") or {}
    return str(uids.get("StudyInstanceUID") or uids.get("PatientID") or "")


View = Tuple[str, str]


def crowded_views(keys: Sequence[Optional[BreastKey]]) -> Dict[View, List[int]]:
    """{(woman or study, view): the positions of its images} for each view that holds more than
    one image of a side (a repeat, a second exposure, a file listed twice under two names).
    Which of them is "the" other breast is then a guess, so every image of such a view is read
    alone: the one pairing rule of the findings (the batch runner) and of the image scores."""
    sides: Dict[View, Dict[str, int]] = {}
    positions: Dict[View, List[int]] = {}
    for position, key in enumerate(keys):
        if key is not None:
            counts = sides.setdefault(key[:2], {})
            counts[key[2]] = counts.get(key[2], 0) + 1
            positions.setdefault(key[:2], []).append(position)
    return {view: positions[view] for view, counts in sides.items() if max(counts.values()) > 1}


def other_breast_scores(keys: Sequence[Optional[BreastKey]], scores: Sequence[Optional[float]]
                        ) -> List[Optional[float]]:
    """For each image, the score of the other side's image (same woman, same view), or None when
    there is none, its key or score is unknown, or the view holds more than one image of a side
    (:func:`crowded_views`)."""
    crowded = crowded_views(keys)
    groups: Dict[View, Dict[str, float]] = {}
    for key, score in zip(keys, scores):
        if key is not None and score is not None and key[:2] not in crowded:
            groups.setdefault(key[:2], {})[key[2]] = score
    out: List[Optional[float]] = []
    for key in keys:
        others = [] if key is None else [s for side, s in groups.get(key[:2], {}).items() if side != key[2]]
        out.append(max(others) if others else None)
    return out


def scores_against_other_breast(keys: Sequence[Optional[BreastKey]], scores: Sequence[Optional[float]],
                                weight: float = OTHER_BREAST_WEIGHT,
                                others: Optional[Sequence[Optional[float]]] = None) -> List[Optional[float]]:
    """Each image's score minus ``weight`` times its other breast's (None without a pair);
    ``others``: :func:`other_breast_scores` of the same images, when the caller has them."""
    others = other_breast_scores(keys, scores) if others is None else others
    return [None if score is None or other is None else relative_score(score, other, weight)
            for score, other in zip(scores, others)]


__all__ = ["OTHER_BREAST_WEIGHT", "OtherBreastPoint", "SCORE_DECIMALS", "BreastScores", "relative_score",
           "threshold_against_other_breast", "BreastKey",
           "breast_key", "source_breast_key", "source_study", "crowded_views", "other_breast_scores",
           "scores_against_other_breast"]
