"""Training: the loss falls, kill-and-resume equals an uninterrupted run, DDP on 2 gloo
processes runs, configs are validated, and the evaluation report is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from MammoPatchLib.errors import ConfigError
from MammoPatchLib.training.config import TrainConfig
from MammoPatchLib.training.run import train

TINY = {"epochs": 2, "patches_per_epoch": 24, "batch_size": 8, "spacing_mm": 0.4, "validation_fraction": 0.34,
        "learning_rate": 1e-3, "validation_patches_per_finding": 1, "validation_patches_per_image": 1, "seed": 3}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from MammoPatchLib.synthetic import make_vindr_dataset

    return str(make_vindr_dataset(tmp_path_factory.mktemp("data"), n_studies=3, shape=(384, 320), seed=5,
                                  abnormal_fraction=1.0, test_fraction=0.0))


@pytest.fixture(scope="module")
def straight_run(tiny_data, tmp_path_factory):
    """One uninterrupted two-epoch run, shared by the tests below."""
    out = tmp_path_factory.mktemp("straight")
    result = train(TrainConfig.from_dict(TINY), tiny_data, out, progress=False)
    return out, result


def _history(out: Path):
    return torch.load(out / "checkpoint.pt", weights_only=True)["state"]["history"]


def test_two_epochs_lower_the_training_loss(straight_run):
    out, result = straight_run
    history = result["state"]["history"]
    assert len(history) == 2 and history[1]["train_loss"] < history[0]["train_loss"]
    assert (out / "model.pt").exists() and (out / "metrics.csv").exists()
    from MammoPatchLib.model_file import load_model

    info = load_model(out / "model.pt").info
    assert info.spacing_mm == 0.4 and info.training["config"]["patches_per_epoch"] == 24
    assert len(info.thresholds) == 10


def test_kill_and_resume_gives_the_same_state(tiny_data, straight_run, tmp_path):
    straight = straight_run[0]
    stopped = tmp_path / "stopped"
    train(TrainConfig.from_dict({**TINY, "epochs": 1}), tiny_data, stopped, progress=False)  # "killed" after epoch 1
    train(TrainConfig.from_dict(TINY), tiny_data, stopped, resume=True, progress=False)
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(stopped / "checkpoint.pt", weights_only=True)
    assert a["state"]["epoch"] == b["state"]["epoch"] == 2
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=1e-6)
    assert [round(h["train_loss"], 6) for h in a["state"]["history"]] == \
           [round(h["train_loss"], 6) for h in b["state"]["history"]]


def test_resume_without_checkpoint_is_a_clear_error(tiny_data, tmp_path):
    from MammoPatchLib.errors import MammoPatchError

    with pytest.raises(MammoPatchError, match="nothing to resume"):
        train(TrainConfig.from_dict(TINY), tiny_data, tmp_path / "empty", resume=True, progress=False)


@pytest.mark.slow
def test_ddp_two_gloo_processes_run_one_epoch(tiny_data, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TINY, "epochs": 1, "device": "cpu"}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "MammoPatchLib.cli", "train", "--config", str(config), "--data", tiny_data, "--out",
         str(tmp_path / "ddp"), "--no-progress"],
        capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(_history(tmp_path / "ddp")) == 1


def test_config_validation_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="backbone"):
        TrainConfig.from_dict({"backbone": "alexnet"})
    with pytest.raises(ConfigError, match="unknown field"):
        TrainConfig.from_dict({"learning_rat": 1})
    with pytest.raises(ConfigError, match="augmentation"):
        TrainConfig.from_dict({"augmentation": {"flip": 1}})
    with pytest.raises(ConfigError, match="threads"):
        TrainConfig.from_dict({"threads": 0})
    bad = tmp_path / "c.yaml"
    bad.write_text("epochs: [")
    with pytest.raises(ConfigError, match="c.yaml"):
        TrainConfig.load(bad)


def test_epochs_report_the_time_spent_waiting_for_batches(straight_run):
    for row in straight_run[1]["state"]["history"]:
        assert 0.0 < row["data_seconds"] < row["seconds"]


def test_main_thread_data_runs_at_one_thread_and_restores_the_count():
    from MammoPatchLib.training.trainer import _main_thread_data

    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with _main_thread_data(num_workers=0):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with _main_thread_data(num_workers=2):  # workers set their own threads; the main thread keeps its own
            assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), _main_thread_data(num_workers=0):
            raise RuntimeError("a failing sample")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


def test_evaluation_report_counts_the_held_out_women(tiny_data, straight_run, tmp_path):
    """evaluate recreates the run's validation split, scores every boxed finding of those women
    once, and writes the report, plots and model card."""
    from MammoPatchLib.cli import main
    from MammoPatchLib.datasets import group_by_split, load_records, split_by_patient

    run = straight_run[0]
    out = tmp_path / "report"
    assert main(["evaluate", "--model", str(run / "model.pt"), "--data", tiny_data, "--out", str(out),
                 "--mode", "fast", "--draws", "50", "--no-progress"]) == 0
    for name in ("report.md", "metrics.json", "per_class.csv", "model_card.md", "froc.png", "reliability.png"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "metrics.json").read_text())
    records, _ = load_records(tiny_data, tmp_path, 3)
    split_by_patient(records, TINY["validation_fraction"], seed=TINY["seed"])
    held_out = group_by_split(records)["validation"]
    assert report["data"]["split"] == "validation" and report["data"]["images"] == len(held_out)
    assert report["data"]["women"] == len({r.patient_id for r in held_out})
    assert report["lesion_level"]["lesions"] == sum(len(r.findings) for r in held_out) > 0
    assert report["image_level"]["abnormal"] == sum(not r.is_normal for r in held_out)
    sens = report["lesion_level"]["all_classes_froc"]
    assert [sens[k] for k in ("0.25", "0.5", "1", "2", "4")] == sorted(sens.values()), "FROC never decreases"
    lo, hi = report["lesion_level"]["intervals"]["sens@4"]
    assert lo <= sens["4"] <= hi


def test_compare_backbones_prints_the_poster_table(tiny_data, tmp_path):
    from MammoPatchLib.training.compare import compare_backbones

    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TINY, "epochs": 1, "patches_per_epoch": 16}))
    table = compare_backbones(["efficientnet-lite0", "mobilenet-v3-large"], tiny_data, tmp_path / "cmp",
                              config_path=str(config), progress=False)
    lines = table.splitlines()
    assert lines[0] == "| class | efficientnet-lite0 | mobilenet-v3-large |"
    assert any(line.startswith("| Mass |") for line in lines)
    assert lines[-1].startswith("| weighted average (no No Finding) |")
    assert (tmp_path / "cmp" / "comparison.md").read_text().strip() == table
    assert (tmp_path / "cmp" / "mobilenet-v3-large" / "model.pt").exists()


def test_a_trained_model_records_its_women_and_evaluate_refuses_them(tiny_data, straight_run, tmp_path):
    """The model file of ``mammopatch train`` names its training women (its one member), the
    validation women that chose its epoch and thresholds, and its split file; evaluating its
    training split is refused in one line."""
    import contextlib
    import hashlib
    import io

    from MammoPatchLib.cli import main
    from MammoPatchLib.datasets import load_records
    from MammoPatchLib.model_file import load_model

    run = straight_run[0]
    made = load_model(run / "model.pt").info.provenance
    rows = [line.split(",") for line in (run / "split.csv").read_text().splitlines()[1:]]
    training = {woman for _, woman, split in rows if split == "training"}
    assert made.members == [sorted(training)] and set(made.selected_on) == {w for _, w, s in rows if s == "validation"}
    assert made.fold_file == "split.csv" and made.fold_file_sha256 == hashlib.sha256(
        (run / "split.csv").read_bytes()).hexdigest()
    records, _ = load_records(tiny_data, tmp_path, 3)
    assert set(made.images) == {r.image_id for r in records if r.patient_id in training}
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["evaluate", "--model", str(run / "model.pt"), "--data", tiny_data, "--out", str(tmp_path / "r"),
                     "--split", "training", "--no-progress"])
    assert code == 2 and "refused to evaluate" in err.getvalue() and len(err.getvalue().strip().splitlines()) == 1
