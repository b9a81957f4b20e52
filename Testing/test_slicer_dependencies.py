"""One dependency list: what the Slicer module installs (Resources/requirements.txt), what it
leaves to Slicer (MammoPatchSlicer.dependencies.PROVIDED_BY_SLICER) and setup.cfg's
install_requires are the same set, and the module's check reads exactly that list (a package in
setup.cfg but not in requirements.txt made every Apply on a fresh Slicer fail).

The check is also run with the package set each supported Slicer really ships
(Testing/constraints/slicer-*.txt, read from Slicer's SuperBuild): a floor above what a Slicer
ships (SimpleITK >= 2.3 against Slicer 5.6.2's 2.2.1) made every Apply there fail. The
compatibility matrix in .ci/run runs this file inside each of those package sets as well."""

from __future__ import annotations

import configparser
import sys
import types
from pathlib import Path
from typing import Dict

import pytest
from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

sys.path.insert(0, str(REPO / "MammoPatch"))
from MammoPatchSlicer import dependencies  # noqa: E402

REQUIREMENTS = str(REPO / "Resources" / "requirements.txt")
SLICER_SETS = sorted((REPO / "Testing" / "constraints").glob("slicer-*.txt"))


def _install_requires():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = [line.strip() for line in config["options"]["install_requires"].splitlines() if line.strip()]
    return dict(tuple(line.split(">=")) for line in lines)


def _slicer_pins(path: Path) -> Dict[str, str]:
    """Canonical name -> version of each ``name==version`` line of a Slicer constraints file."""
    pins = {}
    for line in path.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            requirement = Requirement(text)
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"{path.name}: {text!r} is not a pin"
            pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def _metadata(versions: Dict[str, str]):
    """installed_version over ``versions``, looked up by canonical name as importlib.metadata does."""
    table = {canonicalize_name(name): version for name, version in versions.items()}
    return lambda name: table.get(canonicalize_name(name))


def test_requirements_plus_slicers_own_packages_are_setup_cfgs_install_requires():
    from_requirements = dict(dependencies.read_requirements(REQUIREMENTS))
    assert not set(from_requirements) & set(dependencies.PROVIDED_BY_SLICER), "never pip-install Slicer's own"
    assert not {canonicalize_name(name) for name in from_requirements} & dependencies.SLICER_BUNDLED
    assert {**from_requirements, **dependencies.PROVIDED_BY_SLICER} == _install_requires()


def test_the_check_reads_the_list_by_distribution_name(monkeypatch):
    """After pip has installed every listed distribution at its minimum, nothing is missing; a
    distribution absent or too old is reported by its pip name."""
    installed = {name: minimum for name, minimum in dependencies.read_requirements(REQUIREMENTS)}
    installed.update(dependencies.PROVIDED_BY_SLICER)
    monkeypatch.setattr(dependencies, "installed_version", installed.get)
    assert dependencies.missing_packages(REQUIREMENTS) == []
    installed["scikit-image"] = "0.20.9"
    del installed["tqdm"]
    installed["torch"] = "2.4.1+cu121"
    assert dependencies.missing_packages(REQUIREMENTS) == ["scikit-image", "tqdm"]


def test_every_supported_slicer_is_in_the_matrix():
    assert [path.stem for path in SLICER_SETS] == ["slicer-5.10.0", "slicer-5.6.2", "slicer-5.8.1", "slicer-main"]


@pytest.mark.parametrize("slicer_set", SLICER_SETS, ids=lambda path: path.stem)
def test_the_check_passes_with_each_slicers_own_packages(slicer_set, monkeypatch):
    """Slicer's packages at the versions it ships, torch at its floor (the PyTorch extension) and
    the requirements as pip installs them: nothing is missing, and pip would be told to keep each
    of Slicer's packages at the version Slicer ships."""
    pins = _slicer_pins(slicer_set)
    assert set(pins) <= dependencies.SLICER_BUNDLED
    slicers_own = {name for name in dependencies.PROVIDED_BY_SLICER if name != "torch"}
    assert {canonicalize_name(name) for name in slicers_own} <= set(pins), "each of Slicer's own is in its set"
    installed = {**pins, **dict(dependencies.read_requirements(REQUIREMENTS)),
                 "torch": dependencies.PROVIDED_BY_SLICER["torch"]}
    monkeypatch.setattr(dependencies, "installed_version", _metadata(installed))
    assert dependencies.missing_packages(REQUIREMENTS) == []
    constraints = _slicer_pins_from_text(dependencies.constraints_text())
    assert {name: constraints[name] for name in pins} == pins


def _slicer_pins_from_text(text: str) -> Dict[str, str]:
    return {canonicalize_name(name): version for name, version in
            (line.split("==") for line in text.splitlines() if line)}


def test_the_constraints_files_pin_exactly_what_the_module_pins():
    """The module's list of Slicer's packages is the union of the names each Slicer ships."""
    shipped = set().union(*(_slicer_pins(path) for path in SLICER_SETS))
    assert shipped == dependencies.SLICER_BUNDLED


@pytest.mark.parametrize("slicer_set", SLICER_SETS, ids=lambda path: path.stem)
def test_each_slicer_set_names_its_python(slicer_set):
    """.ci/run reads the interpreter from this line."""
    lines = [line for line in slicer_set.read_text().splitlines() if line.startswith("# python: ")]
    assert len(lines) == 1 and lines[0].split()[2].count(".") == 2


def test_slicers_own_packages_installed_here_meet_the_floors():
    """The real check on the installed metadata, run in every package set of the compatibility
    matrix (.ci/run): Slicer's own packages as that Slicer ships them satisfy the module."""
    slicers_own = [(name, floor) for name, floor in dependencies.PROVIDED_BY_SLICER.items() if name != "torch"]
    assert dependencies.unmet(slicers_own) == []


def test_this_environment_has_everything_the_module_checks():
    """The test environment is installed from setup.cfg; the module's check agrees it is complete."""
    if dependencies.installed_version("monai") is None:
        pytest.skip("a compatibility-matrix environment: only Slicer's own packages are installed")
    assert dependencies.missing_packages(REQUIREMENTS) == []


def test_bad_requirement_lines_are_named(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\nmonai>=1.4\ntorch\n")
    with pytest.raises(ValueError, match=r"requirements.txt:3: expected 'name>=version'"):
        dependencies.read_requirements(str(path))


def test_constraints_pin_what_slicer_provides(monkeypatch):
    installed = {"numpy": "1.26.4", "SimpleITK": "2.4.0", "typing_extensions": "4.8.0", "monai": "1.4.0"}
    monkeypatch.setattr(dependencies, "installed_version", _metadata(installed))
    assert dependencies.constraints_text() == "numpy==1.26.4\nsimpleitk==2.4.0\ntyping-extensions==4.8.0\n"


def test_slicer_packaging_is_imported_by_name(monkeypatch):
    """Slicer main: ``slicer.packaging`` exists but slicer/__init__.py does not import it, so the
    attribute is unset until imported; Slicer 5.10 and older have no such module."""
    slicer = types.ModuleType("slicer")
    slicer.__path__ = []  # a package without a packaging submodule
    monkeypatch.setitem(sys.modules, "slicer", slicer)
    monkeypatch.delitem(sys.modules, "slicer.packaging", raising=False)
    assert dependencies.slicer_packaging() is None
    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = lambda *args, **kwargs: None
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    assert getattr(slicer, "packaging", None) is None
    assert dependencies.slicer_packaging() is packaging
