"""One analysis of a study (one volume or several), without Qt: export (or locate) each view's
file, list them in an input manifest, start ``python -m MammoPatchLib.cli predict manifest.csv
... --result-manifest PATH`` in one worker process (the model is loaded once and both breasts of
each view are read together), relay its progress lines, and when it ends load exactly what the
result manifest lists into each view's own nodes, then remove the run's temporary folder.

What the worker wrote, where, and why it failed is read from the manifest
(:mod:`MammoPatchLib.contract`); nothing here re-derives folder or file names."""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Union

from MammoPatchLib.contract import (ALL_CLASSES, REPORTED_CLASSES, RESULT_MANIFEST_FILE, STATUS_CANCELLED,
                                    STATUS_FAILED, STATUS_OK, ResultManifest, heatmap_request, parse_error_line,
                                    parse_progress_line, read_manifest, run_outcome)
from MammoPatchLib.vocabulary import DEFAULT_MODE, FINDING_CLASSES

from .scene import LoadedResults, export_volume, load_results, place_in_study
from .study import StudyView, stated_view, study_key, study_tables, study_volumes, write_input_manifest
from .worker import WorkerProcess, python_for_worker

logger = logging.getLogger(__name__)


@dataclass
class RunRequest:
    """What to run. ``model_classes`` / ``reported_classes``: the model's output and reported
    classes when known (read from the model file), else None."""

    model_path: Optional[str] = None
    mode: str = DEFAULT_MODE
    device: str = "auto"
    threshold: Optional[float] = None
    heatmap_class: str = REPORTED_CLASSES
    activation_maps: int = 0
    model_classes: Optional[Sequence[str]] = None
    reported_classes: Optional[Sequence[str]] = None


@dataclass
class RunOutcome:
    """How a run ended: ``status`` "ok", "failed" (``error`` says why) or "cancelled"."""

    status: str = STATUS_FAILED
    error: str = ""
    seconds: float = 0.0
    findings: List[dict] = field(default_factory=list)
    log: List[str] = field(default_factory=list)
    #: input volume node ID -> the nodes its results are in, for every view loaded
    views: Dict[str, LoadedResults] = field(default_factory=dict)
    manifest: Optional[ResultManifest] = None
    exit_code: Optional[int] = None
    #: the study's findings and image-score tables (study.study_tables)
    tables: tuple = ()

    @property
    def results(self) -> LoadedResults:
        """The first view's results (a one-volume run's)."""
        return next(iter(self.views.values()), LoadedResults())

    @property
    def cancelled(self) -> bool:
        return self.status == STATUS_CANCELLED


def worker_command(python: str, inputs: Union[str, Sequence[str]], output_folder: str, manifest_path: str,
                   cancel_file: str, request: RunRequest, existing: str = "overwrite") -> List[str]:
    """The worker's command line for a request: ``inputs`` (a file, folder or manifest CSV, or
    several) into ``output_folder``; ``existing`` outputs: "overwrite", "resume" or "" (refused)."""
    command = [python, "-m", "MammoPatchLib.cli", "predict", *([inputs] if isinstance(inputs, str) else inputs),
               "--out", output_folder, "--mode", request.mode, "--device", request.device, "--no-progress",
               "--progress-lines", "--cancel-file", cancel_file, "--result-manifest", manifest_path,
               "--heatmaps", heatmap_request(request.heatmap_class, request.reported_classes)]
    if existing:
        command.append(f"--{existing}")
    if request.model_path:
        command += ["--model", str(request.model_path)]
    if request.threshold is not None:
        count = len(request.model_classes or FINDING_CLASSES)
        command += ["--thresholds", *[str(float(request.threshold))] * count]
    if request.activation_maps:
        command += ["--activation-maps", str(int(request.activation_maps))]
    return command


def worker_environment(base: Optional[dict], library_root: str) -> dict:
    """``base`` (Slicer's startup environment, as launchConsoleProcess uses) with the library on
    PYTHONPATH, unbuffered output and no progress bars."""
    environment = dict(os.environ if base is None else base)
    environment["PYTHONPATH"] = os.pathsep.join(p for p in (library_root, environment.get("PYTHONPATH")) if p)
    environment.update(PYTHONUNBUFFERED="1", TQDM_DISABLE="1", PYTHONIOENCODING="utf-8")
    return environment


