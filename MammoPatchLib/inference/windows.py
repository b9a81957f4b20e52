"""The sliding-window grid: padding so windows fall exactly every ``stride`` pixels,
stitching window predictions into a heatmap, and bringing it to pixel resolution.

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


BLEND_MODES = ("gaussian", "constant")


def blend_kernel(window: int = 256, stride: int = 32, mode: str = "gaussian", sigma_scale: float = 0.125
                 ) -> torch.Tensor:
    """The (cells, cells) weight of a window's cells, exactly as MONAI's SlidingWindowInferer
    computes it for a predictor whose output is 1/stride of the window."""
    from monai.data.utils import compute_importance_map
    from monai.inferers.utils import _nearest_mode

    if mode not in BLEND_MODES:
        raise ValueError(f"blend mode must be one of {BLEND_MODES}, got {mode!r}")
    cells = window // stride
    importance = compute_importance_map((window, window), mode=mode, sigma_scale=sigma_scale, device="cpu")
    importance = torch.as_tensor(importance, dtype=torch.float32)[None, None]
    return F.interpolate(importance, (cells, cells), mode=_nearest_mode)[0, 0]


def stitch_window_grid(window_probs: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """(n, gh, gw) window probabilities -> (n, gh + cells - 1, gw + cells - 1) weighted mean of
    the windows covering each cell (``kernel`` from :func:`blend_kernel`)."""
    n = window_probs.shape[0]
    weights = kernel.to(window_probs)[None, None]
    summed = F.conv_transpose2d(window_probs[None], weights.expand(n, 1, -1, -1), groups=n)[0]
    count = F.conv_transpose2d(torch.ones_like(window_probs[:1])[None], weights)[0]
    return summed / count


def cells_to_pixels(cell_map: torch.Tensor, stride: int, size: Tuple[int, int]) -> torch.Tensor:
    """(n, gh, gw) map of ``stride``-px cells -> (n, H, W), bilinear between cell centres."""
    full = F.interpolate(cell_map[None].float(), scale_factor=stride, mode="bilinear", align_corners=False)[0]
    return full[:, : size[0], : size[1]]
