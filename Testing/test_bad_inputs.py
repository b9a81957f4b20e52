"""Every case of the bad-input corpus (bad_inputs.py) gives exactly its outcome through the
batch path `mammopatch predict` uses: one clear error naming the file, an analysis with a
warning, or a clean analysis; and the batch always finishes with a complete summary."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from bad_inputs import corpus
from helpers import probe_model

from MammoPatchLib.prediction.folder import LOCK_NAME
from MammoPatchLib.vocabulary import FINDING_CLASSES

CASES = corpus()


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    from MammoPatchLib.api import predict_files
    from MammoPatchLib.inference import Predictor

    from MammoPatchLib.prediction.folder import output_stem

    folder = tmp_path_factory.mktemp("corpus")
    out = folder / "out"
    out.mkdir()
    inputs = []
    for index, case in enumerate(CASES):
        case_folder = folder / f"{index:02d}-{case.name}"
        case_folder.mkdir()
        inputs.append(case.make(case_folder))
        if case.occupy is not None:
            case.occupy(out / output_stem(inputs[-1]))
    predictor = Predictor(probe_model(spacing_mm=0.2), mode="fast", device="cpu")
    rows = predict_files(inputs, out, predictor=predictor, progress=False)
    return inputs, rows, out


def test_corpus_is_large_and_covers_every_outcome():
    outcomes = [c.outcome for c in CASES]
    assert len(CASES) >= 60 and {"error", "warning", "ok"} == set(outcomes)
    assert len({c.name for c in CASES}) == len(CASES)


def test_readme_states_the_corpus_count_and_outcomes():
    """The documented count and outcome table (docs/outputs-and-batches.md) are the corpus's
    (its expected outcomes, which the test below checks case by case)."""
    import re

    from bad_inputs import GROUPS, group_of

    readme = (Path(__file__).resolve().parents[1] / "docs" / "outputs-and-batches.md").read_text(encoding="utf-8")
    assert f"`Testing/bad_inputs.py` makes {len(CASES)} bad or odd inputs" in readme
    table = {}
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"\d+", cells[1]):
            table[cells[0]] = [int(c) for c in cells[1:]]
    expected = {label: [0, 0, 0, 0] for label, _ in GROUPS}
    expected["all"] = [0, 0, 0, 0]
    for case in CASES:
        column = ["ok", "warning", "error"].index(case.outcome)
        for label in (group_of(case), "all"):
            expected[label][column] += 1
            expected[label][3] += 1
    found = {next(label for label in expected if row.startswith(label)): counts for row, counts in table.items()}
    assert found == {label: counts for label, counts in expected.items() if counts[3]}


def test_batch_finishes_with_one_summary_row_per_input(corpus_run):
    inputs, rows, out = corpus_run
    assert [r.image for r in rows] == [str(p) for p in inputs]
    summary = list(csv.DictReader(open(out / "summary.csv", encoding="utf-8", errors="surrogateescape")))
    assert len(summary) == len(inputs)
    assert not [p for p in os.listdir(out) if p.startswith(".partial-")], "no partial folders left"
    assert not (out / LOCK_NAME).exists(), "the lock file goes with the run"


def test_what_the_user_put_in_the_output_folder_is_left_as_it_was(corpus_run):
    """A file or folder of the user's where an image's output folder goes fails that image
    (checked above) and is neither moved, replaced nor deleted; nothing is hidden aside."""
    _, _, out = corpus_run
    assert (out / "taken-by-file").read_text() == "the user's notes, not MammoPatch's\n"
    assert sorted(p.name for p in (out / "taken-by-folder").iterdir()) == ["keep-me.txt"]
    assert not [p for p in os.listdir(out) if p.startswith(".replaced-")]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_bad_input_gives_its_outcome(corpus_run, case):
    inputs, rows, _ = corpus_run
    row = rows[CASES.index(case)]
    for text in (row.error, row.warnings):  # numbers as numbers, not numpy's reprs
        assert "np.float" not in text and "np.int" not in text, text
    if case.outcome == "error":
        assert row.status == "failed", row
        message = row.error
        assert "\n" not in message and "Traceback" not in message and "unexpected" not in message, message
        assert Path(row.image).name in message or os.fsdecode(row.image) in message, message
        assert case.reason.lower() in message.lower(), message
        # One line that says the fault: no library's paragraph of advice, nothing cut mid-word.
        assert len(message.replace(str(row.image), "")) <= 320, message
        assert "weights_only" not in message and not message.endswith(("(", "[", ",")), message
    else:
        assert row.status == "ok", row
        assert Path(row.output).is_dir() and (Path(row.output) / "findings.json").is_file()
        if case.outcome == "warning":
            assert case.reason.lower() in row.warnings.lower(), row
        else:
            assert row.warnings == "", row


# ---- the command line: usage errors (2), outputs that cannot be written (3), model files ----

@pytest.fixture(scope="module")
def one_image(tmp_path_factory):
    from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom

    folder = tmp_path_factory.mktemp("one")
    return Path(write_dicom(synthesize_mammogram((512, 416), 0.2, "L", "CC", [], seed=1), folder / "a.dcm"))


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    from helpers import tiny_model_file

    return tiny_model_file(tmp_path_factory.mktemp("model") / "m.pt", spacing_mm=0.4)


@pytest.mark.parametrize("arguments", [
    ["--spacing", "-1"], ["--spacing", "0"], ["--spacing", "nan"], ["--spacing", "inf"], ["--spacing", "5"],
    ["--scales", "0.01"], ["--scales", "nan"], ["--scales", "1000"], ["--thresholds", "nan"],
    ["--thresholds", "1.5"], ["--batch-size", "0"], ["--mode", "turbo"],
], ids=lambda a: " ".join(a))
def test_bad_arguments_are_usage_errors(arguments, one_image, tmp_path, capsys):
    from MammoPatchLib.cli import main

    with pytest.raises(SystemExit) as info:
        main(["predict", str(one_image), "--out", str(tmp_path / "o"), *arguments])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err


def _cli_here(capsys, *arguments) -> tuple:
    """The command line in this process (the same code path, without a start-up per call)."""
    from MammoPatchLib.cli import main

    code = main([str(a) for a in arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_outputs_that_cannot_be_written_stop_before_any_image(one_image, small_model, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out, reason in [(a_file, "not a folder"), (Path("/proc/mammopatch-out"), "cannot write")]:
        code, _, err = _cli_here(capsys, "predict", one_image, "--model", small_model, "--out", out, "--no-progress")
        assert code == 3, err
        assert reason in err and err.count("error:") == 1 and "Traceback" not in err


def test_a_second_run_on_a_locked_output_folder_is_refused(one_image, small_model, tmp_path, capsys):
    from MammoPatchLib.prediction.folder import OutputFolder

    with OutputFolder(tmp_path / "out"):
        code, _, err = _cli_here(capsys, "predict", one_image, "--model", small_model, "--out", tmp_path / "out",
                                 "--no-progress")
    assert code == 3 and "another MammoPatch run" in err
    code, _, err = _cli_here(capsys, "predict", one_image, "--model", small_model, "--out", tmp_path / "out",
                             "--no-progress")
    assert code == 0, err


@pytest.mark.parametrize("change, reason", [
    ({"window": 0}, "window"), ({"stride": 64}, "fast mode needs"), ({"spacing_mm": -0.2}, "spacing_mm"),
    ({"thresholds": [float("nan")] * 10}, "thresholds"), ({"classes": ["Mass"] * 10}, "unique"),
    ({"unexpected": 1}, "unknown field"), ({"head_pooling": "max"}, "head_pooling"),
    ({"classes": ["Mass", "mass", *FINDING_CLASSES[2:]]}, "'Mass' and 'mass' both get the file name heatmap_mass"),
    ({"classes": [*FINDING_CLASSES[:9], "skin-thickening"]},
     "'Skin Thickening' and 'skin-thickening' both get the file name heatmap_skin_thickening"),
], ids=["window-0", "stride-64", "negative-spacing", "nan-thresholds", "duplicate-classes", "unknown-key",
        "unknown-pooling", "classes-differing-in-case", "classes-differing-in-punctuation"])
def test_bad_model_files_are_refused_before_any_image(change, reason, one_image, small_model, tmp_path, capsys):
    import torch

    from MammoPatchLib.model_file import weights_sha256

    payload = torch.load(small_model, weights_only=True)
    payload["info"].update(change)
    payload["sha256"] = weights_sha256(payload["state_dict"])
    torch.save(payload, tmp_path / "bad.pt")
    from MammoPatchLib.cli import main  # in this process: the same code path, without a start-up per case

    code = main(["predict", str(one_image), "--model", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "o"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and reason in err and "bad.pt" in err and "Traceback" not in err, err
    assert not (tmp_path / "o" / "a").exists()


class _RunsCode:
    """Pickled as a call of os.getcwd: harmless, but a model file must hold no code at all."""

    def __reduce__(self):
        return (os.getcwd, ())


def _model_with_code(folder: Path, model: Path) -> Path:
    import torch

    payload = torch.load(model, weights_only=True)
    payload["info"]["description"] = _RunsCode()
    torch.save(payload, folder / "bad.pt")
    return folder / "bad.pt"


def _plain_pickle(folder: Path, model: Path) -> Path:
    import pickle

    (folder / "bad.pt").write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))
    return folder / "bad.pt"


def _truncated_model(folder: Path, model: Path) -> Path:
    data = model.read_bytes()
    (folder / "bad.pt").write_bytes(data[: len(data) // 2])
    return folder / "bad.pt"


def _text_file(folder: Path, model: Path) -> Path:
    (folder / "bad.pt").write_text("these are not weights")
    return folder / "bad.pt"


def _folder(folder: Path, model: Path) -> Path:
    (folder / "bad.pt").mkdir()
    return folder / "bad.pt"


def _loop(folder: Path, model: Path) -> Path:
    os.symlink(folder / "other.pt", folder / "bad.pt")
    os.symlink(folder / "bad.pt", folder / "other.pt")
    return folder / "bad.pt"


def _pipe(folder: Path, model: Path) -> Path:
    os.mkfifo(folder / "bad.pt")
    return folder / "bad.pt"


def _other_head(folder: Path, model: Path) -> Path:
    """Weights of a 5-class head under information that says 10 classes."""
    import torch

    from MammoPatchLib.model_file import weights_sha256

    payload = torch.load(model, weights_only=True)
    state = payload["state_dict"]
    for key in [k for k in state if k.startswith("head.out.")]:
        state[key] = state[key][:5].clone()
    payload["sha256"] = weights_sha256(state)
    torch.save(payload, folder / "bad.pt")
    return folder / "bad.pt"


@pytest.mark.parametrize("make, reason", [
    (_model_with_code, "holds code or Python objects (posix.getcwd) that a model file must not contain"),
    (_plain_pickle, "a pickle that cannot be read without running code"),
    (_truncated_model, "truncated or damaged"),
    (_text_file, "not a MammoPatch model file"),
    (_folder, "is a folder, not a model file"),
    (_loop, "symbolic link loop"),
    (_pipe, "named pipe (FIFO), not a regular model file"),
    (_other_head, "of another shape (e.g. head.out.weight: 5x512x1x1 in the file, 10x512x1x1 needed)"),
], ids=["pickled-code", "plain-pickle", "truncated", "text", "folder", "symlink-loop", "fifo", "other-head"])
def test_unreadable_model_files_say_what_is_wrong_in_one_line(make, reason, one_image, small_model, tmp_path,
                                                              capsys):
    """The refusal names the fault: never PyTorch's advice to load without weights_only, never a
    message cut mid-way."""
    from MammoPatchLib.cli import main

    bad = make(tmp_path, small_model)
    code = main(["predict", str(one_image), "--model", str(bad), "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert str(bad) in err[0] and reason in err[0], err
    assert "weights_only" not in err[0] and "Re-running" not in err[0] and "torch.Size" not in err[0], err
    assert not err[0].rstrip().endswith(("(", "[", ",")), err


# ---- the output folder: re-runs, the lock file ----

def _images(folder: Path, count: int) -> list:
    from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom

    return [Path(write_dicom(synthesize_mammogram((512, 416), 0.2, "L", "CC", [], seed=k), folder / f"img{k}.dcm"))
            for k in range(count)]


def test_a_plain_rerun_of_a_stopped_batch_points_to_resume(tmp_path):
    """A batch stopped after its first image, run again without --resume: refused before any
    image, saying --resume / --overwrite; nothing in the folder changes (the finished image is
    not reported as failed); then --resume finishes it."""
    from MammoPatchLib.api import predict_files
    from MammoPatchLib.errors import MammoPatchError
    from MammoPatchLib.inference import Predictor

    images = _images(tmp_path, 2)
    out = tmp_path / "out"
    predictor = Predictor(probe_model(spacing_mm=0.2), mode="fast", device="cpu")
    assert [r.status for r in predict_files(images[:1], out, predictor=predictor, progress=False)] == ["ok"]
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*")}
    summary = (out / "summary.csv").read_bytes()
    with pytest.raises(MammoPatchError, match=r"outputs of 1 of the 2 images exist already.*\(img0\).*--resume"):
        predict_files(images, out, predictor=predictor, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert (out / "summary.csv").read_bytes() == summary
    rows = predict_files(images, out, predictor=predictor, progress=False, resume=True)
    assert [r.status for r in rows] == ["done earlier", "ok"]
    assert not (out / LOCK_NAME).exists()


def test_overwrite_replaces_mammopatch_outputs_only(tmp_path):
    from MammoPatchLib.api import predict_files
    from MammoPatchLib.inference import Predictor

    images = _images(tmp_path, 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "img1").mkdir()
    (out / "img1" / "mine.txt").write_text("keep")
    predictor = Predictor(probe_model(spacing_mm=0.2), mode="fast", device="cpu")
    predict_files(images[:1], out, predictor=predictor, progress=False)
    rows = predict_files(images, out, predictor=predictor, progress=False, overwrite=True)
    assert [r.status for r in rows] == ["ok", "failed"]
    assert "did not write" in rows[1].error and "img1.dcm" in rows[1].error
    assert [p.name for p in (out / "img1").iterdir()] == ["mine.txt"]
    assert (out / "img0" / "findings.json").is_file()


def test_the_lock_file_is_removed_and_still_excludes_a_second_run(tmp_path):
    from MammoPatchLib.prediction.folder import OutputError, OutputFolder

    with OutputFolder(tmp_path) as first:
        assert (tmp_path / LOCK_NAME).exists()
        with pytest.raises(OutputError, match="another MammoPatch run"):
            OutputFolder(tmp_path).__enter__()
        stale = open(tmp_path / LOCK_NAME, "a")  # a run that opened the lock file, not yet locked it
    assert not (tmp_path / LOCK_NAME).exists()
    import fcntl

    fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # it gets the old, deleted file's lock ...
    with OutputFolder(tmp_path):  # ... which excludes nobody: the name leads to a new file
        pass
    stale.close()
    assert first._lock_file is None


@pytest.mark.slow
def test_a_killed_batch_resumes_to_the_outputs_of_an_uninterrupted_one(small_model, tmp_path):
    """SIGKILL while images are being written: the re-run with --resume completes the batch,
    skips the finished images, leaves no partial folder, and its outputs equal those of a run
    that was never interrupted."""
    import signal
    import subprocess
    import sys
    import time

    import numpy as np

    from MammoPatchLib.io import read_mammogram
    from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom

    images = tmp_path / "in"
    for k in range(6):
        write_dicom(synthesize_mammogram((768, 640), 0.2, "L", "CC", ["round mass"], seed=k), images / f"img{k}.dcm")
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    command = [sys.executable, "-m", "MammoPatchLib.cli", "predict", str(images), "--model", str(small_model),
               "--mode", "exact", "--device", "cpu", "--no-progress"]
    import torch

    # the same thread count as this process, which finishes the batch: bit-equal heatmaps
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    process = subprocess.Popen(command + ["--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=env)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        summary = killed / "summary.csv"
        if summary.exists() and len(summary.read_text().splitlines()) >= 3:  # header + 2 images
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = sorted(p.name for p in killed.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert 2 <= len(done_before) < 6, done_before
    assert all((killed / name / "overlay.png").exists() for name in done_before), "published folders are complete"
    from MammoPatchLib.cli import main

    arguments = command[3:]  # the same command line, run in this process: no second start-up
    assert main(arguments + ["--out", str(killed), "--resume"]) == 0
    assert main(arguments + ["--out", str(clean)]) == 0
    rows = {r["image"]: r["status"] for r in csv.DictReader(open(killed / "summary.csv"))}
    assert sorted(s for s in rows.values()) == sorted(["done earlier"] * len(done_before) + ["ok"] * (6 - len(done_before)))
    assert not [p for p in killed.iterdir() if p.name.startswith((".partial-", ".replaced-"))]
    for k in range(6):
        a = read_mammogram(killed / f"img{k}" / "heatmap_mass.nrrd", min_side=0).pixels
        b = read_mammogram(clean / f"img{k}" / "heatmap_mass.nrrd", min_side=0).pixels
        np.testing.assert_array_equal(a, b)


# ---- probe findings of issue 34: argument and recipe checks, pairing, discovery, reports ----

def _mias_folder(folder: Path, women: int) -> Path:
    """A mini-MIAS layout of ``women`` women (two normal films each; the files exist, empty:
    the folds are dealt before any image is read)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["refnum,image,class,x,y_bottom_left,radius"]
    for number in range(1, 2 * women + 1):
        rows.append(f"mdb{number:03d},mdb{number:03d}.png,NORM,,,")
        (folder / f"mdb{number:03d}.png").write_bytes(b"")
    (folder / "annotations.csv").write_text("\n".join(rows) + "\n")
    return folder


