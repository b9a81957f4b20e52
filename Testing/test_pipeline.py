"""One image, one pass: ``predict`` and a batch run the same three stages (load, infer, write),
so a batch writes exactly what ``predict`` returns; the typed rows and options between them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import tiny_model_file
from MammoPatchLib.errors import ConfigError, MammoPatchError
from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom
from MammoPatchLib.vocabulary import Status


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model") / "tiny.pt", spacing_mm=0.4)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("in")
    for k in range(2):
        write_dicom(synthesize_mammogram((448, 352), 0.2, "LR"[k], "CC", ["round mass", "calcification cluster"],
                                         seed=k), folder / f"img{k}.dcm")
    return folder


@pytest.mark.parametrize("options", [dict(mode="fast", workers=2),
                                     dict(mode="exact", scales=(0.75, 1.0), flip_tta=True, workers=0)])
def test_a_batch_writes_what_predict_returns(model_path, images, tmp_path, options):
    """Same findings, array-equal heatmaps (every class) and label maps, whether an image goes
    through ``predict`` or through a batch (threads, writer thread and publishing included)."""
    import SimpleITK as sitk

    from MammoPatchLib.api import predict, predict_files
    from MammoPatchLib.io import read_mammogram
    from MammoPatchLib.results.files import class_slug

    options = dict(options)
    workers = options.pop("workers")
    rows = predict_files([images], tmp_path / "out", model=model_path, device="cpu", progress=False,
                         heatmaps="all", workers=workers, **options)
    assert [r.status for r in rows] == [Status.OK, Status.OK]
    for row in rows:
        result = predict(row.image, model=model_path, device="cpu", **options)
        folder = Path(row.output)
        written = json.loads((folder / "findings.json").read_text())
        assert written["findings"] == json.loads(json.dumps([f.to_dict() for f in result.findings]))
        assert row.findings == len(result.findings) > 0
        assert row.top_score == result.findings[0].score
        label_map = read_mammogram(folder / "labelmap.nrrd", min_side=0).pixels
        assert np.array_equal(label_map, result.label_map)
        # One scale: the network's cells; several: every source pixel (no one grid holds them).
        expected = result.cell_grid_heatmaps()[0] if result.on_one_cell_grid else result.heatmaps
        assert result.on_one_cell_grid == (len(options.get("scales", (1.0,))) == 1)
        for k, name in enumerate(result.classes):
            heatmap = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"heatmap_{class_slug(name)}.nrrd")))[0]
            assert heatmap.dtype == np.float32 and np.array_equal(heatmap, expected[k]), name


def test_options_and_a_predictor_together_are_refused(model_path, images, tmp_path):
    """Options given beside an already built predictor would be silently unused: an error."""
    from MammoPatchLib.api import predict, predict_files
    from MammoPatchLib.inference import PredictOptions, Predictor
    from MammoPatchLib.model_file import load_model

    predictor = Predictor(load_model(model_path), device="cpu")
    with pytest.raises(ConfigError, match="not both"):
        predict_files([images], tmp_path / "o", predictor=predictor, mode="exact", progress=False)
    with pytest.raises(ConfigError, match="not both"):
        predict(images / "img0.dcm", predictor=predictor, options=PredictOptions(mode="exact"))
    with pytest.raises(ConfigError, match="unknown option"):
        predict_files([images], tmp_path / "o", model=model_path, colour="red")
    assert not (tmp_path / "o").exists(), "refused before any output"
    # output options are the batch's, and go with a predictor
    rows = predict_files([images / "img0.dcm"], tmp_path / "o", predictor=predictor, heatmaps="none", progress=False)
    assert rows[0].ok and not list((tmp_path / "o" / "img0").glob("heatmap_*"))


def test_prediction_options_are_checked_when_made():
    from MammoPatchLib.inference import PredictOptions

    assert PredictOptions(scales=[1, 2]).scales == (1.0, 2.0)
    for bad in (dict(mode="turbo"), dict(scales=()), dict(scales=(0.0,)), dict(thresholds=[1.5]),
                dict(sw_batch_size=0)):
        with pytest.raises(ConfigError):
            PredictOptions(**bad)
    with pytest.raises(ConfigError, match="colour"):
        PredictOptions().updated(colour="red")


def test_a_row_is_written_as_the_summary_columns(tmp_path):
    from MammoPatchLib.prediction.rows import SUMMARY_COLUMNS, Row, write_summary

    rows = [Row(image="a.dcm", status=Status.OK, findings=2, top_class="Mass", top_score=0.123456, seconds=1.239,
                output="out/a").placed(0, 1, 9.0),
            Row(image="b.dcm", status=Status.FAILED, error="b.dcm: not an image").placed(1, 1, 0.5)]
    write_summary(rows, tmp_path / "summary.csv")
    written = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert list(written[0]) == SUMMARY_COLUMNS
    assert written[0]["top_score"] == "0.1235" and written[0]["seconds"] == "1.24" and written[0]["rank"] == "1"
    assert written[1]["status"] == "failed" and written[1]["findings"] == "" and written[1]["seconds"] == "0.50"
    assert [s.value for s in Status] == ["ok", "failed", "done earlier"]


def test_a_negative_activation_map_count_is_refused(tmp_path):
    """It used to be accepted and silently dropped the last finding."""
    from MammoPatchLib.cli import main
    from MammoPatchLib.results.files import OutputOptions

    with pytest.raises(MammoPatchError, match="activation maps"):
        OutputOptions(activation_maps=-1)
    with pytest.raises(SystemExit):
        main(["predict", "x.dcm", "--out", str(tmp_path), "--activation-maps", "-1"])
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", "m.pt", "--data", "d", "--out", str(tmp_path), "--scales", "9"])
