"""Finer cells: 16 px cells from the backbone's stride-16 features, their targets, and their
mapping back to source pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from MammoPatchLib.datasets import Finding, ImageRecord
from MammoPatchLib.training.cell_targets import cell_targets
from MammoPatchLib.training.feature_cache import CellGeometry

UNIT = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
CALCIFICATION = "Suspicious Calcification"


def _record(findings=(), image_id="a", path=None) -> ImageRecord:
    return ImageRecord(path=Path(path or f"{image_id}.png"), image_id=image_id, patient_id="w1",
                       findings=list(findings), spacing_mm=0.2)


def test_cell_targets_follow_the_geometrys_cell_side():
    small = Finding(CALCIFICATION, (160.0, 160.0, 170.0, 170.0))  # centre (165, 165), radius 5 px
    record = _record([small])
    fine, fine_mask = cell_targets(record, CellGeometry(UNIT, (320, 320), (320, 320), cell_px=16), (20, 20),
                                   [CALCIFICATION], [CALCIFICATION], radius_px=8, ignore_px=16)
    assert np.argwhere(fine[0]).tolist() == [[10, 10]]  # 16 px cell 10 is centred on 167.5: 3.5 px away
    assert not fine_mask[0, 10, 11] and fine_mask[0, 10, 12]  # the next cell is its ignore band, then negatives
    coarse, _ = cell_targets(record, CellGeometry(UNIT, (320, 320), (320, 320)), (10, 10), [CALCIFICATION],
                             [CALCIFICATION], radius_px=16, ignore_px=16)
    assert np.argwhere(coarse[0]).tolist() == [[5, 5]]  # the default: 32 px cells, cell 5 centred on 175.5


@pytest.mark.parametrize("stride", [16, 32])
def test_an_out_of_fold_case_maps_each_cell_by_its_geometrys_side(tmp_path, stride):
    """A cell that fires gives a finding at its own centre on the source film, for 16 px cells as
    for 32 px ones: the Predictor's mapping reads the cell side from the geometry."""
    from skimage.io import imsave

    from MammoPatchLib.evaluation.lesions import candidate_predictor
    from MammoPatchLib.evaluation.out_of_fold import case_from_cells
    from MammoPatchLib.model_file import build_network, LoadedModel
    from MammoPatchLib.training.crossval import cell_model_info
    from MammoPatchLib.training.recipe import Recipe

    film = np.full((320, 320), 120, dtype=np.uint8)
    film[0, 0] = 0  # not blank
    imsave(tmp_path / "a.png", film, check_contrast=False)
    info = cell_model_info(Recipe(classes=[CALCIFICATION]))
    predictor = candidate_predictor(LoadedModel(build_network(info).eval(), info, "", ""), device="cpu",
                                    classes=[CALCIFICATION])
    grid = 320 // stride
    probs = torch.zeros(len(info.classes), grid, grid)
    probs[info.classes.index(CALCIFICATION), 3, 7] = 0.9
    probs[info.classes.index("Mass"), 1, 1] = 0.9  # a class the recipe does not report: never a finding
    case = case_from_cells(_record(path=tmp_path / "a.png"), probs, CellGeometry(UNIT, (320, 320), (320, 320),
                                                                                  cell_px=stride), predictor)
    (score, _, peak), = case.detections[CALCIFICATION]
    centre = (7 * stride + (stride - 1) / 2, 3 * stride + (stride - 1) / 2)  # (x, y)
    assert 0.4 < score <= 0.9  # the cell's value, interpolated onto the detection grid
    assert abs(peak[0] - centre[0]) <= 8 and abs(peak[1] - centre[1]) <= 8  # the 8 px detection grid
    assert not case.detections["Mass"]


def _cached(image_id: str, features: torch.Tensor, stride: int) -> "StoredImage":
    from MammoPatchLib.training.feature_cache import StoredImage

    return StoredImage(_record(image_id=image_id), features, CellGeometry(UNIT, (64, 96), (64, 96)), stride=stride)


def test_a_16_px_cell_reads_its_own_features_and_those_of_the_32_px_cell_it_lies_in():
    from MammoPatchLib.errors import MammoPatchError
    from MammoPatchLib.training.fine_cells import pyramid_image

    fine = torch.randn(2, 3, 4, 6) * 7.0  # the stride-16 level is the louder one, as in Lite0
    coarse = torch.randn(2, 5, 2, 3) * 0.5
    image = pyramid_image(_cached("a", fine.half(), 16), _cached("a", coarse.half(), 32))
    assert image.geometry.cell_px == 16 and image.grid_shape == (4, 6)
    features = image.load().float()
    assert features.shape == (2, 8, 4, 6)
    for level in (features[:, :3], features[:, 3:]):  # each level: mean squared norm 1 per cell
        assert level.pow(2).sum(1).mean().item() == pytest.approx(1.0, rel=0.01)
    scale = features[1, 3, 0, 0] / coarse[1, 0, 0, 0]
    assert torch.allclose(features[:, 3:, 2:4, 4:6], scale * coarse[:, :, 1:2, 2:3].expand(2, 5, 2, 2), rtol=0.01,
                          atol=1e-3)  # the four 16 px cells of 32 px cell (1, 2) carry its features
    assert torch.allclose(features[:, :3] / features[0, 0, 0, 0], fine / fine[0, 0, 0, 0], rtol=0.01, atol=1e-2)
    with pytest.raises(MammoPatchError, match="not one grid's two levels"):
        pyramid_image(_cached("a", fine.half(), 16), _cached("a", coarse[..., :2].half(), 32))
    with pytest.raises(MammoPatchError, match="not one grid's two levels"):
        pyramid_image(_cached("a", fine.half(), 16), _cached("b", coarse.half(), 32))


