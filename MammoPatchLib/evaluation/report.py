"""``mammopatch evaluate``: the poster's table and the lesion- and image-level figures, with
bootstrap intervals over women, written as Markdown, CSV, JSON and PNG plots.

Evaluation images are never the model's training women (:mod:`.held_out`): a model file that
records them refuses them; one that does not is evaluated with that said in the first line.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..datasets import ImageRecord
from ..errors import MammoPatchError
from ..io import read_mammogram
from ..io.atomic import atomic_path
from ..model_file import LoadedModel, ModelInfo, load_model
from .held_out import UNKNOWN_PROVENANCE, recipe_field, refuse_training_women, select_evaluation_records
from .lesions import FP_RATES, bootstrap_intervals, candidate_predictor, case_from_result, lesion_metrics
from .metrics import patch_metrics, poster_table_lines
from .numbers import fmt

logger = logging.getLogger(__name__)


def _patch_table(model, images, classes) -> Dict[str, Any]:
    """The poster's per-class table on fixed patches around findings and from the breast."""
    from ..patches import SamplingConfig

    info = model.info
    sampling = SamplingConfig.from_dict(recipe_field(info, "sampling", {}))
    targets, probs = patch_probabilities(model.network, images, len(classes), sampling, info.inference.temperatures)
    return patch_metrics(targets, probs, classes, info.thresholds)


def patch_probabilities(network, images, num_classes: int, sampling,
                        temperatures: Sequence[float] = ()) -> Tuple[np.ndarray, np.ndarray]:
    """(targets, probabilities), patches x classes, of the fixed, reproducible patches of
    ``images`` (:func:`~MammoPatchLib.patches.validation_patches`: 4 around each finding, 2
    from the breast of each image) scored by ``network`` as windows."""
    from ..patches import validation_patches

    patches, targets, _, _ = validation_patches(images, num_classes, sampling, per_finding=4, per_image=2)
    out = []
    device = next(network.parameters()).device
    with torch.no_grad():
        for i in range(0, len(patches), 32):
            logits = network.classify(patches[i:i + 32].float().to(device)).cpu()
            if temperatures:
                logits = logits / torch.tensor(temperatures)[None, :]
            out.append(torch.sigmoid(logits).numpy())
    return targets.numpy(), np.concatenate(out) if out else np.zeros((0, num_classes))


def out_of_fold_patch_table(folds: Sequence[Tuple[Any, Sequence[ImageRecord]]], info: ModelInfo,
                            classes: Sequence[str]) -> Dict[str, Any]:
    """The poster's table from out-of-fold predictions: ``folds`` pairs each fold's network
    (its heads) with the images of the women none of its heads trained on; every such image's
    patches, drawn as the poster draws them (``mode="poster"``: around each finding, and from
    the breast of each image), are scored by that network alone, and the table of ``classes``
    (the recipe's; thresholds 0.5) pools every fold. Images that cannot be read are skipped."""
    from ..inference import Predictor
    from ..patches import SamplingConfig, prepared_from

    model_classes = list(info.classes)
    columns = [model_classes.index(c) for c in classes]
    sampling = SamplingConfig(mode="poster")
    targets, probs = [], []
    for network, records in folds:
        predictor = Predictor(LoadedModel(network, info, "", ""), device="cpu")
        images = []
        for record in records:
            try:
                source = read_mammogram(record.path, spacing_mm=record.spacing_mm)
            except MammoPatchError as exc:
                logger.warning("poster's table: %s", exc)
                continue
            images.append(prepared_from(record, predictor.preprocess(source), model_classes))
        fold_targets, fold_probs = patch_probabilities(network, images, len(model_classes), sampling)
        targets.append(fold_targets[:, columns])
        probs.append(fold_probs[:, columns])
    return patch_metrics(np.concatenate(targets), np.concatenate(probs), list(classes))


