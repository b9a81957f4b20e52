"""MammoPatch: 3D Slicer module for sliding-patch detection of mammographic findings.

Thin Slicer front end: the Logic converts the volume node to a numpy array plus geometry
and calls MammoPatchLib (the same functions as the ``mammopatch`` command line), then puts
the heatmap, label map and one markups ROI per finding into the scene.
"""

import logging
import os
import pathlib
import sys
from typing import Annotated, Callable, List, Optional

import slicer
import vtk
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


def _moduleRoot() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def _ensureLibraryOnPath() -> None:
    """In the source tree MammoPatchLib is one level above this file; packaged, it is beside it."""
    for folder in (_moduleRoot(), os.path.dirname(_moduleRoot())):
        if os.path.isdir(os.path.join(folder, "MammoPatchLib")) and folder not in sys.path:
            sys.path.insert(0, folder)
            return


_ensureLibraryOnPath()
# The shared vocabulary (classes, modes) is pure Python: safe before any dependency is installed.
from MammoPatchLib.vocabulary import DEFAULT_MODE, FINDING_CLASSES, MODES  # noqa: E402

ALL_CLASSES = "All classes"
LABEL_COLOURS = [
    (0.90, 0.10, 0.10), (1.00, 0.85, 0.00), (0.20, 0.60, 1.00), (0.60, 0.20, 0.80), (0.00, 0.75, 0.60),
    (1.00, 0.50, 0.00), (0.55, 0.35, 0.15), (1.00, 0.40, 0.70), (0.50, 0.80, 0.20), (0.40, 0.40, 0.40),
]

POSTER_CITATION = (
    "Mellado D, Querales M, Sotelo J, Godoy E, Pardo F, Lever S, Chabert S, Salas R. A Deep Learning "
    "Classifier Using Sliding Patches for Detection of Mammographical Findings. Universidad de "
    "Valparaíso, 2023."
)


def _resourceFile(*parts: str) -> str:
    """Resources sit beside the module in a packaged extension and one level up in the source tree."""
    for base in (os.path.join(_moduleRoot(), "Resources"), os.path.join(os.path.dirname(_moduleRoot()), "Resources")):
        candidate = os.path.join(base, *parts)
        if os.path.exists(candidate):
            return candidate
    return os.path.join(_moduleRoot(), "Resources", *parts)


#
# MammoPatch
#


class MammoPatch(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MammoPatch")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Mammography")]
        self.parent.dependencies = []
        self.parent.contributors = ["MammoPatch contributors"]
        self.parent.helpText = _(
            "Finds mammographic findings (masses, calcifications, distortions, asymmetries...) with a patch "
            "classifier slid over the mammogram, and shows per-class heatmaps, a label map and one box per "
            "finding. Research use only: not a medical device."
        )
        self.parent.acknowledgementText = _(
            "Reproduces and extends the method of: {citation} The bundled model was trained on the mini-MIAS "
            "database (Suckling J et al., 1994), research use only."
        ).format(citation=POSTER_CITATION)
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """No checksummed sample download is published yet: the self-test and the module's
    'Make sample' path generate a phantom mammogram with MammoPatchLib.synthetic instead."""
    return


#
# Parameter node
#


