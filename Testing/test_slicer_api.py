"""Slicer API conformance, checked here without Slicer: every Slicer, MRML, CTK and Qt name the
module, its .ui and the batch script use is in the manifest read from Slicer's own source
(Testing/slicer_api/, written by generate_manifest.py) for every supported Slicer version, and
keyword arguments match the functions' parameters there."""

from __future__ import annotations

import ast
import json
import re

import pytest
from conftest import REPO

MANIFEST = json.loads((REPO / "Testing" / "slicer_api" / "slicer_api_manifest.json").read_text())
SUPPORTED = ["5.6", "5.8", "5.10", "main"]
#: Names used only behind a version or hasattr() check in the module (see its comments).
GUARDED = {"slicer.packaging.pip_ensure", "slicer.packaging.load_requirements"}
SOURCES = [REPO / "MammoPatch" / "MammoPatch.py", REPO / "Resources" / "Scripts" / "mammopatch_batch.py",
           *sorted((REPO / "MammoPatch" / "MammoPatchSlicer").glob("*.py"))]


def _entries():
    return {e["name"]: e for e in MANIFEST["entries"]}


def _calls(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            yield ast.unparse(node.func), node


def test_manifest_names_its_sources_and_covers_the_supported_versions():
    assert MANIFEST["slicer_versions"] == SUPPORTED
    for entry in MANIFEST["entries"]:
        for version, where in entry["versions"].items():
            assert where["source"], entry["name"]


@pytest.mark.parametrize("version", SUPPORTED)
def test_slicer_util_calls_exist_with_their_keywords(version):
    entries = _entries()
    for path in SOURCES:
        for name, call in _calls(path):
            if not name.startswith("slicer.util."):
                continue
            assert name in entries, f"{path.name}: {name} is not in the manifest"
            if name in GUARDED:
                continue
            where = entries[name]["versions"].get(version)
            assert where is not None, f"{path.name}: {name} does not exist in Slicer {version}"
            parameters = where.get("parameters", [])
            if any(p.startswith("**") for p in parameters):
                continue
            for keyword in call.keywords:
                assert keyword.arg in parameters, f"{name}({keyword.arg}=...) is not a parameter in Slicer {version}"


@pytest.mark.parametrize("version", SUPPORTED)
def test_mrml_and_vtk_methods_exist(version):
    """Calls in MRML / VTK style (CapitalisedMethod) are methods the manifest found in that
    version's headers (vtkObject's IsA comes from VTK)."""
    entries = _entries()
    methods = {name.split("::")[1] for name, e in entries.items() if "::" in name and version in e["versions"]}
    methods |= {n.split("::")[1] for n in MANIFEST["external"]["vtk"] if "::" in n}
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        python_modules = {alias.asname or alias.name.split(".")[0] for node in ast.walk(tree)
                          if isinstance(node, ast.Import) for alias in node.names} - {"slicer", "vtk"}
        for name, _ in _calls(path):
            root, attribute = name.split(".", 1)[0], name.rsplit(".", 1)[1]
            if attribute[:1].isupper() and root not in python_modules and not name.startswith("vtk."):
                assert attribute in methods, f"{path.name}: {name}() not found in Slicer {version}'s MRML headers"


def test_parameter_node_and_module_hooks_exist_in_every_version():
    entries = _entries()
    needed = ["parameterNodeWrapper.parameterNodeWrapper", "parameterNodeWrapper.Choice",
              "parameterNodeWrapper.WithinRange", "parameterNodeWrapper._connectGui",
              "parameterNodeWrapper._disconnectGui", "ScriptedLoadableModuleWidget.onReload",
              "SampleDataLogic.registerCustomSampleDataSource", "VTKObservationMixin.addObserver",
              "vtkMRMLColorTableNodeFileInferno.txt", "qSlicerCoreApplication::majorVersion"]
    for name in needed:
        assert set(SUPPORTED) <= set(entries[name]["versions"]), name
    source = SOURCES[0].read_text()
    assert '"vtkMRMLColorTableNodeFileInferno.txt"' in source and "vtkMRMLColorTableNodeInferno\"" not in source
    registration = entries["SampleDataLogic.registerCustomSampleDataSource"]["versions"]["5.6"]["parameters"]
    call = next(c for n, c in _calls(SOURCES[0]) if n.endswith("registerCustomSampleDataSource"))
    assert {k.arg for k in call.keywords} <= set(registration)


def test_ui_widgets_are_qt_ctk_or_mrml_widgets():
    known = set(MANIFEST["external"]["qt"]) | set(MANIFEST["external"]["ctk"]) | set(
        MANIFEST["external"]["mrml widgets"])
    used = set(re.findall(r'<widget class="(\w+)"', (REPO / "Resources" / "UI" / "MammoPatch.ui").read_text()))
    layouts = set(re.findall(r'<layout class="(\w+)"', (REPO / "Resources" / "UI" / "MammoPatch.ui").read_text()))
    assert used <= known, used - known
    assert layouts <= known, layouts - known
