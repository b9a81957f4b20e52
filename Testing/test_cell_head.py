"""The cell head, its training on cached features, and cross-validation by woman."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from MammoPatchLib.datasets import Finding, ImageRecord
from MammoPatchLib.datasets.splits import folds_by_patient, read_fold_file, write_fold_file
from MammoPatchLib.errors import AnnotationError, MammoPatchError
from MammoPatchLib.evaluation.lesions import ImageCase
from MammoPatchLib.evaluation.paired import paired_difference
from MammoPatchLib.inference.inferers import DenseInferer, ExactInferer
from MammoPatchLib.networks import CellHead, PatchClassifier
from MammoPatchLib.training.cell_head_fit import fit_cell_head
from MammoPatchLib.training.recipe import Recipe
from MammoPatchLib.training.cell_targets import cell_targets
from MammoPatchLib.training.feature_cache import CachedImage, CellGeometry

IDENTITY = CellGeometry(((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)), (320, 320), (320, 320))


class CellLocal(nn.Module):
    """A per-cell network whose output at a cell depends on that cell's pixels alone, so a
    window's block of cells equals the same cells of the whole-image pass."""

    per_cell = True

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(32)
        self.mix = nn.Conv2d(3, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.pool(x))


def test_exact_mode_stitches_each_windows_block_of_cells():
    torch.manual_seed(0)
    network = CellLocal().eval()
    image = torch.rand(1, 3, 384, 320)
    exact = ExactInferer(256, 32, sw_batch_size=7, amp=False)(image, network)
    dense = DenseInferer(256, 32, amp=False)(image, network)
    assert exact.shape == dense.shape == (1, 10, 12, 10)
    assert torch.allclose(exact, dense, atol=1e-5)
    assert dense[0, 0].std() > 0  # cells differ: not one value painted over a window


def test_cell_head_model_outputs_one_value_per_cell_and_window_head_stays():
    cell = PatchClassifier(head="cell", neighbourhood=3, bottleneck=8, hidden=16).eval()
    window = PatchClassifier(head="window").eval()
    x = torch.rand(1, 3, 320, 288)
    with torch.no_grad():
        assert cell(x).shape == (1, 10, 10, 9) and cell.per_cell
        assert window(x).shape == (1, 10, 3, 2) and not window.per_cell
        assert cell.classify(torch.rand(2, 3, 256, 256)).shape == (2, 10)
    with pytest.raises(ValueError, match="odd"):
        CellHead(16, 10, neighbourhood=2)


def test_lite_features_before_a_cut_then_the_tuned_stages_are_the_backbone():
    from MammoPatchLib.networks import TunedStages

    net = PatchClassifier(pretrained=True).eval()
    x = torch.rand(1, 3, 256, 224)
    with torch.no_grad():
        whole = net.features(x)
        for cut in (1, 2, 3):
            stages = TunedStages(net.features, cut).eval()
            assert torch.allclose(stages(net.features.features_before(x, cut)), whole, atol=1e-5)


def _record(findings=(), labels=(), image_id="a", patient="w1") -> ImageRecord:
    return ImageRecord(path=Path(f"{image_id}.png"), image_id=image_id, patient_id=patient,
                       findings=list(findings), image_labels=list(labels))


def test_cell_targets_mark_the_lesion_cell_ignore_its_rim_and_image_level_labels():
    classes = ["Mass", "Suspicious Calcification", "Asymmetry"]
    mass = Finding("Mass", (150.0, 150.0, 180.0, 180.0))  # centre (165, 165): cell (5, 5)
    record = _record([mass], labels=["Suspicious Calcification"])
    targets, mask = cell_targets(record, IDENTITY, (10, 10), classes, ["Mass", "Suspicious Calcification"],
                                 radius_px=20, ignore_px=32)
    assert targets[0, 5, 5] == 1 and mask[0, 5, 5]
    assert targets[0].sum() == 1  # radius 20 px reaches only the cell whose centre is 7 px away
    assert not mask[0, 5, 6] and not mask[0, 4, 5]  # the next cells (25 px away) are the ignore band
    assert mask[0, 0, 0] and targets[0, 0, 0] == 0  # far away: a negative
    assert not mask[1].any()  # an image-level calcification: no cell can say yes or no
    assert not mask[2].any()  # a class not trained


def test_folds_keep_women_together_spread_classes_and_round_trip(tmp_path):
    records = []
    for w in range(20):
        findings = [Finding("Mass", (0, 0, 10, 10))] if w % 4 == 0 else []
        records += [_record(findings, image_id=f"i{w}a", patient=f"w{w}"), _record(image_id=f"i{w}b", patient=f"w{w}")]
    folds = folds_by_patient(records, 5, seed=3)
    assert sorted(set(folds.values())) == [0, 1, 2, 3, 4]
    assert sorted(np.bincount(list(folds.values()))) == [4] * 5
    mass_women = [f"w{w}" for w in range(0, 20, 4)]
    assert sorted(folds[w] for w in mass_women) == [0, 1, 2, 3, 4]  # one woman with a mass in each fold
    path = tmp_path / "folds.csv"
    write_fold_file(records, folds, path)
    by_image = read_fold_file(path)
    assert all(by_image[r.image_id] == folds[r.patient_id] for r in records)
    path.write_text("image_id,patient_id,fold\na,w1,0\nb,w1,1\n", encoding="utf-8")
    with pytest.raises(AnnotationError, match="two folds"):
        read_fold_file(path)
    with pytest.raises(ValueError, match="cannot fill"):
        folds_by_patient(records[:4], 5)


