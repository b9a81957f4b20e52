"""Patch sampling: the poster's distributions and targets, our window mode, context crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MammoPatchLib.patches import (
    RandFindingPatchd,
    SamplingConfig,
    crop_and_resize,
    draw_region,
    patch_target,
    window_target,
)

POSTER = SamplingConfig(mode="poster")


def test_region_distributions_match_the_configured_ranges():
    config = POSTER
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
    config = POSTER
    rng = np.random.RandomState(1)
    for _ in range(2000):
        w, h = rng.uniform(8, 200, 2)
        cx, cy = rng.uniform(300, 700, 2)
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        x0, y0, x1, y1 = draw_region(rng, box, (cx, cy), config, config.centre_jitter_px(0.1), (1000, 1000))
        assert x0 <= cx <= x1 and y0 <= cy <= y1


@pytest.mark.parametrize("mode", ["poster", "window"])
def test_no_finding_patches_lie_in_the_breast_away_from_findings(synthetic_mammo, mode):
    sampler = RandFindingPatchd(10, SamplingConfig(mode=mode))
    image = torch.rand(3, *synthetic_mammo.pixels.shape)
    boxes = np.array([f.box for f in synthetic_mammo.findings])
    for seed in range(200):
        sampler.set_random_state(seed)
        out = sampler({"image": image, "boxes": boxes, "labels": np.array([0, 1]), "mask": synthetic_mammo.breast_mask,
                       "spacing": 0.2, "finding": -1, "reference_box": (0, 0, 80, 60)})
        x0, y0, x1, y1 = out["region"].tolist()
        cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
        assert synthetic_mammo.breast_mask[min(max(cy, 0), 639), min(max(cx, 0), 511)] or mode == "poster" and (
            x0 == 0 or y0 == 0)
        assert out["image"].shape == (3, 256, 256)
        if mode == "poster" and not out["target"].any():
            assert all(min(x1, b[2]) <= max(x0, b[0]) or min(y1, b[3]) <= max(y0, b[1]) for b in boxes)


def test_patch_target_rule():
    boxes = [(100, 100, 140, 140), (300, 300, 600, 600)]
    labels = [0, 1]
    assert patch_target((90, 90, 150, 150), boxes, labels, 3).tolist() == [1, 0, 0]  # box fully inside
    assert patch_target((125, 125, 200, 200), boxes, labels, 3).tolist() == [0, 0, 0]  # 14 % of the box
    assert patch_target((400, 400, 450, 450), boxes, labels, 3).tolist() == [0, 1, 0]  # inside a large box
    assert patch_target((0, 0, 50, 50), boxes, labels, 3).tolist() == [0, 0, 0]


@pytest.mark.parametrize("mode", ["poster", "window"])
def test_sampling_is_reproducible_with_a_seed(synthetic_mammo, mode):
    sampler = RandFindingPatchd(10, SamplingConfig(mode=mode, centred_fraction=1.0))
    data = {"image": torch.rand(3, 640, 512), "boxes": np.array([synthetic_mammo.findings[0].box]),
            "labels": np.array([0]), "mask": synthetic_mammo.breast_mask, "spacing": 0.2, "finding": 0,
            "reference_box": (0, 0, 50, 50)}
    sampler.set_random_state(7)
    a = sampler(data)
    sampler.set_random_state(7)
    b = sampler(data)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["region"], b["region"])
    assert a["target"][0] == 1


def test_window_target_rule():
    config = SamplingConfig()
    region = (0.0, 0.0, 256.0, 256.0)
    boxes = [(118, 118, 138, 138), (200, 120, 220, 140), (500, 500, 520, 520), (-300, -300, 600, 600)]
    # centred (offset 0) -> positive; offset 82 px = 0.32 -> ignored; far -> negative (no mask)
    target, mask = window_target(region, boxes[:3], [0, 1, 2], 4, config)
    assert target.tolist() == [1, 0, 0, 0] and mask.tolist() == [1, 0, 1, 1]
    # a box covering the window is positive wherever its centre is
    target, mask = window_target(region, boxes[3:], [3], 4, config)
    assert target[3] == 1 and mask.all()


def test_window_mode_patches_show_findings_at_inference_scale_and_mostly_centred():
    config = SamplingConfig()
    sampler = RandFindingPatchd(10, config)
    image = torch.rand(3, 900, 700)
    box = np.array([[300.0, 400.0, 340.0, 436.0]])
    positives, sides = 0, []
    for seed in range(300):
        sampler.set_random_state(seed)
        out = sampler({"image": image, "boxes": box, "labels": np.array([1]), "mask": np.ones((900, 700), bool),
                       "spacing": 0.2, "finding": 0, "reference_box": box[0]})
        x0, y0, x1, y1 = out["region"].tolist()
        sides.append(x1 - x0)
        assert x0 <= 320 <= x1 and y0 <= 418 <= y1, "the finding's centre is inside the window"
        positives += int(out["target"][1])
        assert out["target"][1] == 1 or out["loss_mask"][1] == 0 or abs((x0 + x1) / 2 - 320) > 0.4 * (x1 - x0) \
            or abs((y0 + y1) / 2 - 418) > 0.4 * (y1 - y0)
    assert 256 * 0.8 - 1e-6 <= min(sides) and max(sides) <= 256 * 1.25 + 1e-6, "no resizing beyond the jitter"
    assert 0.6 < positives / 300 < 0.95


def test_crop_outside_the_image_is_zero_and_inside_it_is_the_image():
    image = torch.rand(3, 600, 500)
    corner = crop_and_resize(image, (-100.0, -100.0, 156.0, 156.0), 256)
    assert corner[:, :100, :100].abs().max() == 0 and torch.equal(corner[:, 100:, 100:], image[:, :156, :156])


def test_streamed_images_give_the_samples_of_images_held_in_memory(tmp_path):
    """A cached image released from memory is read back (memory-mapped) for each sample: the
    patch dataset gives the same samples as with the pixels held, and the released images hold
    no pixels; a second preparation reads the cache instead of making it again."""
    from MammoPatchLib.datasets import load_records
    from MammoPatchLib.patches import PatchDataset, build_slots, prepare_images
    from MammoPatchLib.synthetic import make_vindr_dataset
    from MammoPatchLib.transforms import PreprocessConfig
    from MammoPatchLib.vocabulary import FINDING_CLASSES

    root = make_vindr_dataset(tmp_path / "data", n_studies=1, shape=(384, 320), seed=2, abnormal_fraction=1.0,
                              test_fraction=0.0)
    records, _ = load_records(str(root))
    config = PreprocessConfig().at_spacing(0.4)
    held, errors = prepare_images(records, config, FINDING_CLASSES, progress=False)
    streamed, _ = prepare_images(records, config, FINDING_CLASSES, tmp_path / "cache", progress=False, release=True,
                                 workers=2)  # prepared and cached by DataLoader worker processes
    assert not errors and len(list((tmp_path / "cache").iterdir())) == len(records)
    assert all(img.image is None and img.mask is None and img.cache_path for img in streamed)
    made = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}
    again, _ = prepare_images(records, config, FINDING_CLASSES, tmp_path / "cache", progress=False, release=True)
    assert [img.cache_path for img in again] == [img.cache_path for img in streamed]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()} == made  # read back, not made again
    slots = build_slots(held)
    assert any(s.finding >= 0 for s in slots)
    a, b = (PatchDataset(images, slots, 10, POSTER) for images in (held, streamed))
    for index in range(len(slots)):
        for x, y in zip(a[(index, 11 * index)], b[(index, 11 * index)]):
            assert torch.equal(x, y)
