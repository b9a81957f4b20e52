"""Cross-validation by woman, the training half: folds, features, and each fold's heads.

``mammopatch crossval --config RECIPE --data D --folds 5 --out DIR``:

1. Folds: women (never images) dealt into ``folds`` folds, stratified by finding class, and
   written to ``DIR/folds.csv``; a later run into the same folder reuses that file, so every
   recipe is judged on the same folds (paired).
2. Features: the frozen backbone's dense features of every image and its mirror, computed
   once through the Predictor's preprocessing and network (``feature_cache``).
3. Per fold: a head trained on the other folds' women; its cell heatmaps of the held-out
   women become their cases (:func:`~MammoPatchLib.evaluation.out_of_fold.case_from_cells`).
   Each recipe x fold is a work unit (:mod:`.work_units`) written to ``DIR/units`` as it
   finishes: a killed run, rerun, skips the finished ones; under torchrun the ranks share the
   feature cache's images and then the units (:func:`run_recipes`).
4. A recipe with a finer head (``Recipe.fine``) runs that head's recipe beside it, fold by
   fold, and its held-out women are read through both heads as its model file reads them
   (:func:`with_finer_head`).
5. A recipe that trains "network" skips the features: each fold's network is trained by
   ``mammopatch train``'s own trainer (:func:`~.network_fit.fit_network`, every rank together,
   a checkpoint per epoch beside the fold's unit so a killed fold resumes from its last epoch)
   and predicts its held-out women through the Predictor users run, as ``predict`` would
   (:func:`run_network_recipe`).

What comes out is one :class:`~MammoPatchLib.evaluation.out_of_fold.OutOfFold` per recipe;
its figures, operating points and report are evaluation's
(:mod:`MammoPatchLib.evaluation.crossval_figures`). Training computes no figure.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..datasets import ImageRecord
from ..datasets.splits import folds_by_patient, read_fold_file, write_fold_file
from ..distributed import RankContext
from ..errors import MammoPatchError
from ..evaluation.lesions import ImageCase, candidate_predictor, collect_cases
from ..evaluation.out_of_fold import OutOfFold, case_from_cells, case_from_dict, case_to_dict, record_breast_keys
from ..networks import FEATURE_STRIDE, PatchClassifier
from ..networks.patch_classifier import with_finer_classes
from ..vocabulary import FINDING_CLASSES
from .cell_head_fit import FittedCellHead, fit_cell_head
from .recipe import Recipe, cell_model_info
from .feature_cache import CachedImage, build_cache, frozen_backbone_model
from .fine_cells import fine_cell_images
from .lesion_synthesis import SYNTHETIC_DIR, SyntheticImage, synthesise_lesions
from .other_breast_features import chest_wall_sides, pair_images, paired_share
from .work_units import UnitStore, fill_by_shares, identity, run_units

logger = logging.getLogger(__name__)

FOLD_FILE = "folds.csv"
#: The report folder's subfolder of finished work units (recipe x fold), which a rerun skips.
UNITS_DIR = "units"


@dataclass
class RecipeRun:
    """What one recipe's cross-validation gives: its out-of-fold predictions for evaluation,
    and for the model file its fold heads (fold by fold, each fold's seeds in turn) with the
    women each trained on."""

    recipe: Recipe
    out_of_fold: OutOfFold
    heads: List[FittedCellHead] = field(default_factory=list)
    head_women: List[List[str]] = field(default_factory=list)
    cached: List[CachedImage] = field(default_factory=list, repr=False)
    #: trains "network": each fold's network with the images of its held-out women.
    networks: List[Tuple[PatchClassifier, List[ImageRecord]]] = field(default_factory=list, repr=False)
    #: a recipe with a finer head: that head's run (its fold heads, in the same fold order).
    fine: Optional["RecipeRun"] = field(default=None, repr=False)


def fold_assignment(records: Sequence[ImageRecord], folds: int, out_dir: Path, seed: int = 0) -> Dict[str, int]:
    """{image_id: fold}: read from ``out_dir/folds.csv`` when it exists (the same folds for
    every recipe), else made with ``seed`` and written there. A non-zero ``seed`` must agree
    with an existing file (a rerun resumes; another seed needs another folder).

    Raises:
        MammoPatchError: the file lacks images of the data, has another number of folds, or
            another division than a non-zero ``seed`` gives."""
    path = out_dir / FOLD_FILE
    if path.is_file():
        fold_of = read_fold_file(path)
        missing = [r.image_id for r in records if r.image_id not in fold_of]
        if missing:
            raise MammoPatchError(f"the fold file lacks {len(missing)} image(s) of the data, e.g. {missing[0]}; "
                                  "use a new --out folder for another data set", path)
        found = len(set(fold_of.values()))
        if found != folds:
            raise MammoPatchError(f"the fold file has {found} folds, --folds asks for {folds}", path)
        fold_of = {r.image_id: fold_of[r.image_id] for r in records}
        if seed and fold_of != _by_image(records, folds_by_patient(records, folds, seed)):
            raise MammoPatchError(f"the fold file holds another division of the women than fold seed {seed} "
                                  "gives; use a new --out folder for another division", path)
        return fold_of
    by_patient = folds_by_patient(records, folds, seed)
    write_fold_file(records, by_patient, path)
    return _by_image(records, by_patient)


def _by_image(records: Sequence[ImageRecord], by_patient: Dict[str, int]) -> Dict[str, int]:
    """{image_id: fold} of {patient_id: fold}: a woman's films share her fold."""
    return {r.image_id: by_patient[r.patient_id] for r in records}


def seed_of(recipe: Recipe, fold: int, member: int) -> int:
    """The seed of a fold's ``member``-th head (member 0: the recipe's seed plus the fold)."""
    return recipe.seed + fold + 1000 * member


def pretrained_last_stage(recipe: Recipe):
    """The backbone's pretrained last ``recipe.feature_cut`` stages, where a recipe tunes them
    (else None)."""
    if not recipe.feature_cut:
        return None
    from ..networks import TunedStages

    backbone = frozen_backbone_model(replace(cell_model_info(recipe), tuned_stages=0)).network.features
    return TunedStages(backbone, recipe.feature_cut)


def fit_head(images: Sequence[CachedImage], recipe: Recipe, seed: int, last_stage=None) -> FittedCellHead:
    """One head by the recipe: on frozen features, or with its own tuned last stages (the
    cached features are then those before them; ``last_stage`` from :func:`pretrained_last_stage`)."""
    if recipe.feature_cut:
        from .stage_fit import fit_tuned_tail_head

        return fit_tuned_tail_head(images, recipe, list(FINDING_CLASSES),
                                   last_stage if last_stage is not None else pretrained_last_stage(recipe), seed)
    from .stage_fit import fit_streamed_head, streams_head

    if streams_head(images, recipe):
        return fit_streamed_head(images, recipe, list(FINDING_CLASSES), seed=seed)
    return fit_cell_head(images, recipe, list(FINDING_CLASSES), seed=seed)


def fit_fold_heads(train: Sequence[CachedImage], recipe: Recipe, fold: int,
                   last_stage=None) -> List[FittedCellHead]:
    """``recipe.seeds`` heads trained on the same images from different seeds."""
    return [fit_head(train, recipe, seed_of(recipe, fold, member), last_stage) for member in range(recipe.seeds)]


def mean_probabilities(heads: Sequence[FittedCellHead], image: CachedImage, flip_tta: bool) -> torch.Tensor:
    """The heads' cell probabilities averaged (what the model file's ensemble head computes)."""
    return torch.stack([head.cell_probabilities(image, flip_tta) for head in heads]).mean(0)


def out_of_fold_cases(heads: Sequence[FittedCellHead], images: Sequence[CachedImage], recipe: Recipe,
                      predictor) -> List[ImageCase]:
    """The held-out images' cases: cell heatmaps from the cached features (the fold's heads
    averaged), findings from the Predictor's own mapping and detection."""
    top_k = None if recipe.image_score == "max" else recipe.image_top_k  # "max": the Predictor's own
    return [case_from_cells(image.record, mean_probabilities(heads, image, recipe.flip_tta), image.geometry,
                            predictor, top_k) for image in images]


@dataclass
class RecipeInputs:
    """What a recipe's folds train and predict from: the cached images (paired with their other
    breast where the recipe reads it), their copies at the recipe's ``train_scales``
    (:func:`training_variants`) and its synthetic images (:func:`synthetic_training_images`)."""

    recipe: Recipe
    cached: List[CachedImage]
    variants: Sequence[Sequence[CachedImage]] = ()
    synthetic: Sequence[Tuple[SyntheticImage, CachedImage]] = ()


@dataclass
class FoldUnit:
    """One work unit of a cross-validation: a recipe's heads for one fold (its seeds in turn)
    or, for a recipe that trains "network", the fold's network (its state dict), the women
    they trained on, and the cases of the fold's held-out images."""

    fold: int
    heads: List[FittedCellHead]
    women: List[str]
    cases: List[ImageCase]
    seconds: float
    training_images: int = 0
    network: Optional[Dict[str, torch.Tensor]] = None

    def to_payload(self) -> Dict[str, Any]:
        """Tensors and plain values only (the cases as JSON, as the report keeps them)."""
        payload = {"fold": self.fold, "heads": [head.state() for head in self.heads], "women": list(self.women),
                   "cases": json.dumps([case_to_dict(c) for c in self.cases]), "seconds": float(self.seconds),
                   "training_images": self.training_images, "held_out_images": len(self.cases)}
        if self.network is not None:
            payload["network"] = self.network
        return payload

    @classmethod
    def from_payload(cls, payload: Dict[str, Any], tail: Optional[torch.nn.Module] = None) -> "FoldUnit":
        """``tail``: the pretrained stages the heads tuned (:func:`pretrained_last_stage`), if any."""
        return cls(int(payload["fold"]), [FittedCellHead.from_state(h, tail) for h in payload["heads"]],
                   list(payload["women"]), [case_from_dict(c) for c in json.loads(payload["cases"])],
                   float(payload["seconds"]), int(payload["training_images"]), payload.get("network"))


def train_unit(inputs: RecipeInputs, fold: int, fold_of: Dict[str, int], predictor, last_stage=None) -> FoldUnit:
    """One fold of one recipe: its heads trained on the other folds' women, and the held-out
    women's cases (``predictor``: :func:`~MammoPatchLib.evaluation.lesions.candidate_predictor`
    of the recipe's frozen backbone)."""
    start = time.perf_counter()
    recipe = inputs.recipe
    train = fold_training_images(fold, inputs.cached, fold_of, inputs.variants, inputs.synthetic)
    held = [c for c in inputs.cached if fold_of[c.record.image_id] == fold]
    members = fit_fold_heads(train, recipe, fold, last_stage)
    cases = out_of_fold_cases(members, held, recipe, predictor)
    return FoldUnit(fold, members, sorted({c.record.patient_id for c in train}), cases,
                    time.perf_counter() - start, len(train))


def unit_store(units_dir: Path, recipe: Recipe, records: Sequence[ImageRecord], fold_of: Dict[str, int]) -> UnitStore:
    """Where a recipe's finished folds are kept: keyed by the recipe, the fold assignment (each
    image's woman and fold: the fold file's content) and the library version."""
    from .. import __version__

    folds = sorted((r.image_id, r.patient_id, fold_of[r.image_id]) for r in records)
    return UnitStore(units_dir, recipe.name, identity(recipe.to_dict(), folds, __version__))


def run_recipe(recipe: Recipe, cached: Sequence[CachedImage], fold_of: Dict[str, int],
               progress: bool = True, variants: Sequence[Sequence[CachedImage]] = (),
               synthetic: Sequence[Tuple[SyntheticImage, CachedImage]] = ()) -> RecipeRun:
    """Train one head per fold on the other folds and predict the held-out women, in this
    process and in memory (:func:`run_recipes` for all of it).
    ``variants``: the same images at the recipe's ``train_scales`` (:func:`training_variants`),
    whose training women's copies join each fold's training images; held-out women are
    predicted at the recipe's own spacing only. ``synthetic``: see :func:`fold_training_images`."""
    return run_recipes([RecipeInputs(recipe, list(cached), variants, synthetic)], fold_of, progress)[0]


def run_recipes(inputs: Sequence[RecipeInputs], fold_of: Dict[str, int], progress: bool = True,
                units_dir: Optional[Path] = None, ranks: Optional[RankContext] = None) -> List[RecipeRun]:
    """Every recipe's folds as work units, recipe x fold (:func:`~.work_units.run_units`). With
    ``units_dir`` each finished unit is written there (:func:`unit_store`) and a rerun skips it;
    under torchrun (``ranks``) the units left are dealt to the ranks, and rank 0 reads them all
    back. Every unit seeds itself, so the result depends neither on restarts nor on the number
    of ranks. Returns each recipe's run on rank 0 (nothing on the other ranks)."""
    folds = sorted(set(fold_of.values()))
    stores = [unit_store(units_dir, i.recipe, [c.record for c in i.cached], fold_of) if units_dir else None
              for i in inputs]
    units = [(store, fold_unit_name(fold)) for store in stores for fold in folds]
    predictors: Dict[int, Any] = {}
    stages: Dict[int, Any] = {}

    def last_stages(k: int):
        if k not in stages:
            stages[k] = pretrained_last_stage(inputs[k].recipe)
        return stages[k]

    def compute(i: int) -> Dict[str, Any]:
        k, fold = divmod(i, len(folds))
        if k not in predictors:
            predictors[k] = candidate_predictor(frozen_backbone_model(cell_model_info(inputs[k].recipe)),
                                                device="cpu", classes=inputs[k].recipe.classes)
        return train_unit(inputs[k], folds[fold], fold_of, predictors[k], last_stages(k)).to_payload()

    def describe(i: int, unit: Dict[str, Any]) -> str:
        return describe_fold(inputs[i // len(folds)].recipe, len(folds), unit)

    payloads = run_units(units, compute, ranks, describe if progress else None)
    per_recipe = [payloads[k * len(folds):(k + 1) * len(folds)] for k in range(len(inputs))] if payloads else []
    return [recipe_run(given.recipe, [c.record for c in given.cached],
                       [FoldUnit.from_payload(p, last_stages(k)) for p in per_recipe[k]], fold_of, given.cached)
            for k, given in enumerate(inputs) if payloads]


def describe_fold(recipe: Recipe, folds: int, unit: Dict[str, Any]) -> str:
    """A fold unit's progress line (:func:`~.work_units.run_units` adds the time left)."""
    return (f"{recipe.name}: fold {int(unit['fold']) + 1}/{folds} ({unit['training_images']} training, "
            f"{unit['held_out_images']} held-out images) in {unit['seconds']:.1f} s")


def run_network_recipe(recipe: Recipe, records: Sequence[ImageRecord], fold_of: Dict[str, int], cache_dir: Path,
                       units_dir: Path, progress: bool = True, ranks: Optional[RankContext] = None
                       ) -> Optional[RecipeRun]:
    """A trains "network" recipe's folds, one after the other, each trained by every rank
    together (:func:`network_fold`) and written as a work unit that a rerun skips; rank 0
    returns the run (the other ranks None)."""
    ranks = ranks or RankContext()
    folds = sorted(set(fold_of.values()))
    store = unit_store(units_dir, recipe, records, fold_of)

    def compute(i: int) -> Optional[Dict[str, Any]]:
        unit = network_fold(recipe, records, folds[i], fold_of, store.folder / fold_unit_name(folds[i]), cache_dir,
                            ranks, progress)
        return unit.to_payload() if unit is not None else None

    payloads = run_units([(store, fold_unit_name(fold)) for fold in folds], compute, ranks,
                         (lambda i, unit: describe_fold(recipe, len(folds), unit)) if progress else None,
                         together=True)
    if not payloads:
        return None
    return recipe_run(recipe, records, [FoldUnit.from_payload(p) for p in payloads], fold_of)


def network_fold(recipe: Recipe, records: Sequence[ImageRecord], fold: int, fold_of: Dict[str, int], folder: Path,
                 cache_dir: Path, ranks: RankContext, progress: bool = True) -> Optional[FoldUnit]:
    """One fold of a trains "network" recipe: :func:`~.network_fit.fit_network` on the other
    folds' women (as this rank of ``ranks``; its checkpoint in ``folder``, resumed from when
    there: a killed fold loses at most an epoch), then, on rank 0, the held-out women's cases
    from the Predictor users run on the trained network (None on the other ranks)."""
    from ..model_file import LoadedModel
    from .network_fit import CHECKPOINT, fit_network

    start = time.perf_counter()
    train = [r for r in records if fold_of[r.image_id] != fold]
    held = [r for r in records if fold_of[r.image_id] == fold]
    fit = fit_network(recipe, train, folder, cache_dir, ranks, resume=(Path(folder) / CHECKPOINT).is_file(),
                      progress=progress)
    if not ranks.is_main:
        return None
    predictor = candidate_predictor(LoadedModel(fit.network, fit.info, "", ""), device=recipe.device,
                                    classes=recipe.classes)
    cases, errors = collect_cases(predictor, held, list(fit.info.classes))
    for error in errors:
        logger.warning("fold %d: held-out image skipped: %s", fold, error)
    return FoldUnit(fold, [], sorted({image.patient_id for image in fit.images}), cases, time.perf_counter() - start,
                    len(fit.images), {k: v.clone() for k, v in fit.network.state_dict().items()})


def fold_unit_name(fold: int) -> str:
    return f"fold-{fold}"


def recipe_run(recipe: Recipe, records: Sequence[ImageRecord], units: Sequence[FoldUnit], fold_of: Dict[str, int],
               cached: Sequence[CachedImage] = ()) -> RecipeRun:
    """A recipe's run from its folds' units, in fold order (a network unit's state dict
    rebuilt into its network, beside the fold's held-out images)."""
    out_of_fold = OutOfFold(recipe.to_dict(), [c for u in units for c in u.cases], dict(fold_of),
                            record_breast_keys(records), sum(u.seconds for u in units))
    networks = [(fold_network(recipe, u.network), [r for r in records if fold_of[r.image_id] == u.fold])
                for u in units if u.network is not None]
    return RecipeRun(recipe, out_of_fold, [h for u in units for h in u.heads],
                     [list(u.women) for u in units for _ in u.heads], list(cached), networks)


def fold_network(recipe: Recipe, state: Dict[str, torch.Tensor]) -> PatchClassifier:
    """A fold's trained network (eval mode) from its unit's state dict."""
    from ..model_file import build_network
    from .network_fit import network_info

    network = build_network(network_info(recipe), pretrained=False)
    network.load_state_dict(state)
    return network.eval()


def fold_training_images(fold: int, cached: Sequence[CachedImage], fold_of: Dict[str, int],
                         variants: Sequence[Sequence[CachedImage]] = (),
                         synthetic: Sequence[Tuple[SyntheticImage, CachedImage]] = ()) -> List[CachedImage]:
    """The images ``fold``'s heads train on: the other folds' women at every scale, then the
    synthetic images (:func:`synthetic_training_images`) whose donor and recipient both belong
    to another fold, so no held-out woman's lesion or breast trains her own fold."""
    real = [c for c in at_every_scale(cached, variants) if fold_of[c.record.image_id] != fold]
    return real + [image for made, image in synthetic if made.fold != fold]


def synthetic_training_images(records: Sequence[ImageRecord], fold_of: Dict[str, int], recipe: Recipe,
                              cache_dir: Path, progress: bool = True) -> List[Tuple[SyntheticImage, CachedImage]]:
    """The recipe's ``synthetic_per_lesion`` synthetic images per lesion
    (:mod:`.lesion_synthesis`, kept under ``cache_dir``) with their cached features."""
    if not recipe.synthetic_per_lesion:
        return []
    made = synthesise_lesions(records, fold_of, recipe.synthetic_per_lesion, Path(cache_dir) / SYNTHETIC_DIR,
                              seed=recipe.seed, progress=progress)
    return list(zip(made, cached_features([m.record for m in made], recipe, cache_dir, progress, {})))


def at_every_scale(cached: Sequence[CachedImage], variants: Sequence[Sequence[CachedImage]]) -> List[CachedImage]:
    """The images to train on: each cached image at the recipe's spacing, then at each of its
    ``train_scales`` (:func:`training_variants`)."""
    return [*cached, *(image for variant in variants for image in variant)]


def training_variants(records: Sequence[ImageRecord], recipe: Recipe, cache_dir: Path,
                      progress: bool = True,
                      known: Optional[Dict[tuple, List[CachedImage]]] = None) -> List[List[CachedImage]]:
    """The cached features of ``records`` at each of the recipe's ``train_scales`` (the pixel
    spacing times that scale), for scale augmentation; ``known``: caches already read, by
    :func:`cache_lookup_key`, reused and extended."""
    known = known if known is not None else {}
    variants = []
    for scale in recipe.train_scales:
        scaled = replace(recipe, spacing_mm=recipe.spacing_mm * scale, train_scales=[])
        variants.append(cached_features(records, scaled, cache_dir, progress, known))
    return variants


def cache_lookup_key(recipe: Recipe) -> tuple:
    """What a recipe's cached features depend on (recipes that agree on it share one cache),
    and whether they are held in memory (:func:`features_in_memory`)."""
    return (recipe.backbone, recipe.spacing_mm, json.dumps(recipe.preprocessing.__dict__, sort_keys=True, default=str),
            recipe.feature_cut, features_in_memory(recipe))


def features_in_memory(recipe: Recipe) -> bool:
    """True only where the recipe reads the other breast (the pairing aligns features in
    memory); every other fit streams the features from their cache files, one image at a time
    (:func:`~.stage_fit.fit_streamed_head`, :func:`~.stage_fit.fit_tuned_tail_head`)."""
    return recipe.other_breast_input != "none"


def cached_features(records: Sequence[ImageRecord], recipe: Recipe, cache_dir: Path, progress: bool,
                    known: Dict[tuple, List[CachedImage]]) -> List[CachedImage]:
    """The recipe's cached features of every record (computed where missing; see
    :func:`~.feature_cache.build_cache`), once per :func:`cache_lookup_key` in ``known``.

    Raises:
        MammoPatchError: an image could not be read (the first such file named)."""
    key = cache_lookup_key(recipe)
    if key not in known:
        cached, errors = build_cache(records, cell_model_info(recipe), cache_dir, progress=progress,
                                     cut=recipe.feature_cut, in_memory=features_in_memory(recipe))
        if errors:
            raise MammoPatchError(f"{len(errors)} image(s) could not be read for cross-validation: {errors[0]}")
        known[key] = cached
    return known[key]


def cross_validate(recipes: Sequence[Recipe], records: Sequence[ImageRecord], fold_of: Dict[str, int],
                   cache_dir: Path, progress: bool = True, units_dir: Optional[Path] = None,
                   ranks: Optional[RankContext] = None) -> List[RecipeRun]:
    """Each recipe's fold heads (or fold networks) and out-of-fold predictions on the same
    folds (features computed once per :func:`cache_lookup_key` and kept in ``cache_dir``, as
    are a network recipe's preprocessed images; under torchrun each rank computes its share of
    the images first). ``units_dir`` and ``ranks``: see :func:`run_recipes` (a network recipe's
    folds always keep their units and checkpoints, in ``cache_dir/units`` without
    ``units_dir``). Returns the runs in recipe order on rank 0, nothing on the other ranks."""
    ranks = ranks or RankContext()
    known: Dict[tuple, List[CachedImage]] = {}
    sides: Dict[str, Any] = {}
    heads = [recipe for recipe in recipes if recipe.trains != "network"]
    heads += [recipe.fine_recipe for recipe in heads if recipe.fine]  # the finer heads' folds: units of their own
    inputs = [recipe_inputs(recipe, records, fold_of, cache_dir, ranks, progress and ranks.is_main, known, sides)
              for recipe in heads]
    by_name = {run.recipe.name: run for run in run_recipes(inputs, fold_of, progress, units_dir, ranks)}
    runs = [run_network_recipe(recipe, records, fold_of, cache_dir, units_dir or Path(cache_dir) / UNITS_DIR,
                               progress, ranks) if recipe.trains == "network" else by_name.get(recipe.name)
            for recipe in recipes]  # the head runs exist on rank 0 only
    return [with_finer_head(run, by_name[run.recipe.fine_recipe.name], fold_of, records) if run.recipe.fine else run
            for run in runs if run is not None]


def with_finer_head(run: RecipeRun, fine: RecipeRun, fold_of: Dict[str, int],
                    records: Sequence[ImageRecord]) -> RecipeRun:
    """``run`` (a recipe with a finer head) read as its model file reads images: each held-out
    image's cells from its fold's heads and its fold's finer heads
    (:func:`~MammoPatchLib.networks.patch_classifier.with_finer_classes`: the finer recipe's
    classes from the 16 px cells, or both heads averaged at ``fine_weight``, the others from the
    32 px ones), its case made from those
    16 px cells; ``fine``'s run kept beside it for the model file."""
    recipe, finer = run.recipe, fine.recipe
    channels = [FINDING_CLASSES.index(c) for c in finer.classes]
    predictor = candidate_predictor(frozen_backbone_model(cell_model_info(recipe)), device="cpu",
                                    classes=recipe.classes)
    top_k = None if recipe.image_score == "max" else recipe.image_top_k
    fine_images = {c.record.image_id: c for c in fine.cached}
    cases = []
    for k, fold in enumerate(sorted(set(fold_of.values()))):
        heads = run.heads[k * recipe.seeds:(k + 1) * recipe.seeds]
        fine_heads = fine.heads[k * finer.seeds:(k + 1) * finer.seeds]
        for image in (c for c in run.cached if fold_of[c.record.image_id] == fold):
            fine_image = fine_images[image.record.image_id]
            coarse = torch.logit(mean_probabilities(heads, image, recipe.flip_tta)[None])
            finer_cells = torch.logit(mean_probabilities(fine_heads, fine_image, finer.flip_tta)[None])
            cells = torch.sigmoid(with_finer_classes(coarse, finer_cells, channels, recipe.fine_weight)[0])
            cases.append(case_from_cells(image.record, cells, fine_image.geometry, predictor, top_k))
    seconds = run.out_of_fold.seconds + fine.out_of_fold.seconds
    out_of_fold = OutOfFold(recipe.to_dict(), cases, dict(fold_of), record_breast_keys(records), seconds)
    return replace(run, out_of_fold=out_of_fold, fine=fine)


def recipe_inputs(recipe: Recipe, records: Sequence[ImageRecord], fold_of: Dict[str, int], cache_dir: Path,
                  ranks: RankContext, shown: bool, known: Dict[tuple, List[CachedImage]],
                  sides: Dict[str, Any]) -> RecipeInputs:
    """What a head or stages recipe trains and predicts from (:class:`RecipeInputs`), every
    cache filled by the ranks' shares first (:func:`~.work_units.fill_by_shares`), then read by
    all. ``known``: caches already read (:func:`cached_features`); ``sides``: each film's
    chest-wall side, read from its pixels once for every recipe that pairs the breasts;
    ``shown``: progress bars."""
    if cache_lookup_key(recipe) not in known:
        fill_by_shares(ranks, records, lambda share: cached_features(share, recipe, cache_dir, shown, {}))
    cached = cached_features(records, recipe, cache_dir, shown, known)
    if recipe.cell_px != FEATURE_STRIDE:  # 16 px cells: stride-16 features, these beside them
        info, key = cell_model_info(recipe), cache_lookup_key(recipe)
        fill_by_shares(ranks, records, lambda share: fine_cell_images(share, recipe, cached, cache_dir, info, key,
                                                                      shown, {}))
        cached = fine_cell_images(records, recipe, cached, cache_dir, info, key, shown, known)
    if recipe.other_breast_input != "none":  # both films of a woman share her fold: held out together
        if "sides" not in sides:
            sides["sides"] = chest_wall_sides(records)
        cached = pair_images(cached, sides["sides"], fold_of)
        logger.info("%s: %.0f %% of the images read with their other breast", recipe.name, 100 * paired_share(cached))
    if recipe.train_scales:
        fill_by_shares(ranks, records, lambda share: training_variants(share, recipe, cache_dir, shown, {}))
    variants = training_variants(records, recipe, cache_dir, shown, known)
    if recipe.synthetic_per_lesion and ranks.distributed:  # made once, by rank 0, then read by all
        if ranks.is_main:
            synthetic_training_images(records, fold_of, recipe, cache_dir, shown)
        ranks.barrier()
    synthetic = synthetic_training_images(records, fold_of, recipe, cache_dir, shown)
    return RecipeInputs(recipe, cached, variants, synthetic)


__all__ = ["cross_validate", "run_recipe", "run_recipes", "run_network_recipe", "recipe_inputs", "train_unit",
           "FoldUnit", "RecipeInputs", "UNITS_DIR", "seed_of",
           "at_every_scale", "fold_training_images", "synthetic_training_images",
           "training_variants", "cached_features",
           "cell_model_info", "fold_assignment", "RecipeRun", "fit_head"]
