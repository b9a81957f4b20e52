"""The command line: demo, synth and preprocess, including a batch with a corrupt file."""

from __future__ import annotations

import subprocess
import sys

from MammoPatchLib.cli import main


def test_demo_writes_outputs(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--mode", "fast", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "sample_mammogram.dcm" in out and "overlay" in out
    assert (tmp_path / "sample_mammogram.dcm").stat().st_size > 0
    result = tmp_path / "results" / "sample_mammogram"
    assert (result / "overlay.png").stat().st_size > 0 and (result / "findings.json").exists()
    from MammoPatchLib.api import resolve_model

    reported = resolve_model().info.reported_classes  # the bundled model's trained classes
    assert len(list(result.glob("heatmap_*.nrrd"))) == len(reported) == 4
    import json

    document = json.loads((result / "findings.json").read_text())
    assert {f["category"] for f in document["findings"]} <= set(reported)


def test_synth_vindr_layout(tmp_path):
    assert main(["synth", "--vindr", "--studies", "2", "--shape", "300", "260", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "finding_annotations.csv").exists()
    assert len(list((tmp_path / "images").rglob("*.dicom"))) == 8


def test_preprocess_batch_reports_bad_file_and_goes_on(tmp_path, synthetic_dicom, capsys):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"garbage" * 100)
    out = tmp_path / "out"
    code = main(["preprocess", str(synthetic_dicom), str(bad), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert "broken.dcm" in captured.err and "not a DICOM" in captured.err
    assert (out / "sample_preprocessed.png").exists()


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "MammoPatchLib.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "MammoPatch" in result.stdout
