"""Cross-validation's figures from out-of-fold predictions (:class:`~.out_of_fold.OutOfFold`).

Pooled out-of-fold figures over every lesion with coordinates (FROC at 0.25 ... 4 FP per image,
per class and all classes; image AUC; bootstrap 95 % intervals over women), each fold's figures
beside them, the nested image-level view (:mod:`.operating`), the other-breast view, and the
report of every recipe kept in a folder with its paired difference against the baseline.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..errors import MammoPatchError
from ..io.atomic import atomic_path
from ..other_breast import OTHER_BREAST_WEIGHT, BreastKey, OtherBreastPoint, other_breast_scores, relative_score
from .crossval_report import POSTER_TABLE, write_crossval_plot, write_crossval_report
from .lesions import ANY_FINDING, ImageCase, any_finding_case, bootstrap_intervals, lesion_metrics
from .operating import nested_operating_view, operating_point
from .out_of_fold import ModelOperatingPoint, OutOfFold, load_out_of_folds, save_out_of_fold
from .paired import paired_difference

REPORT_JSON = "crossval.json"
REPORT_MD = "crossval.md"
FROC_PLOT = "froc.png"


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


def other_breast_view(outcome: OutOfFold, draws: int = 1000) -> Optional[Dict[str, Any]]:
    """The figures with each image read against her other breast (:func:`cases_against_other_breast`):
    the image AUC and the FROC with intervals, their paired bootstrap over women against the
    plain reading, and the nested image-level view at operating points fitted on the relative
    scores; None without any pair."""
    cases = outcome.cases
    adjusted = cases_against_other_breast(cases, outcome.breast_keys)
    paired_images = sum(a is not c for a, c in zip(adjusted, cases))
    if not paired_images:
        return None
    classes = outcome.classes
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


def model_operating_point(outcome: OutOfFold, classes: Sequence[str]) -> ModelOperatingPoint:
    """The operating point of the model ``outcome``'s recipe makes, all three parts fitted on
    the pooled out-of-fold predictions (``classes``: the model's outputs; others get 0.5)."""
    recipe = outcome.recipe
    by_class, gate = operating_point(outcome.cases, recipe)
    text = (f"fitted on the pooled out-of-fold predictions, at most {recipe['fp_per_image']} false positives per "
            "image per class" + (f"; the image gate so that at most {recipe['normal_with_finding']:.0%} of "
                                 "normal images get a finding" if gate else ""))
    return ModelOperatingPoint([by_class.get(c, 0.5) for c in classes], gate, other_breast_point(outcome, classes),
                               text)


def other_breast_point(outcome: OutOfFold, classes: Sequence[str]) -> OtherBreastPoint:
    """The operating point for an image read against her other breast, fitted like the plain one
    on the pooled out-of-fold cases read that way; none (weight 0) when the data has no pairs."""
    adjusted = cases_against_other_breast(outcome.cases, outcome.breast_keys)
    if all(a is c for a, c in zip(adjusted, outcome.cases)):
        return OtherBreastPoint()
    by_class, gate = operating_point(adjusted, outcome.recipe)
    return OtherBreastPoint(weight=OTHER_BREAST_WEIGHT,
                            thresholds=[round(float(min(max(by_class.get(c, 1.0), -1.0), 1.0)), 6) for c in classes],
                            image_threshold=round(float(gate), 6))


def any_finding_summary(cases: Sequence[ImageCase], classes: Sequence[str], draws: int = 1000) -> Dict[str, Any]:
    """The class-agnostic FROC (:func:`~MammoPatchLib.evaluation.lesions.any_finding_case`)
    with its bootstrap intervals over women."""
    merged = [any_finding_case(c, classes) for c in cases]
    pooled = lesion_metrics(merged, [ANY_FINDING])
    return {"sensitivity_at_fp": pooled["all_classes_froc"], "score": pooled["score"],
            "intervals": bootstrap_intervals(merged, [ANY_FINDING], draws=draws), "curve": pooled["all_classes_curve"]}


def summarise(outcome: OutOfFold, draws: int = 1000) -> Dict[str, Any]:
    """Pooled and per-fold figures with bootstrap intervals (class-matched, and for any
    finding), and the nested image-level view."""
    classes = outcome.classes
    pooled = lesion_metrics(outcome.cases, classes)
    per_fold = []
    for fold in sorted(set(outcome.fold_of_image.values())):
        mine = [c for c in outcome.cases if outcome.fold_of_image[c.image_id] == fold]
        m = lesion_metrics(mine, classes)
        per_fold.append({"fold": fold, "images": m["images"], "lesions": m["lesions"],
                         "sensitivity_at_fp": m["all_classes_froc"], "image_auc": m["image_auc"]})
    return {"recipe": dict(outcome.recipe), "seconds": round(outcome.seconds, 1),
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


def compare_all(out_dir: Path, baseline: str, classes: Sequence[str], draws: int = 1000) -> Dict[str, Any]:
    """Every recipe in ``out_dir`` with its paired difference against ``baseline``, on the
    classes both report (``classes`` where a summary does not say): a recipe of one class is
    compared on that class alone."""
    outcomes = load_out_of_folds(out_dir)
    if baseline not in outcomes:
        raise MammoPatchError(f"baseline recipe {baseline!r} has no out-of-fold results here", out_dir)
    rows = {}
    for name, found in outcomes.items():
        row = dict(found["summary"])
        row.pop("curve", None)
        reported = [o["summary"].get("recipe", {}).get("classes", classes) for o in (found, outcomes[baseline])]
        judged = [c for c in reported[0] if c in reported[1]]
        if "any_finding" not in row:  # kept by a version before the class-agnostic view
            row["any_finding"] = any_finding_summary(found["cases"], classes, draws=draws)
        row["any_finding"].pop("curve", None)
        if name != baseline:
            row["paired_vs_baseline"] = paired_difference(outcomes[baseline]["cases"], found["cases"], judged,
                                                          draws=draws)
            row["paired_any_finding_vs_baseline"] = paired_difference(
                [any_finding_case(c, judged) for c in outcomes[baseline]["cases"]],
                [any_finding_case(c, judged) for c in found["cases"]], [ANY_FINDING], draws=draws)
        rows[name] = row
    return {"baseline": baseline, "recipes": rows,
            "curves": {n: o["summary"].get("curve", []) for n, o in outcomes.items()}}


def report_crossval(outcomes: Sequence[OutOfFold], out_dir, data: str, folds: int, baseline: Optional[str] = None,
                    classes: Sequence[str] = (), draws: int = 1000,
                    patch_tables: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Keep each outcome's cases and figures under ``out_dir/recipes/<name>/`` and write the
    report of every recipe ever run into ``out_dir`` (``crossval.json``, ``crossval.md``,
    ``froc.png``), each with its paired difference against ``baseline`` (default: the first
    outcome's recipe). ``patch_tables``: the poster's table of a recipe, by its name, from
    out-of-fold predictions (:func:`~.report.out_of_fold_patch_table`), kept with its figures.
    Returns the report."""
    out_dir = Path(out_dir)
    for outcome in outcomes:
        summary = summarise(outcome, draws=draws)
        if outcome.name in (patch_tables or {}):
            summary[POSTER_TABLE] = patch_tables[outcome.name]  # type: ignore[index]
        save_out_of_fold(outcome, summary, out_dir)
    kept = sorted(load_out_of_folds(out_dir))
    if not kept:
        raise MammoPatchError("no recipe has out-of-fold results here", out_dir)
    report = compare_all(out_dir, baseline or (outcomes[0].name if outcomes else kept[0]),
                         outcomes[0].classes if outcomes else list(classes), draws=draws)
    report["data"] = data
    report["folds"] = folds
    report["draws"] = draws
    with atomic_path(out_dir / REPORT_JSON) as tmp:
        tmp.write_text(json.dumps(report, indent=1, default=float), encoding="utf-8")
    write_crossval_report(report, out_dir / REPORT_MD)
    write_crossval_plot(report, out_dir / FROC_PLOT)
    return report
