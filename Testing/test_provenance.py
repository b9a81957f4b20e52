"""A model file says which women trained it; evaluate and calibrate refuse them, and say so
when a model does not know."""

from __future__ import annotations

import contextlib
import io
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from MammoPatchLib.errors import ModelFileError
from MammoPatchLib.model_file import (ModelInfo, Provenance, build_network, identity_sha256, load_model,
                                      read_model_payload, save_model)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from MammoPatchLib.synthetic import make_vindr_dataset

    return str(make_vindr_dataset(tmp_path_factory.mktemp("data"), n_studies=2, shape=(384, 320), seed=5,
                                  abnormal_fraction=1.0, test_fraction=0.0))


@pytest.fixture(scope="module")
def records(data):
    from MammoPatchLib.datasets import load_records

    return load_records(data, Path("."))[0]


def provenance_of(records, women) -> Provenance:
    images = sorted(r.image_id for r in records if r.patient_id in women)
    return Provenance(recipe={"name": "r"}, recipe_name="r", data="synthetic", images=images,
                      images_sha256=identity_sha256(images), members=[sorted(women)], selected_on=[])


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return build_network(ModelInfo(spacing_mm=0.4))


def write(network, path: Path, provenance=None, **changes) -> Path:
    save_model(network, replace(ModelInfo(spacing_mm=0.4, provenance=provenance), **changes), path)
    return path


def test_provenance_round_trips_through_the_model_file(tmp_path, network, records):
    women = {records[0].patient_id}
    made = provenance_of(records, women)
    loaded = load_model(write(network, tmp_path / "m.pt", made)).info.provenance
    assert loaded == made and loaded.women == women
    assert load_model(write(network, tmp_path / "old.pt")).info.provenance is None


@pytest.mark.parametrize("field, value, message", [
    ("members", "w1", "provenance.members: expected a list of a list of text, got 'w1'"),
    ("members", [["w1"], ["w2"]], "model provenance names the women of 2 member(s), the model has 1"),
    ("images", ["a", 3], "provenance.images[1]: expected text, got 3"),
    ("images_sha256", "0" * 64, "model provenance.images do not match their images_sha256"),
    ("recipe", "cell-3x3", "provenance.recipe: expected a mapping"),
    ("fold_file", 5, "provenance.fold_file: expected text, got 5"),
])
def test_a_bad_provenance_is_refused_on_load_naming_the_file_and_field(tmp_path, network, records, field, value,
                                                                       message):
    path = write(network, tmp_path / "m.pt", provenance_of(records, {records[0].patient_id}))
    payload = read_model_payload(path)
    payload["info"]["provenance"][field] = value
    torch.save(payload, path)
    with pytest.raises(ModelFileError) as caught:
        load_model(path)
    assert str(path) in str(caught.value) and message in str(caught.value)
    assert "expected a mapping of Provenance fields" not in str(caught.value), "the nested message is kept"


def test_an_optional_field_of_the_wrong_shape_is_refused_as_its_type_or_null():
    """Optional[X] with a value: a wrong shape reads "X or null"; a nested dataclass's own
    error (here a field it does not know) keeps its message."""
    from MammoPatchLib.config import config_from_dict
    from MammoPatchLib.errors import ConfigError

    with pytest.raises(ConfigError, match=r"ModelInfo.spacing_mm: expected a number or null, got 'x'"):
        config_from_dict(ModelInfo, {"spacing_mm": "x"})
    with pytest.raises(ConfigError, match=r"ModelInfo.provenance: expected a mapping of Provenance fields or null"):
        config_from_dict(ModelInfo, {"provenance": 3})
    with pytest.raises(ConfigError, match=r"ModelInfo.provenance: unknown field\(s\) \['colour'\]"):
        config_from_dict(ModelInfo, {"provenance": {"colour": "red"}})


