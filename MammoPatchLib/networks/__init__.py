"""Networks: backbone registry and the poster's patch classifier (fully convolutional)."""

from .backbones import (BACKBONES, DEFAULT_BACKBONE, FEATURE_STRIDE, available_backbones, build_backbone,
                        has_tunable_last_stage)
from .patch_classifier import (HEAD_POOLINGS, HEAD_TYPES, CellHead, PatchClassifier, TunedStages, TunedTailHead,
                               WindowHead)

__all__ = ["BACKBONES", "DEFAULT_BACKBONE", "FEATURE_STRIDE", "available_backbones", "build_backbone",
           "has_tunable_last_stage",
           "HEAD_POOLINGS", "HEAD_TYPES", "CellHead", "PatchClassifier", "TunedStages", "TunedTailHead", "WindowHead"]
