"""MammoPatch's results in an MRML scene, without Qt: heatmap volumes (Inferno display), the
label map with a colour table named by class, one markups ROI per finding, activation maps,
all under the input's parent transform; a rerun updates the same nodes.

Files are read and written through ``vtkMRMLVolumeArchetypeStorageNode`` objects of our own
(Libs/MRML/Core/vtkMRMLVolumeArchetypeStorageNode.h: SetFileName, ReadData, WriteData), which
exist in Slicer and in ``slicer-core``. The input volume's own storage node is never used:
``slicer.util.saveNode`` would reuse it and set its file name to the exported temporary file
(Base/QTGUI/qSlicerNodeWriter.cxx v5.6.2 lines 137-162, through
qSlicerCoreIOManager::createAndAddDefaultStorageNode, Base/QTCore/qSlicerCoreIOManager.cxx lines
721-734, which returns the node's existing storage node), so the Save dialog would then see the
volume as unmodified and a saved scene would point into the temporary folder.

Result nodes are found again by attributes (``MammoPatch.source`` = the input's node ID,
``MammoPatch.role``, ``MammoPatch.key``) rather than by name, so renaming a node does not make
the next run add a second one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import vtk
from slicer import vtkMRMLVolumeArchetypeStorageNode

from MammoPatchLib.contract import ImageResult

logger = logging.getLogger(__name__)

#: File-based colour tables are named "vtkMRMLColorTableNodeFile" + file name
#: (Libs/MRML/Logic/vtkMRMLColorLogic.cxx, GetFileColorNodeID); Inferno.txt ships with Slicer 5.6+.
INFERNO_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileInferno.txt"
COLOR_TABLE_NAME = "MammoPatch classes"
LABEL_COLOURS = [
    (0.90, 0.10, 0.10), (1.00, 0.85, 0.00), (0.20, 0.60, 1.00), (0.60, 0.20, 0.80), (0.00, 0.75, 0.60),
    (1.00, 0.50, 0.00), (0.55, 0.35, 0.15), (1.00, 0.40, 0.70), (0.50, 0.80, 0.20), (0.40, 0.40, 0.40),
]
SOURCE, ROLE, KEY = "MammoPatch.source", "MammoPatch.role", "MammoPatch.key"
CLASS, SCORE, ACTIVATION = "MammoPatch.class", "MammoPatch.score", "MammoPatch.activationMap"
HEATMAP, LABELMAP, FINDING, ACTIVATION_MAP = "heatmap", "labelmap", "finding", "activation"


@dataclass
class LoadedResults:
    """The nodes one run's results are in."""

    heatmaps: Dict[str, object] = field(default_factory=dict)
    labelmap: Optional[object] = None
    findings: List[object] = field(default_factory=list)
    activation_maps: List[object] = field(default_factory=list)
    #: node name -> how far its file's IJK-to-RAS was from the input's (mm; see _place_on_input)
    geometry_differences_mm: Dict[str, float] = field(default_factory=dict)

    @property
    def first_heatmap(self):
        return next(iter(self.heatmaps.values()), None)


def export_volume(volume_node, path: str) -> str:
    """Write a volume (its array and IJK-to-RAS geometry; not its parent transform) through a
    storage node of our own, leaving the node's storage node and file name as they were."""
    storage = vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(path)
    storage.UseCompressionOff()  # a temporary file, read once by the worker
    if not storage.WriteData(volume_node):
        raise RuntimeError(f"{path}: could not write the volume for analysis")
    return path


def read_volume(scene, path: str, class_name: str, name: str, node=None):
    """Read a volume file into ``node`` (a new ``class_name`` node when None) through a storage
    node of our own, so the node keeps no link to the (temporary) results folder."""
    if node is None:
        node = scene.AddNewNodeByClass(class_name, name)
    storage = vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(path)
    if not storage.ReadData(node):
        raise RuntimeError(f"{path}: could not be read")
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def _result_node(scene, class_name: str, source_id: str, role: str, key: str = ""):
    for index in range(scene.GetNumberOfNodesByClass(class_name)):
        node = scene.GetNthNodeByClass(index, class_name)
        if node.GetAttribute(SOURCE) == source_id and node.GetAttribute(ROLE) == role and (
                node.GetAttribute(KEY) or "") == key:
            return node
    return None


