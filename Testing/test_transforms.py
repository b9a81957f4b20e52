"""Preprocessing transforms: shapes, ranges, channel order, physical scale, invertibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from MammoPatchLib.io import read_mammogram
from MammoPatchLib.io.image import ImageGeometry, MammogramImage
from MammoPatchLib.transforms import (
    DEFAULT_SCALES,
    BreastCrop,
    FuseCLAHE,
    FuseCLAHEd,
    NormaliseLaterality,
    PreprocessConfig,
    ScaleToUnit,
    ScaleToUnitd,
    clahe,
    preprocess,
    to_metatensor,
)


def _image(mammo) -> MammogramImage:
    s = mammo.spacing_mm
    return MammogramImage(pixels=mammo.pixels.astype(np.float32), geometry=ImageGeometry(spacing=(s, s, 1.0)))


def test_scale_to_unit_range_and_outliers(rng):
    img = torch.from_numpy(rng.normal(1000, 100, (1, 300, 300)).astype(np.float32))
    img[0, 0, :5] = 1e6  # a few saturated marker pixels
    out = ScaleToUnit()(img)
    assert out.shape == img.shape and float(out.min()) == 0.0 and float(out.max()) == 1.0
    assert 0.3 < float(out.median()) < 0.7, "outliers must not squash the tissue range"
    d = ScaleToUnitd(["image"])({"image": img})
    torch.testing.assert_close(d["image"], out)


def test_clahe_fusion_channel_order(synthetic_mammo):
    tensor = ScaleToUnit()(to_metatensor(_image(synthetic_mammo)))
    fused = FuseCLAHE()(tensor)
    assert isinstance(fused, MetaTensor) and fused.shape == (3, *synthetic_mammo.pixels.shape)
    assert float(fused.min()) >= 0.0 and float(fused.max()) <= 1.0
    original = tensor[0].numpy()
    np.testing.assert_array_equal(fused[0].numpy(), original)
    for channel, scale in zip((1, 2), DEFAULT_SCALES):
        np.testing.assert_array_equal(fused[channel].numpy(), clahe(original, 0.2, scale))
    assert not np.array_equal(fused[1].numpy(), fused[2].numpy())
    dict_out = FuseCLAHEd(["image"])({"image": tensor})["image"]
    torch.testing.assert_close(dict_out, fused)


def test_clahe_runs_in_workers_forked_after_the_parent_used_it(synthetic_mammo):
    """DataLoader workers are forked from a process that has run CLAHE already: OpenCV must hold no
    thread pool then (a child forked while the pool holds a lock hangs in CLAHE for ever), and
    the children's CLAHE is the parent's."""
    import multiprocessing

    import cv2

    image = np.clip(synthetic_mammo.pixels.astype(np.float32) / float(synthetic_mammo.pixels.max()), 0, 1)
    expected = [clahe(image, 0.2, scale) for scale in DEFAULT_SCALES]
    assert cv2.getNumThreads() == 1  # OpenCV runs sequentially: no pool a fork could inherit locked
    with multiprocessing.get_context("fork").Pool(2) as pool:
        done = pool.starmap_async(clahe, [(image, 0.2, scale) for scale in DEFAULT_SCALES] * 3).get(timeout=120)
    for k, result in enumerate(done):
        np.testing.assert_array_equal(result, expected[k % len(DEFAULT_SCALES)])


def test_clahe_tiles_are_physical(synthetic_mammo):
    """The same breast at 200 um and 100 um gets the same enhancement (tiles in mm)."""
    from skimage.transform import resize

    base = ScaleToUnit()(torch.from_numpy(synthetic_mammo.pixels.astype(np.float32))[None])[0].numpy()
    fine = resize(base, (base.shape[0] * 2, base.shape[1] * 2), order=1)
    at_200 = clahe(base, 0.2, DEFAULT_SCALES[0])
    at_100 = resize(clahe(fine, 0.1, DEFAULT_SCALES[0]), base.shape, order=1, anti_aliasing=True)
    same = np.corrcoef(at_200.ravel(), at_100.ravel())[0, 1]
    # Pretending the fine image had 200 um pixels doubles the tile size in mm: worse agreement.
    wrong = resize(clahe(fine, 0.2, DEFAULT_SCALES[0]), base.shape, order=1, anti_aliasing=True)
    assert same > 0.95 and same > np.corrcoef(at_200.ravel(), wrong.ravel())[0, 1]


def test_fuse_clahe_rejects_unscaled_input():
    with pytest.raises(ValueError, match="ScaleToUnit"):
        FuseCLAHE(spacing_mm=0.1)(torch.full((1, 64, 64), 5.0))


def test_breast_crop_ignores_labels_and_inverts(synthetic_mammo):
    pixels = synthetic_mammo.pixels.astype(np.float32).copy()
    pixels[20:60, 440:500] = pixels.max()  # a bright film label away from the breast
    tensor = ScaleToUnit()(to_metatensor(MammogramImage(pixels=pixels)))
    cropper = BreastCrop(margin=8)
    cropped = cropper(tensor)
    # The crop's offset is in the affine (MONAI updates it), its size in the shape.
    r0, c0 = (int(round(v)) for v in cropped.affine[:2, 3].tolist())
    r1, c1 = r0 + cropped.shape[1], c0 + cropped.shape[2]
    rows, cols = np.nonzero(synthetic_mammo.breast_mask)
    assert r0 <= rows.min() and r1 >= rows.max() and c0 <= cols.min() and c1 >= cols.max() + 1 - 8
    assert c1 < 440, "the label must not widen the box"
    restored = cropper.inverse(cropped)
    assert restored.shape == tensor.shape
    np.testing.assert_array_equal(restored[0, r0:r1, c0:c1].numpy(), tensor[0, r0:r1, c0:c1].numpy())
    assert float(restored[0, :, c1:].abs().max()) == 0.0, "outside the crop the inverse is zero"


def test_laterality_flip_and_inverse():
    from MammoPatchLib.synthetic import synthesize_mammogram

    right = synthesize_mammogram((400, 320), 0.2, "R", "CC", [], seed=5)
    tensor = ScaleToUnit()(to_metatensor(_image(right)))
    flipper = NormaliseLaterality()
    out = flipper(tensor)
    assert out.applied_operations[-1]["extra_info"]["flipped"] is True
    np.testing.assert_array_equal(out[0].numpy(), tensor[0].numpy()[:, ::-1])
    np.testing.assert_array_equal(flipper.inverse(out)[0].numpy(), tensor[0].numpy())
    left = flipper(out.clone())  # already chest-wall-left: untouched
    assert left.applied_operations[-1]["extra_info"]["flipped"] is False


@pytest.mark.parametrize("target", [None, 0.4])
def test_pipeline_inverse_maps_heatmaps_back(synthetic_mammo, target):
    image = _image(synthetic_mammo)
    config = PreprocessConfig(target_spacing_mm=target, normalise_laterality=True)
    prepared = preprocess(image, config, window_grid=(256, 32))
    tensor, pipeline = prepared.tensor, prepared.pipeline
    assert tensor.shape[0] == 3 and tensor.shape[1] % 32 == 0 and tensor.shape[2] % 32 == 0
    if target:
        assert tuple(tensor.pixdim[:2].tolist()) == pytest.approx((target, target))
    heat = MetaTensor(torch.ones((10, *tensor.shape[1:])), meta=tensor.meta,
                      applied_operations=tensor.applied_operations)
    back = pipeline.inverse({"image": heat})["image"]
    assert back.shape == (10, *synthetic_mammo.pixels.shape)
    inside = back[0].numpy() > 0.5
    assert inside[synthetic_mammo.breast_mask].mean() > 0.98, "the breast maps back under the heatmap"
    assert inside.mean() < 0.999, "outside the crop stays zero"


def test_config_validation():
    from MammoPatchLib.errors import ConfigError

    with pytest.raises(ConfigError, match="clahe_scales"):
        PreprocessConfig(clahe_scales=[(0, 2)])
    with pytest.raises(ConfigError, match="unknown field"):
        PreprocessConfig.from_dict({"tile": 3})
    again = PreprocessConfig.from_dict(PreprocessConfig(target_spacing_mm=0.2).to_dict())
    assert again.target_spacing_mm == 0.2 and again.channels == 3


def test_otsu_crop_keeps_every_mias_finding(mias_root):
    """On the real films, every annotated finding's centre lies inside the crop, and the
    finding boxes are covered. MIAS circles of findings at the chest wall overhang the film's
    black border (mdb110: 68 % of its square lies on tissue), so the per-box bound is loose and
    the mean is tight."""
    from MammoPatchLib.datasets import read_mias

    coverage = []
    for record in [r for r in read_mias(mias_root) if r.findings]:
        image = read_mammogram(record.path, spacing_mm=0.2)
        c0, r0, c1, r1 = preprocess(image).analysed_box_in_source()
        for finding in record.findings:
            x, y = finding.centre
            assert c0 <= x <= c1 and r0 <= y <= r1, f"{record.image_id}: centre outside crop"
            x0, y0, x1, y1 = finding.box
            inter = max(0, min(x1, c1) - max(x0, c0)) * max(0, min(y1, r1) - max(y0, r0))
            coverage.append(inter / ((x1 - x0) * (y1 - y0)))
            assert coverage[-1] > 0.6, f"{record.image_id}: box mostly cropped away"
    assert np.mean(coverage) > 0.97
