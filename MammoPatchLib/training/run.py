"""``mammopatch train``: one model file from any recipe, trained on every woman of the data.

- trains "network": the whole network end to end, from streamed images (:mod:`.network_fit`;
  a checkpoint every epoch, ``resume`` after a kill, torchrun DDP);
- trains "head" / "stages": the recipe's heads (``seeds`` of them, averaged) on the cached
  features of every image, as cross-validation trains each fold's (:mod:`.crossval`); each
  member is a resumable work unit (:mod:`.work_units`) under ``OUT/units``: a rerun skips the
  members already trained, torchrun deals the others to the ranks.

The model file records its :class:`~MammoPatchLib.model_file.Provenance` (the recipe, every
training image and woman), so ``evaluate`` and ``calibrate`` refuse its own women. Its
thresholds are not fitted (no woman is left to fit them on): they are the model's defaults,
and its card says so. Honest figures, and thresholds fitted out of fold, are ``mammopatch
crossval``'s; ``mammopatch calibrate`` fits thresholds on other women.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..datasets import ImageRecord, load_records
from ..distributed import RankContext, start_ranks
from ..errors import ConfigError
from ..model_file import ModelInfo, Provenance, identity_sha256, save_model
from ..networks import PatchClassifier
from .recipe import Recipe
from .work_units import UnitStore, identity, run_units

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"

#: What a card says of the thresholds of a model ``mammopatch train`` made.
THRESHOLDS_NOT_FITTED = ("not fitted: `mammopatch train` leaves the defaults (0.5 per class, no image gate), as every "
                         "woman trained the model; fit them on other women with `mammopatch calibrate`, or out of "
                         "fold with `mammopatch crossval --model-out`")


@dataclass
class TrainResult:
    """What ``train`` made: the model file (None on ranks other than 0) and what it trained on."""

    model: Optional[Path]
    images: int
    women: int
    epochs: int = 0
    final_loss: Optional[float] = None


def train(recipe: Recipe, data: str, out_dir, resume: bool = False, progress: bool = True,
          cache_dir: Optional[Path] = None, command: str = "") -> TrainResult:
    """Train ``recipe`` on every image of ``data`` and write ``out_dir/model.pt`` and its card
    (``command``: the command line, for the card). ``cache_dir`` (default ``out_dir/cache``)
    holds the preprocessed images (network) or the backbone's features (head, stages). Under
    torchrun rank 0 reads the data once and shares it; a network is trained by every rank
    together (DDP), a head recipe's ensemble members are dealt to the ranks.

    Raises:
        MammoPatchError: a recipe whose head a model file cannot hold, ``resume`` of a network
            recipe without its checkpoint, or what the training path refuses."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir else out / "cache"
    network = recipe.trains == "network"
    if not network and recipe.model_file_refusal:  # said before any image is read
        raise ConfigError(recipe.model_file_refusal, recipe.name)
    if network:
        from .network_fit import fit_network, join_ranks

        ranks = join_ranks(recipe)
    else:
        ranks = start_ranks("cpu")
    try:  # the data (synthetic:N is written) read once, by rank 0
        records, description = ranks.broadcast(load_records(data, out, recipe.seed) if ranks.is_main else None)
        if network:
            fit = fit_network(recipe, records, out, cache, ranks, resume=resume, progress=progress)
        else:
            heads = _fit_heads(recipe, records, out, cache, ranks, progress)
    finally:
        ranks.close()
    if not ranks.is_main:
        return TrainResult(None, len(records), 0)
    if network:
        trained = [(image.image_id, image.patient_id) for image in fit.images]
        info, model, members = fit.info, fit.network, 1
        extra = {"epochs": len(fit.history), "final_training_loss": fit.history[-1]["train_loss"]}
    else:
        (info, model, trained), members, extra = heads, heads[0].ensemble, {}
    path = _write_model(recipe, info, model, trained, members, description, out / MODEL_FILE, extra)
    from ..evaluation.model_card import write_model_card

    write_model_card(path, command=command)
    return TrainResult(path, len(trained), len({woman for _, woman in trained}), extra.get("epochs", 0),
                       extra.get("final_training_loss"))