def _case(i: int, hit: bool, score: float = 0.9) -> ImageCase:
    truth = (10.0, 10.0, 30.0, 30.0)
    box = truth if hit else (200.0, 200.0, 220.0, 220.0)
    return ImageCase(f"im{i}", f"w{i // 2}", True, score, {"Mass": [(score, box, ((box[0] + box[2]) / 2,
                                                                                   (box[1] + box[3]) / 2))]},
                     {"Mass": [truth]})


def test_paired_difference_is_zero_for_a_model_against_itself_and_positive_for_a_better_one():
    worse = [_case(i, hit=i % 3 == 0) for i in range(24)]
    better = [_case(i, hit=i % 3 != 2) for i in range(24)]
    same = paired_difference(worse, worse, ["Mass"], draws=100)
    assert same["sens@1"]["difference"] == 0 and same["sens@1"]["low"] == same["sens@1"]["high"] == 0
    gain = paired_difference(worse, better, ["Mass"], draws=200)
    assert gain["sens@4"]["difference"] > 0.2 and gain["sens@4"]["low"] > 0 and gain["sens@4"]["share_better"] > 0.95
    with pytest.raises(MammoPatchError, match="same images"):
        paired_difference(worse, better[:-1], ["Mass"])


def test_any_finding_counts_a_wrong_class_on_a_lesion_as_found_and_one_place_once():
    """Class-matched, a Mass finding on an asymmetry is a false positive and the asymmetry is
    missed; class-agnostic, it finds it, and two classes' findings at one place are one."""
    from MammoPatchLib.evaluation.lesions import ANY_FINDING, any_finding_case, lesion_metrics

    truth = (100.0, 100.0, 140.0, 140.0)
    on_lesion = (0.9, (98.0, 98.0, 138.0, 138.0), (120.0, 120.0))
    same_place = (0.5, (102.0, 102.0, 142.0, 142.0), (121.0, 121.0))
    elsewhere = (0.4, (300.0, 300.0, 330.0, 330.0), (315.0, 315.0))
    case = ImageCase("i0", "w0", True, 0.9, {"Mass": [on_lesion, elsewhere], "Asymmetry": [same_place]},
                     {"Asymmetry": [truth]})
    classes = ["Mass", "Asymmetry"]
    merged = any_finding_case(case, classes)
    assert merged.detections[ANY_FINDING] == [on_lesion, elsewhere]
    assert merged.truths[ANY_FINDING] == [truth]
    anywhere = lesion_metrics([merged], [ANY_FINDING])["all_classes_froc"]
    matched = lesion_metrics([case], classes)["all_classes_froc"]
    assert anywhere["0.25"] == 1.0  # found by its highest finding, before any false positive
    assert matched["0.25"] == 0.0 and matched["1"] == 1.0  # the Mass finding costs one false positive first


def test_the_image_gate_keeps_the_share_of_normal_images_with_a_finding_within_the_limit():
    """The lowest gate that keeps at most the asked share of normal images with a finding,
    abnormal images judged by the same gate; a gate needs the Predictor's image score."""
    from MammoPatchLib.errors import ConfigError
    from MammoPatchLib.evaluation.lesions import ImageCase, gated, image_gate

    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    normal = [ImageCase(f"n{k}", f"w{k}", False, s, {"Mass": [(s, (0, 0, 9, 9), (4, 4))] if k < 7 else []})
              for k, s in enumerate(scores)]
    abnormal = [ImageCase(f"a{k}", f"wa{k}", True, s, {"Mass": [(s, (0, 0, 9, 9), (4, 4))]})
                for k, s in enumerate((0.65, 0.55))]
    gate = image_gate(normal + abnormal, 0.3)
    kept = [gated(c, gate) for c in normal]
    assert sum(bool(c.detections["Mass"]) for c in kept) == 3  # 30 % of 10 normal images
    assert gate > 0.6 and gate == pytest.approx(0.6)  # the lowest such gate: just above the 4th normal
    assert [bool(gated(c, gate).detections["Mass"]) for c in abnormal] == [True, False]
    assert image_gate(normal, 0.7) == 0.0  # 7 flagged of 10: no gate needed
    with pytest.raises(ConfigError, match="needs image_score 'max'"):
        Recipe(normal_with_finding=0.35, image_score="top-k")


@pytest.mark.parametrize("hidden", [16, 0])
def test_a_fitted_head_becomes_the_networks_cell_head(hidden):
    torch.manual_seed(0)
    features = torch.randn(2, 1280, 10, 10).half()
    mass = Finding("Mass", (150.0, 150.0, 180.0, 180.0))
    images = [CachedImage(_record([mass], image_id=f"i{k}"), features + 0.1 * k, IDENTITY) for k in range(3)]
    recipe = Recipe(classes=["Mass"], bottleneck=8, hidden=hidden, epochs=2, negatives_per_epoch=64)
    fitted = fit_cell_head(images, recipe, ["Mass", "Asymmetry"])
    head = fitted.to_head(1280)
    with torch.no_grad():
        direct = head(images[0].features.float())
    from_cache = fitted.cell_logits(images[0])
    assert torch.allclose(direct, from_cache, atol=2e-2), (direct - from_cache).abs().max()


