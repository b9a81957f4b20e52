"""``mammopatch train``: a network recipe lowers its loss; kill -9 mid-epoch and --resume gives
the uninterrupted run's model; 2 torchrun gloo ranks give the one-process model; a head recipe
makes a model that predicts and that evaluate refuses on its own women; recipes are validated
field by field."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from MammoPatchLib.errors import ConfigError
from MammoPatchLib.training.recipe import Recipe

#: A tiny network recipe: 64 px patches, 3 epochs of 6 steps of 4 patches.
TINY_NETWORK = {"name": "tiny-network", "trains": "network", "head": "window", "hidden": 32, "dropout": 0.0,
                "sampler": "poster", "sampling": {"patch_size": 64}, "epochs": 3, "batch_size": 4,
                "patches_per_epoch": 24, "learning_rate": 1e-3, "weight_decay": 0.0, "spacing_mm": 0.4, "amp": False,
                "device": "cpu", "seed": 3}
TINY_HEAD = {"name": "tiny-head", "epochs": 2, "negatives_per_epoch": 256, "bottleneck": 8, "hidden": 16,
             "spacing_mm": 0.4}
#: One thread in every training process: the same arithmetic in each, so runs compare exactly.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from MammoPatchLib.synthetic import make_vindr_dataset

    return str(make_vindr_dataset(tmp_path_factory.mktemp("data"), n_studies=3, shape=(384, 320), seed=5,
                                  abnormal_fraction=1.0, test_fraction=0.0))


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_data):
    """The tiny recipe's file and the image cache every run below shares."""
    root = tmp_path_factory.mktemp("train")
    (root / "tiny.json").write_text(json.dumps(TINY_NETWORK))
    (root / "tiny-workers.json").write_text(json.dumps({**TINY_NETWORK, "num_workers": 2}))
    return root


