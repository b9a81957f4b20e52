"""Archive-scale batches: manifests, deterministic sharding over torchrun ranks, prefetching
workers, and a real two-process gloo run (kill and resume included)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import child_pids, probe_model, tiny_model_file
from MammoPatchLib.errors import MammoPatchError
from MammoPatchLib.prediction.jobs import plan_jobs, read_manifest, shard, study_groups
from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model") / "tiny.pt", spacing_mm=0.4)


def _folder(root: Path, count: int, corrupt: bool = True, shape=(400, 320)) -> Path:
    for k in range(count):
        write_dicom(synthesize_mammogram(shape, 0.2, "L", "CC", ["round mass"], seed=k), root / f"img{k}.dcm")
    if corrupt:
        (root / "corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 50)
    return root


def test_manifest_paths_are_relative_to_it_and_carry_spacing(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    sub = tmp_path / "sub"
    sub.mkdir()
    manifest = sub / "batch.csv"
    manifest.write_text(f"path,spacing_mm\n../a.png,0.1\n{tmp_path / 'b.png'},\n../a.png,0.1\nc.dcm,0.07\n")
    entries = read_manifest(manifest)
    assert entries[0] == (sub / "../a.png", 0.1)
    assert entries[1] == (tmp_path / "b.png", None)
    assert entries[3] == (sub / "c.dcm", 0.07)
    jobs = plan_jobs([manifest], spacing_mm=0.2)
    # the repeated row is one job; a row without spacing takes the command's --spacing
    assert [j.index for j in jobs] == [0, 1, 2]
    assert [j.spacing_mm for j in jobs] == [0.1, 0.2, 0.07]
    assert [j.name for j in jobs] == ["a", "b", "c"]


@pytest.mark.parametrize("content, expected", [
    ("file\nx.dcm\n", "missing column(s) ['path']"),
    ("path,spacing_mm\nx.dcm,abc\n", "line 2"),
    ("path,spacing_mm\nx.dcm,0.1\ny.dcm,-1\n", "line 3"),
    ("path\n\n\"\"\n", "empty path"),
    ("path\nx.dcm,0.1\n", "more fields"),
    ("path,laterality\nx.png,left\n", "line 2: laterality must be L or R"),
])
def test_a_bad_manifest_is_refused_naming_file_and_line(tmp_path, content, expected):
    manifest = tmp_path / "m.csv"
    manifest.write_text(content)
    with pytest.raises(MammoPatchError) as info:
        plan_jobs([manifest])
    assert expected in str(info.value) and "m.csv" in str(info.value)


def test_job_order_and_sharding_are_deterministic_and_complete(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ["b.png", "a.png", "d.dcm", "c.png", "e.dcm"]:
        (folder / name).write_bytes(b"")
    first, second = plan_jobs([folder]), plan_jobs([str(folder)])
    assert first == second and [j.index for j in first] == list(range(5))
    for world in (1, 2, 3, 8):
        shares = [shard(first, r, world) for r in range(world)]
        indices = sorted(j.index for share in shares for j in share)
        assert indices == list(range(5)), "every job on exactly one rank"
        assert max(map(len, shares)) - min(map(len, shares)) <= 1, "even shares"


def test_prefetching_workers_give_the_outputs_of_reading_in_turn(model_path, tmp_path):
    """The threads that read and preprocess the next images change nothing in what is written,
    and a corrupt file in the middle is still reported at its place."""
    from MammoPatchLib.api import predict_files
    from MammoPatchLib.io import read_mammogram

    folder = _folder(tmp_path / "in", 3)
    serial = predict_files([folder], tmp_path / "w0", model=model_path, device="cpu", progress=False, workers=0)
    threaded = predict_files([folder], tmp_path / "w2", model=model_path, device="cpu", progress=False, workers=2)
    assert [r.status for r in serial] == [r.status for r in threaded] == ["failed", "ok", "ok", "ok"]
    assert "corrupt.dcm" in str(threaded[0].error)
    for k in range(3):
        a = read_mammogram(tmp_path / "w0" / f"img{k}" / "heatmap_mass.nrrd", min_side=0).pixels
        b = read_mammogram(tmp_path / "w2" / f"img{k}" / "heatmap_mass.nrrd", min_side=0).pixels
        assert (a == b).all()
        assert (json.loads((tmp_path / "w0" / f"img{k}" / "findings.json").read_text())["findings"]
                == json.loads((tmp_path / "w2" / f"img{k}" / "findings.json").read_text())["findings"])


def test_a_resumed_summary_keeps_the_findings_of_images_done_earlier(model_path, tmp_path):
    from MammoPatchLib.api import predict_files

    folder = _folder(tmp_path / "in", 2, corrupt=False)
    first = predict_files([folder], tmp_path / "o", model=model_path, device="cpu", progress=False)
    again = predict_files([folder], tmp_path / "o", model=model_path, device="cpu", progress=False, resume=True)
    assert [r.status for r in again] == ["done earlier"] * 2
    for a, b in zip(first, again):
        assert (a.findings, a.top_class, a.top_score) == (b.findings, b.top_class, b.top_score)


def _torchrun(inputs, out: Path, model: Path, *extra: str):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "MammoPatchLib.cli", "predict", *map(str, inputs), "--model", str(model), "--mode", "exact",
            "--device", "cpu", "--no-progress", "--out", str(out), *extra]


def _rank_of(pid: int) -> int:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(int(e.split(b"=")[1]) for e in environ if e.startswith(b"RANK="))


def _rows(summary: Path):
    with open(summary, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_two_gloo_ranks_share_a_batch_and_resume_after_a_kill(model_path, tmp_path):
    """torchrun with 2 CPU processes (gloo), killed mid-batch and resumed: every good image is
    done exactly once across the ranks, the corrupt one is reported, summary.csv lists all, and
    the outputs are those of one uninterrupted process (the same code in this process, one
    thread as the ranks have; two launches are the test's cost, so the reference is not a third)."""
    import torch

    from MammoPatchLib.api import predict_files
    from MammoPatchLib.io import read_mammogram

    folder = _folder(tmp_path / "in", 6, shape=(560, 448))
    names = [f"img{k}" for k in range(6)]
    env = dict(os.environ, OMP_NUM_THREADS="1")

    clean = tmp_path / "clean"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = predict_files([folder], clean, model=model_path, mode="exact", device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert sorted(r.status for r in reference) == ["failed"] + ["ok"] * 6
    summary = _rows(clean / "summary.csv")

    # SIGKILL rank 1 mid-batch: torchrun stops rank 0 too and the launch fails
    killed = tmp_path / "killed"
    process = subprocess.Popen(_torchrun([folder], killed, model_path), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        finished = [p for p in killed.glob("img*") if p.is_dir()] if killed.is_dir() else []
        if len(finished) >= 2:
            break
        time.sleep(0.05)
    victim = next(pid for pid in child_pids(process.pid) if _rank_of(pid) == 1)
    os.kill(victim, signal.SIGKILL)
    assert process.wait(timeout=120) != 0
    done_before = sorted(p.name for p in killed.glob("img*") if p.is_dir())
    assert 2 <= len(done_before) < 6, done_before
    assert not (killed / "summary.csv").exists()

    resumed = subprocess.run(_torchrun([folder], killed, model_path, "--resume"), capture_output=True, text=True,
                             env=env, timeout=300)
    assert resumed.returncode == 1, resumed.stderr[-3000:]  # 1 = some image failed (the corrupt one)
    per_rank = [_rows(killed / f"results-rank{r}.csv") for r in (0, 1)]
    good = [row["image"] for rows in per_rank for row in rows if row["status"] != "failed"]
    assert sorted(Path(p).stem for p in good) == names, "each good image exactly once"
    assert all(rows for rows in per_rank), "both ranks worked"
    rows = _rows(killed / "summary.csv")
    assert len(rows) == 7 and {r["rank"] for r in rows} == {"0", "1"}
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and "corrupt.dcm" in failed[0]["error"]
    assert [r["image"] for r in rows] == [r["image"] for r in summary]
    assert sorted(r["status"] for r in rows if r["status"] != "failed") == sorted(
        ["done earlier"] * len(done_before) + ["ok"] * (6 - len(done_before)))
    for a, b in zip(rows, summary):
        assert (a["findings"], a["top_class"], a["top_score"]) == (b["findings"], b["top_class"], b["top_score"])
    assert not [p for p in killed.iterdir() if p.name.startswith((".partial-", ".replaced-"))]
    for name in names:
        a = read_mammogram(killed / name / "heatmap_mass.nrrd", min_side=0).pixels
        b = read_mammogram(clean / name / "heatmap_mass.nrrd", min_side=0).pixels
        assert (a == b).all()


@pytest.mark.parametrize("failures, status", [(1, "ok"), (2, "failed")])
def test_an_unexpected_error_is_retried_once(model_path, tmp_path, failures, status):
    """A transient failure (not a bad input) gets one more try, reading the file again."""
    from MammoPatchLib.api import predict_files
    from MammoPatchLib.inference import Predictor
    from MammoPatchLib.model_file import load_model

    folder = _folder(tmp_path / "in", 1, corrupt=False)
    predictor = Predictor(load_model(model_path), device="cpu", progress=False)
    calls = []
    real = predictor.predict_image

    def flaky(image, **kwargs):
        calls.append(image.path)
        if len(calls) <= failures:
            raise RuntimeError("device lost")
        return real(image, **kwargs)

    predictor.predict_image = flaky
    (row,) = predict_files([folder], tmp_path / "o", predictor=predictor, progress=False)
    assert row.status == status and len(calls) == 2
    assert (tmp_path / "o" / "img0").is_dir() == (status == "ok")
    if status == "failed":
        assert "unexpected RuntimeError: device lost" in row.error and "img0.dcm" in row.error


def test_a_vindr_tree_is_a_batch_of_its_images(vindr_root):
    """The VinDr-Mammo layout (images/<study>/<image>.dicom beside its CSVs) is a valid input:
    one job per image, named by image id, in a stable order."""
    jobs = plan_jobs([vindr_root])
    dicoms = sorted(vindr_root.rglob("*.dicom"))
    assert len(jobs) == len(dicoms) > 0
    assert sorted(j.path for j in jobs) == dicoms
    assert sorted(j.name for j in jobs) == sorted(p.stem for p in dicoms)


def test_a_cancelled_batch_releases_its_output_folder(model_path, tmp_path):
    """Cancel (Slicer's button, the Python API) ends the run without keeping the folder's lock,
    so the same process can resume into it."""
    from MammoPatchLib.api import predict_files
    from MammoPatchLib.errors import Cancelled

    folder = _folder(tmp_path / "in", 2, corrupt=False)

    def cancel(fraction, text):
        raise Cancelled("cancelled by the user")

    # the traceback stays alive, as in Slicer's Python console (sys.last_traceback)
    with pytest.raises(Cancelled) as cancelled:
        predict_files([folder], tmp_path / "o", model=model_path, device="cpu", progress=False, on_progress=cancel)
    rows = predict_files([folder], tmp_path / "o", model=model_path, device="cpu", progress=False, resume=True)
    assert [r.status for r in rows] == ["ok", "ok"]
    assert cancelled.traceback


def test_other_breast_pairs_are_the_same_woman_and_view_on_the_other_side():
    from MammoPatchLib.other_breast import breast_key, other_breast_scores, scores_against_other_breast

    keys = [breast_key("s1", "CC", "L"), breast_key("s1", "CC", "R"), breast_key("s1", "cc", "r"),
            breast_key("s1", "MLO", "L"), breast_key("s2", "CC", "L"), breast_key("", "CC", "L"),
            breast_key("s3", "CC", "")]
    scores = [0.8, 0.4, 0.6, 0.3, 0.5, 0.9, 0.7]
    assert keys[5] is None and keys[6] is None, "no woman or no side: never paired"
    assert other_breast_scores([keys[0], keys[2], *keys[3:]], [scores[0], *scores[2:]]) == [0.6, 0.8] + [None] * 4
    relative = scores_against_other_breast(keys[:2], scores[:2], weight=0.5)
    assert relative == pytest.approx([0.6, 0.0])
    # Two right CCs of s1: which one is the left's other breast is a guess, so all three are read alone.
    assert other_breast_scores(keys, scores) == [None] * 7


def test_a_batch_lists_each_image_score_against_the_other_breast(model_path, tmp_path):
    """image_scores.csv: the two sides of one study's view are read against each other, an
    image of another study is not; the scores are those findings.json records, also after a
    resumed run; a failed input has no row."""
    from MammoPatchLib.api import predict_files
    from MammoPatchLib.other_breast import OTHER_BREAST_WEIGHT
    from MammoPatchLib.prediction.image_scores import IMAGE_SCORES_FILE

    folder = tmp_path / "in"
    for name, side, study, seed in (("a-left", "L", "1.2.3.1", 0), ("a-right", "R", "1.2.3.1", 1),
                                    ("b-left", "L", "1.2.3.2", 2)):
        write_dicom(synthesize_mammogram((400, 320), 0.2, side, "CC", ["round mass"] if seed == 1 else [], seed=seed),
                    folder / f"{name}.dcm", study_uid=study)
    (folder / "corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 50)
    out = tmp_path / "out"
    predict_files([folder], out, model=model_path, device="cpu", progress=False)

    def table():
        return {Path(r["image"]).stem: r for r in _rows(out / IMAGE_SCORES_FILE)}

    rows = table()
    assert set(rows) == {"a-left", "a-right", "b-left"}
    score = {k: json.loads((out / k / "findings.json").read_text())["image_score"] for k in rows}
    assert all(float(rows[k]["image_score"]) == pytest.approx(score[k], abs=1e-4) for k in rows)
    assert float(rows["a-left"]["image_score_vs_other_breast"]) == pytest.approx(
        score["a-left"] - OTHER_BREAST_WEIGHT * score["a-right"], abs=1e-4)
    assert float(rows["a-right"]["other_breast_score"]) == pytest.approx(score["a-left"], abs=1e-4)
    assert rows["b-left"]["image_score_vs_other_breast"] == "" and rows["b-left"]["study"] == "1.2.3.2"
    predict_files([folder], out, model=model_path, device="cpu", progress=False, resume=True)
    assert table() == rows


def test_ranks_take_whole_studies_so_both_breasts_of_a_view_meet(tmp_path, monkeypatch):
    """Under torchrun each rank takes whole studies, dealt in turn in the order of their first
    job: DICOM files by the StudyInstanceUID of their header, PNG films by their manifest row's
    study; a film of no known study, and one whose header cannot be read, is a study of its own
    and still goes to a rank. Every job once, in job order, the studies shared evenly."""
    for name, side, study in (("s1-left", "L", "1.2.1"), ("s1-right", "R", "1.2.1"), ("s3-left", "L", "1.2.3"),
                              ("s3-right", "R", "1.2.3")):
        write_dicom(synthesize_mammogram((64, 64), 0.2, side, "CC", [], seed=0), tmp_path / f"{name}.dcm",
                    study_uid=study)
    for name in ("s2-left.png", "s2-right.png", "lonely.png"):
        (tmp_path / name).write_bytes(b"")  # only their rows are read while planning
    (tmp_path / "corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 50)
    manifest = tmp_path / "batch.csv"
    manifest.write_text("path,study,laterality\ns1-left.dcm,,\ns1-right.dcm,,\ns2-left.png,woman-2,L\n"
                        "s2-right.png,woman-2,R\ns3-left.dcm,,\nlonely.png,,\ncorrupt.dcm,,\ns3-right.dcm,,\n")
    jobs = plan_jobs([manifest])
    assert [j.index for j in jobs] == list(range(8))
    shares = [shard(jobs, r, 2) for r in range(2)]
    assert [[j.name for j in share] for share in shares] == [
        ["s1-left", "s1-right", "s3-left", "corrupt", "s3-right"],  # studies 1, 3 and the corrupt file
        ["s2-left", "s2-right", "lonely"]]  # study 2 and the film of no study
    assert sorted(j.index for share in shares for j in share) == list(range(8)), "every job on exactly one rank"
    assert all([j.index for j in share] == sorted(j.index for j in share) for share in shares), "job order"
    group = dict(zip((j.index for j in jobs), study_groups(jobs)))
    assert [len({group[j.index] for j in share}) for share in shares] == [3, 2], "studies dealt evenly"
    assert [shard(plan_jobs([manifest]), r, 2) for r in range(2)] == shares, "every rank deals the same"
    assert shard(jobs, 0, 1) == jobs
    # a torchrun batch reads each header once, for the deal and the crowded-view check alike
    import MammoPatchLib.io.readers as readers
    from MammoPatchLib.prediction.jobs import job_breasts
    from MammoPatchLib.prediction.runner import crowded_views_of

    reads = []
    real = readers.read_breast
    monkeypatch.setattr(readers, "read_breast", lambda path: reads.append(path) or real(path))
    breasts = job_breasts(jobs)
    assert [shard(jobs, r, 2, breasts) for r in range(2)] == shares
    assert crowded_views_of(shares[0], breasts) == crowded_views_of(shares[0]) == frozenset()
    assert len(reads) == len(jobs) + len(shares[0])  # the one read of all, and the check without ``breasts``


def _paired_probe(model=None, point=None):
    """A probe model (:func:`helpers.probe_model`, or ``model``) with an operating point for
    pairs (by default a Mass threshold of 0.45 + 0.5 x the other breast's highest Mass value)."""
    from dataclasses import replace

    from MammoPatchLib.inference import Predictor
    from MammoPatchLib.other_breast import OtherBreastPoint

    model = model or probe_model()
    point = point or OtherBreastPoint(0.5, [0.45] + [0.5] * 9, 0.0)
    model.info = replace(model.info, inference=replace(model.info.inference, other_breast=point))
    return Predictor(model, device="cpu", progress=False)


@pytest.mark.parametrize("first", ["left", "right"])
def test_a_resumed_batch_reads_an_image_against_the_other_breast_done_earlier(tmp_path, first):
    """A batch stopped after one breast of a view (here: run on that file alone) and resumed on
    both reads the other against what the first one's findings.json records: the findings and
    the record of an uninterrupted paired run, whichever of the two comes first in the batch.
    The image done earlier stays as written; an older findings.json without the per-class
    maxima leaves the pending image read alone."""
    from MammoPatchLib.api import predict_files
    from MammoPatchLib.io import read_mammogram
    from MammoPatchLib.results.files import findings_document

    files = {side: write_dicom(synthesize_mammogram((400, 320), 0.2, side[0].upper(), "CC", ["round mass"],
                                                    seed=seed), tmp_path / "in" / f"{side}.dcm", study_uid="1.2.3")
             for side, seed in (("left", 7), ("right", 2))}
    second = "right" if first == "left" else "left"
    both = [files["left"], files["right"]]
    predictor = _paired_probe()
    predict_files(both, tmp_path / "paired", predictor=predictor, progress=False)
    paired = findings_document(tmp_path / "paired" / second)
    alone = predictor.predict_image(read_mammogram(files[second])).findings
    assert paired["other_breast"]["image"] == files[first]
    assert len(paired["findings"]) < len(alone), "the pair reading drops a finding the image alone has"

    out, old = tmp_path / "out", tmp_path / "old"
    for folder in (out, old):
        predict_files([files[first]], folder, predictor=predictor, progress=False)
    written = (out / first / "findings.json").read_bytes()
    document = json.loads(written)
    assert document["other_breast"] is None and set(document["class_maxima"]) == set(document["classes"])
    rows = predict_files(both, out, predictor=predictor, progress=False, resume=True)
    assert {Path(r.image).stem: r.status for r in rows} == {first: "done earlier", second: "ok"}
    resumed = findings_document(out / second)
    assert resumed["other_breast"] == paired["other_breast"]
    assert resumed["findings"] == paired["findings"] and resumed["thresholds"] == paired["thresholds"]
    assert (out / first / "findings.json").read_bytes() == written, "the image done earlier is not rewritten"

    del document["class_maxima"]  # as written before findings.json recorded them
    (old / first / "findings.json").write_text(json.dumps(document))
    predict_files(both, old, predictor=predictor, progress=False, resume=True)
    assert findings_document(old / second)["other_breast"] is None
    assert len(findings_document(old / second)["findings"]) == len(alone)


def test_grad_cam_maps_are_made_once_for_the_findings_a_pair_reading_writes(tmp_path, monkeypatch):
    """With --activation-maps, a batch that reads two breasts against each other makes each
    image's Grad-CAM maps once, after the pair reading, for the findings it writes (not for the
    single-image findings first picked): one call per image, and the written maps name the
    written top findings."""
    from MammoPatchLib.api import predict_files
    from MammoPatchLib.model_file import load_model
    from MammoPatchLib.other_breast import OtherBreastPoint
    from MammoPatchLib.prediction import stages
    from MammoPatchLib.results.files import OutputOptions, class_slug, findings_document

    files = [write_dicom(synthesize_mammogram((400, 320), 0.2, side, "CC", ["round mass"], seed=seed),
                         tmp_path / "in" / f"{name}.dcm", study_uid="1.2.3")
             for name, side, seed in (("left", "L", 7), ("right", "R", 2))]
    made = []
    real = stages.activation_maps

    def counted(predictor, image, result, count=3):
        made.append((Path(image.path).stem, json.loads(json.dumps([f.to_dict() for f in result.findings]))))
        return real(predictor, image, result, count)

    monkeypatch.setattr(stages, "activation_maps", counted)
    network = load_model(tiny_model_file(tmp_path / "tiny.pt"))  # Grad-CAM needs the real network
    predictor = _paired_probe(network, OtherBreastPoint(0.1, [0.0] * 10, 0.0))  # every peak a finding
    rows = predict_files(files, tmp_path / "out", predictor=predictor, outputs=OutputOptions(activation_maps=1),
                         progress=False)
    assert [r.status for r in rows] == ["ok", "ok"], [r.error for r in rows]
    written = {name: findings_document(tmp_path / "out" / name) for name in ("left", "right")}
    assert all(doc["other_breast"] is not None for doc in written.values()), "both read as a pair"
    with_findings = {name for name, doc in written.items() if doc["findings"]}
    assert with_findings, "at thresholds of 0 every image has findings"
    assert sorted(name for name, _ in made) == sorted(with_findings), "one set of maps per image"
    for name, findings in made:
        assert findings == written[name]["findings"], "maps made for the findings written"
        top = written[name]["findings"][0]["category"]
        assert sorted(p.name for p in (tmp_path / "out" / name).glob("activation_*.nrrd")) == [
            f"activation_1_{class_slug(top)}.nrrd"]
