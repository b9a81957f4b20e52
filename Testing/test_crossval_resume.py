"""Cross-validation as work units: a run killed with SIGKILL resumes to the report of an
uninterrupted run, and two torchrun ranks (gloo) give the report and model of one process."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
import torch

from MammoPatchLib.evaluation.crossval_figures import REPORT_JSON
from MammoPatchLib.training.crossval import UNITS_DIR

RECIPE = {"name": "tiny", "bottleneck": 8, "hidden": 8, "epochs": 1, "negatives_per_epoch": 128,
          "classes": ["Mass", "Suspicious Calcification"]}
FOLDS = 2


def crossval_args(root: Path, out: Path, cache: Path, model: Optional[Path] = None) -> list:
    """The command, on the reference's recipe and data (``root``)."""
    return ["crossval", "--config", str(root / "tiny.json"), "--data", str(root / "data"), "--folds", str(FOLDS),
            "--out", str(out), "--cache", str(cache), "--draws", "10", *(["--model-out", str(model)] if model else [])]


def figures(out: Path) -> dict:
    """The report without its timings (the only thing a rerun may change)."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "seconds"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(json.loads((out / REPORT_JSON).read_text(encoding="utf-8")))


def weights(path: Path) -> dict:
    from MammoPatchLib.model_file import load_model

    return load_model(path).network.state_dict()


def unit_files(out: Path) -> list:
    return sorted((out / UNITS_DIR).glob("*/fold-*.pt"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One process, never stopped: the reference (run in this process: the same code path)."""
    from MammoPatchLib.cli import main
    from MammoPatchLib.synthetic import make_vindr_dataset

    root = tmp_path_factory.mktemp("once")
    (root / "tiny.json").write_text(json.dumps(RECIPE), encoding="utf-8")
    make_vindr_dataset(root / "data", n_studies=3, shape=(320, 256))  # 3 women, 12 small films
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(crossval_args(root, root / "out", root / "cache", root / "model.pt"))
    assert code == 0
    assert len(unit_files(root / "out")) == FOLDS
    return root


def test_a_crossval_killed_after_its_first_unit_resumes_to_the_same_report(uninterrupted, tmp_path):
    out = tmp_path / "out"
    args = crossval_args(uninterrupted, out, uninterrupted / "cache")  # the features are cached already
    command = [sys.executable, "-m", "MammoPatchLib.cli", *args]
    with open(tmp_path / "first.log", "wb") as log:
        run = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not unit_files(out) and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        run.send_signal(signal.SIGKILL)
        run.wait()
    assert run.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text(errors="replace")
    done = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in unit_files(out)}
    assert 1 <= len(done) < FOLDS and not (out / REPORT_JSON).exists(), "killed between its first and last unit"

    again = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{len(done)} of {FOLDS} work units already done" in again.stdout
    trained = [line for line in again.stdout.splitlines() if "held-out images) in" in line]
    assert len(trained) == FOLDS - len(done), again.stdout  # the finished unit was not trained again
    assert "elapsed" in trained[-1] and "left" in trained[-1]
    for path, (stamp, content) in done.items():
        assert path.stat().st_mtime_ns == stamp and path.read_bytes() == content
    assert figures(out) == figures(uninterrupted / "out")


def test_fold_seed_divides_the_women_anew(tmp_path):
    """``--fold-seed``: another division of the same women (each woman's films in one fold), the
    one the library's stratified division gives for that seed, written to the report's fold file."""
    from MammoPatchLib.cli import main
    from MammoPatchLib.datasets import load_records
    from MammoPatchLib.datasets.splits import folds_by_patient, read_fold_file
    from MammoPatchLib.synthetic import make_vindr_dataset
    from MammoPatchLib.training.crossval import FOLD_FILE

    root = tmp_path / "seeded"
    root.mkdir()
    (root / "tiny.json").write_text(json.dumps(RECIPE), encoding="utf-8")
    make_vindr_dataset(root / "data", n_studies=6, shape=(320, 256), abnormal_fraction=0.5)  # 6 women
    records = load_records(str(root / "data"))[0]
    seeded = {s: folds_by_patient(records, FOLDS, s) for s in range(50)}
    seed = next(s for s in range(1, 50) if seeded[s] != seeded[0])
    runs = {}
    for s in (0, seed):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = main(crossval_args(root, root / f"out-{s}", root / "cache") + ["--fold-seed", str(s)])
        assert code == 0
        runs[s] = read_fold_file(root / f"out-{s}" / FOLD_FILE)
        assert runs[s] == {r.image_id: seeded[s][r.patient_id] for r in records}
    assert runs[0] != runs[seed]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(crossval_args(root, root / "out-0", root / "cache") + ["--fold-seed", str(seed)])
    assert code != 0  # a folder's fold file is not redrawn under it
    assert read_fold_file(root / "out-0" / FOLD_FILE) == runs[0]


