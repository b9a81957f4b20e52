"""Cross-validation by woman: the one yardstick for every model decision.

``mammopatch crossval --config RECIPE --data D --folds 5 --out DIR``:

1. Folds: women (never images) dealt into ``folds`` folds, stratified by finding class, and
   written to ``DIR/folds.csv``; a later run into the same folder reuses that file, so every
   recipe is judged on the same folds (paired).
2. Features: the frozen backbone's dense features of every image and its mirror, computed
   once through the Predictor's preprocessing and network (``feature_cache``).
3. Per fold: a head trained on the other folds' women; its cell heatmaps of the held-out
   women go through the Predictor's own second half (``Predictor.result_from_cells``: cells ->
   source geometry -> findings), as ``predict`` would give them.
4. Pooled out-of-fold figures over every lesion with coordinates (FROC at 0.25 ... 4 FP per
   image, per class and all classes; image AUC; bootstrap 95 % intervals over women), each
   fold's figures beside them, and the image-level view at operating thresholds fitted, for
   each fold, on the other folds' out-of-fold predictions (nested: never on the fold judged).
5. Each recipe's out-of-fold cases are kept under ``DIR/recipes/<name>/``; the report lists
   every recipe ever run into ``DIR`` with its paired difference (bootstrap over women)
   against the baseline recipe, losers included.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..datasets import ImageRecord, load_records
from ..datasets.splits import folds_by_patient, read_fold_file, write_fold_file
from ..errors import MammoPatchError
from ..evaluation.lesions import (ANY_FINDING, FP_RATES, ImageCase, any_finding_case, bootstrap_intervals,
                                  candidate_predictor, case_from_result, gated, image_gate, lesion_metrics,
                                  operating_thresholds)
from ..evaluation.metrics import is_hit
from ..evaluation.paired import paired_difference
from ..inference.predictor import CellHeatmaps
from ..io import read_mammogram
from ..io.atomic import atomic_path
from ..model_file import InferenceDefaults, ModelInfo
from ..other_breast import OTHER_BREAST_WEIGHT, BreastKey, breast_key, other_breast_scores, relative_score
from ..vocabulary import FINDING_CLASSES
from .cell_head_fit import FittedCellHead, fit_cell_head
from .cell_recipe import CellHeadRecipe
from .feature_cache import CachedImage, build_cache, frozen_backbone_model

logger = logging.getLogger(__name__)

FOLD_FILE = "folds.csv"
RECIPES_DIR = "recipes"
CASES_FILE = "cases.json"
OUTCOME_FILE = "outcome.json"
REPORT_JSON = "crossval.json"
REPORT_MD = "crossval.md"
FROC_PLOT = "froc.png"


def cell_model_info(recipe: CellHeadRecipe, ensemble: int = 1) -> ModelInfo:
    """The model information of a cell-head model made with ``recipe``."""
    return ModelInfo(backbone=recipe.backbone, classes=list(FINDING_CLASSES), hidden=recipe.hidden, head=recipe.head,
                     neighbourhood=recipe.neighbourhood, bottleneck=recipe.bottleneck, ensemble=ensemble,
                     spacing_mm=recipe.spacing_mm, preprocessing=recipe.preprocessing,
                     inference=InferenceDefaults(report_classes=list(recipe.classes), flip_tta=recipe.flip_tta),
                     tuned_tail=recipe.tail_epochs > 0)


@dataclass
class RecipeOutcome:
    """What one recipe's cross-validation gives."""

    recipe: CellHeadRecipe
    cases: List[ImageCase]
    fold_of_image: Dict[str, int]
    heads: List[FittedCellHead] = field(default_factory=list)
    seconds: float = 0.0
    cached: List[CachedImage] = field(default_factory=list, repr=False)
    variants: List[List[CachedImage]] = field(default_factory=list, repr=False)  # at recipe.train_scales


