"""The poster's whole preprocessing as one MONAI Compose, configured by a dataclass.

normalise [0, 1] -> (optional) resample to the model's pixel spacing -> CLAHE x 2 fused
with the original -> Otsu breast crop -> (optional) laterality flip.

Every geometry-changing step is invertible: ``pipeline.inverse`` (or MONAI's ``Invertd``)
maps a heatmap computed on the preprocessed image back onto the source pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, DivisiblePadd, Spacingd, SpatialPadd

from ..config import config_from_dict, config_to_dict
from ..errors import ConfigError
from ..io.image import MammogramImage
from .clahe import DEFAULT_SCALES, ClaheScale, FuseCLAHEd
from .crop import BreastCropd
from .intensity import ScaleToUnitd
from .laterality import NormaliseLateralityd
from .spacing import pixel_spacing_mm


@dataclass
class PreprocessConfig:
    """Every preprocessing parameter; stored in model files so inference repeats training.

    Attributes:
        lower_percentile, upper_percentile: ScaleToUnit's percentiles.
        clahe_scales: (tile_mm, clip_limit) per CLAHE channel.
        target_spacing_mm: resample to this spacing first (None keeps the source spacing).
        crop_margin_px: margin around the Otsu breast box, in (resampled) pixels.
        crop: whether to crop to the breast at all.
        normalise_laterality: flip so the chest wall is on the left.
    """

    lower_percentile: float = 0.0
    upper_percentile: float = 99.9
    clahe_scales: List[Tuple[float, float]] = field(
        default_factory=lambda: [(s.tile_mm, s.clip_limit) for s in DEFAULT_SCALES]
    )
    target_spacing_mm: Optional[float] = None
    crop_margin_px: int = 16
    crop: bool = True
    normalise_laterality: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.lower_percentile < self.upper_percentile <= 100:
            raise ConfigError("preprocessing: need 0 <= lower_percentile < upper_percentile <= 100")
        if self.target_spacing_mm is not None and self.target_spacing_mm <= 0:
            raise ConfigError("preprocessing.target_spacing_mm must be positive or null")
        if self.crop_margin_px < 0:
            raise ConfigError("preprocessing.crop_margin_px must be >= 0")
        try:
            self.clahe_scales = [tuple(float(v) for v in s) for s in self.clahe_scales]  # type: ignore[misc]
            for s in self.clahe_scales:
                ClaheScale(*s)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"preprocessing.clahe_scales must be [[tile_mm, clip_limit], ...] ({exc})") from None

    @property
    def channels(self) -> int:
        return 1 + len(self.clahe_scales)

    def at_spacing(self, spacing_mm: Optional[float]) -> "PreprocessConfig":
        """A copy that resamples to ``spacing_mm`` (None: keep the source spacing). The one place
        where a model's or a run's pixel spacing becomes the pipeline's target."""
        return replace(self, target_spacing_mm=spacing_mm)

    def to_dict(self) -> Dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "PreprocessConfig":
        return config_from_dict(cls, values, "preprocessing")


def source_affine(image: MammogramImage) -> torch.Tensor:
    """The 4 x 4 affine of a mammogram's pixel grid as MONAI sees it: spatial dim 0 = rows,
    dim 1 = columns, scaled by the pixel spacing (mm), index 0 at the origin."""
    affine = torch.eye(4, dtype=torch.float64)
    affine[0, 0] = image.geometry.row_spacing
    affine[1, 1] = image.geometry.col_spacing
    return affine


def to_metatensor(image: MammogramImage) -> MetaTensor:
    """A (1, H, W) float MetaTensor whose affine carries the pixel spacing (row, column)."""
    tensor = MetaTensor(torch.from_numpy(np.ascontiguousarray(image.pixels, dtype=np.float32))[None],
                        affine=source_affine(image))
    tensor.meta["filename_or_obj"] = image.path
    return tensor


def build_preprocessing(config: Optional[PreprocessConfig] = None, keys: Sequence[str] = ("image",)) -> Compose:
    """The preprocessing Compose over dictionary ``keys`` (the first key drives the crop)."""
    config = config or PreprocessConfig()
    keys = list(keys)
    steps: List[Any] = [ScaleToUnitd(keys, lower=config.lower_percentile, upper=config.upper_percentile)]
    if config.target_spacing_mm is not None:
        steps.append(Spacingd(keys, pixdim=(config.target_spacing_mm, config.target_spacing_mm), mode="bilinear",
                              padding_mode="zeros"))
    steps.append(FuseCLAHEd(keys, scales=[ClaheScale(*s) for s in config.clahe_scales]))
    if config.crop:
        steps.append(BreastCropd(keys, source_key=keys[0], margin=config.crop_margin_px))
    if config.normalise_laterality:
        steps.append(NormaliseLateralityd(keys))
    return Compose(steps)


def build_window_padding(window: int, stride: int, keys: Sequence[str] = ("image",)) -> Compose:
    """Zero padding at the bottom / right (MONAI ``SpatialPadd`` + ``DivisiblePadd``, method
    "end") to ``window + k * stride`` pixels per axis: MONAI's sliding window then starts every
    window at a multiple of ``stride`` (it would otherwise align its last window to the image
    end), so the windows are exactly the poster's grid."""
    if window % stride:
        raise ConfigError(f"window ({window}) must be a multiple of the stride ({stride})")
    keys = list(keys)
    return Compose([SpatialPadd(keys, spatial_size=(window, window), method="end"),
                    DivisiblePadd(keys, k=stride, method="end")])


