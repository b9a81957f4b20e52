"""Patches from data sets: prepared (preprocessed, disk-cached) images, the poster's and our
patch sampling, slots and the patch dataset. Used by the network path of training and by the
patch-level evaluation (the poster's table)."""

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
from .slots import NO_FINDING_SLOT, Slot, build_slots

__all__ = ["PatchDataset", "validation_patches", "PreparedImage", "prepare_image", "prepare_images", "prepared_from",
           "SAMPLING_MODES", "RandFindingPatchd", "SamplingConfig", "crop_and_resize", "draw_region", "draw_window",
           "patch_target", "window_target", "NO_FINDING_SLOT", "Slot", "build_slots"]