def run_cli(*argv) -> tuple:
    from MammoPatchLib.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_evaluate_refuses_the_women_who_trained_the_model_in_one_line(tmp_path, network, data, records):
    woman = records[0].patient_id
    model = write(network, tmp_path / "m.pt", provenance_of(records, {woman}))
    code, _, err = run_cli("evaluate", "--model", str(model), "--data", data, "--out", str(tmp_path / "r"),
                           "--no-progress", "--draws", "0")
    mine = sum(r.patient_id == woman for r in records)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"refused to evaluate: {mine} of the {len(records)} images (1 women) are of women who trained" in err
    assert "crossval" in err and not (tmp_path / "r" / "report.md").exists()


def test_the_refusal_counts_only_the_images_asked_for(tmp_path, network, data, records):
    """--max-images N: the one line counts those N images, not the whole data set."""
    model = write(network, tmp_path / "m.pt", provenance_of(records, {records[0].patient_id}))
    code, _, err = run_cli("evaluate", "--model", str(model), "--data", data, "--out", str(tmp_path / "r"),
                           "--no-progress", "--draws", "0", "--max-images", "1")
    assert code == 2 and "refused to evaluate: 1 of the 1 images (1 women)" in err


def test_a_model_of_unknown_provenance_says_so_first(tmp_path, network, data):
    model = write(network, tmp_path / "m.pt")
    code, out, _ = run_cli("evaluate", "--model", str(model), "--data", data, "--out", str(tmp_path / "r"),
                           "--no-progress", "--draws", "0", "--max-images", "1")
    assert code == 0 and out.startswith("provenance unknown")
    assert (tmp_path / "r" / "report.md").read_text().splitlines()[0].startswith(
        "# MammoPatch evaluation: provenance unknown")
    card = (tmp_path / "r" / "model_card.md").read_text()
    assert "**Provenance unknown**" in card and "window head" in card and "n/a of n/a" not in card


def test_data_none_of_which_trained_the_model_is_evaluated(tmp_path, network, data, records):
    model = write(network, tmp_path / "m.pt", provenance_of(records, {"a woman of another data set"}))
    code, out, _ = run_cli("evaluate", "--model", str(model), "--data", data, "--out", str(tmp_path / "r"),
                           "--no-progress", "--draws", "0", "--max-images", "1")
    assert code == 0 and not out.startswith("provenance unknown")
    assert (tmp_path / "r" / "report.md").read_text().startswith(
        "# MammoPatch evaluation on women who never trained the model")


def test_calibrate_refuses_training_women_and_a_gated_model(tmp_path, network, data, records):
    woman = records[0].patient_id
    model = write(network, tmp_path / "m.pt", provenance_of(records, {woman}))
    code, _, err = run_cli("calibrate", "--model", str(model), "--data", data, "--out", str(tmp_path / "c.pt"))
    assert code == 2 and "refused to calibrate" in err and "women who trained" in err
    gated = ModelInfo(spacing_mm=0.4).inference
    gated = replace(gated, detection=replace(gated.detection, image_threshold=0.2))
    model = write(network, tmp_path / "g.pt", inference=gated)
    code, _, err = run_cli("calibrate", "--model", str(model), "--data", data, "--out", str(tmp_path / "c.pt"))
    assert code == 2 and "image gate" in err and "crossval --model-out" in err
    assert not (tmp_path / "c.pt").exists()


def test_evaluation_takes_every_image_or_one_split_of_a_split_file(tmp_path, data, records):
    """Without a split file every image of --data is a candidate (the refusal decides which
    trained the model); a split file narrows them to one split and names itself when empty."""
    from MammoPatchLib.errors import MammoPatchError
    from MammoPatchLib.evaluation.held_out import select_evaluation_records

    assert select_evaluation_records(data) == (records, "")
    split_file = tmp_path / "split.csv"
    split_file.write_text("image_id,split\n" + "".join(
        f"{r.image_id},{'test' if k == 0 else 'training'}\n" for k, r in enumerate(records)))
    chosen, split = select_evaluation_records(data, "test", split_file)
    assert split == "test" and [r.image_id for r in chosen] == [records[0].image_id]
    with pytest.raises(MammoPatchError, match="no images in the 'validation' split") as info:
        select_evaluation_records(data, "validation", split_file)
    assert str(split_file) in str(info.value)
