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


# ---------------------------------------------------------------- one spacing policy


def _nrrd_file(path, pixels, fields):
    header = (f"NRRD0004\ntype: unsigned short\ndimension: 2\nsizes: {pixels.shape[1]} {pixels.shape[0]}\n{fields}"
              "endian: little\nencoding: raw\n\n").encode()
    path.write_bytes(header + pixels.astype(np.uint16).tobytes())
    return path


@pytest.mark.parametrize("fields, stated", [
    ("spacings: nan nan\n", "nan x nan"), ("spacings: -0.1 -0.1\n", "-0.1 x -0.1"), ("spacings: 0 0\n", "0 x 0"),
    ("spacings: inf inf\n", "inf x inf"), ("spacings: 1 1\n", "1 x 1"), ("", None),
])
def test_unusable_or_default_nrrd_spacing_is_unknown_and_spacing_applies(tmp_path, synthetic_mammo, fields, stated):
    """ITK reads NaN as 1 mm and -0.1 as 0.1 mm, and fails on 0: each counts as unknown, the
    pixels are still read exactly, --spacing applies, and without it the warning quotes the
    stated value."""
    path = _nrrd_file(tmp_path / "a.nrrd", synthetic_mammo.pixels, fields)
    given = read_mammogram(path, spacing_mm=0.2)
    assert given.spacing_source == "given" and given.geometry.spacing[:2] == pytest.approx((0.2, 0.2))
    np.testing.assert_array_equal(given.pixels, synthetic_mammo.pixels.astype(np.float32))
    assumed = read_mammogram(path)
    assert assumed.spacing_source == "default" and assumed.geometry.spacing[:2] == pytest.approx((0.1, 0.1))
    expected = f"states pixel spacing {stated} mm" if stated else "states no pixel spacing"
    assert any(expected in w and "0.1 mm assumed" in w for w in assumed.warnings), assumed.warnings


def test_a_usable_stated_spacing_is_kept_and_not_overridden(tmp_path, synthetic_mammo):
    path = _nrrd_file(tmp_path / "a.nrrd", synthetic_mammo.pixels, "spacings: 0.085 0.07\n")
    image = read_mammogram(path, spacing_mm=0.2)
    assert image.spacing_source == "file header" and image.geometry.spacing[:2] == pytest.approx((0.085, 0.07))
    assert not [w for w in image.warnings if "spacing" in w]


@pytest.mark.parametrize("ext", [".mha", ".nii.gz"])
def test_itk_default_1mm_counts_as_unknown(tmp_path, synthetic_mammo, ext):
    """SimpleITK writes 1 x 1 mm when it knows no spacing: a 1024 px image would be a metre."""
    path = write_volume(synthetic_mammo.pixels.astype(np.float32), ImageGeometry(spacing=(1.0, 1.0, 1.0)),
                        tmp_path / f"a{ext}")
    image = read_mammogram(path, spacing_mm=0.2)
    assert image.spacing_source == "given" and image.geometry.spacing[0] == pytest.approx(0.2)
    assumed = read_mammogram(path)
    assert assumed.spacing_source == "default" and any("would make the image 64 x 51 cm" in w for w in assumed.warnings)
    # 1 mm where it is plausible (a heatmap MammoPatch wrote at --heatmap-spacing 1) is kept.
    heat = np.random.default_rng(0).random((128, 103), np.float32)
    small = write_volume(heat, ImageGeometry(spacing=(1.0, 1.0, 1.0)), tmp_path / f"h{ext}")
    kept = read_mammogram(small, min_side=0, spacing_mm=0.2)
    assert kept.spacing_source == "file header" and kept.geometry.spacing[:2] == pytest.approx((1.0, 1.0))


def test_dicom_unusable_spacing_falls_back_to_imager_spacing_then_to_unknown(tmp_path, synthetic_mammo):
    path = write_dicom(synthetic_mammo, tmp_path / "a.dcm")
    ds = pydicom.dcmread(path)
    ds.PixelSpacing = [-0.1, -0.1]
    ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.save_as(path)
    image = read_mammogram(path, spacing_mm=0.3)
    assert image.spacing_source == "ImagerPixelSpacing" and image.geometry.spacing[0] == pytest.approx(0.15)
    del ds.ImagerPixelSpacing
    ds.save_as(path)
    image = read_mammogram(path, spacing_mm=0.3)
    assert image.spacing_source == "given" and image.geometry.spacing[0] == pytest.approx(0.3)
    assert any("PixelSpacing is -0.1 x -0.1 mm" in w and "the given 0.3 mm is used" in w for w in image.warnings)


