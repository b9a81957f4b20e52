"""Sliding-window inference: both Inferers against the poster's window loop, the geometry
chain, findings as detections, label map, test-time flip, multi-scale, cancel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import probe_model, tiny_model_file

from MammoPatchLib.errors import Cancelled, ConfigError
from MammoPatchLib.inference import (
    DenseInferer,
    ExactInferer,
    InferenceCallback,
    Predictor,
    blend_kernel,
    cells_to_source,
    stitch_window_grid,
    window_count,
)
from MammoPatchLib.inference.agreement import mode_agreement
from MammoPatchLib.io import read_mammogram
from MammoPatchLib.io.image import ImageGeometry, MammogramImage
from MammoPatchLib.model_file import LoadedModel, ModelInfo, build_network, load_model
from MammoPatchLib.networks import PatchClassifier
from MammoPatchLib.synthetic import synthesize_mammogram
from MammoPatchLib.transforms import PreprocessConfig, preprocess


def _window_loop(net, image):
    """The poster's inference written out: every 256 px window at a 32 px stride, one by one."""
    gh, gw = (image.shape[1] - 256) // 32 + 1, (image.shape[2] - 256) // 32 + 1
    out = torch.zeros(10, gh, gw)
    with torch.no_grad():
        for i in range(gh):
            for j in range(gw):
                patch = image[None, :, 32 * i:32 * i + 256, 32 * j:32 * j + 256]
                out[:, i, j] = torch.sigmoid(net.classify(patch))[0]
    return out


