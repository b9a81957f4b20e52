"""The model card of every model (Markdown): what it is, how it was trained, how well it detects.

One function, :func:`model_card`, writes it from the model file itself (its
:class:`~MammoPatchLib.model_file.ModelInfo` and :class:`~MammoPatchLib.model_file.Provenance`)
plus whichever figures exist: the pooled out-of-fold figures a cross-validated model carries
(``training.cross_validation``), and an ``evaluate`` report on women none of whom trained it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..model_file import ModelInfo, read_model_payload
from .crossval_report import ci, f2, other_breast_phrase, per_class_table, recipe_table
from .lesions import FP_RATES
from .numbers import fmt

MIAS_NOTICE = (
    "The MIAS MiniMammographic Database is for research use only. Any publication must cite "
    "J. Suckling et al. (1994), \"The Mammographic Image Analysis Society Digital Mammogram Database\", "
    "Excerpta Medica, International Congress Series 1069, pp. 375-378."
)

#: Where the bundled model's out-of-fold report lives in the repository.
BUNDLED_REPORT = "Resources/Models/training/crossval-report.md"


def model_card(model_path, evaluation: Optional[Dict[str, Any]] = None, command: str = "", *,
               crossval: Optional[Dict[str, Any]] = None,
               seconds_per_image: Optional[Dict[str, float]] = None) -> str:
    """The card of the model file at ``model_path``.

    Args:
        evaluation: an ``evaluate`` report (figures on data none of which trained the model).
        command: the command that made the model.
        crossval: the cross-validation report the model came from (its recipe table).
        seconds_per_image: measured inference time, by what was timed.
    """
    payload = read_model_payload(model_path)
    info = ModelInfo.from_dict(payload["info"])
    summary = info.training.get("cross_validation")
    lines = [f"# Model card: {Path(model_path).name}", "", provenance_line(info), ""]
    if summary:
        lines += _out_of_fold_section(summary, crossval or {})
    if evaluation:
        lines += _evaluation_section(evaluation, info)
    if not summary and not evaluation:
        lines += ["No out-of-fold or held-out figures are recorded for this model.", ""]
    lines += _what_it_is(info, payload["sha256"], seconds_per_image or {})
    lines += _how_it_was_trained(info, command)
    if crossval and len(crossval.get("recipes", {})) > 1:
        lines += ["## How it was chosen", "",
                  "Every recipe was cross-validated on the same folds; the paired columns give the bootstrap over "
                  f"women of the difference against the baseline recipe `{crossval.get('baseline', '')}`. Every "
                  "recipe tried is listed, losers included.", "", *recipe_table(crossval), ""]
    lines += ["## Data and licence", "", MIAS_NOTICE, "",
              "Method: Mellado et al., \"A Deep Learning Classifier Using Sliding Patches for Detection of "
              "Mammographical Findings\", Universidad de Valparaíso, 2023. Not a medical device.", ""]
    return "\n".join(lines)


def provenance_line(info: ModelInfo) -> str:
    """One sentence: which women trained the model, or that nobody recorded it."""
    made = info.provenance
    if made is None:
        return ("**Provenance unknown**: this model file does not record which women trained it, so figures on "
                "any data may include its own training women.")
    women = made.women
    split = (f"{len(made.members)} members, each trained on {min(map(len, made.members))}-"
             f"{max(map(len, made.members))} of them" if len(made.members) > 1 else "one head trained on all of them")
    folds = f"; women divided by {made.fold_file} (SHA-256 {made.fold_file_sha256[:12]}...)" if made.fold_file else ""
    return (f"**Provenance**: recipe `{made.recipe_name}`, trained on {len(made.images)} images of {len(women)} women "
            f"({split}; image ids SHA-256 {made.images_sha256[:12]}...) of {made.data}{folds}. `mammopatch evaluate` "
            "and `calibrate` refuse these women.")


def _out_of_fold_section(summary: Dict[str, Any], report: Dict[str, Any]) -> List[str]:
    """Pooled out-of-fold figures and intervals, then the image-level view at the nested
    operating points, the pairs reading and the per-class table."""
    sens, iv, op = summary["sensitivity_at_fp"], summary["intervals"], summary["operating"]
    folds = len(summary.get("per_fold", [])) or report.get("folds")
    return [
        "## How well it detects (pooled out-of-fold, cross-validation by woman)", "",
        f"{folds}-fold cross-validation over all {summary['women']} women ({summary['images']} images, "
        f"{summary['lesions']} lesions with coordinates): each fold's model was trained on the other folds' women "
        "and judged on its own; the figures pool every fold's out-of-fold predictions. 95 % intervals from the "
        "bootstrap over women. These are estimates for new women from the same source; on other data, expect them "
        f"to fall. Every recipe tried is in the cross-validation report (for the bundled model `{BUNDLED_REPORT}`).",
        "",
        "| FP / image | " + " | ".join(str(r) for r in FP_RATES) + " |",
        "|---|" + "---|" * len(FP_RATES),
        "| sensitivity, class judged | " + " | ".join(f2(sens.get(str(r))) for r in FP_RATES) + " |",
        "| 95 % CI | " + " | ".join(ci(iv.get(f"sens@{r}")).strip(" ()") for r in FP_RATES) + " |",
        *_any_finding_rows(summary), "",
        f"Image level (abnormal vs normal): ROC AUC {f2(summary['image_auc'], 3)}{ci(iv.get('image_auc'))}"
        + (f"; with each image's score read against the same view of her other breast (minus "
           f"{summary['other_breast']['weight']} x its score; `image_scores.csv` of a batch): "
           f"{other_breast_phrase(summary['other_breast'])} against the plain score"
           if summary.get("other_breast") else "") + ". "
        f"Per fold at 1 FP/image: {', '.join(f2(f['sensitivity_at_fp'].get('1')) for f in summary['per_fold'])}.", "",
        "What a user sees at the default thresholds (thresholds fitted, for each fold, on the other folds' "
        f"out-of-fold predictions): {f2(100 * op['abnormal_with_finding'], 0)} %{_pct_ci(op, 'abnormal_with_finding')} "
        f"of abnormal images get a finding, {f2(100 * op['normal_without_finding'], 0)} %"
        f"{_pct_ci(op, 'normal_without_finding')} of normal images get none; {f2(op['false_findings_per_image'])} "
        f"false findings per image; {f2(100 * op['lesions_hit'], 0)} % of lesions are hit by a finding.", "",
        *_pairs_paragraph(summary.get("other_breast")),
        "Per class (pooled out-of-fold; a class's false positives per image count only that class's findings, so "
        "each row sits above the all-classes row, where every class's false findings count together):", "",
        *per_class_table(summary), ""]


def _evaluation_section(report: Dict[str, Any], info: ModelInfo) -> List[str]:
    """``evaluate``'s figures: lesion and image level, and the poster's patch table."""
    lesion, patch, image = report["lesion_level"], report["patch_level"], report["image_level"]
    intervals = lesion.get("intervals", {})
    data = report["data"]
    whose = ("none of whom trained it" if info.provenance is not None
             else "of unknown relation to its training women (provenance unknown)")
    lines = [
        f"## Evaluation on {data['images']} images of {data['women']} women {whose}", "",
        f"Data: {data['source']}{_split_phrase(data)}. Sliding-window mode: {report['mode']}"
        f"{', flip TTA' if report.get('flip_tta') else ''}.", "",
        "Lesion level (all reported classes, a hit needs the right class; peak inside the true box or IoU >= 0.1):", "",
        "| FP / image | " + " | ".join(str(r) for r in FP_RATES) + " |", "|---|" + "---|" * len(FP_RATES),
        "| sensitivity | " + " | ".join(fmt(lesion["all_classes_froc"][str(r)]) for r in FP_RATES) + " |",
        "| 95 % CI | " + " | ".join(
            f"{fmt(intervals[f'sens@{r}'][0])}-{fmt(intervals[f'sens@{r}'][1])}" if f"sens@{r}" in intervals else "n/a"
            for r in FP_RATES) + " |", "",
        f"Lesions: {lesion.get('lesions', 'n/a')}. Per class at 1 FP/image: " + ", ".join(
            f"{name} {fmt(v['froc']['1'])} (n={v['lesions']})" for name, v in lesion["per_class"].items()) + ".", "",
        f"Image level (abnormal vs normal, heatmap maximum): ROC AUC {fmt(image['auc_abnormal_vs_normal'])}"
        + (f" (95 % CI {fmt(image['interval'][0])}-{fmt(image['interval'][1])})" if image.get("interval") else "")
        + f" ({image['abnormal']} abnormal, {image['normal']} normal images).", "",
        "Patch level (the poster's table, fixed patches of these women):", "",
        "| class | accuracy | precision | recall | F1 | support | ROC AUC |", "|---|---|---|---|---|---|---|"]
    for name, m in patch["per_class"].items():
        if m["support"] or name == "No Finding":
            lines.append(f"| {name} | {fmt(m['accuracy'])} | {fmt(m['precision'])} | {fmt(m['recall'])} | "
                         f"{fmt(m['f1'])} | {m['support']} | {fmt(m['auc'])} |")
    return lines + ["", f"Weighted F1: {fmt(patch['weighted_f1'])} with No Finding, "
                        f"{fmt(patch['weighted_f1_without_no_finding'])} without; ECE "
                        f"{fmt(patch['calibration']['ece'])}.", ""]


def _split_phrase(data: Dict[str, Any]) -> str:
    return f", split `{data['split']}`" if data.get("split") else ""


def head_phrase(info: ModelInfo) -> str:
    """What the head is: the poster's window head, or a cell head with its block of cells."""
    if info.head == "window":
        return (f"the poster's window head ({info.head_pooling} pooling of the window's feature cells, an MLP of "
                f"{info.hidden} hidden units as 1 x 1 convolutions)")
    return (f"a cell head: every 32 px cell scored from its {info.neighbourhood} x {info.neighbourhood} block of cells "
            f"(a {info.bottleneck}-component bottleneck, then an MLP of {info.hidden} hidden units as convolutions)")