def fold_assignment(records: Sequence[ImageRecord], folds: int, out_dir: Path, seed: int = 0) -> Dict[str, int]:
    """{image_id: fold}: read from ``out_dir/folds.csv`` when it exists (the same folds for
    every recipe), else made and written there."""
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
        return {r.image_id: fold_of[r.image_id] for r in records}
    by_patient = folds_by_patient(records, folds, seed)
    write_fold_file(records, by_patient, path)
    return {r.image_id: by_patient[r.patient_id] for r in records}


def _image_score(probs: torch.Tensor, reported: Sequence[int], recipe: CellHeadRecipe) -> Optional[float]:
    if recipe.image_score == "max":
        return None  # the Predictor's own: the highest heatmap value
    cells = probs[list(reported)].flatten(1)
    k = min(recipe.image_top_k, cells.shape[1])
    return float(cells.topk(k, dim=1).values.mean(1).max())


def seed_of(recipe: CellHeadRecipe, fold: int, member: int) -> int:
    """The seed of a fold's ``member``-th head (member 0: the recipe's seed plus the fold)."""
    return recipe.seed + fold + 1000 * member


def pretrained_last_stage(recipe: CellHeadRecipe):
    """The backbone's pretrained last stage, where a recipe tunes it (else None)."""
    if not recipe.tail_epochs:
        return None
    from ..networks import LastStage

    return LastStage(frozen_backbone_model(replace(cell_model_info(recipe), tuned_tail=False)).network.features)


def fit_head(images: Sequence[CachedImage], recipe: CellHeadRecipe, seed: int, last_stage=None) -> FittedCellHead:
    """One head by the recipe: on frozen features, or with its own tuned last stage (the
    cached features are then the trunk's; ``last_stage`` from :func:`pretrained_last_stage`)."""
    if recipe.tail_epochs:
        from .tail_fit import fit_tuned_tail_head

        return fit_tuned_tail_head(images, recipe, list(FINDING_CLASSES),
                                   last_stage if last_stage is not None else pretrained_last_stage(recipe), seed)
    return fit_cell_head(images, recipe, list(FINDING_CLASSES), seed=seed)


def fit_fold_heads(train: Sequence[CachedImage], recipe: CellHeadRecipe, fold: int,
                   last_stage=None) -> List[FittedCellHead]:
    """``recipe.seeds`` heads trained on the same images from different seeds."""
    return [fit_head(train, recipe, seed_of(recipe, fold, member), last_stage) for member in range(recipe.seeds)]


def mean_probabilities(heads: Sequence[FittedCellHead], image: CachedImage, flip_tta: bool) -> torch.Tensor:
    """The heads' cell probabilities averaged (what the model file's ensemble head computes)."""
    return torch.stack([head.cell_probabilities(image, flip_tta) for head in heads]).mean(0)


def out_of_fold_cases(heads: Sequence[FittedCellHead], images: Sequence[CachedImage], recipe: CellHeadRecipe,
                      predictor) -> List[ImageCase]:
    """The held-out images' cases: cell heatmaps from the cached features (the fold's heads
    averaged), findings from the Predictor's own mapping and detection."""
    classes = list(FINDING_CLASSES)
    reported = [classes.index(c) for c in predictor.selected]
    cases = []
    for image in images:
        probs = mean_probabilities(heads, image, recipe.flip_tta)
        source = read_mammogram(image.record.path, spacing_mm=image.record.spacing_mm)
        result = predictor.result_from_cells(source, [CellHeatmaps(probs, image.geometry, 32)])  # type: ignore[arg-type]
        case = case_from_result(image.record, result, classes)
        score = _image_score(probs, reported, recipe)
        if score is not None:
            case.image_score = score
        cases.append(case)
    return cases


