"""The model a cross-validated recipe makes: its fold heads averaged over the one frozen backbone
(``bundle: "ensemble"``) or one head trained on every woman (``"single"``), with operating
thresholds fitted on the pooled out-of-fold predictions and the cross-validation's figures as
its provenance."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Dict

import torch

from ..evaluation.lesions import operating_thresholds
from ..model_file import build_network, save_model
from ..vocabulary import FINDING_CLASSES
from .cell_head_fit import fit_cell_head
from .crossval import RecipeOutcome, cell_model_info, summarise


def write_bundled_model(outcome: RecipeOutcome, path, data: str, cached=None, draws: int = 1000) -> Path:
    """Write the model file ``outcome``'s recipe makes; ``cached`` (the cached images) is
    needed for ``bundle: "single"``."""
    recipe = outcome.recipe
    cached = cached if cached is not None else (outcome.cached or None)
    if recipe.bundle == "single":
        if cached is None:
            raise ValueError("a single-head bundle needs the cached images to train on")
        heads = [fit_cell_head(list(cached), recipe, list(FINDING_CLASSES), seed=recipe.seed)]
    else:
        heads = outcome.heads
    info = cell_model_info(recipe, ensemble=len(heads))
    network = build_network(info, pretrained=True).eval()
    channels = network.features.out_channels
    with torch.no_grad():
        targets = [network.head] if len(heads) == 1 else list(network.head.members)
        for target, head in zip(targets, heads):
            target.load_state_dict(head.to_head(channels).state_dict())
    fitted = operating_thresholds(outcome.cases, recipe.classes, fp_per_image=recipe.fp_per_image)
    by_class = dict(zip(recipe.classes, fitted))
    thresholds = [by_class.get(c, 0.5) for c in info.classes]
    summary = summarise(outcome, draws=draws)
    summary.pop("curve", None)
    provenance: Dict[str, Any] = {"data": data, "recipe": recipe.to_dict(), "bundle": recipe.bundle,
                                  "heads": len(heads), "cross_validation": summary,
                                  "thresholds": "fitted on the pooled out-of-fold predictions, at most "
                                                f"{recipe.fp_per_image} false positives per image per class"}
    info = replace(info, thresholds=thresholds, training=provenance,
                   description=f"{recipe.backbone} (ImageNet, frozen) with a cell head "
                               f"({recipe.neighbourhood} x {recipe.neighbourhood} cells), "
                               f"{'ensemble of %d fold heads' % len(heads) if len(heads) > 1 else 'one head'}; "
                               f"recipe {recipe.name}")
    path = Path(path)
    save_model(network, info, path, half=True)
    return path