def tuned_phrase(info: ModelInfo) -> str:
    """What training changed in the backbone."""
    if info.tuned_stages:
        if info.tuned_stages == 1:
            return "trunk frozen, its last stage fine-tuned with each head"
        return f"frozen up to its last {info.tuned_stages} stages, those fine-tuned with each head"
    if info.training.get("trains") == "network":  # mammopatch train of a trains "network" recipe
        return "trained end to end"
    return "frozen"


def ensemble_phrase(heads: int, seeds: int = 1) -> str:
    """How the card and the model's description name what the model file averages."""
    if heads == 1:
        return "one head"
    per = f" ({heads // seeds} folds x {seeds} seeds)" if seeds > 1 else ""
    return f"an ensemble of the {heads} fold models{per} (probabilities averaged over one backbone)"


def fine_phrase(info: ModelInfo) -> str:
    """The finer head, as the card and the model's description name it ("" without one)."""
    fine = info.fine_head
    if not fine:
        return ""
    heads = int(fine.get("ensemble", 1))
    weight = float(fine.get("weight", 1.0))
    how = "from" if weight == 1.0 else f"{weight:.2g} of the probability from"
    return (f"; {', '.join(fine['classes'])} {how} a second head on 16 px cells (the stride-16 features beside the "
            f"frozen output, {fine.get('neighbourhood', 3)} x {fine.get('neighbourhood', 3)} cells, "
            f"{heads} head{'s' if heads > 1 else ''} averaged)")


