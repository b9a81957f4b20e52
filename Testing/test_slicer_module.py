"""The Slicer module, tested without Slicer: it compiles and follows Slicer's conventions,
its .ui loads with Qt and binds to the parameter node, CMake lists every packaged file, the
node <-> array conversion is right, and the batch script runs in plain Python."""

from __future__ import annotations

import ast
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

MODULE = REPO / "MammoPatch" / "MammoPatch.py"
UI = REPO / "Resources" / "UI" / "MammoPatch.ui"
SLICER_PROVIDED = {"slicer", "qt", "vtk", "ctk", "PyTorchUtils"}
#: Imported at the module's top, before any dependency is installed: standard library only, and
#: ``packaging``, which every supported Slicer ships with PythonQt's requirements
#: (SuperBuild/External_python-pythonqt-requirements.cmake:35 at v5.6.2, v5.8.1, v5.10.0 and main).
SHIPPED_BEFORE_ANY_INSTALL = {"packaging"}
STDLIB_ONLY_AT_TOP = {"MammoPatchLib.vocabulary": REPO / "MammoPatchLib" / "vocabulary.py",
                      "MammoPatchLib.contract": REPO / "MammoPatchLib" / "contract.py",
                      "MammoPatchSlicer": REPO / "MammoPatch" / "MammoPatchSlicer" / "__init__.py",
                      "MammoPatchSlicer.dependencies": REPO / "MammoPatch" / "MammoPatchSlicer" / "dependencies.py"}
#: Parameters the widget binds itself (their choices depend on the model, see the parameter node).
BOUND_BY_THE_WIDGET = {"heatmapClass"}


def _tree():
    return ast.parse(MODULE.read_text())


def test_module_compiles_and_imports_only_what_slicer_provides_at_top_level():
    tree = _tree()
    compile(MODULE.read_text(), str(MODULE), "exec")
    top_imports = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_imports |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module not in STDLIB_ONLY_AT_TOP:
            top_imports.add(node.module.split(".")[0])
    # The project modules imported at the top import only the standard library (and each other).
    for module, path in STDLIB_ONLY_AT_TOP.items():
        tree_of = ast.parse(path.read_text())
        used = {a.name.split(".")[0] for n in ast.walk(tree_of) if isinstance(n, ast.Import) for a in n.names} | {
            n.module.split(".")[0] for n in ast.walk(tree_of) if isinstance(n, ast.ImportFrom) and n.module}
        assert used <= set(sys.stdlib_module_names) | {"__future__"} | SHIPPED_BEFORE_ANY_INSTALL, (module, used)
    heavy = {"torch", "monai", "MammoPatchLib", "numpy", "pydicom", "SimpleITK", "cv2", "skimage"}
    assert not top_imports & heavy, f"import lazily, inside functions: {top_imports & heavy}"
    assert top_imports - set(sys.stdlib_module_names) <= SLICER_PROVIDED
    # Installs happen on first use (ensureDependencies), never at import or in the module class.
    module_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MammoPatch")
    assert "pip_install" not in ast.unparse(module_class) and "pip_ensure" not in ast.unparse(module_class)


def test_module_follows_slicer_conventions():
    tree = _tree()
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    bases = {name: [ast.unparse(b) for b in node.bases] for name, node in classes.items()}
    assert bases["MammoPatch"] == ["ScriptedLoadableModule"]
    assert bases["MammoPatchWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert bases["MammoPatchLogic"] == ["ScriptedLoadableModuleLogic"]
    assert bases["MammoPatchTest"] == ["ScriptedLoadableModuleTest"]
    assert [ast.unparse(d) for d in classes["MammoPatchParameterNode"].decorator_list] == ["parameterNodeWrapper"]
    logic_methods = {n.name for n in classes["MammoPatchLogic"].body if isinstance(n, ast.FunctionDef)}
    assert {"process", "cancel", "getParameterNode", "ensureDependencies", "processFiles"} <= logic_methods
    test_methods = {n.name for n in classes["MammoPatchTest"].body if isinstance(n, ast.FunctionDef)}
    assert {"setUp", "runTest"} <= test_methods and any(m.startswith("test_") for m in test_methods)
    source = MODULE.read_text()
    assert "Mellado" in source, "the poster is acknowledged"
    assert "tryWithErrorDisplay" in source and "setSliceViewerLayers" in source


def _parameter_fields():
    node = next(n for n in _tree().body if isinstance(n, ast.ClassDef) and n.name == "MammoPatchParameterNode")
    return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}


