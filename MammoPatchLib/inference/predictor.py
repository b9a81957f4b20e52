"""The single prediction code path used by the Python API, the CLI, the Slicer Logic, the
evaluation and the batch script: image -> preprocessing (with window padding) -> one of two
Inferers -> cell heatmaps -> source geometry -> findings (detections) -> label map."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.inferers import Inferer

from ..errors import Cancelled, ConfigError, MammoPatchError
from ..io.image import MammogramImage
from ..io.validate import check_geometry
from ..model_file import LoadedModel, ModelInfo
from ..networks import FEATURE_STRIDE
from ..other_breast import BreastScores, threshold_against_other_breast
from ..postprocess import DetectedFinding, detect_findings, label_map_from_findings
from ..transforms import PreprocessedImage, preprocess
from ..vocabulary import InferenceMode
from .inferers import DenseInferer, ExactInferer, InferenceCallback, ProgressFn
from .options import PredictOptions
from .resample import CellGrid, cell_grid, cells_to_source, detection_grid

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
    same maps on the coarse detection grid (every ``grid_factor``-th pixel). ``model_info``
    is the model file's :class:`ModelInfo`; ``model_path``, ``model_sha256`` and the run's
    ``flip_tta``, ``scales`` and ``reported_classes`` say how the result was made;
    ``other_breast`` is empty, or says which image of the other breast the findings were read
    against (:meth:`Predictor.against_other_breast`). ``cell_maps`` are the network's cell
    heatmaps (one per scale) the others are made from (:meth:`cell_grid_heatmaps`).

    Per-class figures exist only for the classes the model learned (:attr:`learned_classes`):
    an output it was never trained on sits near sigmoid(0) = 0.5 whatever the image, so its
    maximum and threshold say nothing and the outputs carry none (None / absent).
    """

    label_map: np.ndarray  # (H, W) uint8, 0 = no finding, k = classes[k - 1]
    findings: List[DetectedFinding]
    classes: List[str]
    thresholds: List[float]
    image: MammogramImage
    mode: str
    timings: Dict[str, float] = field(default_factory=dict)
    model_info: ModelInfo = field(default_factory=ModelInfo)
    model_path: str = ""
    model_sha256: str = ""
    reported_classes: List[str] = field(default_factory=list)
    flip_tta: bool = False
    scales: Tuple[float, ...] = (1.0,)
    grid_heatmaps: Optional[np.ndarray] = None
    grid_factor: int = 1
    other_breast: Dict[str, Any] = field(default_factory=dict)
    cell_maps: Tuple["CellHeatmaps", ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        self._heatmaps: Optional[np.ndarray] = None

    def model_record(self) -> Dict[str, Any]:
        """The model and run settings as the outputs record them (findings.json's "model")."""
        return {"path": self.model_path, "sha256": self.model_sha256, "backbone": self.model_info.backbone,
                "trained": self.model_info.trained, "flip_tta": self.flip_tta, "scales": list(self.scales),
                "reported_classes": list(self.reported_classes)}

    @property
    def image_score(self) -> float:
        """The image-level score: the highest heatmap value of the reported classes on the
        detection grid (what the image gate and the image-level AUC read)."""
        grid = self.grid_heatmaps if self.grid_heatmaps is not None else self.heatmaps
        index = [self.classes.index(c) for c in self.reported_classes if c in self.classes]
        return float(grid[index].max()) if index else 0.0

    @property
    def heatmaps(self) -> np.ndarray:
        """(classes, H, W) float32 probabilities at every source pixel."""
        if self._heatmaps is None:
            if not self.cell_maps:
                raise RuntimeError("this result carries no heatmaps")
            start = time.perf_counter()
            self._heatmaps = source_heatmaps(self.cell_maps)
            _add(self.timings, "heatmaps_s", start)
        return self._heatmaps

    def heatmaps_every(self, step: int, channels: Optional[Sequence[int]] = None) -> np.ndarray:
        """(classes, ceil(H / step), ceil(W / step)) heatmaps sampled at the centre of every
        ``step`` x ``step`` block of source pixels (for writing smaller heatmap files); only
        the classes at ``channels`` when given (computing four of ten full-size maps costs
        0.4 of the time and memory)."""
        picked = slice(None) if channels is None else list(channels)
        if not self.cell_maps:
            raise RuntimeError("this result carries no heatmaps")
        if step <= 1 and self._heatmaps is not None:
            return self._heatmaps[picked]
        rows = cols = None
        if step > 1:
            height, width = self.image.shape
            rows = np.arange(0, height, step, dtype=np.float64) + (step - 1) / 2.0
            cols = np.arange(0, width, step, dtype=np.float64) + (step - 1) / 2.0
        return source_heatmaps(self.cell_maps, rows, cols, channels)

    @property
    def learned_classes(self) -> List[str]:
        """The classes the model learned: those its file reports
        (:attr:`ModelInfo.reported_classes`, the classes of its training data)."""
        learned = self.model_info.reported_classes
        return [c for c in self.classes if c in learned]

    def learned_thresholds(self) -> List[Optional[float]]:
        """The thresholds, one per class, None for a class the model never learned."""
        learned = set(self.learned_classes)
        return [float(t) if c in learned else None for c, t in zip(self.classes, self.thresholds)]

    def max_probability(self) -> Dict[str, float]:
        """Each learned class's highest heatmap value (on the detection grid)."""
        grid = self.grid_heatmaps if self.grid_heatmaps is not None else self.heatmaps
        learned = set(self.learned_classes)
        return {c: float(grid[k].max()) for k, c in enumerate(self.classes) if c in learned}

    @property
    def on_one_cell_grid(self) -> bool:
        """Whether the heatmaps are one cell grid's (one scale): then that grid holds all of
        them (:meth:`cell_grid_heatmaps`). A mean over scales interpolates grids of other
        cell sizes, which no single grid holds."""
        return len(self.cell_maps) == 1

    def cell_grid_heatmaps(self, channels: Optional[Sequence[int]] = None) -> Tuple[np.ndarray, CellGrid]:
        """(classes, h, w) heatmaps on the network's own cells, one value per cell that covers
        the analysed region, and the grid's place in the source (:func:`cell_grid`): all the
        heatmaps hold, at a cell's size (32 px at the model's spacing, 16 with a finer head)."""
        if not self.on_one_cell_grid:
            raise RuntimeError("only the heatmaps of one scale lie on one cell grid")
        maps = self.cell_maps[0]
        grid = cell_grid(maps.prepared, maps.stride, tuple(maps.cells.shape[-2:]))
        values = source_heatmaps(self.cell_maps, grid.rows, grid.cols, channels, outside_zero=False)
        return values, grid

    def breast_scores(self) -> BreastScores:
        """What an image of the other breast is read against of this one
        (:meth:`Predictor.against_other_breast`; this image's ``findings.json`` records it)."""
        return BreastScores.rounded(str(self.image.path or ""), self.max_probability(), self.image_score)

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
        options: how to run it (:class:`PredictOptions`); single options may also be given as
            keywords (``Predictor(model, mode="exact")``), replacing those of ``options``.
        inferer: an already built :class:`ExactInferer` or :class:`DenseInferer` to use instead
            of building one from the mode (how a MONAI bundle passes its declared inferer).
    """

    def __init__(self, model: LoadedModel, options: Optional[PredictOptions] = None, *,
                 inferer: Optional[Inferer] = None, **option_fields: Any) -> None:
        options = (options or PredictOptions()).updated(**option_fields)
        if inferer is not None:
            mode = InferenceMode.EXACT.value if isinstance(inferer, ExactInferer) else InferenceMode.FAST.value
            options = options.updated(mode=mode)
        info = model.info
        self.model, self.options = model, options
        self.mode, self.amp, self.progress, self.blend = options.mode, options.amp, options.progress, options.blend
        self.scales = options.scales
        self.flip_tta = info.inference.flip_tta if options.flip_tta is None else bool(options.flip_tta)
        self.device = resolve_device(options.device)
        self.sw_batch_size = options.sw_batch_size or DEFAULT_BATCH.get(self.device.type, 16)
        self.network = model.network.to(self.device).eval().to(memory_format=torch.channels_last)
        if options.compile:
            self.network = torch.compile(self.network, dynamic=True)
        self.thresholds = list(options.thresholds) if options.thresholds is not None else list(info.thresholds)
        if len(self.thresholds) != len(info.classes):
            raise ConfigError(f"{len(self.thresholds)} thresholds given for {len(info.classes)} classes")
        unknown = [c for c in (options.classes or []) if c not in info.classes]
        if unknown:
            raise ConfigError(f"unknown class(es) {unknown}; the model's classes are {info.classes}")
        unlearned = [c for c in (options.classes or []) if c not in info.reported_classes]
        if unlearned:
            raise ConfigError(f"class(es) {unlearned} were never learned by this model (its outputs there mean "
                              f"nothing); it learned {info.reported_classes}")
        self.selected = list(options.classes) if options.classes else info.reported_classes
        self.detection = options.detection or info.inference.detection
        if options.thresholds is not None and options.detection is None and self.detection.image_threshold:
            self.detection = replace(self.detection, image_threshold=0.0)  # your thresholds, your operating point
        if self.mode != "fast" and info.fine_head:
            raise ConfigError("this model's finer head (16 px cells for "
                              f"{', '.join(info.fine_head['classes'])}) scales its features over the whole image: "
                              "use fast mode", model.path or None)
        if self.mode == "fast" and info.stride != FEATURE_STRIDE:
            raise ConfigError(f"fast mode needs the backbone's stride ({FEATURE_STRIDE} px) as the window stride; "
                              f"the model's is {info.stride}: use exact mode", model.path or None)
        self.preprocessing = options.preprocessing or info.preprocessing
        temperatures = info.inference.temperatures or None
        if inferer is not None:
            self.inferer = inferer
        elif self.mode == "exact":
            self.inferer = ExactInferer(info.window, info.stride, self.sw_batch_size, self.blend, self.device,
                                        self.amp, temperatures)
        else:
            self.inferer = DenseInferer(info.window, info.stride, self.blend, self.device, self.amp, temperatures)
        self._callback: Optional[InferenceCallback] = None

    def cancel(self) -> None:
        """Ask a running :meth:`predict_image` to stop at its next batch of windows."""
        if self._callback is not None:
            self._callback.cancel()

    def check_image(self, image: MammogramImage) -> None:
        """Refuse an image this Predictor cannot analyse (spacing, size vs memory; before any work)."""
        info = self.model.info
        check_geometry(image, info.spacing_mm, self.scales, info.window)

    def prepare(self, image: MammogramImage) -> Tuple[PreprocessedImage, ...]:
        """Check ``image`` (:meth:`check_image`) and preprocess it at every scale: what
        :meth:`predict_image` takes as ``prepared`` (a batch makes it on its reading threads)."""
        self.check_image(image)
        return tuple(self.preprocess(image, scale) for scale in self.scales)

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
        return CellHeatmaps(cells=cells[0], prepared=prepared, stride=info.cell_px)

    def predict_image(self, image: MammogramImage, on_progress: Optional[ProgressCallback] = None,
                      prepared: Union[None, PreprocessedImage, Sequence[PreprocessedImage]] = None
                      ) -> PredictionResult:
        """Findings, label map and heatmaps of one image.

        ``prepared``: what :meth:`prepare` made of the image (checked, one preprocessed image
        per scale; then it is not checked again), or one image from :meth:`preprocess`, used
        for scale 1 (the image is checked here then, as it is without ``prepared``)."""
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
                 prepared: Union[None, PreprocessedImage, Sequence[PreprocessedImage]] = None) -> PredictionResult:
        if isinstance(prepared, (tuple, list)):
            by_scale = list(prepared)  # made by prepare(): checked there
        else:
            self.check_image(image)
            by_scale = [prepared if scale == 1.0 else None for scale in self.scales]
        n = len(self.scales)
        all_maps: List[CellHeatmaps] = []
        for k, scale in enumerate(self.scales):
            self._callback = InferenceCallback(report, span=(0.9 * k / n, 0.9 * (k + 1) / n))
            all_maps.append(self.cell_heatmaps(image, scale, self._callback, timings, by_scale[k]))
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
        factor, grid_rows, grid_cols = detection_grid(image.shape, image.spacing_mm, self.detection.grid_mm)
        grid_heat = None
        for maps in all_maps:
            at_grid = cells_to_source(maps.cells, maps.prepared, maps.stride, grid_rows, grid_cols)
            grid_heat = at_grid if grid_heat is None else grid_heat + at_grid
        grid = (grid_heat / len(all_maps)).clamp_(0.0, 1.0).cpu().numpy()
        findings, label_map = self._detect(image, grid, factor, self.thresholds, self.detection)
        _add(timings, "postprocess_s", start)
        return PredictionResult(label_map=label_map, findings=findings, classes=list(info.classes),
                                thresholds=list(self.thresholds), image=image, mode=self.mode, timings=timings,
                                model_info=info, model_path=self.model.path, model_sha256=self.model.sha256,
                                reported_classes=list(self.selected), flip_tta=self.flip_tta,
                                scales=tuple(self.scales),
                                grid_heatmaps=grid, grid_factor=factor, cell_maps=tuple(all_maps))


    def _detect(self, image: MammogramImage, grid: np.ndarray, factor: int, thresholds: Sequence[float],
                detection) -> Tuple[List[DetectedFinding], np.ndarray]:
        """Findings and label map from the detection-grid heatmaps at ``thresholds`` (classes
        not reported never give a finding)."""
        info = self.model.info
        spacing_rc = (image.geometry.row_spacing, image.geometry.col_spacing)
        cut = [t if c in self.selected else np.inf for c, t in zip(info.classes, thresholds)]
        window_px = info.window * (info.spacing_mm or image.spacing_mm) / image.spacing_mm
        findings, regions = detect_findings(grid, info.classes, cut, factor, spacing_rc, image.shape,
                                            detection, max_box_px=window_px)
        return findings, label_map_from_findings(regions, grid.shape[1:], factor, image.shape)

    @property
    def reads_other_breast(self) -> bool:
        """Whether :meth:`against_other_breast` changes anything: the model carries an operating
        point for pairs, the caller kept the model's thresholds (your thresholds are for
        single images) and did not ask for every image alone (``other_breast=False``)."""
        return (self.model.info.inference.other_breast.active and self.options.thresholds is None
                and self.options.other_breast)

    def against_other_breast(self, result: PredictionResult,
                             other: Union[PredictionResult, BreastScores]) -> PredictionResult:
        """``result`` with its findings and label map picked at the model's operating point for
        pairs: each class's threshold raised by the weight x that class's highest heatmap value
        in ``other`` (the same view of her other breast), the image gate by the weight x
        ``other``'s image score (:mod:`MammoPatchLib.other_breast`). The heatmaps are the same.
        ``other`` is that image's result, or its :class:`BreastScores` (what its findings.json
        records: a resumed batch has no more of an image done in an earlier run); a result is
        read through its BreastScores, so both give the same findings.
        Returns ``result`` itself when :attr:`reads_other_breast` is False."""
        if not self.reads_other_breast:
            return result
        if isinstance(other, PredictionResult):
            if other.grid_heatmaps is None:
                raise ValueError("reading against the other breast needs both results' detection-grid heatmaps")
            other = other.breast_scores()
        if result.grid_heatmaps is None:
            raise ValueError("reading against the other breast needs both results' detection-grid heatmaps")
        missing = [c for c in result.learned_classes if c not in other.class_maxima]
        if missing:
            raise ValueError(f"the other breast's scores lack the class(es) {missing}")
        point = self.model.info.inference.other_breast
        maxima = other.class_maxima
        thresholds = [threshold_against_other_breast(t, maxima[c], point.weight) if c in maxima else t
                      for c, t in zip(result.classes, point.thresholds)]
        gate = 0.0
        if point.image_threshold:
            gate = min(max(threshold_against_other_breast(point.image_threshold, other.image_score, point.weight),
                           0.0), 1.0)
        start = time.perf_counter()
        findings, label_map = self._detect(result.image, result.grid_heatmaps, result.grid_factor, thresholds,
                                           replace(self.detection, image_threshold=gate))
        timings = dict(result.timings)
        _add(timings, "postprocess_s", start)
        record = {"image": other.image, "weight": point.weight, "image_score": other.image_score,
                  "class_maxima": {c: maxima[c] for c in self.selected}}
        return replace(result, findings=findings, label_map=label_map, thresholds=thresholds, timings=timings,
                       other_breast=record)


def source_heatmaps(all_maps: Sequence[CellHeatmaps], rows=None, cols=None,
                    channels: Optional[Sequence[int]] = None, outside_zero: bool = True) -> np.ndarray:
    """(classes, H, W) float32 heatmaps at every source pixel (or at ``rows`` x ``cols``; of
    the classes at ``channels``): the mean over scales of each scale's cell maps mapped
    through its preprocessing chain (on the compute device); zero outside the analysed region
    unless ``outside_zero`` is False."""
    total = None
    for maps in all_maps:
        cells = maps.cells if channels is None else maps.cells[list(channels)]
        at_pixels = cells_to_source(cells, maps.prepared, maps.stride, rows, cols, outside_zero)
        total = at_pixels if total is None else total + at_pixels
    return (total / len(all_maps)).clamp_(0.0, 1.0).cpu().numpy().astype(np.float32, copy=False)


def _add(timings: Dict[str, float], key: str, start: float) -> None:
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - start

