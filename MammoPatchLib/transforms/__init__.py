"""The poster's preprocessing as MONAI transforms (array and dictionary versions)."""

from .clahe import DEFAULT_SCALES, ClaheScale, FuseCLAHE, FuseCLAHEd, clahe
from .crop import BreastCrop, BreastCropd, OtsuBreastMask
from .intensity import ScaleToUnit, ScaleToUnitd
from .laterality import NormaliseLaterality, NormaliseLateralityd
from .pipeline import (
                       PreprocessConfig,
                       PreprocessedImage,
                       build_preprocessing,
                       build_window_padding,
                       preprocess,
                       source_affine,
                       to_metatensor,
)
from .spacing import pixel_spacing_mm

__all__ = [
    "ClaheScale", "DEFAULT_SCALES", "FuseCLAHE", "FuseCLAHEd", "clahe",
    "BreastCrop", "BreastCropd", "OtsuBreastMask",
    "ScaleToUnit", "ScaleToUnitd",
    "NormaliseLaterality", "NormaliseLateralityd",
    "PreprocessConfig", "PreprocessedImage", "build_preprocessing", "build_window_padding", "preprocess",
    "source_affine", "to_metatensor",
    "pixel_spacing_mm",
]
