"""Fast mode: one fully-convolutional pass gives every window's prediction at once.

The backbone runs over the whole padded image; the head, turned into an 8 x 8 average pool
and 1 x 1 convolutions (:meth:`PatchClassifier.dense_forward`), gives the logits of every
256 px window at a 32 px stride. Features near a window's border differ from the
window-by-window pass (real neighbouring tissue instead of zero padding), so fast mode
approximates exact mode; ``benchmarks/bench_inference.py`` measures how closely.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..networks import PatchClassifier
from .exact import autocast_for
from .windows import blend_kernel, stitch_window_grid


@torch.no_grad()
def dense_window_probabilities(network: PatchClassifier, image: torch.Tensor,
                               device: Optional[torch.device] = None, amp: bool = True, blend: str = "gaussian"
                      ) -> torch.Tensor:
    """(classes, gh, gw) probabilities of every window of a padded (C, H, W) image."""
    device = device or next(network.parameters()).device
    with autocast_for(device, amp):
        logits = network.dense_forward(torch.as_tensor(image).float()[None].to(device))
    return torch.sigmoid(logits.float())[0].cpu()


def fast_cell_heatmap(network: PatchClassifier, image: torch.Tensor, window: int = 256, stride: int = 32,
                      device: Optional[torch.device] = None, amp: bool = True, blend: str = "gaussian"
                      ) -> torch.Tensor:
    """Stitched (classes, H/stride, W/stride) heatmap, same layout as exact mode."""
    if stride != 32:
        raise ValueError("fast mode needs the backbone's stride (32 px) as the window stride")
    probs = dense_window_probabilities(network, image, device, amp)
    return stitch_window_grid(probs, blend_kernel(window, stride, blend))