def _train(work: Path, data: str, out: str, *extra: str, launcher=(), recipe: str = "tiny.json") -> subprocess.Popen:
    command = [*launcher] if launcher else [sys.executable]
    return subprocess.Popen([*command, "-m", "MammoPatchLib.cli", "train", "--config", str(work / recipe),
                             "--data", data, "--out", str(work / out), "--cache", str(work / "cache"), "--no-progress",
                             *extra], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    return output


@pytest.fixture(scope="module")
def straight(work, tiny_data):
    """One uninterrupted run of the tiny recipe, in this process at one thread (as the
    subprocesses below run)."""
    from MammoPatchLib.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--config", str(work / "tiny.json"), "--data", tiny_data, "--out",
                     str(work / "straight"), "--cache", str(work / "cache"), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    return work / "straight"


def _checkpoint(out: Path):
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def fixed_patches(tiny_data):
    """(patches, targets, loss masks of the recipe's classes): a fixed set of poster patches of the data."""
    from MammoPatchLib.datasets import load_records
    from MammoPatchLib.patches import prepare_images, validation_patches
    from MammoPatchLib.vocabulary import FINDING_CLASSES

    recipe = Recipe.from_dict(TINY_NETWORK)
    records, _ = load_records(tiny_data)
    images, _ = prepare_images(records, recipe.preprocessing.at_spacing(0.4), FINDING_CLASSES, progress=False)
    x, y, m, _ = validation_patches(images, len(FINDING_CLASSES), recipe.sampling)
    wanted = torch.tensor([c in recipe.classes for c in FINDING_CLASSES], dtype=torch.float32)
    return x.float(), y, m * wanted


def test_a_network_recipe_lowers_its_loss_on_fixed_patches(straight, fixed_patches):
    """The trained network's focal loss on a fixed set of poster patches of its images is below
    half the loss of the network it started from (same recipe, same seed)."""
    from MammoPatchLib.model_file import load_model
    from MammoPatchLib.training.cell_head_fit import focal_loss
    from MammoPatchLib.training.network_fit import initial_network, train_mode

    x, y, m = fixed_patches
    trained = load_model(straight / "model.pt")
    assert trained.info.window == 64 and trained.info.head == "window"
    losses = []
    for network in (initial_network(Recipe.from_dict(TINY_NETWORK))[1], trained.network):
        train_mode(network)  # as trained (dropout is 0)
        with torch.no_grad():
            losses.append(float(focal_loss(network(x).flatten(1), y, m)))
    assert losses[1] < 0.5 * losses[0], losses
    history = _checkpoint(straight)["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert (straight / "metrics.csv").read_text().splitlines()[0].startswith("epoch,train_loss")


def test_kill_9_mid_epoch_then_resume_gives_the_uninterrupted_model(work, tiny_data, straight):
    """Killed in epoch 2, resumed with 2 DataLoader workers streaming the patches (where a run
    executes may change on resume, what it computes may not): the uninterrupted run's model."""
    process = _train(work, tiny_data, "killed")
    checkpoint = work / "killed" / "checkpoint.pt"
    deadline = time.time() + 240
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # in epoch 2: epoch 1's checkpoint has just been written
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert len(_checkpoint(work / "killed")["history"]) < TINY_NETWORK["epochs"]
    _finish(_train(work, tiny_data, "killed", "--resume", recipe="tiny-workers.json"))
    a, b = _checkpoint(straight), _checkpoint(work / "killed")
    assert [row["train_loss"] for row in a["history"]] == [row["train_loss"] for row in b["history"]]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    from MammoPatchLib.model_file import read_model_payload

    sha = [read_model_payload(run / "model.pt")["sha256"] for run in (straight, work / "killed")]
    assert sha[0] == sha[1]


def test_resume_without_a_checkpoint_is_one_clear_line(work, tiny_data, tmp_path, capsys):
    from MammoPatchLib.cli import main

    assert main(["train", "--config", str(work / "tiny.json"), "--data", tiny_data, "--out", str(tmp_path / "new"),
                 "--resume", "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert "nothing to resume: no checkpoint" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "new" / "cache").exists()  # refused before any image was prepared


@pytest.mark.slow  # several processes: CI runs it (-m slow)
def test_two_gloo_ranks_train_the_model_one_process_trains(work, tiny_data, straight, fixed_patches):
    """torchrun with 2 CPU ranks (gloo), each taking half of every batch of the same draw, trains
    the one-process model: the same losses, and the same probabilities on fixed patches, within
    float tolerance. (Not weight by weight: Adam moves a weight by about lr whatever its
    gradient's size, so a weight whose gradient is near zero, summed in another order by two
    ranks, can drift by a few lr over 18 steps while the network's outputs do not.)"""
    from MammoPatchLib.model_file import load_model

    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    output = _finish(_train(work, tiny_data, "ddp", launcher=launcher))
    assert output.count("trained tiny-network") == 1, output  # rank 0 writes and reports
    one, two = _checkpoint(straight)["history"], _checkpoint(work / "ddp")["history"]
    assert two[0]["train_loss"] == pytest.approx(one[0]["train_loss"], rel=1e-6)  # epoch 1: rounding only
    assert [row["train_loss"] for row in two] == pytest.approx([row["train_loss"] for row in one], rel=1e-3)
    with torch.no_grad():
        a, b = (torch.sigmoid(load_model(run / "model.pt").network(fixed_patches[0]))
                for run in (straight, work / "ddp"))
    torch.testing.assert_close(b, a, rtol=0, atol=5e-3)


def test_a_head_recipe_makes_a_model_that_predicts_and_evaluate_refuses_its_women(tiny_data, tmp_path, capsys):
    from MammoPatchLib.cli import main
    from MammoPatchLib.datasets import load_records
    from MammoPatchLib.model_file import load_model
    from MammoPatchLib.training.run import THRESHOLDS_NOT_FITTED

    recipe = tmp_path / "tiny-head.json"
    recipe.write_text(json.dumps(TINY_HEAD))
    out = tmp_path / "head"
    assert main(["train", "--config", str(recipe), "--data", tiny_data, "--out", str(out), "--no-progress"]) == 0
    model = load_model(out / "model.pt")
    records, _ = load_records(tiny_data)
    made = model.info.provenance
    assert made.recipe_name == "tiny-head" and made.members == [sorted({r.patient_id for r in records})]
    assert made.images == sorted(r.image_id for r in records) and model.info.head == "cell"
    assert model.info.training["thresholds"] == THRESHOLDS_NOT_FITTED
    assert "not fitted" in (out / "model.md").read_text(encoding="utf-8")
    assert main(["predict", str(records[0].path), "--model", str(out / "model.pt"), "--out", str(tmp_path / "p"),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out / "model.pt"), "--data", tiny_data, "--out", str(tmp_path / "r"),
                 "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert "refused to evaluate" in error and f"{len(records)} of the {len(records)} images" in error
    assert len(error.splitlines()) == 1
    from MammoPatchLib.training.run import train

    before = model.network.head.state_dict()  # --resume of a finished head run: nothing left to train
    train(Recipe.from_dict(TINY_HEAD), tiny_data, out, resume=True, progress=False)
    after = load_model(out / "model.pt").network.head.state_dict()
    assert all(torch.equal(after[name], value) for name, value in before.items())


@pytest.mark.parametrize("values, field", [
    ({"trains": "network", "head": "window"}, "sampler"),
    ({"trains": "network", "sampler": "poster", "head": "cell"}, "head"),
    ({"trains": "network", "sampler": "poster", "head": "window", "bottleneck": 32}, "bottleneck"),
    ({"trains": "network", "sampler": "poster", "head": "window", "seeds": 3}, "seeds"),
    ({"batch_size": 8}, "batch_size"),
    ({"trains": "network", "sampler": "poster", "head": "window", "patches_per_epoch": 10, "batch_size": 4},
     "patches_per_epoch"),
    ({"trains": "network", "sampler": "poster", "head": "window", "device": "gpu"}, "device"),
    ({"trains": "network", "sampler": "poster", "head": "window", "plateau_factor": 1.5}, "plateau_factor"),
    ({"sampling": {"mode": "poster"}}, "sampling.mode"),
    ({"trains": "network", "sampler": "poster", "head": "window", "augmentation": {"flip": 1}}, "augmentation"),
    ({"trains": "network", "sampler": "poster", "head": "window", "sampling": {"patch_size": 100}}, "patch_size"),
    ({"trains": "network", "sampler": "poster", "head": "window", "image_score": "top-k"}, "image_score"),
])
def test_recipe_validation_names_the_field(values, field):
    with pytest.raises(ConfigError, match=field):
        Recipe.from_dict(values)


def test_loader_workers_are_at_most_the_cpus_offered(monkeypatch, caplog):
    from MammoPatchLib.training import network_fit

    monkeypatch.setattr(network_fit.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    with caplog.at_level("INFO", logger=network_fit.logger.name):
        assert network_fit.loader_workers(4, announce=True) == 2
    assert "num_workers 4 lowered to 2" in caplog.text
    assert (network_fit.loader_workers(1), network_fit.loader_workers(0)) == (1, 0)


def test_the_poster_recipe_states_the_poster_settings():
    recipe = Recipe.load(Path(__file__).resolve().parents[1] / "Resources" / "Models" / "training" / "poster.json")
    assert (recipe.trains, recipe.head, recipe.sampler, recipe.hidden) == ("network", "window", "poster", 512)
    assert (recipe.learning_rate, recipe.plateau_patience, recipe.plateau_factor) == (1e-4, 5, 0.1)
    assert recipe.sampling.area_range == (0.05, 5.0) and recipe.sampling.aspect_range == (0.33, 1.66)
    assert recipe.sampling.centre_jitter_px_at_vindr == 50.0
    assert Recipe.from_dict(recipe.to_dict()) == recipe  # what a model's provenance records reads back


#: A head recipe of two ensemble members, each a work unit of ``train``.
TINY_SEEDS = {**TINY_HEAD, "name": "tiny-seeds", "seeds": 2, "epochs": 6}


def _head_weights(out: Path) -> dict:
    from MammoPatchLib.model_file import load_model

    return load_model(out / "model.pt").network.head.state_dict()


@pytest.fixture(scope="module")
def members(tmp_path_factory, tiny_data):
    """An uninterrupted one-process train of a two-member head recipe (one thread, as the
    subprocesses below run)."""
    from MammoPatchLib.cli import main

    root = tmp_path_factory.mktemp("members")
    (root / "seeds.json").write_text(json.dumps(TINY_SEEDS))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--config", str(root / "seeds.json"), "--data", tiny_data, "--out", str(root / "once"),
                     "--cache", str(root / "cache"), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    return root


def test_a_head_train_killed_after_its_first_member_resumes_to_the_same_model(members, tiny_data, capsys):
    """Each ensemble member is a work unit: killed (SIGKILL) once the first is written, the
    rerun with --resume trains only the second and writes the uninterrupted run's weights."""
    from MammoPatchLib.cli import main

    out = members / "killed"
    process = _train(members, tiny_data, "killed", recipe="seeds.json")
    deadline = time.time() + 240
    while not list(out.glob("units/*/member-0.pt")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    output, _ = process.communicate()
    assert process.returncode == -signal.SIGKILL, output[-2000:]
    done = list(out.glob("units/*/member-*.pt"))
    assert [path.name for path in done] == ["member-0.pt"] and not (out / "model.pt").exists()
    stamp = done[0].stat().st_mtime_ns
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--config", str(members / "seeds.json"), "--data", tiny_data, "--out", str(out),
                     "--cache", str(members / "cache"), "--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "1 of 2 work units already done" in printed, printed
    trained = [line for line in printed.splitlines() if "tiny-seeds: member" in line]
    assert len(trained) == 1 and "member 2/2" in trained[0] and "left" in trained[0], printed
    assert done[0].stat().st_mtime_ns == stamp
    reference, resumed = _head_weights(members / "once"), _head_weights(out)
    assert reference.keys() == resumed.keys()
    for name, value in reference.items():
        assert torch.equal(resumed[name], value), name


@pytest.mark.slow  # several processes: CI runs it (-m slow)
def test_two_gloo_ranks_train_the_head_members_one_process_trains(members, tiny_data):
    """torchrun with 2 CPU ranks: each caches its share of the features, each trains one
    member, rank 0 writes the model: the one-process model."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    process = subprocess.Popen([*launcher, "-m", "MammoPatchLib.cli", "train", "--config",
                                str(members / "seeds.json"), "--data", tiny_data, "--out", str(members / "ddp"),
                                "--cache", str(members / "ddp-cache")],
                               env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = _finish(process)
    assert "[rank 0/2] tiny-seeds: member 1/2" in output and "[rank 1/2] tiny-seeds: member 2/2" in output, output
    assert output.count("trained tiny-seeds") == 1, output
    reference, shared = _head_weights(members / "once"), _head_weights(members / "ddp")
    for name, value in reference.items():
        torch.testing.assert_close(shared[name], value, rtol=0, atol=1e-6)
