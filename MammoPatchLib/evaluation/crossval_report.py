"""The cross-validation report: every recipe's pooled out-of-fold figures with intervals,
its folds beside them, the paired difference against the baseline, and the FROC plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..io.atomic import atomic_path
from .lesions import FP_RATES


def _f(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _ci(interval) -> str:
    if not interval:
        return ""
    return f" ({_f(interval[0])}-{_f(interval[1])})"


def recipe_table(report: Dict[str, Any]) -> List[str]:
    """One row per recipe: pooled sensitivity at 1 and 4 FP/image and AUC with intervals,
    the paired difference at 1 FP/image and in AUC, and the five folds at 1 FP/image."""
    lines = ["| recipe | sens@1 FP (95 % CI) | sens@4 FP | any finding: sens@1 FP (95 % CI) | image AUC (95 % CI) | "
             "vs baseline: sens@1 | vs baseline: any finding @1 | vs baseline: AUC | folds at 1 FP | "
             "abnormal with finding | normal without | image AUC vs other breast (95 % CI) | "
             "findings vs other breast: sens@1 FP (95 % CI), paired; abnormal with finding / normal without |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in report["recipes"].items():
        sens, iv = row["sensitivity_at_fp"], row["intervals"]
        paired = row.get("paired_vs_baseline")
        vs_sens = vs_any = vs_auc = "baseline"
        if paired:
            p, a = paired["sens@1"], paired["image_auc"]
            vs_sens = f"{p['difference']:+.2f} ({_f(p['low'])} to {_f(p['high'])})"
            vs_auc = f"{a['difference']:+.3f} ({_f(a['low'], 3)} to {_f(a['high'], 3)})"
            q = row.get("paired_any_finding_vs_baseline", {}).get("sens@1")
            vs_any = f"{q['difference']:+.2f} ({_f(q['low'])} to {_f(q['high'])})" if q else "-"
        anywhere = row.get("any_finding", {})
        any_sens = anywhere.get("sensitivity_at_fp", {})
        folds = ", ".join(_f(f["sensitivity_at_fp"].get("1")) for f in row["per_fold"])
        op = row["operating"]
        lines.append(f"| {name} | {_f(sens.get('1'))}{_ci(iv.get('sens@1'))} | {_f(sens.get('4'))} | "
                     f"{_f(any_sens.get('1'))}{_ci(anywhere.get('intervals', {}).get('sens@1'))} | "
                     f"{_f(row['image_auc'], 3)}{_ci(iv.get('image_auc'))} | {vs_sens} | {vs_any} | {vs_auc} | {folds} | "
                     f"{_f(op['abnormal_with_finding'])} | {_f(op['normal_without_finding'])} | "
                     f"{other_breast_phrase(row.get('other_breast'))} | "
                     f"{findings_vs_other_breast_phrase(row.get('other_breast'))} |")
    return lines


def other_breast_phrase(view: Optional[Dict[str, Any]]) -> str:
    """"AUC (CI), paired +d (lo to hi)" of the image score read against the other breast."""
    if not view:
        return "-"
    p = view["paired_vs_own_score"]
    return (f"{_f(view['image_auc'], 3)}{_ci(view['interval'])}, paired {p['difference']:+.3f} "
            f"({_f(p['low'], 3)} to {_f(p['high'], 3)})")


def findings_vs_other_breast_phrase(view: Optional[Dict[str, Any]]) -> str:
    """"sens@1 (CI), paired +d (lo to hi); abnormal / normal" with every finding read against the
    same class in the other breast, at nested operating points fitted on those relative scores."""
    findings = (view or {}).get("findings")
    if not findings:
        return "-"
    p, op = findings["paired_vs_plain"]["sens@1"], findings["operating"]
    return (f"{_f(findings['sensitivity_at_fp'].get('1'))}{_ci(findings['intervals'].get('sens@1'))}, paired "
            f"{p['difference']:+.3f} ({_f(p['low'], 3)} to {_f(p['high'], 3)}); "
            f"{_f(op['abnormal_with_finding'])} / {_f(op['normal_without_finding'])}")


def _pairs_paragraph(view: Optional[Dict[str, Any]]) -> List[str]:
    """The card's paragraph on both breasts of a view read together (a batch that holds them)."""
    findings = (view or {}).get("findings")
    if not findings:
        return []
    sens, iv, op = findings["sensitivity_at_fp"], findings["intervals"], findings["operating"]
    p = findings["paired_vs_plain"]["sens@1"]
    return [f"Both breasts of a view read together (a batch that holds both DICOM files of a study's view: each "
            f"finding's score minus {view['weight']} x the highest value of its class in the other breast, the image "
            f"score likewise; the model's operating point for pairs): sensitivity at 0.25/0.5/1/2/4 FP/image "
            + "/".join(_f(sens.get(str(r))) for r in FP_RATES) + f", at 1 FP/image {_f(sens.get('1'))}"
            f"{_ci(iv.get('sens@1'))}, paired against the single-image reading {p['difference']:+.3f} "
            f"({_f(p['low'], 3)} to {_f(p['high'], 3)}){_pairs_any_finding(findings.get('any_finding'))}; at that "
            f"operating point (nested) "
            f"{_f(100 * op['abnormal_with_finding'], 0)} %{_pct_ci(op, 'abnormal_with_finding')} of abnormal images "
            f"get a finding, {_f(100 * op['normal_without_finding'], 0)} %{_pct_ci(op, 'normal_without_finding')} of "
            f"normal images get none, {_f(op['false_findings_per_image'])} false findings per image.", ""]