def _recipe(folder: Path, values: dict, name: str = "recipe.json") -> Path:
    import json

    path = folder / name
    path.write_text(json.dumps(values), encoding="utf-8")
    return path


def test_crossval_folds_outside_two_to_the_number_of_women_are_usage_errors(tmp_path, capsys):
    from MammoPatchLib.cli import main

    data, recipe = _mias_folder(tmp_path / "data", women=10), _recipe(tmp_path, {})
    command = ["crossval", "--config", str(recipe), "--data", str(data), "--out", str(tmp_path / "cv"),
               "--no-progress", "--folds"]
    with pytest.raises(SystemExit) as info:
        main(command + ["1"])
    assert info.value.code == 2 and "argument --folds: 1 must be at least 2" in capsys.readouterr().err
    code, out, err = _cli_here(capsys, *command, "500")
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines() == ["error: 10 women cannot fill 500 folds; folds must be 2 to the number of "
                                        "women (-v shows where)"]


@pytest.mark.parametrize("field, value, expected", [
    ("seed", "1", "seed: expected a whole number, got '1' (str)"),
    ("epochs", "20", "epochs: expected a whole number, got '20' (str)"),
    ("seed", True, "seed: expected a whole number, got True (bool)"),
    ("epochs", 20.0, "epochs: expected a whole number, got 20.0 (float)"),
    ("flip_augment", 1, "flip_augment: expected true or false, got 1 (int)"),
    ("learning_rate", "1e-3", "learning_rate: expected a number, got '1e-3' (str)"),
    ("classes", "Mass", "classes: expected a list of text, got 'Mass' (str)"),
    ("train_scales", [0.8, "1.25"], "train_scales[1]: expected a number, got '1.25' (str)"),
    ("preprocessing", {"crop": "yes"}, "preprocessing.crop: expected true or false, got 'yes' (str)"),
    ("spacing_mm", None, "spacing_mm: expected a number, got null"),
], ids=lambda v: str(v))
def test_every_recipe_field_is_type_checked_by_name_when_read(tmp_path, field, value, expected):
    from MammoPatchLib.errors import ConfigError
    from MammoPatchLib.training.recipe import Recipe

    path = _recipe(tmp_path, {field: value})
    with pytest.raises(ConfigError) as info:
        Recipe.load(path)
    assert str(info.value) == f"{path}: recipe.{expected}"


