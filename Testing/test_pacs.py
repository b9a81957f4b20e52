"""A real PACS round trip: Orthanc (Debian's orthanc + orthanc-dicomweb) on a loopback port
with a temporary database; generated mammograms are uploaded, `mammopatch predict
--from-dicomweb ... --to-dicomweb ...` fetches the study, predicts, and stores SEG, heatmap
SEG, overlay and SR back, which are then found in Orthanc's copy of the study."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
pytest.importorskip("highdicom")
pytest.importorskip("dicomweb_client")
requests = pytest.importorskip("requests")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    executable = shutil.which("Orthanc")
    if executable is None or not PLUGIN.exists():
        pytest.skip("Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
    folder = tmp_path_factory.mktemp("orthanc")
    port = _free_port()
    config = {"Name": "MammoPatchTest", "HttpPort": port, "DicomPort": _free_port(), "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "StorageDirectory": str(folder / "storage"),
              "IndexDirectory": str(folder / "index"), "Plugins": [str(PLUGIN)],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (folder / "config.json").write_text(json.dumps(config))
    process = subprocess.Popen([executable, str(folder / "config.json")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if requests.get(url + "/system", timeout=1).ok:
                break
        except requests.RequestException:
            time.sleep(0.1)
    else:
        process.kill()
        pytest.fail("Orthanc did not start")
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_predict_fetches_a_study_from_the_pacs_and_stores_the_results_back(orthanc, tmp_path):
    from helpers import tiny_model_file

    from MammoPatchLib.cli import main
    from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom

    study = "1.2.826.0.1.3680043.8.498.1234567890"
    for k, side in enumerate("LR"):
        path = write_dicom(synthesize_mammogram((512, 416), 0.2, side, "CC", ["round mass"], seed=k),
                           tmp_path / f"{side}.dcm", study_uid=study)
        assert requests.post(orthanc + "/instances", data=Path(path).read_bytes(), timeout=30).ok
    (tmp_path / "notes.txt").write_text("x")
    model = tiny_model_file(tmp_path / "m.pt", spacing_mm=0.4)
    web = orthanc + "/dicom-web"
    code = main(["predict", "--from-dicomweb", web, "--study", study, "--to-dicomweb", web, "--out",
                 str(tmp_path / "out"), "--model", str(model), "--device", "cpu", "--no-progress"])
    assert code == 0
    series = requests.get(f"{web}/studies/{study}/series", timeout=30).json()
    modalities = sorted(s["00080060"]["Value"][0] for s in series)
    # the two mammograms, and per image: heatmap SEG (+ findings SEG when there are findings), SC, SR
    assert modalities.count("MG") == 2 and modalities.count("SR") == 2 and modalities.count("OT") == 2
    assert modalities.count("SEG") >= 2
    stored = requests.get(f"{web}/studies/{study}/instances", timeout=30).json()
    assert len(stored) == len(series)