def _pairs_any_finding(anywhere: Optional[Dict[str, Any]]) -> str:
    if not anywhere:
        return ""
    p = anywhere["paired_vs_plain"]
    return (f"; any finding at 1 FP/image {_f(anywhere['sensitivity_at_fp'].get('1'))}"
            f"{_ci(anywhere['intervals'].get('sens@1'))}, paired {p['difference']:+.3f} ({_f(p['low'], 3)} to "
            f"{_f(p['high'], 3)})")


def per_class_table(row: Dict[str, Any]) -> List[str]:
    lines = ["| class | lesions | " + " | ".join(f"{r} FP" for r in FP_RATES) + " |",
             "|---|---|" + "---|" * len(FP_RATES)]
    for name, values in row["per_class"].items():
        lines.append(f"| {name} | {values['lesions']} | " + " | ".join(
            _f(values["sensitivity_at_fp"].get(str(r))) for r in FP_RATES) + " |")
    lines.append(f"| all classes | {row['lesions']} | " + " | ".join(
        _f(row["sensitivity_at_fp"].get(str(r))) for r in FP_RATES) + " |")
    if "any_finding" in row:
        lines.append(f"| any finding (class not judged) | {row['lesions']} | " + " | ".join(
            _f(row["any_finding"]["sensitivity_at_fp"].get(str(r))) for r in FP_RATES) + " |")
    return lines


def write_crossval_report(report: Dict[str, Any], path: Path) -> None:
    baseline = report["baseline"]
    lines = [f"# Cross-validation by woman ({report.get('folds')} folds)", "",
             f"Data: {report.get('data', '')}. Pooled out-of-fold figures over every lesion with coordinates; "
             "95 % intervals from 1,000 bootstrap draws of women; the paired column is the bootstrap over women "
             f"of the difference against the baseline recipe `{baseline}` on the same folds. A hit needs the right "
             "class, except in the any-finding columns, where a finding of any class on a lesion finds it and "
             "findings of several classes at one place count once. The image-level "
             "columns use operating thresholds fitted, for each fold, on the other folds' out-of-fold predictions.",
             "", *recipe_table(report), ""]
    for name, row in report["recipes"].items():
        lines += [f"## {name}", "", f"{row['images']} images of {row['women']} women, {row['lesions']} lesions; "
                  f"{row['seconds']} s for all folds.", "", *per_class_table(row), ""]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_crossval_plot(report: Dict[str, Any], path: Path) -> None:
    """Pooled out-of-fold FROC curves of every recipe (log FP axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for name, curve in report["curves"].items():
        if curve:
            fps, sens = zip(*curve)
            ax.step([max(f, 1e-2) for f in fps], sens, where="post", label=name)
    ax.set_xscale("log")
    ax.set_xlim(0.1, 8)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("lesion sensitivity")
    ax.set_title("Pooled out-of-fold FROC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def backbone_phrase(tuned_tail: bool) -> str:
    """How the card and the model's description say what training did to the backbone."""
    return "trunk frozen, its last stage fine-tuned with each head" if tuned_tail else "frozen"


