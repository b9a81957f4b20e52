"""Cell heatmaps back onto source pixels, through the preprocessing chain's index matrix.

The stitched heatmap has one value per ``stride``-pixel cell of the preprocessed (resampled,
cropped, padded) image; cell (i, j) is centred on preprocessed pixel
(i * stride + (stride - 1) / 2, ...). Each source pixel is mapped through
:meth:`PreprocessedImage.index_matrix` to preprocessed coordinates and the cell map is
interpolated bilinearly there (values at the outer cell centres extend to the border, as
``F.interpolate(..., align_corners=False)`` does); pixels outside the analysed region (the
breast crop, before window padding) are zero.

The chain is axis-aligned (resampling, crop, flip, pad), so the bilinear interpolation is
separable: two small interpolation matrices and two matrix products, on the compute device,
instead of a full-resolution resampling of every class.

The same cells are what MammoPatch writes by default (:func:`cell_grid`, :func:`grid_heatmaps`):
a volume of one voxel per cell, placed in the source image's frame so that each voxel's
physical centre is its cell's centre. A viewer's (or SimpleITK's) linear resampling of that
volume onto the source pixels, zero outside the analysed region (:func:`grid_to_source`), gives
back :func:`cells_to_source`'s heatmap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ..io.image import ImageGeometry
from ..transforms.pipeline import PreprocessedImage


def _interpolation_matrix(coords: np.ndarray, n_cells: int, valid: np.ndarray, device, dtype) -> torch.Tensor:
    """(len(coords), n_cells) linear interpolation weights at fractional cell ``coords``."""
    c = np.clip(coords, 0.0, n_cells - 1.0)
    lo = np.floor(c).astype(np.int64)
    hi = np.minimum(lo + 1, n_cells - 1)
    t = (c - lo).astype(np.float64)
    weights = np.zeros((len(coords), n_cells), dtype=np.float64)
    rows = np.arange(len(coords))
    np.add.at(weights, (rows, lo), 1.0 - t)
    np.add.at(weights, (rows, hi), t)
    weights[~valid] = 0.0
    return torch.as_tensor(weights, dtype=dtype, device=device)


def _axis_map(matrix: np.ndarray) -> Tuple[float, float, float, float]:
    if abs(matrix[0, 1]) > 1e-9 or abs(matrix[1, 0]) > 1e-9:
        raise ValueError("the preprocessing chain is not axis-aligned; cannot map cells separably")
    return float(matrix[0, 0]), float(matrix[0, 2]), float(matrix[1, 1]), float(matrix[1, 2])


def cells_to_source(cells: torch.Tensor, prepared: PreprocessedImage, stride: int,
                    rows: Optional[Sequence[float]] = None, cols: Optional[Sequence[float]] = None,
                    outside_zero: bool = True) -> torch.Tensor:
    """(K, gh, gw) cell heatmap -> (K, len(rows), len(cols)) values at source pixel
    coordinates ``rows`` x ``cols`` (default: every source pixel), zero outside the
    analysed region unless ``outside_zero`` is False (the cell grid's own edge cells are
    needed beyond it to interpolate up to its border)."""
    height, width = prepared.source_shape
    rows = np.arange(height, dtype=np.float64) if rows is None else np.asarray(rows, dtype=np.float64)
    cols = np.arange(width, dtype=np.float64) if cols is None else np.asarray(cols, dtype=np.float64)
    a_r, b_r, a_c, b_c = _axis_map(prepared.index_matrix())
    pr, pc = a_r * rows + b_r, a_c * cols + b_c
    valid_rows, valid_cols = prepared.valid_shape
    inside_r = ((pr >= -0.5) & (pr <= valid_rows - 0.5)) | (not outside_zero)
    inside_c = ((pc >= -0.5) & (pc <= valid_cols - 0.5)) | (not outside_zero)
    centre = (stride - 1) / 2.0
    gh, gw = cells.shape[-2:]
    w_r = _interpolation_matrix((pr - centre) / stride, gh, inside_r, cells.device, cells.dtype)
    w_c = _interpolation_matrix((pc - centre) / stride, gw, inside_c, cells.device, cells.dtype)
    return torch.matmul(w_r, torch.matmul(cells, w_c.T))


def detection_grid(source_shape: Tuple[int, int], source_spacing_mm: float, grid_mm: float
                   ) -> Tuple[int, np.ndarray, np.ndarray]:
    """A coarser grid of the source image for finding detections: every ``factor``-th pixel
    with ``factor`` ~ ``grid_mm`` / spacing. Returns (factor, row centres, column centres),
    the centres in source pixel coordinates (the middle of each factor x factor block)."""
    factor = max(1, int(round(grid_mm / max(source_spacing_mm, 1e-9))))
    rows = np.arange(0, source_shape[0], factor, dtype=np.float64) + (min(factor, source_shape[0]) - 1) / 2.0
    cols = np.arange(0, source_shape[1], factor, dtype=np.float64) + (min(factor, source_shape[1]) - 1) / 2.0
    return factor, rows, cols


@dataclass(frozen=True)
class CellGrid:
    """The network's cells that cover the analysed region of one image, in the source's pixel
    coordinates: cell (i, j) is centred on source pixel (``rows[i]``, ``cols[j]``) (continuous
    index, both increasing, evenly spaced) and the analysed region is the source box
    ``region`` (xmin, ymin, xmax, ymax: pixel edges, the pixels whose centres lie in it)."""

    rows: np.ndarray
    cols: np.ndarray
    region: Tuple[int, int, int, int]

    @property
    def shape(self) -> Tuple[int, int]:
        return len(self.rows), len(self.cols)

    def geometry(self, source: ImageGeometry) -> ImageGeometry:
        """The grid as a volume in ``source``'s frame: voxel (i, j)'s physical centre is the
        physical point of source pixel (``rows[i]``, ``cols[j]``) (ITK's index-to-point map
        origin + direction x spacing x index), so viewers overlay it in place."""
        step_r = float(self.rows[1] - self.rows[0]) if len(self.rows) > 1 else 1.0
        step_c = float(self.cols[1] - self.cols[0]) if len(self.cols) > 1 else 1.0
        direction = np.asarray(source.direction, dtype=float).reshape(3, 3)
        offset = direction @ np.array([self.cols[0] * source.spacing[0], self.rows[0] * source.spacing[1], 0.0])
        return ImageGeometry(spacing=(source.spacing[0] * step_c, source.spacing[1] * step_r, source.spacing[2]),
                             origin=tuple(float(o + d) for o, d in zip(source.origin, offset)),
                             direction=source.direction)


def _grid_axis(a: float, b: float, n_cells: int, first: int, end: int, stride: int) -> np.ndarray:
    """One axis of :func:`cell_grid`: the source coordinates of the cells that source pixels
    ``first`` .. ``end - 1`` are interpolated from."""
    centre = (stride - 1) / 2.0
    at = (a * np.array([first, end - 1], dtype=np.float64) + b - centre) / stride
    low = int(np.clip(np.floor(at.min() + 1e-9), 0, n_cells - 1))
    high = int(np.clip(np.ceil(at.max() - 1e-9), 0, n_cells - 1))
    return np.sort((np.arange(low, high + 1) * stride + centre - b) / a)


def cell_grid(prepared: PreprocessedImage, stride: int, cells_shape: Tuple[int, int]) -> CellGrid:
    """The cells of ``prepared``'s (gh, gw) = ``cells_shape`` grid that the source pixels of its
    analysed region are interpolated from (:func:`cells_to_source`), in source coordinates."""
    a_r, b_r, a_c, b_c = _axis_map(prepared.index_matrix())
    x0, y0, x1, y1 = prepared.analysed_box_in_source()
    if x1 <= x0 or y1 <= y0:
        raise ValueError("the analysed region holds no source pixel")
    return CellGrid(rows=_grid_axis(a_r, b_r, cells_shape[0], y0, y1, stride),
                    cols=_grid_axis(a_c, b_c, cells_shape[1], x0, x1, stride), region=(x0, y0, x1, y1))


def grid_to_source(values: np.ndarray, grid_geometry: ImageGeometry, region: Sequence[int],
                   source_geometry: ImageGeometry, source_shape: Tuple[int, int]) -> np.ndarray:
    """(K, h, w) maps on a cell grid (written with ``grid_geometry``) -> (K, H, W) at every
    source pixel, as a viewer shows them: SimpleITK's linear resampling onto the source's
    pixels, zero outside the analysed ``region`` (xmin, ymin, xmax, ymax)."""
    import SimpleITK as sitk

    from ..io.writers import sitk_image

    reference = sitk_image(np.zeros(source_shape, dtype=np.float32), source_geometry)
    x0, y0, x1, y1 = (int(v) for v in region)
    out = np.zeros((len(values), *source_shape), dtype=np.float32)
    for k, channel in enumerate(values):
        grid = sitk_image(np.asarray(channel, dtype=np.float32), grid_geometry)
        resampled = sitk.Resample(grid, reference, sitk.Transform(), sitk.sitkLinear, 0.0)
        out[k, y0:y1, x0:x1] = sitk.GetArrayFromImage(resampled)[0, y0:y1, x0:x1]
    return out
