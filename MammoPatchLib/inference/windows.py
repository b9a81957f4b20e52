"""The sliding-window grid and how overlapping window predictions become a heatmap.

A window at (row, col) = (i * stride, j * stride) covers cells i .. i + cells - 1 of the
``stride``-pixel grid (``cells = window / stride``). The stitched heatmap's cell value is the
weighted mean probability of every window covering that cell: the poster's reconstruction of
a per-class heatmap from overlapping windows. The weights are MONAI's importance map:
"constant" (plain mean: every covering window counts alike, which blurs a finding over
+-256 px) or "gaussian" (the default: windows count most near their centre, so the map peaks
where windows centred on the finding fire).
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..vocabulary import BLEND_MODES

#: MONAI's Gaussian importance map, sigma = 0.125 x the window (SlidingWindowInferer default).
SIGMA_SCALE = 0.125


def check_blend(mode: str) -> str:
    """``mode`` if it is a blend mode; the one check of it, made wherever windows are blended
    (both inferers, at construction, before any image)."""
    if mode not in BLEND_MODES:
        raise ConfigError(f"blend must be one of {BLEND_MODES}, got {mode!r}")
    return mode


def padded_size(size: int, window: int, stride: int) -> int:
    """Smallest ``window + k * stride`` >= size (what the window padding pads to)."""
    return window + max(0, math.ceil((size - window) / stride)) * stride


def window_count(shape: Tuple[int, int], window: int = 256, stride: int = 32) -> int:
    """Number of windows over an image of ``shape`` (after padding to the grid)."""
    return ((padded_size(shape[0], window, stride) - window) // stride + 1) * (
        (padded_size(shape[1], window, stride) - window) // stride + 1)


def blend_kernel(window: int = 256, stride: int = 32, mode: str = "gaussian", sigma_scale: float = SIGMA_SCALE,
                 device=None) -> torch.Tensor:
    """The (cells, cells) weight of a window's cells, exactly as MONAI's SlidingWindowInferer
    weighs a predictor output of 1/stride of the window: its importance map, resized with
    "nearest-exact" (the mode monai.inferers.utils uses for that resize)."""
    from monai.data.utils import compute_importance_map

    check_blend(mode)
    cells = window // stride
    importance = compute_importance_map((window, window), mode=mode, sigma_scale=sigma_scale, device="cpu")
    importance = torch.as_tensor(importance, dtype=torch.float32)[None, None]
    kernel = F.interpolate(importance, (cells, cells), mode="nearest-exact")[0, 0]
    return kernel.to(device) if device is not None else kernel


def stitch_window_grid(window_probs: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """(B, n, gh, gw) window probabilities -> (B, n, gh + cells - 1, gw + cells - 1): the
    ``kernel``-weighted mean of the windows covering each cell (one transposed convolution)."""
    b, n = window_probs.shape[:2]
    weights = kernel.to(window_probs)[None, None]
    flat = window_probs.reshape(1, b * n, *window_probs.shape[2:])
    summed = F.conv_transpose2d(flat, weights.expand(b * n, 1, -1, -1), groups=b * n)
    count = F.conv_transpose2d(torch.ones_like(window_probs[:1, :1]), weights)
    return (summed / count).reshape(b, n, *summed.shape[2:])
