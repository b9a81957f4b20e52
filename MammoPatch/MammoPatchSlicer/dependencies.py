"""What MammoPatch needs in Slicer's Python, read from one list: ``Resources/requirements.txt``
(what pip installs on first Apply) plus :data:`PROVIDED_BY_SLICER` (what Slicer or its PyTorch
extension provides and pip must not replace). setup.cfg's ``install_requires`` is exactly the
union of the two (Testing/test_slicer_dependencies.py holds them equal).

Slicer's own packages are checked, never installed: up to 5.10 Slicer's SimpleITK is built with
Slicer's ITK (SuperBuild/External_SimpleITK.cmake), so a PyPI wheel in its place would break it;
a floor above what a Slicer ships can never be met there (SimpleITK >= 2.3 failed every Apply on
Slicer 5.6.2, which ships 2.2.1). Every floor in :data:`PROVIDED_BY_SLICER` is at most what the oldest
supported Slicer ships (Testing/constraints/slicer-*.txt, each pin cited to Slicer's SuperBuild).

Installed versions are read from the distributions' metadata (``importlib.metadata``): Slicer's
SuperBuild installs each of its packages with pip (SuperBuild/External_python-*.cmake;
SimpleITK with ``pip install .``, External_SimpleITK.cmake v5.6.2 line 132), torch comes from
the PyTorch extension's pip install."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
from types import ModuleType
from typing import Dict, FrozenSet, Iterable, List, Optional, Tuple

# packaging: bundled by every supported Slicer (SuperBuild/External_python-pythonqt-requirements.cmake:35)
from packaging.utils import canonicalize_name
from packaging.version import Version

#: Requirements met by Slicer itself or by the PyTorch extension (torch), with the oldest version
#: MammoPatch works with; none above what Slicer 5.6.2 ships (numpy 1.26.1, scipy 1.11.3,
#: SimpleITK 2.2.1, pydicom 2.4.3, Pillow 10.1.0). Checked, never pip-installed by MammoPatch.
PROVIDED_BY_SLICER: Dict[str, str] = {
    "numpy": "1.24",
    "scipy": "1.11",
    "SimpleITK": "2.2",
    "pydicom": "2.4",
    "Pillow": "10.0",
    "torch": "2.1",
}

#: Every distribution (canonical name) that Slicer's SuperBuild pip-installs in the supported
#: Slicer versions (5.6.2, 5.8.1, 5.10.0, main; SuperBuild/External_python-*.cmake and
#: External_SimpleITK.cmake; pip, setuptools and wheel left out). Whenever MammoPatch runs pip,
#: each one installed is pinned at its installed version, so a requirement's dependency never
#: replaces one of Slicer's packages. Testing/test_slicer_dependencies.py holds this equal to the
#: names pinned in Testing/constraints/slicer-*.txt.
SLICER_BUNDLED: FrozenSet[str] = frozenset({
    "certifi", "cffi", "chardet", "charset-normalizer", "couchdb", "cryptography", "dcmqi", "deprecated",
    "dicomweb-client", "gitdb", "gitpython", "highdicom", "idna", "numpy", "packaging", "pillow",
    "pycparser", "pydicom", "pygithub", "pyjpegls", "pyjwt", "pynacl", "pyparsing", "python-dateutil",
    "requests", "retrying", "scipy", "simpleitk", "six", "smmap", "typing-extensions", "urllib3", "wrapt",
})

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


def installed_version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def unmet(needed: Iterable[Tuple[str, str]]) -> List[str]:
    """Distributions of ``needed`` ((name, minimum) pairs) absent or older than their minimum."""
    missing = []
    for name, minimum in needed:
        version = installed_version(name)
        if version is None or Version(version) < Version(minimum):
            missing.append(name)
    return missing


def missing_packages(requirements_file: str) -> List[str]:
    """Distributions of the requirements file and of PROVIDED_BY_SLICER that are absent or older
    than their minimum, in list order."""
    return unmet(read_requirements(requirements_file) + list(PROVIDED_BY_SLICER.items()))


def constraints_text() -> str:
    """pip constraints pinning Slicer's own packages and torch at their installed versions, so
    installing the requirements never replaces them (an opencv wheel would pull numpy 2 into a
    Slicer built against numpy 1.26; a PyPI SimpleITK would replace the one built with Slicer's
    ITK)."""
    names = sorted(SLICER_BUNDLED | {canonicalize_name(name) for name in PROVIDED_BY_SLICER})
    lines = [f"{name}=={version}" for name in names if (version := installed_version(name))]
    return "\n".join(lines) + "\n"


def write_constraints(folder: str) -> str:
    path = os.path.join(folder, "constraints.txt")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(constraints_text())
    return path


def slicer_packaging() -> Optional[ModuleType]:
    """Slicer's ``slicer.packaging`` (``pip_ensure``: checks, prompts only when asked), or None
    where this Slicer has none (5.10 and older: pip is run through ``slicer.util.pip_install``).

    Imported by name: ``slicer/__init__.py`` does not import it, so ``slicer.packaging`` is unset
    until someone does (Base/Python/slicer/__init__.py at main; Slicer's scripted-module template
    imports it explicitly, Utilities/Templates/Modules/Scripted/TemplateKey.py:249)."""
    try:
        packaging = importlib.import_module("slicer.packaging")
    except ImportError:
        return None
    return packaging if hasattr(packaging, "pip_ensure") else None
