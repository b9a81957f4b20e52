"""Mammogram I/O: DICOM variants, other formats, geometry, and every bad-input case."""

from __future__ import annotations

import logging

import numpy as np
import pydicom
import pytest

from MammoPatchLib.errors import ImageReadError, InvalidImageError, MammoPatchError, UnsupportedImageError
from MammoPatchLib.io import ImageGeometry, read_mammogram, write_png, write_volume
from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom


@pytest.mark.parametrize("bits", [12, 14, 16])
def test_dicom_monochrome2_round_trip(tmp_path, bits):
    mammo = synthesize_mammogram((300, 280), 0.1, "R", "CC", ["round mass"], bits_stored=bits, seed=bits)
    path = write_dicom(mammo, tmp_path / "m.dcm", bits_stored=bits)
    image = read_mammogram(path)
    np.testing.assert_array_equal(image.pixels, mammo.pixels.astype(np.float32))
    assert image.bits_stored == bits
    assert image.laterality == "R" and image.view_position == "CC"
    assert image.geometry.spacing[:2] == pytest.approx((0.1, 0.1))
    assert image.spacing_source == "PixelSpacing"
    assert set(image.uids) >= {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}


def test_dicom_monochrome1_is_inverted(tmp_path, synthetic_mammo):
    path = write_dicom(synthetic_mammo, tmp_path / "m1.dcm", photometric="MONOCHROME1", bits_stored=12)
    image = read_mammogram(path)
    assert image.photometric_interpretation == "MONOCHROME1"
    stored = (4095 - synthetic_mammo.pixels).astype(np.float32)
    np.testing.assert_array_equal(image.pixels, stored.max() + stored.min() - stored)
    # Dense (breast) is bright again: the breast mask is brighter than the background.
    assert image.pixels[synthetic_mammo.breast_mask].mean() > image.pixels[~synthetic_mammo.breast_mask].mean()


@pytest.mark.parametrize("syntax", ["rle", "jpeg2000", "jpegls"])
def test_dicom_compressed_syntaxes_are_lossless(tmp_path, synthetic_mammo, syntax):
    if syntax == "jpegls":
        pytest.importorskip("jpeg_ls")
    if syntax == "jpeg2000" and int(pydicom.__version__.split(".")[0]) < 3:
        pytest.skip("pydicom < 3 cannot encode JPEG 2000 (only the test data writer needs it; reading works)")
    path = write_dicom(synthetic_mammo, tmp_path / f"{syntax}.dcm", transfer_syntax=syntax, bits_stored=12)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID.is_compressed
    image = read_mammogram(path)
    np.testing.assert_array_equal(image.pixels, synthetic_mammo.pixels.astype(np.float32))