def test_a_fitted_window_head_becomes_the_posters_window_head():
    """The poster's head trained the same way: its heatmap from the cache equals the dense
    pass's stitched windows of the network it becomes."""
    torch.manual_seed(1)
    features = torch.randn(2, 1280, 12, 11).half()
    mass = Finding("Mass", (150.0, 150.0, 180.0, 180.0))
    images = [CachedImage(_record([mass], image_id=f"i{k}"), features + 0.1 * k, IDENTITY) for k in range(3)]
    recipe = Recipe(head="window", radius_px=48, classes=["Mass"], bottleneck=8, hidden=16, epochs=2,
                            negatives_per_epoch=16)
    fitted = fit_cell_head(images, recipe, ["Mass", "Asymmetry"])
    head = fitted.to_head(1280)
    from MammoPatchLib.inference.windows import blend_kernel, stitch_window_grid

    with torch.no_grad():
        dense = stitch_window_grid(torch.sigmoid(head(images[0].features[:1].float())), blend_kernel())[0]
    assert dense.shape == (2, 12, 11)
    assert torch.allclose(dense, fitted.cell_probabilities(images[0], flip_tta=False), atol=1e-2)


@pytest.fixture(scope="module")
def crossval_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cv")
    recipe = {"name": "tiny", "bottleneck": 8, "hidden": 16, "epochs": 2, "negatives_per_epoch": 256,
              "classes": ["Mass", "Suspicious Calcification"], "seeds": 2}
    config = out / "tiny.json"
    config.write_text(json.dumps(recipe), encoding="utf-8")
    import contextlib
    import io

    from MammoPatchLib.cli import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # in this process: the same code path without a start-up
        code = main(["crossval", "--config", str(config), "--data", "synthetic:4", "--folds", "2",
                     "--out", str(out / "report"), "--draws", "20", "--no-progress", "--model-out", str(out / "model.pt")])
    assert code == 0
    return out, printed.getvalue()


def test_crossval_command_writes_folds_report_plot_and_a_model(crossval_run):
    out, stdout = crossval_run
    report = json.loads((out / "report" / "crossval.json").read_text(encoding="utf-8"))
    row = report["recipes"]["tiny"]
    assert set(row["sensitivity_at_fp"]) == {"0.25", "0.5", "1", "2", "4"}
    assert len(row["per_fold"]) == 2 and sum(f["images"] for f in row["per_fold"]) == row["images"] == 16
    assert row["women"] == 4 and "sens@1" in row["intervals"]
    assert set(row["any_finding"]["sensitivity_at_fp"]) == {"0.25", "0.5", "1", "2", "4"}
    assert all(row["any_finding"]["sensitivity_at_fp"][r] >= row["sensitivity_at_fp"][r] for r in ("1", "4"))
    assert set(row["operating"]["thresholds_by_fold"]) == {"0", "1"}
    other = row["other_breast"]
    assert other["paired_images"] == 16 and other["interval"][0] <= other["image_auc"] <= other["interval"][1]
    assert "image AUC vs other breast" in (out / "report" / "crossval.md").read_text(encoding="utf-8")
    assert (out / "report" / "froc.png").stat().st_size > 1000
    assert "tiny" in (out / "report" / "crossval.md").read_text(encoding="utf-8")
    folds = read_fold_file(out / "report" / "folds.csv")
    assert len(folds) == 16 and set(folds.values()) == {0, 1}

    from MammoPatchLib.model_file import load_model

    model = load_model(out / "model.pt")
    assert model.info.head == "cell" and model.info.ensemble == 4  # 2 folds x 2 seeds
    assert model.info.training["cross_validation"]["images"] == 16
    assert "sensitivity at 1 FP/image" in stdout
    card = (out / "model.md").read_text(encoding="utf-8")
    assert "pooled out-of-fold" in card and "tiny" in card and "--folds 2" in card
    assert "(2 folds x 2 seeds)" in card
    assert "read against the same view of her other breast" in card and "Both breasts of a view read together" in card
    assert "any finding at 1 FP/image" in card
    point = model.info.inference.other_breast  # the synthetic women have both breasts of each view
    assert point.active and len(point.thresholds) == 10
    assert "findings vs other breast" in (out / "report" / "crossval.md").read_text(encoding="utf-8")
    assert set(other["findings"]["sensitivity_at_fp"]) == {"0.25", "0.5", "1", "2", "4"}
    assert "difference" in other["findings"]["any_finding"]["paired_vs_plain"]


def test_a_crossval_model_records_which_women_trained_each_member(crossval_run):
    """The bundle's provenance: the recipe, every training image with its hash, the fold file
    by name and hash, and each member's women: the other fold's, for both seeds of a fold."""
    import hashlib

    from MammoPatchLib.model_file import identity_sha256, load_model

    out, _ = crossval_run
    made = load_model(out / "model.pt").info.provenance
    folds = read_fold_file(out / "report" / "folds.csv")
    women_of = {}
    for line in (out / "report" / "folds.csv").read_text(encoding="utf-8").splitlines()[1:]:
        image, woman, fold = line.split(",")
        women_of.setdefault(int(fold), set()).add(woman)
    assert made.recipe["name"] == made.recipe_name == "tiny" and made.recipe["seeds"] == 2
    assert made.images == sorted(folds) and made.images_sha256 == identity_sha256(sorted(folds))
    assert made.fold_file == "folds.csv of the crossval output"
    assert made.fold_file_sha256 == hashlib.sha256((out / "report" / "folds.csv").read_bytes()).hexdigest()
    assert [set(m) for m in made.members] == [women_of[1], women_of[1], women_of[0], women_of[0]]
    assert set(made.selected_on) == women_of[0] | women_of[1]
    card = (out / "model.md").read_text(encoding="utf-8")
    assert "**Provenance**: recipe `tiny`, trained on 16 images of 4 women" in card
    assert f"women divided by folds.csv of the crossval output (SHA-256 {made.fold_file_sha256[:12]}...)" in card
    assert "window head" not in card and "n/a of n/a" not in card


