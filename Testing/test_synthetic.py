"""The synthetic generator: reproducible, findings where it says, valid DICOM."""

from __future__ import annotations

import numpy as np
import pytest

from MammoPatchLib.io import read_mammogram
from MammoPatchLib.synthetic import FINDING_KINDS, synthesize_mammogram, write_dicom


def test_same_seed_same_image():
    a = synthesize_mammogram((400, 320), seed=9)
    b = synthesize_mammogram((400, 320), seed=9)
    c = synthesize_mammogram((400, 320), seed=10)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert not np.array_equal(a.pixels, c.pixels)


@pytest.mark.parametrize("laterality", ["L", "R"])
def test_findings_lie_in_the_breast_and_are_visible(laterality):
    mammo = synthesize_mammogram((768, 640), 0.2, laterality, "MLO", list(FINDING_KINDS), seed=4)
    assert [f.category for f in mammo.findings] == list(FINDING_KINDS.values())
    for finding in mammo.findings:
        x0, y0, x1, y1 = (int(round(v)) for v in finding.box)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        assert mammo.breast_mask[cy, cx], f"{finding.kind} centre outside the breast"
    mass = mammo.findings[0]
    x0, y0, x1, y1 = (int(v) for v in mass.box)
    inside = mammo.pixels[y0:y1, x0:x1].mean()
    ring = mammo.pixels[max(0, y0 - 40):y1 + 40, max(0, x0 - 40):x1 + 40]
    assert inside > np.median(ring), "a mass is denser than its surroundings"
    chest = mammo.pixels[:, :40].mean() if laterality == "L" else mammo.pixels[:, -40:].mean()
    far = mammo.pixels[:, -40:].mean() if laterality == "L" else mammo.pixels[:, :40].mean()
    assert chest > far, "the chest wall is on the side laterality says"


@pytest.mark.parametrize("photometric, view", [("MONOCHROME2", "MLO"), ("MONOCHROME1", "CC")])
def test_dicom_is_a_mammogram_for_presentation_as_vendors_write_it(tmp_path, photometric, view):
    """The attributes a vendor's For Presentation mammogram carries (dciodvfy's own check is
    Testing/test_dicom_validity.py); its window spans the stored range, so the reader, which
    applies it as on any vendor's file, reads the same values as without it."""
    import pydicom
    from pydicom.sr.codedict import codes

    mammo = synthesize_mammogram((300, 300), 0.1, "R", view, ["round mass"], bits_stored=14, seed=1)
    path = write_dicom(mammo, tmp_path / "x.dcm", photometric=photometric)
    ds = pydicom.dcmread(path)
    assert ds.Modality == "MG" and ds.BitsStored == 14 and ds.PhotometricInterpretation == photometric
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2" and ds.PresentationIntentType == "FOR PRESENTATION"
    assert list(ds.ImageType)[:2] == ["DERIVED", "PRIMARY"]
    (view_code,) = ds.ViewCodeSequence
    expected = codes.SCT.CranioCaudal if view == "CC" else codes.SCT.MedioLateralObliqueProjection
    assert (view_code.CodeValue, view_code.CodingSchemeDesignator) == (expected.value, "SCT")
    assert "ViewModifierCodeSequence" in view_code and ds.ViewPosition == view and ds.ImageLaterality == "R"
    assert ds.AnatomicRegionSequence[0].CodeValue == codes.SCT.Breast.value
    assert [float(v) for v in ds.ImagerPixelSpacing] == [float(v) for v in ds.PixelSpacing] == [0.1, 0.1]
    assert (ds.OrganExposed, ds.PositionerType, ds.DetectorType) == ("BREAST", "MAMMOGRAPHIC", "DIRECT")
    assert (ds.BurnedInAnnotation, ds.LossyImageCompression, ds.RescaleType) == ("NO", "00", "US")
    monochrome2 = photometric == "MONOCHROME2"
    assert ds.PixelIntensityRelationship == "LOG" and ds.PixelIntensityRelationshipSign == (-1 if monochrome2 else 1)
    assert ds.PresentationLUTShape == ("IDENTITY" if monochrome2 else "INVERSE")
    image, raw = read_mammogram(path), read_mammogram(path, apply_voi=False)
    assert image.extra["voi"] == "Window" and raw.extra["voi"] == "none"
    np.testing.assert_array_equal(image.pixels, raw.pixels)


def test_a_file_without_window_or_spacing_can_still_be_written_for_reader_tests(tmp_path):
    import pydicom

    mammo = synthesize_mammogram((300, 300), 0.1, "L", "CC", [], seed=1)
    ds = pydicom.dcmread(write_dicom(mammo, tmp_path / "x.dcm", spacing_tag="", window=False))
    assert "WindowCenter" not in ds and "PixelSpacing" not in ds and "ImagerPixelSpacing" not in ds
    only = pydicom.dcmread(write_dicom(mammo, tmp_path / "i.dcm", spacing_tag="ImagerPixelSpacing"))
    assert "PixelSpacing" not in only and "ImagerPixelSpacing" in only


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown synthetic finding"):
        synthesize_mammogram((300, 300), findings=["tumour"], seed=0)
    with pytest.raises(ValueError, match="laterality"):
        synthesize_mammogram((300, 300), laterality="X")
    with pytest.raises(ValueError, match="view_position"):
        synthesize_mammogram((300, 300), view_position="ML")
    with pytest.raises(ValueError, match="spacing_tag"):
        write_dicom(synthesize_mammogram((300, 300), seed=0), tmp_path / "x.dcm", spacing_tag="Spacing")
