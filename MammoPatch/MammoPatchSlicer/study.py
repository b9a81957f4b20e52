"""A study as the worker reads it, without Qt: the views (volume nodes) of one study, the input
manifest that hands them to one ``mammopatch predict manifest.csv`` run (so the model is loaded
once and both breasts of each view are read together, MammoPatchLib.prediction.runner.PairWait),
and the study's findings and image-score tables.

A study is the Subject Hierarchy study a volume is under (Slicer's DICOM loader puts each series
under its patient and study: vtkMRMLSubjectHierarchyConstants::GetDICOMLevelStudy), else the
folder it is in; a volume in neither is a study of its own. Views of files that state no view
(NRRD, PNG) take it from the volume's name ("R CC", "LMLO", "mammo_L-CC") or its
``MammoPatch.laterality`` / ``MammoPatch.viewPosition`` attributes, and are given to the worker
in the manifest's ``study``, ``view`` and ``laterality`` columns.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence

from .scene import (BOX_MM, CLASS, FINDING, IMAGE_SCORE, KEY, LABELMAP, OTHER_BREAST, SCORE, SOURCE, VIEW,
                    result_nodes, size_mm_text)

#: Node attributes a user (or a script) can set to state a non-DICOM volume's view.
LATERALITY_ATTRIBUTE, VIEW_ATTRIBUTE = "MammoPatch.laterality", "MammoPatch.viewPosition"
_NAME_VIEW = re.compile(r"(?:^|[^A-Za-z])(L|R|LEFT|RIGHT)[ _-]?(CC|MLO|ML|LM|XCCL|SIO)(?:$|[^A-Za-z])", re.I)
#: The worker's input-manifest columns (README, "Archive-scale batches"; read by
#: MammoPatchLib.prediction.jobs.read_manifest_rows).
MANIFEST_COLUMNS = ["path", "spacing_mm", "study", "view", "laterality"]


@dataclass
class StudyView:
    """One mammogram of a study: its volume, the file the worker reads (a DICOM source file, or
    None: exported), the pixel spacing given for a volume without DICOM (None: DICOM's own),
    and the study / view / laterality stated for files that state none."""

    volume: object
    input_file: Optional[str] = None
    spacing_mm: Optional[float] = None
    study: str = ""
    view: str = ""
    laterality: str = ""


def stated_view(volume) -> tuple:
    """(laterality, view position) a volume states by attributes or its name; "" where none."""
    laterality = (volume.GetAttribute(LATERALITY_ATTRIBUTE) or "").upper()[:1]
    view = (volume.GetAttribute(VIEW_ATTRIBUTE) or "").upper()
    match = _NAME_VIEW.search(volume.GetName() or "")
    if match:
        laterality = laterality or match.group(1).upper()[0]
        view = view or match.group(2).upper()
    return laterality, view


def _is_mammogram(node) -> bool:
    return (node is not None and node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode")
            and node.GetAttribute(SOURCE) is None)


def study_volumes(scene, volume) -> List[object]:
    """The mammograms of ``volume``'s study (see the module docstring), ``volume`` first; our
    own result volumes are never inputs."""
    from slicer import vtkMRMLSubjectHierarchyConstants, vtkMRMLSubjectHierarchyNode

    hierarchy = vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = hierarchy.GetItemByDataNode(volume) if hierarchy is not None else 0
    if not item:
        return [volume]
    group = hierarchy.GetItemAncestorAtLevel(item, vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy())
    if not group:
        group = hierarchy.GetItemParent(item)
        if not group or group == hierarchy.GetSceneItemID():
            return [volume]
    children = vtk_id_list()
    hierarchy.GetItemChildren(group, children, True)
    nodes = [hierarchy.GetItemDataNode(children.GetId(i)) for i in range(children.GetNumberOfIds())]
    return [volume] + [n for n in nodes if _is_mammogram(n) and n is not volume]


def vtk_id_list():
    import vtk

    return vtk.vtkIdList()


def study_key(scene, volume) -> str:
    """A name for the study of ``volume`` (its Subject Hierarchy study or folder item), the
    manifest's ``study`` column: the worker pairs the two breasts of a view within a study."""
    from slicer import vtkMRMLSubjectHierarchyConstants, vtkMRMLSubjectHierarchyNode

    hierarchy = vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = hierarchy.GetItemByDataNode(volume) if hierarchy is not None else 0
    if not item:
        return volume.GetID()
    group = hierarchy.GetItemAncestorAtLevel(item, vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy()) or \
        hierarchy.GetItemParent(item)
    return f"item{group}" if group and group != hierarchy.GetSceneItemID() else volume.GetID()


def write_input_manifest(path: str, views: Sequence[StudyView], files: Sequence[str]) -> str:
    """The worker's input manifest: one row per view (``files[i]`` is view i's file)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        for view, file in zip(views, files):
            writer.writerow([os.path.abspath(file), "" if view.spacing_mm is None else repr(float(view.spacing_mm)),
                             view.study, view.view, view.laterality])
    return path


#: Columns of the findings table: one row per finding of every view.
FINDING_COLUMNS = ["View", "Laterality", "Class", "Score", "Size (mm)", "Read", "Finding"]
#: Columns of the image-score table: one row per view.
SCORE_COLUMNS = ["View", "Laterality", "Image score", "Read"]
FINDINGS_TABLE, SCORES_TABLE = "findings table", "image scores table"
READ_PAIRED, READ_ALONE = "against the other breast", "alone"


def _table(scene, key: str, name: str, columns: Sequence[str]):
    """The study's table ``key`` (found by attribute), emptied, with string columns."""
    node = None
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLTableNode")):
        candidate = scene.GetNthNodeByClass(index, "vtkMRMLTableNode")
        if candidate.GetAttribute("MammoPatch.table") == key:
            node = candidate
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
        node.SetAttribute("MammoPatch.table", key)
    node.SetName(name)
    node.RemoveAllColumns()
    for column in columns:
        node.AddColumn().SetName(column)
    node.SetUseColumnTitleAsColumnHeader(True)  # vtkMRMLTableNode.h v5.6.2-main line 125
    return node


def _add_row(table, values: Sequence[str]) -> None:
    row = table.AddEmptyRow()
    for column, value in enumerate(values):
        table.SetCellText(row, column, str(value))


def study_tables(scene, volumes: Sequence, study_name: str):
    """(findings table, image-score table) of a study: vtkMRMLTableNode (Libs/MRML/Core/
    vtkMRMLTableNode.h: AddColumn, AddEmptyRow, SetCellText) rows for the findings and image
    score of every view of ``volumes`` analysed so far, read from their result nodes (so a rerun
    of one view keeps the others' rows); the "Finding" column holds the finding's ROI node ID
    (selecting a row centres the views on it: hanging.centre_on_finding)."""
    findings = _table(scene, FINDINGS_TABLE, f"{study_name} MammoPatch findings", FINDING_COLUMNS)
    scores = _table(scene, SCORES_TABLE, f"{study_name} MammoPatch image scores", SCORE_COLUMNS)
    for volume in volumes:
        labelmaps = result_nodes(scene, "vtkMRMLLabelMapVolumeNode", volume.GetID(), LABELMAP)
        if not labelmaps:
            continue  # not analysed (yet)
        view = labelmaps[0].GetAttribute(VIEW) or ""
        laterality = view.split("-")[0]
        read = READ_PAIRED if labelmaps[0].GetAttribute(OTHER_BREAST) else READ_ALONE
        rois = result_nodes(scene, "vtkMRMLMarkupsROINode", volume.GetID(), FINDING)
        for roi in sorted(rois, key=lambda n: int(n.GetAttribute(KEY) or 0)):
            box = {"box_mm": [float(v) for v in (roi.GetAttribute(BOX_MM) or "0 0 0 0").split()]}
            _add_row(findings, [view, laterality, roi.GetAttribute(CLASS), roi.GetAttribute(SCORE), size_mm_text(box),
                                read, roi.GetID()])
        _add_row(scores, [view, laterality, labelmaps[0].GetAttribute(IMAGE_SCORE), read])
    return findings, scores