def model_classes(model_path: Optional[str] = None):
    """(output classes, reported classes) of a model file (None: the bundled model), or
    (None, None) while they cannot be read: before the first Apply has installed PyTorch, or
    for a file that is not a model (the worker then reports why)."""
    try:
        from MammoPatchLib.api import default_model_path
        from MammoPatchLib.model_file import ModelInfo, read_model_payload

        info = ModelInfo.from_dict(read_model_payload(str(model_path or default_model_path()))["info"])
        return list(info.classes), list(info.reported_classes)
    except Exception as exc:  # noqa: BLE001 - ImportError before the first Apply, unreadable files
        logger.debug("MammoPatch: model classes not read (%s)", exc)
        return None, None


def heatmaps_to_load(choice: str) -> Optional[List[str]]:
    """The heatmap classes a choice shows (None: every heatmap the worker wrote)."""
    return None if choice in (REPORTED_CLASSES, ALL_CLASSES) else [choice]


def study_views(scene, volumes: Sequence, spacing_mm: Optional[float] = None,
                input_file: Optional[Callable[[object], Optional[str]]] = None) -> List[StudyView]:
    """The StudyViews of ``volumes``: each one's DICOM source file (``input_file(volume)``, None:
    none), the pixel spacing given for the others, and the study / view / laterality the worker
    is told for files that state none."""
    views = []
    for volume in volumes:
        laterality, view = stated_view(volume)
        source = input_file(volume) if input_file is not None else None
        views.append(StudyView(volume, source, None if source else spacing_mm, study_key(scene, volume), view,
                               laterality))
    return views


class AnalysisRun:
    """Analyse ``inputs`` (a volume node, a StudyView, or a list of either: a study) of ``scene``
    in one worker run; each view's results land in its own nodes when it ends, then
    ``on_finished(outcome)`` is called (once). The work folder is removed at the end, however
    the run ended. Drive it with :meth:`poll` (a GUI timer) or :meth:`wait`."""

    def __init__(self, scene, inputs: Union[object, Sequence], request: RunRequest, work_folder: str,
                 library_root: str, environment: Optional[dict] = None,
                 on_progress: Optional[Callable[[float, str], None]] = None,
                 on_finished: Optional[Callable[[RunOutcome], None]] = None, python: Optional[str] = None) -> None:
        items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if not items or any(item is None for item in items):
            raise ValueError("Input mammogram is missing")
        self.views = [item if isinstance(item, StudyView) else StudyView(item) for item in items]
        self.scene, self.request = scene, request
        self.input_ids = [view.volume.GetID() for view in self.views]
        self.on_progress, self.on_finished = on_progress, on_finished
        self.work_folder = work_folder
        os.makedirs(work_folder, exist_ok=True)
        try:
            files = [view.input_file or export_volume(view.volume, os.path.join(work_folder, f"input-{index}.nrrd"),
                                                      view.spacing_mm)
                     for index, view in enumerate(self.views)]
            self.input_files = [os.path.realpath(f) for f in files]
            inputs_csv = write_input_manifest(os.path.join(work_folder, "inputs.csv"), self.views, files)
            self.manifest_path = os.path.join(work_folder, RESULT_MANIFEST_FILE)
            self.command = worker_command(python or python_for_worker(), inputs_csv,
                                          os.path.join(work_folder, "results"), self.manifest_path,
                                          os.path.join(work_folder, "cancel"), request)
            self.outcome = RunOutcome()
            self._start = time.monotonic()
            logger.info("MammoPatch: %s", " ".join(self.command))
            self.worker = WorkerProcess(self.command, worker_environment(environment, library_root),
                                        os.path.join(work_folder, "cancel"), self._on_line, self._on_exit)
        except BaseException:
            self._remove_work_folder()
            raise

    @property
    def input_volume(self):
        return self.views[0].volume

    @property
    def finished(self) -> bool:
        return self.worker.finished

    def poll(self) -> bool:
        return self.worker.poll()

    def wait(self, timeout_s: Optional[float] = None, idle: Optional[Callable[[], None]] = None) -> RunOutcome:
        self.worker.wait(timeout_s, idle)
        return self.outcome

    def cancel(self) -> None:
        self.worker.cancel()

    def _on_line(self, line: str) -> None:
        progress = parse_progress_line(line)
        if progress is not None:
            if self.on_progress is not None:
                self.on_progress(*progress)
            return
        self.outcome.log.append(line)
        logger.info("MammoPatch: %s", line)

    def _last_error_line(self) -> str:
        errors = [e for e in (parse_error_line(line) for line in self.outcome.log) if e]
        return errors[-1] if errors else ""

    def _remove_work_folder(self) -> None:
        """The run's temporary folder (the exported inputs, every result file) goes once the
        results are in the scene: Slicer does not clean its temporary folder
        (Base/Python/slicer/util.py v5.8.1 line 2893, tempDirectory), and SlicerTotalSegmentator
        (TotalSegmentator.py, process: shutil.rmtree of its temporary folder) does the same."""
        shutil.rmtree(self.work_folder, ignore_errors=True)

    def _on_exit(self, exit_code: int) -> None:
        outcome = self.outcome
        outcome.exit_code = exit_code
        outcome.seconds = time.monotonic() - self._start
        try:
            outcome.status = run_outcome(exit_code, self.worker.cancel_requested)
            if outcome.status != STATUS_CANCELLED:
                self._load(outcome, exit_code)
        except Exception as exc:  # noqa: BLE001 - shown to the user as the run's error
            logger.debug("MammoPatch: loading the results failed", exc_info=True)
            outcome.status, outcome.error = STATUS_FAILED, str(exc)
        finally:
            self._remove_work_folder()
        if self.on_finished is not None:
            self.on_finished(outcome)

    def _load(self, outcome: RunOutcome, exit_code: int) -> None:
        present = [self.scene.GetNodeByID(i) is v.volume for i, v in zip(self.input_ids, self.views)]
        if not any(present):
            raise RuntimeError("the input volume was removed from the scene while it was analysed")
        try:
            manifest = read_manifest(self.manifest_path)
        except ValueError as exc:
            raise RuntimeError(self._last_error_line() or f"{exc} (exit code {exit_code})") from None
        outcome.manifest = manifest
        if not manifest.images:
            raise RuntimeError(manifest.error or self._last_error_line() or f"the worker failed (exit code {exit_code})")
        by_file = {os.path.realpath(image.image): image for image in manifest.images}
        errors = []
        for view, file, still_there in zip(self.views, self.input_files, present):
            image = by_file.get(file)
            name = view.volume.GetName() if still_there else "a removed volume"
            if not still_there or image is None or image.status == STATUS_FAILED:
                errors.append(f"{name}: {image.error if image is not None else 'not analysed'}")
                continue
            loaded = load_results(self.scene, view.volume, image, heatmaps_to_load(self.request.heatmap_class))
            outcome.views[view.volume.GetID()] = loaded
            outcome.findings.extend(image.findings)
        if outcome.views:
            first = next(v.volume for v, p in zip(self.views, present) if p)
            outcome.tables = study_tables(self.scene, study_volumes(self.scene, first), first.GetName())
            place_in_study(self.scene, first, outcome.tables)
        if errors:
            raise RuntimeError("; ".join(errors))
        outcome.status = STATUS_OK


