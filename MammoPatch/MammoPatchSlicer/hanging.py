"""A study hung as mammography viewers hang it, without Qt: right and left side by side, each
breast mirrored so the chest walls meet in the middle, CC above MLO; one slice view per view
showing the mammogram, its heatmap (transparent below its class threshold) and label map;
window/level linked across the four; a finding centred in its view.

The layout is an XML description added to the scene's layout node (vtkMRMLLayoutNode::
AddLayoutDescription and SetViewArrangement, Libs/MRML/Core/vtkMRMLLayoutNode.h v5.8.1 lines 40
and 137; ids from SlicerLayoutUserView = 100 up are free for modules, line 131). Slicer's layout
logic creates a slice node for each ``<view class="vtkMRMLSliceNode" singletontag=...>``, its
layout name the tag (vtkMRMLLayoutLogic::CreateViewFromAttributes, Libs/MRML/Logic/
vtkMRMLLayoutLogic.cxx v5.8.1 line 1582; "viewlabel" and "viewcolor" properties, ApplyProperty
lines 1681-1692). Each slice view's layers are its slice composite node (the one with the same
layout name, as vtkMRMLSliceLogic finds it, vtkMRMLSliceLogic.h line 424).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import vtk

from .scene import HEATMAP, LABELMAP, result_nodes

#: Layout id of the hanging (any unused id above vtkMRMLLayoutNode::SlicerLayoutUserView).
HANGING_LAYOUT_ID = 20260
#: The four views, as (row, column) of the hanging: CC above MLO, right breast on the left.
HANGING = {"R-CC": (0, 0), "L-CC": (0, 1), "R-MLO": (1, 0), "L-MLO": (1, 1)}
VIEW_COLOURS = {"R-CC": "#d9534f", "L-CC": "#5bc0de", "R-MLO": "#f0ad4e", "L-MLO": "#5cb85c"}


def slice_view_name(view: str) -> str:
    """The layout name (singleton tag) of a view's slice view: "MammoPatchRCC"."""
    return "MammoPatch" + view.replace("-", "")


def hanging_layout_xml() -> str:
    """The layout description: two rows (CC, MLO) of two slice views (right, left)."""
    rows = []
    for row in range(2):
        items = []
        for view, (r, c) in sorted(HANGING.items(), key=lambda kv: kv[1]):
            if r != row:
                continue
            items.append(
                f'<item><view class="vtkMRMLSliceNode" singletontag="{slice_view_name(view)}">'
                f'<property name="viewlabel" action="default">{view}</property>'
                f'<property name="viewcolor" action="default">{VIEW_COLOURS[view]}</property>'
                "</view></item>")
        rows.append('<item><layout type="horizontal">' + "".join(items) + "</layout></item>")
    return '<layout type="vertical">' + "".join(rows) + "</layout>"


def show_hanging_layout(layout_node) -> None:
    """Add the hanging layout to the layout node (once) and switch to it."""
    if not layout_node.IsLayoutDescription(HANGING_LAYOUT_ID):
        layout_node.AddLayoutDescription(HANGING_LAYOUT_ID, hanging_layout_xml())
    layout_node.SetViewArrangement(HANGING_LAYOUT_ID)


def _named(scene, class_name: str, layout_name: str):
    for index in range(scene.GetNumberOfNodesByClass(class_name)):
        node = scene.GetNthNodeByClass(index, class_name)
        if node.GetLayoutName() == layout_name:
            return node
    return None


def slice_node(scene, view: str):
    """The slice node of a view's slice view (made by the layout logic), or None."""
    return _named(scene, "vtkMRMLSliceNode", slice_view_name(view))


def composite_node(scene, view: str):
    """The slice composite node of a view's slice view; made here when the slice view has not
    made its own yet (vtkMRMLSliceLogic then finds this one by its layout name)."""
    node = _named(scene, "vtkMRMLSliceCompositeNode", slice_view_name(view))
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        node.SetLayoutName(slice_view_name(view))
    return node


def world_ijk_to_ras(volume) -> np.ndarray:
    """A volume's IJK-to-RAS in world coordinates (through its linear parent transforms)."""
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    ijk = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    parent = volume.GetParentTransformNode()
    if parent is not None:
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        ijk = np.array([[to_world.GetElement(r, c) for c in range(4)] for r in range(4)]) @ ijk
    return ijk


def chest_wall_on_right(volume) -> bool:
    """Whether the mammogram's chest wall is on the right of its pixel columns (the library's
    rule: the side holding more intensity)."""
    from vtk.util import numpy_support

    from MammoPatchLib.transforms.laterality import chest_wall_on_right as on_right

    image = volume.GetImageData()
    rows, columns = image.GetDimensions()[1], image.GetDimensions()[0]
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(-1, rows, columns)
    return on_right(pixels[:1].astype(np.float64))


