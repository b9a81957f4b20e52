"""Step 4 of the poster: crop to the breast found with Otsu's threshold.

The mask is Otsu's threshold followed by the largest connected component, so film labels,
markers and a non-zero background (scanned film) cannot widen the box. The crop itself is
MONAI's invertible :class:`~monai.transforms.CropForeground`: ``inverse()`` pads a heatmap
back to the full image with zeros outside the box.

For speed the threshold and components are computed on a subsampled copy (every
``subsample``-th pixel); the mask is expanded back to full size, so the box is exact to
``subsample`` pixels, well inside the margin.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import CropForeground, CropForegroundd


class OtsuBreastMask:
    """``select_fn`` for CropForeground: largest Otsu foreground component of channel 0.

    Args:
        subsample: stride of the subsampled copy the mask is computed on.
    """

    def __init__(self, subsample: int = 4) -> None:
        self.subsample = max(1, int(subsample))

    def mask2d(self, image: np.ndarray) -> np.ndarray:
        """Boolean breast mask of a 2-D array, same shape."""
        from skimage.filters import threshold_otsu
        from skimage.measure import label

        s = self.subsample
        small = np.ascontiguousarray(image[::s, ::s], dtype=np.float32)
        if float(small.max()) == float(small.min()):
            return np.zeros(image.shape, dtype=bool)
        foreground = small > threshold_otsu(small)
        labels = label(foreground, connectivity=2)
        if labels.max() == 0:
            return np.zeros(image.shape, dtype=bool)
        largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
        component = labels == largest
        full = np.repeat(np.repeat(component, s, axis=0), s, axis=1)
        return full[: image.shape[0], : image.shape[1]]

    def __call__(self, img: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
        array = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        mask = self.mask2d(array[0])
        return np.broadcast_to(mask, array.shape)


class BreastCrop(CropForeground):
    """Invertible crop of a channel-first image to its Otsu breast box plus ``margin`` px.

    Channel 0 (the original image after ScaleToUnit) decides the box; all channels are cropped.
    """

    def __init__(self, margin: Union[int, Sequence[int]] = 16, subsample: int = 4, **kwargs) -> None:
        super().__init__(select_fn=OtsuBreastMask(subsample), channel_indices=0, margin=margin,
                         allow_smaller=True, **kwargs)


class BreastCropd(CropForegroundd):
    """Dictionary version of :class:`BreastCrop`; ``source_key`` picks the image that decides."""

    def __init__(self, keys: KeysCollection, source_key: str = "image", margin: Union[int, Sequence[int]] = 16,
                 subsample: int = 4, allow_missing_keys: bool = False, **kwargs) -> None:
        super().__init__(keys, source_key=source_key, select_fn=OtsuBreastMask(subsample), channel_indices=0,
                         margin=margin, allow_smaller=True, allow_missing_keys=allow_missing_keys, **kwargs)
