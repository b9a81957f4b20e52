"""How a :class:`~MammoPatchLib.inference.Predictor` runs a model: one typed value for the
command line, the Python API, the MONAI bundle and the Slicer worker to hand on, checked when
it is made (what needs the model, such as the number of thresholds, is checked by the
Predictor)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Optional, Tuple

from ..errors import ConfigError
from ..postprocess import DetectionConfig
from ..transforms import PreprocessConfig
from ..vocabulary import BlendMode, DEFAULT_MODE, MODES


@dataclass(frozen=True)
class PredictOptions:
    """Attributes:
        mode: "fast" (one dense pass; default) or "exact" (window by window, MONAI
            SlidingWindowInferer, the poster's inference; a cell-head model's windows are seen
            with the image around them, so both modes agree).
        device: "auto" (CUDA, then MPS, then CPU), "cpu", "mps" or "cuda[:N]".
        sw_batch_size: windows (a cell-head model's views) per forward pass in exact mode (None: by device).
        amp: bf16 autocast on CUDA.
        thresholds: per-class thresholds overriding the model's; they replace its whole operating
            point, so the model's image gate (``detection.image_threshold``) is dropped too unless
            ``detection`` is also given.
        classes: restrict findings / label map to these class names (heatmaps keep all); by
            default the model's reported classes (those it was trained on).
        progress: show a tqdm bar per image.
        blend: how the window head's overlapping windows are averaged: "gaussian" (default) or
            "constant" (a cell-head model has one value per cell and nothing to blend).
        scales: window scales relative to the model's spacing, e.g. (0.75, 1, 1.5): the heatmaps
            found at each are averaged (multi-scale inference). (1.0,) is the poster.
        flip_tta: also run the left-right mirrored image and average (test-time augmentation);
            None: as the model says.
        detection: how findings are picked from the heatmaps; None: the model's.
        compile: ``torch.compile`` the network (CUDA; pays off over many images).
        preprocessing: preprocessing parameters replacing the model's (the target spacing
            still follows the model's spacing and ``scales``).
        other_breast: read the two breasts of a view against each other when a batch holds
            both and the model carries an operating point for pairs (False: every image alone).
    """

    mode: str = DEFAULT_MODE
    device: str = "auto"
    sw_batch_size: Optional[int] = None
    amp: bool = True
    thresholds: Optional[Tuple[float, ...]] = None
    classes: Optional[Tuple[str, ...]] = None
    progress: bool = False
    blend: str = BlendMode.GAUSSIAN.value
    scales: Tuple[float, ...] = (1.0,)
    flip_tta: Optional[bool] = None
    detection: Optional[DetectionConfig] = None
    compile: bool = False
    preprocessing: Optional[PreprocessConfig] = None
    other_breast: bool = True

    def __post_init__(self) -> None:
        def keep(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.sw_batch_size is not None and self.sw_batch_size < 1:
            raise ConfigError("sw_batch_size must be >= 1")
        scales = tuple(float(x) for x in self.scales) if self.scales is not None else ()
        if not scales or any(not (x > 0 and math.isfinite(x)) for x in scales):
            raise ConfigError(f"scales must be positive numbers, got {list(self.scales or [])}")
        keep("scales", scales)
        if self.thresholds is not None:
            thresholds = tuple(float(t) for t in self.thresholds)
            if any(not math.isfinite(t) or not 0.0 <= t <= 1.0 for t in thresholds):
                raise ConfigError(f"thresholds must be probabilities in [0, 1], got {list(thresholds)}")
            keep("thresholds", thresholds)
        if self.classes is not None:
            keep("classes", tuple(self.classes) or None)

    @classmethod
    def names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def updated(self, **changes: Any) -> "PredictOptions":
        """A copy with ``changes``; an unknown name is an error naming it."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise ConfigError(f"unknown prediction option(s) {unknown}; the options are {list(self.names())}")
        return replace(self, **changes) if changes else self
