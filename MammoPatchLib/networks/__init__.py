"""Networks: backbone registry and the poster's patch classifier."""

from .backbones import BACKBONES, DEFAULT_BACKBONE, FEATURE_STRIDE, available_backbones, build_backbone
from .patch_classifier import PatchClassifier

__all__ = ["BACKBONES", "DEFAULT_BACKBONE", "FEATURE_STRIDE", "available_backbones", "build_backbone", "PatchClassifier"]
