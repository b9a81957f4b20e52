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
the next run add a second one, and a run on one mammogram never touches another's nodes (each
view of a study keeps its own). Names carry the view ("mammo (R-CC) heatmap Mass").
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
SEGMENTATION = "segmentation"
#: The view a result belongs to ("R-CC"), and the image of the other breast it was read
#: against ("" when read alone).
VIEW, OTHER_BREAST = "MammoPatch.view", "MammoPatch.otherBreast"
IMAGE_SCORE, BOX_MM = "MammoPatch.imageScore", "MammoPatch.boxMm"


@dataclass
class LoadedResults:
    """The nodes one run's results are in."""

    heatmaps: Dict[str, object] = field(default_factory=dict)
    labelmap: Optional[object] = None
    findings: List[object] = field(default_factory=list)
    activation_maps: List[object] = field(default_factory=list)
    segmentation: Optional[object] = None
    #: "R-CC": the view (laterality-view position) the worker read from the image or manifest
    view: str = ""
    image_score: Optional[float] = None
    #: the image of the other breast its findings were read against (None: read alone)
    other_breast: Optional[dict] = None
    #: the pixel spacing (mm) the worker used, and where it came from ("PixelSpacing", "manifest", ...)
    spacing_mm: Optional[float] = None
    spacing_source: str = ""
    #: node name -> how far its file's IJK-to-RAS was from the input's (mm; see _place_on_input)
    geometry_differences_mm: Dict[str, float] = field(default_factory=dict)

    @property
    def first_heatmap(self):
        return next(iter(self.heatmaps.values()), None)


def export_volume(volume_node, path: str, spacing_mm: Optional[float] = None) -> str:
    """Write a volume (its array and IJK-to-RAS geometry; not its parent transform) through a
    storage node of our own, leaving the node's storage node and file name as they were. With
    ``spacing_mm`` (a volume whose file stated no pixel spacing: the user gave it) the file
    states that in-plane spacing instead; the results are mapped back onto the volume's own
    pixels (_library_to_input)."""
    from slicer import vtkMRMLScalarVolumeNode

    node = volume_node
    if spacing_mm is not None:
        matrix = _matrix_array(volume_node)
        scale = np.ones(4)
        scale[:2] = float(spacing_mm) / np.linalg.norm(matrix[:3, :2], axis=0)
        node = vtkMRMLScalarVolumeNode()  # not in any scene: only written
        node.SetAndObserveImageData(volume_node.GetImageData())
        node.SetIJKToRASMatrix(_vtk_matrix(matrix @ np.diag(scale)))
    storage = vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(path)
    storage.UseCompressionOff()  # a temporary file, read once by the worker
    if not storage.WriteData(node):
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


def result_nodes(scene, class_name: str, source_id: str, role: str) -> list:
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


def _library_to_input(input_volume, source: dict) -> np.ndarray:
    """The 4 x 4 matrix taking RAS of the geometry the worker read the input in (the manifest's
    ``source.geometry``) to the input volume's RAS. Identity when they agree; otherwise (a DICOM
    file whose ImagerPixelSpacing ITK's GDCM reader ignores, a pixel spacing the user gave)
    results are moved onto the volume's own pixels."""
    from MammoPatchLib.io.image import ImageGeometry

    geometry = source.get("geometry") if isinstance(source, dict) else None
    if not geometry:
        return np.eye(4)
    library = ImageGeometry(spacing=tuple(geometry["spacing"]), origin=tuple(geometry["origin"]),
                            direction=tuple(geometry["direction"])).ijk_to_ras()
    return _matrix_array(input_volume) @ np.linalg.inv(library)


def _place_on_input(node, input_volume, library_to_input: np.ndarray) -> float:
    """Put a result read from the worker's file on the input: its file's IJK-to-RAS (in the
    geometry the worker read the input in; a heatmap may be a coarser grid) is mapped by
    ``library_to_input`` onto the volume, and it goes under the input's parent transform.
    Returns how far (largest matrix element difference, mm) the file's geometry was from where
    it is placed; a difference beyond rounding is logged (the worker read the input's geometry
    differently from Slicer, e.g. another pixel spacing)."""
    file_matrix = _matrix_array(node)
    placed = library_to_input @ file_matrix
    if np.abs(placed - _matrix_array(input_volume)).max() <= GEOMETRY_TOLERANCE_MM:
        placed = _matrix_array(input_volume)  # the input's own pixels: exactly its matrix
    difference = float(np.abs(placed - file_matrix).max())
    if difference > GEOMETRY_TOLERANCE_MM:
        logger.info("MammoPatch: the worker read %s's geometry differently from Slicer (IJK-to-RAS differs by up "
                    "to %.3g mm, e.g. another pixel spacing); %s is placed on the volume's pixels",
                    input_volume.GetName(), difference, node.GetName())
    node.SetIJKToRASMatrix(_vtk_matrix(placed))
    node.SetAndObserveTransformNodeID(input_volume.GetTransformNodeID())
    return difference


