"""A finer head beside the 32 px cell head (``Recipe.fine``): the recipe's checks, the model
file's network (one pass: the stride-16 features kept beside the output), the Predictor, and
cross-validation that reads held-out women through both heads as the model file does."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from MammoPatchLib.errors import ConfigError
from MammoPatchLib.training.recipe import Recipe

CALCIFICATION = "Suspicious Calcification"
FINE = {"cell_px": 16, "classes": [CALCIFICATION], "bottleneck": 8, "hidden": 16, "epochs": 2,
        "negatives_per_epoch": 256, "radius_px": 16, "ignore_px": 16, "seeds": 2}
TUNED = {"name": "tuned-fine", "bottleneck": 8, "hidden": 16, "epochs": 2, "negatives_per_epoch": 256,
         "classes": ["Mass", CALCIFICATION], "trains": "stages", "tail_epochs": 1, "fine": FINE}


def test_with_finer_classes_takes_those_classes_from_the_16_px_cells():
    from MammoPatchLib.networks.patch_classifier import with_finer_classes

    coarse = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    fine = -torch.rand(2, 3, 4, 4)
    out = with_finer_classes(coarse, fine, [1])
    assert out.shape == (2, 3, 4, 4)
    assert torch.equal(out[:, 1], fine[:, 1])
    assert torch.equal(out[:, [0, 2], 2:4, 0:2], coarse[:, [0, 2], 1:2, 0:1].expand(2, 2, 2, 2))


def test_a_finer_weight_below_one_averages_the_two_heads_probabilities():
    from MammoPatchLib.networks.patch_classifier import with_finer_classes

    coarse, fine = torch.randn(1, 3, 2, 2), torch.randn(1, 3, 4, 4)
    out = with_finer_classes(coarse, fine, [1], weight=0.25)
    expected = 0.25 * torch.sigmoid(fine[:, 1]) + 0.75 * torch.sigmoid(coarse[:, 1].repeat_interleave(2, -1)
                                                                       .repeat_interleave(2, -2))
    torch.testing.assert_close(torch.sigmoid(out[:, 1]), expected)
    assert torch.equal(out[:, 0], coarse[:, 0].repeat_interleave(2, -1).repeat_interleave(2, -2))


@pytest.mark.parametrize("values, message", [
    ({"fine": {"cell_px": 32}}, "needs cell_px 16"),
    ({"fine": {"cell_px": 16, "spacing_mm": 0.4}}, "must keep this recipe's backbone, spacing_mm"),
    ({"fine": {"cell_px": 16, "fine": {"cell_px": 16}}}, "goes beside a 32 px cell head"),
    ({"head": "window", "hidden": 64, "fine": {"cell_px": 16}}, "beside a 32 px cell head"),
    ({"fine": {"cell_px": 16, "seeds": 0}}, "seeds"),
    ({"fine": {"cell_px": 16, "colour": 1}}, "recipe.fine: unknown field"),
    ({"fine": {"cell_px": 16}, "fine_weight": 0.0}, "fine_weight must be in"),
    ({"fine_weight": 0.5}, "fine_weight goes with a fine head"),
])
def test_a_recipe_refuses_a_finer_head_it_cannot_hold(values, message):
    with pytest.raises(ConfigError, match=message):
        Recipe.from_dict(values)


def test_a_finer_head_reads_back_as_its_own_recipe():
    recipe = Recipe.from_dict(TUNED)
    fine = recipe.fine_recipe
    assert (fine.name, fine.cell_px, fine.classes, fine.seeds) == ("tuned-fine-fine", 16, [CALCIFICATION], 2)
    assert Recipe.from_dict(recipe.to_dict()) == recipe and recipe.model_file_refusal is None
    assert Recipe().fine_recipe is None
    assert "fine_weight" not in recipe.to_dict()  # at its default: the identity recipes had before it existed
    blended = Recipe.from_dict({**TUNED, "fine_weight": 0.5})
    assert blended.to_dict()["fine_weight"] == 0.5 and Recipe.from_dict(blended.to_dict()) == blended


def test_model_information_checks_the_finer_head():
    from MammoPatchLib.model_file import ModelInfo

    info = ModelInfo(head="cell", fine_head={"classes": [CALCIFICATION], "ensemble": 2})
    assert info.cell_px == 16 and ModelInfo(head="cell").cell_px == 32
    for fine, message in (({"classes": ["Calcium"]}, "some of the model's classes"),
                          ({"classes": [CALCIFICATION], "ensemble": 0}, "fine_head.ensemble"),
                          ({"classes": [CALCIFICATION], "depth": 2}, "fine_head must be a mapping"),
                          ({"classes": [CALCIFICATION], "weight": 1.5}, "fine_head.weight")):
        with pytest.raises(ConfigError, match=message):
            ModelInfo(head="cell", fine_head=fine)
    with pytest.raises(ConfigError, match="cell head on an EfficientNet-Lite"):
        ModelInfo(fine_head={"classes": [CALCIFICATION]})


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_the_model_file_gives_the_cells_the_training_path_scores(tmp_path, weight):
    """Both heads fitted from the cache (the 32 px one with its tuned last stage, the finer one on
    the stride-16 pyramid), written into one model file: the Predictor's one pass over the whole
    image gives the 16 px cells the two heads score from the cache, alone or blended at the
    recipe's ``fine_weight``; exact mode is refused."""
    from MammoPatchLib.datasets import load_records
    from MammoPatchLib.distributed import RankContext
    from MammoPatchLib.inference import Predictor
    from MammoPatchLib.io import read_mammogram
    from MammoPatchLib.model_file import load_model, save_model
    from MammoPatchLib.networks.patch_classifier import with_finer_classes
    from MammoPatchLib.synthetic import make_vindr_dataset
    from MammoPatchLib.training.cell_bundle import head_network
    from MammoPatchLib.training.crossval import fit_head, pretrained_last_stage, recipe_inputs

    root = make_vindr_dataset(tmp_path / "data", n_studies=1, shape=(448, 352), abnormal_fraction=1.0)
    records = load_records(str(root))[0][:2]
    recipe = Recipe.from_dict({**TUNED, "flip_augment": False, "fine": {**FINE, "flip_augment": False},
                               "fine_weight": weight})
    fold_of = {r.image_id: 0 for r in records}
    coarse, fine = (recipe_inputs(r, records, fold_of, tmp_path / "cache", RankContext(), False, {}, {}).cached
                    for r in (recipe, recipe.fine_recipe))
    heads = [fit_head(coarse, recipe, seed=0, last_stage=pretrained_last_stage(recipe))]
    fine_heads = [fit_head(fine, recipe.fine_recipe, seed=s) for s in (0, 1)]
    info, network = head_network(recipe, heads, fine_heads)
    assert info.fine_head == {"classes": [CALCIFICATION], "hidden": 16, "neighbourhood": 3, "bottleneck": 8,
                              "ensemble": 2, **({"weight": weight} if weight != 1.0 else {})}
    save_model(network, info, tmp_path / "m.pt")
    model = load_model(tmp_path / "m.pt")
    assert model.info.cell_px == 16 and model.network.cell_px == 16
    result = Predictor(model, mode="fast", device="cpu", flip_tta=False).predict_image(read_mammogram(records[0].path))
    maps = result.cell_maps[0]
    channel = [info.classes.index(CALCIFICATION)]
    trained = torch.sigmoid(with_finer_classes(
        torch.logit(heads[0].cell_probabilities(coarse[0], flip_tta=False)[None]),
        torch.logit(torch.stack([h.cell_probabilities(fine[0], flip_tta=False) for h in fine_heads]).mean(0)[None]),
        channel, weight)[0])
    assert maps.stride == 16 and maps.cells.shape == trained.shape == (10,) + fine[0].grid_shape
    torch.testing.assert_close(maps.cells.cpu(), trained, atol=1e-2, rtol=0)  # fp16 caches vs the fp32 pass
    assert result.findings is not None and result.heatmaps.shape[1:] == result.image.shape
    with pytest.raises(ConfigError, match="use fast mode"):
        Predictor(model, mode="exact", device="cpu")


