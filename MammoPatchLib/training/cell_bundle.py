"""The model a cross-validated recipe makes: its fold heads averaged over the one frozen
backbone, at the operating point evaluation fitted on the pooled out-of-fold predictions, with
its :class:`Provenance`: the recipe, the training images, the fold file and the women of each
member; and each fold's heads as a network of their own, for out-of-fold predictions."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..datasets import ImageRecord
from ..evaluation.model_card import ensemble_phrase, fine_phrase, tuned_phrase
from ..evaluation.out_of_fold import ModelOperatingPoint
from ..model_file import ModelInfo, Provenance, build_network, identity_sha256, save_model
from ..networks import PatchClassifier
from ..networks.backbones import FINE_CUT
from .cell_head_fit import FittedCellHead
from .recipe import Recipe
from .crossval import RecipeRun, cell_model_info
from .feature_cache import CachedImage


def head_network(recipe: Recipe, heads: Sequence[FittedCellHead],
                 fine_heads: Sequence[FittedCellHead] = ()) -> Tuple[ModelInfo, PatchClassifier]:
    """(model information, network in eval mode) of ``recipe``'s pretrained backbone with
    ``heads`` as its head (one head, or an ensemble averaging them) and ``fine_heads`` as its
    finer head (:attr:`Recipe.fine`; none: no finer head)."""
    info = cell_model_info(recipe, ensemble=len(heads), fine_ensemble=len(fine_heads))
    network = build_network(info, pretrained=True).eval()
    channels = network.features.out_channels
    with torch.no_grad():
        _load_heads(network.head, heads, channels)
        if fine_heads:
            _load_heads(network.fine.head, fine_heads, network.features.channels_before(FINE_CUT) + channels)
    return info, network


def _load_heads(target: torch.nn.Module, heads: Sequence[FittedCellHead], channels: int) -> None:
    """Fitted heads into a network's head (one head, or an :class:`EnsembleHead`'s members)."""
    targets = [target] if len(heads) == 1 else list(target.members)
    for module, head in zip(targets, heads):
        module.load_state_dict(head.to_head(channels).state_dict())


def fold_networks(run: RecipeRun) -> List[Tuple[PatchClassifier, List[ImageRecord]]]:
    """Each fold's heads as one network, with the images of the women none of them trained
    on (its held-out women): what out-of-fold predictions of other inputs than the cached
    cells (the poster's patches) are made with."""
    per_fold = run.recipe.seeds
    folds = []
    for start in range(0, len(run.heads), per_fold):
        trained = set(run.head_women[start])
        held = [c.record for c in run.cached if c.record.patient_id not in trained]
        folds.append((head_network(run.recipe, run.heads[start:start + per_fold])[1], held))
    return folds


def cell_provenance(run: RecipeRun, women: Sequence[List[str]], data: str, fold_file: Optional[Path],
                    selected_on: Sequence[str]) -> Provenance:
    """How the model was made: its recipe, the images of every woman a member trained on, the
    fold file (SHA-256 of its bytes, named as "folds.csv of the crossval output": crossval reads
    the folds from its output folder, whichever file the user copied there) and each member's
    women."""
    trained = set().union(*map(set, women))
    images = sorted({c.record.image_id for c in run.cached if c.record.patient_id in trained})
    folds = Path(fold_file) if fold_file else None
    return Provenance(recipe=run.recipe.to_dict(), recipe_name=run.recipe.name, data=data, images=images,
                      images_sha256=identity_sha256(images), fold_file=f"{folds.name} of the crossval output" if folds else "",
                      fold_file_sha256=hashlib.sha256(folds.read_bytes()).hexdigest() if folds else "",
                      members=[list(m) for m in women], selected_on=sorted(set(selected_on)))


def write_bundled_model(run: RecipeRun, path, point: ModelOperatingPoint, provenance_data: str,
                        summary: Dict[str, Any], fold_file: Optional[Path] = None) -> Path:
    """Write the model file ``run``'s recipe makes at ``point`` (fitted by evaluation on the
    pooled out-of-fold cases), with its provenance and ``summary`` (the pooled out-of-fold
    figures) for its card."""
    recipe = run.recipe
    heads, women = run.heads, run.head_women
    fine_heads = run.fine.heads if run.fine is not None else []
    info, network = head_network(recipe, heads, fine_heads)
    inference = replace(info.inference, detection=replace(info.inference.detection, image_threshold=point.image_gate),
                        other_breast=point.other_breast)
    figures = {k: v for k, v in summary.items() if k not in ("curve", "paired_vs_baseline")}
    provenance = cell_provenance(run, women, provenance_data, fold_file,
                                 [c.patient_id for c in run.out_of_fold.cases])
    info = replace(info, thresholds=point.thresholds, inference=inference, provenance=provenance,
                   training={"cross_validation": figures, "thresholds": point.description},
                   description=f"{recipe.backbone} (ImageNet, {tuned_phrase(info)}) with a cell head "
                               f"({recipe.neighbourhood} x {recipe.neighbourhood} cells), "
                               f"{ensemble_phrase(len(heads), recipe.seeds)}{fine_phrase(info)}; recipe {recipe.name}")
    path = Path(path)
    save_model(network, info, path, half=True)
    return path


def sample_image(run: RecipeRun) -> Optional[CachedImage]:
    """The first out-of-fold image (timed for the card)."""
    first = run.out_of_fold.cases[0].image_id if run.out_of_fold.cases else None
    return next((c for c in run.cached if c.record.image_id == first), None)
