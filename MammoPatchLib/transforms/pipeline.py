"""The poster's whole preprocessing as one MONAI Compose, configured by a dataclass.

normalise [0, 1] -> (optional) resample to the model's pixel spacing -> CLAHE x 2 fused
with the original -> Otsu breast crop -> (optional) laterality flip.

Every geometry-changing step is invertible: ``pipeline.inverse`` (or MONAI's ``Invertd``)
maps a heatmap computed on the preprocessed image back onto the source pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Spacingd

from ..errors import ConfigError, reject_unknown_fields
from ..io.image import MammogramImage
from .clahe import DEFAULT_SCALES, ClaheScale, FuseCLAHEd
from .crop import BreastCropd
from .intensity import ScaleToUnitd
from .laterality import NormaliseLateralityd


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

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["clahe_scales"] = [list(s) for s in self.clahe_scales]
        return d

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "PreprocessConfig":
        reject_unknown_fields(cls, values, "preprocessing")
        return cls(**values)


def to_metatensor(image: MammogramImage) -> MetaTensor:
    """A (1, H, W) float MetaTensor whose affine carries the pixel spacing (row, column)."""
    affine = torch.eye(4, dtype=torch.float64)
    affine[0, 0] = image.geometry.row_spacing
    affine[1, 1] = image.geometry.col_spacing
    tensor = MetaTensor(torch.from_numpy(np.ascontiguousarray(image.pixels, dtype=np.float32))[None], affine=affine)
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


def preprocess(image: MammogramImage, config: Optional[PreprocessConfig] = None) -> Tuple[MetaTensor, Compose]:
    """Run the pipeline on a mammogram; returns the (C, h, w) tensor and the Compose to invert it."""
    pipeline = build_preprocessing(config)
    out = pipeline({"image": to_metatensor(image)})
    return out["image"], pipeline