def test_films_without_a_side_pair_only_when_a_woman_has_two_of_the_view():
    """mini-MIAS states no side: a woman's two films are her two breasts; three films of one
    view, or sides from the file, are not guessed at."""
    from MammoPatchLib.datasets import ImageRecord
    from MammoPatchLib.evaluation.out_of_fold import record_breast_keys

    def record(image_id, woman, side="", view="MLO"):
        return ImageRecord(path=f"{image_id}.png", image_id=image_id, patient_id=woman, laterality=side,
                           view_position=view)

    keys = record_breast_keys([record("m1", "w1"), record("m2", "w1"), record("t1", "w2"), record("t2", "w2"),
                               record("t3", "w2"), record("d1", "w3", "L"), record("d2", "w3", "R")])
    assert keys["m1"][:2] == keys["m2"][:2] and keys["m1"][2] != keys["m2"][2]
    assert keys["t1"] is None and keys["t3"] is None
    assert keys["d1"] == ("w3", "MLO", "L")


def test_the_ensemble_model_runs_in_both_modes_with_activation_maps(crossval_run, tmp_path):
    out, _ = crossval_run
    from MammoPatchLib.activation import activation_maps
    from MammoPatchLib.inference import Predictor
    from MammoPatchLib.model_file import load_model
    from MammoPatchLib.synthetic import synthesize_mammogram

    model = load_model(out / "model.pt")
    from MammoPatchLib.io.image import ImageGeometry, MammogramImage

    phantom = synthesize_mammogram(shape=(480, 400), spacing_mm=0.2, seed=5)
    image = MammogramImage(pixels=phantom.pixels.astype(np.float32), geometry=ImageGeometry(spacing=(0.2, 0.2, 1.0)))
    fast = Predictor(model, mode="fast", device="cpu", thresholds=[0.0] * 10)
    exact = Predictor(model, mode="exact", device="cpu", thresholds=[0.0] * 10)
    a, b = fast.predict_image(image), exact.predict_image(image)
    assert a.heatmaps.shape == b.heatmaps.shape == (10, 480, 400)
    r = np.corrcoef(a.grid_heatmaps[0].ravel(), b.grid_heatmaps[0].ravel())[0, 1]
    assert r > 0.5, r  # the same cells seen with and without the neighbouring tissue
    maps = activation_maps(fast, image, a, count=1)
    assert len(maps) == 1 and maps[0].source_map.shape == (480, 400)


def test_out_of_fold_findings_equal_the_predict_path(crossval_run, tmp_path):
    """A fold head saved as a model and run by the Predictor on a held-out image gives the
    findings cross-validation scored from the cached features."""
    out, _ = crossval_run
    from MammoPatchLib.datasets import load_records
    from MammoPatchLib.evaluation.lesions import candidate_predictor
    from MammoPatchLib.io import read_mammogram
    from MammoPatchLib.model_file import build_network, load_model, save_model
    from MammoPatchLib.training.crossval import cell_model_info, out_of_fold_cases
    from MammoPatchLib.training.feature_cache import build_cache

    recipe = Recipe(name="tiny", bottleneck=8, hidden=16, epochs=2, negatives_per_epoch=256,
                            classes=["Mass", "Suspicious Calcification"])
    records, _ = load_records("synthetic:4", work_dir=out / "report")
    cached, errors = build_cache(records, cell_model_info(recipe), out / "report" / "feature-cache", progress=False)
    assert not errors and len(cached) == 16
    fitted = [fit_cell_head(cached[4:], recipe, list(cell_model_info(recipe).classes), seed=seed) for seed in (0, 1)]
    info = cell_model_info(recipe, ensemble=2)  # two seeds' heads, averaged as a fold's heads are
    network = build_network(info, pretrained=True).eval()
    for member, head in zip(network.head.members, fitted):
        member.load_state_dict(head.to_head(network.features.out_channels).state_dict())
    save_model(network, info, tmp_path / "fold.pt")
    model = load_model(tmp_path / "fold.pt")
    predictor = candidate_predictor(model, device="cpu", classes=recipe.classes)
    held = cached[:2]
    cases = out_of_fold_cases(fitted, held, recipe, predictor)
    for image, case in zip(held, cases):
        result = predictor.predict_image(read_mammogram(image.record.path))
        fresh = sorted((f.category, round(f.score, 2), tuple(f.peak_px)) for f in result.findings)
        cached_view = sorted((name, round(s, 2), tuple(p)) for name, dets in case.detections.items() for s, b, p in dets)
        assert fresh == cached_view