def evaluate(model_path, data: str, out_dir, split: str = "validation", mode: str = "fast", device: str = "auto",
             max_images: Optional[int] = None, progress: bool = True, draws: int = 2000,
             flip_tta: Optional[bool] = None, scales: Sequence[float] = (1.0,), split_file=None) -> Dict[str, Any]:
    """Evaluate a model file on images none of whose women trained it and write the report
    files into ``out_dir``.

    Each image is read and preprocessed once: the same preprocessed image feeds the patch
    table and the Predictor.

    Raises:
        MammoPatchError: some images are of the model's training women (none is evaluated)."""
    from ..patches import prepared_from

    model = load_model(model_path)
    info = model.info
    records, split = select_evaluation_records(data, split, split_file)
    if max_images:  # the refusal counts the images that would be evaluated
        records = records[:max_images]
    refuse_training_women(records, info, model_path, "evaluate")
    classes = list(info.classes)
    errors: List[str] = []
    predictor = candidate_predictor(model, mode=mode, device=device, flip_tta=flip_tta, scales=scales)
    cases, prepared_images = [], []
    iterator = records
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(records, desc=f"whole images ({mode})", unit="img")
    for record in iterator:
        try:
            image = read_mammogram(record.path, spacing_mm=record.spacing_mm)
            prepared = predictor.preprocess(image)
            result = predictor.predict_image(image, prepared=prepared)
        except MammoPatchError as exc:
            errors.append(str(exc))
            continue
        prepared_images.append(prepared_from(record, prepared, classes))
        cases.append(case_from_result(record, result, classes))
    if not cases:
        raise MammoPatchError("no image could be evaluated", data)
    patch = _patch_table(model, prepared_images, classes)
    lesion = lesion_metrics(cases, classes)
    intervals = bootstrap_intervals(cases, classes, draws=draws) if draws else {}
    report = {
        "model": {"path": str(model_path), "sha256": model.sha256, "backbone": info.backbone,
                  "description": info.description, "provenance": "unknown" if info.provenance is None else "known"},
        "data": {"source": str(data), "split": split, "images": len(cases), "women": len({c.patient_id for c in cases}),
                 "skipped": errors},
        "mode": mode, "flip_tta": predictor.flip_tta, "scales": list(predictor.scales),
        "patch_level": patch,
        "image_level": {"auc_abnormal_vs_normal": lesion["image_auc"], "abnormal": lesion["abnormal"],
                        "normal": lesion["normal"], "interval": intervals.get("image_auc")},
        "lesion_level": {"per_class": lesion["per_class"], "all_classes_froc": lesion["all_classes_froc"],
                         "all_classes_curve": lesion["all_classes_curve"], "score": lesion["score"],
                         "lesions": lesion["lesions"],
                         "intervals": {k: v for k, v in intervals.items() if k != "image_auc"},
                         "hit_rule": "a reported finding of the right class hits a true box when its peak lies inside "
                                     "the box or the boxes overlap with IoU >= 0.1"},
    }
    write_report(report, Path(out_dir))
    from .model_card import write_model_card

    write_model_card(model_path, json.loads(json.dumps(report, default=float)), out_path=Path(out_dir) / "model_card.md")
    return report


def provenance_heading(report: Dict[str, Any]) -> str:
    """The report's first line: whether the women evaluated are known never to have trained it."""
    if report["model"].get("provenance") == "unknown":
        return f"# MammoPatch evaluation: {UNKNOWN_PROVENANCE}"
    return "# MammoPatch evaluation on women who never trained the model"


def _with_interval(value, interval) -> str:
    if not interval:
        return fmt(value)
    return f"{fmt(value)} ({fmt(interval[0])}-{fmt(interval[1])})"


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
    lesion = report["lesion_level"]
    intervals = lesion.get("intervals", {})
    lines = [provenance_heading(report), "",
             f"Model: `{Path(report['model']['path']).name}` ({report['model']['backbone']}, sha256 "
             f"{report['model']['sha256'][:12]}...)  ",
             f"Data: {report['data']['source']}"
             + (f" - split `{report['data']['split']}`" if report["data"]["split"] else "")
             + f": {report['data']['images']} images of {report['data']['women']} women. Sliding window mode: {report['mode']}"
             f"{', flip TTA' if report.get('flip_tta') else ''}.", "",
             "## Lesion level (whole images, the Predictor users run)", "",
             f"Hit rule: {lesion['hit_rule']}. 95 % intervals: bootstrap over women.", "",
             "| class | lesions | " + " | ".join(f"sens@{r} FP/img" for r in FP_RATES) + " |",
             "|---|---|" + "---|" * len(FP_RATES)]
    for name, v in lesion["per_class"].items():
        lines.append(f"| {name} | {v['lesions']} | " + " | ".join(fmt(v['froc'][str(r)]) for r in FP_RATES) + " |")
    lines.append(f"| all classes | {lesion['lesions']} | " + " | ".join(
        _with_interval(lesion["all_classes_froc"][str(r)], intervals.get(f"sens@{r}")) for r in FP_RATES) + " |")
    lines += ["", f"Mean sensitivity over the five rates: {_with_interval(lesion['score'], intervals.get('score'))}.",
              "", "## Image level", "",
              f"Abnormal vs normal ROC AUC from each image's maximum heatmap value: "
              f"{_with_interval(report['image_level']['auc_abnormal_vs_normal'], report['image_level'].get('interval'))} "
              f"({report['image_level']['abnormal']} abnormal, {report['image_level']['normal']} normal images).", "",
              "## Patch level (the poster's table)", "", *poster_table_lines(patch), "",
              "Plots: `froc.png`, `reliability.png`."]
    if report["data"]["skipped"]:
        lines += ["", "Skipped files:", *(f"- {e}" for e in report["data"]["skipped"])]
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    write_plots(report, out)


def write_plots(report: Dict[str, Any], out: Path) -> None:
    """FROC curves (per class and pooled) and the reliability diagram, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = [b for b in report["patch_level"]["calibration"]["bins"] if b["count"]]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], "o-")
    ax.set(xlabel="predicted probability", ylabel="observed frequency",
           title=f"reliability (ECE {fmt(report['patch_level']['calibration']['ece'])})")
    fig.tight_layout()
    with atomic_path(out / "reliability.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    lesion = report["lesion_level"]
    for name, v in lesion["per_class"].items():
        curve = np.array(v["curve"])
        ax.step(curve[:, 0], curve[:, 1], where="post", label=f"{name} ({v['lesions']})", lw=1)
    pooled = np.array(lesion["all_classes_curve"])
    ax.step(pooled[:, 0], pooled[:, 1], where="post", label="all classes", color="k", lw=2)
    ax.set(xlabel="false positives per image", ylabel="sensitivity", xlim=(0, 4), ylim=(0, 1), title="FROC")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out / "froc.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
