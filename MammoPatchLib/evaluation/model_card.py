"""A model card (Markdown) from a model file's metadata and its evaluation report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from ..model_file import read_model_payload
from .lesions import FP_RATES
from .numbers import fmt

MIAS_NOTICE = (
    "The MIAS MiniMammographic Database is for research use only. Any publication must cite "
    "J. Suckling et al. (1994), \"The Mammographic Image Analysis Society Digital Mammogram Database\", "
    "Excerpta Medica, International Congress Series 1069, pp. 375-378."
)


def _interval(pair) -> str:
    return f" (95 % CI {fmt(pair[0])}-{fmt(pair[1])})" if pair else ""


def model_card(model_path, report: Dict[str, Any], training_command: str = "", training_notes: str = "") -> str:
    payload = read_model_payload(model_path)
    info = payload["info"]
    training = info.get("training", {})
    config = training.get("config", {})
    patch = report["patch_level"]
    lesion = report["lesion_level"]
    intervals = lesion.get("intervals", {})
    reported = info.get("inference", {}).get("report_classes") or info["classes"]
    lines = [
        f"# Model card: {Path(model_path).name}", "",
        f"- **What**: {info.get('description', '')}",
        f"- **Architecture**: {info['backbone']} backbone (ImageNet-pretrained: {config.get('pretrained', 'n/a')}) + "
        f"window head ({info.get('head_pooling', 'mean')} pooling of the window's feature cells, MLP with "
        f"{info['hidden']} hidden units as 1 x 1 convolutions), {len(info['classes'])} sigmoid outputs; fully "
        "convolutional, so exact (window by window) and fast (one dense pass) inference use the same weights.",
        f"- **Input**: {info['window']} px windows at {info['spacing_mm']} mm pixel spacing (images are resampled), "
        f"stride {info['stride']} px; preprocessing: {json.dumps(info['preprocessing'])}.",
        f"- **Classes (output order)**: {', '.join(info['classes'])}. Reported by default (trained on data): "
        f"{', '.join(reported)}; the other outputs are untrained and never reported unless asked for.",
        "- **Thresholds** (per class, at most "
        f"{config.get('operating_fp_per_image', 0.5)} false positives per validation image): "
        + ", ".join(f"{c} {t:.2f}" for c, t in zip(info["classes"], info["thresholds"]) if c in reported) + ".",
        f"- **Inference defaults**: flip test-time augmentation {info.get('inference', {}).get('flip_tta', False)}.",
        f"- **Weights**: SHA-256 `{payload['sha256']}`; MammoPatch {info.get('library_version')}.",
        f"- **Best epoch**: {training.get('best_epoch', 'n/a')} of {config.get('epochs', 'n/a')} "
        f"(selected by {config.get('selection', 'n/a')} on the validation women).",
        "",
        "## Training", "",
        f"Command: `{training_command}`" if training_command else "",
        training_notes,
        "", "Config:", "", "```json", json.dumps(config, indent=1), "```", "",
        f"## Evaluation: split `{report['data']['split']}` (women never trained on)", "",
        f"Data: {report['data']['source']}: {report['data']['images']} images of {report['data']['women']} women. "
        f"Sliding-window mode: {report['mode']}{', flip TTA' if report.get('flip_tta') else ''}.", "",
        "Lesion level (all reported classes, a hit needs the right class; peak inside the true box or IoU >= 0.1):", "",
        "| FP / image | " + " | ".join(str(r) for r in FP_RATES) + " |", "|---|" + "---|" * len(FP_RATES),
        "| sensitivity | " + " | ".join(fmt(lesion["all_classes_froc"][str(r)]) for r in FP_RATES) + " |",
        "| 95 % CI | " + " | ".join(
            f"{fmt(intervals[f'sens@{r}'][0])}-{fmt(intervals[f'sens@{r}'][1])}" if f"sens@{r}" in intervals else "n/a"
            for r in FP_RATES) + " |", "",
        f"Lesions: {lesion.get('lesions', 'n/a')}. Per class at 1 FP/image: " + ", ".join(
            f"{name} {fmt(v['froc']['1'])} (n={v['lesions']})" for name, v in lesion["per_class"].items()) + ".", "",
        f"Image level (abnormal vs normal, heatmap maximum): ROC AUC "
        f"{fmt(report['image_level']['auc_abnormal_vs_normal'])}{_interval(report['image_level'].get('interval'))} "
        f"({report['image_level']['abnormal']} abnormal, {report['image_level']['normal']} normal images).", "",
        "Patch level (the poster's table, fixed patches of these women):", "",
        "| class | accuracy | precision | recall | F1 | support | ROC AUC |", "|---|---|---|---|---|---|---|",
    ]
    for name, m in patch["per_class"].items():
        if m["support"] or name == "No Finding":
            lines.append(f"| {name} | {fmt(m['accuracy'])} | {fmt(m['precision'])} | {fmt(m['recall'])} | "
                         f"{fmt(m['f1'])} | {m['support']} | {fmt(m['auc'])} |")
    lines += [
        "", f"Weighted F1: {fmt(patch['weighted_f1'])} with No Finding, "
        f"{fmt(patch['weighted_f1_without_no_finding'])} without; ECE {fmt(patch['calibration']['ece'])}.", "",
        "These figures come from a few dozen images of one scanned-film database; expect them to differ on "
        "other populations and on digital mammograms (different resolution, contrast and processing).", "",
        "## Licence and citation", "",
        MIAS_NOTICE, "",
        "Method: Mellado et al., \"A Deep Learning Classifier Using Sliding Patches for Detection of Mammographical "
        "Findings\", Universidad de Valparaíso, 2023. Not a medical device.",
    ]
    return "\n".join(lines) + "\n"