def test_recipes_check_types_the_same_way_nested_tuples_included():
    from MammoPatchLib.errors import ConfigError
    from MammoPatchLib.training.recipe import Recipe

    network = {"trains": "network", "sampler": "poster", "head": "window"}
    recipe = Recipe.from_dict({**network, "learning_rate": 1, "sampling": {"scale_range": [1, 2]}})
    assert recipe.learning_rate == 1 and recipe.sampling.scale_range == (1, 2)
    for values, message in [
        ({"batch_size": "16"}, "batch_size: expected a whole number, got '16' (str)"),
        ({"sampling": {"patch_size": "256"}}, "sampling.patch_size: expected a whole number, got '256' (str)"),
        ({"sampling": {"scale_range": [1, "2"]}}, "sampling.scale_range[1]: expected a number, got '2' (str)"),
        ({"sampling": {"scale_range": [1, 2, 3]}}, "sampling.scale_range: expected a list of 2 (a number, a number)"),
        ({"amp": "false"}, "amp: expected true or false, got 'false' (str)"),
    ]:
        with pytest.raises(ConfigError, match=f"^recipe.{message}".replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")):
            Recipe.from_dict({**network, **values})


@pytest.mark.parametrize("name, values, expected", [
    ("recipe.json", {"seed": "1"}, "recipe.seed: expected a whole number, got '1' (str)"),
    ("recipe.yaml", {}, "configuration files are JSON (.json), not .yaml; write it as JSON"),
], ids=["seed-as-text", "yaml"])
def test_crossval_refuses_a_bad_recipe_before_any_feature_is_computed(tmp_path, capsys, name, values, expected):
    data, recipe = _mias_folder(tmp_path / "data", women=3), _recipe(tmp_path, values, name)
    out = tmp_path / "cv"
    code, _, err = _cli_here(capsys, "crossval", "--config", recipe, "--data", data, "--folds", 2, "--out", out,
                             "--no-progress")
    assert code == 2 and err.strip().splitlines() == [f"error: {recipe}: {expected}"], err
    assert not out.exists(), "refused before the report folder, its folds or its feature cache"


def test_a_view_with_two_images_of_one_side_is_read_alone_in_findings_and_image_scores(tmp_path, caplog):
    """Two left and one right CC of one study: which left is the right's other breast is a
    guess, so all three are read alone, in findings.json and image_scores.csv alike, with one
    warning that names the study, the view and the files; a clean pair beside them is still
    read as a pair in both."""
    import json
    import logging
    from dataclasses import replace

    from MammoPatchLib.api import predict_files
    from MammoPatchLib.inference import Predictor
    from MammoPatchLib.other_breast import OtherBreastPoint
    from MammoPatchLib.prediction.image_scores import IMAGE_SCORES_FILE
    from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom

    films = [("left-1", "L", "1.2.3", 1), ("left-2", "L", "1.2.3", 2), ("right", "R", "1.2.3", 3),
             ("pair-left", "L", "1.2.4", 4), ("pair-right", "R", "1.2.4", 5)]
    folder = tmp_path / "in"
    for name, side, study, seed in films:
        write_dicom(synthesize_mammogram((400, 320), 0.2, side, "CC", ["round mass"], seed=seed),
                    folder / f"{name}.dcm", study_uid=study)
    (tmp_path / "batch.csv").write_text("path\n" + "".join(f"in/{name}.dcm\n" for name, *_ in films))
    model = probe_model()
    model.info = replace(model.info, inference=replace(model.info.inference,
                                                       other_breast=OtherBreastPoint(0.5, [0.45] + [0.5] * 9, 0.0)))
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="MammoPatchLib"):
        rows = predict_files([tmp_path / "batch.csv"], out, predictor=Predictor(model, device="cpu", progress=False),
                             progress=False)
    assert [r.status for r in rows] == ["ok"] * 5
    warned = [r.getMessage() for r in caplog.records if "more than one image of a side" in r.getMessage()]
    assert warned == ["study 1.2.3, view CC holds more than one image of a side (left-1.dcm (L), left-2.dcm (L), "
                      "right.dcm (R)): those images are read alone, not against the other breast"]
    paired = {name: json.loads((out / name / "findings.json").read_text())["other_breast"] for name, *_ in films}
    scores = {Path(r["image"]).stem: r for r in csv.DictReader(open(out / IMAGE_SCORES_FILE, encoding="utf-8"))}
    for name in ("left-1", "left-2", "right"):
        assert paired[name] is None and scores[name]["other_breast_score"] == "", name
    assert paired["pair-left"]["image"].endswith("pair-right.dcm")
    assert paired["pair-right"]["image"].endswith("pair-left.dcm")
    assert scores["pair-left"]["other_breast_score"] == scores["pair-right"]["image_score"] != ""


