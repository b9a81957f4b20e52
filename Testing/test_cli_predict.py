"""`mammopatch predict / info / export-bundle` and the batch behaviour users rely on."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from helpers import tiny_model_file

from MammoPatchLib.cli import main
from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom
from MammoPatchLib.vocabulary import DEFAULT_MODE


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model") / "tiny.pt", spacing_mm=0.4)


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "in"
    for i in range(2):
        write_dicom(synthesize_mammogram((400, 320), 0.2, "L", "CC", ["round mass"], seed=i), folder / f"img{i}.dcm")
    (folder / "corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 50)
    return folder


def test_predict_batch_skips_and_reports_a_corrupt_file(model_path, image_folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["predict", str(image_folder), "--model", str(model_path), "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1, "exit code says some failed"
    assert "corrupt.dcm" in captured.err
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["status"] for r in rows] == ["failed", "ok", "ok"]
    assert "corrupt.dcm" in rows[0]["error"]
    for name in ("img0", "img1"):
        folder = out / name
        assert (folder / "labelmap.nrrd").exists() and (folder / "overlay.png").exists()
        assert len(list(folder.glob("heatmap_*.nrrd"))) == 10
        document = json.loads((folder / "findings.json").read_text())
        assert document["source"]["spacing_source"] == "PixelSpacing" and document["mode"] == DEFAULT_MODE
        header = (folder / "findings.csv").read_text().splitlines()[0]
        assert header.startswith("image,class,score,xmin_px")
    # Existing outputs are kept unless --overwrite.
    code = main(["predict", str(image_folder / "img0.dcm"), "--model", str(model_path), "--out", str(out),
                 "--no-progress"])
    assert code == 2 and "exist already" in capsys.readouterr().err
    assert main(["predict", str(image_folder / "img0.dcm"), "--model", str(model_path), "--out", str(out),
                 "--no-progress", "--overwrite", "--mode", "fast", "--format", "nifti", "--blend", "constant"]) == 0
    assert (out / "img0" / "heatmap_mass.nii.gz").exists()


def test_missing_model_is_one_clear_line(image_folder, tmp_path, capsys):
    code = main(["predict", str(image_folder), "--model", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.pt: model file not found" in err[0]


def test_info_prints_metadata(model_path, capsys):
    assert main(["info", str(model_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backbone"] == "efficientnet-lite0" and len(info["classes"]) == 10 and len(info["sha256"]) == 64


@pytest.mark.slow
def test_monai_bundle_runs_the_components_it_declares(model_path, image_folder, tmp_path):
    """The exported bundle's network, preprocessing, inferer and predictor are built by MONAI's
    ConfigParser from inference.json, and ``monai.bundle run`` gives the heatmaps
    ``mammopatch predict`` gives."""
    pytest.importorskip("fire")
    from monai.bundle import ConfigParser

    from MammoPatchLib.inference import DenseInferer
    from MammoPatchLib.io import read_mammogram

    bundle = tmp_path / "bundle"
    assert main(["export-bundle", str(model_path), "--out", str(bundle)]) == 0
    (image_folder / "corrupt.dcm").unlink()
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    parser["bundle_root"] = str(bundle)
    parser.get_parsed_content("imports")  # as monai.bundle run does first
    predictor = parser.get_parsed_content("predictor")
    assert isinstance(predictor.inferer, DenseInferer) and predictor.inferer is parser.get_parsed_content("inferer")
    assert predictor.model.network is parser.get_parsed_content("network"), "the declared network is the one used"
    out = tmp_path / "bundle-out"
    from monai.bundle import run  # what `python -m monai.bundle run` calls, here without a start-up

    run(config_file=str(bundle / "configs" / "inference.json"), meta_file=str(bundle / "configs" / "metadata.json"),
        bundle_root=str(bundle), input_dir=str(image_folder), output_dir=str(out))
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    reference = tmp_path / "cli-out"
    assert main(["predict", str(image_folder), "--model", str(model_path), "--out", str(reference),
                 "--device", "cpu", "--no-progress"]) == 0
    for name in ("img0", "img1"):
        ours = read_mammogram(out / name / "heatmap_mass.nrrd", min_side=0).pixels
        theirs = read_mammogram(reference / name / "heatmap_mass.nrrd", min_side=0).pixels
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
        assert json.loads((out / name / "findings.json").read_text())["findings"] == \
            json.loads((reference / name / "findings.json").read_text())["findings"]
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["network_data_format"]["outputs"]["pred"]["num_channels"] == 10


def test_output_folders_keep_dotted_dicom_names():
    from pathlib import Path

    from MammoPatchLib.prediction.folder import output_stem

    assert output_stem(Path("1.2.840.10008.5.dcm")) == "1.2.840.10008.5"
    assert output_stem(Path("case.nii.gz")) == "case" and output_stem(Path("IM0001")) == "IM0001"


def test_full_resolution_heatmaps_on_request(model_path, image_folder, tmp_path):
    """By default a heatmap holds one value per network cell; --full-resolution-heatmaps writes
    one per source pixel; with --heatmap-spacing too it is a bad argument (exit code 2)."""
    from MammoPatchLib.io import read_mammogram

    image = image_folder / "img0.dcm"
    for flags, folder in (([], "cells"), (["--full-resolution-heatmaps"], "full")):
        code = main(["predict", str(image), "--model", str(model_path), "--out", str(tmp_path / folder),
                     "--no-progress", *flags])
        assert code == 0
    cells = read_mammogram(tmp_path / "cells" / "img0" / "heatmap_mass.nrrd", min_side=0)
    full = read_mammogram(tmp_path / "full" / "img0" / "heatmap_mass.nrrd", min_side=0)
    assert full.pixels.shape == (400, 320) and max(cells.pixels.shape) <= 400 * 0.2 / (32 * 0.4) + 2
    with pytest.raises(SystemExit) as stop:
        main(["predict", str(image), "--out", str(tmp_path / "x"), "--full-resolution-heatmaps",
              "--heatmap-spacing", "1"])
    assert stop.value.code == 2