def run_recipe(recipe: CellHeadRecipe, cached: Sequence[CachedImage], fold_of: Dict[str, int],
               progress: bool = True, variants: Sequence[Sequence[CachedImage]] = ()) -> RecipeOutcome:
    """Train one head per fold on the other folds and predict the held-out women.
    ``variants``: the same images at the recipe's ``train_scales`` (:func:`training_variants`),
    whose training women's copies join each fold's training images; held-out women are
    predicted at the recipe's own spacing only."""
    start = time.perf_counter()
    folds = sorted(set(fold_of.values()))
    predictor = candidate_predictor(frozen_backbone_model(cell_model_info(recipe)), device="cpu",
                                    classes=recipe.classes)
    cases: List[ImageCase] = []
    heads: List[FittedCellHead] = []
    last_stage = pretrained_last_stage(recipe)
    for fold in folds:
        train = [c for c in at_every_scale(cached, variants) if fold_of[c.record.image_id] != fold]
        held = [c for c in cached if fold_of[c.record.image_id] == fold]
        fold_start = time.perf_counter()
        members = fit_fold_heads(train, recipe, fold, last_stage)
        heads.extend(members)
        cases.extend(out_of_fold_cases(members, held, recipe, predictor))
        if progress:
            print(f"  {recipe.name}: fold {fold + 1}/{len(folds)} ({len(train)} training, {len(held)} held-out "
                  f"images) in {time.perf_counter() - fold_start:.1f} s", flush=True)
    return RecipeOutcome(recipe, cases, dict(fold_of), heads, time.perf_counter() - start, list(cached),
                         [list(v) for v in variants])


def at_every_scale(cached: Sequence[CachedImage], variants: Sequence[Sequence[CachedImage]]) -> List[CachedImage]:
    """The images to train on: each cached image at the recipe's spacing, then at each of its
    ``train_scales`` (:func:`training_variants`)."""
    return [*cached, *(image for variant in variants for image in variant)]