def test_rescale_and_window_are_applied(tmp_path, synthetic_mammo):
    path = write_dicom(synthetic_mammo, tmp_path / "w.dcm", bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    ds.WindowCenter, ds.WindowWidth = 2000, 2000
    ds.save_as(path)
    raw = read_mammogram(path, apply_voi=False)
    np.testing.assert_allclose(raw.pixels, synthetic_mammo.pixels * 2.0 - 100.0)
    windowed = read_mammogram(path)
    assert windowed.extra["voi"] == "Window"
    # The window maps raw values monotonically, saturating below 1000 and above 3000.
    order = np.argsort(raw.pixels.ravel(), kind="stable")
    assert np.all(np.diff(windowed.pixels.ravel()[order]) >= -1e-3)
    low = raw.pixels <= 1000
    assert np.ptp(windowed.pixels[low]) == 0 and np.ptp(windowed.pixels[raw.pixels >= 3000]) == 0
    assert not np.allclose(windowed.pixels, raw.pixels)


def test_spacing_fallbacks(tmp_path, synthetic_mammo, caplog):
    imager = read_mammogram(write_dicom(synthetic_mammo, tmp_path / "i.dcm", spacing_tag="ImagerPixelSpacing"))
    assert imager.spacing_source == "ImagerPixelSpacing" and imager.geometry.spacing[0] == pytest.approx(0.2)
    with caplog.at_level(logging.WARNING):
        none = read_mammogram(write_dicom(synthetic_mammo, tmp_path / "n.dcm", spacing_tag=""))
    assert none.spacing_source == "default" and none.geometry.spacing[0] == pytest.approx(0.1)
    assert "states no pixel spacing" in caplog.text and any("0.1 mm assumed" in w for w in none.warnings)
    assert none.metadata()["spacing_source"] == "default"


def test_pgm_and_png_read_identically(tmp_path, synthetic_mammo):
    from PIL import Image

    eight_bit = (synthetic_mammo.pixels >> 4).astype(np.uint8)
    Image.fromarray(eight_bit).save(tmp_path / "a.png")
    Image.fromarray(eight_bit).save(tmp_path / "a.pgm")
    png = read_mammogram(tmp_path / "a.png", spacing_mm=0.2)
    pgm = read_mammogram(tmp_path / "a.pgm", spacing_mm=0.2)
    np.testing.assert_array_equal(png.pixels, pgm.pixels)
    assert png.bits_stored == 8 and png.spacing_source == "given"


def test_real_mias_pgm_equals_png(tmp_path, mias_root):
    from PIL import Image

    Image.open(mias_root / "mdb005.png").save(tmp_path / "mdb005.pgm")
    a = read_mammogram(mias_root / "mdb005.png", spacing_mm=0.2)
    b = read_mammogram(tmp_path / "mdb005.pgm", spacing_mm=0.2)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    assert a.shape == (1024, 1024)


@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz", ".mha"])
def test_volume_round_trip_keeps_geometry(tmp_path, ext):
    geometry = ImageGeometry(spacing=(0.07, 0.08, 1.0), origin=(10.0, -5.0, 2.0))
    heat = np.random.default_rng(0).random((300, 260)).astype(np.float32)
    path = write_volume(heat, geometry, tmp_path / f"heat{ext}")
    back = read_mammogram(path, min_side=0)
    np.testing.assert_allclose(back.pixels, heat, rtol=1e-6)
    assert back.geometry.spacing == pytest.approx(geometry.spacing)
    assert back.geometry.origin[:2] == pytest.approx(geometry.origin[:2])


def test_geometry_ras_round_trip():
    geometry = ImageGeometry(spacing=(0.1, 0.2, 1.0), origin=(3.0, 4.0, 5.0))
    again = ImageGeometry.from_ijk_to_ras(geometry.ijk_to_ras())
    assert again.spacing == pytest.approx(geometry.spacing)
    assert again.origin == pytest.approx(geometry.origin)
    assert again.direction == pytest.approx(geometry.direction)


def test_outputs_are_not_overwritten_unless_asked(tmp_path):
    path = write_png(np.zeros((4, 4), np.uint8), tmp_path / "x.png")
    with pytest.raises(MammoPatchError, match="exists already"):
        write_png(np.ones((4, 4), np.uint8), path, overwrite=False)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary file left behind"


# ---------------------------------------------------------------- bad input


def _expect(error, match, path, **kwargs):
    with pytest.raises(error, match=match) as info:
        read_mammogram(path, **kwargs)
    assert str(path) in str(info.value), "the message must name the file"


def test_non_dicom_file(tmp_path):
    bad = tmp_path / "report.dcm"
    bad.write_text("this is not an image")
    _expect(ImageReadError, "not a DICOM", bad)


def test_dicom_without_pixel_data(tmp_path, synthetic_dicom):
    ds = pydicom.dcmread(synthetic_dicom)
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    _expect(ImageReadError, "without pixel data", tmp_path / "nopixels.dcm")


def test_truncated_dicom(tmp_path, synthetic_dicom):
    data = synthetic_dicom.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])
    _expect(ImageReadError, "truncated", cut)


def test_unsupported_transfer_syntax(tmp_path, synthetic_dicom):
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    ds = pydicom.dcmread(synthetic_dicom)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2: no decoder exists
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds.save_as(tmp_path / "mpeg.dcm")
    _expect(UnsupportedImageError, "transfer syntax", tmp_path / "mpeg.dcm")


def test_multiframe_rejected(tmp_path, synthetic_dicom):
    ds = pydicom.dcmread(synthetic_dicom)
    frame = ds.PixelData
    ds.NumberOfFrames = 2
    ds.PixelData = frame + frame
    ds.save_as(tmp_path / "tomo.dcm")
    _expect(UnsupportedImageError, "multi-frame", tmp_path / "tomo.dcm")


def test_all_zero_image(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((400, 400), np.uint8)).save(tmp_path / "blank.png")
    _expect(InvalidImageError, "blank", tmp_path / "blank.png")


def test_image_smaller_than_a_window(tmp_path):
    mammo = synthesize_mammogram((200, 300), 0.2, findings=[], seed=1)
    path = write_dicom(mammo, tmp_path / "tiny.dcm")
    _expect(InvalidImageError, "smaller than one 256 px window", path)


def test_colour_png_and_unknown_types(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(tmp_path / "rgb.png")
    _expect(UnsupportedImageError, "colour", tmp_path / "rgb.png")
    (tmp_path / "notes.xyz").write_text("x")
    _expect(UnsupportedImageError, "unknown file type", tmp_path / "notes.xyz")
    _expect(ImageReadError, "not found", tmp_path / "missing.dcm")
    (tmp_path / "empty.dcm").write_bytes(b"")
    _expect(ImageReadError, "empty", tmp_path / "empty.dcm")
