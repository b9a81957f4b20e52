"""The single prediction code path used by the Python API, the CLI, the Slicer Logic and
the batch script: image -> preprocessing -> windows -> heatmaps in source geometry ->
label map -> findings."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from monai.data import MetaTensor

from ..errors import Cancelled, ConfigError, MammoPatchError
from ..io.image import MammogramImage
from ..model_file import LoadedModel
from ..modes import DEFAULT_MODE, MODES
from ..postprocess import DetectedFinding, findings_from_heatmaps, label_map_from_heatmaps
from ..transforms import preprocess
from .dense import fast_cell_heatmap
from .exact import exact_cell_heatmap
from .windows import BLEND_MODES, cells_to_pixels, pad_for_windows, window_count

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cuda" without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available; use --device cpu or auto")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    return torch.device(device)


@dataclass
class PredictionResult:
    """Heatmaps, label map and findings of one image, in the source image's geometry."""

    heatmaps: np.ndarray  # (classes, H, W) float32 probabilities
    label_map: np.ndarray  # (H, W) uint8, 0 = no finding, k = classes[k - 1]
    findings: List[DetectedFinding]
    classes: List[str]
    thresholds: List[float]
    image: MammogramImage
    mode: str
    timings: Dict[str, float] = field(default_factory=dict)
    model_info: Dict[str, Any] = field(default_factory=dict)

    def summary(self) -> Dict[str, Any]:
        peak = {c: float(self.heatmaps[k].max()) for k, c in enumerate(self.classes)}
        return {"image": self.image.path, "mode": self.mode, "findings": len(self.findings),
                "max_probability": peak, "seconds": round(sum(self.timings.values()), 3)}