def training_variants(records: Sequence[ImageRecord], recipe: CellHeadRecipe, cache_dir: Path,
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


def cache_lookup_key(recipe: CellHeadRecipe) -> tuple:
    """What a recipe's cached features depend on (recipes that agree on it share one cache)."""
    return (recipe.backbone, recipe.spacing_mm, json.dumps(recipe.preprocessing.__dict__, sort_keys=True, default=str),
            recipe.tail_epochs > 0)


def cached_features(records: Sequence[ImageRecord], recipe: CellHeadRecipe, cache_dir: Path, progress: bool,
                    known: Dict[tuple, List[CachedImage]]) -> List[CachedImage]:
    """The recipe's cached features of every record (computed where missing; see
    :func:`~.feature_cache.build_cache`), once per :func:`cache_lookup_key` in ``known``.

    Raises:
        MammoPatchError: an image could not be read (the first such file named)."""
    key = cache_lookup_key(recipe)
    if key not in known:
        cached, errors = build_cache(records, cell_model_info(recipe), cache_dir, progress=progress,
                                     trunk=recipe.tail_epochs > 0)
        if errors:
            raise MammoPatchError(f"{len(errors)} image(s) could not be read for cross-validation: {errors[0]}")
        known[key] = cached
    return known[key]


def image_level_view(cases: Sequence[ImageCase], thresholds: Dict[str, float]) -> Dict[str, float]:
    """At per-class thresholds: share of abnormal images with a finding, of normal images
    with none, false findings per image and the share of lesions hit by a finding."""
    abnormal = [c for c in cases if c.abnormal]
    normal = [c for c in cases if not c.abnormal]

    def findings(case: ImageCase):
        return [(name, d) for name, dets in case.detections.items() if name in thresholds
                for d in dets if d[0] >= thresholds[name]]

    false, hit, lesions = 0, 0, 0
    for case in cases:
        kept = findings(case)
        for name, (score, box, peak) in kept:
            if not any(is_hit(box, peak, t) for t in case.truths.get(name, [])):
                false += 1
        for name, truths in case.truths.items():
            if name not in thresholds:
                continue
            for truth in truths:
                lesions += 1
                hit += any(n == name and is_hit(b, p, truth) for n, (s, b, p) in kept)
    return {"abnormal_with_finding": float(np.mean([bool(findings(c)) for c in abnormal])) if abnormal else float("nan"),
            "normal_without_finding": float(np.mean([not findings(c) for c in normal])) if normal else float("nan"),
            "false_findings_per_image": false / max(len(cases), 1),
            "lesions_hit": hit / max(lesions, 1), "lesions": lesions,
            "abnormal": len(abnormal), "normal": len(normal)}


def operating_point(cases: Sequence[ImageCase], recipe: CellHeadRecipe) -> Tuple[Dict[str, float], float]:
    """The recipe's operating point fitted on ``cases``: per-class thresholds (at most
    ``fp_per_image`` false positives per image per class), then the image gate that keeps the
    share of normal images with a finding within ``normal_with_finding`` (0.0: none)."""
    thresholds = dict(zip(recipe.classes, operating_thresholds(cases, recipe.classes,
                                                                fp_per_image=recipe.fp_per_image)))
    if recipe.normal_with_finding >= 1.0:
        return thresholds, 0.0
    return thresholds, image_gate([_above(c, thresholds) for c in cases], recipe.normal_with_finding)


def nested_operating_view(outcome: RecipeOutcome, draws: int = 1000) -> Dict[str, Any]:
    """The image-level view with each fold's operating point fitted on the other folds'
    out-of-fold predictions, pooled over folds."""
    recipe = outcome.recipe
    judged: List[ImageCase] = []
    fold_thresholds, fold_gates = {}, {}
    for fold in sorted(set(outcome.fold_of_image.values())):
        others = [c for c in outcome.cases if outcome.fold_of_image[c.image_id] != fold]
        mine = [c for c in outcome.cases if outcome.fold_of_image[c.image_id] == fold]
        fold_thresholds[fold], fold_gates[fold] = operating_point(others, recipe)
        judged.extend(gated(_above(case, fold_thresholds[fold]), fold_gates[fold]) for case in mine)
    view = image_level_view(judged, {name: 0.0 for name in recipe.classes})  # already thresholded per fold
    view["intervals"] = image_level_intervals(judged, draws)
    view["thresholds_by_fold"] = {str(k): v for k, v in fold_thresholds.items()}
    view["image_gate_by_fold"] = {str(k): v for k, v in fold_gates.items()}
    return view


def image_level_intervals(judged: Sequence[ImageCase], draws: int = 1000, seed: int = 0) -> Dict[str, List[float]]:
    """95 % bootstrap intervals over women of the shares of abnormal images with a finding and
    of normal images without one (``judged``: cases already cut at their operating point)."""
    women: Dict[str, List[Tuple[bool, bool]]] = {}
    for case in judged:
        women.setdefault(case.patient_id, []).append((case.abnormal, any(case.detections.values())))
    names = sorted(women)
    rng = np.random.default_rng(seed)
    samples: Dict[str, List[float]] = {"abnormal_with_finding": [], "normal_without_finding": []}
    for _ in range(draws):
        drawn = [image for k in rng.integers(0, len(names), len(names)) for image in women[names[k]]]
        abnormal = [found for is_abnormal, found in drawn if is_abnormal]
        normal = [not found for is_abnormal, found in drawn if not is_abnormal]
        if abnormal and normal:
            samples["abnormal_with_finding"].append(float(np.mean(abnormal)))
            samples["normal_without_finding"].append(float(np.mean(normal)))
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else [float("nan")] * 2
            for k, v in samples.items()}


def record_breast_keys(records: Sequence[ImageRecord]) -> Dict[str, Optional[BreastKey]]:
    """{image_id: breast key}. A record without a side (mini-MIAS states none) takes its place
    among its woman's images as the side when she has exactly two of that view: the data set
    gives one film per breast."""
    groups: Dict[Tuple[str, str], List[ImageRecord]] = {}
    for record in records:
        groups.setdefault((record.patient_id, record.view_position), []).append(record)
    keys: Dict[str, Optional[BreastKey]] = {}
    for (woman, view), members in groups.items():
        unknown = not any(r.laterality for r in members)
        for place, record in enumerate(sorted(members, key=lambda r: r.image_id)):
            side = str(place + 1) if unknown and len(members) == 2 else record.laterality
            keys[record.image_id] = breast_key(woman, view, side)
    return keys


