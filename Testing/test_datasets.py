"""Data set readers: VinDr layout (generated), mini-MIAS (real), folders, patient splits."""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

import pytest

from MammoPatchLib.datasets import collect_images, read_folder, read_mias, read_vindr, split_by_patient
from MammoPatchLib.errors import AnnotationError
from MammoPatchLib.io import read_mammogram
from MammoPatchLib.vocabulary import FINDING_CLASSES


def test_vindr_reader_on_generated_layout(vindr_root):
    records = read_vindr(vindr_root)
    assert len(records) == 16  # 4 studies x 4 views
    assert {r.split for r in records} == {"training", "test"}
    for record in records:
        assert record.path.parent.parent.name == "images" and record.path.suffix == ".dicom"
        assert record.patient_id == record.path.parent.name
        assert all(f.category in FINDING_CLASSES for f in record.findings)
    with open(vindr_root / "finding_annotations.csv") as handle:
        boxed = [row for row in csv.DictReader(handle) if row["xmin"]]
    assert sum(len(r.findings) for r in records) == len(boxed)
    # Boxes are the generator's, in pixels of the stored image.
    one = next(r for r in records if r.findings)
    image = read_mammogram(one.path, min_side=0)
    assert image.shape == one.size
    x0, y0, x1, y1 = one.findings[0].box
    assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]
    # One woman's images never straddle splits.
    by_patient = {}
    for record in records:
        by_patient.setdefault(record.patient_id, set()).add(record.split)
    assert all(len(s) == 1 for s in by_patient.values())


