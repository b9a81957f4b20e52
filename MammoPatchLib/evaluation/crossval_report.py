"""The cross-validation report: every recipe's pooled out-of-fold figures with intervals,
its folds beside them, the paired difference against the baseline, and the FROC plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..io.atomic import atomic_path
from .lesions import FP_RATES
from .metrics import poster_table_lines

#: A recipe's figures' key for the poster's patch table from its out-of-fold predictions.
POSTER_TABLE = "poster_table"


def f2(value: Any, digits: int = 2) -> str:
    """A figure of the cross-validation report and the model card: two digits, "-" where undefined."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def ci(interval) -> str:
    """" (low-high)" of a 95 % interval, or nothing."""
    if not interval:
        return ""
    return f" ({f2(interval[0])}-{f2(interval[1])})"


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
            vs_sens = f"{p['difference']:+.2f} ({f2(p['low'])} to {f2(p['high'])})"
            vs_auc = f"{a['difference']:+.3f} ({f2(a['low'], 3)} to {f2(a['high'], 3)})"
            q = row.get("paired_any_finding_vs_baseline", {}).get("sens@1")
            vs_any = f"{q['difference']:+.2f} ({f2(q['low'])} to {f2(q['high'])})" if q else "-"
        anywhere = row.get("any_finding", {})
        any_sens = anywhere.get("sensitivity_at_fp", {})
        folds = ", ".join(f2(f["sensitivity_at_fp"].get("1")) for f in row["per_fold"])
        op = row["operating"]
        lines.append(f"| {name} | {f2(sens.get('1'))}{ci(iv.get('sens@1'))} | {f2(sens.get('4'))} | "
                     f"{f2(any_sens.get('1'))}{ci(anywhere.get('intervals', {}).get('sens@1'))} | "
                     f"{f2(row['image_auc'], 3)}{ci(iv.get('image_auc'))} | {vs_sens} | {vs_any} | {vs_auc} | {folds} | "
                     f"{f2(op['abnormal_with_finding'])} | {f2(op['normal_without_finding'])} | "
                     f"{other_breast_phrase(row.get('other_breast'))} | "
                     f"{findings_vs_other_breast_phrase(row.get('other_breast'))} |")
    return lines


def other_breast_phrase(view: Optional[Dict[str, Any]]) -> str:
    """"AUC (CI), paired +d (lo to hi)" of the image score read against the other breast."""
    if not view:
        return "-"
    p = view["paired_vs_own_score"]
    return (f"{f2(view['image_auc'], 3)}{ci(view['interval'])}, paired {p['difference']:+.3f} "
            f"({f2(p['low'], 3)} to {f2(p['high'], 3)})")


def findings_vs_other_breast_phrase(view: Optional[Dict[str, Any]]) -> str:
    """"sens@1 (CI), paired +d (lo to hi); abnormal / normal" with every finding read against the
    same class in the other breast, at nested operating points fitted on those relative scores."""
    findings = (view or {}).get("findings")
    if not findings:
        return "-"
    p, op = findings["paired_vs_plain"]["sens@1"], findings["operating"]
    return (f"{f2(findings['sensitivity_at_fp'].get('1'))}{ci(findings['intervals'].get('sens@1'))}, paired "
            f"{p['difference']:+.3f} ({f2(p['low'], 3)} to {f2(p['high'], 3)}); "
            f"{f2(op['abnormal_with_finding'])} / {f2(op['normal_without_finding'])}")


def per_class_table(row: Dict[str, Any]) -> List[str]:
    lines = ["| class | lesions | " + " | ".join(f"{r} FP" for r in FP_RATES) + " |",
             "|---|---|" + "---|" * len(FP_RATES)]
    for name, values in row["per_class"].items():
        lines.append(f"| {name} | {values['lesions']} | " + " | ".join(
            f2(values["sensitivity_at_fp"].get(str(r))) for r in FP_RATES) + " |")
    lines.append(f"| all classes | {row['lesions']} | " + " | ".join(
        f2(row["sensitivity_at_fp"].get(str(r))) for r in FP_RATES) + " |")
    if "any_finding" in row:
        lines.append(f"| any finding (class not judged) | {row['lesions']} | " + " | ".join(
            f2(row["any_finding"]["sensitivity_at_fp"].get(str(r))) for r in FP_RATES) + " |")
    return lines


def poster_section(row: Dict[str, Any]) -> List[str]:
    """The poster's patch table of a window-head recipe, from its out-of-fold predictions."""
    if POSTER_TABLE not in row:
        return []
    return ["### The poster's table (patches, out of fold)", "",
            "Patches drawn as the poster draws them (4 around each lesion: area 0.05-5 x its box, aspect 0.33-1.66 "
            "x, centre within 5 mm; 2 from the breast of each image; each resized to 256 px), each image's patches "
            "scored by the heads of her own fold, which never saw her; a class is predicted at probability >= 0.5.",
            "", *poster_table_lines(row[POSTER_TABLE]), ""]


def write_crossval_report(report: Dict[str, Any], path: Path) -> None:
    baseline = report["baseline"]
    lines = [f"# Cross-validation by woman ({report.get('folds')} folds)", "",
             f"Data: {report.get('data', '')}. Pooled out-of-fold figures over every lesion with coordinates; "
             f"95 % intervals from {report.get('draws', 1000):,} bootstrap draws of women; "
             "the paired column is the bootstrap over women "
             f"of the difference against the baseline recipe `{baseline}` on the same folds. A hit needs the right "
             "class, except in the any-finding columns, where a finding of any class on a lesion finds it and "
             "findings of several classes at one place count once. The image-level "
             "columns use operating thresholds fitted, for each fold, on the other folds' out-of-fold predictions.",
             "", *recipe_table(report), ""]
    for name, row in report["recipes"].items():
        lines += [f"## {name}", "", f"{row['images']} images of {row['women']} women, {row['lesions']} lesions; "
                  f"{row['seconds']} s for all folds.", "", *per_class_table(row), "", *poster_section(row)]
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
