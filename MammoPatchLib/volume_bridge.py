"""Converting between a 3D Slicer volume's array + IJK-to-RAS matrix and MammoPatch images.

Pure numpy, no Slicer import: the Slicer Logic passes ``slicer.util.arrayFromVolume(node)``
and the node's IJKToRAS matrix here, so the conversion is tested without Slicer. A 2-D
mammogram in Slicer is a single-slice volume whose array is (1, rows, columns): K, J, I.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from .errors import InvalidImageError
from .io.image import ImageGeometry, MammogramImage


def image_from_volume_array(array: np.ndarray, ijk_to_ras: np.ndarray, name: str = "volume") -> MammogramImage:
    """A MammogramImage from a (1, rows, columns) or (rows, columns) volume array.

    Raises:
        InvalidImageError: for a multi-slice volume or a multi-component (RGB) volume.
    """
    array = np.asarray(array)
    if array.ndim == 4:
        raise InvalidImageError(f"volume has {array.shape[-1]} components per voxel; expected a greyscale mammogram", name)
    if array.ndim == 3:
        if array.shape[0] != 1:
            raise InvalidImageError(f"volume has {array.shape[0]} slices; expected a single 2-D mammogram", name)
        array = array[0]
    if array.ndim != 2:
        raise InvalidImageError(f"volume array has shape {array.shape}; expected a 2-D image", name)
    geometry = ImageGeometry.from_ijk_to_ras(np.asarray(ijk_to_ras, dtype=float))
    return MammogramImage(pixels=array.astype(np.float32), geometry=geometry, path=name,
                          spacing_source="volume geometry")


def volume_array_from_map(values: np.ndarray) -> np.ndarray:
    """A (rows, columns) map as the (1, rows, columns) array Slicer volumes hold."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {values.shape}")
    return np.ascontiguousarray(values[np.newaxis])


def box_to_ras(box_px: Tuple[float, float, float, float], ijk_to_ras: np.ndarray
               ) -> Tuple[np.ndarray, np.ndarray]:
    """Centre and size (RAS, mm) of a pixel box (xmin, ymin, xmax, ymax) on slice K = 0,
    for a markups ROI. The size is measured along the volume's own axes."""
    matrix = np.asarray(ijk_to_ras, dtype=float)
    x0, y0, x1, y1 = box_px
    corners = np.array([[x0 - 0.5, y0 - 0.5, 0, 1], [x1 - 0.5, y1 - 0.5, 0, 1]], dtype=float)
    ras = (matrix @ corners.T).T[:, :3]
    centre = ras.mean(axis=0)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    size = np.array([(x1 - x0) * spacing[0], (y1 - y0) * spacing[1], max(spacing[2], 1.0)])
    return centre, size