def cases_against_other_breast(cases: Sequence[ImageCase], keys: Dict[str, Optional[BreastKey]],
                               weight: float = OTHER_BREAST_WEIGHT) -> List[ImageCase]:
    """Each case read against her other breast (:mod:`MammoPatchLib.other_breast`): every finding's
    score minus ``weight`` x the highest heatmap value of its class in the other breast, the image
    score minus ``weight`` x the other's. A case without a pair is returned itself."""
    ordered = [keys.get(c.image_id) for c in cases]
    classes = sorted({name for c in cases for name in c.detections})
    other_max = {name: other_breast_scores(ordered, [c.class_maximum(name) for c in cases]) for name in classes}
    other_image = other_breast_scores(ordered, [c.image_score for c in cases])
    out = []
    for index, case in enumerate(cases):
        if other_image[index] is None:
            out.append(case)
            continue
        detections = {name: [(relative_score(s, other_max[name][index] or 0.0, weight), box, peak)
                             for s, box, peak in dets] for name, dets in case.detections.items()}
        out.append(replace(case, detections=detections,
                           image_score=relative_score(case.image_score, other_image[index], weight)))
    return out


def other_breast_view(outcome: RecipeOutcome, draws: int = 1000) -> Optional[Dict[str, Any]]:
    """The figures with each image read against her other breast (:func:`cases_against_other_breast`):
    the image AUC and the FROC with intervals, their paired bootstrap over women against the
    plain reading, and the nested image-level view at operating points fitted on the relative
    scores; None without the records (or without any pair)."""
    cases = outcome.cases
    adjusted = cases_against_other_breast(cases, record_breast_keys([c.record for c in outcome.cached]))
    paired_images = sum(a is not c for a, c in zip(adjusted, cases))
    if not paired_images:
        return None
    classes = outcome.recipe.classes
    scores_only = [replace(c, image_score=a.image_score) for c, a in zip(cases, adjusted)]
    paired = paired_difference(cases, scores_only, classes, draws=draws)["image_auc"]
    pooled = lesion_metrics(adjusted, classes)
    paired_findings = paired_difference(cases, adjusted, classes, draws=draws)
    anywhere = any_finding_summary(adjusted, classes, draws=draws)
    anywhere.pop("curve", None)
    anywhere["paired_vs_plain"] = paired_difference([any_finding_case(c, classes) for c in cases],
                                                    [any_finding_case(c, classes) for c in adjusted], [ANY_FINDING],
                                                    draws=draws)["sens@1"]
    return {"weight": OTHER_BREAST_WEIGHT, "paired_images": paired_images,
            "image_auc": lesion_metrics(scores_only, classes)["image_auc"],
            "interval": list(bootstrap_intervals(scores_only, classes, draws=draws)["image_auc"]),
            "paired_vs_own_score": paired,
            "findings": {"sensitivity_at_fp": pooled["all_classes_froc"], "score": pooled["score"],
                         "intervals": bootstrap_intervals(adjusted, classes, draws=draws),
                         "paired_vs_plain": {k: paired_findings[k] for k in ("sens@1", "score")},
                         "any_finding": anywhere,
                         "operating": nested_operating_view(replace(outcome, cases=adjusted), draws)}}


def _above(case: ImageCase, thresholds: Dict[str, float]) -> ImageCase:
    """``case`` with only the findings at or above their class's threshold."""
    return replace(case, detections={name: [d for d in case.detections.get(name, []) if d[0] >= thresholds[name]]
                                     for name in thresholds})