@pytest.mark.slow  # several processes: CI runs it (-m slow)
def test_two_gloo_ranks_give_the_report_and_model_of_one_process(uninterrupted, tmp_path):
    out, model, cache = tmp_path / "out", tmp_path / "model.pt", tmp_path / "cache"  # the ranks share the caching
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ranks = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "-m", "MammoPatchLib.cli", *crossval_args(uninterrupted, out, cache, model)],
                           capture_output=True, text=True, timeout=240, env=env)
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    assert "[rank 0/2] tiny: fold" in ranks.stdout and "[rank 1/2] tiny: fold" in ranks.stdout, ranks.stdout
    assert ranks.stdout.count("report:") == 1, "rank 0 alone writes the report"
    assert len(list(cache.glob("*/*.pt"))) == len(list((uninterrupted / "cache").glob("*/*.pt")))
    assert figures(out) == figures(uninterrupted / "out")
    reference = weights(uninterrupted / "model.pt")
    shared = weights(model)
    assert reference.keys() == shared.keys()
    for name, value in reference.items():
        assert torch.allclose(shared[name].float(), value.float(), atol=1e-6), name


@pytest.mark.parametrize("tuned", [False, True])
def test_a_fitted_head_survives_a_weights_only_round_trip(tuned):
    """A unit file holds each head as tensors and plain values: read back with
    ``weights_only=True`` it scores a cached image exactly as before (its tuned stages given
    their weights in a copy of a module of their shape)."""
    from torch import nn

    from MammoPatchLib.datasets import ImageRecord
    from MammoPatchLib.training.cell_head_fit import CellMLP, FittedCellHead, Projection
    from MammoPatchLib.training.feature_cache import CachedImage, CellGeometry

    torch.manual_seed(0)

    def stages() -> nn.Module:
        return nn.Sequential(nn.Conv2d(6, 6, 1), nn.BatchNorm2d(6))

    tail = stages()
    if tuned:
        tail[1].running_mean.normal_()  # saved statistics, not only parameters
    head = FittedCellHead(Projection(torch.randn(4, 6), torch.randn(4)), CellMLP(4 * 9, 5, 3, 0.2).eval(), 3,
                          ["a", "b", "c"], tail=tail.eval() if tuned else None)
    image = CachedImage(ImageRecord(path="x.png", image_id="x", patient_id="w"), torch.randn(2, 6, 5, 4).half(),
                        CellGeometry(((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)), (160, 128), (160, 128)))
    buffer = io.BytesIO()
    torch.save(head.state(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    again = FittedCellHead.from_state(state, tail=stages() if tuned else None)
    assert torch.equal(again.cell_logits(image), head.cell_logits(image))
    assert (again.tail is None) == (not tuned)
    if tuned:
        with pytest.raises(ValueError, match="tunes backbone stages"):
            FittedCellHead.from_state(state)


def test_a_unit_is_read_back_only_by_the_recipe_and_folds_that_made_it(tmp_path):
    """Units live under a hash of the recipe, each image's woman and fold, and the library
    version: another recipe or fold assignment never reads them, and a file whose key is not
    the store's (copied in, or damaged) counts as unfinished."""
    from MammoPatchLib.datasets import ImageRecord
    from MammoPatchLib.training.crossval import unit_store
    from MammoPatchLib.training.recipe import Recipe

    records = [ImageRecord(path=f"{i}.png", image_id=f"i{i}", patient_id=f"w{i // 2}") for i in range(4)]
    folds = {"i0": 0, "i1": 0, "i2": 1, "i3": 1}
    recipe = Recipe.from_dict(RECIPE)
    store = unit_store(tmp_path, recipe, records, folds)
    store.save("fold-0", {"value": torch.arange(3)})
    assert torch.equal(unit_store(tmp_path, recipe, records, dict(folds)).load("fold-0")["value"], torch.arange(3))
    other_recipe = unit_store(tmp_path, Recipe.from_dict({**RECIPE, "epochs": 2}), records, folds)
    other_folds = unit_store(tmp_path, recipe, records, {**folds, "i1": 1, "i2": 0})
    assert len({store.folder, other_recipe.folder, other_folds.folder}) == 3
    assert other_recipe.load("fold-0") is None and other_folds.load("fold-0") is None
    other_folds.folder.mkdir(parents=True)
    store.path("fold-0").replace(other_folds.path("fold-0"))  # a unit moved under another run's name
    assert other_folds.load("fold-0") is None
    store.path("fold-1").write_bytes(b"half a file")
    assert store.load("fold-1") is None


#: A tiny trains "network" recipe: 64 px patches, one epoch of 2 steps of 4 patches.
NETWORK = {"name": "tiny-network", "trains": "network", "head": "window", "hidden": 8, "dropout": 0.0,
           "sampler": "poster", "sampling": {"patch_size": 64}, "epochs": 1, "batch_size": 4, "patches_per_epoch": 8,
           "spacing_mm": 0.4, "amp": False, "device": "cpu", "classes": ["Mass", "Suspicious Calcification"]}


def test_a_network_recipe_is_cross_validated_by_the_trainer_and_a_rerun_skips_its_folds(uninterrupted, tmp_path,
                                                                                         capsys, caplog):
    """Each fold's network is trained by ``train``'s trainer (its checkpoint beside the fold's
    unit) and predicts its held-out women through the Predictor: the report has out-of-fold
    figures and the poster's patch table; a rerun skips the finished folds, and a fold whose
    unit is lost but whose checkpoint holds every epoch is predicted again without training."""
    from MammoPatchLib.cli import main
    from MammoPatchLib.evaluation.crossval_report import POSTER_TABLE
    from MammoPatchLib.evaluation.out_of_fold import OUTCOME_FILE, RECIPES_DIR

    (tmp_path / "tiny.json").write_text(json.dumps(NETWORK), encoding="utf-8")
    args = crossval_args(tmp_path, tmp_path / "out", tmp_path / "cache")
    args[args.index("--data") + 1] = str(uninterrupted / "data")
    assert main([*args, "--model-out", str(tmp_path / "model.pt")]) == 2  # refused before any image is read
    error = capsys.readouterr().err.strip()
    assert "--model-out" in error and "mammopatch train" in error and len(error.splitlines()) == 1
    with caplog.at_level("INFO"):
        assert main(args) == 0
    first = capsys.readouterr().out
    assert first.count("held-out images) in") == FOLDS and "about" in first, first
    assert "epoch 1/1, " in caplog.text and " left: training loss" in caplog.text  # each epoch's line: time left
    caplog.clear()
    units = unit_files(tmp_path / "out")
    assert len(units) == FOLDS and all((path.with_suffix("") / "checkpoint.pt").is_file() for path in units)
    row = figures(tmp_path / "out")["recipes"]["tiny-network"]
    assert set(row["sensitivity_at_fp"]) >= {"1"} and 0.0 <= row["image_auc"] <= 1.0
    outcome = json.loads((tmp_path / "out" / RECIPES_DIR / "tiny-network" / OUTCOME_FILE).read_text())
    assert set(NETWORK["classes"]) <= set(outcome[POSTER_TABLE]["per_class"])
    cases = json.loads((tmp_path / "out" / RECIPES_DIR / "tiny-network" / "cases.json").read_text())
    assert len(cases["cases"]) == len(cases["fold_of_image"])  # every image once, predicted out of fold

    reference = figures(tmp_path / "out")
    assert main(args) == 0
    again = capsys.readouterr().out
    assert f"{FOLDS} of {FOLDS} work units already done" in again and "held-out images) in" not in again
    assert figures(tmp_path / "out") == reference
    units[-1].unlink()  # the unit is lost, its fold's checkpoint is there: predicted again, not trained
    with caplog.at_level("INFO"):
        assert main(args) == 0
    assert "resuming after epoch 1" in caplog.text
    assert figures(tmp_path / "out") == reference


def test_the_clock_of_a_resumed_run_counts_on_from_what_was_done(monkeypatch):
    """Units finished before a restart count towards the total but not towards the pace."""
    from MammoPatchLib.training import work_units

    now = [100.0]
    monkeypatch.setattr(work_units.time, "perf_counter", lambda: now[0])
    clock = work_units.UnitClock(10, done=4)
    now[0] += 30.0
    assert clock.tick("epoch") == "epoch 5/10, 30 s elapsed, about 2 min 30 s left"
    now[0] += 60.0
    assert clock.tick() == "unit 6/10, 1 min 30 s elapsed, about 3 min 00 s left"
