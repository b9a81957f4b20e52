"""A model card (Markdown) from a model file's metadata and its evaluation report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict

from ..model_file import read_model_payload

MIAS_NOTICE = (
    "The MIAS MiniMammographic Database is for research use only. Any publication must cite "
    "J. Suckling et al. (1994), \"The Mammographic Image Analysis Society Digital Mammogram Database\", "
    "Excerpta Medica, International Congress Series 1069, pp. 375-378."
)


def _f(value, digits=3) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{number:.{digits}f}" if math.isfinite(number) else "n/a"


def model_card(model_path, report: Dict[str, Any], training_command: str = "") -> str:
    payload = read_model_payload(model_path)
    info = payload["info"]
    config = info.get("training", {}).get("config", {})
    patch = report["patch_level"]
    lesion = report["lesion_level"]
    lines = [
        f"# Model card: {Path(model_path).name}", "",
        f"- **What**: {info.get('description', '')}",
        f"- **Architecture**: {info['backbone']} backbone (ImageNet-pretrained: {config.get('pretrained', 'n/a')}) + "
        f"MLP head ({info['hidden']} hidden units), {len(info['classes'])} sigmoid outputs.",
        f"- **Input**: {info['window']} px windows at {info['spacing_mm']} mm pixel spacing (images are resampled), "
        f"stride {info['stride']} px; preprocessing: {json.dumps(info['preprocessing'])}.",
        f"- **Classes (output order)**: {', '.join(info['classes'])}.",
        "- **Thresholds** (tuned for F1 on the validation patches): "
        + ", ".join(f"{c} {t:.2f}" for c, t in zip(info["classes"], info["thresholds"])) + ".",
        f"- **Weights**: SHA-256 `{payload['sha256']}`; MammoPatch {info.get('library_version')}.",
        f"- **Best epoch**: {info.get('training', {}).get('best_epoch', 'n/a')} of {config.get('epochs', 'n/a')}.",
        "",
        "## Training", "",
        f"Command: `{training_command}`" if training_command else "",
        "", "Config:", "", "```json", json.dumps(config, indent=1), "```", "",
        "## Validation (held-out women, not trained on)", "",
        f"Data: {report['data']['source']}, split `{report['data']['split']}`: {report['data']['images']} images of "
        f"{report['data']['women']} women. Sliding-window mode: {report['mode']}.", "",
        "| class | accuracy | precision | recall | F1 | support | ROC AUC |", "|---|---|---|---|---|---|---|",
    ]
    for name, m in patch["per_class"].items():
        if m["support"] or name == "No Finding":
            lines.append(f"| {name} | {_f(m['accuracy'])} | {_f(m['precision'])} | {_f(m['recall'])} | {_f(m['f1'])} "
                         f"| {m['support']} | {_f(m['auc'])} |")
    lines += [
        "", f"Patch level, weighted F1: {_f(patch['weighted_f1'])} with No Finding, "
        f"{_f(patch['weighted_f1_without_no_finding'])} without; ECE {_f(patch['calibration']['ece'])}.",
        f"Image level (abnormal vs normal, heatmap maximum): ROC AUC "
        f"{_f(report['image_level']['auc_abnormal_vs_normal'])}.",
        "Lesion level (all classes, a hit needs the right class): sensitivity "
        + ", ".join(f"{_f(v)} at {k} FP/image" for k, v in lesion["all_classes_froc"].items())
        + f"; mAP@0.5 {_f(lesion['mAP50'])}.", "",
        "These figures come from a few dozen images of one scanned-film database; expect them to differ on "
        "other populations and on digital mammograms (different resolution, contrast and processing).", "",
        "## Licence and citation", "",
        MIAS_NOTICE, "",
        "Method: Mellado et al., \"A Deep Learning Classifier Using Sliding Patches for Detection of Mammographical "
        "Findings\", Universidad de Valparaíso, 2023. Not a medical device.",
    ]
    return "\n".join(lines) + "\n"
