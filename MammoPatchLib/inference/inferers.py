"""Two MONAI Inferers over one fully-convolutional network.

Both take a (B, C, H, W) image padded to the window grid (``H, W = window + k * stride``)
and return (B, classes, H / stride, W / stride) probabilities, stitched the same way:

- :class:`ExactInferer`: the poster's inference, window by window, on MONAI's
  ``SlidingWindowInferer`` (windows every ``stride`` px; image, windows and stitching on the
  compute device). Each window's probabilities come back as a ``cells x cells`` block, so
  MONAI stitches a 1/stride-scale heatmap instead of 256 x 256 x classes floats per window.
- :class:`DenseInferer`: one forward pass over the whole image gives every window's logits
  at once (the network is fully convolutional); the same blend weights stitch them. With the
  cell head the pass gives every cell's output directly, which is what the stitched window
  blocks approximate.

They differ only where a window's features near its border see zero padding (exact) or the
real neighbouring tissue (dense); models trained with the consistency term agree closely
(``benchmarks`` measures it).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional, Sequence

import torch
from monai.inferers import Inferer, SlidingWindowInferer
from torch import nn

from ..errors import Cancelled
from .windows import SIGMA_SCALE, blend_kernel, check_blend, stitch_window_grid

ProgressFn = Callable[[float, str], None]


class InferenceCallback:
    """Progress and cancel for a run, shared by both inferers.

    Args:
        on_progress: called with (fraction in [0, 1], text).
        span: the part of the whole run's progress this callback reports over.
    """

    def __init__(self, on_progress: Optional[ProgressFn] = None, span=(0.0, 1.0)) -> None:
        self.on_progress = on_progress
        self.span = span
        self.cancelled = False

    def cancel(self) -> None:
        """Ask the run to stop at its next check (next batch of windows)."""
        self.cancelled = True

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled("cancelled by the user")

    def report(self, fraction: float, text: str) -> None:
        """Report progress within this callback's span; raises Cancelled when asked to stop."""
        self.check()
        if self.on_progress is not None:
            lo, hi = self.span
            self.on_progress(lo + (hi - lo) * min(max(fraction, 0.0), 1.0), text)

    def windows(self, done: int, total: int) -> None:
        self.report(done / max(total, 1), f"windows {done}/{total}")