def ensemble_phrase(heads: int, seeds: int, bundle: str) -> str:
    """How the card and the model's description name what the model file averages."""
    if bundle == "single":
        return "one head trained on every woman" if heads == 1 else f"{heads} heads trained on every woman from different seeds, probabilities averaged"
    per = f" ({heads // seeds} folds x {seeds} seeds)" if seeds > 1 else ""
    return f"an ensemble of the {heads} fold models{per} (probabilities averaged over one backbone)"


def _any_finding_rows(summary: Dict[str, Any]) -> List[str]:
    """The class-agnostic rows of the card's FROC table (a finding of any class on a lesion)."""
    anywhere = summary.get("any_finding")
    if not anywhere:
        return []
    sens, iv = anywhere["sensitivity_at_fp"], anywhere["intervals"]
    return ["| any finding, class not judged | " + " | ".join(_f(sens.get(str(r))) for r in FP_RATES) + " |",
            "| 95 % CI | " + " | ".join(_ci(iv.get(f"sens@{r}")).strip(" ()") for r in FP_RATES) + " |"]


def _pct_ci(view: Dict[str, Any], key: str) -> str:
    interval = view.get("intervals", {}).get(key)
    return f" ({_f(100 * interval[0], 0)}-{_f(100 * interval[1], 0)} %)" if interval else ""


def _gate_phrase(info: Dict[str, Any], recipe: Dict[str, Any]) -> str:
    gate = info["inference"].get("detection", {}).get("image_threshold", 0.0)
    if not gate:
        return ""
    return (f" Image gate {gate:.3f}: an image whose highest heatmap value stays below it gets no findings, so that "
            f"at most {100 * recipe['normal_with_finding']:.0f} % of the pooled out-of-fold normal images get one.")


