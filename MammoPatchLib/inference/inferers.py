"""Two MONAI Inferers over one fully-convolutional network.

Both take a (B, C, H, W) image padded to the window grid (``H, W = window + k * stride``)
and return (B, classes, H / stride, W / stride) probabilities:

- :class:`ExactInferer`: window by window, on MONAI's ``SlidingWindowInferer`` (image,
  windows and stitching on the compute device).

  * The poster's window head (one probability per window): 256 px windows every ``stride``
    px, each window's probability painted over its ``cells x cells`` block, blended with
    MONAI's importance map (the poster's reconstruction of a heatmap from windows).
  * The cell head (one probability per 32 px cell): the image is tiled into 256 px windows,
    and MONAI hands the network each window together with ``context`` px of the real image
    on every side (``roi_size = window + 2 * context``, clipped to the image); only the
    window's own cells, whose receptive field that view holds, are stitched (at the image
    border a view's cells reach the border, as in the whole image). A backbone's features
    depend on more than a 256 px window holds (:data:`CELL_CONTEXT_PX`): windows seen
    without context gave cell maps correlating only 0.5-0.85 with the whole-image pass.
    Windows every 32 px instead of every 256 px would compute each cell's same value 64
    times over, so the windows tile the image.

- :class:`DenseInferer`: one forward pass over the whole image gives every window's logits
  at once (the network is fully convolutional); the same blend weights stitch them. With the
  cell head the pass gives every cell's output directly.

With the cell head both modes compute each cell from the same image around it and agree to
float precision (``benchmarks`` measures it on real images); with the window head they differ
where a window's features near its border see zero padding (exact) or the real neighbouring
tissue (dense).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional, Sequence, Tuple

import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import Inferer, SlidingWindowInferer
from torch import nn

from ..errors import Cancelled, ConfigError
from ..networks.backbones import CELL_CONTEXT_PX, FEATURE_STRIDE
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


def calibrated(logits: torch.Tensor, temperatures: Optional[torch.Tensor]) -> torch.Tensor:
    """(B, classes, h, w) logits -> probabilities, each class's logits divided by its
    calibration temperature first (None: uncalibrated)."""
    logits = logits.float()
    if temperatures is not None:
        logits = logits / temperatures[None, :, None, None]
    return torch.sigmoid(logits)


def is_per_cell(network: nn.Module) -> bool:
    """Whether ``network`` outputs one value per 32 px cell (the cell head) rather than one
    per window position (the poster's window head)."""
    return bool(getattr(network, "per_cell", False))


class WindowBlocks(nn.Module):
    """MONAI predictor of the window head in exact mode: (B, C, window, window) windows ->
    (B, classes, cells, cells), each window's one probability painted over its cells, so
    MONAI stitches a 1/stride-scale heatmap instead of window x window x classes floats per
    window."""

    def __init__(self, network: nn.Module, cells: int, amp: bool, device: torch.device,
                 on_batch: Optional[Callable[[int], None]] = None, temperatures: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.network, self.cells, self.amp, self.device, self.on_batch = network, cells, amp, device, on_batch
        self.temperatures = temperatures

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        windows = windows.contiguous(memory_format=torch.channels_last)
        with autocast_for(self.device, self.amp):
            logits = self.network(windows)
        probs = calibrated(logits, self.temperatures)
        if self.on_batch is not None:
            self.on_batch(windows.shape[0])
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


class CellsInContext(nn.Module):
    """MONAI predictor of the cell head in exact mode: (B, C, h, w) views of the image with
    their MONAI coordinates -> (B, classes + 1, h / 32, w / 32), the probabilities of the cells
    whose receptive field the view holds (its valid region: all but ``context`` px on each side
    that is not the image border) and, as the last channel, 1 on those cells and 0 elsewhere.
    MONAI stitches both with constant weights; dividing by the last channel then averages only
    valid cells (MONAI's importance map is one map for all windows and cannot say that a view
    at the image border is valid up to the border).

    A network with ``cell_logits`` (:class:`~MammoPatchLib.networks.PatchClassifier`) runs its
    trunk once per batch of views and its heads (every ensemble member) only on each view's
    valid block; any other per-cell network runs whole on each view."""

    def __init__(self, network: nn.Module, image_size: Sequence[int], context: int, amp: bool,
                 device: torch.device, on_batch: Callable[[int], None],
                 temperatures: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.network, self.image_size, self.context = network, tuple(int(x) for x in image_size), context
        self.amp, self.device, self.on_batch, self.temperatures = amp, device, on_batch, temperatures

    def valid(self, coords, axis: int, cells: int) -> slice:
        """The cells of one view along ``axis`` whose receptive field it holds."""
        span, margin = coords[axis + 2], self.context // FEATURE_STRIDE
        first = 0 if span.start == 0 else margin
        last = cells if span.stop >= self.image_size[axis] else cells - margin
        return slice(first, last)

    def forward(self, views: torch.Tensor, coords) -> torch.Tensor:  # type: ignore[override]
        views = views.contiguous(memory_format=torch.channels_last)
        shared = hasattr(self.network, "cell_logits")
        with autocast_for(self.device, self.amp):
            maps = self.network.features(views) if shared else self.network(views)
        grid = [n // self.network.feature_scale for n in maps.shape[-2:]] if shared else maps.shape[-2:]
        blocks = []
        for b, coord in enumerate(coords):
            rows, cols = (self.valid(coord, axis, grid[axis]) for axis in (0, 1))
            with autocast_for(self.device, self.amp):
                logits = self.network.cell_logits(maps[b:b + 1], rows, cols) if shared else maps[b:b + 1, :, rows, cols]
            blocks.append((rows, cols, calibrated(logits, self.temperatures)[0]))
        out = torch.zeros(views.shape[0], blocks[0][2].shape[0] + 1, *grid, device=views.device)
        for b, (rows, cols, probs) in enumerate(blocks):
            out[b, :-1, rows, cols] = probs
            out[b, -1, rows, cols] = 1.0
        self.on_batch(views.shape[0])
        return out


class ExactInferer(_WindowGridInferer):
    """Window by window on MONAI's ``SlidingWindowInferer`` (see the module docstring for how
    the window head and the cell head differ).

    Args:
        window, stride: the poster's 256 / 32 px.
        sw_batch_size: windows per forward pass.
        blend: "gaussian" or "constant" (MONAI's importance map; the window head's).
        device: compute device: the image is moved there and stitched there.
        amp: bf16 autocast on CUDA.
        temperatures: per-class calibration temperatures (logits are divided by them).
        context: px of the image each window of the cell head is seen with on every side
            (a multiple of 32; the backbone's reach, :data:`CELL_CONTEXT_PX`).
    """

    def __init__(self, window: int = 256, stride: int = 32, sw_batch_size: int = 16, blend: str = "gaussian",
                 device: Optional[torch.device] = None, amp: bool = True,
                 temperatures: Optional[Sequence[float]] = None, context: int = CELL_CONTEXT_PX) -> None:
        super().__init__(window, stride, blend, device, amp, temperatures)
        if context < 0 or context % FEATURE_STRIDE or window % FEATURE_STRIDE:
            raise ConfigError(f"exact mode's window ({window} px) and context ({context} px) must be "
                              f"non-negative multiples of {FEATURE_STRIDE} px")
        self.sw_batch_size, self.context = sw_batch_size, context
        self.sliding = SlidingWindowInferer(roi_size=(window, window), sw_batch_size=sw_batch_size,
                                            overlap=1.0 - stride / window, mode=blend, sigma_scale=SIGMA_SCALE,
                                            sw_device=self.device, device=self.device, progress=False)

    def views(self, size: Sequence[int]) -> Tuple[Tuple[int, ...], Tuple[float, ...]]:
        """MONAI's ``roi_size`` and ``overlap`` of the cell head for an image of ``size``: views
        of window + 2 x context px (clipped to the image) every ``window`` px."""
        roi = tuple(min(self.window + 2 * self.context, int(n)) for n in size)
        # MONAI's step is int(roi * (1 - overlap)): nudged so that rounding cannot give window - 1
        overlap = tuple(max((r - self.window) / r - 1e-6, 0.0) for r in roi)
        return roi, overlap

    def view_count(self, inputs: torch.Tensor) -> int:
        """Views of the cell head over one (B, C, H, W) batch."""
        roi, _ = self.views(inputs.shape[-2:])
        steps = tuple(self.window if r < n else 1 for r, n in zip(roi, inputs.shape[-2:]))
        return len(dense_patch_slices(tuple(inputs.shape[-2:]), roi, steps)) * inputs.shape[0]

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, network: nn.Module,
                 callback: Optional[InferenceCallback] = None) -> torch.Tensor:  # type: ignore[override]
        per_cell = is_per_cell(network)
        total = self.view_count(inputs) if per_cell else self.window_count(inputs)
        done = [0]

        def on_batch(n: int) -> None:
            done[0] += n
            if callback is not None:
                callback.windows(done[0], total)

        batch = torch.as_tensor(inputs).float().to(self.device, non_blocking=True)
        if not per_cell:
            blocks = WindowBlocks(network, self.window // self.stride, self.amp, self.device, on_batch,
                                  self.temperatures)
            return torch.as_tensor(self.sliding(batch, blocks)).float()
        roi, overlap = self.views(batch.shape[-2:])
        sliding = SlidingWindowInferer(roi_size=roi, sw_batch_size=self.sw_batch_size, overlap=overlap,
                                       mode="constant", sw_device=self.device, device=self.device, progress=False,
                                       with_coord=True)
        cells = CellsInContext(network, batch.shape[-2:], self.context, self.amp, self.device, on_batch,
                               self.temperatures)
        stitched = torch.as_tensor(sliding(batch, cells)).float()
        return stitched[:, :-1] / stitched[:, -1:]


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
        probs = calibrated(logits, self.temperatures)
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