def _stitch_by_hand(per_window, kernel):
    gh, gw = per_window.shape[1:]
    total = torch.zeros(10, gh + 7, gw + 7)
    weight = torch.zeros(gh + 7, gw + 7)
    for i in range(gh):
        for j in range(gw):
            total[:, i:i + 8, j:j + 8] += per_window[:, i, j, None, None] * kernel
            weight[i:i + 8, j:j + 8] += kernel
    return total / weight


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_exact_inferer_equals_a_hand_written_window_loop(blend):
    torch.manual_seed(0)
    net = PatchClassifier("efficientnet-lite0").eval()
    image = torch.rand(3, 320, 352)  # 3 x 4 windows on the grid
    calls = []
    callback = InferenceCallback(lambda f, t: calls.append(t))
    stitched = ExactInferer(sw_batch_size=5, blend=blend)(image[None], net, callback)[0]
    per_window = _window_loop(net, image)
    assert per_window.shape[1] * per_window.shape[2] == window_count((300, 333)) == 12
    kernel = blend_kernel(256, 32, blend)
    if blend == "gaussian":
        assert kernel[3:5, 3:5].min() > kernel[0, 0] * 5, "centre cells weigh most"
    expected = _stitch_by_hand(per_window, kernel)
    torch.testing.assert_close(stitch_window_grid(per_window[None], kernel)[0], expected, atol=1e-6, rtol=1e-5)
    assert stitched.shape == expected.shape == (10, 10, 11)
    torch.testing.assert_close(stitched, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(stitched[:, 0, 0], per_window[:, 0, 0]), "a corner cell has one window"
    assert calls[-1] == "windows 12/12" and len(calls) == 3, "progress after every batch of 5 windows"


def test_dense_inferer_stitches_the_dense_pass_like_exact_mode():
    """One forward of the whole image gives every window's logits (same network, same head);
    the dense inferer stitches them with the same weights as the exact one."""
    torch.manual_seed(0)
    net = PatchClassifier("efficientnet-lite0", pretrained=True).eval()  # ImageNet features vary with the input
    image = torch.rand(1, 3, 288, 320)
    with torch.no_grad():
        logits = net(image)
    assert logits.shape == (1, 10, 2, 3)
    dense = DenseInferer()(image, net)[0]
    torch.testing.assert_close(dense, stitch_window_grid(torch.sigmoid(logits), blend_kernel())[0])
    # Windows alone see zero padding at their borders: the two modes differ for a real CNN...
    exact = ExactInferer()(image, net)[0]
    assert (dense - exact).abs().max() > 1e-4
    # ...but not for a network without padding effects (the probe): then they are equal.
    probe = probe_model().network
    torch.testing.assert_close(DenseInferer()(image, probe), ExactInferer()(image, probe), atol=1e-6, rtol=1e-5)


def _probe_image(seed=2, shape=(640, 512), spacing=0.2):
    mammo = synthesize_mammogram(shape, spacing, "L", "CC", ["round mass"], seed=seed)
    image = MammogramImage(pixels=mammo.pixels.astype(np.float32),
                           geometry=ImageGeometry(spacing=(spacing, spacing, 1.0), origin=(12.0, -7.5, 3.0)),
                           path="probe")
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
    assert len(masses) == 1, "one mass, one finding"
    best = masses[0]
    bx0, by0, bx1, by1 = best.box_px
    assert bx0 <= cx <= bx1 and by0 <= cy <= by1
    assert abs(best.peak_px[0] - cx) < 40 and abs(best.peak_px[1] - cy) < 40
    assert best.area_mm2 == pytest.approx((result.label_map == 1).sum() * 0.04, rel=0.01)
    assert not [f for f in result.findings if f.category != "Mass"], "the probe never fires other classes"
    labelled_rows, labelled_cols = np.nonzero(result.label_map)
    assert labelled_cols.min() >= bx0 and labelled_cols.max() < bx1 and labelled_rows.min() >= by0, \
        "the label map paints the finding's region, inside its box"


def test_exact_and_fast_modes_agree_for_a_network_without_padding_effects():
    _, image = _probe_image()
    exact = Predictor(probe_model(), mode="exact", device="cpu").predict_image(image)
    fast = Predictor(probe_model(), mode="fast", device="cpu").predict_image(image)
    agreement = mode_agreement(exact, fast)
    assert agreement["Mass"]["pearson_r"] == pytest.approx(1.0, abs=1e-5)
    assert agreement["Mass"]["max_abs_diff"] < 1e-4 and agreement["Mass"]["same_findings"] == 1.0


def test_two_masses_far_apart_give_two_tight_boxes_and_one_blob_gives_one():
    mammo = synthesize_mammogram((768, 640), 0.2, "L", "CC", [], seed=5)
    pixels = mammo.pixels.astype(np.float32)
    yy, xx = np.mgrid[0:768, 0:640]
    centres = [(230, 230), (560, 420)]
    bright = pixels[mammo.breast_mask].max() * 1.3
    for cy, cx in centres:
        pixels[(yy - cy) ** 2 + (xx - cx) ** 2 < 40 ** 2] = bright
    image = MammogramImage(pixels=pixels, geometry=ImageGeometry(spacing=(0.2, 0.2, 1.0)))
    result = Predictor(probe_model(), mode="fast", device="cpu").predict_image(image)
    masses = [f for f in result.findings if f.category == "Mass"]
    assert len(masses) == 2, [f.box_px for f in masses]
    for (cy, cx) in centres:
        hit = [f for f in masses if f.box_px[0] <= cx <= f.box_px[2] and f.box_px[1] <= cy <= f.box_px[3]]
        assert len(hit) == 1, "each mass has its own box"
        x0, y0, x1, y1 = hit[0].box_px
        assert x1 - x0 < 256 and y1 - y0 < 256, "boxes are at most a window across, not one region over both"
    # One blurred peak: a single box.
    from MammoPatchLib.postprocess import detect_findings

    grid = np.zeros((10, 64, 64), np.float32)
    gy, gx = np.mgrid[0:64, 0:64]
    grid[0] = 0.9 * np.exp(-((gy - 30) ** 2 + (gx - 25) ** 2) / (2 * 6.0 ** 2))
    found, regions = detect_findings(grid, [f"c{k}" for k in range(10)], [0.3] * 10, 8, (0.2, 0.2), (512, 512))
    assert len(found) == 1 and found[0].peak_px == (25 * 8 + 4, 30 * 8 + 4)
    assert found[0].score == pytest.approx(0.9)
    # The image gate: no findings on an image whose highest reported heatmap value is below it;
    # an unreported class (threshold inf) does not lift an image over the gate.
    from MammoPatchLib.postprocess import DetectionConfig

    def gated(gate, thresholds):
        return detect_findings(grid, [f"c{k}" for k in range(10)], thresholds, 8, (0.2, 0.2), (512, 512),
                               DetectionConfig(image_threshold=gate))

    assert len(gated(0.85, [0.3] * 10)[0]) == 1
    assert gated(0.95, [0.3] * 10) == ([], [])
    grid[1] = 0.99
    assert gated(0.95, [0.3] + [float("inf")] * 9) == ([], [])
    assert [f.category for f in gated(0.95, [0.3, 0.3] + [float("inf")] * 8)[0]] == ["c1", "c0"]
    with pytest.raises(ValueError, match="invalid detection"):
        DetectionConfig(image_threshold=1.5)


def test_one_class_per_place_reports_a_place_once_as_its_best_class():
    """With ``one_class_per_place`` a weaker class at a place another class already reports is
    dropped, while the same class elsewhere is kept; without it both classes are reported."""
    from MammoPatchLib.postprocess import DetectionConfig, detect_findings

    gy, gx = np.mgrid[0:64, 0:64]

    def blob(cy, cx, height):
        return height * np.exp(-((gy - cy) ** 2 + (gx - cx) ** 2) / (2 * 5.0 ** 2))

    grid = np.zeros((10, 64, 64), np.float32)
    grid[0] = blob(30, 25, 0.9)
    grid[2] = blob(31, 26, 0.6) + blob(10, 52, 0.7)
    names = [f"c{k}" for k in range(10)]

    def found(one_class: bool):
        findings, regions = detect_findings(grid, names, [0.3] * 10, 8, (0.2, 0.2), (512, 512),
                                            DetectionConfig(one_class_per_place=one_class))
        assert len(findings) == len(regions)
        return [(f.category, round(f.score, 2)) for f in findings]

    assert found(False) == [("c0", 0.9), ("c2", 0.7), ("c2", 0.6)]
    assert found(True) == [("c0", 0.9), ("c2", 0.7)]
    # a class's cap counts only the places it keeps: with one finding per class, c2's place
    # elsewhere survives its suppressed place under c0
    capped = detect_findings(grid, names, [0.3] * 10, 8, (0.2, 0.2), (512, 512),
                             DetectionConfig(one_class_per_place=True, max_per_class=1))[0]
    assert [(f.category, round(f.score, 2)) for f in capped] == [("c0", 0.9), ("c2", 0.7)]
    grid[2] = blob(31, 26, 0.8) + blob(10, 52, 0.4)
    capped = detect_findings(grid, names, [0.3] * 10, 8, (0.2, 0.2), (512, 512),
                             DetectionConfig(one_class_per_place=True, max_per_class=1))[0]
    assert [(f.category, round(f.score, 2)) for f in capped] == [("c0", 0.9), ("c2", 0.4)]
    with pytest.raises(ValueError, match="invalid detection"):
        DetectionConfig(one_class_per_place="false")


def test_geometry_chain_maps_heatmaps_like_the_step_by_step_inverse():
    """The separable mapping of cell heatmaps through the chain's index matrix equals MONAI's
    step-by-step inverse of the same chain (resampling, crop, flip, window padding)."""
    mammo = synthesize_mammogram((700, 560), 0.1, "R", "MLO", ["round mass"], seed=4)
    image = MammogramImage(pixels=mammo.pixels.astype(np.float32), geometry=ImageGeometry(spacing=(0.1, 0.1, 1.0)))
    prepared = preprocess(image, PreprocessConfig(target_spacing_mm=0.2, normalise_laterality=True),
                          window_grid=(256, 32))
    h, w = prepared.tensor.shape[1:]
    torch.manual_seed(3)
    cells = torch.rand(2, h // 32, w // 32)
    ours = cells_to_source(cells, prepared, 32).numpy()
    # Reference: cells -> preprocessed pixels (bilinear, clamped edges) -> MONAI inverse.
    from monai.data import MetaTensor

    full = torch.nn.functional.interpolate(cells[None], scale_factor=32, mode="bilinear", align_corners=False)[0]
    heat = MetaTensor(full, meta=prepared.tensor.meta, applied_operations=prepared.tensor.applied_operations)
    reference = prepared.pipeline.inverse({"image": heat})["image"].numpy()
    assert ours.shape == reference.shape == (2, 700, 560)
    x0, y0, x1, y1 = prepared.analysed_box_in_source()
    inner = np.zeros(ours.shape[1:], bool)
    inner[y0 + 2:y1 - 2, x0 + 2:x1 - 2] = True
    np.testing.assert_allclose(ours[:, inner], reference[:, inner], atol=0.03)
    assert np.abs(ours[:, inner] - reference[:, inner]).mean() < 2e-3
    assert ours[:, ~np.pad(np.ones((y1 - y0, x1 - x0), bool), ((y0, 700 - y1), (x0, 560 - x1)))].max() == 0.0
    # Boxes go there and back.
    box = np.array([mammo.findings[0].box])
    np.testing.assert_allclose(prepared.boxes_to_source(prepared.boxes_to_processed(box, clip=False)), box,
                               atol=1e-6)


def test_heatmaps_are_in_source_geometry_and_zero_outside_the_crop(tmp_path):
    from MammoPatchLib.results.files import OutputOptions, write_result

    _, image = _probe_image()
    result = Predictor(probe_model(), device="cpu").predict_image(image)
    x0, y0, x1, y1 = preprocess(image).analysed_box_in_source()
    outside = np.ones(image.pixels.shape, bool)
    outside[y0:y1, x0:x1] = False
    assert outside.any() and result.heatmaps[:, outside].max() == 0.0
    written = write_result(result, tmp_path / "out", options=OutputOptions(full_resolution_heatmaps=True))
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
    assert result.findings and abs(result.findings[0].peak_px[0] - 440) <= 64


def test_fast_and_exact_agreement_of_a_real_cnn_is_measured(tmp_path):
    _, image = _probe_image()
    model = load_model(tiny_model_file(tmp_path / "tiny.pt"))
    exact = Predictor(model, mode="exact", device="cpu").predict_image(image)
    fast = Predictor(model, mode="fast", device="cpu").predict_image(image)
    agreement = mode_agreement(exact, fast)
    r = np.array([v["pearson_r"] for v in agreement.values()])
    assert np.all(np.isfinite(r)) and np.all(r < 1.0 - 1e-6), "border padding vs context is measured, not hidden"
    manual = np.corrcoef(exact.heatmaps[0][exact.heatmaps.max(0) > 0], fast.heatmaps[0][exact.heatmaps.max(0) > 0])
    assert agreement["Mass"]["pearson_r"] == pytest.approx(manual[0, 1], abs=1e-6)


def test_flip_tta_averages_the_image_and_its_mirror():
    """With flip_tta the cell heatmap is the mean of the image's and the mirrored image's
    (mirrored back), in both modes (a small image: exact mode runs a real CNN window by window)."""
    _, image = _probe_image(shape=(384, 320))
    torch.manual_seed(0)
    model = load_model(tiny_model_file_pretrained())
    for mode in ("fast", "exact"):
        plain = Predictor(model, mode=mode, device="cpu")
        tta = Predictor(model, mode=mode, device="cpu", flip_tta=True)
        cells = plain.cell_heatmaps(image).cells
        batch = preprocess(image, model.info.preprocess_config(), window_grid=(256, 32)).tensor.as_tensor()[None]
        mirrored = torch.flip(plain.inferer(torch.flip(batch, dims=(-1,)), model.network)[0], dims=(-1,))
        torch.testing.assert_close(tta.cell_heatmaps(image).cells, 0.5 * (cells + mirrored), atol=1e-5, rtol=1e-4)
        assert (mirrored - cells).abs().max() > 1e-3, "a real CNN is not mirror-symmetric: the flip matters"


def tiny_model_file_pretrained():
    import tempfile
    from pathlib import Path

    from MammoPatchLib.model_file import ModelInfo, build_network, save_model

    path = Path(tempfile.mkdtemp()) / "pretrained.pt"
    info = ModelInfo(trained=False)
    save_model(build_network(info, pretrained=True), info, path)
    return path


def test_cancel_stops_a_run():
    _, image = _probe_image()
    predictor = Predictor(probe_model(), mode="exact", device="cpu", sw_batch_size=1)
    calls = []

    def on_progress(fraction, text):
        calls.append(text)
        if text.startswith("windows 3/"):
            predictor.cancel()

    with pytest.raises(Cancelled, match="probe"):
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
    with pytest.raises(ConfigError, match="thresholds"):
        Predictor(probe_model(), thresholds=[float("nan")] * 10)


def test_python_api_on_an_array():
    from MammoPatchLib import predict

    mammo, _ = _probe_image()
    result = predict(mammo.pixels, model=probe_model(), spacing_mm=0.2, device="cpu")
    assert result.heatmaps.shape == (10, 640, 512) and any(f.category == "Mass" for f in result.findings)


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
    with pytest.raises(ConfigError, match="scales"):
        Predictor(probe_model(), scales=(float("nan"),))


class _CellsWithReach(torch.nn.Module):
    """A per-cell network whose cell outputs read ``reach`` cells of image on each side (two
    3 x 3 convolutions over 32 px cells: reach 2, i.e. 64 px), zero-padded at its input's edge
    like a CNN."""

    per_cell = True

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.pool = torch.nn.AvgPool2d(32)
        self.convs = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Tanh(),
                                         torch.nn.Conv2d(8, 10, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 4.0 * self.convs(self.pool(x))


@pytest.mark.parametrize("shape", [(1, 3, 704, 576), (2, 3, 256, 832)])
def test_exact_mode_sees_each_window_in_context_and_equals_the_dense_pass(shape):
    """Each window's cells are computed from a view that holds their receptive field (and up to
    the image border where the view reaches it), so exact equals dense; seen without enough
    context (a window's own 256 px), the cells near each window's edge differ."""
    network = _CellsWithReach().eval()
    image = torch.rand(*shape)
    image[..., :64, :] = 0.0  # structure: the zero-padding at a window's edge then matters
    dense = DenseInferer(amp=False)(image, network)
    calls = []
    exact = ExactInferer(sw_batch_size=3, amp=False, context=64)(image, network,
                                                               InferenceCallback(lambda f, t: calls.append(t)))
    assert exact.shape == dense.shape == (shape[0], 10, shape[2] // 32, shape[3] // 32)
    torch.testing.assert_close(exact, dense, atol=1e-6, rtol=1e-5)
    assert calls and calls[-1].startswith("windows") and calls[-1].split()[1].split("/")[0] == \
        calls[-1].split("/")[1], "progress counts the views up to their total"
    short = ExactInferer(sw_batch_size=3, amp=False, context=32)(image, network)
    assert (short - dense).abs().max() > 1e-3, "too little context is visible, not hidden"


def test_exact_and_fast_heatmaps_of_a_cell_head_ensemble_agree():
    """The bundled model's kind (ImageNet Lite0 trunk, ensemble of heads each with its own tuned
    last stage, 3 x 3 cell head) through the Predictor: the modes agree on a real CNN whose
    reach is wider than a 256 px window (before the windows saw context: r ~0.8)."""
    torch.manual_seed(4)
    info = ModelInfo(head="cell", neighbourhood=3, bottleneck=8, hidden=16, ensemble=2, tuned_stages=1,
                     spacing_mm=0.2, trained=False)
    model = LoadedModel(network=build_network(info, pretrained=True).eval(), info=info, path="<cells>", sha256="")
    _, image = _probe_image(shape=(832, 320))  # 800 x 256 px preprocessed: two views of 768 px
    exact = Predictor(model, mode="exact", device="cpu", flip_tta=False).predict_image(image)
    fast = Predictor(model, mode="fast", device="cpu", flip_tta=False).predict_image(image)
    agreement = mode_agreement(exact, fast)
    assert min(v["pearson_r"] for v in agreement.values()) > 0.999
    assert max(v["max_abs_diff"] for v in agreement.values()) < 0.01
