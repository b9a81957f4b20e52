"""Hard-negative mining: windows of the training images where the model fires falsely.

After a round of training the network runs densely over every training image (one pass per
image gives every window's probabilities); windows whose highest class probability is at
least ``min_score`` and whose target is empty (no finding near, by the window rule) become
hard-negative slots, at most ``per_image`` per image and at least half a window apart. They
are typically the pectoral muscle, the nipple, the skin line, film edges and dense tissue.
"""

from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..inference.inferers import autocast_for
from ..inference.windows import padded_size
from ..patches import HARD_NEGATIVE_SLOT, PreparedImage, SamplingConfig, Slot, window_target


@torch.no_grad()
def mine_hard_negatives(network: torch.nn.Module, images: Sequence[PreparedImage], sampling: SamplingConfig,
                        num_classes: int, device: torch.device, per_image: int = 8, min_score: float = 0.3,
                        window: int = 256, stride: int = 32, amp: bool = True) -> List[Slot]:
    """Hard-negative slots for ``images`` (see module docstring)."""
    was_training = network.training
    network.eval()
    slots: List[Slot] = []
    try:
        for index, img in enumerate(images):
            if img.image_labels:  # findings without boxes: no window is known to be negative
                continue
            h, w = img.image.shape[-2:]
            x = F.pad(img.image.float(), (0, padded_size(w, window, stride) - w, 0, padded_size(h, window, stride) - h))
            with autocast_for(device, amp):
                logits = network(x[None].to(device).contiguous(memory_format=torch.channels_last))
            score = torch.sigmoid(logits.float())[0].amax(dim=0).cpu().numpy()
            order = np.argsort(-score, axis=None)
            kept: List[tuple] = []
            for flat in order:
                i, j = np.unravel_index(flat, score.shape)
                if score[i, j] < min_score or len(kept) >= per_image:
                    break
                region = (float(j * stride), float(i * stride), float(j * stride + window), float(i * stride + window))
                if any(abs(region[0] - k[0]) < window / 2 and abs(region[1] - k[1]) < window / 2 for k in kept):
                    continue
                target, mask = window_target(region, img.boxes, img.labels, num_classes, sampling)
                if target.any() or not mask.all():
                    continue
                kept.append(region)
                slots.append(Slot(index, -1, HARD_NEGATIVE_SLOT, region))
    finally:
        network.train(was_training)
    return slots