def _result_nodes(scene, class_name: str, source_id: str, role: str) -> list:
    nodes = []
    for index in range(scene.GetNumberOfNodesByClass(class_name)):
        node = scene.GetNthNodeByClass(index, class_name)
        if node.GetAttribute(SOURCE) == source_id and node.GetAttribute(ROLE) == role:
            nodes.append(node)
    return nodes


def _tag(node, source_id: str, role: str, key: str = "") -> None:
    node.SetAttribute(SOURCE, source_id)
    node.SetAttribute(ROLE, role)
    node.SetAttribute(KEY, key)


#: Largest IJK-to-RAS difference (mm) between a result file and its input that is only
#: rounding (NRRD stores the matrix as decimal text).
GEOMETRY_TOLERANCE_MM = 1e-4


def _place_on_input(node, input_volume) -> float:
    """Results are computed on the input's own pixels: a result with the input's dimensions
    takes the input's IJK-to-RAS, and every result sits under the input's parent transform.
    Returns how far (largest matrix element difference, mm) the file's own geometry was from
    the input's; a difference beyond rounding is logged. It happens for DICOM inputs: ITK's
    GDCM reader behind vtkMRMLVolumeArchetypeStorageNode gives an MG image without
    ImagerPixelSpacing 1 mm pixels, where the library reads PixelSpacing (0.085 mm in the
    tests), so results written in the library's geometry would not lie on the volume."""
    image, source = node.GetImageData(), input_volume.GetImageData()
    difference = 0.0
    if image is not None and source is not None and image.GetDimensions() == source.GetDimensions():
        difference = float(np.abs(_matrix_array(node) - _matrix_array(input_volume)).max())
        if difference > GEOMETRY_TOLERANCE_MM:
            logger.warning("MammoPatch: the worker read %s's geometry differently from Slicer (IJK-to-RAS differs "
                           "by up to %.3g mm, e.g. another pixel spacing); %s is placed on the volume's pixels",
                           input_volume.GetName(), difference, node.GetName())
        matrix = vtk.vtkMatrix4x4()
        input_volume.GetIJKToRASMatrix(matrix)
        node.SetIJKToRASMatrix(matrix)
    node.SetAndObserveTransformNodeID(input_volume.GetTransformNodeID())
    return difference


def _show_as_probability(node) -> None:
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(INFERNO_COLOR_NODE_ID)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)


def class_color_node(scene, names: Sequence[str]):
    """The colour table of the label map: entry k named ``names[k]`` (0 = "No Finding",
    transparent); one node, updated when the classes change."""
    color_node = scene.GetFirstNodeByName(COLOR_TABLE_NAME)
    if color_node is None or not color_node.IsA("vtkMRMLColorTableNode"):
        color_node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", COLOR_TABLE_NAME)
    color_node.SetTypeToUser()
    color_node.SetNumberOfColors(len(names))
    for k, name in enumerate(names):
        if k == 0:
            color_node.SetColor(0, name, 0.0, 0.0, 0.0, 0.0)
        else:
            r, g, b = LABEL_COLOURS[(k - 1) % len(LABEL_COLOURS)]
            color_node.SetColor(k, name, r, g, b, 1.0)
    return color_node


def _matrix_array(input_volume) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    input_volume.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _vtk_matrix(array: np.ndarray):
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def write_findings(scene, input_volume, findings: Sequence[dict]) -> list:
    """One locked markups ROI per finding, along the volume's axes (its ObjectToNode matrix,
    Modules/Loadable/Markups/MRML/vtkMRMLMarkupsROINode.h) and under the input's parent
    transform. A rerun reuses the ROIs of the last run on this volume (extra ones removed)."""
    from MammoPatchLib.volume_bridge import box_to_roi

    source_id = input_volume.GetID()
    old = _result_nodes(scene, "vtkMRMLMarkupsROINode", source_id, FINDING)
    old.sort(key=lambda n: int(n.GetAttribute(KEY) or 0))
    matrix = _matrix_array(input_volume)
    nodes = []
    for index, finding in enumerate(findings):
        name = f"{finding['category']} {finding['score']:.2f}"
        roi = old[index] if index < len(old) else scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
        roi.SetName(name)
        object_to_node, size = box_to_roi(finding["box_px"], matrix)
        roi.SetLocked(False)
        roi.SetAndObserveObjectToNodeMatrix(_vtk_matrix(object_to_node))
        roi.SetSize(*(float(s) for s in size))
        roi.SetAndObserveTransformNodeID(input_volume.GetTransformNodeID())
        _tag(roi, source_id, FINDING, str(index))
        roi.SetAttribute(CLASS, finding["category"])
        roi.SetAttribute(SCORE, f"{finding['score']:.4f}")
        roi.RemoveAttribute(ACTIVATION)
        roi.SetLocked(True)
        if roi.GetDisplayNode() is None:
            roi.CreateDefaultDisplayNodes()
        nodes.append(roi)
    for extra in old[len(findings):]:
        scene.RemoveNode(extra)
    return nodes


