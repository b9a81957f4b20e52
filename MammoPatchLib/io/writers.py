"""Writing results in the source image's geometry, atomically."""

from __future__ import annotations

import os

import numpy as np

from ..vocabulary import PathLike
from .atomic import atomic_path
from .image import ImageGeometry


def sitk_image(array: np.ndarray, geometry: ImageGeometry):
    """A 2-D map (or a channel-first stack, as a multi-component image) as a one-slice
    SimpleITK image with ``geometry``'s origin, spacing and direction."""
    import SimpleITK as sitk

    array = np.asarray(array)
    if array.ndim == 2:
        img = sitk.GetImageFromArray(array[np.newaxis])
    elif array.ndim == 3:
        img = sitk.GetImageFromArray(np.moveaxis(array, 0, -1)[np.newaxis], isVector=True)
    else:
        raise ValueError(f"expected a 2-D map or a (C, H, W) stack, got shape {array.shape}")
    img.SetSpacing(tuple(float(v) for v in geometry.spacing))
    img.SetOrigin(tuple(float(v) for v in geometry.origin))
    img.SetDirection(tuple(float(v) for v in geometry.direction))
    return img


def write_volume(
    array: np.ndarray, geometry: ImageGeometry, path: PathLike, overwrite: bool = True
) -> str:
    """Write a 2-D map (or a channel-first stack as a multi-component image) as NRRD/NIfTI/MHA.

    The image is written as a single slice in ``geometry`` (the source's, or a coarser grid
    placed in the source's frame), so 3D Slicer and ITK overlay it exactly on the mammogram.
    """
    import SimpleITK as sitk

    img = sitk_image(array, geometry)
    with atomic_path(path, overwrite=overwrite) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)
    return os.fspath(path)


def write_png(rgb_or_grey: np.ndarray, path: PathLike, overwrite: bool = True) -> str:
    """Write a uint8 greyscale or RGB(A) array as PNG, atomically."""
    from PIL import Image

    array = np.asarray(rgb_or_grey)
    if array.dtype != np.uint8:
        array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    with atomic_path(path, overwrite=overwrite) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return os.fspath(path)