def _what_it_is(info: ModelInfo, sha256: str, seconds: Dict[str, float]) -> List[str]:
    recipe = info.provenance.recipe if info.provenance else {}
    reported = info.reported_classes
    thresholds = ", ".join(f"{c} {t:.2f}" for c, t in zip(info.classes, info.thresholds) if c in reported)
    gate = info.inference.detection.image_threshold
    fitted = info.training.get("thresholds") if isinstance(info.training.get("thresholds"), str) else ""
    lines = [
        "## What it is", "",
        f"- **Network**: {info.backbone} (ImageNet weights, {tuned_phrase(info)}) + {head_phrase(info)}; "
        f"{ensemble_phrase(info.ensemble, int(recipe.get('seeds', 1)))}{fine_phrase(info)}.",
        f"- **Input**: {info.window} px windows at {info.spacing_mm} mm, stride {info.stride} px; images are resampled "
        "to that spacing.",
        f"- **Reported classes**: {', '.join(reported)}; the other outputs are untrained and never reported unless "
        "asked for.",
        f"- **Thresholds**: {thresholds}" + (f"; {fitted}" if fitted else "") + "."
        + (f" Image gate {gate:.3f}: an image whose highest heatmap value stays below it gets no findings." if gate
           else ""),
        f"- **Inference defaults**: flip test-time augmentation {info.inference.flip_tta}.",
        f"- **Weights**: SHA-256 `{sha256}`; MammoPatch {info.library_version}."]
    if seconds:
        lines.append("- **Seconds per image** (CPU, fast mode, model loaded): "
                     + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()) + ".")
    return lines + [""]


def _how_it_was_trained(info: ModelInfo, command: str) -> List[str]:
    made = info.provenance
    recipe = made.recipe if made else {}
    lines = ["## How it was trained", ""]
    if made is not None:
        lines += [f"Data: {made.data}; {len(made.images)} training images (SHA-256 of their ids "
                  f"`{made.images_sha256}`); fold file {made.fold_file or 'none'}"
                  + (f" (SHA-256 `{made.fold_file_sha256}`)" if made.fold_file_sha256 else "") + "; "
                  + (f"operating points chosen on {len(made.selected_on)} women's predictions"
                     + (" (out of fold)" if len(made.members) > 1 else "") if made.selected_on
                     else "operating points not fitted on any woman's predictions") + ".", ""]
    if command:
        lines += ["```bash", command, "```", ""]
    if recipe:
        lines += [f"Recipe `{made.recipe_name if made else 'config'}`:", "", "```json",
                  json.dumps(recipe, indent=1), "```", ""]
    return lines