def any_finding_summary(cases: Sequence[ImageCase], classes: Sequence[str], draws: int = 1000) -> Dict[str, Any]:
    """The class-agnostic FROC (:func:`~MammoPatchLib.evaluation.lesions.any_finding_case`)
    with its bootstrap intervals over women."""
    merged = [any_finding_case(c, classes) for c in cases]
    pooled = lesion_metrics(merged, [ANY_FINDING])
    return {"sensitivity_at_fp": pooled["all_classes_froc"], "score": pooled["score"],
            "intervals": bootstrap_intervals(merged, [ANY_FINDING], draws=draws), "curve": pooled["all_classes_curve"]}


def summarise(outcome: RecipeOutcome, draws: int = 1000) -> Dict[str, Any]:
    """Pooled and per-fold figures with bootstrap intervals (class-matched, and for any
    finding), and the nested image-level view."""
    classes = outcome.recipe.classes
    pooled = lesion_metrics(outcome.cases, classes)
    per_fold = []
    for fold in sorted(set(outcome.fold_of_image.values())):
        mine = [c for c in outcome.cases if outcome.fold_of_image[c.image_id] == fold]
        m = lesion_metrics(mine, classes)
        per_fold.append({"fold": fold, "images": m["images"], "lesions": m["lesions"],
                         "sensitivity_at_fp": m["all_classes_froc"], "image_auc": m["image_auc"]})
    return {"recipe": outcome.recipe.to_dict(), "seconds": round(outcome.seconds, 1),
            "images": pooled["images"], "women": len({c.patient_id for c in outcome.cases}),
            "lesions": pooled["lesions"], "sensitivity_at_fp": pooled["all_classes_froc"],
            "score": pooled["score"], "image_auc": pooled["image_auc"],
            "per_class": {k: {"lesions": v["lesions"], "sensitivity_at_fp": v["froc"]}
                          for k, v in pooled["per_class"].items()},
            "intervals": bootstrap_intervals(outcome.cases, classes, draws=draws),
            "any_finding": any_finding_summary(outcome.cases, classes, draws=draws),
            "per_fold": per_fold, "operating": nested_operating_view(outcome, draws),
            "other_breast": other_breast_view(outcome, draws),
            "curve": pooled["all_classes_curve"]}


# --- persistence: every recipe's out-of-fold cases stay in the folder --------------------------

def _case_to_dict(case: ImageCase) -> Dict[str, Any]:
    return {"image_id": case.image_id, "patient_id": case.patient_id, "abnormal": case.abnormal,
            "image_score": case.image_score, "class_maxima": case.class_maxima,
            "detections": {k: [[float(s), list(map(float, b)), list(map(float, p))] for s, b, p in v]
                           for k, v in case.detections.items()},
            "truths": {k: [list(map(float, b)) for b in v] for k, v in case.truths.items()}}


def _case_from_dict(d: Dict[str, Any]) -> ImageCase:
    return ImageCase(d["image_id"], d["patient_id"], bool(d["abnormal"]), float(d["image_score"]),
                     {k: [(s, tuple(b), tuple(p)) for s, b, p in v] for k, v in d["detections"].items()},
                     {k: [tuple(b) for b in v] for k, v in d["truths"].items()},
                     {k: float(v) for k, v in d.get("class_maxima", {}).items()})


def save_outcome(outcome: RecipeOutcome, summary: Dict[str, Any], out_dir: Path) -> Path:
    folder = out_dir / RECIPES_DIR / outcome.recipe.name
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / CASES_FILE) as tmp:
        tmp.write_text(json.dumps({"fold_of_image": outcome.fold_of_image,
                                   "cases": [_case_to_dict(c) for c in outcome.cases]}), encoding="utf-8")
    with atomic_path(folder / OUTCOME_FILE) as tmp:
        tmp.write_text(json.dumps(summary, indent=1, default=float), encoding="utf-8")
    return folder


def load_outcomes(out_dir: Path) -> Dict[str, Dict[str, Any]]:
    """{recipe name: {"summary", "cases"}} of every recipe run into ``out_dir``."""
    found: Dict[str, Dict[str, Any]] = {}
    for folder in sorted((out_dir / RECIPES_DIR).glob("*")):
        if not (folder / CASES_FILE).is_file() or not (folder / OUTCOME_FILE).is_file():
            continue
        cases = json.loads((folder / CASES_FILE).read_text(encoding="utf-8"))
        found[folder.name] = {"summary": json.loads((folder / OUTCOME_FILE).read_text(encoding="utf-8")),
                              "cases": [_case_from_dict(c) for c in cases["cases"]]}
    return found


