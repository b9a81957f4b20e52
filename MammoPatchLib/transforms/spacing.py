"""Reading the in-plane pixel spacing of a channel-first 2-D image."""

from __future__ import annotations

from typing import Optional

import numpy as np
from monai.data import MetaTensor


def pixel_spacing_mm(img, default: Optional[float] = None) -> float:
    """Mean in-plane spacing (mm) from a MetaTensor's affine, else ``default``.

    Raises:
        ValueError: when the image carries no spacing and no default is given.
    """
    if isinstance(img, MetaTensor):
        pixdim = np.asarray(img.pixdim, dtype=float)[:2]
        if pixdim.size == 2 and np.all(np.isfinite(pixdim)) and np.all(pixdim > 0):
            return float(pixdim.mean())
    if default is None:
        raise ValueError("image has no pixel spacing (not a MetaTensor with an affine) and no spacing_mm was given")
    return float(default)
