"""MammoPatch: 3D Slicer module for sliding-patch detection of mammographic findings.

Thin Slicer front end. The work is done by ``mammopatch predict`` in a worker process, and
everything that does not need Qt (dependency checks, the worker process, loading its result
manifest into the scene) lives in the MammoPatchSlicer package beside this file, which the
tests run against real MRML (slicer-core). Here: the module, the parameter node, the widget
(widgets only) and a Logic that connects the two with a Qt timer.
"""

import logging
import os
import pathlib
import sys
from typing import Annotated, Callable, List, Optional, Tuple

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
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


def _libraryRoot() -> Optional[str]:
    """In the source tree MammoPatchLib is one level above this file; packaged, it is beside it."""
    for folder in (_moduleRoot(), os.path.dirname(_moduleRoot())):
        if os.path.isdir(os.path.join(folder, "MammoPatchLib")):
            return folder
    return None


def _ensureLibraryOnPath() -> None:
    """MammoPatchLib and the MammoPatchSlicer package (beside this file) importable."""
    for folder in (_libraryRoot(), _moduleRoot()):
        if folder and folder not in sys.path:
            sys.path.insert(0, folder)


_ensureLibraryOnPath()
# Pure Python (standard library only): safe before any dependency is installed.
from MammoPatchLib.contract import ALL_CLASSES, REPORTED_CLASSES, class_choices  # noqa: E402
from MammoPatchLib.vocabulary import DEFAULT_MODE, FINDING_CLASSES, MODES  # noqa: E402
from MammoPatchSlicer import dependencies  # noqa: E402

#: Findings (highest scores first) whose Grad-CAM map is made when "activation maps" is on.
ACTIVATION_MAPS = 3

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
        self.parent.contributors = ["MammoPatch developers"]
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
    """A sample mammogram in the Sample Data module, generated offline (a phantom from
    MammoPatchLib.synthetic, written as an MG DICOM) instead of downloaded: the
    SampleDataSource's customDownloader (Modules/Scripted/SampleData/SampleData.py) makes it."""
    try:
        import SampleData
    except ImportError:
        return
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="Mammography", sampleName="MammoPatchPhantom", uris="offline:mammopatch-phantom",
        fileNames="MammoPatchPhantom.dcm", nodeNames="MammoPatchPhantom",
        thumbnailFileName=_resourceFile("Icons", "MammoPatch.png"), customDownloader=loadPhantomSample)


