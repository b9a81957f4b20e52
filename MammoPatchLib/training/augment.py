"""Patch augmentation with MONAI transforms: contrast, brightness, saturation, flips, rotations,
and (off by default, ``elastic_prob`` / ``noise_prob``) elastic deformation and noise.

All probabilities and ranges live in :class:`AugmentConfig` (a recipe's ``augmentation``).
Saturation has no MONAI transform: :class:`RandSaturationd` blends each pixel's channels
towards their mean (the three fused channels play the role of colour channels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Hashable, Mapping, Tuple

import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    MapTransform,
    Rand2DElasticd,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandomizableTransform,
    RandRotate90d,
    RandRotated,
    RandScaleIntensityd,
    ThresholdIntensityd,
)



@dataclass
class AugmentConfig:
    flip_prob: float = 0.5
    rotate90_prob: float = 0.25
    rotate_prob: float = 0.3
    rotate_degrees: float = 15.0
    contrast_prob: float = 0.3
    contrast_gamma: Tuple[float, float] = (0.7, 1.5)
    brightness_prob: float = 0.3
    brightness_factor: float = 0.15
    saturation_prob: float = 0.3
    saturation_range: Tuple[float, float] = (0.6, 1.4)
    elastic_prob: float = 0.0
    elastic_magnitude: Tuple[float, float] = (1.0, 3.0)
    noise_prob: float = 0.0
    noise_std: float = 0.02


class RandSaturationd(RandomizableTransform, MapTransform):
    """Scale each pixel's deviation from its channel mean by a factor in ``factor_range``."""

    def __init__(self, keys: KeysCollection, prob: float = 0.3, factor_range: Tuple[float, float] = (0.6, 1.4),
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.factor_range = factor_range
        self.factor = 1.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self.factor = self.R.uniform(*self.factor_range)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            img = d[key]
            mean = img.mean(dim=0, keepdim=True)
            d[key] = (mean + (img - mean) * self.factor).clamp(0.0, 1.0)
        return d


def build_augmentation(config: AugmentConfig, keys=("image",)) -> Compose:
    """The augmentation Compose for (C, S, S) samples in [0, 1] (S: patch plus context)."""
    keys = list(keys)
    extra = []
    if config.elastic_prob > 0:
        extra.append(Rand2DElasticd(keys, spacing=(32, 32), magnitude_range=tuple(config.elastic_magnitude),
                                    prob=config.elastic_prob, padding_mode="zeros"))
    if config.noise_prob > 0:
        extra.append(RandGaussianNoised(keys, prob=config.noise_prob, std=config.noise_std))
    return Compose(extra + [
        RandFlipd(keys, prob=config.flip_prob, spatial_axis=0),
        RandFlipd(keys, prob=config.flip_prob, spatial_axis=1),
        RandRotate90d(keys, prob=config.rotate90_prob),
        RandRotated(keys, range_x=math.radians(config.rotate_degrees), prob=config.rotate_prob,
                    padding_mode="zeros", keep_size=True),
        RandAdjustContrastd(keys, prob=config.contrast_prob, gamma=config.contrast_gamma),
        RandScaleIntensityd(keys, factors=config.brightness_factor, prob=config.brightness_prob),
        RandSaturationd(keys, prob=config.saturation_prob, factor_range=config.saturation_range),
        ThresholdIntensityd(keys, threshold=1.0, above=False, cval=1.0),  # brightness may overshoot 1
        ThresholdIntensityd(keys, threshold=0.0, above=True, cval=0.0),  # noise may undershoot 0
    ])