def test_crossval_reads_held_out_women_through_both_heads_and_writes_them_into_the_model(tmp_path):
    from MammoPatchLib.cli import main
    from MammoPatchLib.model_file import load_model

    config = tmp_path / "tuned-fine.json"
    config.write_text(json.dumps(TUNED), encoding="utf-8")
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["crossval", "--config", str(config), "--data", "synthetic:3", "--folds", "2", "--out",
                     str(tmp_path / "report"), "--draws", "10", "--no-progress", "--model-out", str(tmp_path / "m.pt")])
    assert code == 0
    model = load_model(tmp_path / "m.pt")
    assert model.info.ensemble == 2 and model.info.fine_head["ensemble"] == 4  # 2 folds x 2 seeds
    assert len(model.info.provenance.members) == 2
    assert "from a second head on 16 px cells" in (tmp_path / "m.md").read_text(encoding="utf-8")
    report = json.loads((tmp_path / "report" / "crossval.json").read_text(encoding="utf-8"))
    assert list(report["recipes"]) == ["tuned-fine"] and report["recipes"]["tuned-fine"]["images"] == 12
    units = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "report" / "units").iterdir())
    assert units == ["tuned-fine", "tuned-fine-fine"]  # the finer head's folds are units of their own


@pytest.mark.slow
def test_train_makes_both_heads_on_all_women_as_units(tmp_path):
    from MammoPatchLib.model_file import load_model
    from MammoPatchLib.training.run import train

    recipe = Recipe.from_dict({**TUNED, "fine": {**FINE, "seeds": 1}})
    result = train(recipe, "synthetic:2", tmp_path / "train", progress=False)
    model = load_model(result.model)
    assert model.info.fine_head["ensemble"] == 1 and model.info.ensemble == 1 and model.network.cell_px == 16
    assert "from a second head on 16 px cells" in model.info.description
    units = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "train" / "units").iterdir())
    assert units == ["tuned-fine", "tuned-fine-fine"]


def test_the_monai_bundle_declares_the_finer_head(tmp_path):
    """``export-bundle`` of a model with a finer head declares the network with it: the
    declared network takes the model's weights (strict) and its output is on 16 px cells."""
    from monai.bundle import ConfigParser

    from MammoPatchLib.cli import main
    from MammoPatchLib.model_file import ModelInfo, build_network, save_model

    info = ModelInfo(head="cell", bottleneck=8, hidden=16, tuned_stages=1,
                     fine_head={"classes": [CALCIFICATION], "bottleneck": 8, "hidden": 16, "ensemble": 2})
    save_model(build_network(info).eval(), info, tmp_path / "m.pt")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["export-bundle", str(tmp_path / "m.pt"), "--out", str(tmp_path / "bundle")]) == 0
    parser = ConfigParser()
    parser.read_config(tmp_path / "bundle" / "configs" / "inference.json")
    parser["bundle_root"] = str(tmp_path / "bundle")
    parser.get_parsed_content("imports")
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(tmp_path / "bundle" / "models" / "model.pt", weights_only=True))
    with torch.no_grad():
        assert network.eval()(torch.zeros(1, 3, 64, 96)).shape == (1, 10, 4, 6)
    metadata = json.loads((tmp_path / "bundle" / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["network_data_format"]["outputs"]["pred"]["spatial_shape"] == [16, 16]
