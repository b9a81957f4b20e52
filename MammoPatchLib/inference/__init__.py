"""Sliding-window inference: one fully-convolutional network behind two MONAI Inferers."""

from ..vocabulary import DEFAULT_MODE, MODES
from .options import PredictOptions
from .inferers import DenseInferer, ExactInferer, InferenceCallback, WindowBlocks, autocast_for
from .predictor import DEFAULT_BATCH, CellHeatmaps, PredictionResult, Predictor, resolve_device
from .resample import cells_to_source, detection_grid
from .windows import BLEND_MODES, blend_kernel, padded_size, stitch_window_grid, window_count

__all__ = ["DenseInferer", "ExactInferer", "InferenceCallback", "WindowBlocks", "autocast_for", "DEFAULT_BATCH",
           "CellHeatmaps", "PredictionResult", "PredictOptions", "Predictor", "resolve_device", "cells_to_source",
           "detection_grid",
           "BLEND_MODES", "blend_kernel", "padded_size", "stitch_window_grid", "window_count", "DEFAULT_MODE",
           "MODES"]