def _show_as_probability(node, threshold: Optional[float] = None) -> None:
    """Inferno over 0-1. With a class threshold, values below it are fully transparent, so the
    heatmap shows only where the class fires and never darkens the mammogram (Inferno's entry 0
    is opaque black): the display node's ApplyThreshold / LowerThreshold
    (Libs/MRML/Core/vtkMRMLScalarVolumeDisplayNode.h v5.8.1 lines 114-128; voxels outside
    [lower, upper] get alpha 0)."""
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(INFERNO_COLOR_NODE_ID)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.AutoThresholdOff()
    if threshold is None:
        display.ApplyThresholdOff()
        return
    display.SetLowerThreshold(float(threshold))
    display.SetUpperThreshold(max(1.0, float(threshold)))
    display.ApplyThresholdOn()


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


def view_label(source: dict) -> str:
    """"R-CC" from an image's source metadata (laterality, view position); "?" where unknown."""
    source = source if isinstance(source, dict) else {}
    return f"{source.get('laterality') or '?'}-{source.get('view_position') or '?'}"


def write_findings(scene, input_volume, findings: Sequence[dict], label: str = "") -> list:
    """One locked markups ROI per finding, along the volume's axes (its ObjectToNode matrix,
    Modules/Loadable/Markups/MRML/vtkMRMLMarkupsROINode.h) and under the input's parent
    transform. A rerun reuses the ROIs of the last run on this volume (extra ones removed)."""
    from MammoPatchLib.volume_bridge import box_to_roi

    source_id = input_volume.GetID()
    old = result_nodes(scene, "vtkMRMLMarkupsROINode", source_id, FINDING)
    old.sort(key=lambda n: int(n.GetAttribute(KEY) or 0))
    matrix = _matrix_array(input_volume)
    nodes = []
    for index, finding in enumerate(findings):
        name = f"{label} {finding['category']} {_score_text(finding.get('score'))}".strip()
        roi = old[index] if index < len(old) else scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
        roi.SetName(name)
        object_to_node, size = box_to_roi(finding["box_px"], matrix)
        roi.SetLocked(False)
        roi.SetAndObserveObjectToNodeMatrix(_vtk_matrix(object_to_node))
        roi.SetSize(*(float(s) for s in size))
        roi.SetAndObserveTransformNodeID(input_volume.GetTransformNodeID())
        _tag(roi, source_id, FINDING, str(index))
        roi.SetAttribute(CLASS, finding["category"])
        roi.SetAttribute(SCORE, _score_text(finding.get("score"), 4))
        roi.SetAttribute(VIEW, label)
        roi.SetAttribute(BOX_MM, " ".join(f"{float(v):.3f}" for v in finding["box_mm"]))
        # The Markups module shows a node's description (vtkMRMLNode::SetDescription).
        roi.SetDescription(f"{finding['category']}, score {_score_text(finding.get('score'))}, {label}, "
                           f"{size_mm_text(finding)} mm")
        roi.RemoveAttribute(ACTIVATION)
        roi.SetLocked(True)
        if roi.GetDisplayNode() is None:
            roi.CreateDefaultDisplayNodes()
        nodes.append(roi)
    for extra in old[len(findings):]:
        scene.RemoveNode(extra)
    return nodes


def _score_text(score, digits: int = 2) -> str:
    """A score for a name or table cell; "n/a" for a class the model was not trained on (None)."""
    return "n/a" if score is None else f"{float(score):.{digits}f}"


def size_mm_text(finding: dict) -> str:
    """"12.3 x 8.4": a finding's box width x height in mm."""
    x0, y0, x1, y1 = (float(v) for v in finding["box_mm"])
    return f"{x1 - x0:.1f} x {y1 - y0:.1f}"