def _load_ui():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    QtWidgets = pytest.importorskip("PySide6.QtWidgets")
    from PySide6.QtCore import QFile
    from PySide6.QtUiTools import QUiLoader

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    handle = QFile(str(UI))
    assert handle.open(QFile.ReadOnly)
    widget = QUiLoader().load(handle)
    handle.close()
    assert widget is not None
    return app, widget


def test_ui_loads_and_binds_every_parameter():
    from PySide6.QtWidgets import QWidget

    _app, widget = _load_ui()
    bound = {}
    for child in widget.findChildren(QWidget):
        name = child.property("SlicerParameterName")
        if name:
            bound[name] = child.objectName()
    assert set(bound) | BOUND_BY_THE_WIDGET == _parameter_fields(), "every field is bound, and only fields"
    # Results are each mammogram's own nodes: no output selector that could point one image's
    # results at another's nodes, or at the mammogram itself.
    assert not any(widget.findChild(QWidget, name) for name in ("outputHeatmapSelector", "outputLabelMapSelector"))
    assert not {f for f in _parameter_fields() if f.startswith("output")}
    assert {"wholeStudy", "pixelSpacingMm"} <= set(bound)
    assert not set(bound) & BOUND_BY_THE_WIDGET
    assert widget.findChild(QWidget, "heatmapClassComboBox") is not None
    assert widget.findChild(QWidget, "applyButton") is not None
    assert widget.findChild(QWidget, "progressBar") is not None


def test_ui_declares_custom_widgets_with_base_classes():
    text = UI.read_text()
    used = set(re.findall(r'<widget class="((?:qMRML|ctk)\w+)"', text))
    declared = dict(re.findall(r"<customwidget><class>(\w+)</class><extends>(\w+)</extends>", text))
    assert used <= set(declared), f"undeclared custom widgets: {used - set(declared)}"


def _cmake_list(name: str):
    text = (REPO / "MammoPatch" / "CMakeLists.txt").read_text()
    block = re.search(rf"set\({name}\n(.*?)\n\s*\)", text, re.S).group(1)
    return {line.strip() for line in block.splitlines() if line.strip()}


def test_cmake_lists_every_library_file_and_resource():
    on_disk = {str(p.relative_to(REPO)) for p in (REPO / "MammoPatchLib").rglob("*.py")}
    assert _cmake_list("MammoPatchLib_PYTHON_SCRIPTS") == on_disk
    resources = _cmake_list("MammoPatchLib_PYTHON_RESOURCES")
    assert all((REPO / r).is_file() for r in resources), "listed resources exist"
    expected = {"Resources/UI/MammoPatch.ui", "Resources/Icons/MammoPatch.png", "Resources/requirements.txt",
                "Resources/Scripts/mammopatch_batch.py"}
    expected |= {str(p.relative_to(REPO)) for p in (REPO / "Resources" / "Models").glob("*") if p.is_file()}
    assert expected <= resources
    package = {str(p.relative_to(REPO / "MammoPatch")) for p in (REPO / "MammoPatch" / "MammoPatchSlicer").rglob("*.py")}
    assert _cmake_list("MODULE_PYTHON_SCRIPTS") == {"${MODULE_NAME}.py"} | package
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in (REPO / "MammoPatch" / "CMakeLists.txt").read_text()


