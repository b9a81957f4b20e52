"""Patches from data sets: prepared (preprocessed) images, the poster's and our patch sampling,
slots and the patch dataset. Used by training and by the patch-level evaluation."""

from .dataset import PatchDataset, validation_patches
from .prepare import PreparedImage, prepare_image, prepare_images, prepared_from
from .sampling import (
                       SAMPLING_MODES,
                       RandFindingPatchd,
                       SamplingConfig,
                       crop_and_resize,
                       draw_region,
                       draw_window,
                       patch_target,
                       window_target,
)
from .slots import HARD_NEGATIVE_SLOT, NO_FINDING_SLOT, Slot, build_slots

__all__ = ["PatchDataset", "validation_patches", "PreparedImage", "prepare_image", "prepare_images", "prepared_from",
           "SAMPLING_MODES", "RandFindingPatchd", "SamplingConfig", "crop_and_resize", "draw_region", "draw_window",
           "patch_target", "window_target", "HARD_NEGATIVE_SLOT", "NO_FINDING_SLOT", "Slot",
           "build_slots"]
