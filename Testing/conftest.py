"""Shared fixtures: generated mammograms, and the real mini-MIAS images when present.

The mini-MIAS folder is looked up in $MAMMOPATCH_MIAS_DIR, else ``../shared/data/mini-mias``
beside the repository; tests that need it are skipped cleanly when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def mias_dir() -> Path:
    env = os.environ.get("MAMMOPATCH_MIAS_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data" / "mini-mias"


@pytest.fixture(scope="session")
def mias_root() -> Path:
    root = mias_dir()
    if not (root / "annotations.csv").is_file():
        pytest.skip("mini-MIAS data not available (set MAMMOPATCH_MIAS_DIR)")
    return root


@pytest.fixture(scope="session")
def synthetic_mammo():
    from MammoPatchLib.synthetic import synthesize_mammogram

    return synthesize_mammogram((640, 512), 0.2, "L", "MLO", ["round mass", "calcification cluster"], seed=3)


@pytest.fixture
def synthetic_dicom(tmp_path, synthetic_mammo) -> Path:
    from MammoPatchLib.synthetic import write_dicom

    return Path(write_dicom(synthetic_mammo, tmp_path / "sample.dcm"))


@pytest.fixture(scope="session")
def vindr_root(tmp_path_factory) -> Path:
    from MammoPatchLib.synthetic import make_vindr_dataset

    return make_vindr_dataset(tmp_path_factory.mktemp("vindr"), n_studies=4, shape=(384, 320), seed=11)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def pytest_configure(config):
    """Under pytest-xdist the cores are shared out between the workers, so that two workers
    running torch on a 2-core machine do not each start a thread per core."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Captured output and logs made UTF-8-safe: the bad-input corpus has file names that are
    not valid UTF-8 (kept as surrogate escapes), and pytest-xdist can only send UTF-8 text from
    its workers."""
    outcome = yield
    report = outcome.get_result()
    report.sections = [(title, text.encode("utf-8", "backslashreplace").decode("utf-8"))
                       for title, text in report.sections]
