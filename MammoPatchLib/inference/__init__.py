"""Sliding-window inference: exact (MONAI SlidingWindowInferer) and fast (dense) modes."""

from .dense import dense_window_probabilities, fast_cell_heatmap
from .exact import WindowBlockPredictor, exact_cell_heatmap
from .predictor import DEFAULT_MODE, MODES, PredictionResult, Predictor, resolve_device
from .windows import BLEND_MODES, blend_kernel, cells_to_pixels, pad_for_windows, stitch_window_grid, window_count

__all__ = ["dense_window_probabilities", "fast_cell_heatmap", "WindowBlockPredictor", "exact_cell_heatmap",
           "DEFAULT_MODE", "MODES", "PredictionResult", "Predictor", "resolve_device", "cells_to_pixels",
           "pad_for_windows", "stitch_window_grid", "window_count", "BLEND_MODES", "blend_kernel"]