@dataclass
class PreprocessedImage:
    """A preprocessed image and the geometry chain that made it.

    Every step of the chain (resampling, crop, flip, window padding) is a MONAI transform that
    updates the MetaTensor's affine, so one 3 x 3 matrix maps source pixel indices to
    preprocessed ones (:meth:`index_matrix`): heatmaps, boxes and points go back and forth
    through it. ``pipeline.inverse`` undoes the same chain step by step where wanted.

    Attributes:
        tensor: (C, h, w) MetaTensor (padded to the window grid when asked).
        pipeline: the Compose that made it (invertible).
        source_shape: (rows, columns) of the source image.
        source_affine: 4 x 4 affine of the source pixel grid (:func:`source_affine`).
        valid_shape: (rows, columns) of the preprocessed image before window padding: the
            analysed region; heatmaps are zero outside it.
    """

    tensor: MetaTensor
    pipeline: Compose
    source_shape: Tuple[int, int]
    source_affine: torch.Tensor
    valid_shape: Tuple[int, int]

    @property
    def spacing_mm(self) -> float:
        """Mean pixel spacing of the preprocessed image (mm)."""
        return pixel_spacing_mm(self.tensor)

    def index_matrix(self) -> np.ndarray:
        """3 x 3 matrix: (row, col, 1) source index -> (row, col, 1) preprocessed index."""
        processed = np.asarray(self.tensor.affine, dtype=np.float64)
        source = np.asarray(self.source_affine, dtype=np.float64)
        full = np.linalg.inv(processed) @ source
        return full[np.ix_([0, 1, 3], [0, 1, 3])]

    def to_processed(self, points_rc: np.ndarray) -> np.ndarray:
        """(N, 2) source (row, col) index coordinates -> preprocessed index coordinates."""
        return _apply(self.index_matrix(), points_rc)

    def to_source(self, points_rc: np.ndarray) -> np.ndarray:
        """(N, 2) preprocessed (row, col) index coordinates -> source index coordinates."""
        return _apply(np.linalg.inv(self.index_matrix()), points_rc)

    def boxes_to_processed(self, boxes_xyxy: np.ndarray, clip: bool = True) -> np.ndarray:
        """(N, 4) source boxes (xmin, ymin, xmax, ymax; pixel edges) -> preprocessed pixels,
        clipped to the analysed region."""
        out = _map_boxes(boxes_xyxy, self.to_processed)
        if clip:
            rows, cols = self.valid_shape
            out[:, [0, 2]] = out[:, [0, 2]].clip(0, cols)
            out[:, [1, 3]] = out[:, [1, 3]].clip(0, rows)
        return out

    def boxes_to_source(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """(N, 4) preprocessed boxes (pixel edges) -> source pixels (float, unclipped)."""
        return _map_boxes(boxes_xyxy, self.to_source)

    def analysed_box_in_source(self) -> Tuple[int, int, int, int]:
        """The analysed region (breast crop) as a source box (xmin, ymin, xmax, ymax): the
        source pixels whose centres fall inside it, clipped to the image."""
        rows, cols = self.valid_shape
        box = self.boxes_to_source(np.array([[0.0, 0.0, cols, rows]]))[0]
        h, w = self.source_shape
        x0, y0 = math.ceil(box[0] - 0.5 - 1e-9), math.ceil(box[1] - 0.5 - 1e-9)
        x1, y1 = math.floor(box[2] - 0.5 + 1e-9) + 1, math.floor(box[3] - 0.5 + 1e-9) + 1
        return (int(max(0, x0)), int(max(0, y0)), int(min(w, x1)), int(min(h, y1)))


def _apply(matrix: np.ndarray, points_rc: np.ndarray) -> np.ndarray:
    points = np.asarray(points_rc, dtype=np.float64).reshape(-1, 2)
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def _map_boxes(boxes_xyxy: np.ndarray, mapper) -> np.ndarray:
    """Map boxes given by pixel edges. Pixel i spans edges [i, i + 1) and has index coordinate
    i, so an edge e is the index coordinate e - 0.5; corners are mapped as such and turned
    back into edges (a flip swaps the ends, hence min / max)."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    if not len(boxes):
        return boxes.copy()
    first = mapper(boxes[:, [1, 0]] - 0.5) + 0.5
    last = mapper(boxes[:, [3, 2]] - 0.5) + 0.5
    lo, hi = np.minimum(first, last), np.maximum(first, last)
    return np.stack([lo[:, 1], lo[:, 0], hi[:, 1], hi[:, 0]], axis=1)


def preprocess(image: MammogramImage, config: Optional[PreprocessConfig] = None,
               window_grid: Optional[Tuple[int, int]] = None) -> PreprocessedImage:
    """Run the preprocessing chain on a mammogram.

    Args:
        image: the source mammogram.
        config: preprocessing parameters (defaults otherwise).
        window_grid: (window, stride) to pad the result to the sliding-window grid.
    """
    core = build_preprocessing(config)
    data = core({"image": to_metatensor(image)})
    valid = tuple(int(v) for v in data["image"].shape[1:])
    pipeline = core
    if window_grid is not None:
        padding = build_window_padding(*window_grid)
        data = padding(data)
        pipeline = Compose([core, padding])
    return PreprocessedImage(tensor=data["image"], pipeline=pipeline, source_shape=tuple(image.shape),
                             source_affine=source_affine(image), valid_shape=valid)