@parameterNodeWrapper
class MammoPatchParameterNode:
    """
    inputVolume - the mammogram (single-slice scalar volume).
    useDefaultModel - use the model bundled with the extension.
    modelPath - a model file, used when useDefaultModel is off.
    mode - "fast" (one dense pass, the default) or "exact" (window by window, the poster).
    device - "auto", "cpu" or "cuda".
    threshold - probability threshold for every class when useModelThresholds is off.
    useModelThresholds - use the per-class thresholds stored in the model file.
    heatmapClass - the class shown in outputHeatmap, or "All classes" (one volume per class).
    outputHeatmap - probability map of heatmapClass, in the input's geometry.
    outputLabelMap - 0 = no finding, k = k-th class.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    useDefaultModel: bool = True
    modelPath: pathlib.Path
    mode: Annotated[str, Choice(list(MODES))] = DEFAULT_MODE
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    useModelThresholds: bool = True
    heatmapClass: Annotated[str, Choice([ALL_CLASSES] + FINDING_CLASSES)] = "Mass"
    outputHeatmap: vtkMRMLScalarVolumeNode
    outputLabelMap: vtkMRMLLabelMapVolumeNode


#
# Widget
#


class MammoPatchWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._running = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(_resourceFile("UI", "MammoPatch.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MammoPatchLogic()  # combo boxes are filled from the Choice annotations by connectGui

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[MammoPatchParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._running:
            return
        node = self._parameterNode
        modelOk = node and (node.useDefaultModel or (node.modelPath and node.modelPath.is_file()))
        self.ui.modelPathLineEdit.enabled = bool(node) and not node.useDefaultModel
        self.ui.thresholdSliderWidget.enabled = bool(node) and not node.useModelThresholds
        if node and node.inputVolume and modelOk:
            self.ui.applyButton.toolTip = _("Run the sliding-window classifier")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.toolTip = _("Select a mammogram and a model")
            self.ui.applyButton.enabled = False

    def onApplyButton(self) -> None:
        if self._running:  # the button reads "Cancel" while running
            self.logic.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            return
        if not self.logic.ensureDependencies():
            return
        self._running = True
        self.ui.applyButton.text = _("Cancel")
        self.ui.progressBar.visible = True
        self.ui.progressBar.value = 0
        try:
            with slicer.util.tryWithErrorDisplay(_("MammoPatch failed."), waitCursor=True):
                node = self._parameterNode
                result = self.logic.process(
                    node.inputVolume, node.outputHeatmap, node.outputLabelMap,
                    modelPath=None if node.useDefaultModel else str(node.modelPath),
                    mode=node.mode, device=node.device,
                    threshold=None if node.useModelThresholds else node.threshold,
                    heatmapClass=node.heatmapClass, progressCallback=self._onProgress)
                if result is not None:
                    node.outputHeatmap = self.logic.lastHeatmapNode
                    node.outputLabelMap = self.logic.lastLabelMapNode
                    self.ui.statusLabel.text = _("{count} finding(s) in {seconds:.1f} s").format(
                        count=len(result.findings), seconds=sum(result.timings.values()))
        finally:
            self._running = False
            self.ui.applyButton.text = _("Apply")
            self.ui.progressBar.visible = False
            self._checkCanApply()

    def _onProgress(self, fraction: float, text: str) -> None:
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.statusLabel.text = text
        slicer.app.processEvents()


#
# Logic
#


class MammoPatchLogic(ScriptedLoadableModuleLogic):
    """Runs MammoPatchLib on volume nodes; usable without the widget (Python console, batch)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._predictor = None
        self._cancelRequested = False
        self.lastHeatmapNode = None
        self.lastLabelMapNode = None
        self.lastFindingNodes: List = []

    def getParameterNode(self):
        return MammoPatchParameterNode(super().getParameterNode())

    # -- dependencies -------------------------------------------------------------------------

    @staticmethod
    def missingPackages() -> List[str]:
        import importlib.util

        modules = {"torch": "torch", "monai": "monai", "pydicom": "pydicom", "skimage": "scikit-image",
                   "cv2": "opencv-python-headless", "tqdm": "tqdm", "efficientnet_lite_pytorch": "efficientnet-lite-pytorch"}
        return [package for module, package in modules.items() if importlib.util.find_spec(module) is None]

    def ensureDependencies(self, askUser: bool = True) -> bool:
        """Install what is missing, on first use (never at import), asking the user first."""
        missing = self.missingPackages()
        if not missing:
            _ensureLibraryOnPath()
            return True
        if "torch" in missing:
            try:
                import PyTorchUtils  # the PyTorch extension
            except ImportError:
                slicer.util.errorDisplay(_("MammoPatch needs PyTorch: install the 'PyTorch' extension from the "
                                           "Extensions Manager, restart Slicer, and try again."))
                return False
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled() and torchLogic.installTorch(askConfirmation=askUser) is None:
                slicer.util.errorDisplay(_("PyTorch was not installed; MammoPatch cannot run."))
                return False
        requirements = _resourceFile("requirements.txt")
        try:
            if hasattr(slicer, "packaging") and hasattr(slicer.packaging, "pip_ensure"):
                slicer.packaging.pip_ensure(slicer.packaging.load_requirements(requirements), requester="MammoPatch")
            else:
                if askUser and not slicer.util.confirmOkCancelDisplay(
                        _("MammoPatch needs these Python packages: {packages}. Install them now?").format(
                            packages=", ".join(p for p in missing if p != "torch"))):
                    return False
                slicer.util.pip_install(["-r", requirements])
        except Exception as exc:  # pip failures: proxy, offline, ...
            slicer.util.errorDisplay(_("Installing MammoPatch's Python packages failed ({error}). If this computer "
                                       "is offline or behind a proxy, install them with 'pip install -r {file}' in "
                                       "Slicer's Python.").format(error=exc, file=requirements))
            return False
        _ensureLibraryOnPath()
        return not self.missingPackages()

    # -- processing ---------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop a running process() at its next batch of windows (within about a second)."""
        self._cancelRequested = True
        if self._predictor is not None:
            self._predictor.cancel()

    def process(self, inputVolume, outputHeatmap=None, outputLabelMap=None, modelPath: Optional[str] = None,
                mode: str = DEFAULT_MODE, device: str = "auto", threshold: Optional[float] = None,
                heatmapClass: str = "Mass", progressCallback: Optional[Callable[[float, str], None]] = None,
                showResult: bool = True):
        """Analyse one mammogram volume and put the results into the scene.

        Returns the MammoPatchLib PredictionResult, or None when cancelled.
        """
        if not inputVolume:
            raise ValueError(_("Input mammogram is missing"))
        _ensureLibraryOnPath()
        from MammoPatchLib.api import resolve_model
        from MammoPatchLib.errors import Cancelled
        from MammoPatchLib.inference import Predictor
        from MammoPatchLib.volume_bridge import image_from_volume_array

        import time

        startTime = time.time()
        logging.info("MammoPatch: processing %s", inputVolume.GetName())
        ijkToRas = vtk.vtkMatrix4x4()
        inputVolume.GetIJKToRASMatrix(ijkToRas)
        matrix = slicer.util.arrayFromVTKMatrix(ijkToRas)
        image = image_from_volume_array(slicer.util.arrayFromVolume(inputVolume), matrix, inputVolume.GetName())

        model = resolve_model(modelPath)
        thresholds = None if threshold is None else [float(threshold)] * len(model.info.classes)
        self._cancelRequested = False
        self._predictor = Predictor(model, mode=mode, device=device, thresholds=thresholds)
        if self._cancelRequested:
            return None
        try:
            result = self._predictor.predict_image(image, on_progress=progressCallback)
        except Cancelled:
            logging.info("MammoPatch: cancelled")
            return None
        finally:
            self._predictor = None

        self.lastHeatmapNode = self._writeHeatmaps(inputVolume, outputHeatmap, result, heatmapClass, matrix)
        self.lastLabelMapNode = self._writeLabelMap(inputVolume, outputLabelMap, result, matrix)
        self.lastFindingNodes = self._writeFindings(inputVolume, result, matrix)
        if showResult:
            slicer.util.setSliceViewerLayers(background=inputVolume, foreground=self.lastHeatmapNode,
                                             foregroundOpacity=0.5, label=self.lastLabelMapNode, fit=True)
        logging.info("MammoPatch: %d finding(s) in %.1f s", len(result.findings), time.time() - startTime)
        return result

    @staticmethod
    def _volumeNode(existing, className: str, name: str):
        return existing if existing else slicer.mrmlScene.AddNewNodeByClass(className, name)

    def _writeHeatmaps(self, inputVolume, outputHeatmap, result, heatmapClass: str, matrix):
        from MammoPatchLib.volume_bridge import volume_array_from_map

        names = result.classes if heatmapClass == ALL_CLASSES else [heatmapClass]
        first = None
        for name in names:
            index = result.classes.index(name)
            nodeName = f"{inputVolume.GetName()} heatmap {name}"
            node = outputHeatmap if (first is None and outputHeatmap) else None
            node = self._volumeNode(node, "vtkMRMLScalarVolumeNode", nodeName)
            slicer.util.updateVolumeFromArray(node, volume_array_from_map(result.heatmaps[index]))
            node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
            display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeInferno")
            display.AutoWindowLevelOff()
            display.SetWindowLevelMinMax(0.0, 1.0)
            first = first or node
        return first

    def _writeLabelMap(self, inputVolume, outputLabelMap, result, matrix):
        from MammoPatchLib.volume_bridge import volume_array_from_map

        node = self._volumeNode(outputLabelMap, "vtkMRMLLabelMapVolumeNode", f"{inputVolume.GetName()} findings")
        slicer.util.updateVolumeFromArray(node, volume_array_from_map(result.label_map))
        node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetAndObserveColorNodeID(self._classColorNode(result.classes).GetID())
        return node

    @staticmethod
    def _classColorNode(classes):
        name = "MammoPatch classes"
        colorNode = slicer.mrmlScene.GetFirstNodeByName(name)
        if colorNode is None:
            colorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
            colorNode.SetTypeToUser()
            colorNode.SetNumberOfColors(len(classes) + 1)
            colorNode.SetColor(0, "No Finding", 0.0, 0.0, 0.0, 0.0)
            for k, className in enumerate(classes, start=1):
                r, g, b = LABEL_COLOURS[(k - 1) % len(LABEL_COLOURS)]
                colorNode.SetColor(k, className, r, g, b, 1.0)
        return colorNode

    def _writeFindings(self, inputVolume, result, matrix):
        from MammoPatchLib.volume_bridge import box_to_ras

        nodes = []
        for finding in result.findings:
            centre, size = box_to_ras(finding.box_px, matrix)
            roi = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLMarkupsROINode", f"{finding.category} {finding.score:.2f}")
            roi.SetCenter(*centre)
            roi.SetSize(*size)
            roi.SetAttribute("MammoPatch.class", finding.category)
            roi.SetAttribute("MammoPatch.score", f"{finding.score:.4f}")
            roi.SetAttribute("MammoPatch.source", inputVolume.GetID())
            roi.SetLocked(True)
            nodes.append(roi)
        return nodes

    def processFiles(self, inputs, outputFolder: str, modelPath: Optional[str] = None, mode: str = DEFAULT_MODE,
                     device: str = "auto", overwrite: bool = False):
        """Batch: the same library function as ``mammopatch predict``; returns the summary rows."""
        _ensureLibraryOnPath()
        from MammoPatchLib.api import predict_files

        return predict_files(inputs, outputFolder, model=modelPath, mode=mode, device=device, overwrite=overwrite,
                             progress=True)


