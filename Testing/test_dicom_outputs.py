"""DICOM outputs (highdicom): the findings SEG, the heatmap SEG, the overlay Secondary Capture
and the SR are read back and checked against the prediction: UIDs, references, geometry,
values and codes. Output control: which heatmaps, at what spacing and type."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from helpers import probe_model

hd = pytest.importorskip("highdicom")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from MammoPatchLib.api import predict_files
    from MammoPatchLib.inference import Predictor
    from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom

    folder = tmp_path_factory.mktemp("dicom")
    source = write_dicom(synthesize_mammogram((640, 512), 0.2, "L", "CC", ["round mass"], seed=2), folder / "m.dcm",
                         window=True)
    predictor = Predictor(probe_model(spacing_mm=0.2), mode="fast", device="cpu", classes=["Mass", "Asymmetry"])
    rows = predict_files([source], folder / "out", predictor=predictor, dicom=True, progress=False)
    assert rows[0].status == "ok", rows
    result = predictor.predict_image(__import__("MammoPatchLib.io", fromlist=["x"]).read_mammogram(source))
    return pydicom.dcmread(source), folder / "out" / "m", result


def _segments(seg):
    """{segment number: frame} of a single-source SEG, read with pydicom (highdicom's reader
    wants a slice thickness that a projection mammogram does not have)."""
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    shared = seg.SharedFunctionalGroupsSequence[0]
    numbers = [int((f if "SegmentIdentificationSequence" in f else shared).SegmentIdentificationSequence[0]
                   .ReferencedSegmentNumber) for f in seg.PerFrameFunctionalGroupsSequence]
    return dict(zip(numbers, frames))


def test_findings_segmentation_is_the_label_map(run):
    source, out, result = run
    seg = pydicom.dcmread(out / "findings_seg.dcm")
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.PatientID == source.PatientID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == \
        source.SOPInstanceUID
    assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
    assert seg.SegmentationType == "BINARY" and seg.SeriesNumber == 9001
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "Mass" and segment.SegmentAlgorithmType == "AUTOMATIC"
    code = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("4147007", "SCT")
    mask = _segments(seg)[1]
    np.testing.assert_array_equal(mask > 0, result.label_map == 1)
    assert mask.any()


def test_heatmap_segmentation_holds_the_probabilities(run):
    source, out, result = run
    seg = pydicom.dcmread(out / "heatmaps_seg.dcm")
    assert seg.SegmentationType == "FRACTIONAL" and seg.SegmentationFractionalType == "PROBABILITY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Mass", "Asymmetry"], "the reported classes, in order"
    assert seg.MaximumFractionalValue == 255
    stored = _segments(seg)[1]
    np.testing.assert_allclose(stored.astype(float), np.round(result.heatmaps[0] * 255), atol=1)


def test_overlay_secondary_capture_belongs_to_the_study(run):
    source, out, _ = run
    sc = pydicom.dcmread(out / "overlay_sc.dcm")
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.PhotometricInterpretation == "RGB"
    assert sc.StudyInstanceUID == source.StudyInstanceUID and (sc.Rows, sc.Columns) == (source.Rows, source.Columns)
    assert sc.pixel_array.shape == (source.Rows, source.Columns, 3)


def test_structured_report_lists_each_finding_with_its_box_score_and_algorithm(run):
    from MammoPatchLib import __version__

    source, out, result = run
    report = hd.sr.srread(out / "findings_sr.dcm")
    assert report.StudyInstanceUID == source.StudyInstanceUID
    groups = report.content.get_planar_roi_measurement_groups()
    assert len(groups) == len(result.findings) > 0
    for group, finding in zip(groups, result.findings):
        assert group.finding_type.meaning == "Mass" and group.finding_type.value == "4147007"
        x0, y0, x1, y1 = finding.box_px
        np.testing.assert_allclose(group.roi.value, [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])
        assert group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        (measurement,) = group.get_measurements()
        assert measurement.name.meaning == "Probability" and measurement.value == pytest.approx(finding.score, abs=1e-5)
        texts = {item.ConceptNameCodeSequence[0].CodeMeaning: getattr(item, "TextValue", None)
                 for item in measurement[0].ContentSequence}
        assert texts["Algorithm Name"] == "MammoPatch" and texts["Algorithm Version"] == __version__


def _image_groups(report):
    """{tracking identifier: group} of the SR's image-level measurement groups (TID 1501)."""
    return {group.tracking_identifier: group for group in report.content.get_image_measurement_groups()}


def test_structured_report_states_the_summary_and_each_class_maximum(run):
    source, out, result = run
    groups = _image_groups(hd.sr.srread(out / "findings_sr.dcm"))
    (summary,) = groups["image summary"].get_qualitative_evaluations()
    assert summary.name.value == "111017" and summary.value.meaning == "All algorithms succeeded; with findings"
    maxima = result.breast_scores().class_maxima
    assert set(groups) == {"image summary"} | {f"highest {name}" for name in maxima}
    for name, value in maxima.items():
        group = groups[f"highest {name}"]
        assert group.finding_type.meaning == _code_meaning(name)
        assert group.source_images[0].referenced_sop_instance_uid == source.SOPInstanceUID
        (measurement,) = group.get_measurements()
        assert measurement.derivation.meaning == "Maximum" and measurement.value == pytest.approx(value, abs=1e-5)


