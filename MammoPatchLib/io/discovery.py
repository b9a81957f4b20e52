"""Finding the image files a user named: files, folders (searched recursively) and glob
patterns. Used by prediction (batches) and by the folder data set reader.

A folder search never descends into MammoPatch's own outputs: an image's output folder (it
holds :data:`MARKER_NAME`, the file the batch writer, :mod:`MammoPatchLib.prediction.folder`, leaves there),
a hidden folder (the writer's partial and replaced folders), or a folder the caller excludes
(the batch's output folder): with ``--out`` inside the input folder, a second run would
otherwise analyse the first one's heatmaps and label maps as mammograms."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import List, Sequence, Union

from ..vocabulary import PathLike
from .readers import SUPPORTED_EXTENSIONS, is_dicom_file

#: The file inside every folder MammoPatch makes for an image's outputs: what the batch writer
#: may replace or remove, and what a folder search never descends into.
MARKER_NAME = ".mammopatch-output"


def _looks_like_image(path: Path) -> bool:
    name = path.name.lower()
    if name.startswith("."):
        return False
    return any(name.endswith(ext) for ext in SUPPORTED_EXTENSIONS) or is_dicom_file(path)


def is_output_folder(folder: Path) -> bool:
    """A folder MammoPatch wrote: an image's outputs (its marker file) or a hidden folder (a
    partial or replaced output folder)."""
    return folder.name.startswith(".") or (folder / MARKER_NAME).is_file()


def _images_below(root: Path, recursive: bool, excluded: Sequence[Path]) -> List[Path]:
    """The image files under ``root``, sorted; the walk never enters an output folder or an
    excluded one, so a batch folder full of earlier results costs nothing to skip."""
    found: List[Path] = []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        here = Path(folder)
        subfolders[:] = [name for name in subfolders if recursive and not is_output_folder(here / name)
                         and (here / name).resolve() not in excluded]
        found.extend(here / name for name in files if _looks_like_image(here / name))
    return sorted(found)


def collect_images(inputs: Union[PathLike, Sequence[PathLike]], recursive: bool = True,
                   exclude: Sequence[PathLike] = ()) -> List[Path]:
    """Expand files, folders and glob patterns into a sorted list of image files.

    Folders are searched (recursively by default) for supported extensions and for DICOM
    files without one, outside MammoPatch's output folders and the ``exclude`` folders (see
    the module docstring). Explicitly named files are kept even when their type is unknown, so
    the reader can report them. A name that matches nothing is returned unchanged, so it
    is reported as "file not found" rather than silently dropped.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    excluded = [Path(e).resolve() for e in exclude]
    found: List[Path] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            found.extend(_images_below(path, recursive, excluded))
        elif any(ch in text for ch in "*?["):
            found.extend(Path(p) for p in sorted(glob.glob(text, recursive=True)) if Path(p).is_file())
        else:
            found.append(path)
    unique: List[Path] = []
    seen = set()
    for p in found:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique
