"""What a training or evaluation patch is drawn from: a finding, or the breast of a prepared image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

from .prepare import PreparedImage

NO_FINDING_SLOT = -1


@dataclass(frozen=True)
class Slot:
    """One thing a patch can be drawn from: a finding (``finding`` >= 0, ``category`` its
    class index) or the breast (``finding`` and ``category`` :data:`NO_FINDING_SLOT`)."""

    image: int
    finding: int
    category: int


def build_slots(images: Sequence[PreparedImage], classes: Optional[Sequence[int]] = None) -> List[Slot]:
    """A slot per finding (of ``classes``' indices only, when given) and one per image's breast
    (not for an image whose findings have no boxes: it has no region known to be normal)."""
    slots = []
    for i, img in enumerate(images):
        for k, label in enumerate(img.labels):
            if classes is None or int(label) in classes:
                slots.append(Slot(i, k, int(label)))
        if not img.image_labels:
            slots.append(Slot(i, NO_FINDING_SLOT, NO_FINDING_SLOT))
    return slots
