"""Exact mode: the poster's inference, window by window, on MONAI's SlidingWindowInferer.

The predictor returns each window's class probabilities as a ``cells x cells`` block (one
value per 32 px cell), so MONAI stitches a 1/32-scale heatmap, averaging overlapping
windows, without ever materialising 256 x 256 x classes floats per window.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
from monai.inferers import SlidingWindowInferer
from torch import nn

from ..networks import PatchClassifier


class WindowBlockPredictor(nn.Module):
    """Wraps a classifier: (B, C, window, window) -> (B, classes, cells, cells) probabilities.

    Args:
        on_batch: called with the number of windows after every batch (progress, cancel).
    """

    def __init__(self, network: PatchClassifier, cells: int, on_batch: Optional[Callable[[int], None]] = None):
        super().__init__()
        self.network, self.cells, self.on_batch = network, cells, on_batch

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        probs = torch.sigmoid(self.network(windows).float())
        if self.on_batch is not None:
            self.on_batch(windows.shape[0])
        return probs[:, :, None, None].expand(-1, -1, self.cells, self.cells).contiguous()


def autocast_for(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when asked (and supported), nothing on CPU."""
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


@torch.no_grad()
def exact_cell_heatmap(network: PatchClassifier, image: torch.Tensor, window: int = 256, stride: int = 32,
                       sw_batch_size: int = 16, device: Optional[torch.device] = None, amp: bool = True,
                       on_batch: Optional[Callable[[int], None]] = None, blend: str = "gaussian") -> torch.Tensor:
    """Stitched (classes, H/stride, W/stride) heatmap of a padded (C, H, W) image."""
    device = device or next(network.parameters()).device
    cells = window // stride
    predictor = WindowBlockPredictor(network, cells, on_batch)
    inferer = SlidingWindowInferer(roi_size=(window, window), sw_batch_size=sw_batch_size,
                                   overlap=1.0 - stride / window, mode=blend, sigma_scale=0.125, sw_device=device,
                                   device=torch.device("cpu"), progress=False)
    batch = torch.as_tensor(image).float()[None]
    with autocast_for(device, amp):
        out = inferer(batch, predictor)
    return torch.as_tensor(out)[0].float()
