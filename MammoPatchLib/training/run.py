"""``mammopatch train``: one model file from any recipe, trained on every woman of the data.

- trains "network": the whole network end to end, from streamed images (:mod:`.network_fit`;
  a checkpoint every epoch, ``resume`` after a kill, torchrun DDP);
- trains "head" / "stages": the recipe's heads (``seeds`` of them, averaged) on the cached
  features of every image, as cross-validation trains each fold's (:mod:`.crossval`).

The model file records its :class:`~MammoPatchLib.model_file.Provenance` (the recipe, every
training image and woman), so ``evaluate`` and ``calibrate`` refuse its own women. Its
thresholds are not fitted (no woman is left to fit them on): they are the model's defaults,
and its card says so. Honest figures, and thresholds fitted out of fold, are ``mammopatch
crossval``'s; ``mammopatch calibrate`` fits thresholds on other women.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..datasets import ImageRecord, load_records
from ..distributed import launched_world_size
from ..errors import ConfigError, MammoPatchError
from ..model_file import ModelInfo, Provenance, identity_sha256, save_model
from ..networks import PatchClassifier
from .recipe import Recipe

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
    holds the preprocessed images (network) or the backbone's features (head, stages).

    Raises:
        MammoPatchError: ``resume`` or torchrun with a head/stages recipe, a recipe whose head
            a model file cannot hold, or what the training path refuses."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir else out / "cache"
    if recipe.trains == "network":
        from .network_fit import fit_network, join_ranks

        ranks = join_ranks(recipe)
        try:  # the data (synthetic:N is written) read once, by rank 0
            records, description = ranks.broadcast(load_records(data, out, recipe.seed) if ranks.is_main else None)
            fit = fit_network(recipe, records, out, cache, ranks, resume=resume, progress=progress)
        finally:
            ranks.close()
        if not ranks.is_main:
            return TrainResult(None, len(fit.images), 0, len(fit.history))
        trained = [(image.image_id, image.patient_id) for image in fit.images]
        info, network, members = fit.info, fit.network, 1
        extra = {"epochs": len(fit.history), "final_training_loss": fit.history[-1]["train_loss"]}
    else:
        records, description = load_records(data, out, recipe.seed)
        info, network, trained = _fit_heads(recipe, records, cache, resume, progress)
        members, extra = info.ensemble, {}
    path = _write_model(recipe, info, network, trained, members, description, out / MODEL_FILE, extra)
    from ..evaluation.model_card import write_model_card

    write_model_card(path, command=command)
    return TrainResult(path, len(trained), len({woman for _, woman in trained}), extra.get("epochs", 0),
                       extra.get("final_training_loss"))


def _fit_heads(recipe: Recipe, records: Sequence[ImageRecord], cache: Path, resume: bool,
               progress: bool) -> Tuple[ModelInfo, PatchClassifier, List[Tuple[str, str]]]:
    """The recipe's heads on the cached features of every record (and of its scale and
    synthetic variants), as one model: (information, network, (image, woman) trained on)."""
    if resume:
        raise MammoPatchError(f"--resume continues a trains 'network' recipe; {recipe.name} trains "
                              f"'{recipe.trains}' from its feature cache, which a rerun reuses")
    if launched_world_size() > 1:
        raise MammoPatchError(f"torchrun: {recipe.name} trains '{recipe.trains}' in one process; only trains "
                              "'network' recipes train on several ranks")
    if recipe.model_file_refusal:
        raise ConfigError(recipe.model_file_refusal, recipe.name)
    from .cell_bundle import head_network
    from .crossval import at_every_scale, cached_features, fit_fold_heads, synthetic_training_images, training_variants

    known: dict = {}
    cached = cached_features(records, recipe, cache, progress, known)
    images = at_every_scale(cached, training_variants(records, recipe, cache, progress, known))
    one_fold = {r.image_id: 0 for r in records}  # every woman trains: synthetic images may mix any of them
    images += [image for _, image in synthetic_training_images(records, one_fold, recipe, cache, progress)]
    heads = fit_fold_heads(images, recipe, fold=0)
    info, network = head_network(recipe, heads)
    return info, network, [(c.record.image_id, c.record.patient_id) for c in cached]


def _write_model(recipe: Recipe, info: ModelInfo, network: PatchClassifier, trained: Sequence[Tuple[str, str]],
                 members: int, description: str, path: Path, extra: dict) -> Path:
    from ..evaluation.model_card import ensemble_phrase, head_phrase, tuned_phrase

    images = sorted({image for image, _ in trained})
    women = sorted({woman for _, woman in trained})
    provenance = Provenance(recipe=recipe.to_dict(), recipe_name=recipe.name, data=description, images=images,
                            images_sha256=identity_sha256(images), members=[women] * members, selected_on=[])
    info = replace(info, provenance=provenance,
                   training={"trains": recipe.trains, "thresholds": THRESHOLDS_NOT_FITTED, **extra})
    info.description = (f"{recipe.backbone} (ImageNet, {tuned_phrase(info)}) with {head_phrase(info)}, "
                        f"{ensemble_phrase(members, recipe.seeds)}; recipe {recipe.name}, trained by `mammopatch "
                        f"train` on all {len(images)} images of {description}")
    save_model(network, info, path, half=True)
    logger.info("model: %s (%d images of %d women)", path, len(images), len(women))
    return path