class RunSlot:
    """A Logic's one current run, polled by a timer chain of its own. ``schedule(ms, callback)``
    is ``qt.QTimer.singleShot`` in Slicer. Each run's chain stops by itself when that run has
    finished (its ``poll()`` returns False), so a timer left over from one run never touches the
    next, and a run's results are loaded once whether the timer or a ``wait()`` sees the end
    first; ``last_outcome`` is only ever set by the current run."""

    def __init__(self, schedule: Callable[[int, Callable[[], None]], None], poll_ms: int = 200) -> None:
        self.schedule, self.poll_ms = schedule, poll_ms
        self.current = None
        self.last_outcome = None

    @property
    def running(self) -> bool:
        return self.current is not None and not self.current.finished

    def start(self, make_run: Callable[[Callable[[object], None]], object],
              on_finished: Optional[Callable[[object], None]] = None):
        """``make_run(finished)`` starts a run (an AnalysisRun, or anything with poll(),
        finished and cancel()) that calls ``finished(outcome)`` when it ends."""
        if self.running:
            raise RuntimeError("MammoPatch is already running; cancel it first")
        started = []

        def finished(outcome) -> None:
            if not started or started[0] is not self.current:
                return
            self.last_outcome = outcome
            if on_finished is not None:
                on_finished(outcome)

        run = make_run(finished)
        started.append(run)
        self.current = run

        def tick() -> None:
            if run.poll():
                self.schedule(self.poll_ms, tick)

        self.schedule(self.poll_ms, tick)
        return run

    def cancel(self) -> None:
        if self.running:
            self.current.cancel()
