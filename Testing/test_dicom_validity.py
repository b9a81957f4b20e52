"""Every kind of DICOM file the project writes passes dciodvfy (dicom3tools, the validator of
the DICOM community) without an error: the sample mammogram of ``mammopatch synth`` (also the
demo's), its variants, the synthetic VinDr-layout tree, and the four results of ``--dicom-out``
(findings SEG, heatmap SEG, overlay Secondary Capture, SR) for an image with findings and for
one without."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest
from helpers import probe_model

DCIODVFY = shutil.which("dciodvfy")
pytestmark = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy is not installed (Debian/Ubuntu package "
                                                        "dicom3tools); DICOM validity is not checked")
SHAPE = ("320", "256")


def errors_of(path: Path) -> List[str]:
    """dciodvfy's "Error" lines for one file (its warnings are allowed)."""
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Dict[str, Path]:
    """{kind: file} of one file of each kind, made the way a user makes them."""
    from MammoPatchLib.api import predict_files
    from MammoPatchLib.cli import main
    from MammoPatchLib.inference import Predictor

    folder = tmp_path_factory.mktemp("validity")
    files = {"sample": folder / "sample.dcm", "sample MONOCHROME1 RLE": folder / "m1.dcm",
             "mass": folder / "mass.dcm", "normal": folder / "normal.dcm"}
    assert main(["synth", "--out", str(files["sample"]), "--shape", *SHAPE, "--view", "MLO", "--seed", "1"]) == 0
    assert main(["synth", "--out", str(files["sample MONOCHROME1 RLE"]), "--shape", *SHAPE, "--laterality", "R",
                 "--photometric", "MONOCHROME1", "--syntax", "rle"]) == 0
    assert main(["synth", "--out", str(files["mass"]), "--shape", "640", "512", "--findings", "round mass",
                 "--seed", "2"]) == 0
    assert main(["synth", "--out", str(files["normal"]), "--shape", *SHAPE, "--view", "MLO", "--findings"]) == 0
    assert main(["synth", "--vindr", "--out", str(folder / "vindr"), "--studies", "1", "--shape", "256", "208"]) == 0
    files["VinDr tree image"] = sorted((folder / "vindr" / "images").rglob("*.dicom"))[0]
    runs = {"with findings": (probe_model(spacing_mm=0.2), files["mass"]),
            "without findings": (probe_model(spacing_mm=0.2, level=2.0), files["normal"])}
    for case, (model, source) in runs.items():
        predictor = Predictor(model, mode="fast", device="cpu", classes=["Mass", "Asymmetry"])
        (row,) = predict_files([source], folder / case, predictor=predictor, dicom=True, progress=False)
        assert (row.findings or 0) > 0 if case == "with findings" else not row.findings, row
        for kind in ("findings_seg", "heatmaps_seg", "overlay_sc", "findings_sr"):
            files[f"{kind} ({case})"] = folder / case / source.stem / f"{kind}.dcm"
    return files


KINDS = ["sample", "sample MONOCHROME1 RLE", "VinDr tree image"] + [
    f"{kind} ({case})" for case in ("with findings", "without findings")
    for kind in ("findings_seg", "heatmaps_seg", "overlay_sc", "findings_sr")]


@pytest.mark.parametrize("kind", KINDS)
def test_dciodvfy_finds_no_error(written, kind):
    path = written[kind]
    assert path.is_file(), f"{kind}: not written"
    errors = errors_of(path)
    assert not errors, f"dciodvfy finds {len(errors)} error(s) in the {kind} file:\n" + "\n".join(errors)


def test_the_check_fails_on_an_invalid_file(written, tmp_path):
    """The check can fail: the sample without its View Code Sequence is an error."""
    import pydicom

    ds = pydicom.dcmread(written["sample"])
    del ds.ViewCodeSequence
    ds.save_as(tmp_path / "broken.dcm")
    assert any("ViewCodeSequence" in line for line in errors_of(tmp_path / "broken.dcm"))
