"""Sliding-window inference: exact mode = the poster's window loop, geometry, fast mode
agreement, label map and findings, cancel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import probe_model, tiny_model_file
from MammoPatchLib.errors import Cancelled, ConfigError
from MammoPatchLib.inference import (Predictor, blend_kernel, exact_cell_heatmap, pad_for_windows,
                                     stitch_window_grid, window_count)
from MammoPatchLib.inference.agreement import mode_agreement
from MammoPatchLib.io import read_mammogram
from MammoPatchLib.io.image import ImageGeometry, MammogramImage
from MammoPatchLib.model_file import load_model
from MammoPatchLib.networks import PatchClassifier
from MammoPatchLib.synthetic import synthesize_mammogram


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_exact_mode_equals_a_hand_written_window_loop(blend):
    torch.manual_seed(0)
    net = PatchClassifier("efficientnet-lite0").eval()
    image = pad_for_windows(torch.rand(3, 300, 333))
    assert image.shape[1:] == (320, 352)
    stitched = exact_cell_heatmap(net, image, sw_batch_size=5, blend=blend)
    gh, gw = (image.shape[1] - 256) // 32 + 1, (image.shape[2] - 256) // 32 + 1
    assert gh * gw == window_count((300, 333))
    per_window = torch.zeros(10, gh, gw)
    with torch.no_grad():
        for i in range(gh):
            for j in range(gw):
                patch = image[None, :, 32 * i:32 * i + 256, 32 * j:32 * j + 256]
                per_window[:, i, j] = torch.sigmoid(net(patch))[0]
    kernel = blend_kernel(256, 32, blend)
    if blend == "gaussian":
        assert kernel[3:5, 3:5].min() > kernel[0, 0] * 5, "centre cells weigh most"
    # Hand-written stitching: each window adds its probabilities times the weights to its 8 x 8 cells.
    total = torch.zeros(10, gh + 7, gw + 7)
    weight = torch.zeros(gh + 7, gw + 7)
    for i in range(gh):
        for j in range(gw):
            total[:, i:i + 8, j:j + 8] += per_window[:, i, j, None, None] * kernel
            weight[i:i + 8, j:j + 8] += kernel
    expected = total / weight
    torch.testing.assert_close(stitch_window_grid(per_window, kernel), expected, atol=1e-6, rtol=1e-5)
    assert stitched.shape == expected.shape == (10, 320 // 32, 352 // 32)
    torch.testing.assert_close(stitched, expected, atol=1e-6, rtol=1e-5)
    # A corner cell is covered by one window only: its value is that window's probability.
    torch.testing.assert_close(stitched[:, 0, 0], per_window[:, 0, 0])


def _probe_image(seed=2):
    mammo = synthesize_mammogram((640, 512), 0.2, "L", "CC", ["round mass"], seed=seed)
    s = mammo.spacing_mm
    image = MammogramImage(pixels=mammo.pixels.astype(np.float32),
                           geometry=ImageGeometry(spacing=(s, s, 1.0), origin=(12.0, -7.5, 3.0)), path="probe")
    return mammo, image


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_label_map_and_findings_from_a_controlled_model(mode):
    mammo, image = _probe_image()
    result = Predictor(probe_model(), mode=mode, device="cpu").predict_image(image)
    assert result.heatmaps.shape == (10, 640, 512) and result.label_map.shape == (640, 512)
    x0, y0, x1, y1 = mammo.findings[0].box
    cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
    assert result.label_map[cy, cx] == 1, "the mass centre is labelled Mass (label 1)"
    masses = [f for f in result.findings if f.category == "Mass"]
    assert masses, "the mass is reported"
    best = masses[0]
    bx0, by0, bx1, by1 = best.box_px
    assert bx0 <= cx <= bx1 and by0 <= cy <= by1
    assert best.area_mm2 == pytest.approx(((result.label_map == 1) & _region(result, best)).sum() * 0.04, rel=0.01)
    assert not [f for f in result.findings if f.category != "Mass"], "the probe never fires other classes"
    far_from_mass = np.ones(result.label_map.shape, bool)
    far_from_mass[max(0, int(y0) - 200):int(y1) + 200, max(0, int(x0) - 200):int(x1) + 200] = False
    assert result.label_map[far_from_mass & ~mammo.breast_mask].max() == 0, "no label on the background"


def _region(result, finding):
    mask = np.zeros(result.label_map.shape, bool)
    x0, y0, x1, y1 = finding.box_px
    mask[y0:y1, x0:x1] = True
    return mask


def test_thresholds_and_class_selection_change_the_outputs():
    _, image = _probe_image()
    strict = Predictor(probe_model(), device="cpu", thresholds=[0.999] * 10).predict_image(image)
    assert not strict.findings and strict.label_map.max() == 0
    none = Predictor(probe_model(), device="cpu", classes=["Asymmetry"]).predict_image(image)
    assert not none.findings
    with pytest.raises(ConfigError, match="unknown class"):
        Predictor(probe_model(), classes=["Tumour"])
    with pytest.raises(ConfigError, match="thresholds"):
        Predictor(probe_model(), thresholds=[0.5])


def test_heatmaps_are_in_source_geometry_and_zero_outside_the_crop(tmp_path):
    from MammoPatchLib.outputs import write_result
    from MammoPatchLib.transforms import preprocess
    from MammoPatchLib.visualize import crop_box

    _, image = _probe_image()
    result = Predictor(probe_model(), device="cpu").predict_image(image)
    tensor, _ = preprocess(image)
    r0, r1, c0, c1 = crop_box(tensor)
    outside = np.ones(image.pixels.shape, bool)
    outside[r0:r1, c0:c1] = False
    assert result.heatmaps[:, outside].max() == 0.0
    written = write_result(result, tmp_path / "out")
    heat = read_mammogram(written["heatmaps"][0], min_side=0)
    assert heat.geometry.spacing == pytest.approx(image.geometry.spacing)
    assert heat.geometry.origin == pytest.approx(image.geometry.origin)
    np.testing.assert_allclose(heat.pixels, result.heatmaps[0], atol=1e-6)
    labels = read_mammogram(written["labelmap"][0], min_side=0)
    np.testing.assert_array_equal(labels.pixels, result.label_map)


def test_resampling_to_the_model_spacing_maps_back():
    """A model trained at 0.2 mm run on a 0.1 mm image: the response to a bright disk is found
    on the resampled image and lands back on the disk in source pixels."""
    yy, xx = np.mgrid[0:1280, 0:1024]
    pixels = np.where(((xx / 840.0) ** 2 + ((yy - 640) / 580.0) ** 2) < 1, 0.3, 0.0)
    pixels[(yy - 800) ** 2 + (xx - 440) ** 2 < 90**2] = 0.9
    image = MammogramImage(pixels=pixels.astype(np.float32), geometry=ImageGeometry(spacing=(0.1, 0.1, 1.0)))
    model = probe_model(spacing_mm=0.2)
    model.network.level = 0.5
    result = Predictor(model, device="cpu").predict_image(image)
    assert result.heatmaps.shape == (10, 1280, 1024)
    peak_row, peak_col = np.unravel_index(np.argmax(result.heatmaps[0]), result.heatmaps[0].shape)
    assert abs(peak_row - 800) <= 64 and abs(peak_col - 440) <= 64


def test_fast_mode_agreement_is_computed(tmp_path):
    _, image = _probe_image()
    exact = Predictor(probe_model(), mode="exact", device="cpu").predict_image(image)
    fast = Predictor(probe_model(), mode="fast", device="cpu").predict_image(image)
    agreement = mode_agreement(exact, fast)
    # The probe's dense rule is the same computation as its window rule: perfect agreement.
    assert agreement["Mass"]["pearson_r"] == pytest.approx(1.0, abs=1e-5)
    assert agreement["Mass"]["max_abs_diff"] < 1e-4 and agreement["Mass"]["same_findings"] == 1.0
    # A real CNN sees neighbouring tissue instead of zero padding at window borders: the figures
    # are measured, below perfect, and symmetric.
    model = load_model(tiny_model_file(tmp_path / "tiny.pt"))
    real_exact = Predictor(model, mode="exact", device="cpu").predict_image(image)
    real_fast = Predictor(model, mode="fast", device="cpu").predict_image(image)
    real = mode_agreement(real_exact, real_fast)
    r = np.array([v["pearson_r"] for v in real.values()])
    assert np.all((r > -1.0) & (r < 1.0 - 1e-6))
    reverse = mode_agreement(real_fast, real_exact)
    assert all(abs(reverse[c]["pearson_r"] - real[c]["pearson_r"]) < 1e-9 for c in real)


def test_cancel_stops_a_run():
    _, image = _probe_image()
    predictor = Predictor(probe_model(), device="cpu", sw_batch_size=1)
    calls = []

    def on_progress(fraction, text):
        calls.append(text)
        if text.startswith("windows 3/"):
            predictor.cancel()

    with pytest.raises(Cancelled):
        predictor.predict_image(image, on_progress=on_progress)
    assert calls[0] == "preprocessing" and not any(t.startswith("windows 5/") for t in calls)


def test_device_validation():
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            Predictor(probe_model(), device="cuda")
    with pytest.raises(ConfigError, match="device must be"):
        Predictor(probe_model(), device="tpu")
    with pytest.raises(ConfigError, match="mode"):
        Predictor(probe_model(), mode="turbo")


def test_python_api_on_an_array(tmp_path):
    from MammoPatchLib import predict

    mammo, _ = _probe_image()
    result = predict(mammo.pixels, model=probe_model(), spacing_mm=0.2, device="cpu")
    assert result.heatmaps.shape == (10, 640, 512) and any(f.category == "Mass" for f in result.findings)


def test_multi_scale_inference_averages_the_scales():
    """With scales (1, 2) the heatmaps are the mean of a 1x and a 2x run, in source geometry."""
    _, image = _probe_image()
    one = Predictor(probe_model(), device="cpu", scales=(1.0,)).predict_image(image)
    two = Predictor(probe_model(), device="cpu", scales=(2.0,)).predict_image(image)
    both = Predictor(probe_model(), device="cpu", scales=(1.0, 2.0)).predict_image(image)
    assert both.heatmaps.shape == one.heatmaps.shape == two.heatmaps.shape
    np.testing.assert_allclose(both.heatmaps, (one.heatmaps + two.heatmaps) / 2, atol=1e-6)
    assert not np.allclose(one.heatmaps, two.heatmaps)
    with pytest.raises(ConfigError, match="scales"):
        Predictor(probe_model(), scales=(0.0,))
