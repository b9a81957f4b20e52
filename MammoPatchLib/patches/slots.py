"""What a training or validation patch is drawn from: a finding, the breast, or a
hard-negative window of a prepared image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from .prepare import PreparedImage


@dataclass(frozen=True)
class Slot:
    """One thing a patch can be drawn from: a finding (``finding`` >= 0), the breast
    (``finding`` = -1), or a hard-negative window (``region`` set)."""

    image: int
    finding: int
    category: int  # class index; -1 for No Finding, -2 for a hard negative
    region: Optional[Tuple[float, float, float, float]] = None


NO_FINDING_SLOT = -1
HARD_NEGATIVE_SLOT = -2


def build_slots(images: Sequence[PreparedImage]) -> List[Slot]:
    slots = []
    for i, img in enumerate(images):
        for k, label in enumerate(img.labels):
            slots.append(Slot(i, k, int(label)))
        if not img.image_labels:  # an image-level-only abnormal image has no safe "normal" region
            slots.append(Slot(i, -1, NO_FINDING_SLOT))
    return slots