def loadPhantomSample(source=None):
    """Generate the phantom mammogram (a mass and a calcification cluster) and load it."""
    from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom

    path = os.path.join(slicer.util.tempDirectory("MammoPatch"), "MammoPatchPhantom.dcm")
    mammo = synthesize_mammogram((1024, 832), 0.2, "L", "MLO", ["round mass", "calcification cluster"], seed=7)
    write_dicom(mammo, path)
    node = slicer.util.loadVolume(path)
    node.SetName("MammoPatchPhantom")
    return node


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
    device - "auto" (CUDA, then Apple MPS, then CPU), "cpu", "cuda" or "mps".
    threshold - probability threshold for every class when useModelThresholds is off.
    useModelThresholds - use the per-class thresholds stored in the model file.
    heatmapClass - the heatmaps loaded: "Reported classes", "All classes" or one of the model's
        classes. A plain str: its choices come from the model, so the widget fills and binds
        its combo box itself (parameterNodeWrapper's QComboBox connector needs a fixed Choice,
        Base/Python/slicer/parameterNodeWrapper/guiConnectors.py, QComboBoxToStringableConnector).
    showOtherClasses - also offer the classes the model computes but does not report.
    activationMaps - also load Grad-CAM activation maps of the top findings (one volume each,
        linked to its finding's ROI; like the poster's activation figure).
    wholeStudy - analyse every view of the mammogram's study in one run (both breasts of each
        view read together), not only the mammogram.
    pixelSpacingMm - the pixel spacing of a mammogram that is not DICOM (its file may state none,
        or ITK's 1 mm default): prefilled from the volume, used for the run and stated in its result.

    Results are not parameters: each mammogram's results are its own nodes, found again by
    their MammoPatch.source attribute (MammoPatchSlicer.scene), so no output selector can point
    one image's results at another's nodes (or at the mammogram itself).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    useDefaultModel: bool = True
    modelPath: pathlib.Path
    mode: Annotated[str, Choice(list(MODES))] = DEFAULT_MODE
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    useModelThresholds: bool = True
    heatmapClass: str = REPORTED_CLASSES
    showOtherClasses: bool = False
    activationMaps: bool = False
    wholeStudy: bool = True
    pixelSpacingMm: Annotated[float, WithinRange(0.01, 2.0)] = 0.1


#
# Widget
#


def slicerVersion():
    """(major, minor) of the running Slicer (qSlicerCoreApplication's majorVersion /
    minorVersion properties, Base/QTCore/qSlicerCoreApplication.h)."""
    return (int(slicer.app.majorVersion), int(slicer.app.minorVersion))


class MammoPatchWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Widgets and the parameter node only; every action is a Logic call."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._guiConnectedNodeIds = set()
        self._classChoicesKey = None
        self._spacingVolumeId = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(_resourceFile("UI", "MammoPatch.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MammoPatchLogic()  # other combo boxes are filled from the Choice annotations by connectGui

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.heatmapClassComboBox.connect("currentIndexChanged(int)", self._onHeatmapClassChosen)
        # qMRMLTableView::selectionChanged (Libs/MRML/Widgets/qMRMLTableView.h v5.8.1 line 108)
        self.ui.findingsTableView.connect("selectionChanged()", self._onFindingSelected)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.logic.cancel()
        self.removeObservers()

    def onReload(self) -> None:
        """Reload the library too: slicer.util.reloadScriptedModule reloads only this file, and
        the MammoPatchLib / MammoPatchSlicer modules already imported would otherwise stay the old ones."""
        for name in [n for n in sys.modules if n.split(".")[0] in ("MammoPatchLib", "MammoPatchSlicer")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self._disconnectParameterNode()

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.cancel()  # results would land in a closed scene
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

    def _disconnectParameterNode(self) -> None:
        if self._parameterNode:
            if self._parameterNodeGuiTag is not None:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def setParameterNode(self, inputParameterNode: Optional[MammoPatchParameterNode]) -> None:
        self._disconnectParameterNode()
        self._parameterNode = inputParameterNode
        if not self._parameterNode:
            return
        nodeId = self._parameterNode.parameterNode.GetID()
        if slicerVersion() >= (5, 10):
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
        elif nodeId not in self._guiConnectedNodeIds:
            # Slicer 5.6 / 5.8: connectGui returns None (parameterNodeWrapper/wrapper.py, _connectGui does
            # not return _connectParametersToGui's tag; fixed in 5.10), so the connection can never be
            # removed. Connect each parameter node once and keep it, instead of piling up a new set of
            # connectors and observers on every enter().
            self._parameterNode.connectGui(self.ui)
            self._guiConnectedNodeIds.add(nodeId)
        self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._classChoicesKey = None
        self._onParameterNodeModified()

    def _modelPath(self) -> Optional[str]:
        node = self._parameterNode
        return None if node.useDefaultModel or not node.modelPath else str(node.modelPath)

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        node = self._parameterNode
        if node is None:
            return
        key = (node.useDefaultModel, str(node.modelPath) if node.modelPath else "", node.showOtherClasses)
        if key != self._classChoicesKey:
            self._updateClassChoices(key)
        self._updateSpacing()
        self._checkCanApply()

    def _updateSpacing(self) -> None:
        """The pixel spacing field: only for a mammogram that is not DICOM, prefilled from the
        volume's spacing when another volume is chosen."""
        volume = self._parameterNode.inputVolume
        # Loaded by the DICOM module (its instance UIDs attribute): read from its file, at its own
        # spacing. (inputFileForVolume needs the library's dependencies, maybe not installed yet.)
        isDicom = bool(volume) and bool(volume.GetAttribute("DICOM.instanceUIDs"))
        self.ui.pixelSpacingSpinBox.enabled = bool(volume) and not isDicom
        volumeId = volume.GetID() if volume else None
        if volumeId != self._spacingVolumeId:
            self._spacingVolumeId = volumeId
            if volume and not isDicom and 0.01 <= volume.GetSpacing()[0] <= 2.0:
                self._parameterNode.pixelSpacingMm = volume.GetSpacing()[0]

    def _updateClassChoices(self, key=None) -> None:
        """The heatmap choices of the selected model (its reported classes; the others when
        asked for), read from the model file once PyTorch is installed."""
        node = self._parameterNode
        self._classChoicesKey = key
        choices = self.logic.classChoices(self._modelPath(), node.showOtherClasses)
        combo = self.ui.heatmapClassComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for choice in choices:
            combo.addItem(choice)
        combo.currentIndex = choices.index(node.heatmapClass) if node.heatmapClass in choices else 0
        combo.blockSignals(wasBlocked)
        if combo.currentText != node.heatmapClass:
            node.heatmapClass = combo.currentText

    def _onHeatmapClassChosen(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.heatmapClass = self.ui.heatmapClassComboBox.currentText

    def _checkCanApply(self) -> None:
        if self.logic.isRunning():
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
        if self.logic.isRunning():  # the button reads "Cancel" while running
            self.logic.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            return
        if not self.logic.ensureDependencies():
            return
        self._updateClassChoices(self._classChoicesKey)  # the model file can be read now
        node = self._parameterNode
        views = self.logic.studyViews(node.inputVolume, node.wholeStudy, node.pixelSpacingMm)
        undocumented = [v for v in views if v.input_file is None]
        if undocumented and not slicer.util.confirmOkCancelDisplay(
                _("Not DICOM, analysed at these pixel spacings (set the mammogram's in 'Pixel spacing'):\n{views}").format(
                    views="\n".join(f"{v.volume.GetName()}: {self.logic.spacingOf(v):.4g} mm" for v in undocumented))):
            return
        started = False
        with slicer.util.tryWithErrorDisplay(_("MammoPatch could not start."), waitCursor=True):
            self.logic.startProcessing(
                views, modelPath=self._modelPath(),
                mode=node.mode, device=node.device, threshold=None if node.useModelThresholds else node.threshold,
                heatmapClass=node.heatmapClass, progressCallback=self._onProgress, finishedCallback=self._onFinished,
                activationMaps=ACTIVATION_MAPS if node.activationMaps else 0)
            started = True
        if not started:
            return
        self.ui.applyButton.text = _("Cancel")
        self.ui.progressBar.visible = True
        self.ui.progressBar.value = 0

    def _onProgress(self, fraction: float, text: str) -> None:
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.statusLabel.text = text

    def _onFinished(self, outcome) -> None:
        """Runs in the GUI thread when the worker has ended and its results are loaded."""
        self.ui.applyButton.text = _("Apply")
        self.ui.progressBar.visible = False
        if outcome.tables:
            from MammoPatchSlicer.study import FINDING_COLUMNS

            self.ui.findingsTableView.setMRMLTableNode(outcome.tables[0])
            self.ui.findingsTableView.setColumnHidden(FINDING_COLUMNS.index("Finding"), True)  # a node ID
            self.ui.imageScoresTableView.setMRMLTableNode(outcome.tables[1])
        if outcome.cancelled:
            self.ui.statusLabel.text = _("Cancelled")
        elif outcome.error:
            self.ui.statusLabel.text = _("Failed")
            slicer.util.errorDisplay(_("MammoPatch failed: {error}").format(error=outcome.error),
                                     detailedText="\n".join(outcome.log[-200:]))
        else:
            self.ui.statusLabel.text = self.logic.summary(outcome)
        self._checkCanApply()

    def _onFindingSelected(self) -> None:
        """Centre the views on the finding of the selected row (its ROI node ID is the row's
        "Finding" cell)."""
        from MammoPatchSlicer.study import FINDING_COLUMNS

        view = self.ui.findingsTableView
        table = view.mrmlTableNode()  # qMRMLTableView.h v5.6.2 line 58
        # the current index of the sorting proxy (sortFilterProxyModel, line 61) mapped to the table's row
        row = view.sortFilterProxyModel().mapToSource(view.selectionModel().currentIndex()).row()
        if table is not None and 0 <= row < table.GetNumberOfRows():
            self.logic.centreOnFinding(table.GetCellText(row, FINDING_COLUMNS.index("Finding")))


#
# Logic
#


class MammoPatchLogic(ScriptedLoadableModuleLogic):
    """Runs MammoPatchLib on volume nodes; usable without the widget (Python console, batch).
    The work is done by MammoPatchSlicer.run.AnalysisRun; this class adds Slicer's pieces: the
    scene, the DICOM database, PythonSlicer's environment, a Qt timer, dialogs."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        from MammoPatchSlicer.run import RunSlot

        self._slot = RunSlot(qt.QTimer.singleShot)  # one run at a time, each with its own timer chain
        self._modelClassCache = {}
        self._windowLevelLink = None

    def getParameterNode(self):
        return MammoPatchParameterNode(super().getParameterNode())

    # -- dependencies -------------------------------------------------------------------------

    @staticmethod
    def requirementsFile() -> str:
        return _resourceFile("requirements.txt")

    @classmethod
    def missingPackages(cls) -> List[str]:
        """Requirements (Resources/requirements.txt, and what Slicer provides: numpy, SimpleITK,
        torch) that are absent or older than their minimum."""
        import importlib

        importlib.invalidate_caches()  # see packages pip has just installed
        return dependencies.missing_packages(cls.requirementsFile())

    def ensureDependencies(self, askUser: bool = True) -> bool:
        """Install what is missing, on first use (never at import). With ``askUser`` the user
        confirms first; without it (batch runs) no dialog is ever shown. Any failure, PyTorch's
        included, is reported to the user (a dialog, or the log in batch runs)."""
        missing = self.missingPackages()
        if not missing:
            return True
        report = slicer.util.errorDisplay if askUser else logging.error
        requirements = self.requirementsFile()
        try:
            if "torch" in missing:
                try:
                    import PyTorchUtils  # the PyTorch extension
                except ImportError:
                    report(_("MammoPatch needs PyTorch: install the 'PyTorch' extension from the Extensions Manager, "
                             "restart Slicer, and try again."))
                    return False
                torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=askUser,
                    torchVersionRequirement=">=" + dependencies.PROVIDED_BY_SLICER["torch"])
                if torch is None:
                    report(_("PyTorch was not installed (cancelled or failed; see the Python console); "
                             "MammoPatch cannot run without it."))
                    return False
            others = [p for p in missing if p not in dependencies.PROVIDED_BY_SLICER]
            if others:
                constraints = dependencies.write_constraints(slicer.util.tempDirectory("MammoPatch"))
                packaging = dependencies.slicer_packaging()
                if packaging is not None:
                    # Slicer >= 5.12 (Base/Python/slicer/packaging.py): checks, prompts only when asked.
                    packaging.pip_ensure(packaging.load_requirements(requirements), constraints=constraints,
                                         prompt_install=askUser, prompt_restart=askUser, requester="MammoPatch")
                else:
                    if askUser and not slicer.util.confirmOkCancelDisplay(
                            _("MammoPatch needs these Python packages: {packages}. Install them now "
                              "(a few minutes on a first install)?").format(packages=", ".join(others))):
                        return False
                    slicer.util.pip_install(["-r", requirements, "-c", constraints])
        except Exception as exc:  # pip or PyTorch install failures: proxy, offline, disk full, ...
            logging.exception("MammoPatch: installing dependencies failed")
            report(_("Installing MammoPatch's Python packages failed ({error}). If this computer is offline or behind "
                     "a proxy, install them with 'pip install -r {file}' in Slicer's Python.").format(
                         error=exc, file=requirements))
            return False
        still = self.missingPackages()
        if still:
            report(_("These packages are still missing or too old: {packages}").format(packages=", ".join(still)))
        return not still

    # -- the model's classes ------------------------------------------------------------------

    def modelClasses(self, modelPath: Optional[str] = None) -> Tuple[Optional[List[str]], Optional[List[str]]]:
        """(output classes, reported classes) of a model file (None: the bundled model), or
        (None, None) while they cannot be read (MammoPatchSlicer.run.model_classes); cached
        per file and modification time."""
        from MammoPatchSlicer.run import model_classes

        try:
            from MammoPatchLib.api import default_model_path

            path = str(modelPath or default_model_path())
            key = (path, os.path.getmtime(path))
        except Exception:  # noqa: BLE001 - a missing file, or the library's dependencies not installed yet
            return model_classes(modelPath)
        if key not in self._modelClassCache:
            self._modelClassCache[key] = model_classes(path)
        return self._modelClassCache[key]

    def classChoices(self, modelPath: Optional[str] = None, showOtherClasses: bool = False) -> List[str]:
        """The heatmap choices for a model: MammoPatchLib.contract.class_choices of its classes."""
        classes, reported = self.modelClasses(modelPath)
        if classes is None:
            return [REPORTED_CLASSES, ALL_CLASSES]
        return class_choices(classes, reported, showOtherClasses)

    # -- processing ---------------------------------------------------------------------------

    def isRunning(self) -> bool:
        return self._slot.running

    def cancel(self) -> None:
        """Stop the running prediction (the worker stops within about a second; its process
        tree is killed if it has not after 10 s)."""
        self._slot.cancel()

    @property
    def lastOutcome(self):
        """The outcome (MammoPatchSlicer.run.RunOutcome) of the last run that finished."""
        return self._slot.last_outcome

    @staticmethod
    def inputFileForVolume(inputVolume) -> Optional[str]:
        """A volume loaded from one DICOM file is analysed from that file, exactly as
        ``mammopatch predict`` would (Slicer's DICOM reader inverts MONOCHROME1 but leaves the
        VOI window to the display, so its array is not what the library reads). None for other
        volumes: they are exported (MammoPatchSlicer.scene.export_volume)."""
        from MammoPatchLib.volume_bridge import dicom_source_file

        return dicom_source_file(inputVolume.GetAttribute("DICOM.instanceUIDs"),
                                 slicer.dicomDatabase.fileForInstance if slicer.dicomDatabase else None)

    def studyViews(self, inputVolume, wholeStudy: bool = True, spacingMm: Optional[float] = None) -> list:
        """The views to analyse (MammoPatchSlicer.study.StudyView): the mammogram, and with
        ``wholeStudy`` every other mammogram of its study (MammoPatchSlicer.study.study_volumes).
        A DICOM view is read from its file; ``spacingMm`` is the pixel spacing of the mammogram
        itself when it is not DICOM (other non-DICOM views keep their volume's)."""
        if not inputVolume:
            raise ValueError(_("Input mammogram is missing"))
        _ensureLibraryOnPath()
        from MammoPatchSlicer.run import study_views
        from MammoPatchSlicer.study import study_volumes

        volumes = study_volumes(slicer.mrmlScene, inputVolume) if wholeStudy else [inputVolume]
        views = study_views(slicer.mrmlScene, volumes, None, self.inputFileForVolume)
        if views[0].input_file is None:
            views[0].spacing_mm = spacingMm
        return views

    @staticmethod
    def spacingOf(view) -> float:
        """The pixel spacing (mm) a view is analysed at when it is not DICOM."""
        return view.spacing_mm if view.spacing_mm is not None else view.volume.GetSpacing()[0]

    @staticmethod
    def summary(outcome) -> str:
        """The result line: findings, views, time, and the pixel spacing each view was read at
        (and where it came from), so a wrong scale cannot pass unseen."""
        spacings = "; ".join(f"{loaded.view} {loaded.spacing_mm:.4g} mm ({loaded.spacing_source})"
                             for loaded in outcome.views.values() if loaded.spacing_mm is not None)
        return _("{count} finding(s) in {views} view(s), {seconds:.1f} s. Pixel spacing: {spacings}").format(
            count=len(outcome.findings), views=len(outcome.views), seconds=outcome.seconds, spacings=spacings)

    def startProcessing(self, inputs, modelPath: Optional[str] = None, mode: str = DEFAULT_MODE, device: str = "auto",
                        threshold: Optional[float] = None, heatmapClass: str = REPORTED_CLASSES,
                        progressCallback: Optional[Callable[[float, str], None]] = None,
                        finishedCallback: Optional[Callable] = None, showResult: bool = True,
                        activationMaps: int = 0):
        """Start analysing ``inputs`` (a mammogram volume, or the StudyViews of :meth:`studyViews`)
        in one worker process; returns the run at once. Each view's results are loaded into its
        own nodes when it ends, then ``finishedCallback(outcome)`` (a MammoPatchSlicer.run.RunOutcome)
        is called, once (MammoPatchSlicer.run.RunSlot)."""
        if not inputs:
            raise ValueError(_("Input mammogram is missing"))
        _ensureLibraryOnPath()
        from MammoPatchSlicer.run import AnalysisRun, RunRequest

        if not isinstance(inputs, (list, tuple)):
            inputs = self.studyViews(inputs, wholeStudy=False)
        classes, reported = self.modelClasses(modelPath)
        request = RunRequest(model_path=modelPath, mode=mode, device=device, threshold=threshold,
                             heatmap_class=heatmapClass, activation_maps=activationMaps, model_classes=classes,
                             reported_classes=reported)

        def onFinished(outcome) -> None:
            if outcome.views and showResult:
                self.showResults(outcome)
            if finishedCallback:
                finishedCallback(outcome)

        return self._slot.start(lambda finished: AnalysisRun(
            slicer.mrmlScene, inputs, request, slicer.util.tempDirectory("MammoPatch"), _libraryRoot(),
            environment=slicer.util.startupEnvironment(), on_progress=progressCallback, on_finished=finished),
            onFinished)

    def showResults(self, outcome) -> None:
        """One view: the mammogram with its heatmap and label map in the slice views. Several: the
        study in the hanging layout (MammoPatchSlicer.hanging) with window/level linked."""
        import MammoPatchSlicer.hanging as hanging

        views = hanging.views_of(slicer.mrmlScene, [slicer.mrmlScene.GetNodeByID(i) for i in outcome.views])
        if len(views) < 2:
            results = outcome.results
            slicer.util.setSliceViewerLayers(background=slicer.mrmlScene.GetNodeByID(next(iter(outcome.views))),
                                             foreground=results.first_heatmap, foregroundOpacity=0.7,
                                             label=results.labelmap, fit=True)
            return
        layoutManager = slicer.app.layoutManager()
        hanging.hang_study(slicer.mrmlScene, views, layoutManager.layoutLogic().GetLayoutNode() if layoutManager else None)
        if self._windowLevelLink is not None:
            self._windowLevelLink.remove()
        self._windowLevelLink = hanging.WindowLevelLink(list(views.values()))

    def centreOnFinding(self, roiId: str) -> list:
        """Centre the slice views showing a finding's mammogram on that finding."""
        from MammoPatchSlicer.hanging import centre_on_finding

        return centre_on_finding(slicer.mrmlScene, roiId)

    def process(self, inputs, modelPath: Optional[str] = None, mode: str = DEFAULT_MODE, device: str = "auto",
                threshold: Optional[float] = None, heatmapClass: str = REPORTED_CLASSES,
                progressCallback: Optional[Callable[[float, str], None]] = None, showResult: bool = True,
                activationMaps: int = 0):
        """Analyse a mammogram volume (or a study's views) and wait for the results (Python
        console, tests). Returns the RunOutcome; raises RuntimeError when the worker failed. The
        results are loaded once: by whichever of this wait and the timer polls the end first."""
        run = self.startProcessing(inputs, modelPath, mode, device, threshold, heatmapClass, progressCallback, None,
                                   showResult, activationMaps)
        outcome = run.wait(idle=slicer.app.processEvents)
        if outcome.error:
            raise RuntimeError(outcome.error)
        return outcome

    # The nodes of the last run (Python console, self-test).
    @property
    def lastHeatmapNode(self):
        return self.lastOutcome.results.first_heatmap if self.lastOutcome else None

    @property
    def lastLabelMapNode(self):
        return self.lastOutcome.results.labelmap if self.lastOutcome else None

    @property
    def lastFindingNodes(self) -> list:
        return self.lastOutcome.results.findings if self.lastOutcome else []

    @property
    def lastActivationNodes(self) -> list:
        return self.lastOutcome.results.activation_maps if self.lastOutcome else []

    def showActivationMap(self, findingNode) -> bool:
        """Show a finding's activation map over the mammogram (foreground layer); False when the
        run made none for it."""
        from MammoPatchSlicer.scene import activation_map_of

        node = activation_map_of(slicer.mrmlScene, findingNode)
        if node is None:
            return False
        slicer.util.setSliceViewerLayers(foreground=node, foregroundOpacity=0.5)
        return True

    def processFiles(self, inputs, outputFolder: str, modelPath: Optional[str] = None, mode: str = DEFAULT_MODE,
                     device: str = "auto", overwrite: bool = False, resume: bool = False):
        """Batch: the same library function as ``mammopatch predict``; returns the summary rows."""
        _ensureLibraryOnPath()
        from MammoPatchLib.api import predict_files

        return predict_files(inputs, outputFolder, model=modelPath, mode=mode, device=device, overwrite=overwrite,
                             resume=resume, progress=False)


#
# Test
#


class MammoPatchTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: Reload and Test, or `Slicer --testing` via CTest. It installs nothing:
    without MammoPatch's dependencies it checks only what needs none and says so. The scene code
    it exercises (MammoPatchSlicer) is the one Testing/test_slicer_scene.py runs on slicer-core."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_MammoPatch_vocabulary_and_gui()
        self.setUp()
        self.test_MammoPatch_logic_on_a_phantom()

    def test_MammoPatch_vocabulary_and_gui(self):
        self.assertEqual(len(FINDING_CLASSES), 10)
        self.assertIn(DEFAULT_MODE, MODES)
        self.assertIsNotNone(slicer.mrmlScene.GetNodeByID("vtkMRMLColorTableNodeFileInferno.txt"))
        self.assertEqual(MammoPatchLogic().classChoices(None)[:2], [REPORTED_CLASSES, ALL_CLASSES])

    def test_MammoPatch_logic_on_a_phantom(self):
        logic = MammoPatchLogic()
        missing = logic.missingPackages()
        if missing:
            # Not a failure: Reload and Test reports skipTest as an error, and installing gigabytes
            # from a self-test would change Slicer's Python under --testing.
            self.delayDisplay(f"MammoPatch: dependencies not installed ({', '.join(missing)}); phantom test not run")
            return
        self.delayDisplay("Starting the MammoPatch test")
        _ensureLibraryOnPath()
        from MammoPatchLib.model_file import make_untrained_model
        from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom

        folder = slicer.util.tempDirectory()
        mammo = synthesize_mammogram((512, 416), 0.2, "L", "CC", ["round mass"], seed=1)
        imagePath = write_dicom(mammo, os.path.join(folder, "phantom.dcm"))
        modelPath = make_untrained_model(os.path.join(folder, "tiny.pt"), spacing_mm=0.4)
        inputVolume = slicer.util.loadVolume(imagePath)
        self.assertEqual(slicer.util.arrayFromVolume(inputVolume).shape, (1, 512, 416))
        storageFile = inputVolume.GetStorageNode().GetFileName() if inputVolume.GetStorageNode() else None

        outcome = logic.process(inputVolume, modelPath=modelPath, mode="fast", device="cpu", heatmapClass="Mass")
        self.assertFalse(outcome.cancelled)
        heat = logic.lastHeatmapNode
        labels = logic.lastLabelMapNode
        heatArray = slicer.util.arrayFromVolume(heat)  # the network's cell grid, placed on the image
        self.assertGreaterEqual(float(heatArray.min()), 0.0)
        self.assertLessEqual(float(heatArray.max()), 1.0)
        self.assertEqual(slicer.util.arrayFromVolume(labels).shape, (1, 512, 416))
        for a, b in zip(labels.GetSpacing(), inputVolume.GetSpacing()):
            self.assertAlmostEqual(a, b, places=5)
        for a, b in zip(labels.GetOrigin(), inputVolume.GetOrigin()):
            self.assertAlmostEqual(a, b, places=4)
        self.assertEqual(len(logic.lastFindingNodes), len(outcome.findings))
        # A second run reuses the nodes instead of piling up new ones.
        volumes = len(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"))
        logic.process(inputVolume, modelPath=modelPath, mode="fast", device="cpu", heatmapClass="Mass")
        self.assertEqual(len(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")), volumes)
        # A second mammogram gets its own nodes; the first keeps its results.
        other = slicer.util.loadVolume(write_dicom(synthesize_mammogram((512, 416), 0.2, "R", "CC", ["round mass"],
                                                                        seed=2), os.path.join(folder, "right.dcm")))
        outcome = logic.process(logic.studyViews(other, wholeStudy=False), modelPath=modelPath, mode="fast",
                                device="cpu", heatmapClass="Mass")
        self.assertIsNot(outcome.results.labelmap, labels)
        self.assertEqual(slicer.util.arrayFromVolume(labels).shape, (1, 512, 416))
        # Activation maps (threshold 0: every class fires, so there are findings to explain).
        outcome = logic.process(inputVolume, modelPath=modelPath, mode="fast", device="cpu", threshold=0.0,
                                heatmapClass="Mass", activationMaps=2)
        self.assertEqual(len(logic.lastActivationNodes), min(2, len(outcome.findings)))
        self.assertTrue(logic.showActivationMap(logic.lastFindingNodes[0]))
        self.assertEqual(slicer.util.arrayFromVolume(logic.lastActivationNodes[0]).shape, (1, 512, 416))
        # The input's own storage node is left as it was.
        self.assertEqual(inputVolume.GetStorageNode().GetFileName() if inputVolume.GetStorageNode() else None,
                         storageFile)
        self.delayDisplay("MammoPatch test passed")
