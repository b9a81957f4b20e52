"""The other breast as a learned input of the cell head: its features, mirrored and aligned.

A woman's two films of one view (mini-MIAS: consecutive image numbers) are mirror images of
each other up to the breast's shape, so what is normal for her is what her other breast shows
at the corresponding place. Each cell of this breast's grid is given the other breast's cell
at the same relative place within the breast, measured from the chest wall:

* the breast extent is the preprocessed image's analysed area (the Otsu breast box the
  preprocessing crops to, :class:`~.feature_cache.CellGeometry` ``valid_shape``), its cells at
  the top left of the padded grid;
* the chest wall is on the side of the source image that holds more of its intensity (the
  library's laterality rule, :func:`~MammoPatchLib.transforms.laterality.chest_wall_on_right`;
  on mini-MIAS it puts the two films of each of the 113 women on opposite sides, where the
  gap between the breast box and the film's edge did so for only 105, the film's border
  being as wide as the gap); the geometry's index matrix carries it into the cell grid;
* the other breast's box of cells is flipped so its chest wall lies on the same side as this
  breast's, and resized (nearest cell) to this breast's box.

The head then sees this breast's features with the aligned ones beside them (``concat``) or
subtracted (``difference``) (:func:`combine`). An image without a second film of its view
is given its own features as the other breast's (a difference of zero: no asymmetry), and is
flagged (``PairedImage.paired``). Both films belong to one woman, so to one fold: a held-out
image is read with its own held-out other breast, and no training image ever sees a held-out
woman's film (:func:`pair_images` checks it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets import ImageRecord
from ..errors import MammoPatchError
from .feature_cache import CachedImage, CellGeometry

#: How the cell head takes the other breast: not at all, as extra channels, or subtracted.
OTHER_BREAST_INPUTS = ("none", "concat", "difference")

#: Preprocessed pixels per cell of the backbone's feature grid.
CELL_PX = 32


@dataclass
class PairedImage(CachedImage):
    """A cached image with its other breast's features aligned to its cell grid."""

    other: Optional[torch.Tensor] = None  # (2, C, gh, gw): [for the image, for its mirror]
    paired: bool = False  # False: no second film of the view; ``other`` is the image's own


def chest_wall_sides(records: Sequence[ImageRecord]) -> Dict[str, bool]:
    """{image_id: chest wall on the right of the source image}, by the library's laterality
    rule on each film's pixels.

    Raises:
        MammoPatchError: a film could not be read (named)."""
    from ..io import read_mammogram
    from ..transforms.laterality import chest_wall_on_right

    sides = {}
    for record in records:
        pixels = np.asarray(read_mammogram(record.path, spacing_mm=record.spacing_mm).pixels, dtype=np.float32)
        sides[record.image_id] = chest_wall_on_right(pixels.reshape(-1, *pixels.shape[-2:]))
    return sides


def processed_side(geometry: CellGeometry, source_right: bool) -> bool:
    """The chest wall's side in the preprocessed image's columns (a mirrored crop swaps it)."""
    return bool(source_right != (geometry.index_matrix()[1, 1] < 0))


def breast_cells(geometry: CellGeometry, grid: Tuple[int, int]) -> Tuple[int, int]:
    """(rows, columns) of cells covering the analysed breast box, within the grid."""
    rows, cols = geometry.valid_shape
    return min(grid[0], max(1, -(-rows // CELL_PX))), min(grid[1], max(1, -(-cols // CELL_PX)))


def align_other(other: torch.Tensor, other_box: Tuple[int, int], other_right: bool, grid: Tuple[int, int],
                box: Tuple[int, int], right: bool) -> torch.Tensor:
    """(V, C, gh', gw') features of the other breast (box of cells ``other_box`` at the top
    left, chest wall on the right when ``other_right``) -> (V, C, gh, gw) on this breast's
    ``grid``: the same relative place from the chest wall within this breast's ``box``; cells
    outside the box are zero."""
    region = other[..., :other_box[0], :other_box[1]].float()
    if other_right != right:
        region = torch.flip(region, dims=(-1,))
    resized = F.interpolate(region, size=tuple(box), mode="nearest-exact")
    out = torch.zeros(*other.shape[:2], *grid, dtype=other.dtype)
    out[..., :box[0], :box[1]] = resized.to(other.dtype)
    return out


def aligned_views(own: CachedImage, other: CachedImage, sides: Dict[str, bool]) -> torch.Tensor:
    """(2, C, gh, gw): ``other``'s features at ``own``'s cells, for ``own`` and for its mirror
    (the other breast's mirrored features, aligned in unmirrored coordinates, then mirrored);
    ``sides``: :func:`chest_wall_sides`."""
    args = (breast_cells(other.geometry, other.grid_shape),
            processed_side(other.geometry, sides[other.record.image_id]), own.grid_shape,
            breast_cells(own.geometry, own.grid_shape), processed_side(own.geometry, sides[own.record.image_id]))
    direct = align_other(other.features[:1], *args)
    mirrored = torch.flip(align_other(torch.flip(other.features[1:2], dims=(-1,)), *args), dims=(-1,))
    return torch.cat([direct, mirrored])


def pair_images(images: Sequence[CachedImage], sides: Dict[str, bool],
                fold_of: Optional[Dict[str, int]] = None) -> List[PairedImage]:
    """Each image with its woman's other film of the same view (exactly two films of a view:
    one per breast), aligned by ``sides`` (:func:`chest_wall_sides`); an image without one
    is given its own features and ``paired=False``.

    Raises:
        MammoPatchError: two films of one woman fall in different folds of ``fold_of``."""
    groups: Dict[Tuple[str, str], List[CachedImage]] = {}
    for image in images:
        groups.setdefault((image.record.patient_id, image.record.view_position), []).append(image)
    paired = []
    for image in images:
        members = groups[(image.record.patient_id, image.record.view_position)]
        if len(members) != 2:
            paired.append(PairedImage(image.record, image.features, image.geometry, image.features, False))
            continue
        partner = members[1] if members[0] is image else members[0]
        if fold_of is not None and fold_of[image.record.image_id] != fold_of[partner.record.image_id]:
            raise MammoPatchError(f"images {image.record.image_id} and {partner.record.image_id} of one woman are in "
                                  "different folds: the fold file must deal women, not images")
        aligned = aligned_views(image, partner, sides)
        paired.append(PairedImage(image.record, image.features, image.geometry, aligned, True))
    return paired


def combine(own: torch.Tensor, other: torch.Tensor, mode: str) -> torch.Tensor:
    """The head's input from this breast's and the aligned other breast's features (channels
    on dimension 1): ``concat`` stacks them, ``difference`` subtracts the other's."""
    if mode == "concat":
        return torch.cat([own, other], dim=1)
    if mode == "difference":
        return own - other
    return own


def combined_images(images: Sequence[CachedImage], mode: str) -> List[CachedImage]:
    """The images with :func:`combine`d features (paired images only; others as they are)."""
    if mode == "none":
        return list(images)
    return [CachedImage(im.record, combine(im.features, im.other, mode), im.geometry)
            if isinstance(im, PairedImage) else im for im in images]


def paired_share(images: Sequence[CachedImage]) -> float:
    """Share of the images read with a second film (for the run's log)."""
    flags = [isinstance(im, PairedImage) and im.paired for im in images]
    return float(np.mean(flags)) if flags else 0.0
