"""The training loss: the poster's focal loss on window predictions, masked where a target is
ambiguous, plus (with context samples) the same loss on the window's prediction computed
inside its context and a consistency term tying the two together.

The two predictions are what exact mode (the window alone: zero padding at its borders) and
fast mode (the window inside the image: real neighbouring tissue) compute; the consistency
term (mean squared difference of their logits) teaches the network to give the same answer
either way, so fast mode can stand in for exact mode.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from monai.losses import FocalLoss
from torch import nn


class PatchLoss(nn.Module):
    """Args:
        gamma: focal loss focusing parameter (poster: focal loss; gamma is ours, 2).
        consistency_weight: weight of the window / in-context logit difference.
    """

    def __init__(self, gamma: float = 2.0, consistency_weight: float = 0.0) -> None:
        super().__init__()
        self.focal = FocalLoss(gamma=gamma, use_softmax=False, reduction="none")
        self.consistency_weight = consistency_weight

    def masked_focal(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        per_element = self.focal(logits.float(), target)
        return (per_element * mask).sum() / mask.sum().clamp_min(1.0)

    def forward(self, window_logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                context_logits: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Returns (loss, its terms as detached 0-d tensors on the loss's device: reading them
        is left to the caller, so a training step does not wait for the device)."""
        window = self.masked_focal(window_logits, target, mask)
        if context_logits is None:
            return window, {"focal": window.detach()}
        context = self.masked_focal(context_logits, target, mask)
        consistency = torch.mean((window_logits.float() - context_logits.float()) ** 2)
        total = 0.5 * (window + context) + self.consistency_weight * consistency
        return total, {"focal": window.detach(), "focal_context": context.detach(),
                       "consistency": consistency.detach()}