#
# Test
#


class MammoPatchTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: Reload and Test, or `Slicer --testing` via CTest."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_MammoPatch_logic_on_a_phantom()

    def test_MammoPatch_logic_on_a_phantom(self):
        self.delayDisplay("Starting the MammoPatch test")
        logic = MammoPatchLogic()
        if not logic.ensureDependencies(askUser=False):
            self.skipTest("dependencies are not installed")

        from MammoPatchLib.model_file import make_untrained_model
        from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom

        folder = slicer.util.tempDirectory()
        mammo = synthesize_mammogram((512, 416), 0.2, "L", "CC", ["round mass"], seed=1)
        imagePath = write_dicom(mammo, os.path.join(folder, "phantom.dcm"))
        modelPath = make_untrained_model(os.path.join(folder, "tiny.pt"), spacing_mm=0.4)
        inputVolume = slicer.util.loadVolume(imagePath)
        self.assertEqual(slicer.util.arrayFromVolume(inputVolume).shape, (1, 512, 416))

        result = logic.process(inputVolume, modelPath=modelPath, mode="fast", device="cpu", heatmapClass="Mass")
        self.assertIsNotNone(result)
        heat = logic.lastHeatmapNode
        labels = logic.lastLabelMapNode
        heatArray = slicer.util.arrayFromVolume(heat)
        self.assertEqual(heatArray.shape, (1, 512, 416))
        self.assertGreaterEqual(float(heatArray.min()), 0.0)
        self.assertLessEqual(float(heatArray.max()), 1.0)
        self.assertEqual(slicer.util.arrayFromVolume(labels).shape, (1, 512, 416))
        for node in (heat, labels):
            self.assertEqual(node.GetSpacing(), inputVolume.GetSpacing())
            self.assertEqual(node.GetOrigin(), inputVolume.GetOrigin())
        self.assertEqual(len(logic.lastFindingNodes), len(result.findings))
        self.delayDisplay("MammoPatch test passed")
