"""The other breast as a learned input: alignment of its cells, pairing, and the head reading it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from MammoPatchLib.datasets import Finding, ImageRecord
from MammoPatchLib.errors import ConfigError, MammoPatchError
from MammoPatchLib.training.cell_head_fit import fit_cell_head
from MammoPatchLib.training.recipe import Recipe
from MammoPatchLib.training.feature_cache import CachedImage, CellGeometry
from MammoPatchLib.training.other_breast_features import (PairedImage, aligned_views, breast_cells,
                                                           chest_wall_sides, pair_images, processed_side)

CLASSES = ["Mass", "Asymmetry"]


def _geometry(col_offset: float, valid: tuple, source=(320, 480)) -> CellGeometry:
    """Preprocessed = source shifted left by ``col_offset`` (the crop to the breast box)."""
    return CellGeometry(((1.0, 0.0, 0.0), (0.0, 1.0, -col_offset), (0.0, 0.0, 1.0)), source, valid)


def _record(image_id: str, woman: str, findings=()) -> ImageRecord:
    return ImageRecord(Path(f"{image_id}.png"), image_id, woman, findings=list(findings), view_position="MLO")


LEFT = _geometry(0.0, (256, 192))  # breast box against the left edge: 8 x 6 cells
RIGHT = _geometry(288.0, (256, 192))  # against the right edge
SIDES = {"a": False, "b": True, "c": False}  # chest wall on the right of the source film


def test_the_chest_wall_side_is_read_from_the_films_pixels(tmp_path):
    from skimage.io import imsave

    film = np.zeros((256, 320), dtype=np.uint8)
    film[:, :120] = 200  # the breast against the left edge
    records = []
    for name, pixels in (("a", film), ("b", film[:, ::-1])):
        imsave(tmp_path / f"{name}.png", np.ascontiguousarray(pixels), check_contrast=False)
        records.append(ImageRecord(tmp_path / f"{name}.png", name, "w", spacing_mm=0.2))
    assert chest_wall_sides(records) == {"a": False, "b": True}
    mirrored = CellGeometry(((1.0, 0.0, 0.0), (0.0, -1.0, 95.0), (0.0, 0.0, 1.0)), (64, 96), (64, 96))
    assert processed_side(LEFT, True) and not processed_side(mirrored, True)


def test_a_feature_lands_at_the_mirrored_place_of_the_other_breast():
    assert breast_cells(LEFT, (10, 10)) == (8, 6)
    other = torch.zeros(2, 3, 10, 10)
    other[0, 1, 2, 1] = 5.0  # 4 cells from the right breast's chest wall (its box's column 5)
    other[1, 2, 6, 9 - 5] = 7.0  # its mirror: the chest wall column, mirrored coordinates
    own = CachedImage(_record("a", "w"), torch.zeros(2, 3, 10, 10), LEFT)
    aligned = aligned_views(own, CachedImage(_record("b", "w"), other, RIGHT), SIDES)
    assert aligned.shape == (2, 3, 10, 10)
    assert torch.nonzero(aligned[0]).tolist() == [[1, 2, 4]]  # 4 cells from the left chest wall
    assert torch.nonzero(aligned[1]).tolist() == [[2, 6, 9]]  # the chest wall, mirrored: column 9
    # a breast twice as tall: the same relative place, the chest wall column stays the chest wall's
    tall = CachedImage(_record("c", "w"), torch.zeros(2, 3, 20, 10), _geometry(0.0, (512, 192), (640, 480)))
    tall_aligned = aligned_views(tall, CachedImage(_record("b", "w"), other, RIGHT), SIDES)
    assert torch.nonzero(tall_aligned[0]).tolist() == [[1, 4, 4], [1, 5, 4]]


def test_pairs_are_one_womans_films_of_a_view_in_one_fold_and_a_single_film_is_flagged():
    features = [torch.full((2, 3, 10, 10), float(k)) for k in range(3)]
    images = [CachedImage(_record("a", "w1"), features[0], LEFT), CachedImage(_record("b", "w1"), features[1], RIGHT),
              CachedImage(_record("c", "w2"), features[2], LEFT)]
    paired = pair_images(images, SIDES, {"a": 0, "b": 0, "c": 1})
    assert [p.paired for p in paired] == [True, True, False]
    assert float(paired[0].other[0, :, :8, :6].mean()) == 1.0 and float(paired[0].other[0, :, 8:].abs().sum()) == 0
    assert torch.equal(paired[2].other, features[2])  # no pair: its own features (difference zero)
    with pytest.raises(MammoPatchError, match="different folds"):
        pair_images(images, SIDES, {"a": 0, "b": 1, "c": 1})


@pytest.mark.parametrize("mode,channels", [("concat", 32), ("difference", 16)])
def test_the_head_reads_the_aligned_other_breast(mode, channels):
    torch.manual_seed(0)
    mass = Finding("Mass", (100.0, 100.0, 140.0, 140.0))
    images = [CachedImage(_record(f"i{k}", f"w{k // 2}", [mass] if k % 2 else []), torch.randn(2, 16, 10, 10).half(),
                          LEFT if k % 2 else RIGHT) for k in range(4)]
    paired = pair_images(images, {f"i{k}": k % 2 == 0 for k in range(4)})
    recipe = Recipe(classes=["Mass"], bottleneck=4, hidden=8, epochs=2, negatives_per_epoch=32,
                            other_breast_input=mode)
    fitted = fit_cell_head(paired, recipe, CLASSES, seed=0)
    assert fitted.projection.weight.shape == (4, channels)
    changed = PairedImage(paired[1].record, paired[1].features, paired[1].geometry, paired[1].other + 1.0, True)
    assert not torch.allclose(fitted.cell_logits(paired[1]), fitted.cell_logits(changed))
    with pytest.raises(MammoPatchError, match="other breast"):
        fitted.to_head(16)


def test_a_tuned_last_stage_reads_the_other_breast_through_its_own_copy():
    """The trunk features of both breasts go through the head's tuned last stage; the
    difference of a breast with itself gives the head no signal of its own."""
    from MammoPatchLib.networks import PatchClassifier, TunedStages
    from MammoPatchLib.training.stage_fit import fit_tuned_tail_head

    torch.manual_seed(0)
    net = PatchClassifier(head="cell", bottleneck=4, hidden=8, pretrained=False).eval()
    mass = Finding("Mass", (100.0, 100.0, 140.0, 140.0))
    images = [CachedImage(_record(f"i{k}", f"w{k // 2}", [mass] if k % 2 else []), torch.randn(2, 320, 10, 10).half(),
                          LEFT if k % 2 else RIGHT) for k in range(4)]
    paired = pair_images(images, {f"i{k}": k % 2 == 0 for k in range(4)})
    recipe = Recipe(classes=["Mass"], bottleneck=4, hidden=8, epochs=2, negatives_per_epoch=32,
                            trains="stages", tail_epochs=2, tail_learning_rate=1e-2, other_breast_input="difference")
    fitted = fit_tuned_tail_head(paired, recipe, CLASSES, TunedStages(net.features, 1), seed=0)
    assert not torch.equal(fitted.tail.conv.weight, net.features._conv_head.weight)  # it was tuned
    itself = PairedImage(paired[1].record, paired[1].features, paired[1].geometry, paired[1].features, False)
    blank = fitted.cell_logits(itself)
    inner = blank[..., 1:-1, 1:-1]  # away from the grid's zero padding
    assert torch.allclose(inner, inner[..., :1, :1].expand_as(inner), atol=1e-5)  # no signal: one value
    assert not torch.allclose(fitted.cell_logits(paired[1]), blank)


@pytest.mark.parametrize("fields", [{"other_breast_input": "mirror"},
                                    {"other_breast_input": "concat", "train_scales": [1.25]},
                                    {"other_breast_input": "difference", "head": "window"}])
def test_bad_other_breast_recipes_are_config_errors_naming_the_field(fields):
    with pytest.raises(ConfigError, match="other_breast_input"):
        Recipe(**fields)


@pytest.mark.parametrize("fields,reason", [({"other_breast_input": "concat"}, "other_breast_input"),
                                           ({"cell_px": 16}, "cell_px: a head on 16 px cells")])
def test_model_out_with_a_cross_validation_only_recipe_is_refused_before_any_work(tmp_path, capsys, fields, reason):
    """Recipe.model_file_refusal: the other breast as an input, or 16 px cells (test_fine_cells)."""
    from MammoPatchLib.cli import EXIT_USAGE, main

    recipe = tmp_path / "pair.json"
    recipe.write_text(json.dumps({"name": "pair", **fields}))
    out = tmp_path / "report"
    code = main(["crossval", "--config", str(recipe), "--data", "synthetic:4", "--folds", "2", "--out", str(out),
                 "--model-out", str(tmp_path / "m.pt")])
    assert code == EXIT_USAGE
    assert reason in capsys.readouterr().err
    assert not out.exists(), "refused before the report folder or any feature exists"
