"""The default outputs: heatmaps on the network's own cells, placed in the source's frame so a
viewer overlays them in place, and figures only for the classes the model learned."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import probe_model

from MammoPatchLib.errors import ConfigError
from MammoPatchLib.inference import Predictor
from MammoPatchLib.inference.resample import grid_to_source
from MammoPatchLib.io import read_mammogram
from MammoPatchLib.io.image import ImageGeometry, MammogramImage
from MammoPatchLib.model_file import InferenceDefaults
from MammoPatchLib.results.files import OutputOptions, write_result
from MammoPatchLib.synthetic import synthesize_mammogram
from MammoPatchLib.vocabulary import heatmap_stem

#: A source with every part of its geometry set: origin, rows along -x (a rotated direction),
#: 0.15 mm pixels, read by a model at 0.2 mm (cells of 32 x 0.2 / 0.15 source pixels).
GEOMETRY = ImageGeometry(spacing=(0.15, 0.15, 1.0), origin=(12.5, -40.0, 3.0),
                         direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    mammo = synthesize_mammogram((500, 420), 0.15, "L", "CC", ["round mass"], seed=3)
    image = MammogramImage(pixels=mammo.pixels.astype(np.float32), geometry=GEOMETRY, path="phantom")
    result = Predictor(probe_model(spacing_mm=0.2), device="cpu").predict_image(image)
    folder = tmp_path_factory.mktemp("out")
    write_result(result, folder)
    return result, folder, json.loads((folder / "findings.json").read_text())


def test_a_cells_physical_centre_is_the_source_pixel_it_was_computed_at(written):
    """Each voxel of the written heatmap holds one network cell's value, and its physical
    centre (through the file's own geometry) is the source point that cell's centre came from
    through the preprocessing (resampling to 0.2 mm, breast crop)."""
    import SimpleITK as sitk

    result, folder, document = written
    assert document["heatmaps"]["grid"] == "cells"
    heat = sitk.ReadImage(str(folder / f"{heatmap_stem('Mass')}.nrrd"))
    source = sitk.Image(result.image.shape[1], result.image.shape[0], 1, sitk.sitkFloat32)
    source.SetSpacing(GEOMETRY.spacing), source.SetOrigin(GEOMETRY.origin), source.SetDirection(GEOMETRY.direction)
    maps = result.cell_maps[0]
    to_processed = maps.prepared.index_matrix()
    values = sitk.GetArrayFromImage(heat)[0]
    centre = (maps.stride - 1) / 2
    assert values.shape[0] * values.shape[1] >= 12
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            point = heat.TransformContinuousIndexToPhysicalPoint((float(j), float(i), 0.0))
            col, row, _ = source.TransformPhysicalPointToContinuousIndex(point)
            processed_row, processed_col, _ = to_processed @ np.array([row, col, 1.0])
            cell = ((processed_row - centre) / maps.stride, (processed_col - centre) / maps.stride)
            np.testing.assert_allclose(cell, np.round(cell), atol=1e-6)  # a cell's centre, exactly
            expected = maps.cells[0, int(round(cell[0])), int(round(cell[1]))].item()
            assert values[i, j] == pytest.approx(expected, abs=1e-6)
    assert values.max() > 0.5, "the phantom's mass is on the grid"


def test_the_cells_resampled_to_every_pixel_give_the_full_resolution_heatmap(written, tmp_path):
    """A viewer's linear resampling of the written file onto the source pixels (zero outside the
    analysed region findings.json records) is the full-resolution heatmap within 0.01, and the
    file is a fraction of the full-resolution one."""
    result, folder, document = written
    heat = read_mammogram(folder / f"{heatmap_stem('Mass')}.nrrd", min_side=0)
    back = grid_to_source(heat.pixels[None], heat.geometry, document["heatmaps"]["analysed_region_px"],
                          GEOMETRY, result.image.shape)[0]
    full = result.heatmaps[0]
    assert full.max() > 0.5 and np.abs(back - full).max() <= 0.01
    write_result(result, tmp_path / "full", options=OutputOptions(full_resolution_heatmaps=True))
    whole = read_mammogram(tmp_path / "full" / f"{heatmap_stem('Mass')}.nrrd", min_side=0)
    np.testing.assert_array_equal(whole.pixels, full)
    assert json.loads((tmp_path / "full" / "findings.json").read_text())["heatmaps"]["every_nth_pixel"] == 1
    small = (folder / f"{heatmap_stem('Mass')}.nrrd").stat().st_size
    assert small * 5 < (tmp_path / "full" / f"{heatmap_stem('Mass')}.nrrd").stat().st_size


def test_classes_the_model_never_learned_carry_no_figure(tmp_path):
    """A model that learned two classes: findings.json gives the other eight no maximum and a
    null threshold, writes no heatmap for them by default, and --classes refuses them."""
    model = probe_model(spacing_mm=0.2)
    model.info.inference = InferenceDefaults(report_classes=["Mass", "Asymmetry"])
    mammo = synthesize_mammogram((420, 360), 0.2, "L", "CC", ["round mass"], seed=3)
    image = MammogramImage(pixels=mammo.pixels.astype(np.float32), geometry=ImageGeometry(spacing=(0.2, 0.2, 1.0)),
                           path="phantom")
    result = Predictor(model, device="cpu").predict_image(image)
    write_result(result, tmp_path)
    document = json.loads((tmp_path / "findings.json").read_text())
    learned = ["Mass", "Asymmetry"]
    assert set(document["class_maxima"]) == set(learned)
    assert [t is not None for t in document["thresholds"]] == [c in learned for c in document["classes"]]
    assert document["heatmaps"]["classes"] == learned
    assert sorted(p.name for p in tmp_path.glob("heatmap_*")) == sorted(f"{heatmap_stem(c)}.nrrd" for c in learned)
    with pytest.raises(ConfigError, match=r"Focal Asymmetry.*never learned"):
        Predictor(model, device="cpu", classes=["Focal Asymmetry"])



def test_slicer_places_each_cell_on_its_source_pixel(written, tmp_path):
    """Read by 3D Slicer's own volume storage node (slicer-core's MRML, as the module loads
    results), each voxel of the heatmap has the RAS position of the source pixel its cell
    centre came from, on the mammogram read the same way."""
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    import SimpleITK as sitk
    import vtk

    result, folder, _document = written
    source = sitk.GetImageFromArray(result.image.pixels.astype(np.uint16)[np.newaxis])
    source.SetSpacing(GEOMETRY.spacing), source.SetOrigin(GEOMETRY.origin), source.SetDirection(GEOMETRY.direction)
    sitk.WriteImage(source, str(tmp_path / "mammogram.nrrd"))
    scene = slicer.vtkMRMLScene()

    def ijk_to_ras(path):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        assert storage.ReadData(node)
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])

    cells, pixels = ijk_to_ras(folder / f"{heatmap_stem('Mass')}.nrrd"), ijk_to_ras(tmp_path / "mammogram.nrrd")
    grid = result.cell_grid_heatmaps([0])[1]
    for i, row in enumerate(grid.rows):
        for j, col in enumerate(grid.cols):
            np.testing.assert_allclose(cells @ [j, i, 0, 1], pixels @ [col, row, 0, 1], atol=1e-6)