def load_results(scene, input_volume, image: ImageResult, heatmap_classes: Optional[Sequence[str]] = None
                 ) -> LoadedResults:
    """Put one image's results, exactly as its manifest entry lists them, into the scene: into
    this input's own nodes (found by their ``MammoPatch.source`` attribute), never another's.

    Args:
        heatmap_classes: the heatmaps to load (None: every heatmap the manifest lists).

    Raises:
        RuntimeError: a heatmap asked for that the worker did not write, or an unreadable file.
    """
    source_id = input_volume.GetID()
    label = view_label(image.source)
    name = f"{input_volume.GetName()} ({label})"
    wanted = list(image.heatmaps) if heatmap_classes is None else list(heatmap_classes)
    absent = [c for c in wanted if c not in image.heatmaps]
    if absent:
        raise RuntimeError(f"the worker wrote no heatmap for {', '.join(absent)} "
                           f"(written: {', '.join(image.heatmaps) or 'none'})")
    to_input = _library_to_input(input_volume, image.source)
    spacing = (image.source or {}).get("pixel_spacing_mm") or [None]
    loaded = LoadedResults(view=label, image_score=image.image_score, other_breast=image.other_breast,
                           spacing_mm=spacing[0], spacing_source=str((image.source or {}).get("spacing_source", "")))
    for class_name in wanted:
        node = _result_node(scene, "vtkMRMLScalarVolumeNode", source_id, HEATMAP, class_name)
        node = read_volume(scene, image.heatmaps[class_name], "vtkMRMLScalarVolumeNode",
                           f"{name} heatmap {class_name}", node)
        node.SetName(f"{name} heatmap {class_name}")
        _tag(node, source_id, HEATMAP, class_name)
        loaded.geometry_differences_mm[node.GetName()] = _place_on_input(node, input_volume, to_input)
        _show_as_probability(node, image.thresholds.get(class_name))
        loaded.heatmaps[class_name] = node
    for old in result_nodes(scene, "vtkMRMLScalarVolumeNode", source_id, HEATMAP):
        if old.GetAttribute(KEY) not in loaded.heatmaps:
            scene.RemoveNode(old)  # a class this run did not show
    if image.labelmap:
        node = _result_node(scene, "vtkMRMLLabelMapVolumeNode", source_id, LABELMAP)
        node = read_volume(scene, image.labelmap, "vtkMRMLLabelMapVolumeNode", f"{name} findings", node)
        node.SetName(f"{name} findings")
        _tag(node, source_id, LABELMAP)
        loaded.geometry_differences_mm[node.GetName()] = _place_on_input(node, input_volume, to_input)
        node.GetDisplayNode().SetAndObserveColorNodeID(class_color_node(scene, image.labelmap_classes).GetID())
        loaded.labelmap = node
        loaded.segmentation = write_segmentation(scene, input_volume, node, image.labelmap_classes, label, name)
    loaded.findings = write_findings(scene, input_volume, image.findings, label)
    loaded.activation_maps = _load_activation_maps(scene, input_volume, image, loaded.findings, to_input)
    for node in _all_result_nodes(scene, source_id):
        node.SetAttribute(VIEW, label)
        node.SetAttribute(OTHER_BREAST, str((image.other_breast or {}).get("image", "")))
        node.SetAttribute(IMAGE_SCORE, _score_text(image.image_score, 4))
    place_in_study(scene, input_volume, _all_result_nodes(scene, source_id))
    return loaded


def _all_result_nodes(scene, source_id: str) -> list:
    """Every node holding a result of the input ``source_id``."""
    nodes = []
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if node.GetAttribute(SOURCE) == source_id:
            nodes.append(node)
    return nodes


def terminology_entry(class_name: str, laterality: str = "") -> str:
    """A segment's terminology entry for a finding class: category Morphologically abnormal
    structure, type the class's SNOMED CT code DICOM uses (MammoPatchLib.vocabulary.FINDING_CODES,
    the codes the library's own DICOM SEG carries), region the breast with its side. Serialized
    as Slicer's terminology logic does (Modules/Loadable/Terminologies/Logic/
    vtkSlicerTerminologiesModuleLogic.cxx v5.8.1 lines 2053-2073: context~category~type~modifier~
    anatomic context~region~region modifier, each code "scheme^value^meaning"), so Slicer's DICOM
    export writes the segments as DICOM SEG with these codes."""
    from MammoPatchLib.vocabulary import BREAST_CODE, FINDING_CATEGORY_CODE, FINDING_CODES, SIDE_CODES

    def code(triple) -> str:
        return "^^" if triple is None else f"{triple[1]}^{triple[0]}^{triple[2]}"

    return "~".join([TERMINOLOGY_CONTEXT, code(FINDING_CATEGORY_CODE), code(FINDING_CODES.get(class_name)), "^^",
                     ANATOMIC_CONTEXT, code(BREAST_CODE), code(SIDE_CODES.get(laterality))])


#: Terminology context names of Slicer's DICOM master lists (Modules/Loadable/Terminologies/
#: Resources/SegmentationCategoryTypeModifier-DICOM-Master.json and
#: AnatomicRegionAndModifier-DICOM-Master.json, line 2 of each, v5.8.1).
TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


