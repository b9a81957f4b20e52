"""The contract between the ``mammopatch predict`` worker and a program that runs it (the Slicer
module): exit codes, the progress-line protocol, the heatmap-class request, and the result
manifest, the JSON file listing everything the run wrote.

Standard library only, so the Slicer module can import it before any dependency is installed,
and both sides use these names instead of re-deriving folder names, file names, error lines or
exit codes (each of which once drifted apart).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

#: Exit codes of ``mammopatch`` (see ``cli.main``).
EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_CANNOT_WRITE = 3
EXIT_CANCELLED = 130

#: ``MAMMOPATCH-PROGRESS <fraction> <text>``: one line per progress step on stdout.
PROGRESS_PREFIX = "MAMMOPATCH-PROGRESS"
#: Each error is printed once as ``error: <message>`` on stderr.
ERROR_PREFIX = "error: "


def progress_line(fraction: float, text: str) -> str:
    """The line the worker prints for a progress step."""
    return f"{PROGRESS_PREFIX} {float(fraction):.4f} {' '.join(str(text).split())}"


def parse_progress_line(line: str) -> Optional[Tuple[float, str]]:
    """(fraction, text) of a progress line; None for any other line (including malformed ones)."""
    if not line.startswith(PROGRESS_PREFIX + " "):
        return None
    parts = line[len(PROGRESS_PREFIX) + 1:].split(" ", 1)
    try:
        fraction = float(parts[0])
    except ValueError:
        return None
    return min(max(fraction, 0.0), 1.0), (parts[1] if len(parts) > 1 else "")


def parse_error_line(line: str) -> Optional[str]:
    """The message of an ``error:`` line; None for any other line."""
    return line[len(ERROR_PREFIX):] if line.startswith(ERROR_PREFIX) else None


# -- heatmap classes ---------------------------------------------------------------------------

#: Class choices besides the single classes: the model's reported classes (the worker's default)
#: or every output class of the model.
REPORTED_CLASSES = "Reported classes"
ALL_CLASSES = "All classes"


def class_choices(model_classes: Sequence[str], reported: Sequence[str], show_others: bool = False) -> List[str]:
    """The heatmap choices a GUI offers for a model: its reported classes, and its other output
    classes only when asked for (their heatmaps are untrained outputs)."""
    singles = [c for c in model_classes if c in reported]
    if show_others:
        singles += [c for c in model_classes if c not in reported]
    return [REPORTED_CLASSES, ALL_CLASSES] + singles


def heatmap_request(choice: str, reported: Optional[Sequence[str]]) -> str:
    """The worker's ``--heatmaps`` value for a class choice: "all" when the choice needs a class
    the model does not report (or every class), "selected" (the reported ones) otherwise. With
    ``reported`` unknown (None) only REPORTED_CLASSES maps to "selected"."""
    if choice == REPORTED_CLASSES:
        return "selected"
    if choice != ALL_CLASSES and reported is not None and choice in reported:
        return "selected"
    return "all"


# -- result manifest ---------------------------------------------------------------------------

MANIFEST_FORMAT = "mammopatch-result-manifest"
MANIFEST_VERSION = 1
#: The manifest's file name where the caller keeps it beside the run (module and batch script).
RESULT_MANIFEST_FILE = "result-manifest.json"
STATUS_OK, STATUS_FAILED, STATUS_CANCELLED = "ok", "failed", "cancelled"


class ManifestError(ValueError):
    """A result manifest that is missing, unreadable or not one (the message names the file)."""


@dataclass
class ImageResult:
    """What the worker wrote for one input image (paths are absolute).

    Attributes:
        image: the input file.
        status: "ok", "failed" or "done earlier".
        error: why it failed ("" when it did not).
        folder: its result folder ("" when it failed).
        heatmaps: class name -> heatmap volume file, for the classes written.
        labelmap: the label map volume file; ``labelmap_classes[k]`` names label value k
            (0 = "No Finding").
        activation_maps: {"finding": index in ``findings`` from 0, "class", "path"} per map.
        dicom: kind ("seg", "heatmaps", "overlay", "report") -> DICOM file.
        findings: the findings (as in findings.json).
        model: {"classes", "reported_classes"} of the model that ran.
        source: the input's metadata, its geometry (spacing, origin, direction) included.
        files: every other file written (findings.json / .csv, overlay.png, ...).
        thresholds: class name -> the threshold its findings were picked at (None: none).
        image_score: the image's score (None when not computed).
        other_breast: which image of the other breast it was read against (None: read alone).
    """

    image: str
    status: str
    error: str = ""
    folder: str = ""
    heatmaps: Dict[str, str] = field(default_factory=dict)
    labelmap: str = ""
    labelmap_classes: List[str] = field(default_factory=list)
    activation_maps: List[Dict[str, Any]] = field(default_factory=list)
    dicom: Dict[str, str] = field(default_factory=dict)
    findings: List[Dict[str, Any]] = field(default_factory=list)
    model: Dict[str, Any] = field(default_factory=dict)
    source: Dict[str, Any] = field(default_factory=dict)
    files: List[str] = field(default_factory=list)
    thresholds: Dict[str, Optional[float]] = field(default_factory=dict)
    image_score: Optional[float] = None
    other_breast: Optional[Dict[str, Any]] = None


@dataclass
class ResultManifest:
    """The whole run: ``status`` "ok" (every image done), "failed" (the run or an image failed;
    ``error`` says why) or "cancelled"; one ImageResult per input."""

    status: str
    error: str = ""
    images: List[ImageResult] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "ResultManifest":
        images = [ImageResult(**{k: v for k, v in image.items() if k in ImageResult.__dataclass_fields__})
                  for image in values.get("images", [])]
        return cls(status=values["status"], error=values.get("error", ""), images=images)

    def write(self, path: str) -> str:
        """Write atomically (temporary sibling, then rename): a reader never sees half a file."""
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as handle:
                json.dump(self.to_dict(), handle, indent=1)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path


def read_manifest(path: str) -> ResultManifest:
    """Read a manifest written by the worker.

    Raises:
        ManifestError: missing, not JSON, or another format / a newer version.
    """
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            values = json.load(handle)
    except FileNotFoundError:
        raise ManifestError(f"{path}: the worker wrote no result manifest") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: unreadable result manifest ({exc})") from None
    if not isinstance(values, dict) or values.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{path}: not a MammoPatch result manifest")
    if int(values.get("version", 0)) > MANIFEST_VERSION:
        raise ManifestError(f"{path}: result manifest version {values['version']} is newer than this MammoPatch")
    try:
        return ResultManifest.from_dict(values)
    except (KeyError, TypeError) as exc:
        raise ManifestError(f"{path}: malformed result manifest ({exc})") from None


def run_outcome(exit_code: Optional[int], cancel_requested: bool) -> str:
    """How a finished worker run ended, from its exit code: a worker that exited 130, or that
    was killed after the user asked to cancel (-9 / SIGKILL on POSIX, 1 from TerminateProcess
    on Windows), was cancelled; 0 is "ok"; anything else "failed"."""
    if exit_code == EXIT_CANCELLED or (cancel_requested and exit_code != EXIT_OK):
        return STATUS_CANCELLED
    return STATUS_OK if exit_code == EXIT_OK else STATUS_FAILED
