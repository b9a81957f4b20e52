"""Finer cells: a cell head on 16 px cells (``Recipe.cell_px`` 16) for lesions smaller than a
32 px cell, such as a calcification cluster (5-50 px on 200 um film; a 32 px cell is 6.4 mm
at 0.2 mm).

A 16 px cell's features are a two-level pyramid from the feature cache
(:func:`~MammoPatchLib.networks.patch_classifier.fine_pyramid`, the function the model's network
runs): the backbone's own stride-16 features (EfficientNet-Lite: those before its last stride-2
block group, :data:`~MammoPatchLib.networks.backbones.FINE_CUT`; 112 channels for Lite0), and
beside them the stride-32 output (1280 channels) of the 32 px cell it lies in, repeated over its
four 16 px cells, each level scaled per image (``level_scaled``). The head then trains and
scores exactly as on 32 px cells (frozen backbone, whitened bottleneck, neighbourhood MLP), on
four times as many cells, and :class:`~.feature_cache.CellGeometry`'s ``cell_px`` maps them
back to the source film.

Such a head alone is for cross-validation; a model file holds it as the finer head of a 32 px
recipe (``Recipe.fine``, :class:`~MammoPatchLib.networks.patch_classifier.FineCellHead`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Sequence

import torch

from ..datasets import ImageRecord
from ..errors import MammoPatchError
from ..networks import FEATURE_STRIDE
from ..networks.backbones import FINE_CUT
from ..networks.patch_classifier import fine_pyramid
from .feature_cache import CachedImage, build_cache

if TYPE_CHECKING:
    from ..model_file import ModelInfo
    from .recipe import Recipe

@dataclass
class FineCellImage(CachedImage):
    """One image's 16 px cells: ``features`` hold one position per cell (the pyramid of
    :func:`pyramid_image`), so the cell grid is the features' own."""

    stride: int = FEATURE_STRIDE // 2


def pyramid_image(fine: CachedImage, coarse: CachedImage) -> FineCellImage:
    """One image's 16 px cells: its stride-16 features and, beside them, its stride-32 features
    repeated over the finer grid (:func:`~MammoPatchLib.networks.patch_classifier.fine_pyramid`),
    on a geometry whose ``cell_px`` is the finer stride.

    Raises:
        MammoPatchError: the two entries are not one image's two levels of the same grid."""
    fine_features, coarse_features = fine.load(), coarse.load()
    factor = coarse.stride // fine.stride if fine.stride else 0
    if (fine.record.image_id != coarse.record.image_id or factor < 2 or coarse.stride % fine.stride
            or tuple(fine_features.shape[-2:]) != tuple(factor * s for s in coarse_features.shape[-2:])):
        raise MammoPatchError(f"features of {fine.record.image_id} at stride {fine.stride} "
                              f"{tuple(fine_features.shape[-2:])} and of {coarse.record.image_id} at stride "
                              f"{coarse.stride} {tuple(coarse_features.shape[-2:])} are not one grid's two levels")
    features = fine_pyramid(fine_features, coarse_features).half()
    return FineCellImage(fine.record, features, replace(fine.geometry, cell_px=fine.stride), stride=fine.stride)


def fine_cell_images(records: Sequence[ImageRecord], recipe: "Recipe", coarse: Sequence[CachedImage],
                     cache_dir: Path, info: "ModelInfo", cache_key: tuple, progress: bool = True,
                     known: Dict[tuple, List[CachedImage]] = None) -> List[CachedImage]:
    """The recipe's 16 px cells of every record: the stride-16 features (cached under
    ``cache_dir`` beside the others, computed where missing, for the model ``info`` describes)
    with ``coarse`` (the same records' stride-32 features) beside them; ``known``: pyramids
    already made, by the recipe's ``cache_key`` and cell side, reused.

    Raises:
        MammoPatchError: an image could not be read (the first such file named)."""
    known = known if known is not None else {}
    key = ("cell_px", recipe.cell_px, *cache_key)
    if key not in known:
        fine, errors = build_cache(records, info, cache_dir, progress=progress, cut=FINE_CUT,
                                   in_memory=False)
        if errors:
            raise MammoPatchError(f"{len(errors)} image(s) could not be read for cross-validation: {errors[0]}")
        by_id = {c.record.image_id: c for c in coarse}
        images = [pyramid_image(f, by_id.get(f.record.image_id, f)) for f in fine]
        wrong = [image.geometry.cell_px for image in images if image.geometry.cell_px != recipe.cell_px]
        if wrong:
            raise MammoPatchError(f"recipe {recipe.name}: cell_px is {recipe.cell_px} but the backbone's features "
                                  f"at cut {FINE_CUT} lie every {wrong[0]} px")
        known[key] = images
    return known[key]


__all__ = ["FineCellImage", "fine_cell_images", "pyramid_image"]
