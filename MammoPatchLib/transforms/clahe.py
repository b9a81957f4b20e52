"""Steps 2-3 of the poster: CLAHE at two scales, fused channel-wise with the original.

The poster gives neither scale. Ours are set in physical units so a 70 um and a 200 um image
of the same breast get the same enhancement:

- fine scale: 12.5 mm tiles, clip limit 2.0 (local contrast: calcifications, spicules);
- coarse scale: 50 mm tiles, clip limit 2.0 (regional density: masses, asymmetries).

The tile grid is ``ceil(image size in mm / tile mm)`` per axis. CLAHE runs on 8-bit
quantised input with OpenCV (``cv2.createCLAHE``): 256 bins give the clip limit its usual
meaning (OpenCV's 16-bit mode uses 65,536 bins, so the clip would depend on the tile's pixel
count), and it takes ~0.05 s on 3000 x 2400 against ~0.5 s for scikit-image. The original
[0, 1] channel keeps full precision.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Dict, Hashable, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_tensor

from .spacing import pixel_spacing_mm


@dataclass(frozen=True)
class ClaheScale:
    """One CLAHE scale: tile side in mm and OpenCV clip limit (relative to a uniform histogram)."""

    tile_mm: float
    clip_limit: float

    def __post_init__(self) -> None:
        if self.tile_mm <= 0 or self.clip_limit <= 0:
            raise ValueError(f"CLAHE tile_mm and clip_limit must be positive, got {self}")


DEFAULT_SCALES: Tuple[ClaheScale, ClaheScale] = (ClaheScale(12.5, 2.0), ClaheScale(50.0, 2.0))


@functools.lru_cache(maxsize=None)
def _sequential_opencv():
    """OpenCV with its thread pool switched off before its first parallel call. Images are
    prepared in forked DataLoader workers (``prepare_images``, the network path's cache): a child
    forked while the parent's OpenCV pool holds a lock waits on it for ever inside CLAHE (seen as
    a hung worker); both scales of a 3000 x 2400 image take about 0.1 s on one thread."""
    import cv2

    cv2.setNumThreads(0)
    return cv2


def clahe(image01: np.ndarray, spacing_mm: float, scale: ClaheScale) -> np.ndarray:
    """CLAHE of a 2-D [0, 1] array with tiles of ``scale.tile_mm``; returns float32 in [0, 1]."""
    cv2 = _sequential_opencv()
    rows, cols = image01.shape
    grid = (
        max(1, math.ceil(cols * spacing_mm / scale.tile_mm)),
        max(1, math.ceil(rows * spacing_mm / scale.tile_mm)),
    )
    quantised = np.clip(np.rint(image01 * 255.0), 0, 255).astype(np.uint8)
    enhanced = cv2.createCLAHE(clipLimit=float(scale.clip_limit), tileGridSize=grid).apply(quantised)
    return enhanced.astype(np.float32) / 255.0


class FuseCLAHE(Transform):
    """(1, H, W) image in [0, 1] -> (3, H, W): [original, CLAHE fine, CLAHE coarse].

    Args:
        scales: the two (or more) CLAHE scales, in channel order after the original.
        spacing_mm: pixel spacing used when the input is not a MetaTensor with an affine.
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(self, scales: Sequence[ClaheScale] = DEFAULT_SCALES, spacing_mm: Optional[float] = None) -> None:
        self.scales = tuple(scales)
        if not self.scales:
            raise ValueError("FuseCLAHE needs at least one CLAHE scale")
        self.spacing_mm = spacing_mm

    def __call__(self, img):
        data = convert_to_tensor(img, track_meta=True, dtype=torch.float32)
        if data.ndim != 3 or data.shape[0] != 1:
            raise ValueError(f"FuseCLAHE expects a (1, H, W) image, got shape {tuple(data.shape)}")
        spacing = pixel_spacing_mm(data, self.spacing_mm)
        original = data[0].detach().cpu().numpy()
        if original.min() < 0.0 or original.max() > 1.0 + 1e-6:
            raise ValueError("FuseCLAHE expects values in [0, 1]: run ScaleToUnit first")
        channels = [original] + [clahe(original, spacing, scale) for scale in self.scales]
        fused = torch.from_numpy(np.stack(channels).astype(np.float32))
        if isinstance(data, MetaTensor):
            return MetaTensor(fused, meta=data.meta, applied_operations=data.applied_operations)
        return fused


class FuseCLAHEd(MapTransform):
    """Dictionary version of :class:`FuseCLAHE`."""

    backend = FuseCLAHE.backend

    def __init__(self, keys: KeysCollection, scales: Sequence[ClaheScale] = DEFAULT_SCALES,
                 spacing_mm: Optional[float] = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.fuser = FuseCLAHE(scales=scales, spacing_mm=spacing_mm)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.fuser(d[key])
        return d
