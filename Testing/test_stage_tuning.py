"""Tuning the backbone's last k stages from cached features streamed off disk: a crop with the
stages' reach gives the whole image's cells, and a k-stage model file predicts what was trained."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MammoPatchLib.model_file import ModelInfo
from MammoPatchLib.networks import PatchClassifier, TunedStages
from MammoPatchLib.training.cell_head_fit import CellMLP, FittedCellHead, Projection
from MammoPatchLib.training.recipe import Recipe
from MammoPatchLib.training.stage_fit import (RowIndex, TunedCells, crop_box, epoch_batches, group_by_view,
                                              groups_of)


@pytest.fixture(scope="module")
def backbone():
    return PatchClassifier(pretrained=True).features.eval()


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_the_tuned_stages_on_a_crop_with_their_reach_give_the_whole_images_cells(backbone, cut):
    """Cells at the corners, edges and inside, cropped with the stages' and the head's reach
    (clipped to the map), score as the whole-image network does; one cell less of margin does
    not (so the reach is not wider than it needs to be, and the check can fail)."""
    torch.manual_seed(cut)
    stages = TunedStages(backbone, cut).eval()
    features = backbone.features_before(torch.rand(1, 3, 448, 352), cut)[0]  # 14 x 11 cells
    grid = (14, 11)
    projection = Projection(torch.randn(4, 1280) * 0.05, torch.randn(4))
    fitted = FittedCellHead(projection, CellMLP(4 * 9, 8, 2, 0.0).eval(), 3, ["a", "b"], tail=stages)
    model = TunedCells(stages, projection, fitted.mlp, 3).eval()
    with torch.no_grad():
        whole = fitted.to_head(1280)(features[None])[0]  # (2, 14, 11): the model file's head
        reach = stages.reach(1)
        assert reach == {1: 1, 2: 2, 3: 9}[cut]
        for cells in ([[0, 0], [1, 2]], [[13, 10]], [[6, 5], [7, 5]], [[0, 10], [2, 9]], [[13, 0]]):
            cells = np.array(cells)
            for margin in (reach, reach - 1):
                top, bottom, left, right = (v * stages.scale for v in crop_box(cells, margin, grid))
                crop = features[None, :, top:bottom, left:right]
                width = (right - left) // stages.scale
                local = (cells[:, 0] - top // stages.scale) * width + cells[:, 1] - left // stages.scale
                logits = model(crop, torch.as_tensor(local))
                expected = whole[:, cells[:, 0], cells[:, 1]].T
                if margin == reach:
                    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
        inner = np.array([[6, 5]])
        top, bottom, left, right = (v * stages.scale for v in crop_box(inner, reach - 1, grid))
        width = (right - left) // stages.scale
        short = model(features[None, :, top:bottom, left:right], torch.as_tensor([(reach - 1) * width + reach - 1]))
        assert not torch.allclose(short, whole[:, 6, 5][None], atol=1e-4)


def test_batches_keep_the_draw_and_gather_views_only_where_crops_are_wide():
    """The rows of a fit are located (image, view, cell) as target_rows orders them; narrow
    crops keep today's batches of drawn cells; wide ones gather whole views, each row once."""
    index = RowIndex([(3, 4), (2, 5)], views=2)
    rows = np.arange(2 * 12 + 2 * 10)
    where = index.locate(rows)
    assert where[0].tolist() == [0, 0, 0, 0] and where[13].tolist() == [0, 1, 0, 1]
    assert where[24].tolist() == [1, 0, 0, 0] and where[-1].tolist() == [1, 1, 1, 4]
    assert not group_by_view(index, cells_per_epoch=4, reach=1)  # 4 crops of 3 x 3 < 44 positions
    assert group_by_view(index, cells_per_epoch=4, reach=9)
    rng = np.random.default_rng(0)
    drawn = rng.permutation(rows)
    assert [b.tolist() for b in epoch_batches(drawn, index, 16, False, rng)] == \
        [drawn[i:i + 16].tolist() for i in range(0, len(drawn), 16)]
    by_view = epoch_batches(drawn, index, 16, True, rng)
    assert sorted(np.concatenate(by_view).tolist()) == rows.tolist()
    for batch in by_view:
        groups = groups_of(batch, index, reach=9, by_view=True)
        assert all(g.box == (0, index.grids[g.image][0], 0, index.grids[g.image][1]) for g in groups)
        assert len({(g.image, g.view) for g in groups}) == len(groups)
    cells = groups_of(drawn[:5], index, reach=1, by_view=False)  # one 3 x 3 crop per cell, clipped at the edge
    assert [len(g.rows) for g in cells] == [1] * 5
    for g in cells:
        row, col = g.cells[0]
        h, w = index.grids[g.image]
        assert g.box == (max(row - 1, 0), min(row + 2, h), max(col - 1, 0), min(col + 2, w))