def test_findings_read_against_the_other_breast_equal_cross_validations_relative_reading(crossval_run, tmp_path):
    """The Predictor's reading of a pair at the model's operating point for pairs keeps exactly
    the findings whose relative score (cross-validation's reading) reaches the pair thresholds."""
    out, _ = crossval_run
    from dataclasses import replace

    from MammoPatchLib.datasets import load_records
    from MammoPatchLib.evaluation.lesions import candidate_predictor
    from MammoPatchLib.inference import Predictor
    from MammoPatchLib.io import read_mammogram
    from MammoPatchLib.model_file import build_network, load_model, save_model
    from MammoPatchLib.other_breast import OTHER_BREAST_WEIGHT, OtherBreastPoint
    from MammoPatchLib.evaluation.crossval_figures import cases_against_other_breast
    from MammoPatchLib.evaluation.out_of_fold import record_breast_keys
    from MammoPatchLib.training.crossval import cell_model_info, out_of_fold_cases
    from MammoPatchLib.training.feature_cache import build_cache

    recipe = Recipe(name="tiny", bottleneck=8, hidden=16, epochs=2, negatives_per_epoch=256,
                            classes=["Mass", "Suspicious Calcification"])
    records, _ = load_records("synthetic:4", work_dir=out / "report")
    cached, _ = build_cache(records, cell_model_info(recipe), out / "report" / "feature-cache", progress=False)
    keys = record_breast_keys(records)
    first = cached[0]
    partner = next(c for c in cached if keys[c.record.image_id][:2] == keys[first.record.image_id][:2]
                   and c is not first)
    fitted = [fit_cell_head(cached[4:], recipe, list(cell_model_info(recipe).classes), seed=0)]
    info = cell_model_info(recipe)
    network = build_network(info, pretrained=True).eval()
    network.head.load_state_dict(fitted[0].to_head(network.features.out_channels).state_dict())
    save_model(network, info, tmp_path / "fold.pt")
    cases = out_of_fold_cases(fitted, [first, partner], recipe, candidate_predictor(load_model(tmp_path / "fold.pt"),
                                                                                    device="cpu", classes=recipe.classes))
    relative = cases_against_other_breast(cases, keys)
    assert relative[0].image_score == pytest.approx(cases[0].image_score - OTHER_BREAST_WEIGHT * cases[1].image_score)

    scores = sorted(s for dets in relative[0].detections.values() for s, _, _ in dets)
    cut = round(float(np.median(scores)), 4)  # a bar that keeps some and drops some
    pair_thresholds = [cut] * len(info.classes)
    paired_info = replace(info, inference=replace(info.inference, other_breast=OtherBreastPoint(
        OTHER_BREAST_WEIGHT, pair_thresholds, 0.0)))
    save_model(network, paired_info, tmp_path / "paired.pt")
    model = load_model(tmp_path / "paired.pt")
    assert model.info.inference.other_breast.thresholds == pair_thresholds
    predictor = Predictor(model, device="cpu", classes=recipe.classes,
                          detection=replace(info.inference.detection, max_per_class=10))
    assert predictor.reads_other_breast
    results = [predictor.predict_image(read_mammogram(c.record.path)) for c in (first, partner)]
    read = predictor.against_other_breast(results[0], results[1])
    assert read.other_breast["image"] == str(results[1].image.path)
    fresh = sorted((f.category, round(f.score, 3), tuple(f.peak_px)) for f in read.findings)
    expected = sorted((name, round(s + OTHER_BREAST_WEIGHT * cases[1].class_maxima[name], 3), tuple(p))
                      for name, dets in relative[0].detections.items() for s, b, p in dets if s >= cut)
    assert fresh == expected and 0 < len(expected) < len(scores)
    with_own_thresholds = Predictor(model, device="cpu", thresholds=[0.5] * len(info.classes))
    assert not with_own_thresholds.reads_other_breast  # your thresholds: a single-image operating point


def test_a_batch_reads_the_two_breasts_of_a_view_against_each_other(crossval_run, tmp_path):
    """Two DICOM files of one study and view, other sides, three images apart: each is written
    read against the other, as the Predictor reads the pair; a film of another view, and the
    pair when it lies further apart than the batch waits, are read alone."""
    out, _ = crossval_run
    from MammoPatchLib.api import predict_files
    from MammoPatchLib.inference import Predictor
    from MammoPatchLib.io import read_mammogram
    from MammoPatchLib.model_file import load_model
    from MammoPatchLib.prediction.runner import PAIR_PATIENCE
    from MammoPatchLib.results.files import findings_document
    from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom

    def film(name, side, view, seed, study="1.2.3.4"):
        phantom = synthesize_mammogram(shape=(400, 320), laterality=side, view_position=view, seed=seed)
        return write_dicom(phantom, tmp_path / "in" / f"{name}.dcm", study_uid=study)

    (tmp_path / "in").mkdir()
    files = [film("a-left-cc", "L", "CC", 1), film("b-left-mlo", "L", "MLO", 2), film("c-other-study", "R", "CC", 3,
                                                                                      "9.9"),
             film("d-right-cc", "R", "CC", 4)]
    model = load_model(out / "model.pt")
    predictor = Predictor(model, device="cpu")
    rows = predict_files(files, tmp_path / "out", predictor=predictor, progress=False, workers=1)
    assert [r.image for r in rows] == files and all(not r.failed for r in rows)
    documents = {Path(r.image).stem: findings_document(r.output) for r in rows}
    assert documents["a-left-cc"]["other_breast"]["image"] == files[3]
    assert documents["d-right-cc"]["other_breast"]["image"] == files[0]
    assert documents["b-left-mlo"]["other_breast"] is None and documents["c-other-study"]["other_breast"] is None
    alone = [predictor.predict_image(read_mammogram(f)) for f in (files[0], files[3])]
    read = predictor.against_other_breast(alone[0], alone[1])
    assert [f["score"] for f in documents["a-left-cc"]["findings"]] == pytest.approx([f.score for f in read.findings],
                                                                                   abs=1e-4)
    rows = predict_files(files, tmp_path / "alone", predictor=Predictor(model, device="cpu", other_breast=False),
                         progress=False)
    assert all(findings_document(r.output)["other_breast"] is None for r in rows)
    far = files[:1] + [film(f"x{k}", "L", "MLO", 10 + k) for k in range(PAIR_PATIENCE)] + files[3:]
    rows = predict_files(far, tmp_path / "far", predictor=predictor, progress=False, workers=0)
    assert findings_document(rows[0].output)["other_breast"] is None and findings_document(rows[-1].output)[
        "other_breast"] is None