def test_breast_size_plausibility(tmp_path):
    """A breast larger than any detector means a wrong spacing: refused, for stated and given
    spacings alike; the same image at a real spacing passes."""
    from MammoPatchLib.io.validate import MAX_BREAST_MM, breast_extent_mm, check_geometry

    mammo = synthesize_mammogram((1024, 832), 0.1, "L", "CC", [], seed=3)
    path = write_dicom(mammo, tmp_path / "a.dcm", spacing_tag="")
    real = read_mammogram(path, spacing_mm=0.1)
    height, width = breast_extent_mm(real)
    rows, cols = np.nonzero(mammo.breast_mask)
    assert height == pytest.approx((rows.max() - rows.min() + 1) * 0.1, rel=0.05)
    assert width == pytest.approx((cols.max() - cols.min() + 1) * 0.1, rel=0.05)
    check_geometry(real, 0.2)
    metre = read_mammogram(path, spacing_mm=1.0)
    assert max(breast_extent_mm(metre)) > MAX_BREAST_MM
    with pytest.raises(InvalidImageError, match=r"larger than any breast.*--spacing"):
        check_geometry(metre, 0.2)


def test_multipage_tiff_is_refused_like_multiframe_dicom(tmp_path, synthetic_mammo):
    from PIL import Image

    page = Image.fromarray((synthetic_mammo.pixels >> 4).astype(np.uint8))
    page.save(tmp_path / "two.tif", save_all=True, append_images=[page])
    _expect(UnsupportedImageError, "multi-page TIFF \\(2 pages", tmp_path / "two.tif")
    page.save(tmp_path / "one.tif")
    assert read_mammogram(tmp_path / "one.tif", spacing_mm=0.2).shape == synthetic_mammo.pixels.shape


def test_dicom_without_transfer_syntax_is_read_in_its_data_set_encoding(tmp_path, synthetic_mammo):
    path = write_dicom(synthetic_mammo, tmp_path / "a.dcm")
    ds = pydicom.dcmread(path)
    del ds.file_meta.TransferSyntaxUID
    ds.save_as(path)
    image = read_mammogram(path)
    np.testing.assert_array_equal(image.pixels, synthetic_mammo.pixels.astype(np.float32))
    assert any("no Transfer Syntax UID" in w for w in image.warnings)


def test_what_is_at_a_path_is_named(tmp_path):
    import os

    from MammoPatchLib.io.paths import file_problem

    os.mkfifo(tmp_path / "pipe.dcm")
    os.symlink(tmp_path / "b.dcm", tmp_path / "a.dcm")
    os.symlink(tmp_path / "a.dcm", tmp_path / "b.dcm")
    os.symlink(tmp_path / "nowhere.dcm", tmp_path / "dangling.dcm")
    (tmp_path / "folder.dcm").mkdir()
    _expect(ImageReadError, "named pipe", tmp_path / "pipe.dcm")  # and does not hang opening it
    _expect(ImageReadError, "symbolic link loop", tmp_path / "a.dcm")
    _expect(ImageReadError, "symbolic link to a missing file", tmp_path / "dangling.dcm")
    _expect(ImageReadError, "is a folder", tmp_path / "folder.dcm")
    assert file_problem(tmp_path / "folder.dcm", "model file") == "is a folder, not a model file"
    _expect(ImageReadError, "file not found", tmp_path / "missing.dcm")


def test_metaimage_with_a_missing_data_file_names_it(tmp_path, capfd):
    (tmp_path / "a.mhd").write_text("ObjectType = Image\nNDims = 2\nDimSize = 300 300\nElementSpacing = 0.1 0.1\n"
                                    "ElementType = MET_USHORT\nElementDataFile = a.raw\n")
    _expect(ImageReadError, "names the data file 'a.raw', which does not exist", tmp_path / "a.mhd")
    (tmp_path / "a.raw").write_bytes(b"\0" * 1000)
    _expect(ImageReadError, "holds 1000 bytes where the 300 x 300 image its header describes needs 180000",
            tmp_path / "a.mhd")
    assert "ITK" not in capfd.readouterr().err, "no raw ITK line beside the error"


def test_rows_zero_and_float_pixel_data_are_named(tmp_path, synthetic_mammo):
    path = write_dicom(synthetic_mammo, tmp_path / "a.dcm")
    ds = pydicom.dcmread(path)
    ds.Rows = 0
    ds.save_as(tmp_path / "rows.dcm")
    _expect(ImageReadError, r"Rows \(0028,0010\) is 0", tmp_path / "rows.dcm")
    ds = pydicom.dcmread(path)
    values = ds.pixel_array.astype(np.float32)
    del ds.PixelData
    ds.FloatPixelData, ds.BitsAllocated = values.tobytes(), 32
    ds.save_as(tmp_path / "float.dcm")
    _expect(UnsupportedImageError, "Float Pixel Data", tmp_path / "float.dcm")


def test_warnings_print_numbers_not_numpy_reprs(tmp_path, synthetic_mammo):
    path = write_dicom(synthetic_mammo, tmp_path / "a.dcm")
    ds = pydicom.dcmread(path)
    ds.ImageOrientationPatient = [1, 0, 0, 1, 0, 0]
    ds.save_as(path)
    warning = next(w for w in read_mammogram(path).warnings if "ImageOrientationPatient" in w)
    assert "(1, 0, 0, 1, 0, 0)" in warning and "np." not in warning


