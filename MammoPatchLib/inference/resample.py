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
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

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
                    rows: Optional[Sequence[float]] = None, cols: Optional[Sequence[float]] = None
                    ) -> torch.Tensor:
    """(K, gh, gw) cell heatmap -> (K, len(rows), len(cols)) values at source pixel
    coordinates ``rows`` x ``cols`` (default: every source pixel), zero outside the
    analysed region."""
    height, width = prepared.source_shape
    rows = np.arange(height, dtype=np.float64) if rows is None else np.asarray(rows, dtype=np.float64)
    cols = np.arange(width, dtype=np.float64) if cols is None else np.asarray(cols, dtype=np.float64)
    a_r, b_r, a_c, b_c = _axis_map(prepared.index_matrix())
    pr, pc = a_r * rows + b_r, a_c * cols + b_c
    valid_rows, valid_cols = prepared.valid_shape
    inside_r = (pr >= -0.5) & (pr <= valid_rows - 0.5)
    inside_c = (pc >= -0.5) & (pc <= valid_cols - 0.5)
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