def test_a_manifest_states_study_view_and_side_of_films_that_do_not(crossval_run, tmp_path):
    """PNG films say nothing of the woman or the side: a manifest's study, view and laterality
    columns pair them, and their findings.json records what was stated."""
    out, _ = crossval_run
    from PIL import Image

    from MammoPatchLib.api import predict_files
    from MammoPatchLib.results.files import findings_document
    from MammoPatchLib.synthetic import synthesize_mammogram

    for name, side, seed in (("left", "L", 1), ("right", "R", 2)):
        pixels = synthesize_mammogram(shape=(400, 320), laterality=side, seed=seed, bits_stored=8).pixels
        Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / f"{name}.png")
    manifest = tmp_path / "films.csv"
    manifest.write_text("path,spacing_mm,study,view,laterality\nleft.png,0.2,woman-7,cc,l\nright.png,0.2,woman-7,CC,R\n")
    rows = predict_files([manifest], tmp_path / "out", model=out / "model.pt", device="cpu", progress=False)
    left, right = (findings_document(r.output) for r in rows)
    assert left["source"]["laterality"] == "L" and left["source"]["view_position"] == "CC"
    assert left["source"]["uids"]["StudyInstanceUID"] == "woman-7"
    assert left["other_breast"]["image"].endswith("right.png") and right["other_breast"]["image"].endswith("left.png")


def test_bootstraps_fast_figures_equal_the_froc_of_lesion_metrics():
    """The bootstrap's image-local matching gives exactly lesion_metrics' pooled figures,
    with repeated images, second detections of a lesion, wrong classes and tied scores."""
    from MammoPatchLib.evaluation.lesions import image_outcomes, lesion_metrics, pooled_figures

    rng = np.random.default_rng(7)
    classes = ["Mass", "Asymmetry"]
    cases = []
    for i in range(30):
        truths = {c: [tuple(float(v) for v in (x, y, x + 40, y + 40))
                      for x, y in rng.integers(0, 300, (int(rng.integers(0, 3)), 2))] for c in classes}
        detections = {}
        for c in classes:
            dets = []
            for _ in range(int(rng.integers(0, 6))):
                if truths[c] and rng.random() < 0.5:
                    t = truths[c][int(rng.integers(len(truths[c])))]
                    box = t
                else:
                    x, y = rng.integers(0, 300, 2)
                    box = (float(x), float(y), float(x + 30), float(y + 30))
                dets.append((float(np.round(rng.random(), 1)), box, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)))
            detections[c] = dets
        cases.append(ImageCase(f"i{i}", f"w{i // 2}", any(truths.values()), float(rng.random()), detections, truths))
    for drawn in (cases, [cases[k] for k in rng.integers(0, 30, 30)]):
        slow = lesion_metrics(drawn, classes)
        fast = pooled_figures([image_outcomes(c, classes) for c in drawn])
        for rate, value in slow["all_classes_froc"].items():
            assert fast[f"sens@{rate}"] == pytest.approx(value), rate
        assert fast["image_auc"] == pytest.approx(slow["image_auc"])


def test_the_bundled_model_runs_flip_tta_unless_the_command_line_turns_it_off():
    from MammoPatchLib.api import default_model_path
    from MammoPatchLib.cli import _options, build_parser
    from MammoPatchLib.inference import Predictor
    from MammoPatchLib.model_file import load_model

    model = load_model(default_model_path())
    recipe = model.info.provenance.recipe
    assert model.info.head == "cell" and model.info.inference.flip_tta
    assert model.info.ensemble == 5 * recipe.get("seeds", 1)  # every fold's heads of the 5-fold run
    assert "cross_validation" in model.info.training
    for extra, expected in (([], True), (["--no-flip-tta"], False), (["--flip-tta"], True)):
        options, _ = _options(build_parser().parse_args(["predict", "x.dcm", "--out", "o", *extra]))
        assert Predictor(model, options, device="cpu").flip_tta is expected


@pytest.mark.parametrize("field, value, message", [
    ("seeds", 0, "seeds must be a whole number"),
    ("seeds", 1.5, "seeds: expected a whole number"),
    ("neighbourhood", 4, "neighbourhood must be an odd number"),
    ("image_score", "mean", "image_score must be one of"),
    ("normal_with_finding", 0.0, "normal_with_finding must be in"),
    ("normal_with_finding", 1.5, "normal_with_finding must be in"),
])
def test_a_bad_recipe_field_is_a_config_error_naming_it(tmp_path, field, value, message):
    from MammoPatchLib.errors import ConfigError

    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({field: value}), encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        Recipe.load(path)
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError, match="recipe.json"):
        Recipe.load(path)


