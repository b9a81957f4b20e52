"""The poster's patch sampling: distributions, containment, No Finding patches, targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MammoPatchLib.sampling import RandFindingPatchd, SamplingConfig, draw_region, patch_target


def test_region_distributions_match_the_configured_ranges():
    config = SamplingConfig()
    rng = np.random.RandomState(0)
    box = (400.0, 500.0, 460.0, 540.0)  # 60 x 40 px, well inside a large image
    centre = (430.0, 520.0)
    jitter = config.centre_jitter_px(0.1)
    assert jitter == pytest.approx(50.0) and config.centre_jitter_px(0.2) == pytest.approx(25.0)
    areas, aspects, offsets = [], [], []
    for _ in range(4000):
        x0, y0, x1, y1 = draw_region(rng, box, centre, config, jitter, (3000, 3000))
        w, h = x1 - x0, y1 - y0
        areas.append(w * h / (60 * 40))
        aspects.append((w / h) / (60 / 40))
        offsets.append(np.hypot((x0 + x1) / 2 - centre[0], (y0 + y1) / 2 - centre[1]))
    areas, aspects, offsets = map(np.asarray, (areas, aspects, offsets))
    unclamped = areas > (16 * 16) / (60 * 40) * 1.5  # tiny regions are raised to the 16 px minimum side
    assert areas[unclamped].max() <= 5.0 + 1e-6 and areas.min() >= 0.05 - 1e-6
    assert np.median(areas) == pytest.approx(2.525, abs=0.25), "area factor ~ U[0.05, 5]"
    assert aspects[unclamped].min() >= 0.33 - 1e-3 and aspects[unclamped].max() <= 1.66 + 1e-3
    assert offsets.max() <= 50.0 + 1e-6, "centre within 50 px (VinDr pixels) of the box centre"
    assert offsets.mean() > 10.0, "and not always at the centre"


def test_finding_patch_contains_the_finding_centre():
    config = SamplingConfig()
    rng = np.random.RandomState(1)
    for _ in range(2000):
        w, h = rng.uniform(8, 200, 2)
        cx, cy = rng.uniform(300, 700, 2)
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        x0, y0, x1, y1 = draw_region(rng, box, (cx, cy), config, config.centre_jitter_px(0.1), (1000, 1000))
        assert x0 <= cx <= x1 and y0 <= cy <= y1


def test_no_finding_patches_lie_in_the_breast_away_from_findings(synthetic_mammo):
    sampler = RandFindingPatchd(10)
    image = torch.rand(3, *synthetic_mammo.pixels.shape)
    boxes = np.array([f.box for f in synthetic_mammo.findings])
    for seed in range(200):
        sampler.set_random_state(seed)
        out = sampler({"image": image, "boxes": boxes, "labels": np.array([0, 1]), "mask": synthetic_mammo.breast_mask,
                       "spacing": 0.2, "finding": -1, "reference_box": (0, 0, 80, 60)})
        x0, y0, x1, y1 = out["region"].tolist()
        cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
        assert synthetic_mammo.breast_mask[min(cy, 639), min(cx, 511)] or x0 == 0 or y0 == 0
        assert out["image"].shape == (3, 256, 256)
        if not out["target"].any():
            assert all(min(x1, b[2]) <= max(x0, b[0]) or min(y1, b[3]) <= max(y0, b[1]) for b in boxes)


def test_patch_target_rule():
    boxes = [(100, 100, 140, 140), (300, 300, 600, 600)]
    labels = [0, 1]
    assert patch_target((90, 90, 150, 150), boxes, labels, 3).tolist() == [1, 0, 0]  # box fully inside
    assert patch_target((125, 125, 200, 200), boxes, labels, 3).tolist() == [0, 0, 0]  # 14 % of the box
    assert patch_target((400, 400, 450, 450), boxes, labels, 3).tolist() == [0, 1, 0]  # inside a large box
    assert patch_target((0, 0, 50, 50), boxes, labels, 3).tolist() == [0, 0, 0]


def test_sampling_is_reproducible_with_a_seed(synthetic_mammo):
    sampler = RandFindingPatchd(10)
    data = {"image": torch.rand(3, 640, 512), "boxes": np.array([synthetic_mammo.findings[0].box]),
            "labels": np.array([0]), "mask": synthetic_mammo.breast_mask, "spacing": 0.2, "finding": 0,
            "reference_box": (0, 0, 50, 50)}
    sampler.set_random_state(7)
    a = sampler(data)
    sampler.set_random_state(7)
    b = sampler(data)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["region"], b["region"])
    assert a["target"][0] == 1