def test_available_memory_counts_the_page_cache_linux_would_reclaim(tmp_path):
    """Free pages alone fall to a few hundred MB after a few GB of files are read or installed
    (the rest is page cache), so a guard on them refused images that fit; Linux's MemAvailable
    is what a new allocation can get. Without /proc/meminfo the sysconf figure is used."""
    import os

    from MammoPatchLib.io.validate import available_memory_bytes

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683520 kB\nMemFree:          204800 kB\n"
                       "MemAvailable:   20971520 kB\nBuffers:            1024 kB\n", encoding="ascii")
    assert available_memory_bytes(str(meminfo)) == 20971520 * 1024
    free_pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    fallback = available_memory_bytes(str(tmp_path / "missing"))
    assert fallback is not None and abs(fallback - free_pages) < 2**30


def _edited_dicom(mammo, path, edit, **kwargs):
    """A synthetic MG DICOM edited with pydicom (``edit(ds)``) and saved again."""
    write_dicom(mammo, path, **kwargs)
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path)
    return path


def _sop_class(uid, frames=None):
    def edit(ds):
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = uid
        if "PresentationIntentType" in ds:
            del ds.PresentationIntentType
        if frames is not None:
            ds.NumberOfFrames = frames
    return edit


@pytest.mark.parametrize("edit, warning", [
    (_sop_class("1.2.840.10008.5.1.4.1.1.1.2.1"),
     "SOP class Digital Mammography X-Ray Image Storage - For Processing holds raw detector data"),
    (_sop_class("1.2.840.10008.5.1.4.1.1.13.1.3", frames=1),
     "SOP class Breast Tomosynthesis Image Storage: one frame of a tomosynthesis series"),
    (lambda ds: setattr(ds, "ImagerPixelSpacing", [0.8, 0.8]),
     "PixelSpacing 0.2 x 0.2 mm and ImagerPixelSpacing 0.8 x 0.8 mm differ 4x"),
], ids=["for-processing-sop-class", "tomosynthesis-one-frame", "spacings-4x-apart"])
def test_doubtful_dicom_kinds_and_spacings_are_read_with_a_warning(tmp_path, synthetic_mammo, edit, warning):
    image = read_mammogram(_edited_dicom(synthetic_mammo, tmp_path / "m.dcm", edit))
    assert [w for w in image.warnings if w.startswith(warning)], image.warnings


def test_a_magnification_view_s_two_spacings_pass_without_a_warning(tmp_path, synthetic_mammo):
    image = read_mammogram(_edited_dicom(synthetic_mammo, tmp_path / "m.dcm",
                                         lambda ds: setattr(ds, "ImagerPixelSpacing", [0.36, 0.36])))
    assert image.warnings == [] and image.spacing_mm == pytest.approx(0.2)


@pytest.mark.parametrize("kind", ["dicom", "nrrd"])
def test_an_image_too_large_to_read_is_called_too_large_not_truncated(tmp_path, synthetic_mammo, kind):
    if kind == "dicom":
        def huge(ds):
            ds.Rows = ds.Columns = 60000
        path = _edited_dicom(synthetic_mammo, tmp_path / "huge.dcm", huge)
    else:
        path = tmp_path / "huge.nrrd"
        path.write_bytes(b"NRRD0004\ntype: uint16\ndimension: 2\nsizes: 60000 60000\nspacings: 0.1 0.1\n"
                         b"encoding: raw\nendian: little\n\n" + b"\0" * 4096)
    with pytest.raises(InvalidImageError, match=r"60000 x 60000 px \(3600 Mpx\), too large: above the 120 Mpx limit"):
        read_mammogram(path)


def test_a_monochrome1_voi_lut_sequence_is_applied_without_pydicom_s_float_warning(tmp_path, synthetic_mammo):
    """A VOI LUT Sequence is looked up with the whole-number modality values (Rescale 1 / 0
    made them floats, and pydicom then warns that the result may be wrong, twice a batch)."""
    import warnings

    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    def voi_lut(ds):
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 16]
        item.add_new(0x00283006, "US", [min(4095, 2 * v) for v in range(4096)])
        ds.VOILUTSequence = Sequence([item])

    path = _edited_dicom(synthetic_mammo, tmp_path / "m1.dcm", voi_lut, photometric="MONOCHROME1", bits_stored=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the read
        image = read_mammogram(path)
    assert image.extra["voi"] == "VOILUTSequence"
    looked_up = np.minimum(4095, 2 * (4095 - synthetic_mammo.pixels.astype(np.int64))).astype(np.float32)
    np.testing.assert_array_equal(image.pixels, looked_up.max() + looked_up.min() - looked_up)