def _rewrite(root: Path, tmp_path: Path, edit) -> Path:
    out = tmp_path / "copy"
    out.mkdir()
    rows = list(csv.DictReader(open(root / "finding_annotations.csv")))
    columns, rows = edit(list(rows[0].keys()), rows)
    with open(out / "finding_annotations.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return out


def test_vindr_missing_columns(vindr_root, tmp_path):
    bad = _rewrite(vindr_root, tmp_path, lambda cols, rows: ([c for c in cols if c != "xmax"], rows))
    with pytest.raises(AnnotationError, match=r"missing column\(s\) \['xmax'\]") as info:
        read_vindr(bad, require_files=False)
    assert "finding_annotations.csv" in str(info.value)


def test_vindr_boxes_overhanging_the_border_are_clipped_and_impossible_ones_dropped(vindr_root, tmp_path, caplog):
    """Real VinDr-Mammo boxes overhang the border by tens of pixels: they are clipped with one
    summary warning; a box that cannot be one drops that finding only; the counts say so."""
    import logging

    def edit(cols, rows):
        boxed = [r for r in rows if r["xmin"]]
        boxed[0]["xmax"] = str(float(boxed[0]["width"]) + 40)  # overhangs the right border
        boxed[1]["xmin"], boxed[1]["xmax"] = boxed[1]["xmax"], boxed[1]["xmin"]  # inverted
        boxed[2]["ymin"] = "n/a"  # not a number
        return cols, rows

    root = _rewrite(vindr_root, tmp_path, edit)
    counts = {}
    with caplog.at_level(logging.WARNING):
        records = read_vindr(root, require_files=False, counts=counts)
    original = read_vindr(vindr_root, require_files=False)
    assert counts["clipped"] == 1 and counts["dropped"] == 2
    assert counts["findings"] == sum(len(r.findings) for r in original) - 2 == sum(len(r.findings) for r in records)
    assert "1 box(es) overhanging the image clipped" in caplog.text and "2 finding(s) without a usable box" in caplog.text
    widths = {r.image_id: r.size[1] for r in records}
    assert all(f.box[2] <= widths[r.image_id] for r in records for f in r.findings)


def test_vindr_bad_category_string(vindr_root, tmp_path):
    def edit(cols, rows):
        rows[0]["finding_categories"] = "[Mass"
        return cols, rows

    with pytest.raises(AnnotationError, match="list string"):
        read_vindr(_rewrite(vindr_root, tmp_path, edit), require_files=False)


def test_vindr_missing_files_are_skipped(vindr_root, tmp_path):
    copy = _rewrite(vindr_root, tmp_path, lambda cols, rows: (cols, rows))
    assert read_vindr(copy) == []
    assert len(read_vindr(copy, require_files=False)) == 16


def test_mias_reader(mias_root):
    records = read_mias(mias_root)
    assert len(records) == 226
    counts = Counter(f.category for r in records for f in r.findings)
    # 17 CIRC + 12 SPIC + 10 MISC rows, one of which (mdb059) has no coordinates.
    assert counts["Mass"] == 17 + 12 + 10 - 1 and counts["Architectural Distortion"] == 11
    assert next(r for r in records if r.image_id == "mdb059").image_labels == ["Mass"]
    assert counts["Asymmetry"] == 8
    calc_boxed = counts["Suspicious Calcification"]
    calc_image_level = sum("Suspicious Calcification" in r.image_labels for r in records)
    assert calc_boxed > 0 and calc_image_level > 0
    assert sum(r.is_normal for r in records) == 155  # NORM rows
    first = records[0]
    # mdb001: CIRC at x=535, y_bottom_left=425 (row 599), radius 197.
    assert first.findings[0].box == (338.0, 402.0, 732.0, 796.0)
    assert first.patient_id == records[1].patient_id != records[2].patient_id


def test_mias_missing_column(tmp_path):
    (tmp_path / "annotations.csv").write_text("refnum,image,class\nmdb001,mdb001.png,NORM\n")
    with pytest.raises(AnnotationError, match="missing column"):
        read_mias(tmp_path)


def test_split_by_patient_never_leaks(mias_root):
    records = split_by_patient(read_mias(mias_root), validation_fraction=0.2, seed=3)
    splits = {}
    for record in records:
        splits.setdefault(record.patient_id, set()).add(record.split)
    assert all(len(s) == 1 for s in splits.values())
    val = [r for r in records if r.split == "validation"]
    assert 0.15 < len(val) / len(records) < 0.25
    assert any(not r.is_normal for r in val), "stratified: abnormal women in validation too"


def test_folder_reader(tmp_path, synthetic_dicom):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    noext = tmp_path / "sub" / "IM0001"
    noext.write_bytes(synthetic_dicom.read_bytes())
    found = collect_images(tmp_path)
    assert set(p.name for p in found) == {"sample.dcm", "b.png", "IM0001"}
    assert collect_images(str(tmp_path / "*.dcm")) == [synthetic_dicom]
    assert [r.image_id for r in read_folder([synthetic_dicom])] == ["sample"]


def test_annotation_rows_without_images_are_skipped_with_one_summary_warning(tmp_path, caplog):
    """A table naming more images than the folder holds (the full mini-MIAS table beside a few
    images) says how many rows and images it skips, and names a few, instead of nothing."""
    rows = ["refnum,image,class,x,y_bottom_left,radius"]
    for number in range(1, 31):
        rows.append(f"mdb{number:03d},mdb{number:03d}.png,NORM,,,")
    rows.append("mdb030,mdb030.png,CIRC,500,500,40")  # a second row of an image without a file
    (tmp_path / "annotations.csv").write_text("\n".join(rows) + "\n")
    for number in range(1, 5):
        (tmp_path / f"mdb{number:03d}.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="MammoPatchLib"):
        records = read_mias(tmp_path)
    assert [r.image_id for r in records] == ["mdb001", "mdb002", "mdb003", "mdb004"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1, warned
    assert "27 of 31 row(s), naming 26 of 30 annotated image(s), skipped: no such file in" in warned[0]
    assert "(mdb005.png, mdb006.png, mdb007.png, mdb008.png, mdb009.png, ...)" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="MammoPatchLib"):
        assert len(read_mias(tmp_path, require_files=False)) == 30
    assert not caplog.records, "nothing skipped, nothing said"


def test_a_partial_vindr_download_is_summarised_in_one_warning(vindr_root, tmp_path, caplog):
    import shutil

    copy = tmp_path / "vindr"
    shutil.copytree(vindr_root, copy)
    gone = sorted((copy / "images").rglob("*.dicom"))[:3]
    for path in gone:
        path.unlink()
    with caplog.at_level(logging.WARNING, logger="MammoPatchLib"):
        assert len(read_vindr(copy)) == 13
    warned = [r.getMessage() for r in caplog.records if "skipped: no such file" in r.getMessage()]
    assert len(warned) == 1 and "3 of 16 annotated image(s)" in warned[0] and gone[0].name in warned[0], warned


def test_a_folder_search_never_opens_files_inside_output_folders(tmp_path, monkeypatch):
    """An earlier batch's output folder (its marker file), a hidden folder and an excluded
    folder are pruned from the walk: their files are not even opened to sniff for DICOM."""
    from MammoPatchLib.io import discovery

    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.dcm").write_bytes(b"")
    for name in ("done", ".partial", "excluded"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "no-extension").write_bytes(b"x")
    (tmp_path / "done" / discovery.MARKER_NAME).write_text("")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "no-extension").write_bytes(b"x")
    sniffed = []
    monkeypatch.setattr(discovery, "is_dicom_file", lambda path: sniffed.append(path.parent.name) or False)
    found = collect_images(tmp_path, exclude=[tmp_path / "excluded"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.png", "sub/b.dcm"]
    assert sniffed == ["plain"]
    assert collect_images(tmp_path, recursive=False) == [tmp_path / "a.png"]