def _fit_heads(recipe: Recipe, records: Sequence[ImageRecord], out: Path, cache: Path, ranks: RankContext,
               progress: bool) -> Optional[Tuple[ModelInfo, PatchClassifier, List[Tuple[str, str]]]]:
    """The recipe's heads on the cached features of every record (and of its scale and
    synthetic variants), as one model: (information, network, (image, woman) trained on) on
    rank 0, None on the others.

    The ranks fill the feature cache by shares (:func:`~.crossval.recipe_inputs`); each
    ensemble member is a work unit (:func:`~.work_units.run_units`) kept in ``out/units``, so a
    rerun (``--resume`` or not) skips the members already trained and torchrun deals the
    others to the ranks; each member seeds itself, so neither changes the model."""
    from .. import __version__
    from .cell_bundle import head_network
    from .cell_head_fit import FittedCellHead
    from .crossval import UNITS_DIR, at_every_scale, fit_head, pretrained_last_stage, recipe_inputs, seed_of

    one_fold = {r.image_id: 0 for r in records}  # every woman trains: synthetic images may mix any of them
    known: Dict[tuple, Any] = {}
    recipes = [recipe] + ([recipe.fine_recipe] if recipe.fine else [])  # a finer head's members: units too
    inputs = [recipe_inputs(r, records, one_fold, cache, ranks, progress and ranks.is_main, known, {})
              for r in recipes]
    images = [at_every_scale(i.cached, i.variants) + [image for _, image in i.synthetic] for i in inputs]
    women = sorted((r.image_id, r.patient_id) for r in records)
    stores = [UnitStore(out / UNITS_DIR, r.name, identity(r.to_dict(), women, __version__)) for r in recipes]
    stages = [pretrained_last_stage(r) for r in recipes]
    units = [(k, member) for k, r in enumerate(recipes) for member in range(r.seeds)]

    def compute(i: int) -> Dict[str, Any]:
        k, member = units[i]
        start = time.perf_counter()
        head = fit_head(images[k], recipes[k], seed_of(recipes[k], 0, member), stages[k])
        return {"head": head.state(), "seconds": time.perf_counter() - start, "training_images": len(images[k])}

    def describe(i: int, payload: Dict[str, Any]) -> str:
        k, member = units[i]
        return (f"{recipes[k].name}: member {member + 1}/{recipes[k].seeds} ({payload['training_images']} training "
                f"images) in {payload['seconds']:.1f} s")

    payloads = run_units([(stores[k], member_unit_name(m)) for k, m in units], compute, ranks,
                         describe if progress else None)
    if not payloads:
        return None
    heads = [[FittedCellHead.from_state(p["head"], stages[k]) for (k, _), p in zip(units, payloads) if k == index]
             for index in range(len(recipes))]
    info, network = head_network(recipe, heads[0], heads[1] if recipe.fine else ())
    return info, network, [(c.record.image_id, c.record.patient_id) for c in inputs[0].cached]


def member_unit_name(member: int) -> str:
    """The work unit of a ``train``'s ``member``-th ensemble head."""
    return f"member-{member}"


def _write_model(recipe: Recipe, info: ModelInfo, network: PatchClassifier, trained: Sequence[Tuple[str, str]],
                 members: int, description: str, path: Path, extra: dict) -> Path:
    from ..evaluation.model_card import ensemble_phrase, fine_phrase, head_phrase, tuned_phrase

    images = sorted({image for image, _ in trained})
    women = sorted({woman for _, woman in trained})
    provenance = Provenance(recipe=recipe.to_dict(), recipe_name=recipe.name, data=description, images=images,
                            images_sha256=identity_sha256(images), members=[women] * members, selected_on=[])
    info = replace(info, provenance=provenance,
                   training={"trains": recipe.trains, "thresholds": THRESHOLDS_NOT_FITTED, **extra})
    info.description = (f"{recipe.backbone} (ImageNet, {tuned_phrase(info)}) with {head_phrase(info)}, "
                        f"{ensemble_phrase(members, recipe.seeds)}{fine_phrase(info)}; recipe {recipe.name}, "
                        f"trained by `mammopatch "
                        f"train` on all {len(images)} images of {description}")
    save_model(network, info, path, half=True)
    logger.info("model: %s (%d images of %d women)", path, len(images), len(women))
    return path