def _any_finding_rows(summary: Dict[str, Any]) -> List[str]:
    """The class-agnostic rows of the card's FROC table (a finding of any class on a lesion)."""
    anywhere = summary.get("any_finding")
    if not anywhere:
        return []
    sens, iv = anywhere["sensitivity_at_fp"], anywhere["intervals"]
    return ["| any finding, class not judged | " + " | ".join(f2(sens.get(str(r))) for r in FP_RATES) + " |",
            "| 95 % CI | " + " | ".join(ci(iv.get(f"sens@{r}")).strip(" ()") for r in FP_RATES) + " |"]


def _pct_ci(view: Dict[str, Any], key: str) -> str:
    interval = view.get("intervals", {}).get(key)
    return f" ({f2(100 * interval[0], 0)}-{f2(100 * interval[1], 0)} %)" if interval else ""


def _pairs_paragraph(view: Optional[Dict[str, Any]]) -> List[str]:
    """The paragraph on both breasts of a view read together (a batch that holds them)."""
    findings = (view or {}).get("findings")
    if not findings:
        return []
    sens, iv, op = findings["sensitivity_at_fp"], findings["intervals"], findings["operating"]
    p = findings["paired_vs_plain"]["sens@1"]
    return [f"Both breasts of a view read together (a batch that holds both DICOM files of a study's view: each "
            f"finding's score minus {view['weight']} x the highest value of its class in the other breast, the image "
            f"score likewise; the model's operating point for pairs): sensitivity at 0.25/0.5/1/2/4 FP/image "
            + "/".join(f2(sens.get(str(r))) for r in FP_RATES) + f", at 1 FP/image {f2(sens.get('1'))}"
            f"{ci(iv.get('sens@1'))}, paired against the single-image reading {p['difference']:+.3f} "
            f"({f2(p['low'], 3)} to {f2(p['high'], 3)}){_pairs_any_finding(findings.get('any_finding'))}; at that "
            f"operating point (nested) "
            f"{f2(100 * op['abnormal_with_finding'], 0)} %{_pct_ci(op, 'abnormal_with_finding')} of abnormal images "
            f"get a finding, {f2(100 * op['normal_without_finding'], 0)} %{_pct_ci(op, 'normal_without_finding')} of "
            f"normal images get none, {f2(op['false_findings_per_image'])} false findings per image.", ""]


def _pairs_any_finding(anywhere: Optional[Dict[str, Any]]) -> str:
    if not anywhere:
        return ""
    p = anywhere["paired_vs_plain"]
    return (f"; any finding at 1 FP/image {f2(anywhere['sensitivity_at_fp'].get('1'))}"
            f"{ci(anywhere['intervals'].get('sens@1'))}, paired {p['difference']:+.3f} ({f2(p['low'], 3)} to "
            f"{f2(p['high'], 3)})")


def seconds_per_image(model_path, record, repeats: int = 2) -> Dict[str, float]:
    """Fast-mode seconds per image on the CPU (model loaded, best of ``repeats``) for the card:
    the model file, and its first member alone for comparison when the file holds an ensemble."""
    import time
    from dataclasses import replace

    from ..inference import Predictor
    from ..io import read_mammogram
    from ..model_file import LoadedModel, build_network, load_model

    if record is None:
        return {}
    image = read_mammogram(record.path, spacing_mm=record.spacing_mm)
    model = load_model(model_path)
    candidates = {"this model": model}
    if model.info.ensemble > 1:
        info = replace(model.info, ensemble=1, provenance=None)
        network = build_network(info, pretrained=False).eval()
        state = {k: v for k, v in model.network.state_dict().items() if not k.startswith("head.")}
        state.update({f"head.{k}": v for k, v in model.network.head.members[0].state_dict().items()})
        network.load_state_dict(state)
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


def write_model_card(model_path, evaluation: Optional[Dict[str, Any]] = None, command: str = "", *,
                     crossval: Optional[Dict[str, Any]] = None, timed_record=None, out_path=None) -> Path:
    """Write :func:`model_card` atomically beside the model (``.md``) or at ``out_path``;
    ``timed_record``: an image to time the model on."""
    from ..io.atomic import atomic_path

    seconds = seconds_per_image(model_path, timed_record) if timed_record is not None else None
    out_path = Path(out_path) if out_path else Path(model_path).with_suffix(".md")
    with atomic_path(out_path) as tmp:
        tmp.write_text(model_card(model_path, evaluation, command, crossval=crossval, seconds_per_image=seconds),
                       encoding="utf-8")
    return out_path