def load_results(scene, input_volume, image: ImageResult, heatmap_classes: Optional[Sequence[str]] = None,
                 output_heatmap=None, output_labelmap=None) -> LoadedResults:
    """Put one image's results, exactly as its manifest entry lists them, into the scene.

    Args:
        heatmap_classes: the heatmaps to load (None: every heatmap the manifest lists).
        output_heatmap, output_labelmap: nodes to load the first heatmap and the label map
            into (None: the ones of the last run on this volume, or new ones).

    Raises:
        RuntimeError: a heatmap asked for that the worker did not write, or an unreadable file.
    """
    source_id = input_volume.GetID()
    name = input_volume.GetName()
    wanted = list(image.heatmaps) if heatmap_classes is None else list(heatmap_classes)
    absent = [c for c in wanted if c not in image.heatmaps]
    if absent:
        raise RuntimeError(f"the worker wrote no heatmap for {', '.join(absent)} "
                           f"(written: {', '.join(image.heatmaps) or 'none'})")
    loaded = LoadedResults()
    for index, class_name in enumerate(wanted):
        node = output_heatmap if (index == 0 and output_heatmap is not None) else _result_node(
            scene, "vtkMRMLScalarVolumeNode", source_id, HEATMAP, class_name)
        node = read_volume(scene, image.heatmaps[class_name], "vtkMRMLScalarVolumeNode",
                           f"{name} heatmap {class_name}", node)
        _tag(node, source_id, HEATMAP, class_name)
        loaded.geometry_differences_mm[node.GetName()] = _place_on_input(node, input_volume)
        _show_as_probability(node)
        loaded.heatmaps[class_name] = node
    if image.labelmap:
        node = output_labelmap or _result_node(scene, "vtkMRMLLabelMapVolumeNode", source_id, LABELMAP)
        node = read_volume(scene, image.labelmap, "vtkMRMLLabelMapVolumeNode", f"{name} findings", node)
        _tag(node, source_id, LABELMAP)
        loaded.geometry_differences_mm[node.GetName()] = _place_on_input(node, input_volume)
        node.GetDisplayNode().SetAndObserveColorNodeID(class_color_node(scene, image.labelmap_classes).GetID())
        loaded.labelmap = node
    loaded.findings = write_findings(scene, input_volume, image.findings)
    loaded.activation_maps = _load_activation_maps(scene, input_volume, image, loaded.findings)
    return loaded


def _load_activation_maps(scene, input_volume, image: ImageResult, finding_nodes: list) -> list:
    """One Inferno volume per Grad-CAM map the manifest lists; its finding's ROI names it in the
    ``MammoPatch.activationMap`` attribute. Maps of an earlier run that this one has not are
    removed."""
    source_id = input_volume.GetID()
    keep, nodes = set(), []
    for entry in image.activation_maps:
        index = int(entry["finding"])
        if index >= len(finding_nodes):
            continue
        finding = finding_nodes[index]
        node = _result_node(scene, "vtkMRMLScalarVolumeNode", source_id, ACTIVATION_MAP, str(index))
        node = read_volume(scene, entry["path"], "vtkMRMLScalarVolumeNode",
                           f"{input_volume.GetName()} activation {finding.GetName()}", node)
        _tag(node, source_id, ACTIVATION_MAP, str(index))
        _place_on_input(node, input_volume)
        _show_as_probability(node)
        finding.SetAttribute(ACTIVATION, node.GetID())
        keep.add(node.GetID())
        nodes.append(node)
    for old in _result_nodes(scene, "vtkMRMLScalarVolumeNode", source_id, ACTIVATION_MAP):
        if old.GetID() not in keep:
            scene.RemoveNode(old)
    return nodes


def activation_map_of(scene, finding_node):
    """The activation-map volume of a finding's ROI, or None."""
    node_id = finding_node.GetAttribute(ACTIVATION) if finding_node is not None else None
    return scene.GetNodeByID(node_id) if node_id else None