def test_old_model_files_tuned_tail_reads_as_one_tuned_stage():
    info = ModelInfo.from_dict({"head": "cell", "tuned_tail": True})
    assert info.tuned_stages == 1
    assert ModelInfo.from_dict({"head": "cell", "tuned_tail": False}).tuned_stages == 0
    with pytest.raises(Exception, match="tuned_tail"):
        ModelInfo.from_dict({"head": "cell", "tuned_tail": True, "tuned_stages": 2})
    with pytest.raises(Exception, match="tuned_stages"):
        ModelInfo(head="window", tuned_stages=2)


@pytest.mark.parametrize("stages", [3])
def test_a_k_stage_head_trained_from_streamed_features_is_what_its_model_file_predicts(tmp_path, stages):
    """Features cached before the last k stages stay on disk (read by DataLoader workers); the
    fitted head and its own tuned stages, written into a model file, give through the Predictor
    on the whole image the cells the fit scores from the cache."""
    from MammoPatchLib.datasets import load_records
    from MammoPatchLib.inference import Predictor
    from MammoPatchLib.io import read_mammogram
    from MammoPatchLib.model_file import build_network, load_model, save_model
    from MammoPatchLib.synthetic import make_vindr_dataset
    from MammoPatchLib.training.crossval import cell_model_info, fit_head, pretrained_last_stage
    from MammoPatchLib.training.feature_cache import build_cache

    root = make_vindr_dataset(tmp_path / "data", n_studies=1, shape=(448, 352), abnormal_fraction=1.0)
    records = load_records(str(root))[0][:2]
    recipe = Recipe(classes=["Mass", "Suspicious Calcification"], bottleneck=8, hidden=16, epochs=1,
                    negatives_per_epoch=48, batch_cells=96, trains="stages", tune_stages=stages, tail_epochs=1,
                    tail_learning_rate=1e-2, flip_augment=False)
    info = cell_model_info(recipe)
    assert info.tuned_stages == stages
    cached, errors = build_cache(records, info, tmp_path / "cache", progress=False, cut=stages, in_memory=False)
    assert not errors and all(c.features is None and c.path.parent.name.endswith(f"-cut{stages}") for c in cached)
    assert cached[0].load().shape[1] == {2: 192, 3: 112}[stages]
    assert cached[0].stride == {2: 32, 3: 16}[stages]
    fitted = fit_head(cached, recipe, seed=0)
    pretrained = pretrained_last_stage(recipe)
    assert not torch.equal(fitted.tail.blocks[0]._project_conv.weight, pretrained.blocks[0]._project_conv.weight)
    network = build_network(info, pretrained=True).eval()
    network.head.load_state_dict(fitted.to_head(network.features.out_channels).state_dict())
    save_model(network, info, tmp_path / "k.pt")
    model = load_model(tmp_path / "k.pt")
    assert model.info.tuned_stages == stages
    result = Predictor(model, mode="fast", device="cpu", flip_tta=False).predict_image(read_mammogram(records[0].path))
    predicted = result.cell_maps[0].cells.cpu()
    trained = fitted.cell_probabilities(cached[0], flip_tta=False)
    assert predicted.shape == trained.shape
    torch.testing.assert_close(predicted, trained, atol=5e-3, rtol=0)  # fp16 cache vs the fp32 pass
