"""One dependency list: what the Slicer module installs (Resources/requirements.txt), what it
leaves to Slicer (MammoPatchSlicer.dependencies.PROVIDED_BY_SLICER) and setup.cfg's
install_requires are the same set, and the module's check reads exactly that list (a package in
setup.cfg but not in requirements.txt made every Apply on a fresh Slicer fail)."""

from __future__ import annotations

import configparser
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "MammoPatch"))
from MammoPatchSlicer import dependencies  # noqa: E402

REQUIREMENTS = str(REPO / "Resources" / "requirements.txt")


def _install_requires():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = [line.strip() for line in config["options"]["install_requires"].splitlines() if line.strip()]
    return dict(tuple(line.split(">=")) for line in lines)


def test_requirements_plus_slicers_own_packages_are_setup_cfgs_install_requires():
    from_requirements = dict(dependencies.read_requirements(REQUIREMENTS))
    assert not set(from_requirements) & set(dependencies.PROVIDED_BY_SLICER), "never pip-install Slicer's own"
    assert {**from_requirements, **dependencies.PROVIDED_BY_SLICER} == _install_requires()


def test_the_check_reads_the_list_by_distribution_name(tmp_path, monkeypatch):
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


def test_this_environment_has_everything_the_module_checks():
    """The test environment is installed from setup.cfg; the module's check agrees it is complete."""
    assert dependencies.missing_packages(REQUIREMENTS) == []


def test_bad_requirement_lines_are_named(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\nmonai>=1.4\ntorch\n")
    with pytest.raises(ValueError, match=r"requirements.txt:3: expected 'name>=version'"):
        dependencies.read_requirements(str(path))


def test_constraints_pin_what_slicer_provides(monkeypatch):
    monkeypatch.setattr(dependencies, "installed_version", {"numpy": "1.26.4", "SimpleITK": "2.4.0"}.get)
    assert dependencies.constraints_text() == "numpy==1.26.4\nSimpleITK==2.4.0\n"
