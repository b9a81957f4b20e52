"""The sliding-window grid: padding so windows fall exactly every ``stride`` pixels,
stitching window predictions into a heatmap, and bringing it to pixel resolution.

A window at (row, col) = (i * stride, j * stride) covers cells i .. i + cells - 1 of the
``stride``-pixel grid (``cells = window / stride``). The stitched heatmap's cell value is the
mean probability of every window covering that cell: the poster's reconstruction of a
per-class heatmap from overlapping windows.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F


def padded_size(size: int, window: int, stride: int) -> int:
    """Smallest ``window + k * stride`` >= size."""
    return window + max(0, math.ceil((size - window) / stride)) * stride


def pad_for_windows(image: torch.Tensor, window: int = 256, stride: int = 32) -> torch.Tensor:
    """Zero-pad a (C, H, W) image at the bottom/right so the last window ends at the edge.

    MONAI aligns its last window to the image end; with this padding every window starts at a
    multiple of ``stride``, so the windows are exactly the poster's grid.
    """
    h, w = image.shape[-2:]
    ph, pw = padded_size(h, window, stride), padded_size(w, window, stride)
    if (ph, pw) == (h, w):
        return image
    return F.pad(image, (0, pw - w, 0, ph - h))


def window_count(shape: Tuple[int, int], window: int = 256, stride: int = 32) -> int:
    """Number of windows over an image of ``shape`` (after padding)."""
    return ((padded_size(shape[0], window, stride) - window) // stride + 1) * (
        (padded_size(shape[1], window, stride) - window) // stride + 1)


def stitch_window_grid(window_probs: torch.Tensor, cells: int) -> torch.Tensor:
    """(n, gh, gw) window probabilities -> (n, gh + cells - 1, gw + cells - 1) mean coverage."""
    n = window_probs.shape[0]
    kernel = torch.ones((n, 1, cells, cells), dtype=window_probs.dtype, device=window_probs.device)
    summed = F.conv_transpose2d(window_probs[None], kernel, groups=n)[0]
    count = F.conv_transpose2d(torch.ones_like(window_probs[:1])[None], kernel[:1])[0]
    return summed / count


def cells_to_pixels(cell_map: torch.Tensor, stride: int, size: Tuple[int, int]) -> torch.Tensor:
    """(n, gh, gw) map of ``stride``-px cells -> (n, H, W), bilinear between cell centres."""
    full = F.interpolate(cell_map[None].float(), scale_factor=stride, mode="bilinear", align_corners=False)[0]
    return full[:, : size[0], : size[1]]
