"""Converting between a 3D Slicer volume's array + IJK-to-RAS matrix and MammoPatch images.

Pure numpy, no Slicer import: the Slicer Logic passes ``slicer.util.arrayFromVolume(node)``
and the node's IJKToRAS matrix here, so the conversion is tested without Slicer. A 2-D
mammogram in Slicer is a single-slice volume whose array is (1, rows, columns): K, J, I.
"""

from __future__ import annotations

import os
import re
from typing import Callable, List, Optional, Tuple

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


def box_to_roi(box_px: Tuple[float, float, float, float], ijk_to_ras: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """A markups ROI for a pixel box (xmin, ymin, xmax, ymax) on slice K = 0: its 4 x 4
    ObjectToNode matrix (axes along the volume's I, J, K directions, origin at the box centre,
    RAS) and its size in mm along those axes. A box drawn on a rotated or flipped volume stays
    on the same pixels."""
    matrix = np.asarray(ijk_to_ras, dtype=float)
    x0, y0, x1, y1 = (float(v) for v in box_px)
    centre = matrix @ np.array([(x0 + x1) / 2 - 0.5, (y0 + y1) / 2 - 0.5, 0.0, 1.0])
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    axes = matrix[:3, :3] / np.where(spacing == 0, 1.0, spacing)
    object_to_node = np.eye(4)
    object_to_node[:3, :3] = axes
    object_to_node[:3, 3] = centre[:3]
    size = np.array([(x1 - x0) * spacing[0], (y1 - y0) * spacing[1], max(spacing[2], 1.0)])
    return object_to_node, size


def dicom_source_file(instance_uids: Optional[str], file_for_instance: Optional[Callable[[str], str]]) -> Optional[str]:
    """The DICOM file a volume node was loaded from, from its "DICOM.instanceUIDs" attribute
    (space-separated SOP Instance UIDs, set by Slicer's DICOM scalar volume plugin) and the
    DICOM database's fileForInstance; None for a volume that did not come from one DICOM file."""
    if not instance_uids or file_for_instance is None:
        return None
    uids = instance_uids.split()
    if len(uids) != 1:
        return None
    path = file_for_instance(uids[0])
    return path or None


ACTIVATION_FILE = re.compile(r"^activation_(\d+)_[a-z0-9_]+\.nrrd$")


def activation_map_files(result_folder: str) -> List[Tuple[int, str]]:
    """(finding index from 0, path) of the activation maps in a result folder, in finding order
    (``activation_<rank>_<class>.nrrd``, written by :func:`MammoPatchLib.activation.write_activation_maps`)."""
    if not os.path.isdir(result_folder):
        return []
    found = []
    for name in os.listdir(result_folder):
        match = ACTIVATION_FILE.match(name)
        if match:
            found.append((int(match.group(1)) - 1, os.path.join(result_folder, name)))
    return sorted(found)
