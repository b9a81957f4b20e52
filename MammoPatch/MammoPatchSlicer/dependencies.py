"""What MammoPatch needs in Slicer's Python, read from one list: ``Resources/requirements.txt``
(what pip installs on first Apply) plus :data:`PROVIDED_BY_SLICER` (what Slicer or its PyTorch
extension provides and pip must not replace). setup.cfg's ``install_requires`` is exactly the
union of the two (Testing/test_slicer_dependencies.py holds them equal).

Installed versions are read from the distributions' metadata (``importlib.metadata``), so no
import-name table can drift from the list. Slicer's own numpy and SimpleITK have that metadata:
both are installed with pip by Slicer's SuperBuild (SuperBuild/External_python-numpy.cmake,
v5.6.2 line 56; SuperBuild/External_SimpleITK.cmake, v5.6.2 line 132, v5.10.0 line 157), torch by
the PyTorch extension's pip install."""

from __future__ import annotations

import importlib.metadata
import os
import re
from typing import Dict, List, Optional, Tuple

#: Requirements met by Slicer itself (numpy, SimpleITK) or by the PyTorch extension (torch):
#: checked, never pip-installed by MammoPatch (pinned by the constraints file instead).
PROVIDED_BY_SLICER: Dict[str, str] = {"numpy": "1.24", "torch": "2.1", "SimpleITK": "2.3"}

_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*([0-9][0-9A-Za-z.]*)$")


def read_requirements(path: str) -> List[Tuple[str, str]]:
    """(distribution, minimum version) of each line of a requirements file (``name>=version``;
    comments and blank lines skipped).

    Raises:
        ValueError: for a line of another form (the file is kept to one simple form).
    """
    found = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            match = _REQUIREMENT.match(text)
            if not match:
                raise ValueError(f"{path}:{number}: expected 'name>=version', got {text!r}")
            found.append((match.group(1), match.group(2)))
    return found


def version_tuple(text: str) -> Tuple[int, ...]:
    """(2, 1, 0) for "2.1.0+cu121"; stops at the first part without digits."""
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = re.match(r"\d+", piece)
        if not digits:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def installed_version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_packages(requirements_file: str) -> List[str]:
    """Distributions of the requirements file and of PROVIDED_BY_SLICER that are absent or older
    than their minimum, in list order."""
    needed = read_requirements(requirements_file) + list(PROVIDED_BY_SLICER.items())
    missing = []
    for name, minimum in needed:
        version = installed_version(name)
        if version is None or version_tuple(version) < version_tuple(minimum):
            missing.append(name)
    return missing


def constraints_text() -> str:
    """pip constraints pinning what Slicer provides at the installed versions, so installing the
    requirements never upgrades them (an opencv wheel would pull numpy 2 into a Slicer built
    against numpy 1.26)."""
    lines = [f"{name}=={version}" for name in PROVIDED_BY_SLICER if (version := installed_version(name))]
    return "\n".join(lines) + "\n"


def write_constraints(folder: str) -> str:
    path = os.path.join(folder, "constraints.txt")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(constraints_text())
    return path
