"""The other breast as context for the image-level score.

Asymmetries and distortions are defined by comparing a breast with the other one, and what is
ordinary for one woman's tissue (density, a scanner's contrast) shows on both sides. So an
image's score is read against the same view of her other breast: its score minus
:data:`OTHER_BREAST_WEIGHT` times the other side's. The weight was set once, on the pooled
out-of-fold predictions of an earlier bundled recipe (0.25-1 all helped, 0.5 and 0.75 most),
and is reported for every recipe since beside the plain score (``mammopatch crossval``).

Pure Python on (key, score) pairs: the batch runner reads them from its outputs, the
cross-validation from its records.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

#: How much of the other breast's image score is taken off an image's own.
OTHER_BREAST_WEIGHT = 0.5

#: (woman or study, view, side): two images are the two breasts of one view when they differ
#: only in side ("L" / "R" from the file, or any two distinct labels where the data set says
#: which films are one woman's two breasts but not which is which).
BreastKey = Tuple[str, str, str]


def breast_key(woman: str, view: str, side: str) -> Optional[BreastKey]:
    """The key of one image, or None when the woman or the side is unknown (no pairing then)."""
    woman, side = (woman or "").strip(), (side or "").strip().upper()
    if not woman or not side:
        return None
    return (woman, (view or "").strip().upper(), side)


def other_breast_scores(keys: Sequence[Optional[BreastKey]], scores: Sequence[Optional[float]]
                        ) -> List[Optional[float]]:
    """For each image, the highest score among the images of the other side (same woman, same
    view), or None when there is none (or its key or score is unknown)."""
    groups: Dict[Tuple[str, str], Dict[str, float]] = {}
    for key, score in zip(keys, scores):
        if key is not None and score is not None:
            sides = groups.setdefault(key[:2], {})
            sides[key[2]] = max(score, sides.get(key[2], score))
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
    return [None if score is None or other is None else score - weight * other
            for score, other in zip(scores, others)]


__all__ = ["OTHER_BREAST_WEIGHT", "BreastKey", "breast_key", "other_breast_scores", "scores_against_other_breast"]