def test_a_head_with_its_own_last_stage_is_the_backbone_until_tuned_and_becomes_the_networks_head():
    """The copied last stage on the trunk gives the backbone's own features; a head fitted with
    a tuned copy scores cached trunk features as the network it becomes scores the trunk."""
    from MammoPatchLib.networks import TunedStages, TunedTailHead

    net = PatchClassifier(head="cell", bottleneck=8, hidden=16, pretrained=True).eval()
    x = torch.rand(1, 3, 192, 160)
    with torch.no_grad():
        tuned = TunedTailHead(TunedStages(net.features, 1), net.head).eval()
        assert torch.allclose(tuned(net.features.features_before(x, 1)), net(x), atol=1e-4)
    torch.manual_seed(0)
    trunk = torch.randn(2, 320, 10, 10).half()
    mass = Finding("Mass", (150.0, 150.0, 180.0, 180.0))
    images = [CachedImage(_record([mass], image_id=f"i{k}"), trunk + 0.1 * k, IDENTITY) for k in range(3)]
    recipe = Recipe(classes=["Mass"], bottleneck=8, hidden=16, epochs=2, negatives_per_epoch=64,
                            trains="stages", tail_epochs=2, tail_learning_rate=1e-2)
    from MammoPatchLib.training.stage_fit import fit_tuned_tail_head

    fitted = fit_tuned_tail_head(images, recipe, ["Mass", "Asymmetry"], TunedStages(net.features, 1), seed=0)
    assert not torch.equal(fitted.tail.conv.weight, net.features._conv_head.weight)  # it was tuned
    head = fitted.to_head(1280)
    with torch.no_grad():
        direct = head(images[0].features.float())
    assert torch.allclose(direct, fitted.cell_logits(images[0]), atol=2e-2), (direct - fitted.cell_logits(images[0])).abs().max()


def test_a_tuned_last_stage_recipe_cross_validates_into_a_model_both_modes_run(tmp_path):
    """tail_epochs: trunk features cached, each fold head tunes its own last stage, the bundle
    holds them, and the model file runs in fast and exact mode; the fold head saved alone gives
    through the Predictor the findings cross-validation scored."""
    import contextlib
    import io

    from MammoPatchLib.cli import main
    from MammoPatchLib.datasets import load_records
    from MammoPatchLib.evaluation.lesions import candidate_predictor
    from MammoPatchLib.inference import Predictor
    from MammoPatchLib.io import read_mammogram
    from MammoPatchLib.model_file import build_network, load_model, save_model
    from MammoPatchLib.training.crossval import cell_model_info, fit_head, out_of_fold_cases
    from MammoPatchLib.training.feature_cache import build_cache

    values = {"name": "tuned", "bottleneck": 8, "hidden": 16, "epochs": 2, "negatives_per_epoch": 256,
              "classes": ["Mass", "Suspicious Calcification"], "trains": "stages", "tail_epochs": 1, "normal_with_finding": 0.5}
    config = tmp_path / "tuned.json"
    config.write_text(json.dumps(values), encoding="utf-8")
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["crossval", "--config", str(config), "--data", "synthetic:3", "--folds", "2", "--out",
                     str(tmp_path / "report"), "--draws", "10", "--no-progress", "--model-out", str(tmp_path / "m.pt")])
    assert code == 0
    model = load_model(tmp_path / "m.pt")
    assert model.info.tuned_stages == 1 and model.info.ensemble == 2
    assert "last stage fine-tuned" in (tmp_path / "m.md").read_text(encoding="utf-8")
    # the image gate in the model file is the one fitted on the pooled out-of-fold cases
    from MammoPatchLib.evaluation.operating import operating_point
    from MammoPatchLib.evaluation.out_of_fold import CASES_FILE, RECIPES_DIR, case_from_dict

    saved = json.loads((tmp_path / "report" / RECIPES_DIR / "tuned" / CASES_FILE).read_text(encoding="utf-8"))
    _, gate = operating_point([case_from_dict(c) for c in saved["cases"]], Recipe.from_dict(values).to_dict())
    assert model.info.inference.detection.image_threshold == pytest.approx(gate)
    assert Predictor(model, device="cpu").detection.image_threshold == pytest.approx(gate)
    own = Predictor(model, device="cpu", thresholds=[0.5] * len(model.info.classes))
    assert own.detection.image_threshold == 0.0, "thresholds of one's own replace the whole operating point"
    records, _ = load_records("synthetic:3", work_dir=tmp_path / "report")
    image = read_mammogram(records[0].path)
    for mode in ("fast", "exact"):
        assert Predictor(model, mode=mode, device="cpu").predict_image(image).heatmaps.shape[0] == 10

    recipe = Recipe.from_dict(values)
    cached, errors = build_cache(records, cell_model_info(recipe), tmp_path / "report" / "feature-cache",
                                 progress=False, cut=1)
    assert not errors and cached[0].features.shape[1] == 320
    fitted = fit_head(cached[4:], recipe, seed=0)
    info = cell_model_info(recipe)
    network = build_network(info, pretrained=True).eval()
    network.head.load_state_dict(fitted.to_head(network.features.out_channels).state_dict())
    save_model(network, info, tmp_path / "fold.pt")
    predictor = candidate_predictor(load_model(tmp_path / "fold.pt"), device="cpu", classes=recipe.classes)
    held = cached[:2]
    for image, case in zip(held, out_of_fold_cases([fitted], held, recipe, predictor)):
        result = predictor.predict_image(read_mammogram(image.record.path))
        fresh = sorted((f.category, round(f.score, 2), tuple(f.peak_px)) for f in result.findings)
        cached_view = sorted((name, round(s, 2), tuple(p)) for name, dets in case.detections.items() for s, b, p in dets)
        assert fresh == cached_view


