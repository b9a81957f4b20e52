"""Write slicer_api_manifest.json from a Slicer source checkout (git repository with the
release branches): every Slicer / CTK / MRML name the MammoPatch module uses, with the source
file it is defined in and the Slicer versions that have it.

    python Testing/slicer_api/generate_manifest.py PATH/TO/Slicer [--branches 5.6 5.8 5.10 main]

CTK, Qt and VTK names are listed with the documentation they come from (they are stable across
these Slicer versions); the test (test_slicer_api.py) checks the module against the manifest.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
from pathlib import Path

PYTHON_FUNCTIONS = {
    "Base/Python/slicer/util.py": [
        "loadUI", "childWidgetVariables", "tryWithErrorDisplay", "errorDisplay", "confirmOkCancelDisplay", "pip_install",
        "launchConsoleProcess", "tempDirectory", "saveNode", "loadVolume", "loadLabelVolume", "setSliceViewerLayers",
        "arrayFromVTKMatrix", "vtkMatrixFromArray", "getNodesByClass", "getModuleLogic", "exit", "arrayFromVolume",
        "delayDisplay", "startupEnvironment"],
    "Base/Python/slicer/packaging.py": ["pip_ensure", "load_requirements"],
}
PYTHON_CLASS_METHODS = {
    "Base/Python/slicer/ScriptedLoadableModule.py": {
        "ScriptedLoadableModuleWidget": ["setup", "cleanup", "enter", "exit", "onReload"],
        "ScriptedLoadableModuleLogic": ["getParameterNode"],
        "ScriptedLoadableModuleTest": ["delayDisplay"]},
    "Base/Python/slicer/util.py": {"VTKObservationMixin": ["addObserver", "removeObserver", "removeObservers"]},
    "Modules/Scripted/SampleData/SampleData.py": {"SampleDataLogic": ["registerCustomSampleDataSource"]},
}
PARAMETER_NODE = {"Base/Python/slicer/parameterNodeWrapper/wrapper.py": ["parameterNodeWrapper", "_connectGui",
                                                                         "_disconnectGui"],
                  "Base/Python/slicer/parameterNodeWrapper/validators.py": ["Choice", "WithinRange"]}
CPP_METHODS = {
    "vtkMRMLVolumeNode.h": ["GetIJKToRASMatrix", "SetIJKToRASMatrix", "SetAndObserveImageData", "GetImageData",
                            "GetSpacing", "GetOrigin"],
    "vtkMRMLDisplayableNode.h": ["GetDisplayNode", "CreateDefaultDisplayNodes"],
    "vtkMRMLTransformableNode.h": ["SetAndObserveTransformNodeID", "GetTransformNodeID"],
    "vtkMRMLStorableNode.h": ["GetStorageNode"],
    "vtkMRMLNode.h": ["GetAttribute", "SetAttribute", "RemoveAttribute", "GetName", "SetName", "GetID"],
    "vtkMRMLStorageNode.h": ["SetFileName", "GetFileName", "ReadData", "WriteData", "UseCompressionOff"],
    "vtkMRMLVolumeArchetypeStorageNode.h": ["vtkMRMLVolumeArchetypeStorageNode"],
    "vtkMRMLDisplayNode.h": ["SetAndObserveColorNodeID"],
    "vtkMRMLScalarVolumeDisplayNode.h": ["AutoWindowLevelOff", "SetWindowLevelMinMax"],
    "vtkMRMLColorTableNode.h": ["SetNumberOfColors", "SetColor"],
    "vtkMRMLColorNode.h": ["SetTypeToUser"],
    "vtkMRMLMarkupsROINode.h": ["SetAndObserveObjectToNodeMatrix", "SetSize"],
    "vtkMRMLMarkupsNode.h": ["SetLocked"],
    "vtkMRMLScene.h": ["GetFirstNodeByClass", "GetFirstNodeByName", "GetNodeByID", "AddNewNodeByClass", "RemoveNode",
                       "Clear", "StartCloseEvent", "EndCloseEvent", "GetNumberOfNodesByClass", "GetNthNodeByClass"],
    "vtkMRMLColorLogic.cxx": ["GetFileColorNodeID"],
    "qSlicerCoreApplication.h": ["majorVersion", "minorVersion"],
}
#: The study (MammoPatchSlicer.study / hanging / scene): tables, layout, segmentation, subject
#: hierarchy, slice views; merged into CPP_METHODS below.
STUDY_CPP_METHODS = {
    "vtkMRMLTableNode.h": ["AddColumn", "AddEmptyRow", "RemoveAllColumns", "SetCellText", "GetCellText",
                           "GetNumberOfRows", "SetUseColumnTitleAsColumnHeader"],
    "vtkMRMLLayoutNode.h": ["AddLayoutDescription", "IsLayoutDescription", "SetViewArrangement"],
    "vtkMRMLLayoutLogic.h": ["GetLayoutNode"],
    "vtkSegment.h": ["AddRepresentation", "SetTag", "GetTerminologyEntryTagName", "SetColor"],
    "vtkSegmentation.h": ["AddSegment", "RemoveAllSegments"],
    "vtkSegmentationConverter.h": ["GetBinaryLabelmapRepresentationName"],
    "vtkOrientedImageData.h": ["SetImageToWorldMatrix"],
    "vtkMRMLSegmentationNode.h": ["GetSegmentation", "SetReferenceImageGeometryParameterFromVolumeNode"],
    "vtkMRMLScalarVolumeDisplayNode.h": ["ApplyThresholdOn", "ApplyThresholdOff", "AutoThresholdOff",
                                         "SetLowerThreshold", "SetUpperThreshold", "SetWindowLevel", "GetWindow",
                                         "GetLevel"],
    "vtkMRMLSubjectHierarchyNode.h": ["CreateFolderItem", "CreateItem", "GetItemAncestorAtLevel", "GetItemByDataNode",
                                      "GetItemChildWithName", "GetItemChildren", "GetItemDataNode", "GetItemParent",
                                      "GetSceneItemID", "GetSubjectHierarchyNode", "SetItemParent"],
    "vtkMRMLSubjectHierarchyConstants.h": ["GetDICOMLevelStudy"],
    "vtkMRMLSliceCompositeNode.h": ["GetBackgroundVolumeID", "SetBackgroundVolumeID", "SetForegroundVolumeID",
                                    "SetLabelVolumeID", "SetForegroundOpacity"],
    "vtkMRMLAbstractViewNode.h": ["GetLayoutName", "SetLayoutName"],
    "vtkMRMLSliceNode.h": ["GetSliceToRAS", "SetFieldOfView", "GetFieldOfView", "UpdateMatrices",
                           "JumpSliceByCentering"],
    "vtkMRMLMarkupsROINode.h": ["GetCenterWorld"],
    "vtkMRMLNode.h": ["SetDescription"],
    "vtkMRMLScene.h": ["GetNthNode", "GetNumberOfNodes"],
    "vtkMRMLTransformableNode.h": ["GetParentTransformNode"],
    "vtkMRMLTransformNode.h": ["GetMatrixTransformToWorld"],
    "vtkMRMLColorNode.h": ["GetColor"],
}
for _header, _methods in STUDY_CPP_METHODS.items():
    CPP_METHODS.setdefault(_header, []).extend(_methods)
COLOR_FILES = ["Inferno.txt"]
EXTERNAL = {
    "qt": ["QTimer.singleShot", "QWidget", "QComboBox", "QCheckBox", "QPushButton", "QProgressBar", "QLabel",
           "QFormLayout", "QVBoxLayout", "QDoubleSpinBox", "QTableView"],
    "ctk": ["ctkCollapsibleButton", "ctkPathLineEdit", "ctkSliderWidget", "ctkDICOMDatabase.fileForInstance"],
    "mrml widgets": ["qMRMLWidget", "qMRMLNodeComboBox", "qMRMLTableView"],
    "vtk": ["vtkMatrix4x4", "vtkCommand.ModifiedEvent", "vtkObject::IsA", "vtkMatrix4x4::GetElement",
            "vtkMatrix4x4::SetElement", "vtkImageData::GetDimensions", "vtkObject::AddObserver",
            "vtkObject::RemoveObserver", "vtkDataSet::GetPointData", "vtkDataSetAttributes::GetScalars",
            "vtkDataArray::DeepCopy", "vtkImageData::AllocateScalars", "vtkImageData::SetDimensions",
            "vtkIdList::GetId", "vtkIdList::GetNumberOfIds"],
}


def _macro_defines(text: str, method: str) -> bool:
    """VTK accessor macros (vtkGetStringMacro(Name), vtkBooleanMacro(AutoWindowLevel, int), ...)
    define GetX / SetX / XOn / XOff without the method name appearing in the header."""
    base = re.sub(r"^(Get|Set)|(On|Off)$", "", method)
    return bool(re.search(rf"vtk\w*Macro\s*\(\s*{base}\s*[,)]", text))


def show(repo: Path, branch: str, path: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(repo), "show", f"{branch}:{path}"], capture_output=True, text=True,
                              check=True).stdout
    except subprocess.CalledProcessError:
        return ""


def find(repo: Path, branch: str, name: str) -> str:
    files = subprocess.run(["git", "-C", str(repo), "ls-tree", "-r", "--name-only", branch], capture_output=True,
                           text=True).stdout.splitlines()
    return next((f for f in files if f.endswith("/" + name) or f == name), "")


def python_parameters(source: str, function: str, cls: str = "") -> list:
    tree = ast.parse(source)
    scope = tree.body
    if cls:
        klass = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls), None)
        if klass is None:
            return None
        scope = klass.body
    for node in scope:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == function:
            if isinstance(node, ast.ClassDef):
                init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
                node = init or node
                if isinstance(node, ast.ClassDef):
                    return []
            args = node.args
            return [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg not in ("self", "cls")] + (
                [f"*{args.vararg.arg}"] if args.vararg else []) + ([f"**{args.kwarg.arg}"] if args.kwarg else [])
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("slicer", type=Path)
    parser.add_argument("--branches", nargs="+", default=["5.6", "5.8", "5.10", "main"])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("slicer_api_manifest.json"))
    args = parser.parse_args()
    entries = {}

    def add(name, kind, source, branch, parameters=None):
        entry = entries.setdefault(name, {"name": name, "kind": kind, "versions": {}})
        entry["versions"][branch] = {"source": source, **({"parameters": parameters} if parameters is not None else {})}

    for branch in args.branches:
        for path, functions in PYTHON_FUNCTIONS.items():
            text = show(args.slicer, branch, path)
            module = "slicer." + Path(path).stem
            for function in functions:
                params = python_parameters(text, function) if text else None
                if params is not None:
                    add(f"{module}.{function}", "function", path, branch, params)
        for path, classes in PYTHON_CLASS_METHODS.items():
            text = show(args.slicer, branch, path)
            for cls, methods in classes.items():
                for method in methods:
                    params = python_parameters(text, method, cls) if text else None
                    if params is not None:
                        add(f"{cls}.{method}", "method", path, branch, params)
        for path, names in PARAMETER_NODE.items():
            text = show(args.slicer, branch, path)
            for name in names:
                params = python_parameters(text, name) if text else None
                if params is not None:
                    add(f"parameterNodeWrapper.{name}", "function", path, branch, params)
        for header, methods in CPP_METHODS.items():
            path = find(args.slicer, branch, header)
            text = show(args.slicer, branch, path) if path else ""
            for method in methods:
                if re.search(rf"\b{method}\b", text) or _macro_defines(text, method):
                    add(f"{Path(header).stem.replace('.h', '')}::{method}", "C++ method", path, branch)
        for color in COLOR_FILES:
            path = find(args.slicer, branch, color)
            if path:
                add(f"vtkMRMLColorTableNodeFile{color}", "colour node id", path, branch)
    document = {
        "about": "Slicer API names used by MammoPatch/MammoPatch.py, MammoPatch/MammoPatchSlicer/*.py, "
                 "Resources/UI/MammoPatch.ui and Resources/Scripts/mammopatch_batch.py, read from Slicer's source by "
                 "generate_manifest.py.",
        "slicer_versions": args.branches,
        "entries": sorted(entries.values(), key=lambda e: e["name"]),
        "external": EXTERNAL,
    }
    args.out.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