def model_card(info: Dict[str, Any], summary: Dict[str, Any], report: Dict[str, Any], command: str,
               seconds_per_image: Dict[str, float], sha256: str) -> str:
    """The bundled model's card: pooled out-of-fold figures and intervals first, then the
    image-level view at the default thresholds, the recipe table and how to rebuild it."""
    recipe = summary["recipe"]
    sens, iv = summary["sensitivity_at_fp"], summary["intervals"]
    op = summary["operating"]
    thresholds = ", ".join(f"{c} {t:.2f}" for c, t in zip(info["classes"], info["thresholds"])
                           if c in info["inference"]["report_classes"])
    heads = info.get("ensemble", 1)
    lines = [
        "# Model card: mammopatch-default.pt", "",
        "## How well it detects (pooled out-of-fold, cross-validation by woman)", "",
        f"{report.get('folds')}-fold cross-validation over all {summary['women']} women ({summary['images']} images, "
        f"{summary['lesions']} lesions with coordinates) of mini-MIAS: each fold's model was trained on the other "
        "folds' women and judged on its own; the figures pool every fold's out-of-fold predictions. 95 % intervals "
        "from the bootstrap over women. These are estimates for new women from the same source (scanned film, "
        "200 um); on other data, expect them to fall.", "",
        "| FP / image | " + " | ".join(str(r) for r in FP_RATES) + " |",
        "|---|" + "---|" * len(FP_RATES),
        "| sensitivity, class judged | " + " | ".join(_f(sens.get(str(r))) for r in FP_RATES) + " |",
        "| 95 % CI | " + " | ".join(_ci(iv.get(f"sens@{r}")).strip(" ()") for r in FP_RATES) + " |",
        *_any_finding_rows(summary), "",
        f"Image level (abnormal vs normal): ROC AUC {_f(summary['image_auc'], 3)}{_ci(iv.get('image_auc'))}"
        + (f"; with each image's score read against the same view of her other breast (minus "
           f"{summary['other_breast']['weight']} x its score; `image_scores.csv` of a batch): "
           f"{other_breast_phrase(summary['other_breast'])} against the plain score"
           if summary.get("other_breast") else "") + ". "
        f"Per fold at 1 FP/image: {', '.join(_f(f['sensitivity_at_fp'].get('1')) for f in summary['per_fold'])}.", "",
        "What a user sees at the default thresholds (thresholds fitted, for each fold, on the other folds' "
        f"out-of-fold predictions): {_f(100 * op['abnormal_with_finding'], 0)} %{_pct_ci(op, 'abnormal_with_finding')} "
        "of abnormal images get a finding, "
        f"{_f(100 * op['normal_without_finding'], 0)} %{_pct_ci(op, 'normal_without_finding')} of normal images get "
        "none; "
        f"{_f(op['false_findings_per_image'])} false findings per image; {_f(100 * op['lesions_hit'], 0)} % of "
        "lesions are hit by a finding.", "",
        *_pairs_paragraph(summary.get("other_breast")),
        "Per class (pooled out-of-fold; a class's false positives per image count only that class's findings, so "
        "each row sits above the all-classes row, where every class's false findings count together):", "",
        *per_class_table(summary), "",
        "## What it is", "",
        f"- **Network**: {info['backbone']} (ImageNet weights, {backbone_phrase(info.get('tuned_tail', False))}) + {'the poster' + chr(39) + 's window head' if info['head'] == 'window' else 'a cell head: every 32 px cell scored from its %d x %d block of cells (a %d-component bottleneck, then an MLP of %d hidden units as convolutions)' % (info['neighbourhood'], info['neighbourhood'], info['bottleneck'], info['hidden'])}; "
        f"{ensemble_phrase(heads, recipe.get('seeds', 1), recipe.get('bundle', 'ensemble'))}.",
        f"- **Input**: {info['window']} px windows at {info['spacing_mm']} mm, stride {info['stride']} px; images are "
        "resampled to that spacing.",
        f"- **Reported classes**: {', '.join(info['inference']['report_classes'])}; the other VinDr outputs are "
        "untrained and never reported unless asked for.",
        f"- **Thresholds** (at most {recipe['fp_per_image']} false positives per image per class on the pooled "
        f"out-of-fold predictions): {thresholds}." + _gate_phrase(info, recipe),
        f"- **Inference defaults**: flip test-time augmentation {info['inference']['flip_tta']}.",
        "- **Seconds per image** (2-core CPU, fast mode, 1024 x 1024 mini-MIAS image, model loaded): "
        + ", ".join(f"{k} {v:.2f} s" for k, v in seconds_per_image.items()) + ".",
        f"- **Weights**: SHA-256 `{sha256}`.", "",
        "## How it was chosen", "",
        "Every recipe was cross-validated on the same folds (women dealt into folds by class with seed 0; the "
        "bundled model's are `Resources/Models/training/mini-mias-folds.csv`); the paired columns give the "
        f"bootstrap over women of the difference against the baseline recipe `{report.get('baseline', '')}`. "
        "Every recipe tried is listed, losers included; each is a file under `Resources/Models/training/`.", "",
        *recipe_table(report), "",
        "## Rebuild", "", "```bash", command, "```", "",
        "## Data and licence", "",
        "Trained on the mini-MIAS database (J. Suckling et al. (1994), \"The Mammographic Image Analysis Society "
        "Digital Mammogram Database\", Excerpta Medica, International Congress Series 1069, pp. 375-378); research "
        "use only. Not a medical device.", ""]
    return "\n".join(lines)