def slice_to_ras(volume, laterality: str) -> np.ndarray:
    """The slice view's SliceToRAS for a mammogram: the image plane, centred, rows going down,
    mirrored where needed so that the chest wall of a right breast is on the right of its view
    and that of a left breast on the left (the two meet in the middle of the hanging)."""
    ijk = world_ijk_to_ras(volume)
    columns, rows = ijk[:3, 0] / np.linalg.norm(ijk[:3, 0]), ijk[:3, 1] / np.linalg.norm(ijk[:3, 1])
    x = columns if chest_wall_on_right(volume) == (laterality == "R") else -columns
    y = -rows
    normal = np.cross(x, y)
    dims = volume.GetImageData().GetDimensions()
    centre = ijk @ np.array([(dims[0] - 1) / 2.0, (dims[1] - 1) / 2.0, 0.0, 1.0])
    matrix = np.eye(4)
    matrix[:3, 0], matrix[:3, 1], matrix[:3, 2], matrix[:3, 3] = x, y, normal, centre[:3]
    return matrix


def hang_study(scene, views: Dict[str, object], layout_node=None) -> Dict[str, object]:
    """Show each view ("R-CC" -> its input volume) in its slice view of the hanging layout
    (switched to when ``layout_node`` is given): the mammogram as background, its first heatmap
    as foreground, its label map; the view's SliceToRAS from :func:`slice_to_ras`
    (vtkMRMLSliceNode::GetSliceToRAS / UpdateMatrices, Libs/MRML/Core/vtkMRMLSliceNode.h) and
    its field of view the image. Returns view -> slice node for the views shown."""
    if layout_node is not None:
        show_hanging_layout(layout_node)
    shown = {}
    for view, volume in views.items():
        if view not in HANGING:
            continue
        composite = composite_node(scene, view)
        composite.SetBackgroundVolumeID(volume.GetID())
        heatmaps = result_nodes(scene, "vtkMRMLScalarVolumeNode", volume.GetID(), HEATMAP)
        composite.SetForegroundVolumeID(heatmaps[0].GetID() if heatmaps else None)
        composite.SetForegroundOpacity(0.7)
        labelmaps = result_nodes(scene, "vtkMRMLLabelMapVolumeNode", volume.GetID(), LABELMAP)
        composite.SetLabelVolumeID(labelmaps[0].GetID() if labelmaps else None)
        node = slice_node(scene, view)
        if node is None:
            continue  # the layout logic has not made the view (no layout node given)
        matrix = slice_to_ras(volume, view.split("-")[0])
        target = node.GetSliceToRAS()
        for r in range(4):
            for c in range(4):
                target.SetElement(r, c, float(matrix[r, c]))
        spacing = np.linalg.norm(world_ijk_to_ras(volume)[:3, :2], axis=0)
        dims = volume.GetImageData().GetDimensions()
        node.SetFieldOfView(dims[0] * spacing[0], dims[1] * spacing[1], float(node.GetFieldOfView()[2]))
        node.UpdateMatrices()
        shown[view] = node
    return shown


class WindowLevelLink:
    """Window/level linked across the study's mammograms: a change of one volume display
    node's window or level (vtkMRMLScalarVolumeDisplayNode, ModifiedEvent) is copied to the
    others. Keep the object while the link should hold; :meth:`remove` ends it."""

    def __init__(self, volumes: Sequence) -> None:
        self.displays = [v.GetDisplayNode() for v in volumes if v.GetDisplayNode() is not None]
        self._copying = False
        self._tags = [(d, d.AddObserver(vtk.vtkCommand.ModifiedEvent, self._on_modified)) for d in self.displays]
        if self.displays:
            self._on_modified(self.displays[0], "ModifiedEvent")

    def _on_modified(self, caller, event) -> None:
        if self._copying:
            return
        self._copying = True
        try:
            window, level = caller.GetWindow(), caller.GetLevel()
            for display in self.displays:
                if display is not caller and (display.GetWindow() != window or display.GetLevel() != level):
                    display.AutoWindowLevelOff()
                    display.SetWindowLevel(window, level)
        finally:
            self._copying = False

    def remove(self) -> None:
        for display, tag in self._tags:
            display.RemoveObserver(tag)
        self._tags = []


def centre_on_finding(scene, roi_id: str) -> List[object]:
    """Centre every slice view showing the finding's mammogram on the finding's centre
    (vtkMRMLSliceNode::JumpSliceByCentering, Libs/MRML/Core/vtkMRMLSliceNode.h v5.8.1 line 396;
    the ROI's world centre, vtkMRMLMarkupsROINode::GetCenterWorld). Returns the slice nodes
    moved."""
    from .scene import SOURCE

    roi = scene.GetNodeByID(roi_id) if roi_id else None
    if roi is None:
        return []
    centre = [0.0, 0.0, 0.0]
    roi.GetCenterWorld(centre)
    source = roi.GetAttribute(SOURCE)
    moved = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        if composite.GetBackgroundVolumeID() != source:
            continue
        node = _named(scene, "vtkMRMLSliceNode", composite.GetLayoutName())
        if node is not None:
            node.JumpSliceByCentering(*centre)
            moved.append(node)
    return moved


def views_of(scene, volumes: Sequence) -> Dict[str, object]:
    """view label ("R-CC") -> input volume, for the analysed volumes of a study (the label its
    results carry); a view given twice keeps the first."""
    from .scene import VIEW

    views: Dict[str, object] = {}
    for volume in volumes:
        labelmaps = result_nodes(scene, "vtkMRMLLabelMapVolumeNode", volume.GetID(), LABELMAP)
        view: Optional[str] = labelmaps[0].GetAttribute(VIEW) if labelmaps else None
        if view and view not in views:
            views[view] = volume
    return views
