"""Cell-level targets: which cells of a preprocessed image (32 px, or 16 px for finer cells)
should fire for which class.

A cell is positive for a class when the centre of a lesion of that class lies within
``radius_px`` of the cell's centre, or within ``extent`` x the lesion's radius (a large mass
covers several cells). Cells just beyond that, up to ``ignore_px`` further, and the rest of the
lesion's own disc, are ignored: neither positive nor negative, since a cell half on a lesion's
rim is neither. A class known on an image only as an image-level label (MIAS calcifications
without coordinates) is ignored over the whole image: its cells can be neither.
Radii are in preprocessed pixels (at the model's pixel spacing).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from .feature_cache import CellGeometry


def cell_centres(grid_shape: Tuple[int, int], stride: int, size: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Preprocessed (row, col) pixel coordinates of the centres of the ``size``-pixel squares
    (default: one cell, ``stride``) placed every ``stride`` pixels, as two 1-D arrays."""
    centre = ((size or stride) - 1) / 2.0
    return np.arange(grid_shape[0]) * stride + centre, np.arange(grid_shape[1]) * stride + centre


def cell_targets(record, geometry: CellGeometry, grid_shape: Tuple[int, int], classes: Sequence[str],
                 trained: Sequence[str], radius_px: float = 32.0, extent: float = 0.0,
                 ignore_px: float = 32.0, size: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(targets, mask), each (len(classes), gh, gw): targets in {0, 1}; mask False where a cell
    (``geometry.cell_px`` pixels wide) does not count (ignored, or a class outside ``trained``).
    ``size``: the side of the squares scored (0: a cell; the window, 256, for the poster's window targets, where a window
    is positive when a lesion centre lies within ``radius_px`` of the window's centre)."""
    k = len(classes)
    targets = np.zeros((k, *grid_shape), dtype=np.float32)
    mask = np.zeros((k, *grid_shape), dtype=bool)
    for index, name in enumerate(classes):
        if name in trained and name not in record.image_labels:
            mask[index] = True
    rows, cols = cell_centres(grid_shape, geometry.cell_px, size)
    for finding in record.findings:
        if finding.category not in classes or finding.category not in trained:
            continue
        index = classes.index(finding.category)
        x, y = finding.centre
        (row, col), = geometry.to_processed(np.array([[y, x]]))
        x0, y0, x1, y1 = finding.box
        lesion_radius = 0.25 * ((x1 - x0) + (y1 - y0)) * geometry.scale
        distance = np.hypot(rows[:, None] - row, cols[None, :] - col)
        positive_radius = max(radius_px, extent * lesion_radius)
        positive = distance <= positive_radius
        ignored = (distance <= max(positive_radius + ignore_px, lesion_radius)) & ~positive
        targets[index][positive] = 1.0
        mask[index][ignored & (targets[index] == 0)] = False
        mask[index][positive] = True
    return targets, mask
