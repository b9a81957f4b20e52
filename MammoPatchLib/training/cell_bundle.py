"""The model a cross-validated recipe makes: its fold heads averaged over the one frozen backbone
(``bundle: "ensemble"``) or one head trained on every woman (``"single"``), with operating
thresholds fitted on the pooled out-of-fold predictions and the cross-validation's figures as
its provenance."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..evaluation.crossval_report import backbone_phrase, ensemble_phrase, model_card
from ..io.atomic import atomic_path
from ..model_file import build_network, save_model
from ..other_breast import OTHER_BREAST_WEIGHT, OtherBreastPoint
from .crossval import (RecipeOutcome, at_every_scale, cases_against_other_breast, cell_model_info, fit_head,
                       operating_point, record_breast_keys, seed_of, summarise)


def write_bundled_model(outcome: RecipeOutcome, path, data: str, cached=None, draws: int = 1000,
                        report: Optional[Dict[str, Any]] = None, command: str = "") -> Path:
    """Write the model file ``outcome``'s recipe makes, and its card beside it (``.md``);
    ``cached`` (the cached images) is needed for ``bundle: "single"``; ``report`` (the
    cross-validation report) gives the card its recipe table."""
    recipe = outcome.recipe
    cached = cached if cached is not None else (outcome.cached or None)
    if recipe.bundle == "single":
        if cached is None:
            raise ValueError("a single-head bundle needs the cached images to train on")
        train = at_every_scale(cached, outcome.variants)
        heads = [fit_head(train, recipe, seed_of(recipe, 0, member)) for member in range(recipe.seeds)]
    else:
        heads = outcome.heads
    info = cell_model_info(recipe, ensemble=len(heads))
    network = build_network(info, pretrained=True).eval()
    channels = network.features.out_channels
    with torch.no_grad():
        targets = [network.head] if len(heads) == 1 else list(network.head.members)
        for target, head in zip(targets, heads):
            target.load_state_dict(head.to_head(channels).state_dict())
    by_class, gate = operating_point(outcome.cases, recipe)
    thresholds = [by_class.get(c, 0.5) for c in info.classes]
    inference = replace(info.inference, detection=replace(info.inference.detection, image_threshold=gate),
                        other_breast=other_breast_point(outcome, info.classes))
    summary = dict((report or {}).get("recipes", {}).get(recipe.name) or summarise(outcome, draws=draws))
    summary.pop("curve", None)
    summary.pop("paired_vs_baseline", None)
    provenance: Dict[str, Any] = {"data": data, "recipe": recipe.to_dict(), "bundle": recipe.bundle,
                                  "heads": len(heads), "cross_validation": summary,
                                  "thresholds": "fitted on the pooled out-of-fold predictions, at most "
                                                f"{recipe.fp_per_image} false positives per image per class"
                                                + (f"; image gate {gate:.4f} so that at most "
                                                   f"{recipe.normal_with_finding:.0%} of normal images get a finding"
                                                   if gate else "")}
    info = replace(info, thresholds=thresholds, training=provenance, inference=inference,
                   description=f"{recipe.backbone} (ImageNet, {backbone_phrase(info.tuned_tail)}) with a cell head "
                               f"({recipe.neighbourhood} x {recipe.neighbourhood} cells), "
                               f"{ensemble_phrase(len(heads), recipe.seeds, recipe.bundle)}; "
                               f"recipe {recipe.name}")
    path = Path(path)
    save_model(network, info, path, half=True)
    from ..model_file import load_model

    sha256 = load_model(path).sha256
    sample = outcome.cases and next((c for c in (cached or []) if c.record.image_id == outcome.cases[0].image_id), None)
    timing = seconds_per_image(path, sample.record if sample else None, single_head=heads[0])
    card = model_card(info.to_dict(), summary, report or {"recipes": {}, "folds": len(set(outcome.fold_of_image.values()))},
                      command, timing, sha256)
    with atomic_path(path.with_suffix(".md")) as tmp:
        tmp.write_text(card, encoding="utf-8")
    return path


def other_breast_point(outcome: RecipeOutcome, classes) -> OtherBreastPoint:
    """The operating point for an image read against her other breast, fitted like the plain one
    on the pooled out-of-fold cases read that way; none (weight 0) when the data has no pairs."""
    adjusted = cases_against_other_breast(outcome.cases, record_breast_keys([c.record for c in outcome.cached]))
    if all(a is c for a, c in zip(adjusted, outcome.cases)):
        return OtherBreastPoint()
    by_class, gate = operating_point(adjusted, outcome.recipe)
    return OtherBreastPoint(weight=OTHER_BREAST_WEIGHT,
                            thresholds=[round(float(min(max(by_class.get(c, 1.0), -1.0), 1.0)), 6) for c in classes],
                            image_threshold=round(float(gate), 6))


def seconds_per_image(model_path: Path, record, single_head=None, repeats: int = 2) -> Dict[str, float]:
    """Fast-mode seconds per image on the CPU (model loaded, best of ``repeats``): the model
    file, and one fold head alone for comparison when the file holds an ensemble."""
    import time

    from ..inference import Predictor
    from ..io import read_mammogram
    from ..model_file import LoadedModel, load_model

    if record is None:
        return {}
    image = read_mammogram(record.path, spacing_mm=record.spacing_mm)
    model = load_model(model_path)
    candidates = {"this model": model}
    if model.info.ensemble > 1 and single_head is not None:
        info = replace(model.info, ensemble=1)
        network = build_network(info, pretrained=True).eval()
        network.head.load_state_dict(single_head.to_head(network.features.out_channels).state_dict())
        candidates["one fold head"] = LoadedModel(network, info, "", "")
    out = {}
    for name, candidate in candidates.items():
        predictor = Predictor(candidate, mode="fast", device="cpu")
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            predictor.predict_image(image)
            best = min(best, time.perf_counter() - start)
        out[name] = best
    return out
