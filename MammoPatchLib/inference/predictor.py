"""The single prediction code path used by the Python API, the CLI, the Slicer Logic, the
evaluation and the batch script: image -> preprocessing (with window padding) -> one of two
Inferers -> cell heatmaps -> source geometry -> findings (detections) -> label map."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from monai.inferers import Inferer

from ..errors import Cancelled, ConfigError, MammoPatchError
from ..io.image import MammogramImage
from ..io.validate import check_geometry
from ..model_file import LoadedModel
from ..networks import FEATURE_STRIDE
from ..postprocess import DetectedFinding, DetectionConfig, detect_findings, label_map_from_findings
from ..transforms import PreprocessConfig, PreprocessedImage, preprocess
from ..vocabulary import DEFAULT_MODE, MODES, InferenceMode
from .inferers import DenseInferer, ExactInferer, InferenceCallback, ProgressFn
from .resample import cells_to_source, detection_grid
from .windows import BLEND_MODES

logger = logging.getLogger(__name__)

ProgressCallback = ProgressFn

#: Windows per forward pass in exact mode, by device type (CPU: small batches keep the
#: working set in cache; GPUs want many windows in flight).
DEFAULT_BATCH = {"cuda": 256, "mps": 64, "cpu": 8}


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> CUDA, else Apple's MPS, else CPU; an unavailable device is a clear error."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available; use --device cpu or auto")
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError("device 'mps' requested but Apple's MPS is not available; use --device cpu or auto")
        return torch.device("mps")
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"device must be auto, cpu, mps or cuda[:N], got {device!r}")
    return torch.device(device)


@dataclass
class PredictionResult:
    """Findings, label map and heatmaps of one image, in the source image's geometry.

    ``heatmaps`` (classes, H, W) float32 at every source pixel is computed on first access
    (and kept): for a 3000 x 2400 image it is 290 MB, more than everything else a prediction
    needs, so runs that only want findings never pay for it. ``grid_heatmaps`` holds the
    same maps on the coarse detection grid (every ``grid_factor``-th pixel).
    """

    label_map: np.ndarray  # (H, W) uint8, 0 = no finding, k = classes[k - 1]
    findings: List[DetectedFinding]
    classes: List[str]
    thresholds: List[float]
    image: MammogramImage
    mode: str
    timings: Dict[str, float] = field(default_factory=dict)
    model_info: Dict[str, Any] = field(default_factory=dict)
    grid_heatmaps: Optional[np.ndarray] = None
    grid_factor: int = 1
    make_heatmaps: Optional[Callable[..., np.ndarray]] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._heatmaps: Optional[np.ndarray] = None
        self._sampler = self.make_heatmaps

    @property
    def heatmaps(self) -> np.ndarray:
        """(classes, H, W) float32 probabilities at every source pixel."""
        if self._heatmaps is None:
            if self.make_heatmaps is None:
                raise RuntimeError("this result carries no heatmaps")
            start = time.perf_counter()
            self._heatmaps = self.make_heatmaps()
            _add(self.timings, "heatmaps_s", start)
        return self._heatmaps

    def heatmaps_every(self, step: int, channels: Optional[Sequence[int]] = None) -> np.ndarray:
        """(classes, ceil(H / step), ceil(W / step)) heatmaps sampled at the centre of every
        ``step`` x ``step`` block of source pixels (for writing smaller heatmap files); only
        the classes at ``channels`` when given (computing four of ten full-size maps costs
        0.4 of the time and memory)."""
        picked = slice(None) if channels is None else list(channels)
        if self._sampler is None:
            return self.heatmaps[picked, step // 2::step, step // 2::step] if step > 1 else self.heatmaps[picked]
        if step <= 1 and self._heatmaps is not None:
            return self._heatmaps[picked]
        rows = cols = None
        if step > 1:
            height, width = self.image.shape
            rows = np.arange(0, height, step, dtype=np.float64) + (step - 1) / 2.0
            cols = np.arange(0, width, step, dtype=np.float64) + (step - 1) / 2.0
        return self._sampler(rows, cols, channels)

    def max_probability(self) -> Dict[str, float]:
        """Each class's highest heatmap value (on the detection grid)."""
        grid = self.grid_heatmaps if self.grid_heatmaps is not None else self.heatmaps
        return {c: float(grid[k].max()) for k, c in enumerate(self.classes)}

    def summary(self) -> Dict[str, Any]:
        return {"image": self.image.path, "mode": self.mode, "findings": len(self.findings),
                "max_probability": self.max_probability(), "seconds": round(sum(self.timings.values()), 3)}