def compare_all(out_dir: Path, baseline: str, classes: Sequence[str], draws: int = 1000) -> Dict[str, Any]:
    """Every recipe in ``out_dir`` with its paired difference against ``baseline``."""
    outcomes = load_outcomes(out_dir)
    if baseline not in outcomes:
        raise MammoPatchError(f"baseline recipe {baseline!r} has no out-of-fold results here", out_dir)
    rows = {}
    baseline_anywhere = [any_finding_case(c, classes) for c in outcomes[baseline]["cases"]]
    for name, found in outcomes.items():
        row = dict(found["summary"])
        row.pop("curve", None)
        if "any_finding" not in row:  # kept by a version before the class-agnostic view
            row["any_finding"] = any_finding_summary(found["cases"], classes, draws=draws)
        row["any_finding"].pop("curve", None)
        if name != baseline:
            row["paired_vs_baseline"] = paired_difference(outcomes[baseline]["cases"], found["cases"], classes,
                                                          draws=draws)
            row["paired_any_finding_vs_baseline"] = paired_difference(
                baseline_anywhere, [any_finding_case(c, classes) for c in found["cases"]], [ANY_FINDING], draws=draws)
        rows[name] = row
    return {"baseline": baseline, "recipes": rows,
            "curves": {n: o["summary"].get("curve", []) for n, o in outcomes.items()}}


def crossval(recipes: Sequence[CellHeadRecipe], data: str, folds: int, out_dir, cache_dir=None,
             baseline: Optional[str] = None, progress: bool = True, draws: int = 1000,
             fold_seed: int = 0) -> Dict[str, Any]:
    """Cross-validate each recipe on the same folds, keep its out-of-fold results, and write
    the report of every recipe in ``out_dir`` (``crossval.json``, ``crossval.md``, ``froc.png``).
    Returns the report; ``report["outcomes"]`` holds this run's :class:`RecipeOutcome`s."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records, description = load_records(data, work_dir=out_dir)
    fold_of = fold_assignment(records, folds, out_dir, seed=fold_seed)
    cache = Path(cache_dir) if cache_dir else out_dir / "feature-cache"
    outcomes = []
    cached_by_key: Dict[tuple, List[CachedImage]] = {}
    for recipe in recipes:
        cached = cached_features(records, recipe, cache, progress, cached_by_key)
        variants = training_variants(records, recipe, cache, progress, cached_by_key)
        outcome = run_recipe(recipe, cached, fold_of, progress, variants)
        save_outcome(outcome, summarise(outcome, draws=draws), out_dir)
        outcomes.append(outcome)
    names = [p.name for p in sorted((out_dir / RECIPES_DIR).glob("*"))]
    report = compare_all(out_dir, baseline or (recipes[0].name if recipes else names[0]),
                         recipes[0].classes if recipes else list(FINDING_CLASSES), draws=draws)
    report["data"] = description
    report["folds"] = folds
    from ..evaluation.crossval_report import write_crossval_plot, write_crossval_report

    with atomic_path(out_dir / REPORT_JSON) as tmp:
        tmp.write_text(json.dumps(report, indent=1, default=float), encoding="utf-8")
    write_crossval_report(report, out_dir / REPORT_MD)
    write_crossval_plot(report, out_dir / FROC_PLOT)
    report["outcomes"] = outcomes
    return report


__all__ = ["crossval", "run_recipe", "at_every_scale", "training_variants", "cached_features", "summarise", "any_finding_summary",
           "cell_model_info", "fold_assignment", "RecipeOutcome", "FP_RATES", "image_level_view",
           "nested_operating_view", "load_outcomes", "compare_all"]
