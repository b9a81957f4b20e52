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
