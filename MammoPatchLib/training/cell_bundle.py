"""The model a cross-validated recipe makes: its fold heads averaged over the one frozen backbone
(``bundle: "ensemble"``) or heads trained on every woman (``"single"``), at the operating point
evaluation fitted on the pooled out-of-fold predictions, with its :class:`Provenance`: the
recipe, the training images, the fold file and the women of each member."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..evaluation.model_card import ensemble_phrase, tuned_phrase
from ..evaluation.out_of_fold import ModelOperatingPoint
from ..model_file import Provenance, build_network, identity_sha256, save_model
from .crossval import RecipeRun, at_every_scale, cell_model_info, fit_head, seed_of
from .feature_cache import CachedImage


def bundle_heads(run: RecipeRun) -> tuple:
    """(heads, the women each trained on) of the model ``run``'s recipe makes: the fold heads,
    or for ``bundle: "single"`` ``seeds`` heads trained on every woman."""
    recipe = run.recipe
    if recipe.bundle != "single":
        return run.heads, run.head_women
    if not run.cached:
        raise ValueError("a single-head bundle needs the cached images to train on")
    train = [*at_every_scale(run.cached, run.variants), *run.synthetic]  # every woman: every synthetic image
    women = sorted({c.record.patient_id for c in train})
    return [fit_head(train, recipe, seed_of(recipe, 0, member)) for member in range(recipe.seeds)], \
        [women] * recipe.seeds


def cell_provenance(run: RecipeRun, women: Sequence[List[str]], data: str, fold_file: Optional[Path],
                    selected_on: Sequence[str]) -> Provenance:
    """How the model was made: its recipe, the images of every woman a member trained on, the
    fold file (name and SHA-256 of its bytes) and each member's women."""
    trained = set().union(*map(set, women))
    images = sorted({c.record.image_id for c in run.cached if c.record.patient_id in trained})
    folds = Path(fold_file) if fold_file else None
    return Provenance(recipe=run.recipe.to_dict(), recipe_name=run.recipe.name, data=data, images=images,
                      images_sha256=identity_sha256(images), fold_file=folds.name if folds else "",
                      fold_file_sha256=hashlib.sha256(folds.read_bytes()).hexdigest() if folds else "",
                      members=[list(m) for m in women], selected_on=sorted(set(selected_on)))


def write_bundled_model(run: RecipeRun, path, point: ModelOperatingPoint, provenance_data: str,
                        summary: Dict[str, Any], fold_file: Optional[Path] = None) -> Path:
    """Write the model file ``run``'s recipe makes at ``point`` (fitted by evaluation on the
    pooled out-of-fold cases), with its provenance and ``summary`` (the pooled out-of-fold
    figures) for its card."""
    recipe = run.recipe
    heads, women = bundle_heads(run)
    info = cell_model_info(recipe, ensemble=len(heads))
    network = build_network(info, pretrained=True).eval()
    channels = network.features.out_channels
    with torch.no_grad():
        targets = [network.head] if len(heads) == 1 else list(network.head.members)
        for target, head in zip(targets, heads):
            target.load_state_dict(head.to_head(channels).state_dict())
    inference = replace(info.inference, detection=replace(info.inference.detection, image_threshold=point.image_gate),
                        other_breast=point.other_breast)
    figures = {k: v for k, v in summary.items() if k not in ("curve", "paired_vs_baseline")}
    provenance = cell_provenance(run, women, provenance_data, fold_file,
                                 [c.patient_id for c in run.out_of_fold.cases])
    info = replace(info, thresholds=point.thresholds, inference=inference, provenance=provenance,
                   training={"bundle": recipe.bundle, "cross_validation": figures, "thresholds": point.description},
                   description=f"{recipe.backbone} (ImageNet, {tuned_phrase(info)}) with a cell head "
                               f"({recipe.neighbourhood} x {recipe.neighbourhood} cells), "
                               f"{ensemble_phrase(len(heads), recipe.seeds, recipe.bundle)}; recipe {recipe.name}")
    path = Path(path)
    save_model(network, info, path, half=True)
    return path


def sample_image(run: RecipeRun) -> Optional[CachedImage]:
    """The first out-of-fold image (timed for the card)."""
    first = run.out_of_fold.cases[0].image_id if run.out_of_fold.cases else None
    return next((c for c in run.cached if c.record.image_id == first), None)
