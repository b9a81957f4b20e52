"""Atomic output files: write to a temporary sibling, then rename over the target.

A crash or a cancelled run therefore never leaves a half-written heatmap, report or
checkpoint under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

from ..errors import MammoPatchError


def _suffixes(path: Path) -> str:
    # Keep compound endings such as ".nii.gz" so format-by-extension writers still work.
    return "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix


@contextlib.contextmanager
def atomic_path(path: Union[str, os.PathLike], overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    Args:
        path: the final file name.
        overwrite: when False and ``path`` exists, raise instead of replacing it.
    """
    target = Path(path)
    if not overwrite and target.exists():
        raise MammoPatchError("exists already (pass overwrite=True / --overwrite to replace it)", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp" + _suffixes(target), dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600 files; give outputs the permissions a normal open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