def test_extension_cmake_metadata():
    text = (REPO / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert f"set({key} " in text
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    assert "find_package(Slicer REQUIRED)" in text and "add_subdirectory(MammoPatch)" in text
    assert "Slicer_EXTENSION_GENERATE_CONFIG" in text and "Slicer_EXTENSION_CPACK" in text


def test_requirements_leave_slicer_packages_alone():
    lines = [l.split(">=")[0].strip().lower() for l in (REPO / "Resources" / "requirements.txt").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert "simpleitk" not in lines and "torch" not in lines
    assert all(">=" in l for l in (REPO / "Resources" / "requirements.txt").read_text().splitlines()
               if l.strip() and not l.startswith("#"))


def test_volume_conversion_round_trip():
    from MammoPatchLib.io.image import ImageGeometry
    from MammoPatchLib.volume_bridge import box_to_roi, image_from_volume_array, volume_array_from_map

    geometry = ImageGeometry(spacing=(0.07, 0.08, 1.0), origin=(5.0, -3.0, 0.0))
    matrix = geometry.ijk_to_ras()
    array = np.arange(300 * 280, dtype=np.int16).reshape(1, 300, 280)
    image = image_from_volume_array(array, matrix, "vol")
    assert image.pixels.shape == (300, 280) and image.pixels.dtype == np.float32
    assert image.geometry.spacing == pytest.approx(geometry.spacing)
    assert image.geometry.origin == pytest.approx(geometry.origin)
    assert np.allclose(image.geometry.ijk_to_ras(), matrix)
    assert volume_array_from_map(image.pixels).shape == (1, 300, 280)
    object_to_node, size = box_to_roi((10, 20, 30, 60), matrix)
    centre = object_to_node[:3, 3]
    # RAS = -LPS in x and y: column 19.5 -> L = 5 + 19.5 * 0.07 -> R = -(that)
    assert centre[0] == pytest.approx(-(5.0 + 19.5 * 0.07)) and centre[1] == pytest.approx(-(-3.0 + 39.5 * 0.08))
    assert size[:2] == pytest.approx((20 * 0.07, 40 * 0.08))
    from MammoPatchLib.errors import InvalidImageError

    with pytest.raises(InvalidImageError, match="slices"):
        image_from_volume_array(np.zeros((3, 300, 300)), matrix, "ct")


def test_batch_script_runs_in_plain_python(tmp_path):
    from helpers import tiny_model_file

    from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom

    folder = tmp_path / "in"
    write_dicom(synthesize_mammogram((400, 320), 0.2, "R", "MLO", ["round mass"], seed=2), folder / "a.dcm")
    (folder / "broken.dcm").write_text("not DICOM")
    model = tiny_model_file(tmp_path / "tiny.pt", spacing_mm=0.4)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(REPO / "Resources" / "Scripts" / "mammopatch_batch.py"),
                             "--input", str(folder), "--output", str(out), "--model", str(model), "--mode", "fast"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "broken.dcm" in result.stderr
    rows = {Path(r["image"]).name: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert rows["a.dcm"]["status"] == "ok" and rows["broken.dcm"]["status"] == "failed"
    assert (out / "a" / "labelmap.nrrd").exists()
    # run by the module's worker (MammoPatchSlicer.run.worker_command), which lists what it wrote
    from MammoPatchLib.contract import read_manifest

    manifest = read_manifest(str(out / "result-manifest.json"))
    assert {Path(i.image).name: i.status for i in manifest.images} == {"a.dcm": "ok", "broken.dcm": "failed"}
    assert "MAMMOPATCH-PROGRESS" not in result.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pauses the worker through Linux's /proc")
def test_ctrl_c_cancels_a_batch_and_keeps_what_it_finished(tmp_path):
    """SIGINT to the batch script (the worker runs in a session of its own, so only the script
    gets it) cancels through the cancel file: exit 130, the manifest says "cancelled", and the
    images finished stay."""
    import signal
    import time

    from helpers import child_pids, tiny_model_file

    from MammoPatchLib.contract import EXIT_CANCELLED, read_manifest
    from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom

    folder = tmp_path / "in"
    for k in range(40):
        write_dicom(synthesize_mammogram((400, 320), 0.2, "R", "MLO", [], seed=k), folder / f"im{k:02d}.dcm")
    model = tiny_model_file(tmp_path / "tiny.pt", spacing_mm=0.4)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, str(REPO / "Resources" / "Scripts" / "mammopatch_batch.py"),
                                "--input", str(folder), "--output", str(out), "--model", str(model), "--mode", "fast",
                                "--device", "cpu"], stderr=subprocess.PIPE, text=True,
                               # a shell without job control starts background jobs with SIGINT
                               # ignored, which Python then keeps: Ctrl-C as a terminal delivers it
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out / "im00" / "findings.json").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    # The worker is paused from the first finished image until the script has written the cancel
    # file, so the test never depends on 39 images taking longer than the signal's handling.
    (worker,) = child_pids(process.pid)
    os.killpg(worker, signal.SIGSTOP)
    try:
        process.send_signal(signal.SIGINT)
        arguments = Path(f"/proc/{worker}/cmdline").read_bytes().decode().split("\0")
        cancel_file = Path(arguments[arguments.index("--cancel-file") + 1])
        while not cancel_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cancel_file.exists(), "the batch script wrote no cancel file after Ctrl-C"
    finally:
        os.killpg(worker, signal.SIGCONT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_CANCELLED, stderr[-2000:]
    assert "cancelling" in stderr
    assert read_manifest(str(out / "result-manifest.json")).status == "cancelled"
    finished = list(out.glob("*/findings.json"))
    assert 1 <= len(finished) < 40  # what was done is kept, for --resume to go on from


def test_roi_follows_a_rotated_volume_onto_the_boxed_pixels():
    """On a volume whose axes are rotated and flipped in RAS, the ROI's axes follow the volume,
    so its corners land on the corners of the pixel box (sizes along RAS axes would not)."""
    from MammoPatchLib.io.image import ImageGeometry
    from MammoPatchLib.volume_bridge import box_to_roi

    angle = np.deg2rad(30)
    direction = (np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, -1.0)
    matrix = ImageGeometry(spacing=(0.1, 0.2, 1.0), origin=(3.0, 4.0, 5.0), direction=direction).ijk_to_ras()
    box = (40, 10, 100, 70)
    object_to_node, size = box_to_roi(box, matrix)
    for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        corner_roi = object_to_node @ np.array([sx * size[0] / 2, sy * size[1] / 2, 0.0, 1.0])
        x = box[0] if sx < 0 else box[2]
        y = box[1] if sy < 0 else box[3]
        corner_pixels = matrix @ np.array([x - 0.5, y - 0.5, 0.0, 1.0])
        np.testing.assert_allclose(corner_roi[:3], corner_pixels[:3], atol=1e-9)


def test_dicom_volumes_are_analysed_from_their_own_file():
    from MammoPatchLib.volume_bridge import dicom_source_file

    files = {"1.2.3": "/data/a.dcm"}
    assert dicom_source_file("1.2.3", files.get) == "/data/a.dcm"
    assert dicom_source_file("1.2.3 1.2.4", files.get) is None, "a multi-file series is exported instead"
    assert dicom_source_file(None, files.get) is None and dicom_source_file("1.2.3", None) is None


@pytest.mark.parametrize("photometric, window", [("MONOCHROME2", False), ("MONOCHROME1", True)])
def test_slicer_and_the_command_line_give_the_same_heatmaps(photometric, window, tmp_path):
    """Same input, same answer. A DICOM volume is analysed from its file (the Logic passes it to
    the worker, as mammopatch predict reads it, VOI and MONOCHROME1 included); any other
    volume goes through the array Slicer holds and its IJK-to-RAS matrix, saved as NRRD. Both
    give the heatmaps the command line gives for the same pixels."""
    from helpers import probe_model

    from MammoPatchLib.inference import Predictor
    from MammoPatchLib.io import read_mammogram, write_volume
    from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom
    from MammoPatchLib.volume_bridge import image_from_volume_array, volume_array_from_map

    mammo = synthesize_mammogram((640, 512), 0.2, "L", "CC", ["round mass"], seed=4)
    path = write_dicom(mammo, tmp_path / "m.dcm", photometric=photometric, window=window)
    predictor = Predictor(probe_model(spacing_mm=0.2), mode="fast", device="cpu")
    cli = predictor.predict_image(read_mammogram(path))
    # The array a Slicer volume would hold after the library read the file, with its matrix:
    image = read_mammogram(path)
    array, matrix = volume_array_from_map(image.pixels), image.geometry.ijk_to_ras()
    bridged = image_from_volume_array(array, matrix, "volume")
    exported = tmp_path / "input.nrrd"
    write_volume(bridged.pixels, bridged.geometry, exported)
    via_nrrd = predictor.predict_image(read_mammogram(exported))
    np.testing.assert_allclose(via_nrrd.heatmaps, cli.heatmaps, atol=1e-6)
    assert [(f.category, f.box_px) for f in via_nrrd.findings] == [(f.category, f.box_px) for f in cli.findings]
