"""The worker's side of the result manifest (:mod:`MammoPatchLib.contract`): after a
``predict`` run, list every file each image's folder holds, by kind, with its findings, model
classes and source geometry, and write the manifest whatever way the run ended."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, List, Sequence

from .contract import STATUS_CANCELLED, STATUS_FAILED, STATUS_OK, ImageResult, ResultManifest
from .results.dicom import DICOM_OUTPUT_FILES
from .errors import Cancelled
from .prediction.rows import Row
from .results.files import FINDINGS_FILE, LABELMAP_LEGEND_FILE, LABELMAP_STEM, VOLUME_FORMATS, findings_document, heatmap_stem
from .volume_bridge import activation_map_files

def _first_existing(folder: Path, stem: str) -> str:
    for ext in VOLUME_FORMATS.values():  # NRRD first: what the Slicer module reads
        if (folder / f"{stem}{ext}").is_file():
            return str(folder / f"{stem}{ext}")
    return ""


def image_result(row: Row) -> ImageResult:
    """The ImageResult of one summary row of ``predict_files``, read from its result folder
    (an image done by an earlier run counts as done)."""
    status = STATUS_FAILED if row.failed else STATUS_OK
    error = row.error or ""
    item = ImageResult(image=str(row.image), status=status, error=error)
    folder = Path(row.output or "")
    document = findings_document(folder) if status != STATUS_FAILED and row.output else None
    if document is None or not isinstance(document.get("classes"), list):
        if status != STATUS_FAILED:
            item.status, item.error = STATUS_FAILED, error or f"{folder / FINDINGS_FILE}: missing or unreadable"
        return item
    classes = list(document["classes"])
    item.folder = str(folder.resolve())
    folder = Path(item.folder)
    for name in (document.get("heatmaps") or {}).get("classes") or []:
        path = _first_existing(folder, heatmap_stem(name))
        if path:
            item.heatmaps[name] = path
    item.labelmap = _first_existing(folder, LABELMAP_STEM)
    try:
        labels = json.loads((folder / LABELMAP_LEGEND_FILE).read_text(encoding="utf-8"))
        item.labelmap_classes = [labels[str(k)] for k in range(len(labels))]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        item.status, item.error = STATUS_FAILED, f"{folder / LABELMAP_LEGEND_FILE}: unreadable ({exc})"
        return item
    item.findings = list(document.get("findings", []))
    for index, path in activation_map_files(str(folder)):
        if index < len(item.findings):
            item.activation_maps.append({"finding": index, "class": item.findings[index]["category"], "path": path})
    item.dicom = {kind: str(folder / name) for kind, name in DICOM_OUTPUT_FILES.items() if (folder / name).is_file()}
    model = document.get("model") or {}
    item.model = {"classes": classes, "reported_classes": list(model.get("reported_classes") or classes)}
    item.source = document.get("source") or {}
    item.thresholds = dict(zip(classes, document.get("thresholds") or []))
    item.image_score, item.other_breast = document.get("image_score"), document.get("other_breast") or None
    listed = set(item.heatmaps.values()) | {item.labelmap} | set(item.dicom.values()) | {
        a["path"] for a in item.activation_maps}
    item.files = sorted(str(p) for p in folder.iterdir() if p.is_file() and str(p) not in listed)
    return item


def build_manifest(rows: Sequence[Row]) -> ResultManifest:
    """The manifest of a finished batch: "ok" when every image is, else "failed" with the first
    image error."""
    images = [image_result(row) for row in rows]
    failed = [i for i in images if i.status == STATUS_FAILED]
    return ResultManifest(status=STATUS_FAILED if failed else STATUS_OK, error=failed[0].error if failed else "",
                          images=images)


def record_run(path: str, run: Callable[[], List[Row]]) -> List[Row]:
    """Run a batch (``run`` returns its summary rows) and write its manifest at ``path`` however
    it ends: cancelled, failed before any image (the error, e.g. a bad model file), or done.
    Exceptions propagate after the manifest is written (the command line turns them into its
    exit codes)."""
    try:
        rows = run()
    except Cancelled as exc:
        ResultManifest(status=STATUS_CANCELLED, error=str(exc) or "cancelled").write(os.fspath(path))
        raise
    except KeyboardInterrupt:
        ResultManifest(status=STATUS_CANCELLED, error="interrupted").write(os.fspath(path))
        raise
    except BaseException as exc:
        ResultManifest(status=STATUS_FAILED, error=str(exc) or type(exc).__name__).write(os.fspath(path))
        raise
    build_manifest(rows).write(os.fspath(path))
    return rows
