"""A four-view study read in one Apply, on a real MRML scene (PyPI's ``slicer-core``) with the
real worker: two lateralities x two views, NRRD volumes with origins, a flipped direction and a
rotated parent transform, under one Subject Hierarchy study. Checks: each view's own nodes and
data, names carrying the view, both breasts of each view read as a pair, the hanging layout,
the findings table against the manifest, the segmentation's terminology codes, a rerun of one
view (at a pixel spacing given for it) touching only its nodes, and the temporary folder removed
after a run that succeeded, failed or was cancelled."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from conftest import REPO

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
from slicer import vtkMRMLScene, vtkMRMLSubjectHierarchyNode  # noqa: E402

sys.path.insert(0, str(REPO / "MammoPatch"))
from MammoPatchSlicer import hanging  # noqa: E402
from MammoPatchSlicer import scene as scene_module  # noqa: E402
from MammoPatchSlicer.run import AnalysisRun, RunRequest, study_views  # noqa: E402
from MammoPatchSlicer.study import FINDING_COLUMNS, study_volumes  # noqa: E402

from MammoPatchLib.vocabulary import FINDING_CODES  # noqa: E402

SPACING = 0.2
VIEWS = [("R", "CC", 3), ("L", "CC", 4), ("R", "MLO", 5), ("L", "MLO", 6)]


@pytest.fixture(scope="module")
def paired_model(tmp_path_factory):
    """A tiny untrained model with an operating point for pairs (so the worker reads both
    breasts of a view against each other) that makes every peak of its reported classes a
    finding."""
    import torch

    from MammoPatchLib.model_file import InferenceDefaults, ModelInfo, build_network, save_model
    from MammoPatchLib.other_breast import OtherBreastPoint

    torch.manual_seed(0)
    info = ModelInfo(spacing_mm=0.4, trained=False, description="test model",
                     inference=InferenceDefaults(report_classes=["Mass", "Suspicious Calcification"],
                                                 other_breast=OtherBreastPoint(0.5, [-0.5] * 10, 0.0)))
    return str(save_model(build_network(info), info, tmp_path_factory.mktemp("model") / "paired.pt"))


def _volume(scene, folder, name, laterality, view, seed, flip=False):
    """An NRRD volume of a phantom mammogram loaded through its own storage node."""
    import SimpleITK as sitk
    from slicer import vtkMRMLVolumeArchetypeStorageNode

    from MammoPatchLib.synthetic import synthesize_mammogram

    mammo = synthesize_mammogram((320, 256), SPACING, laterality, view, ["round mass"], seed=seed)
    image = sitk.GetImageFromArray(mammo.pixels.astype(np.uint16)[np.newaxis])
    image.SetSpacing((SPACING, SPACING, 1.0))
    image.SetOrigin((10.0 * seed, -5.0, 2.0))
    if flip:  # columns run the other way: the geometry, not the pixels, says where they lie
        image.SetDirection((-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    path = os.path.join(folder, f"{name}.nrrd")
    sitk.WriteImage(image, path)
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(path)
    volume.SetAndObserveStorageNodeID(storage.GetID())
    assert vtkMRMLVolumeArchetypeStorageNode.SafeDownCast(storage).ReadData(volume)
    volume.CreateDefaultDisplayNodes()
    return volume


def _study_scene(folder):
    import vtk

    scene = vtkMRMLScene()
    layout_logic = slicer.vtkMRMLLayoutLogic()
    layout_logic.SetMRMLScene(scene)  # makes the layout node; creates the views a layout names
    hierarchy = vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient A")
    study = hierarchy.CreateStudyItem(patient, "Screening 2026")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "tilt")
    rotation = vtk.vtkTransform()
    rotation.Translate(5.0, -2.0, 8.0)
    rotation.RotateWXYZ(25.0, 0.3, 0.2, 0.9)
    transform.SetMatrixTransformToParent(rotation.GetMatrix())
    volumes = []
    for laterality, view, seed in VIEWS:
        volume = _volume(scene, folder, f"A {laterality} {view}", laterality, view, seed, flip=seed == 4)
        volume.SetAndObserveTransformNodeID(transform.GetID())
        hierarchy.CreateItem(study, volume)  # in Slicer, DICOM loading puts each series under its study
        volumes.append(volume)
    return scene, layout_logic, volumes, study


def _run(scene, inputs, folder, model, **request):
    run = AnalysisRun(scene, inputs, RunRequest(model_path=model, mode="fast", device="cpu", **request),
                      str(folder), str(REPO), environment=dict(os.environ), python=sys.executable)
    return run, run.wait(timeout_s=300)


def _snapshot(scene, volume):
    """(node ID, name, array) of every result node of ``volume``."""
    from slicer.util import arrayFromVolume

    nodes = scene_module._all_result_nodes(scene, volume.GetID())
    return {n.GetID(): (n.GetName(), arrayFromVolume(n).copy() if n.IsA("vtkMRMLVolumeNode") else None,
                        n.GetAttribute(scene_module.SCORE)) for n in nodes}


@pytest.fixture(scope="module")
def study(paired_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    scene, layout_logic, volumes, study_item = _study_scene(str(folder))
    views = study_views(scene, study_volumes(scene, volumes[2]))
    run, outcome = _run(scene, views, folder / "run", paired_model)
    assert outcome.status == "ok", (outcome.error, outcome.log[-20:])
    return scene, layout_logic, volumes, study_item, run, outcome, folder


def test_the_study_is_every_volume_under_it_and_each_view_is_stated(study):
    scene, _, volumes, _, run, _, _ = study
    assert {v.volume.GetID() for v in run.views} == {v.GetID() for v in volumes}
    assert {(v.laterality, v.view) for v in run.views} == {(lat, view) for lat, view, _ in VIEWS}
    assert len({v.study for v in run.views}) == 1


def test_every_view_has_its_own_nodes_named_by_its_view(study):
    scene, _, volumes, _, run, outcome, _ = study
    assert set(outcome.views) == {v.GetID() for v in volumes}
    by_image = {os.path.basename(i.image): i for i in outcome.manifest.images}
    assert len(by_image) == 4
    for volume, (laterality, view, _) in zip(volumes, VIEWS):
        loaded = outcome.views[volume.GetID()]
        label = f"{laterality}-{view}"
        assert loaded.view == label
        nodes = [*loaded.heatmaps.values(), loaded.labelmap, loaded.segmentation, *loaded.findings]
        assert all(f"({label})" in n.GetName() or n.GetName().startswith(label) for n in nodes)
        assert all(n.GetAttribute(scene_module.SOURCE) == volume.GetID() for n in nodes)
        # its own data: on its own pixels, and its findings are its own image's
        labels = slicer.util.arrayFromVolume(loaded.labelmap)
        assert labels.shape == slicer.util.arrayFromVolume(volume).shape
        assert np.allclose(scene_module._matrix_array(loaded.labelmap), scene_module._matrix_array(volume), atol=1e-4)
        assert loaded.labelmap.GetTransformNodeID() == volume.GetTransformNodeID()
    image_of = {os.path.realpath(i.image): i for i in outcome.manifest.images}
    for view, file in zip(run.views, run.input_files):
        rois = outcome.views[view.volume.GetID()].findings
        own = [(f["category"], f"{f['score']:.4f}", " ".join(f"{v:.3f}" for v in f["box_mm"]))
               for f in image_of[file].findings]
        assert [(r.GetAttribute(scene_module.CLASS), r.GetAttribute(scene_module.SCORE),
                 r.GetAttribute(scene_module.BOX_MM)) for r in rois] == own


def test_both_breasts_of_each_view_were_read_as_a_pair(study):
    scene, _, volumes, _, run, outcome, _ = study
    file_of = {v.volume.GetID(): f for v, f in zip(run.views, run.input_files)}
    for volume, (laterality, view, _) in zip(volumes, VIEWS):
        other = next(v for v, (lat, vw, _) in zip(volumes, VIEWS) if vw == view and lat != laterality)
        loaded = outcome.views[volume.GetID()]
        assert loaded.other_breast and os.path.realpath(loaded.other_breast["image"]) == file_of[other.GetID()]
        assert loaded.labelmap.GetAttribute(scene_module.OTHER_BREAST) == loaded.other_breast["image"]


def test_findings_table_rows_are_the_manifests_findings(study):
    scene, _, volumes, _, run, outcome, _ = study
    findings, scores = outcome.tables
    assert [findings.GetColumnName(c) for c in range(findings.GetNumberOfColumns())] == FINDING_COLUMNS
    rows = [[findings.GetCellText(r, c) for c in range(findings.GetNumberOfColumns())]
            for r in range(findings.GetNumberOfRows())]
    expected = []
    image_of = {os.path.realpath(i.image): i for i in outcome.manifest.images}
    for view, file in zip(run.views, run.input_files):
        image = image_of[file]
        label = f"{view.laterality}-{view.view}"
        for f in image.findings:
            width, height = f["box_mm"][2] - f["box_mm"][0], f["box_mm"][3] - f["box_mm"][1]
            expected.append([label, view.laterality, f["category"], f"{f['score']:.4f}", f"{width:.1f} x {height:.1f}",
                             "against the other breast"])
    assert expected, "at a pair threshold below 0 every image has findings"
    assert sorted(r[:6] for r in rows) == sorted(expected)
    assert scores.GetNumberOfRows() == 4
    score_rows = {scores.GetCellText(r, 0): scores.GetCellText(r, 2) for r in range(4)}
    for view, file in zip(run.views, run.input_files):
        assert score_rows[f"{view.laterality}-{view.view}"] == f"{image_of[file].image_score:.4f}"


def test_selecting_a_finding_centres_its_view_on_it(study):
    scene, layout_logic, volumes, *_ , outcome, _ = study
    shown = hanging.hang_study(scene, hanging.views_of(scene, volumes), layout_logic.GetLayoutNode())
    findings = outcome.tables[0]
    roi = scene.GetNodeByID(findings.GetCellText(0, FINDING_COLUMNS.index("Finding")))
    moved = hanging.centre_on_finding(scene, roi.GetID())
    assert moved == [shown[roi.GetAttribute(scene_module.VIEW)]]
    centre = [0.0, 0.0, 0.0]
    roi.GetCenterWorld(centre)
    assert np.allclose([moved[0].GetSliceToRAS().GetElement(r, 3) for r in range(3)], centre, atol=1e-3)


def test_the_layout_node_holds_the_hanging_and_mirrors_the_breasts(study):
    scene, layout_logic, volumes, *_ = study
    layout = layout_logic.GetLayoutNode()
    shown = hanging.hang_study(scene, hanging.views_of(scene, volumes), layout)
    assert layout.GetViewArrangement() == hanging.HANGING_LAYOUT_ID
    assert layout.GetLayoutDescription(hanging.HANGING_LAYOUT_ID) == hanging.hanging_layout_xml()
    xml = hanging.hanging_layout_xml()
    assert xml.index("MammoPatchRCC") < xml.index("MammoPatchLCC") < xml.index("MammoPatchRMLO") < xml.index(
        "MammoPatchLMLO")
    assert set(shown) == {"R-CC", "L-CC", "R-MLO", "L-MLO"}
    for volume, (laterality, view, _) in zip(volumes, VIEWS):
        node = shown[f"{laterality}-{view}"]
        composite = hanging.composite_node(scene, f"{laterality}-{view}")
        assert composite.GetBackgroundVolumeID() == volume.GetID()
        # Where the chest wall (the heavier half of the columns) lies on screen: the view's x axis.
        pixels = slicer.util.arrayFromVolume(volume)[0].astype(float)
        half = pixels.shape[1] // 2
        wall_column = pixels.shape[1] - 1 if pixels[:, half:].sum() > pixels[:, :half].sum() else 0
        ijk = hanging.world_ijk_to_ras(volume)
        wall = ijk @ [wall_column, pixels.shape[0] / 2, 0, 1]
        matrix = np.array([[node.GetSliceToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
        on_screen = np.linalg.inv(matrix) @ wall
        assert (on_screen[0] > 0) == (laterality == "R"), "chest walls meet in the middle"
    link = hanging.WindowLevelLink(volumes)
    volumes[1].GetDisplayNode().SetWindowLevel(123.0, 456.0)
    assert all((v.GetDisplayNode().GetWindow(), v.GetDisplayNode().GetLevel()) == (123.0, 456.0) for v in volumes)
    link.remove()


def test_segments_carry_the_standard_codes(study):
    import vtk

    scene, _, volumes, _, _, outcome, _ = study
    segments = 0
    for volume, (laterality, _, _) in zip(volumes, VIEWS):
        segmentation = outcome.views[volume.GetID()].segmentation.GetSegmentation()
        for index in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(index)
            text = vtk.reference("")
            assert segment.GetTag(segment.GetTerminologyEntryTagName(), text)
            parts = str(text).split("~")
            code, scheme, meaning = FINDING_CODES[segment.GetName()]
            assert parts[2] == f"{scheme}^{code}^{meaning}" and parts[1].startswith("SCT^49755003^")
            assert parts[5] == "SCT^76752008^Breast"
            assert parts[6] == {"R": "SCT^24028007^Right", "L": "SCT^7771000^Left"}[laterality]
            segments += 1
    assert segments


def test_results_sit_under_the_study_in_the_subject_hierarchy(study):
    scene, _, volumes, study_item, _, outcome, _ = study
    hierarchy = vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    loaded = outcome.views[volumes[0].GetID()]
    for node in [loaded.labelmap, loaded.segmentation, *loaded.findings, *loaded.heatmaps.values(), *outcome.tables]:
        item = hierarchy.GetItemByDataNode(node)
        assert hierarchy.GetItemAncestorAtLevel(item, "Study") == study_item, node.GetName()
        assert hierarchy.GetItemName(hierarchy.GetItemParent(item)) == scene_module.RESULTS_FOLDER


def test_heatmaps_are_transparent_below_their_class_threshold(study):
    scene, _, volumes, _, run, outcome, _ = study
    image_of = {os.path.realpath(i.image): i for i in outcome.manifest.images}
    for view, file in zip(run.views, run.input_files):
        for class_name, node in outcome.views[view.volume.GetID()].heatmaps.items():
            display = node.GetDisplayNode()
            assert display.GetApplyThreshold() == 1
            assert display.GetLowerThreshold() == pytest.approx(image_of[file].thresholds[class_name])


def test_the_temporary_folder_is_gone(study):
    *_, folder = study
    assert not (folder / "run").exists()


def test_a_second_apply_on_one_view_changes_only_its_nodes(study, paired_model, tmp_path):
    scene, _, volumes, *_ = study
    before = {v.GetID(): _snapshot(scene, v) for v in volumes}
    nodes = scene.GetNumberOfNodes()
    # A pixel spacing given for the volume (as for a file that states none): the worker reads
    # the export at that spacing, and the results still lie on the volume's own pixels.
    views = study_views(scene, [volumes[1]], spacing_mm=0.25)
    run, outcome = _run(scene, views, tmp_path / "rerun", paired_model, threshold=0.9)
    assert outcome.status == "ok", outcome.error
    assert outcome.results.spacing_mm == pytest.approx(0.25)
    assert np.allclose(scene_module._matrix_array(outcome.results.labelmap),
                       scene_module._matrix_array(volumes[1]), atol=1e-6)
    after = {v.GetID(): _snapshot(scene, v) for v in volumes}
    for volume in volumes[:1] + volumes[2:]:
        old, new = before[volume.GetID()], after[volume.GetID()]
        assert old.keys() == new.keys()
        for node_id, (name, array, score) in old.items():
            assert new[node_id][0] == name and new[node_id][2] == score
            assert array is None or np.array_equal(array, new[node_id][1])
    rerun_old, rerun_new = before[volumes[1].GetID()], after[volumes[1].GetID()]
    loaded = outcome.results
    for node in (*loaded.heatmaps.values(), loaded.labelmap, loaded.segmentation):
        assert node.GetID() in rerun_old, "the view's own nodes are updated, not new ones"
    assert not np.array_equal(rerun_old[loaded.labelmap.GetID()][1], rerun_new[loaded.labelmap.GetID()][1])
    assert loaded.labelmap.GetAttribute(scene_module.OTHER_BREAST) == "", "a threshold given: read alone"
    assert scene.GetNumberOfNodes() <= nodes
    assert not (tmp_path / "rerun").exists()


@pytest.mark.parametrize("script, status", [
    ("import sys\nprint('error: model.pt: unreadable', file=sys.stderr)\nsys.exit(2)\n", "failed"),
    ("import os, sys, time\nwhile not os.path.exists(sys.argv[1]):\n    time.sleep(0.05)\nsys.exit(130)\n",
     "cancelled")])
def test_a_failed_or_cancelled_run_removes_its_folder(script, status, tmp_path, monkeypatch):
    from MammoPatchSlicer import run as run_module

    scene = vtkMRMLScene()
    volume = _volume(scene, str(tmp_path), "R CC", "R", "CC", 2)
    worker = tmp_path / "worker.py"
    worker.write_text(script)
    # (python, inputs, results, manifest, cancel file, request): the worker waits for its cancel file
    monkeypatch.setattr(run_module, "worker_command", lambda python, *args: [python, str(worker), args[3]])
    run = AnalysisRun(scene, volume, RunRequest(), str(tmp_path / "run"), str(REPO), environment=dict(os.environ),
                      python=sys.executable)
    assert (tmp_path / "run" / "input-0.nrrd").is_file()
    run.cancel() if status == "cancelled" else None
    outcome = run.wait(timeout_s=60)
    assert outcome.status == status and not (tmp_path / "run").exists()


def test_views_stated_by_name_reach_the_worker_through_its_manifest(tmp_path):
    """A volume's view comes from its attributes or its name, and the input manifest the
    module writes is read by the library as the same study / view / laterality."""
    from MammoPatchSlicer.study import StudyView, stated_view, write_input_manifest

    from MammoPatchLib.prediction.jobs import read_manifest_rows

    scene = vtkMRMLScene()
    names = {"A_R-CC": ("R", "CC"), "lmlo 2": ("L", "MLO"), "Left MLO": ("L", "MLO"), "mdb001": ("", ""),
             "CCR": ("", "")}
    for name, expected in names.items():
        assert stated_view(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)) == expected, name
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mdb002")
    volume.SetAttribute("MammoPatch.laterality", "r")
    volume.SetAttribute("MammoPatch.viewPosition", "mlo")
    assert stated_view(volume) == ("R", "MLO")
    views = [StudyView(volume, None, 0.2, "s1", "MLO", "R"), StudyView(volume, None, None, "s1", "MLO", "L")]
    rows = read_manifest_rows(write_input_manifest(str(tmp_path / "in.csv"), views, ["a.nrrd", "b.nrrd"]))
    assert [(p.name, s, (st.study, st.view_position, st.laterality)) for p, s, st in rows] == [
        ("a.nrrd", 0.2, ("s1", "MLO", "R")), ("b.nrrd", None, ("s1", "MLO", "L"))]


def test_terminology_codes_are_dicoms():
    """The category and breast codes the segments carry are the ones pydicom's code dictionary
    (DICOM's) gives."""
    from pydicom.sr.codedict import codes

    from MammoPatchLib.vocabulary import BREAST_CODE, FINDING_CATEGORY_CODE, SIDE_CODES

    def triple(code):
        return (code.value, code.scheme_designator, code.meaning)

    assert FINDING_CATEGORY_CODE == triple(codes.SCT.MorphologicallyAbnormalStructure)
    assert BREAST_CODE == triple(codes.SCT.Breast)
    assert SIDE_CODES == {"R": triple(codes.SCT.Right), "L": triple(codes.SCT.Left)}
    for name, keyword in (("Mass", "Mass"), ("Suspicious Calcification", "CalcificationCluster"),
                          ("Architectural Distortion", "ArchitecturalDistortionOfBreast"),
                          ("Asymmetry", "AsymmetricBreastTissue")):
        assert FINDING_CODES[name] == triple(getattr(codes.SCT, keyword))
    assert scene_module.terminology_entry("Mass", "L") == (
        "Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Abnormal Structure~"
        "SCT^4147007^Mass~^^~Anatomic codes - DICOM master list~SCT^76752008^Breast~SCT^7771000^Left")
