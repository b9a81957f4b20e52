"""The cross-validation report: every recipe's pooled out-of-fold figures with intervals,
its folds beside them, the paired difference against the baseline, and the FROC plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List

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
    lines = ["| recipe | sens@1 FP (95 % CI) | sens@4 FP | image AUC (95 % CI) | vs baseline: sens@1 | "
             "vs baseline: AUC | folds at 1 FP | abnormal with finding | normal without |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in report["recipes"].items():
        sens, iv = row["sensitivity_at_fp"], row["intervals"]
        paired = row.get("paired_vs_baseline")
        vs_sens = vs_auc = "baseline"
        if paired:
            p, a = paired["sens@1"], paired["image_auc"]
            vs_sens = f"{p['difference']:+.2f} ({_f(p['low'])} to {_f(p['high'])})"
            vs_auc = f"{a['difference']:+.3f} ({_f(a['low'], 3)} to {_f(a['high'], 3)})"
        folds = ", ".join(_f(f["sensitivity_at_fp"].get("1")) for f in row["per_fold"])
        op = row["operating"]
        lines.append(f"| {name} | {_f(sens.get('1'))}{_ci(iv.get('sens@1'))} | {_f(sens.get('4'))} | "
                     f"{_f(row['image_auc'], 3)}{_ci(iv.get('image_auc'))} | {vs_sens} | {vs_auc} | {folds} | "
                     f"{_f(op['abnormal_with_finding'])} | {_f(op['normal_without_finding'])} |")
    return lines


def per_class_table(row: Dict[str, Any]) -> List[str]:
    lines = ["| class | lesions | " + " | ".join(f"{r} FP" for r in FP_RATES) + " |",
             "|---|---|" + "---|" * len(FP_RATES)]
    for name, values in row["per_class"].items():
        lines.append(f"| {name} | {values['lesions']} | " + " | ".join(
            _f(values["sensitivity_at_fp"].get(str(r))) for r in FP_RATES) + " |")
    lines.append(f"| all classes | {row['lesions']} | " + " | ".join(
        _f(row["sensitivity_at_fp"].get(str(r))) for r in FP_RATES) + " |")
    return lines


def write_crossval_report(report: Dict[str, Any], path: Path) -> None:
    baseline = report["baseline"]
    lines = [f"# Cross-validation by woman ({report.get('folds')} folds)", "",
             f"Data: {report.get('data', '')}. Pooled out-of-fold figures over every lesion with coordinates; "
             "95 % intervals from 1,000 bootstrap draws of women; the paired column is the bootstrap over women "
             f"of the difference against the baseline recipe `{baseline}` on the same folds. The image-level "
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
