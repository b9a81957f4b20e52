"""The module's scene code against real MRML (PyPI's ``slicer-core``: Slicer's MRML, its module
logics and slicer.util, without Qt) and the real worker command line on phantom mammograms.

The input volume has a mammogram's geometry (0.085 mm pixels), an origin and a rotated parent
transform; the checks are the ones a user would make by eye: the heatmap lies on the image, the
boxes on the findings, the label map's colours are named by class, a rerun adds no nodes, the
input's own storage node is untouched, and a saved scene keeps the results."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from conftest import REPO

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
from slicer import (vtkMRMLScene,  # noqa: E402
                    vtkMRMLVolumeArchetypeStorageNode)

sys.path.insert(0, str(REPO / "MammoPatch"))
from MammoPatchSlicer import scene as scene_module  # noqa: E402
from MammoPatchSlicer.run import AnalysisRun, RunRequest  # noqa: E402
from MammoPatchSlicer.study import StudyView  # noqa: E402

from MammoPatchLib.contract import ALL_CLASSES, REPORTED_CLASSES  # noqa: E402

SPACING = 0.085
ORIGIN = (12.5, -40.0, 3.0)
REPORTED = ["Mass", "Suspicious Calcification"]


def _matrix(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _world(node) -> np.ndarray:
    """The node's parent transform to world as a 4 x 4 array."""
    import vtk

    m = vtk.vtkMatrix4x4()
    transform = node.GetParentTransformNode()
    if transform is not None:
        transform.GetMatrixTransformToWorld(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny untrained model that reports two of its ten classes (like the bundled one)."""
    import torch

    from MammoPatchLib.model_file import InferenceDefaults, ModelInfo, build_network, save_model

    torch.manual_seed(0)
    info = ModelInfo(spacing_mm=0.4, trained=False, description="test model",
                     inference=InferenceDefaults(report_classes=list(REPORTED)))
    return str(save_model(build_network(info), info, tmp_path_factory.mktemp("model") / "tiny.pt"))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from MammoPatchLib.synthetic import synthesize_mammogram

    return synthesize_mammogram((560, 448), SPACING, "L", "CC", ["round mass"], seed=5)


def _input_scene(phantom, folder):
    """A scene with the phantom as a volume loaded from a file (so it has its own storage node),
    with an origin and under a rotated parent transform."""
    import SimpleITK as sitk
    import vtk

    path = os.path.join(folder, "mammogram.nrrd")
    image = sitk.GetImageFromArray(phantom.pixels.astype(np.uint16)[np.newaxis])
    image.SetSpacing((SPACING, SPACING, 1.0))
    image.SetOrigin(ORIGIN)
    sitk.WriteImage(image, path)
    scene = vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mammogram")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(path)
    volume.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(volume)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "tilt")
    rotation = vtk.vtkTransform()
    rotation.Translate(5.0, -2.0, 8.0)
    rotation.RotateWXYZ(25.0, 0.3, 0.2, 0.9)
    transform.SetMatrixTransformToParent(rotation.GetMatrix())
    volume.SetAndObserveTransformNodeID(transform.GetID())
    return scene, volume, path


def _lies_on(heatmap, volume) -> None:
    """A heatmap (a coarser grid of the network's cells) lies on the volume: the same axes, and
    its first cell's corner at the image's first pixel corner (within one cell)."""
    cells, pixels = _matrix(heatmap), _matrix(volume)
    for axis in range(2):
        np.testing.assert_allclose(cells[:3, axis] / np.linalg.norm(cells[:3, axis]),
                                   pixels[:3, axis] / np.linalg.norm(pixels[:3, axis]), atol=1e-6)
    corner = lambda m: (m @ [-0.5, -0.5, 0.0, 1.0])[:3]  # noqa: E731
    assert np.abs(corner(cells) - corner(pixels)).max() <= np.linalg.norm(cells[:3, 0]) + 1e-6


def _run(scene, volume, folder, model, progress=None, **request) -> "object":
    run = AnalysisRun(scene, volume, RunRequest(model_path=model, mode="fast", device="cpu", **request),
                      str(folder), str(REPO), environment=dict(os.environ), python=sys.executable,
                      on_progress=(lambda fraction, text: progress.append((fraction, text))) if progress is not None
                      else None)
    outcome = run.wait(timeout_s=240)
    return outcome


@pytest.fixture(scope="module")
def analysed(phantom, model, tmp_path_factory):
    """One run on the NRRD volume: reported classes' heatmaps, findings at threshold 0, one
    activation map."""
    folder = tmp_path_factory.mktemp("scene")
    scene, volume, path = _input_scene(phantom, str(folder))
    progress = []
    outcome = _run(scene, volume, folder / "run1", model, progress, threshold=0.0, activation_maps=1)
    assert outcome.status == "ok", (outcome.error, outcome.log[-20:])
    outcome.progress = progress
    return scene, volume, path, outcome, folder


def test_heatmaps_lie_on_the_input_in_its_geometry(analysed):
    scene, volume, _path, outcome, _ = analysed
    assert set(outcome.results.heatmaps) == set(REPORTED), "the model's reported classes, no more"
    assert np.allclose(_matrix(volume)[:3, :3], np.diag([-SPACING, -SPACING, 1.0]), atol=1e-9), "LPS file -> RAS"
    for name, node in outcome.results.heatmaps.items():
        _lies_on(node, volume)
        assert node.GetTransformNodeID() == volume.GetTransformNodeID()
        display = node.GetDisplayNode()
        assert display.GetColorNodeID() == scene_module.INFERNO_COLOR_NODE_ID
        assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 1.0)
        # transparent below the class threshold (0 here: findings everywhere), not a dark veil
        assert display.GetApplyThreshold() == 1 and display.GetLowerThreshold() == 0.0
        values = slicer.util.arrayFromVolume(node)
        assert 0.0 <= values.min() and values.max() <= 1.0
        assert node.GetAttribute(scene_module.KEY) == name
    labels = outcome.results.labelmap
    np.testing.assert_allclose(_matrix(labels), _matrix(volume), atol=1e-9)
    # The files themselves carry the input's geometry (the module does not have to correct it).
    assert len(outcome.results.geometry_differences_mm) == 3
    assert max(outcome.results.geometry_differences_mm.values()) < 1e-6
    assert labels.GetTransformNodeID() == volume.GetTransformNodeID()
    assert not os.path.exists(outcome.manifest.images[0].folder), "the run's temporary folder is removed"


def test_label_map_colours_are_named_by_class(analysed):
    _scene, _volume, _path, outcome, _ = analysed
    color = outcome.results.labelmap.GetDisplayNode().GetColorNode()
    image = outcome.manifest.images[0]
    names = [color.GetColorName(k) for k in range(color.GetNumberOfColors())]
    assert names == image.labelmap_classes == ["No Finding"] + image.model["classes"]
    values = set(np.unique(slicer.util.arrayFromVolume(outcome.results.labelmap)).tolist())
    assert values <= set(range(len(names)))


def test_each_roi_maps_back_to_its_box_in_pixels_and_mm(analysed):
    _scene, volume, _path, outcome, _ = analysed
    assert outcome.findings and len(outcome.results.findings) == len(outcome.findings)
    ijk_to_world = _world(volume) @ _matrix(volume)
    world_to_ijk = np.linalg.inv(ijk_to_world)
    for roi, finding in zip(outcome.results.findings, outcome.findings):
        assert roi.GetTransformNodeID() == volume.GetTransformNodeID()
        centre = np.zeros(3)
        roi.GetCenterWorld(centre)
        i, j, _k, _ = world_to_ijk @ np.append(centre, 1.0)
        x0, y0, x1, y1 = finding["box_px"]
        assert (i + 0.5, j + 0.5) == pytest.approx(((x0 + x1) / 2, (y0 + y1) / 2), abs=1e-4)  # float32 in markups
        size = np.array(roi.GetSize())
        assert size[:2] == pytest.approx(((x1 - x0) * SPACING, (y1 - y0) * SPACING), abs=1e-6)
        mx0, my0, mx1, my1 = finding["box_mm"]
        assert size[:2] == pytest.approx((mx1 - mx0, my1 - my0), abs=1e-3)
        assert roi.GetAttribute("MammoPatch.class") == finding["category"] in REPORTED
        assert roi.GetLocked()


def test_activation_map_is_linked_from_its_finding(analysed):
    scene, volume, _path, outcome, _ = analysed
    assert len(outcome.results.activation_maps) == 1
    node = scene_module.activation_map_of(scene, outcome.results.findings[0])
    assert node is outcome.results.activation_maps[0]
    np.testing.assert_allclose(_matrix(node), _matrix(volume), atol=1e-9)


def test_the_input_keeps_its_storage_node_and_file(analysed):
    scene, volume, path, _outcome, _ = analysed
    storage = volume.GetStorageNode()
    assert storage is not None and storage.GetFileName() == path
    assert scene.GetNumberOfNodesByClass("vtkMRMLVolumeArchetypeStorageNode") == 1


def test_saved_scene_keeps_the_results(analysed, tmp_path):
    """Written to .mrml with every node's data (as Slicer's Save does: a default storage node
    per storable node without one, then vtkMRMLScene::Commit) and read into a new scene."""
    scene, volume, _path, outcome, _ = analysed
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLStorableNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLStorableNode")
        if node.GetStorageNode() is None:
            node.AddDefaultStorageNode()
        storage = node.GetStorageNode()
        if storage is None:
            continue
        storage.SetFileName(str(tmp_path / f"{node.GetID()}{storage.GetDefaultWriteFileExtension() and '.' + storage.GetDefaultWriteFileExtension()}"))
        assert storage.WriteData(node), node.GetID()
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    restored = vtkMRMLScene()
    restored.SetURL(str(tmp_path / "scene.mrml"))
    assert restored.Import()
    heat = [restored.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            for i in range(restored.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
    heat = {n.GetAttribute(scene_module.KEY): n for n in heat if n.GetAttribute(scene_module.ROLE) == "heatmap"}
    assert set(heat) == set(REPORTED)
    for name, node in heat.items():
        np.testing.assert_allclose(slicer.util.arrayFromVolume(node),
                                   slicer.util.arrayFromVolume(outcome.results.heatmaps[name]))
        np.testing.assert_allclose(_matrix(node), _matrix(outcome.results.heatmaps[name]), atol=1e-6)
        assert node.GetTransformNodeID() is not None
    rois = restored.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode")
    assert rois == len(outcome.findings)
    labels = restored.GetNthNodeByClass(0, "vtkMRMLLabelMapVolumeNode")
    color = labels.GetDisplayNode().GetColorNode()
    assert [color.GetColorName(k) for k in range(color.GetNumberOfColors())] == \
        outcome.manifest.images[0].labelmap_classes


@pytest.fixture(scope="module")
def dicom_run(phantom, model, tmp_path_factory):
    """"All classes" on a DICOM file named by its UID without extension (Slicer's "Add link"
    import keeps such names)."""
    from MammoPatchLib.synthetic import write_dicom

    folder = tmp_path_factory.mktemp("dicom")
    path = folder / "1.2.826.0.1.3680043.8.498.1249243290.305"
    write_dicom(phantom, path)
    scene = vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "dicom")
    reader = vtkMRMLVolumeArchetypeStorageNode()
    reader.SetFileName(str(path))
    assert reader.ReadData(volume)
    outcome = AnalysisRun(scene, StudyView(volume, input_file=str(path)),
                          RunRequest(model_path=model, mode="fast", device="cpu", heatmap_class=ALL_CLASSES),
                          str(folder / "run"), str(REPO), environment=dict(os.environ),
                          python=sys.executable).wait(timeout_s=240)
    assert outcome.status == "ok", (outcome.error, outcome.log[-20:])
    return scene, volume, path, outcome


def test_all_classes_on_a_uid_named_dicom_file(dicom_run):
    """The worker's folder name comes from the manifest, not from the file name (the module once
    cut the UID's last part off as an extension)."""
    _scene, volume, path, outcome = dicom_run
    image = outcome.manifest.images[0]
    assert list(outcome.results.heatmaps) == image.model["classes"] and len(image.model["classes"]) == 10
    assert os.path.basename(image.folder) == path.name
    for node in outcome.results.heatmaps.values():
        _lies_on(node, volume)
    # The library reads PixelSpacing; ITK's reader (this storage node) may not for MG: the
    # results are placed on the volume's pixels either way, and the difference is reported.
    assert image.source["pixel_spacing_mm"] == pytest.approx([0.085, 0.085])
    spacing = volume.GetSpacing()[0]
    labels = outcome.results.labelmap
    np.testing.assert_allclose(_matrix(labels), _matrix(volume), atol=1e-6)
    assert outcome.results.geometry_differences_mm[labels.GetName()] == pytest.approx(abs(spacing - 0.085), abs=1e-4)


def test_a_class_the_model_does_not_report_is_asked_for_and_loaded(dicom_run):
    from MammoPatchSlicer.run import worker_command

    command = worker_command("python", "in.dcm", "out", "m.json", "cancel",
                             RunRequest(heatmap_class="Focal Asymmetry", reported_classes=REPORTED))
    assert command[command.index("--heatmaps") + 1] == "all"
    command = worker_command("python", "in.dcm", "out", "m.json", "cancel",
                             RunRequest(heatmap_class="Mass", reported_classes=REPORTED))
    assert command[command.index("--heatmaps") + 1] == "selected"
    scene, volume, _path, outcome = dicom_run
    assert "Focal Asymmetry" in outcome.results.heatmaps
    with pytest.raises(RuntimeError, match="no heatmap for Skin Thickening"):
        scene_module.load_results(scene, volume, outcome.manifest.images[0].__class__(
            image="x", status="ok", heatmaps={}), ["Skin Thickening"])


def test_a_worker_that_fails_without_a_manifest_reports_its_error_line(analysed, tmp_path, monkeypatch):
    """The error the user reads is the worker's own (here its last 'error:' line, as when it
    could not even start), and the scene is left as it was."""
    from MammoPatchSlicer import run as run_module

    scene, volume, _path, _outcome, _ = analysed
    before = scene.GetNumberOfNodes()
    script = tmp_path / "fails.py"
    script.write_text("import sys\nprint('error: model.pt: not a readable model file', file=sys.stderr)\n"
                      "sys.exit(2)\n")
    monkeypatch.setattr(run_module, "worker_command", lambda python, *args: [python, str(script)])
    outcome = AnalysisRun(scene, volume, RunRequest(), str(tmp_path / "run"), str(REPO),
                          environment=dict(os.environ), python=sys.executable).wait(timeout_s=60)
    assert outcome.status == "failed" and outcome.error == "model.pt: not a readable model file"
    assert outcome.exit_code == 2 and scene.GetNumberOfNodes() == before


def test_reported_classes_choice_is_the_workers_default(analysed, model):
    from MammoPatchSlicer.run import model_classes

    from MammoPatchLib.contract import class_choices

    _scene, _volume, _path, outcome, _ = analysed
    classes, reported = model_classes(model)
    assert reported == REPORTED == outcome.manifest.images[0].model["reported_classes"]
    assert classes == outcome.manifest.images[0].model["classes"]
    assert class_choices(classes, reported) == [REPORTED_CLASSES, ALL_CLASSES, *REPORTED]
    assert model_classes(str(REPO / "README.md")) == (None, None), "not a model: the worker will say why"


def test_progress_lines_reach_the_callback_and_not_the_log(analysed):
    _scene, _volume, _path, outcome, _ = analysed
    assert outcome.progress and all(0.0 <= f <= 1.0 for f, _ in outcome.progress)
    assert [f for f, _ in outcome.progress] == sorted(f for f, _ in outcome.progress)
    assert not any(line.startswith("MAMMOPATCH-PROGRESS") for line in outcome.log)