class Predictor:
    """Runs a loaded model over mammograms.

    Args:
        model: a :class:`LoadedModel`.
        mode: "exact" (window by window, MONAI SlidingWindowInferer) or "fast" (one dense pass).
        device: "auto", "cpu" or "cuda".
        sw_batch_size: windows per forward pass in exact mode.
        amp: bf16/fp16 autocast on CUDA.
        thresholds: per-class thresholds overriding the model's.
        classes: restrict findings / label map to these class names (heatmaps keep all).
        progress: show a tqdm bar over windows.
        blend: how overlapping windows are averaged: "gaussian" (default) or "constant".
        scales: window scales relative to the model's training spacing, e.g. (0.75, 1, 1.5):
            the heatmaps found at each are averaged (multi-scale inference). (1.0,) is the poster.
    """

    def __init__(self, model: LoadedModel, mode: str = DEFAULT_MODE, device: str = "auto", sw_batch_size: int = 16,
                 amp: bool = True, thresholds: Optional[Sequence[float]] = None,
                 classes: Optional[Sequence[str]] = None, progress: bool = False, blend: str = "gaussian",
                 scales: Sequence[float] = (1.0,)) -> None:
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
        if sw_batch_size < 1:
            raise ConfigError("sw_batch_size must be >= 1")
        if blend not in BLEND_MODES:
            raise ConfigError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
        self.model, self.mode, self.sw_batch_size, self.amp, self.progress = model, mode, sw_batch_size, amp, progress
        self.blend = blend
        if not scales or any(float(x) <= 0 for x in scales):
            raise ConfigError(f"scales must be positive numbers, got {list(scales)}")
        self.scales = tuple(float(x) for x in scales)
        self.device = resolve_device(device)
        self.network = model.network.to(self.device).eval()
        if self.device.type == "cuda":
            self.network = self.network.to(memory_format=torch.channels_last)
        info = model.info
        self.thresholds = list(thresholds) if thresholds is not None else list(info.thresholds)
        if len(self.thresholds) != len(info.classes):
            raise ConfigError(f"{len(self.thresholds)} thresholds given for {len(info.classes)} classes")
        unknown = [c for c in (classes or []) if c not in info.classes]
        if unknown:
            raise ConfigError(f"unknown class(es) {unknown}; the model's classes are {info.classes}")
        self.selected = list(classes) if classes else list(info.classes)
        self._cancel = False

    def cancel(self) -> None:
        """Ask a running :meth:`predict_image` to stop at its next batch of windows."""
        self._cancel = True

    def _source_heatmaps(self, image: MammogramImage, scale: float, report, span, timings) -> np.ndarray:
        """Heatmaps in source geometry with the image resampled to ``scale`` x the model's
        spacing (a window then covers ``scale`` x the tissue it was trained on)."""
        info = self.model.info
        lo, hi = span
        start = time.perf_counter()
        report(lo, "preprocessing")
        config = info.preprocess_config()
        if scale != 1.0:
            config.target_spacing_mm = (info.spacing_mm or image.spacing_mm) * scale
        tensor, pipeline = preprocess(image, config)
        padded = pad_for_windows(tensor.as_tensor(), info.window, info.stride)
        timings["preprocess_s"] = timings.get("preprocess_s", 0.0) + time.perf_counter() - start

        start = time.perf_counter()
        total = window_count(tuple(tensor.shape[1:]), info.window, info.stride)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=f"windows ({self.mode})", unit="win", leave=False)
        done = [0]

        def on_batch(n: int) -> None:
            done[0] += n
            if bar is not None:
                bar.update(n)
            report(lo + (hi - lo) * (0.05 + 0.85 * done[0] / total), f"windows {done[0]}/{total}")

        try:
            if self.mode == "exact":
                cells = exact_cell_heatmap(self.network, padded, info.window, info.stride, self.sw_batch_size,
                                           self.device, self.amp, on_batch, self.blend)
            else:
                report(lo + 0.05 * (hi - lo), f"dense pass over {total} windows")
                cells = fast_cell_heatmap(self.network, padded, info.window, info.stride, self.device, self.amp,
                                          self.blend)
                on_batch(total)
        except torch.cuda.OutOfMemoryError:
            raise MammoPatchError(f"the GPU ran out of memory ({self.mode} mode, {self.sw_batch_size} windows per "
                                  "batch); use --device cpu, a smaller --batch-size, or exact mode",
                                  image.path or None) from None
        finally:
            if bar is not None:
                bar.close()
        timings["windows_s"] = timings.get("windows_s", 0.0) + time.perf_counter() - start

        start = time.perf_counter()
        report(lo + 0.92 * (hi - lo), "mapping heatmaps to the image")
        full = cells_to_pixels(cells, info.stride, tuple(tensor.shape[1:]))
        heat = MetaTensor(full, meta=tensor.meta, applied_operations=tensor.applied_operations)
        heatmaps = pipeline.inverse({"image": heat})["image"].as_tensor().numpy().astype(np.float32)
        if heatmaps.shape[1:] != image.pixels.shape:
            raise RuntimeError(f"internal error: heatmap {heatmaps.shape[1:]} vs image {image.pixels.shape}")
        timings["postprocess_s"] = timings.get("postprocess_s", 0.0) + time.perf_counter() - start
        return np.clip(heatmaps, 0.0, 1.0)

    def predict_image(self, image: MammogramImage, on_progress: Optional[ProgressCallback] = None) -> PredictionResult:
        info = self.model.info
        self._cancel = False
        timings: Dict[str, float] = {}

        def report(fraction: float, text: str) -> None:
            if self._cancel:
                raise Cancelled("cancelled by the user", image.path or None)
            if on_progress is not None:
                on_progress(fraction, text)

        # Multi-scale: the mean of the heatmaps found at each scale (the poster names the size
        # sensitivity of a fixed 256 px window as a limit).
        heatmaps = None
        n = len(self.scales)
        for k, scale in enumerate(self.scales):
            span = (0.95 * k / n, 0.95 * (k + 1) / n)
            at_scale = self._source_heatmaps(image, scale, report, span, timings)
            heatmaps = at_scale if heatmaps is None else heatmaps + at_scale
        heatmaps /= n

        start = time.perf_counter()
        thresholds = [t if c in self.selected else np.inf for c, t in zip(info.classes, self.thresholds)]
        label_map = label_map_from_heatmaps(heatmaps, thresholds)
        findings = findings_from_heatmaps(heatmaps, info.classes, thresholds,
                                          (image.geometry.row_spacing, image.geometry.col_spacing))
        timings["postprocess_s"] = timings.get("postprocess_s", 0.0) + time.perf_counter() - start
        report(1.0, "done")
        return PredictionResult(heatmaps=heatmaps, label_map=label_map, findings=findings, classes=list(info.classes),
                                thresholds=list(self.thresholds), image=image, mode=self.mode, timings=timings,
                                model_info={"path": self.model.path, "sha256": self.model.sha256,
                                            "backbone": info.backbone, "trained": info.trained})
