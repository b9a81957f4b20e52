"""Calibrated scores: one temperature per class, fitted on the validation women's patches.

A class's probability becomes sigmoid(logit / T): T > 1 softens over-confident outputs, T < 1
sharpens timid ones, and the ranking (hence FROC and AUC) does not change. T minimises the
binary cross-entropy on the validation patches of that class (classes without a positive
patch keep T = 1). The temperatures are stored in the model file (``inference.temperatures``)
and applied by both inferers, so thresholds and scores are probabilities on that scale.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import numpy as np

from .metrics import calibration

TEMPERATURE_RANGE = (0.05, 20.0)


def fit_temperatures(logits: np.ndarray, targets: np.ndarray, masks: np.ndarray = None) -> List[float]:
    """Per-class temperatures minimising the (masked) binary cross-entropy."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    masks = np.ones_like(targets) if masks is None else np.asarray(masks, dtype=np.float64)
    temperatures = []
    for k in range(logits.shape[1]):
        keep = masks[:, k] > 0
        z, y = logits[keep, k], targets[keep, k]
        if not (y > 0.5).any() or not (y < 0.5).any():
            temperatures.append(1.0)
            continue

        def loss(log_t: float) -> float:
            scaled = z / math.exp(log_t)
            return float(np.mean(np.logaddexp(0.0, scaled) - y * scaled))  # BCE with logits

        best = minimize_scalar(loss, bounds=tuple(math.log(t) for t in TEMPERATURE_RANGE), method="bounded")
        temperatures.append(float(round(math.exp(best.x), 4)))
    return temperatures


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def calibration_before_after(logits: np.ndarray, targets: np.ndarray, temperatures: Sequence[float],
                             classes: Sequence[str]) -> Dict[str, object]:
    """ECE and reliability bins before and after scaling, over the classes with positives."""
    targets = np.asarray(targets)
    present = targets.any(axis=0)
    before = sigmoid(logits)
    after = sigmoid(logits / np.asarray(temperatures, dtype=np.float64)[None, :])
    return {"temperatures": dict(zip(classes, temperatures)),
            "before": calibration(targets[:, present], before[:, present]),
            "after": calibration(targets[:, present], after[:, present])}


def calibrate_model(model_path, data: str, out_path, split: str = "validation", device: str = "auto",
                    fp_per_image: float = None, split_file=None) -> Dict[str, object]:
    """Fit temperatures on the women of ``data`` (those of ``split`` with a ``split_file``): their patches, recompute the per-class operating
    thresholds on their whole images with the calibrated model, and write a new model file.
    Returns temperatures and ECE before / after (also stored in the model's training record).

    Raises:
        MammoPatchError: the model has an image gate or an operating point for pairs (both
            on the uncalibrated scale, which calibration would leave behind), or some images
            are of its training women."""
    import torch

    from ..errors import MammoPatchError
    from ..io import read_mammogram
    from ..model_file import load_model, save_model
    from ..patches import SamplingConfig, prepare_images, validation_patches
    from .held_out import recipe_field, refuse_training_women, select_evaluation_records
    from .lesions import candidate_predictor, collect_cases, operating_thresholds

    model = load_model(model_path)
    info = model.info
    if info.inference.detection.image_threshold or info.inference.other_breast.active:
        raise MammoPatchError("refused to calibrate: the model's image gate and operating point for pairs were fitted "
                              "on its uncalibrated scores, and calibrate refits only the temperatures and per-class "
                              "thresholds; rebuild it with `mammopatch crossval --model-out`, which fits all three "
                              "on out-of-fold predictions", model_path)
    classes = list(info.classes)
    records, split = select_evaluation_records(data, split, split_file)
    refuse_training_women(records, info, model_path, "calibrate")
    images, _ = prepare_images(records, info.preprocess_config(), classes, progress=False)
    sampling = SamplingConfig.from_dict(recipe_field(info, "sampling", {}))
    patches, targets, masks, _ = validation_patches(images, len(classes), sampling)
    with torch.no_grad():
        logits = torch.cat([model.network.classify(patches[i:i + 32].float()) for i in range(0, len(patches), 32)])
    logits = logits.numpy().astype(np.float64)
    temperatures = fit_temperatures(logits, targets.numpy(), masks.numpy())
    result = calibration_before_after(logits, targets.numpy(), temperatures, classes)
    info.inference.temperatures = temperatures
    predictor = candidate_predictor(model, mode="fast", device=device)
    mammograms = [read_mammogram(r.path, spacing_mm=r.spacing_mm) for r in records]
    cases, _ = collect_cases(predictor, records, classes, mammograms)
    rate = fp_per_image if fp_per_image is not None else float(recipe_field(info, "fp_per_image", 0.5))
    info.thresholds = operating_thresholds(cases, classes, fp_per_image=rate)
    info.training["calibration"] = {"split": split, "ece_before": result["before"]["ece"],
                                    "ece_after": result["after"]["ece"], "temperatures": temperatures}
    if info.provenance is not None:  # the thresholds are now chosen on these women too
        info.provenance.selected_on = sorted(set(info.provenance.selected_on) | {r.patient_id for r in records})
    result["thresholds"] = dict(zip(classes, info.thresholds))
    result["women"] = f"the {split} split's" if split else "all the data's"
    save_model(model.network, info, out_path, half=next(iter(model.network.state_dict().values())).dtype
               == torch.float16)
    return result
