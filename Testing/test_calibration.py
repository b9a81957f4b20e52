"""Calibrated scores: temperatures are fitted, lower the calibration error, travel in the model
file, and both inferers apply them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MammoPatchLib.evaluation.calibration import calibration_before_after, fit_temperatures


def test_fitted_temperature_recovers_the_one_that_miscalibrated_the_scores():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2.5, (4000, 2))
    targets = (rng.uniform(size=true_logits.shape) < 1 / (1 + np.exp(-true_logits))).astype(float)
    overconfident = true_logits * 3.0  # a model 3x too sure of itself
    targets[:, 1] = 0.0  # a class without positives keeps T = 1
    temperatures = fit_temperatures(overconfident, targets)
    assert temperatures[0] == pytest.approx(3.0, rel=0.1) and temperatures[1] == 1.0
    result = calibration_before_after(overconfident, targets, temperatures, ["a", "b"])
    assert result["after"]["ece"] < 0.5 * result["before"]["ece"]


def test_both_inferers_divide_the_logits_by_the_temperatures():
    from helpers import probe_model

    from MammoPatchLib.inference import DenseInferer, ExactInferer

    network = probe_model().network
    image = torch.rand(1, 3, 256, 256) * 0.4 + 0.45  # one window: no averaging between windows
    for make in (lambda t: DenseInferer(temperatures=t), lambda t: ExactInferer(temperatures=t)):
        plain = make(None)(image, network)[0, 0]
        scaled = make([2.0] + [1.0] * 9)(image, network)[0, 0]
        logit = torch.log(plain / (1 - plain))
        torch.testing.assert_close(scaled, torch.sigmoid(logit / 2.0), atol=2e-4, rtol=1e-3)
