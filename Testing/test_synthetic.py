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


def test_dicom_is_mg_for_presentation(tmp_path):
    import pydicom

    mammo = synthesize_mammogram((300, 300), 0.1, "L", "CC", [], bits_stored=14, seed=1)
    path = write_dicom(mammo, tmp_path / "x.dcm", photometric="MONOCHROME1", window=True)
    ds = pydicom.dcmread(path)
    assert ds.Modality == "MG" and ds.BitsStored == 14 and ds.PhotometricInterpretation == "MONOCHROME1"
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2"
    assert read_mammogram(path).extra["voi"] == "Window"


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown synthetic finding"):
        synthesize_mammogram((300, 300), findings=["tumour"], seed=0)
    with pytest.raises(ValueError, match="laterality"):
        synthesize_mammogram((300, 300), laterality="X")