def test_the_fine_cut_is_the_last_stride_16_features_of_efficientnet_lite(backbone="efficientnet-lite0"):
    from MammoPatchLib.networks import build_backbone
    from MammoPatchLib.networks.backbones import FINE_CUT

    network = build_backbone(backbone, pretrained=False).eval()
    with torch.no_grad():
        image = torch.zeros(1, 3, 64, 64)
        assert network.features_before(image, FINE_CUT).shape[-1] == 64 // 16
        assert network.features_before(image, FINE_CUT - 1).shape[-1] == 64 // 32


@pytest.mark.parametrize("values,message", [
    ({"cell_px": 24}, "cell_px must be one of"),
    ({"cell_px": 16, "trains": "stages", "tail_epochs": 2}, "cell_px 16 needs the cell head on a frozen"),
    ({"cell_px": 16, "other_breast_input": "concat"}, "cell_px 16 needs"),
    ({"cell_px": 16, "head": "window"}, "cell_px 16 needs"),
])
def test_a_recipe_refuses_cells_it_cannot_train(values, message):
    from MammoPatchLib.errors import ConfigError
    from MammoPatchLib.training.recipe import Recipe

    with pytest.raises(ConfigError, match=message):
        Recipe.from_dict(values)
    assert Recipe.from_dict({"cell_px": 16}).feature_cut == 0  # a frozen backbone: nothing of it tunes


def test_cross_validation_trains_and_scores_16_px_cells(tmp_path):
    """A cell_px 16 recipe cross-validates on the stride-16 pyramid: its heads score a grid
    twice as fine per side as the 32 px cells', and every held-out image gets a case."""
    from MammoPatchLib.datasets import load_records
    from MammoPatchLib.training.crossval import cross_validate, fold_assignment
    from MammoPatchLib.training.recipe import Recipe

    recipe = Recipe.from_dict({"name": "fine", "cell_px": 16, "bottleneck": 8, "hidden": 16, "epochs": 2,
                               "negatives_per_epoch": 256, "classes": ["Mass", CALCIFICATION], "radius_px": 16,
                               "spacing_mm": 0.4})  # coarse pixels: a quick backbone
    records, _ = load_records("synthetic:2", work_dir=tmp_path)
    fold_of = fold_assignment(records, 2, tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the crossval command runs it: one thread per process
    try:
        run, = cross_validate([recipe], records, fold_of, tmp_path / "cache", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert len(run.out_of_fold.cases) == len(records) and len(run.heads) == 2
    image = run.cached[0]
    folder, = [f for f in (tmp_path / "cache").iterdir() if "-cut" not in f.name]  # the backbone's output
    coarse = torch.load(folder / f"{image.record.image_id}.pt", weights_only=True)["features"]
    assert image.geometry.cell_px == 16 and image.grid_shape == tuple(2 * s for s in coarse.shape[-2:])
    assert run.heads[0].cell_probabilities(image, flip_tta=True).shape[-2:] == image.grid_shape


def test_a_one_class_recipe_is_compared_with_the_baseline_on_that_class(tmp_path):
    """The paired difference of a calcification-only recipe judges both recipes on calcifications
    alone: the baseline's masses neither help nor hurt it."""
    from MammoPatchLib.evaluation.crossval_figures import compare_all
    from MammoPatchLib.evaluation.lesions import ImageCase
    from MammoPatchLib.evaluation.out_of_fold import OutOfFold, save_out_of_fold

    mass, calcification = (10.0, 10.0, 30.0, 30.0), (100.0, 100.0, 110.0, 110.0)
    truths = {"Mass": [mass], CALCIFICATION: [calcification]}

    def cases(found):
        return [ImageCase(f"im{i}", f"w{i // 2}", True, 0.9, {k: [(0.9, b, ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2))]
                                                               for k, b in found.items()}, truths) for i in range(8)]

    for name, classes, found in (("base", ["Mass", CALCIFICATION], {"Mass": mass}),
                                 ("fine", [CALCIFICATION], {CALCIFICATION: calcification})):
        recipe = {"name": name, "classes": classes}
        save_out_of_fold(OutOfFold(recipe, cases(found), {f"im{i}": i % 2 for i in range(8)}), {"recipe": recipe},
                         tmp_path)
    paired = compare_all(tmp_path, "base", ["Mass", CALCIFICATION], draws=20)["recipes"]["fine"]
    assert paired["paired_vs_baseline"]["sens@1"]["difference"] == pytest.approx(1.0)
    assert paired["paired_any_finding_vs_baseline"]["sens@1"]["difference"] == pytest.approx(1.0)


def test_train_refuses_16_px_cells_before_any_work(tmp_path):
    """A model file cannot hold a 16 px head yet (crossval --model-out is refused too: see
    test_other_breast_features)."""
    from MammoPatchLib.errors import ConfigError
    from MammoPatchLib.training.recipe import Recipe
    from MammoPatchLib.training.run import train

    assert Recipe().model_file_refusal is None
    with pytest.raises(ConfigError, match="cell_px: a head on 16 px cells"):
        train(Recipe.from_dict({"name": "fine", "cell_px": 16}), "synthetic:1", tmp_path / "train", progress=False)
    assert not (tmp_path / "train" / "cache").exists(), "refused before any feature is computed"