def test_scale_augmentation_trains_on_each_training_image_at_its_other_spacings(crossval_run, monkeypatch):
    """``train_scales`` caches every image again at those multiples of the recipe's spacing
    (its cells then cover more of the film, its lesions still land on their own cells), and
    each fold trains on the training women's images at every scale while the held-out women
    are predicted at the recipe's own spacing only."""
    out, _ = crossval_run
    from MammoPatchLib.datasets import load_records
    from MammoPatchLib.training import crossval as crossval_module
    from MammoPatchLib.training.crossval import cached_features, run_recipe, training_variants

    recipe = Recipe(name="tiny-scales", bottleneck=8, hidden=16, epochs=1, negatives_per_epoch=128,
                            classes=["Mass", "Suspicious Calcification"], train_scales=[2.0])
    records, _ = load_records("synthetic:4", work_dir=out / "report")
    known = {}
    base = cached_features(records, recipe, out / "report" / "feature-cache", False, known)
    (scaled,) = training_variants(records, recipe, out / "report" / "feature-cache", False, known)
    assert [c.record.image_id for c in scaled] == [c.record.image_id for c in base]
    for small, full in zip(scaled, base):
        assert small.geometry.scale == pytest.approx(0.5 * full.geometry.scale, rel=0.02)
    lesioned = next(i for i, c in enumerate(base) if any(f.category == "Mass" for f in c.record.findings))
    for image in (base[lesioned], scaled[lesioned]):
        targets, _ = cell_targets(image.record, image.geometry, image.grid_shape, recipe.classes, recipe.classes)
        assert targets[0].sum() >= 1, "the lesion is positive at every scale"

    trained = []
    real = crossval_module.fit_fold_heads

    def recorded(train, recipe, fold, last_stage=None):
        trained.append((fold, [(c.record.image_id, c.geometry.scale) for c in train]))
        return real(train, recipe, fold, last_stage)

    monkeypatch.setattr(crossval_module, "fit_fold_heads", recorded)
    fold_of = {c.record.image_id: i % 2 for i, c in enumerate(base)}
    outcome = run_recipe(recipe, base, fold_of, progress=False, variants=[scaled]).out_of_fold
    assert len(outcome.cases) == len(base), "held-out images once each, at the recipe's spacing"
    for fold, images in trained:
        ids = [image_id for image_id, _ in images]
        expected = sorted(c.record.image_id for c in base if fold_of[c.record.image_id] != fold)
        assert sorted(ids) == sorted(expected * 2), "each training image at both scales, no held-out one"
        assert len({scale for _, scale in images}) > 1


@pytest.mark.parametrize("scales", [[1.0], [0.8, 0.8], [0.1]])
def test_train_scales_are_checked(scales):
    from MammoPatchLib.errors import ConfigError

    with pytest.raises(ConfigError, match="train_scales"):
        Recipe(train_scales=scales)


def test_crossval_writes_the_posters_table_of_a_window_head_recipe_from_out_of_fold_predictions(crossval_run,
                                                                                             monkeypatch):
    """A window-head recipe's report holds the poster's patch table, made from each fold's heads
    scoring only the images of the women they never trained on, every image once."""
    import contextlib
    import io

    from MammoPatchLib.cli import main
    from MammoPatchLib.training import cell_bundle

    scored = []

    def fold_networks(run):
        folds = real(run)
        scored.extend(([r for r in records], women) for (_, records), women in zip(folds, run.head_women))
        return folds

    real = cell_bundle.fold_networks
    monkeypatch.setattr(cell_bundle, "fold_networks", fold_networks)
    out, _ = crossval_run
    config = out / "poster.json"
    config.write_text(json.dumps({"name": "poster", "head": "window", "radius_px": 48, "bottleneck": 8, "hidden": 16,
                                  "epochs": 2, "negatives_per_epoch": 256,
                                  "classes": ["Mass", "Suspicious Calcification"]}), encoding="utf-8")
    report_dir = out / "poster-report"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["crossval", "--config", str(config), "--data", "synthetic:4", "--folds", "2", "--out",
                     str(report_dir), "--cache", str(out / "report" / "feature-cache"), "--draws", "10",
                     "--no-progress"]) == 0
    table = json.loads((report_dir / "crossval.json").read_text(encoding="utf-8"))["recipes"]["poster"]["poster_table"]
    assert list(table["per_class"]) == ["No Finding", "Mass", "Suspicious Calcification"]
    assert table["per_class"]["Mass"]["support"] > 0 and table["support"] > table["support_without_no_finding"]
    assert "The poster's table (patches, out of fold)" in (report_dir / "crossval.md").read_text(encoding="utf-8")
    fold_of = read_fold_file(report_dir / "folds.csv")
    assert len(scored) == 2 and sorted(r.image_id for records, _ in scored for r in records) == sorted(fold_of)
    for records, women in scored:
        assert len({fold_of[r.image_id] for r in records}) == 1, "a fold's network scores its own fold's images"
        assert not {r.patient_id for r in records} & set(women), "no image scored by heads her woman trained"
