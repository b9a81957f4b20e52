"""``mammopatch evaluate``: the poster's table and more, written as Markdown, CSV, JSON and PNG.

Evaluation images are the held-out women: the validation split recreated from the model's
own training config (same seed and fraction, split by woman), or a VinDr test split.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..datasets import ImageRecord
from ..errors import MammoPatchError
from ..inference.predictor import Predictor
from ..io import read_mammogram
from ..io.atomic import atomic_path
from ..model_file import load_model
from .metrics import average_precision, froc, is_hit, patch_metrics, roc_auc

logger = logging.getLogger(__name__)

FP_RATES = (0.25, 0.5, 1, 2, 4)


def select_evaluation_records(data: str, model_info, split: str) -> List[ImageRecord]:
    from ..training.config import TrainConfig
    from ..training.run import load_records, split_records

    training = (model_info.training or {}).get("config", {})
    config = TrainConfig.from_dict(training) if training else TrainConfig()
    records, _ = load_records(data, Path("."), config.seed)
    groups = split_records(records, config)
    chosen = groups.get(split, [])
    if not chosen:
        raise MammoPatchError(f"no images in the {split!r} split (have: "
                              f"{ {k: len(v) for k, v in groups.items()} })", data)
    return chosen


def _probs(network, patches: torch.Tensor, batch: int = 32) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(patches), batch):
            out.append(torch.sigmoid(network(patches[i:i + batch].float())).numpy())
    return np.concatenate(out) if out else np.zeros((0, network.num_classes))


def evaluate(model_path, data: str, out_dir, split: str = "validation", mode: str = "exact", device: str = "auto",
             max_images: Optional[int] = None, progress: bool = True, candidate_threshold: float = 0.1
             ) -> Dict[str, Any]:
    """Evaluate a model file on held-out images and write the report files into ``out_dir``.

    Lesion candidates are the heatmap regions above ``candidate_threshold`` (not the model's
    operating thresholds), ranked by peak score, so the FROC curve covers the whole range.
    """
    from ..training.data import prepare_images, validation_patches

    model = load_model(model_path)
    info = model.info
    records = select_evaluation_records(data, info, split)
    if max_images:
        records = records[:max_images]
    classes = list(info.classes)
    images, errors = prepare_images(records, info.preprocess_config(), classes, progress=progress)
    # Patch level: the poster's table on fixed patches around findings and from the breast.
    from ..sampling import SamplingConfig

    patches, targets, _ = validation_patches(images, len(classes), SamplingConfig(), per_finding=4, per_image=2)
    probs = _probs(model.network, patches)
    patch = patch_metrics(targets.numpy(), probs, classes, info.thresholds)

    # Whole images with the sliding window: image-level AUC, FROC, mAP@0.5.
    predictor = Predictor(model, mode=mode, device=device, thresholds=[candidate_threshold] * len(classes))
    by_class_dets: Dict[str, List[list]] = {c: [] for c in classes}
    by_class_truth: Dict[str, List[list]] = {c: [] for c in classes}
    image_scores, image_labels = [], []
    iterator = records
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(records, desc=f"whole images ({mode})", unit="img")
    for record in iterator:
        try:
            result = predictor.predict_image(read_mammogram(record.path, spacing_mm=record.spacing_mm))
        except MammoPatchError as exc:
            errors.append(str(exc))
            continue
        image_scores.append(float(result.heatmaps.max()))
        image_labels.append(not record.is_normal)
        for name in classes:
            # every region above a low floor counts as a candidate, ranked by its peak score
            by_class_dets[name].append([(f.score, f.box_px, f.peak_px) for f in result.findings if f.category == name])
            by_class_truth[name].append([f.box for f in record.findings if f.category == name])
    lesion: Dict[str, Any] = {}
    for name in classes:
        if sum(len(t) for t in by_class_truth[name]) == 0:
            continue
        curve = froc(by_class_dets[name], by_class_truth[name], FP_RATES)
        lesion[name] = {"froc": curve["sensitivity_at_fp"], "lesions": curve["lesions"],
                        "ap50": average_precision(by_class_dets[name], by_class_truth[name], 0.5),
                        "curve": curve["curve"]}
    pooled_dets = [[(s, b, p, c) for c in classes for s, b, p in by_class_dets[c][i]] for i in range(len(image_scores))]
    overall = _pooled_froc(pooled_dets, by_class_truth, classes, len(image_scores))
    aps = [v["ap50"] for v in lesion.values() if np.isfinite(v["ap50"])]
    report = {
        "model": {"path": str(model_path), "sha256": model.sha256, "backbone": info.backbone,
                  "description": info.description},
        "data": {"source": str(data), "split": split, "images": len(records), "women": len({r.patient_id for r in records}),
                 "skipped": errors},
        "mode": mode,
        "patch_level": patch,
        "image_level": {"auc_abnormal_vs_normal": roc_auc(np.array(image_labels), np.array(image_scores)),
                        "abnormal": int(sum(image_labels)), "normal": int(len(image_labels) - sum(image_labels))},
        "lesion_level": {"per_class": lesion, "all_classes_froc": overall,
                         "mAP50": float(np.mean(aps)) if aps else float("nan"),
                         "hit_rule": "a reported finding of the right class hits a true box when its peak lies inside "
                                     "the box or the boxes overlap with IoU >= 0.1; mAP uses IoU >= 0.5"},
    }
    write_report(report, Path(out_dir))
    from .model_card import model_card

    with atomic_path(Path(out_dir) / "model_card.md") as tmp:
        tmp.write_text(model_card(model_path, json.loads(json.dumps(report, default=float))))
    return report


def _pooled_froc(pooled, truths_by_class, classes, n_images) -> Dict[str, float]:
    """FROC over all classes together: a detection must match a true box of its own class.
    Boxes carry their class, and the hit rule compares it before the geometry."""
    detections = [[(s, (c, b), p) for s, b, p, c in pooled[i]] for i in range(n_images)]
    truths = [[(c, b) for c in classes for b in truths_by_class[c][i]] for i in range(n_images)]
    same_class_hit = lambda box, peak, truth: box[0] == truth[0] and is_hit(box[1], peak, truth[1])  # noqa: E731
    return froc(detections, truths, FP_RATES, hit=same_class_hit)["sensitivity_at_fp"]


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def write_report(report: Dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    patch = report["patch_level"]
    rows = patch["per_class"]
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1, default=float))
    with atomic_path(out / "per_class.csv") as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["class", "accuracy", "precision", "recall", "f1", "support", "auc"])
            for name, m in rows.items():
                writer.writerow([name, *(f"{m[k]:.4f}" for k in ("accuracy", "precision", "recall", "f1")),
                                 m["support"], f"{m['auc']:.4f}"])
    lines = ["# MammoPatch evaluation", "",
             f"Model: `{Path(report['model']['path']).name}` ({report['model']['backbone']}, sha256 "
             f"{report['model']['sha256'][:12]}...)  ",
             f"Data: {report['data']['source']} - split `{report['data']['split']}`: {report['data']['images']} images "
             f"of {report['data']['women']} women (split by woman). Sliding window mode: {report['mode']}.", "",
             "## Patch level (the poster's table)", "",
             "| class | accuracy | precision | recall | F1 | support | ROC AUC |", "|---|---|---|---|---|---|---|"]
    for name, m in rows.items():
        lines.append(f"| {name} | {_fmt(m['accuracy'])} | {_fmt(m['precision'])} | {_fmt(m['recall'])} | "
                     f"{_fmt(m['f1'])} | {m['support']} | {_fmt(m['auc'])} |")
    lines += ["", f"Weighted average with No Finding: accuracy {_fmt(patch['weighted_accuracy'])}, F1 "
              f"{_fmt(patch['weighted_f1'])} (support {patch['support']}).  ",
              f"Weighted average without No Finding: accuracy {_fmt(patch['weighted_accuracy_without_no_finding'])}, "
              f"F1 {_fmt(patch['weighted_f1_without_no_finding'])} (support {patch['support_without_no_finding']}).  ",
              f"Expected calibration error: {_fmt(patch['calibration']['ece'])}.", "",
              "## Image level", "",
              f"Abnormal vs normal ROC AUC from each image's maximum heatmap value: "
              f"{_fmt(report['image_level']['auc_abnormal_vs_normal'])} ({report['image_level']['abnormal']} abnormal, "
              f"{report['image_level']['normal']} normal images).", "",
              "## Lesion level (whole images, sliding window)", "",
              f"Hit rule: {report['lesion_level']['hit_rule']}.", "",
              "| class | lesions | " + " | ".join(f"sens@{r} FP/img" for r in FP_RATES) + " | AP@0.5 |",
              "|---|---|" + "---|" * len(FP_RATES) + "---|"]
    for name, v in report["lesion_level"]["per_class"].items():
        lines.append(f"| {name} | {v['lesions']} | " + " | ".join(_fmt(v['froc'][str(r)]) for r in FP_RATES)
                     + f" | {_fmt(v['ap50'])} |")
    overall = report["lesion_level"]["all_classes_froc"]
    lines.append("| all classes | | " + " | ".join(_fmt(overall[str(r)]) for r in FP_RATES)
                 + f" | mAP {_fmt(report['lesion_level']['mAP50'])} |")
    if report["data"]["skipped"]:
        lines += ["", "Skipped files:", *(f"- {e}" for e in report["data"]["skipped"])]
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    _plots(report, out)


def _plots(report: Dict[str, Any], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib not installed: report written without plots")
        return
    bins = [b for b in report["patch_level"]["calibration"]["bins"] if b["count"]]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], "o-")
    ax.set(xlabel="predicted probability", ylabel="observed frequency",
           title=f"reliability (ECE {_fmt(report['patch_level']['calibration']['ece'])})")
    fig.tight_layout()
    with atomic_path(out / "reliability.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, v in report["lesion_level"]["per_class"].items():
        curve = np.array(v["curve"])
        ax.step(curve[:, 0], curve[:, 1], where="post", label=name)
    ax.set(xlabel="false positives per image", ylabel="sensitivity", xlim=(0, 4), ylim=(0, 1), title="FROC")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out / "froc.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