def _code_meaning(name):
    from MammoPatchLib.vocabulary import FINDING_CODES

    return FINDING_CODES[name][2]


@pytest.fixture(scope="module")
def normal(tmp_path_factory):
    """A normal image (no finding drawn) and a model that reports nothing on it, through the
    command line's path with --dicom-out."""
    from MammoPatchLib.api import predict_files
    from MammoPatchLib.inference import Predictor
    from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom

    folder = tmp_path_factory.mktemp("normal")
    source = write_dicom(synthesize_mammogram((320, 256), 0.2, "R", "MLO", [], seed=5), folder / "n.dcm")
    predictor = Predictor(probe_model(spacing_mm=0.2, level=2.0), mode="fast", device="cpu",
                          classes=["Mass", "Asymmetry"])
    (row,) = predict_files([source], folder / "out", predictor=predictor, dicom=True, progress=False)
    return row, pydicom.dcmread(source), folder / "out" / "n"


def test_an_image_without_findings_gets_every_dicom_output(normal):
    row, source, out = normal
    assert row.status == "ok" and row.findings == 0, row
    report = hd.sr.srread(out / "findings_sr.dcm")
    assert report.content.get_planar_roi_measurement_groups() == []
    (summary,) = _image_groups(report)["image summary"].get_qualitative_evaluations()
    assert summary.value.meaning == "All algorithms succeeded; without findings"
    seg = pydicom.dcmread(out / "findings_seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Mass", "Asymmetry"], "the reported classes, empty"
    assert all(not frame.any() for frame in _segments(seg).values()) and len(_segments(seg)) == 2
    heat = pydicom.dcmread(out / "heatmaps_seg.dcm")
    assert heat.SegmentationType == "FRACTIONAL" and len(heat.SegmentSequence) == 2
    sc = pydicom.dcmread(out / "overlay_sc.dcm")
    assert sc.Laterality == "R" and sc.StudyInstanceUID == source.StudyInstanceUID
    assert list(source.PatientOrientation) == ["P", "FL"], "an MLO's orientation: two letters in a value"
    assert seg.PatientOrientation == heat.PatientOrientation == sc.PatientOrientation == source.PatientOrientation


def test_classes_without_a_score_get_no_segment_and_no_maximum(run, tmp_path, monkeypatch):
    """A class the model never learned carries no score (None): the SR states no maximum
    for it and the heatmap SEG holds no map of it."""
    from MammoPatchLib.other_breast import BreastScores
    from MammoPatchLib.results.dicom import write_dicom_outputs

    _, _, result = run
    scores = result.breast_scores()
    unscored = BreastScores(scores.image, {**scores.class_maxima, "Asymmetry": None}, scores.image_score)
    monkeypatch.setattr(result, "breast_scores", lambda: unscored)
    order = ["Asymmetry", "Mass"]
    written = write_dicom_outputs(result, tmp_path, order,
                                  heatmaps=result.heatmaps[[result.classes.index(name) for name in order]])
    heat = pydicom.dcmread(written["heatmaps"])
    assert [s.SegmentLabel for s in heat.SegmentSequence] == ["Mass"]
    np.testing.assert_allclose(_segments(heat)[1].astype(float), np.round(result.heatmaps[0] * 255), atol=1)
    groups = _image_groups(hd.sr.srread(written["report"]))
    assert "highest Asymmetry" not in groups and "highest Mass" in groups


def test_output_control_writes_fewer_smaller_heatmaps(run, tmp_path):
    from MammoPatchLib.io import read_mammogram
    from MammoPatchLib.results.files import OutputOptions, write_result

    _, _, result = run
    none = write_result(result, tmp_path / "none", options=OutputOptions(heatmaps="none"))
    assert none["heatmaps"] == [] and none["labelmap"] and (tmp_path / "none" / "overlay.png").exists()
    small = write_result(result, tmp_path / "small", options=OutputOptions(heatmaps="all", heatmap_spacing_mm=1.0,
                                                                           heatmap_dtype="uint8"))
    assert len(small["heatmaps"]) == 10
    heat = read_mammogram(tmp_path / "small" / "heatmap_mass.nrrd", min_side=0)
    assert heat.shape == (128, 103) and heat.geometry.spacing[:2] == pytest.approx((1.0, 1.0))
    assert heat.pixels.max() <= 255 and heat.pixels.max() > 1, "uint8: probability x 255"
    expected = result.heatmaps[0][2::5, 2::5]
    np.testing.assert_allclose(heat.pixels[:, :expected.shape[1]] / 255, expected, atol=0.03)
    # The coarse pixel (i, j) covers source pixels 5i..5i+4: its centre is where it says.
    assert heat.geometry.origin[0] == pytest.approx(result.image.geometry.origin[0] + 2 * 0.2)
    document = json.loads((tmp_path / "small" / "findings.json").read_text())
    assert document["heatmaps"]["every_nth_pixel"] == 5 and document["heatmaps"]["dtype"] == "uint8"


def test_heatmaps_of_some_classes_equal_the_same_classes_of_all(run):
    """Writers compute only the classes they write; the values must be those of the full set."""
    _, _, result = run
    for step in (1, 4):
        np.testing.assert_allclose(result.heatmaps_every(step, [3, 0]), result.heatmaps_every(step)[[3, 0]], atol=1e-6)
