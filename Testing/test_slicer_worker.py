"""The worker contract (MammoPatchLib.contract, the CLI's --result-manifest) and the Slicer
side's worker handling (MammoPatch/MammoPatchSlicer/worker.py), with real processes: progress
lines, undecodable output, a failing line handler, Cancel, and killing a process tree."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "MammoPatch"))
from MammoPatchSlicer import worker as worker_module  # noqa: E402
from MammoPatchSlicer.worker import WorkerProcess  # noqa: E402

from MammoPatchLib import contract  # noqa: E402


def test_progress_lines_round_trip_and_reject_others():
    line = contract.progress_line(0.25, "image 1 of 4:\nwindows")
    assert "\n" not in line and contract.parse_progress_line(line) == (0.25, "image 1 of 4: windows")
    assert contract.parse_progress_line("MAMMOPATCH-PROGRESS nan? text") is None
    assert contract.parse_progress_line("a.dcm: 2 finding(s)") is None
    assert contract.parse_error_line("error: a.dcm: truncated") == "a.dcm: truncated"


@pytest.mark.parametrize("code, cancelled, status", [(0, False, "ok"), (1, False, "failed"), (130, False, "cancelled"),
                                                     (-9, True, "cancelled"), (1, True, "cancelled"),
                                                     (0, True, "ok"), (-9, False, "failed")])
def test_a_worker_killed_after_cancel_was_cancelled(code, cancelled, status):
    assert contract.run_outcome(code, cancelled) == status


def test_class_choices_come_from_the_model():
    classes = ["Mass", "Suspicious Calcification", "Focal Asymmetry"]
    assert contract.class_choices(classes, ["Mass"]) == [contract.REPORTED_CLASSES, contract.ALL_CLASSES, "Mass"]
    assert contract.class_choices(classes, ["Mass"], show_others=True)[2:] == classes
    assert contract.heatmap_request(contract.REPORTED_CLASSES, None) == "selected"
    assert contract.heatmap_request("Mass", ["Mass"]) == "selected"
    assert contract.heatmap_request("Focal Asymmetry", ["Mass"]) == "all"
    assert contract.heatmap_request(contract.ALL_CLASSES, ["Mass"]) == "all"


def test_cli_writes_the_manifest_of_a_run(tmp_path):
    from helpers import tiny_model_file

    from MammoPatchLib.cli import main
    from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom

    path = write_dicom(synthesize_mammogram((320, 256), 0.2, "L", "CC", ["round mass"], seed=1), tmp_path / "a.dcm")
    model = tiny_model_file(tmp_path / "tiny.pt", spacing_mm=0.4)
    manifest_path = tmp_path / "m" / "manifest.json"
    code = main(["predict", str(path), "--out", str(tmp_path / "out"), "--model", str(model), "--mode", "fast",
                 "--device", "cpu", "--no-progress", "--thresholds", *["0"] * 10, "--activation-maps", "1",
                 "--dicom-out", "--result-manifest", str(manifest_path)])
    assert code == contract.EXIT_OK
    manifest = contract.read_manifest(str(manifest_path))
    assert manifest.status == "ok" and manifest.error == "" and len(manifest.images) == 1
    image = manifest.images[0]
    document = json.loads((tmp_path / "out" / "a" / "findings.json").read_text())
    assert image.findings == document["findings"] and image.findings
    assert list(image.heatmaps) == document["heatmaps"]["classes"]
    assert image.labelmap.endswith("labelmap.nrrd") and image.labelmap_classes[0] == "No Finding"
    assert image.source["geometry"] == document["source"]["geometry"]
    assert [a["finding"] for a in image.activation_maps] == [0]
    assert set(image.dicom) == {"seg", "heatmaps", "overlay", "report"}
    listed = [*image.heatmaps.values(), image.labelmap, *image.files, *(a["path"] for a in image.activation_maps),
              *image.dicom.values()]
    assert all(os.path.isfile(p) for p in listed)
    on_disk = {str(p) for p in (tmp_path / "out" / "a").iterdir()}
    assert set(listed) == on_disk, "every file written is listed"


def test_cli_manifest_says_why_a_run_failed_or_was_cancelled(tmp_path):
    from MammoPatchLib.cli import main
    from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom

    path = write_dicom(synthesize_mammogram((320, 256), 0.2, "L", "CC", [], seed=1), tmp_path / "a.dcm")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"no")
    manifest_path = tmp_path / "manifest.json"
    code = main(["predict", str(path), "--out", str(tmp_path / "out"), "--model", str(bad), "--no-progress",
                 "--result-manifest", str(manifest_path)])
    manifest = contract.read_manifest(str(manifest_path))
    assert code == contract.EXIT_USAGE and manifest.status == "failed" and "bad.pt" in manifest.error
    from helpers import tiny_model_file

    model = tiny_model_file(tmp_path / "tiny.pt", spacing_mm=0.4)
    (tmp_path / "cancel").write_text("")
    code = main(["predict", str(path), "--out", str(tmp_path / "out2"), "--model", str(model), "--mode", "fast",
                 "--device", "cpu", "--no-progress", "--cancel-file", str(tmp_path / "cancel"),
                 "--result-manifest", str(manifest_path)])
    assert code == contract.EXIT_CANCELLED and contract.read_manifest(str(manifest_path)).status == "cancelled"
    with pytest.raises(contract.ManifestError, match="no result manifest"):
        contract.read_manifest(str(tmp_path / "absent.json"))
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(contract.ManifestError, match="other.json: not a MammoPatch result manifest"):
        contract.read_manifest(str(tmp_path / "other.json"))


def _alive(pid: int) -> bool:
    """Running (a zombie left for a container's init to reap counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _worker(tmp_path, code: str, on_line=None):
    lines, exits = [], []
    script = tmp_path / "worker.py"
    script.write_text(code)
    proc = WorkerProcess([sys.executable, str(script)], dict(os.environ), str(tmp_path / "cancel"),
                         on_line or lines.append, exits.append)
    return proc, lines, exits


def test_undecodable_output_and_the_final_line_are_not_lost(tmp_path):
    proc, lines, exits = _worker(tmp_path, "import sys\nsys.stdout.buffer.write(b'caf\\xe9 \\xff\\n')\n"
                                           "sys.stdout.flush()\nprint('error: the last line', file=sys.stderr)\n"
                                           "sys.exit(1)\n")
    proc.wait(timeout_s=60)
    proc.poll()  # a later timer tick changes nothing
    assert exits == [1], "on_exit exactly once"
    assert lines[-1] == "error: the last line" and lines[0].startswith("caf")


def test_a_failing_line_handler_loses_no_line(tmp_path):
    seen = []

    def on_line(line):
        seen.append(line)
        if line == "1":
            raise ValueError("display failed")

    proc, _lines, exits = _worker(tmp_path, "for i in range(5):\n    print(i)\nprint('error: final')\n", on_line)
    proc.wait(timeout_s=60)
    assert seen == ["0", "1", "2", "3", "4", "error: final"] and exits == [0]


def test_cancel_kills_the_whole_process_tree_after_the_grace_time(tmp_path, monkeypatch):
    """A worker that ignores the cancel file (and has a child, as the PythonSlicer launcher has
    the real Python) is killed with its child; the run counts as cancelled."""
    monkeypatch.setattr(worker_module, "KILL_GRACE_S", 0.3)
    child_pid = tmp_path / "child.pid"
    proc, lines, exits = _worker(tmp_path, (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(child_pid)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(120)\n"))
    deadline = time.monotonic() + 60
    while not lines and time.monotonic() < deadline:
        proc.poll()
        time.sleep(0.05)
    proc.cancel()
    assert (tmp_path / "cancel").exists()
    proc.wait(timeout_s=60)
    assert contract.run_outcome(exits[0], proc.cancel_requested) == "cancelled"
    pid = int(child_pid.read_text())
    for _ in range(100):
        if not _alive(pid):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the worker's child survived the kill")


def test_one_run_at_a_time_each_finished_once_and_leftover_timers_are_harmless(tmp_path):
    """The Logic's timer chain and a blocking wait() both poll the same run: its results are
    handled once; a timer left over from the first run, fired during the second, changes
    nothing; last_outcome is the run that finished last."""
    from MammoPatchSlicer.run import RunSlot

    timers = []
    slot = RunSlot(lambda ms, callback: timers.append(callback))
    finished = []

    def make(name):
        script = tmp_path / f"{name}.py"
        script.write_text(f"print({name!r})\n")

        def factory(done):
            outcome = {"name": name, "lines": []}
            return WorkerProcess([sys.executable, str(script)], dict(os.environ), str(tmp_path / f"{name}.cancel"),
                                 outcome["lines"].append, lambda code: done({**outcome, "code": code}))
        return factory

    first = slot.start(make("first"), finished.append)
    with pytest.raises(RuntimeError, match="already running"):
        slot.start(make("other"))
    first.wait(timeout_s=60)  # process(): blocks; the pending timer has not fired yet
    leftover = timers.pop(0)
    second = slot.start(make("second"), finished.append)
    leftover()  # the first run's timer fires during the second run: it polls only its finished run
    assert [f["name"] for f in finished] == ["first"] and slot.last_outcome["name"] == "first"
    while timers:  # the GUI's timer chain runs the second run to its end
        timers.pop(0)()
        time.sleep(0.02)
    assert second.finished and [f["name"] for f in finished] == ["first", "second"]
    assert slot.last_outcome == {"name": "second", "lines": ["second"], "code": 0}
    assert not slot.running


def test_a_damaged_output_folder_is_a_failed_manifest_item_naming_the_file(tmp_path):
    """An image whose findings.json or labelmap.json cannot be read is listed as failed, with
    the file named, instead of breaking the whole manifest."""
    from MammoPatchLib.prediction.rows import Row, Status
    from MammoPatchLib.result_manifest import image_result
    from MammoPatchLib.results.files import FINDINGS_FILE, LABELMAP_LEGEND_FILE

    folder = tmp_path / "mdb001"
    folder.mkdir()
    row = Row(image="mdb001.png", status=Status.OK, output=str(folder))
    item = image_result(row)
    assert item.status == contract.STATUS_FAILED and FINDINGS_FILE in item.error
    (folder / FINDINGS_FILE).write_text("{not json", encoding="utf-8")
    item = image_result(row)
    assert item.status == contract.STATUS_FAILED and FINDINGS_FILE in item.error
    (folder / FINDINGS_FILE).write_text(json.dumps({"classes": ["Mass"], "findings": []}), encoding="utf-8")
    (folder / LABELMAP_LEGEND_FILE).write_text("[1,", encoding="utf-8")
    item = image_result(row)
    assert item.status == contract.STATUS_FAILED and LABELMAP_LEGEND_FILE in item.error
    (folder / LABELMAP_LEGEND_FILE).write_text(json.dumps({"0": "No Finding", "1": "Mass"}), encoding="utf-8")
    item = image_result(row)
    assert item.status == contract.STATUS_OK and item.labelmap_classes == ["No Finding", "Mass"]