def write_segmentation(scene, input_volume, labelmap_node, classes: Sequence[str], label: str, name: str):
    """The findings as a segmentation: one segment per class present in the label map, its
    binary labelmap on the input's pixels, its terminology the class's standard code
    (:func:`terminology_entry`). Segments are built directly (vtkSegment::AddRepresentation,
    Libs/vtkSegmentationCore/vtkSegment.h) rather than through a converter, and the terminology
    is the segment's "TerminologyEntry" tag (vtkSegment::GetTerminologyEntryTagName, v5.8.1
    line 52; SetTerminology exists only since 5.10). A rerun replaces the segments."""
    from vtk.util import numpy_support

    from slicer import vtkOrientedImageData, vtkSegment, vtkSegmentationConverter

    source_id = input_volume.GetID()
    node = _result_node(scene, "vtkMRMLSegmentationNode", source_id, SEGMENTATION)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} segmentation")
        node.CreateDefaultDisplayNodes()
    node.SetName(f"{name} segmentation")
    _tag(node, source_id, SEGMENTATION)
    node.SetReferenceImageGeometryParameterFromVolumeNode(labelmap_node)
    segmentation = node.GetSegmentation()
    segmentation.RemoveAllSegments()
    image = labelmap_node.GetImageData()
    dims = image.GetDimensions()
    labels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    matrix = vtk.vtkMatrix4x4()
    labelmap_node.GetIJKToRASMatrix(matrix)
    laterality = label.split("-")[0]
    colours = class_color_node(scene, classes)
    for value, class_name in enumerate(classes):
        if value == 0 or not (labels == value).any():
            continue
        mask = vtkOrientedImageData()
        mask.SetDimensions(*dims)
        mask.SetImageToWorldMatrix(matrix)
        mask.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        mask.GetPointData().GetScalars().DeepCopy(numpy_support.numpy_to_vtk(
            (labels == value).astype(np.uint8).ravel(), deep=True))
        segment = vtkSegment()
        segment.SetName(class_name)
        rgba = [0.0, 0.0, 0.0, 0.0]
        colours.GetColor(value, rgba)
        segment.SetColor(rgba[:3])
        segment.AddRepresentation(vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), mask)
        segment.SetTag(vtkSegment.GetTerminologyEntryTagName(), terminology_entry(class_name, laterality))
        segmentation.AddSegment(segment, class_name)
    node.SetAndObserveTransformNodeID(input_volume.GetTransformNodeID())
    return node


RESULTS_FOLDER = "MammoPatch results"


def place_in_study(scene, input_volume, nodes: Sequence) -> Optional[int]:
    """Every result under the input's study in the Subject Hierarchy, in a "MammoPatch results"
    folder of that study (or of the input's own parent when it is in none): vtkMRMLSubjectHierarchyNode
    GetItemByDataNode, GetItemAncestorAtLevel, CreateFolderItem, SetItemParent
    (Libs/MRML/Core/vtkMRMLSubjectHierarchyNode.h). Returns the folder's item."""
    from slicer import vtkMRMLSubjectHierarchyConstants, vtkMRMLSubjectHierarchyNode

    hierarchy = vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is None:
        return None
    item = hierarchy.GetItemByDataNode(input_volume)
    parent = hierarchy.GetItemAncestorAtLevel(item, vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy()) \
        if item else 0
    if not parent:
        parent = (hierarchy.GetItemParent(item) if item else 0) or hierarchy.GetSceneItemID()
    folder = hierarchy.GetItemChildWithName(parent, RESULTS_FOLDER)
    if not folder:
        folder = hierarchy.CreateFolderItem(parent, RESULTS_FOLDER)
    for node in nodes:
        node_item = hierarchy.GetItemByDataNode(node)
        if not node_item:  # Slicer's subject hierarchy plugins add one per node; MRML alone does not
            hierarchy.CreateItem(folder, node)
        elif hierarchy.GetItemParent(node_item) != folder:
            hierarchy.SetItemParent(node_item, folder)
    return folder


def _load_activation_maps(scene, input_volume, image: ImageResult, finding_nodes: list,
                          to_input: np.ndarray) -> list:
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
        _place_on_input(node, input_volume, to_input)
        _show_as_probability(node)
        finding.SetAttribute(ACTIVATION, node.GetID())
        keep.add(node.GetID())
        nodes.append(node)
    for old in result_nodes(scene, "vtkMRMLScalarVolumeNode", source_id, ACTIVATION_MAP):
        if old.GetID() not in keep:
            scene.RemoveNode(old)
    return nodes


def activation_map_of(scene, finding_node):
    """The activation-map volume of a finding's ROI, or None."""
    node_id = finding_node.GetAttribute(ACTIVATION) if finding_node is not None else None
    return scene.GetNodeByID(node_id) if node_id else None