def test_an_output_folder_inside_the_input_folder_is_never_read_as_input(tmp_path):
    """--out inside the folder of mammograms, run twice with --resume: the second run finds the
    same images (not the first run's heatmaps and label maps), and so does a run whose --out is
    elsewhere (the image output folders are recognised by their marker)."""
    from MammoPatchLib.api import predict_files
    from MammoPatchLib.inference import Predictor

    images = [str(p) for p in _images(tmp_path / "in", 2)]
    predictor = Predictor(probe_model(spacing_mm=0.2), mode="fast", device="cpu")
    results = tmp_path / "in" / "results"
    for status in ("ok", "done earlier"):
        rows = predict_files([tmp_path / "in"], results, predictor=predictor, progress=False, resume=True)
        assert [(r.image, r.status) for r in rows] == [(p, status) for p in images]
    assert sorted(p.name for p in results.iterdir() if p.is_dir()) == ["img0", "img1"]
    rows = predict_files([tmp_path / "in"], tmp_path / "elsewhere", predictor=predictor, progress=False)
    assert [r.image for r in rows] == images


def test_the_crossval_report_states_the_bootstrap_draws_it_used(tmp_path):
    from MammoPatchLib.evaluation.crossval_report import write_crossval_report

    write_crossval_report({"baseline": "r", "recipes": {}, "folds": 5, "draws": 200, "data": "d"}, tmp_path / "cv.md")
    text = (tmp_path / "cv.md").read_text(encoding="utf-8")
    assert "95 % intervals from 200 bootstrap draws of women" in text and "1,000" not in text


def test_preprocess_previews_inside_the_input_folder_are_not_read_back_as_inputs(tmp_path, capsys):
    images = _images(tmp_path / "in", 1)
    for _ in range(2):
        code, out, err = _cli_here(capsys, "preprocess", tmp_path / "in", "--out", tmp_path / "in" / "previews",
                                   "--overwrite")
        assert code == 0 and out.splitlines() == [f"{images[0]}: {tmp_path / 'in' / 'previews' / 'img0_preprocessed.png'}"], \
            out + err