@dataclass
class CellHeatmaps:
    """Stitched heatmaps on the window grid of one preprocessed image (one scale)."""

    cells: torch.Tensor  # (classes, gh, gw) probabilities, on the compute device
    prepared: PreprocessedImage
    stride: int


class Predictor:
    """Runs a loaded model over mammograms.

    Args:
        model: a :class:`LoadedModel`.
        mode: "fast" (one dense pass; default) or "exact" (window by window, MONAI
            SlidingWindowInferer, the poster's inference).
        device: "auto" (CUDA, then MPS, then CPU), "cpu", "mps" or "cuda[:N]".
        sw_batch_size: windows per forward pass in exact mode (None: by device).
        amp: bf16 autocast on CUDA.
        thresholds: per-class thresholds overriding the model's.
        classes: restrict findings / label map to these class names (heatmaps keep all); by
            default the model's reported classes (those it was trained on).
        progress: show a tqdm bar.
        blend: how overlapping windows are averaged: "gaussian" (default) or "constant".
        scales: window scales relative to the model's spacing, e.g. (0.75, 1, 1.5): the heatmaps
            found at each are averaged (multi-scale inference). (1.0,) is the poster.
        flip_tta: also run the left-right mirrored image and average (test-time augmentation).
        detection: how findings are picked from the heatmaps (:class:`DetectionConfig`).
        compile: ``torch.compile`` the network (CUDA; pays off over many images).
        inferer: an already built :class:`ExactInferer` or :class:`DenseInferer` to use instead
            of building one from ``mode`` (how a MONAI bundle passes its declared inferer).
        preprocessing: preprocessing parameters replacing the model's (the target spacing
            still follows the model's spacing and ``scales``).
    """

    def __init__(self, model: LoadedModel, mode: str = DEFAULT_MODE, device: str = "auto",
                 sw_batch_size: Optional[int] = None, amp: bool = True, thresholds: Optional[Sequence[float]] = None,
                 classes: Optional[Sequence[str]] = None, progress: bool = False, blend: str = "gaussian",
                 scales: Sequence[float] = (1.0,), flip_tta: Optional[bool] = None,
                 detection: Optional[DetectionConfig] = None, compile: bool = False,
                 inferer: Optional[Inferer] = None, preprocessing: Optional[PreprocessConfig] = None) -> None:
        if inferer is not None:
            mode = InferenceMode.EXACT.value if isinstance(inferer, ExactInferer) else InferenceMode.FAST.value
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
        if sw_batch_size is not None and sw_batch_size < 1:
            raise ConfigError("sw_batch_size must be >= 1")
        if blend not in BLEND_MODES:
            raise ConfigError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
        if not scales or any(not float(x) > 0 or not np.isfinite(float(x)) for x in scales):
            raise ConfigError(f"scales must be positive numbers, got {list(scales)}")
        info = model.info
        self.model, self.mode, self.amp, self.progress, self.blend = model, mode, amp, progress, blend
        self.scales = tuple(float(x) for x in scales)
        self.flip_tta = info.inference.flip_tta if flip_tta is None else bool(flip_tta)
        self.device = resolve_device(device)
        self.sw_batch_size = sw_batch_size or DEFAULT_BATCH.get(self.device.type, 16)
        self.network = model.network.to(self.device).eval().to(memory_format=torch.channels_last)
        if compile:
            self.network = torch.compile(self.network, dynamic=True)
        self.thresholds = list(thresholds) if thresholds is not None else list(info.thresholds)
        if len(self.thresholds) != len(info.classes):
            raise ConfigError(f"{len(self.thresholds)} thresholds given for {len(info.classes)} classes")
        if any(not np.isfinite(float(t)) or not 0.0 <= float(t) <= 1.0 for t in self.thresholds):
            raise ConfigError(f"thresholds must be probabilities in [0, 1], got {self.thresholds}")
        unknown = [c for c in (classes or []) if c not in info.classes]
        if unknown:
            raise ConfigError(f"unknown class(es) {unknown}; the model's classes are {info.classes}")
        self.selected = list(classes) if classes else info.reported_classes
        self.detection = detection or info.inference.detection
        if mode == "fast" and info.stride != FEATURE_STRIDE:
            raise ConfigError(f"fast mode needs the backbone's stride ({FEATURE_STRIDE} px) as the window stride; "
                              f"the model's is {info.stride}: use exact mode", model.path or None)
        self.preprocessing = preprocessing or info.preprocessing
        temperatures = info.inference.temperatures or None
        if inferer is not None:
            self.inferer = inferer
        elif mode == "exact":
            self.inferer = ExactInferer(info.window, info.stride, self.sw_batch_size, blend, self.device, amp,
                                        temperatures)
        else:
            self.inferer = DenseInferer(info.window, info.stride, blend, self.device, amp, temperatures)
        self._callback: Optional[InferenceCallback] = None

    def cancel(self) -> None:
        """Ask a running :meth:`predict_image` to stop at its next batch of windows."""
        if self._callback is not None:
            self._callback.cancel()

    def check(self, image: MammogramImage) -> None:
        """Refuse an image this Predictor cannot analyse (spacing, size vs memory; before any work)."""
        info = self.model.info
        check_geometry(image, info.spacing_mm, self.scales, info.window)

    def preprocess(self, image: MammogramImage, scale: float = 1.0) -> PreprocessedImage:
        """``image`` through the model's preprocessing at ``scale`` x its spacing, padded to
        the window grid."""
        info = self.model.info
        spacing = info.spacing_mm * scale if info.spacing_mm is not None else (
            image.spacing_mm * scale if scale != 1.0 else None)  # a model used at the image's own spacing
        return preprocess(image, self.preprocessing.at_spacing(spacing), window_grid=(info.window, info.stride))

    def cell_heatmaps(self, image: MammogramImage, scale: float = 1.0,
                      callback: Optional[InferenceCallback] = None, timings: Optional[Dict[str, float]] = None,
                      prepared: Optional[PreprocessedImage] = None) -> CellHeatmaps:
        """Preprocess ``image`` at ``scale`` x the model's spacing (or take ``prepared``, made by
        :meth:`preprocess`) and run the inferer."""
        info = self.model.info
        timings = timings if timings is not None else {}
        callback = callback or InferenceCallback()
        start = time.perf_counter()
        callback.report(0.0, "preprocessing")
        if prepared is None:
            prepared = self.preprocess(image, scale)
        _add(timings, "preprocess_s", start)

        start = time.perf_counter()
        batch = prepared.tensor.as_tensor()[None]
        if self.device.type == "cuda":
            batch = batch.pin_memory()  # lets the copy to the GPU run asynchronously
        try:
            cells = self.inferer(batch, self.network, callback)
            if self.flip_tta:
                mirrored = self.inferer(torch.flip(batch, dims=(-1,)), self.network, callback)
                cells = 0.5 * (cells + torch.flip(mirrored, dims=(-1,)))
        except torch.cuda.OutOfMemoryError:
            raise MammoPatchError(f"the GPU ran out of memory ({self.mode} mode, {self.sw_batch_size} windows per "
                                  "batch); use --device cpu, a smaller --batch-size, or exact mode",
                                  image.path or None) from None
        if cells.device.type == "cuda":
            torch.cuda.synchronize(cells.device)
        _add(timings, "windows_s", start)
        return CellHeatmaps(cells=cells[0], prepared=prepared, stride=info.stride)

    def predict_image(self, image: MammogramImage, on_progress: Optional[ProgressCallback] = None,
                      prepared: Optional[PreprocessedImage] = None) -> PredictionResult:
        """Findings, label map and heatmaps of one image. ``prepared``: the image already run
        through :meth:`preprocess` (used for scale 1)."""
        timings: Dict[str, float] = {}
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=100, desc=f"{self.mode} mode", unit="%", leave=False)

        def report(fraction: float, text: str) -> None:
            if bar is not None:
                bar.update(int(100 * fraction) - bar.n)
                bar.set_postfix_str(text, refresh=False)
            if on_progress is not None:
                on_progress(fraction, text)

        try:
            return self._predict(image, report, timings, prepared)
        except Cancelled as exc:
            raise Cancelled(exc.reason, image.path or None) from None
        finally:
            if bar is not None:
                bar.close()
            self._callback = None

    def _predict(self, image: MammogramImage, report: ProgressCallback, timings: Dict[str, float],
                 prepared: Optional[PreprocessedImage] = None) -> PredictionResult:
        self.check(image)
        n = len(self.scales)
        all_maps: List[CellHeatmaps] = []
        for k, scale in enumerate(self.scales):
            self._callback = InferenceCallback(report, span=(0.9 * k / n, 0.9 * (k + 1) / n))
            all_maps.append(self.cell_heatmaps(image, scale, self._callback, timings,
                                               prepared if scale == 1.0 else None))
            self._callback.report(1.0, "mapping heatmaps to the image")
        result = self.result_from_cells(image, all_maps, timings)
        report(1.0, "done")
        return result

    def result_from_cells(self, image: MammogramImage, all_maps: Sequence[CellHeatmaps],
                          timings: Optional[Dict[str, float]] = None) -> PredictionResult:
        """Findings, label map and heatmaps of ``image`` from its cell heatmaps (one per
        scale): the second half of :meth:`predict_image`, also used by cross-validation, whose
        cell maps come from cached backbone features instead of a fresh pass."""
        info = self.model.info
        timings = timings if timings is not None else {}
        start = time.perf_counter()
        spacing_rc = (image.geometry.row_spacing, image.geometry.col_spacing)
        factor, grid_rows, grid_cols = detection_grid(image.shape, image.spacing_mm, self.detection.grid_mm)
        grid_heat = None
        for maps in all_maps:
            at_grid = cells_to_source(maps.cells, maps.prepared, maps.stride, grid_rows, grid_cols)
            grid_heat = at_grid if grid_heat is None else grid_heat + at_grid
        grid = (grid_heat / len(all_maps)).clamp_(0.0, 1.0).cpu().numpy()
        thresholds = [t if c in self.selected else np.inf for c, t in zip(info.classes, self.thresholds)]
        window_px = info.window * (info.spacing_mm or image.spacing_mm) / image.spacing_mm
        findings, regions = detect_findings(grid, info.classes, thresholds, factor, spacing_rc, image.shape,
                                            self.detection, max_box_px=window_px)
        label_map = label_map_from_findings(regions, grid.shape[1:], factor, image.shape)
        _add(timings, "postprocess_s", start)
        return PredictionResult(label_map=label_map, findings=findings, classes=list(info.classes),
                                thresholds=list(self.thresholds), image=image, mode=self.mode, timings=timings,
                                model_info={"path": self.model.path, "sha256": self.model.sha256,
                                            "backbone": info.backbone, "trained": info.trained,
                                            "flip_tta": self.flip_tta, "scales": list(self.scales),
                                            "reported_classes": list(self.selected)},
                                grid_heatmaps=grid, grid_factor=factor,
                                make_heatmaps=lambda rows=None, cols=None, channels=None: source_heatmaps(
                                    all_maps, rows, cols, channels))


def source_heatmaps(all_maps: Sequence[CellHeatmaps], rows=None, cols=None,
                    channels: Optional[Sequence[int]] = None) -> np.ndarray:
    """(classes, H, W) float32 heatmaps at every source pixel (or at ``rows`` x ``cols``; of
    the classes at ``channels``): the mean over scales of each scale's cell maps mapped
    through its preprocessing chain (on the compute device)."""
    total = None
    for maps in all_maps:
        cells = maps.cells if channels is None else maps.cells[list(channels)]
        at_pixels = cells_to_source(cells, maps.prepared, maps.stride, rows, cols)
        total = at_pixels if total is None else total + at_pixels
    return (total / len(all_maps)).clamp_(0.0, 1.0).cpu().numpy().astype(np.float32, copy=False)


def _add(timings: Dict[str, float], key: str, start: float) -> None:
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - start