def autocast_for(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when asked (fp16 where bf16 is unsupported); nothing elsewhere."""
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def is_per_cell(network: nn.Module) -> bool:
    """Whether ``network`` outputs one value per 32 px cell (the cell head) rather than one
    per window position (the poster's window head)."""
    return bool(getattr(network, "per_cell", False))


class WindowBlocks(nn.Module):
    """(B, C, window, window) windows -> (B, classes, cells, cells) probability blocks: the
    window head's one probability painted over the window's cells, or the cell head's own
    block of cell probabilities."""

    def __init__(self, network: nn.Module, cells: int, amp: bool, device: torch.device,
                 on_batch: Optional[Callable[[int], None]] = None, temperatures: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.network, self.cells, self.amp, self.device, self.on_batch = network, cells, amp, device, on_batch
        self.temperatures = temperatures

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        windows = windows.contiguous(memory_format=torch.channels_last)
        with autocast_for(self.device, self.amp):
            logits = self.network(windows)
        logits = logits.float()
        if self.temperatures is not None:
            logits = logits / self.temperatures[:, :, None, None]
        probs = torch.sigmoid(logits)
        if self.on_batch is not None:
            self.on_batch(windows.shape[0])
        if probs.shape[-2:] == (self.cells, self.cells) and is_per_cell(self.network):
            return probs.contiguous()
        return probs.flatten(2)[:, :, :1, None].expand(-1, -1, self.cells, self.cells).contiguous()


class _WindowGridInferer(Inferer):
    """What both inferers share: the window grid, blend mode, compute device, precision and
    calibration temperatures."""

    def __init__(self, window: int, stride: int, blend: str, device: Optional[torch.device], amp: bool,
                 temperatures: Optional[Sequence[float]]) -> None:
        super().__init__()
        check_blend(blend)
        self.window, self.stride, self.amp = window, stride, amp
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.temperatures = _temperatures(temperatures, self.device)

    def window_count(self, inputs: torch.Tensor) -> int:
        """Windows on the grid of a (B, C, H, W) batch."""
        return _windows(inputs.shape[-2:], self.window, self.stride) * inputs.shape[0]


class ExactInferer(_WindowGridInferer):
    """Window by window on MONAI's ``SlidingWindowInferer`` (built once, reused per image).

    Args:
        window, stride: the poster's 256 / 32 px.
        sw_batch_size: windows per forward pass.
        blend: "gaussian" or "constant" (MONAI's importance map).
        device: compute device: the image is moved there and stitched there.
        amp: bf16 autocast on CUDA.
        temperatures: per-class calibration temperatures (logits are divided by them).
    """

    def __init__(self, window: int = 256, stride: int = 32, sw_batch_size: int = 16, blend: str = "gaussian",
                 device: Optional[torch.device] = None, amp: bool = True,
                 temperatures: Optional[Sequence[float]] = None) -> None:
        super().__init__(window, stride, blend, device, amp, temperatures)
        self.sliding = SlidingWindowInferer(roi_size=(window, window), sw_batch_size=sw_batch_size,
                                            overlap=1.0 - stride / window, mode=blend, sigma_scale=SIGMA_SCALE,
                                            sw_device=self.device, device=self.device, progress=False)

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, network: nn.Module,
                 callback: Optional[InferenceCallback] = None) -> torch.Tensor:  # type: ignore[override]
        total = self.window_count(inputs)
        done = [0]

        def on_batch(n: int) -> None:
            done[0] += n
            if callback is not None:
                callback.windows(done[0], total)

        blocks = WindowBlocks(network, self.window // self.stride, self.amp, self.device, on_batch,
                              None if self.temperatures is None else self.temperatures[None, :])
        batch = torch.as_tensor(inputs).float().to(self.device, non_blocking=True)
        return torch.as_tensor(self.sliding(batch, blocks)).float()


class DenseInferer(_WindowGridInferer):
    """One forward pass over the whole padded image gives every window's logits; stitched
    with the same blend weights as :class:`ExactInferer`.

    Args: as :class:`ExactInferer` (no batch size: one pass).
    """

    def __init__(self, window: int = 256, stride: int = 32, blend: str = "gaussian",
                 device: Optional[torch.device] = None, amp: bool = True,
                 temperatures: Optional[Sequence[float]] = None) -> None:
        super().__init__(window, stride, blend, device, amp, temperatures)
        self.kernel = blend_kernel(window, stride, blend, device=self.device)

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, network: nn.Module,
                 callback: Optional[InferenceCallback] = None) -> torch.Tensor:  # type: ignore[override]
        total = self.window_count(inputs)
        if callback is not None:
            callback.report(0.0, f"dense pass over {total} windows")
        batch = torch.as_tensor(inputs).float().to(self.device, non_blocking=True)
        with autocast_for(self.device, self.amp):
            logits = network(batch.contiguous(memory_format=torch.channels_last))
        logits = logits.float()
        if self.temperatures is not None:
            logits = logits / self.temperatures[None, :, None, None]
        probs = torch.sigmoid(logits)
        if callback is not None:
            callback.windows(total, total)
        if is_per_cell(network):
            return probs  # already one value per cell: every window's block at once
        return stitch_window_grid(probs, self.kernel)


def _temperatures(values: Optional[Sequence[float]], device: torch.device) -> Optional[torch.Tensor]:
    if not values or all(float(v) == 1.0 for v in values):
        return None
    return torch.tensor([float(v) for v in values], dtype=torch.float32, device=device)


def _windows(shape, window: int, stride: int) -> int:
    return ((int(shape[0]) - window) // stride + 1) * ((int(shape[1]) - window) // stride + 1)
