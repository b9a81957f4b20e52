"""Finding the image files a user named: files, folders (searched recursively) and glob
patterns. Used by prediction (batches) and by the folder data set reader."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import List, Sequence, Union

from ..vocabulary import PathLike
from .readers import SUPPORTED_EXTENSIONS, is_dicom_file


def _looks_like_image(path: Path) -> bool:
    name = path.name.lower()
    if name.startswith("."):
        return False
    return any(name.endswith(ext) for ext in SUPPORTED_EXTENSIONS) or is_dicom_file(path)


def collect_images(inputs: Union[PathLike, Sequence[PathLike]], recursive: bool = True) -> List[Path]:
    """Expand files, folders and glob patterns into a sorted list of image files.

    Folders are searched (recursively by default) for supported extensions and for DICOM
    files without one. Explicitly named files are kept even when their type is unknown, so
    the reader can report them. A name that matches nothing is returned unchanged, so it
    is reported as "file not found" rather than silently dropped.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found: List[Path] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found.extend(p for p in sorted(path.glob(pattern)) if p.is_file() and _looks_like_image(p))
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
