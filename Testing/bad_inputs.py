"""A corpus of bad and odd inputs, made by code (no binary files in the repository).

Each case is (name, expected outcome, maker): the maker writes the file(s) into a folder and
returns the input path; ``occupy``, when given, puts something of the user's where the
image's output folder goes (``OUT/<name>``) before the run. Outcomes, as `mammopatch predict`
reports them:

- "error": the image fails with one clear line naming the file and the reason
  (``reason`` is a fragment the message must contain);
- "warning": the image is analysed and its summary row carries a warning (``reason``);
- "ok": analysed, no warning.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from MammoPatchLib.synthetic import synthesize_mammogram, write_dicom

SHAPE = (640, 512)


@dataclass
class Case:
    name: str
    outcome: str  # "error", "warning" or "ok"
    reason: str
    make: Callable[[Path], Path]
    occupy: Optional[Callable[[Path], None]] = None


def _mammo(seed: int = 0, shape=SHAPE):
    return synthesize_mammogram(shape, 0.2, "L", "CC", ["round mass"], seed=seed)


def _dicom(folder: Path, name: str, edit=None, **kwargs) -> Path:
    """A synthetic MG DICOM, optionally edited with pydicom (``edit(ds)``) and re-saved."""
    import pydicom

    path = folder / name
    write_dicom(_mammo(), path, **kwargs)
    if edit is not None:
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path)
    return path


def _set(**attributes):
    """An edit setting DICOM attributes; values that pydicom itself would refuse (not numbers in
    a DS element, as real files contain) are stored as raw bytes."""
    def edit(ds):
        from pydicom.datadict import dictionary_VR, tag_for_keyword
        from pydicom.dataelem import RawDataElement
        from pydicom.tag import Tag

        for key, value in attributes.items():
            if value is None:
                delattr(ds, key)
                continue
            try:
                setattr(ds, key, value)
            except (ValueError, TypeError):
                tag = Tag(tag_for_keyword(key))
                text = "\\".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
                raw = text.encode() + (b" " if len(text) % 2 else b"")
                ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, False, True)
    return edit


def _pixels_dicom(folder: Path, name: str, pixels: np.ndarray) -> Path:
    """A DICOM whose pixels are replaced (same size and type as the phantom's)."""
    import pydicom

    path = _dicom(folder, name)
    ds = pydicom.dcmread(path)
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint16)).tobytes()
    ds.Rows, ds.Columns = pixels.shape
    ds.save_as(path)
    return path


def _file(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def _truncate(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _png(folder: Path, name: str, array: np.ndarray, mode=None) -> Path:
    from PIL import Image

    path = folder / name
    Image.fromarray(array, mode=mode).save(path)
    return path


def _itk(folder: Path, name: str, array: np.ndarray, spacing=(0.1, 0.1), components: bool = False) -> Path:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array, isVector=components)
    if array.ndim == 3 and not components:
        image.SetSpacing(tuple(float(s) for s in spacing) + (1.0,))
    else:
        image.SetSpacing(tuple(float(s) for s in spacing))
    path = folder / name
    sitk.WriteImage(image, str(path))
    return path


def _nrrd(folder: Path, name: str, fields: str = "", dimension: int = 2) -> Path:
    """An NRRD written by hand (attached raw data), with extra header ``fields`` as given:
    SimpleITK would never write the bad ones."""
    pixels = _mammo().pixels.astype(np.uint16)
    if dimension == 1:
        pixels = pixels[SHAPE[0] // 2]
    sizes = " ".join(str(n) for n in pixels.shape[::-1])
    header = (f"NRRD0004\ntype: unsigned short\ndimension: {dimension}\nsizes: {sizes}\n{fields}"
              "endian: little\nencoding: raw\n\n").encode()
    path = folder / name
    path.write_bytes(header + pixels.tobytes())
    return path


def _nrrd_without_spacing(folder: Path, name: str) -> Path:
    """An NRRD header without spacings or space directions (ITK would read 1 mm)."""
    return _nrrd(folder, name)


def _metaimage(folder: Path, name: str, fields: str = "", data_file: str = "LOCAL") -> Path:
    """A MetaImage header written by hand; ``data_file`` other than LOCAL names a separate file
    (not written: the case of a data file that went missing)."""
    pixels = _mammo().pixels.astype(np.uint16)
    header = (f"ObjectType = Image\nNDims = 2\nDimSize = {pixels.shape[1]} {pixels.shape[0]}\n{fields}"
              f"ElementType = MET_USHORT\nElementDataFile = {data_file}\n").encode()
    path = folder / name
    path.write_bytes(header + (pixels.tobytes() if data_file == "LOCAL" else b""))
    return path


def _multipage_tiff(folder: Path, name: str, pages: np.ndarray) -> Path:
    from PIL import Image

    path = folder / name
    first, *rest = [Image.fromarray(page) for page in pages]
    first.save(path, save_all=True, append_images=rest)
    return path


def _symlink_loop(folder: Path, name: str) -> Path:
    path = folder / name
    os.symlink(folder / ("other-" + name), path)
    os.symlink(path, folder / ("other-" + name))
    return path


def _dangling_symlink(folder: Path, name: str) -> Path:
    path = folder / name
    os.symlink(folder / "moved-away.dcm", path)
    return path


def _fifo(folder: Path, name: str) -> Path:
    path = folder / name
    os.mkfifo(path)
    return path


def _float_pixel_data(ds) -> None:
    """Float Pixel Data (7FE0,0008) in place of Pixel Data, as parametric maps store it."""
    values = ds.pixel_array.astype(np.float32)
    del ds.PixelData
    ds.FloatPixelData = values.tobytes()
    ds.BitsAllocated = 32


def _without_transfer_syntax(ds) -> None:
    del ds.file_meta.TransferSyntaxUID


def _user_file(target: Path) -> None:
    target.write_text("the user's notes, not MammoPatch's\n")


def _user_folder(target: Path) -> None:
    target.mkdir()
    (target / "keep-me.txt").write_text("the user's file\n")


def _png_bomb(folder: Path, name: str) -> Path:
    """A valid PNG header claiming 20,000 x 20,000 px (the pixels are never decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    path = folder / name
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                     + chunk(b"IEND", b""))
    return path


def _non_utf8(folder: Path, suffix: str, writer: Callable[[Path], Path]) -> Path:
    """The file ``writer`` makes, renamed so that its name holds the byte 0xFF (not UTF-8; Python
    keeps it as a surrogate, and SimpleITK aborts the process on such names)."""
    made = writer(folder)
    target = folder / os.fsdecode(b"caf\xff" + suffix.encode())
    os.rename(made, target)
    return target


def _palette_png(folder: Path, eight_bit: np.ndarray) -> Path:
    from PIL import Image

    path = folder / "palette.png"
    Image.fromarray(eight_bit).convert("P").save(path)
    return path


def _multiframe(folder: Path, name: str) -> Path:
    import pydicom

    path = _dicom(folder, name)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(path)
    return path


def _rgb_dicom(folder: Path, name: str) -> Path:
    import pydicom

    path = _dicom(folder, name)
    ds = pydicom.dcmread(path)
    rgb = np.repeat((ds.pixel_array >> 8).astype(np.uint8)[..., None], 3, axis=2)
    ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration = "RGB", 3, 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = rgb.tobytes()
    ds.save_as(path)
    return path


def _no_pixels(folder: Path, name: str) -> Path:
    import pydicom

    path = _dicom(folder, name)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    return path


def _bare_dataset(folder: Path, name: str) -> Path:
    """The same data set without the 128-byte preamble and 'DICM' (as many archives store it)."""
    import pydicom

    path = _dicom(folder, name)
    ds = pydicom.dcmread(path)
    ds.preamble = None
    ds.save_as(path, enforce_file_format=False) if hasattr(ds, "save_as") else None
    data = path.read_bytes()
    if data[128:132] == b"DICM":
        path.write_bytes(data[132:])
    return path


def _unsupported_syntax(folder: Path, name: str) -> Path:
    import pydicom
    from pydicom.encaps import encapsulate

    path = _dicom(folder, name)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile: not a still image codec here
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


#: The rows of the documented outcome table (docs/outputs-and-batches.md), in order: a case
#: belongs to the first whose name prefixes match.
GROUPS = [
    ("DICOM", ("dicom",)),
    ("PNG / PGM / TIFF / JPEG", ("png", "pgm", "tiff", "jpeg")),
    ("NRRD / NIfTI / MetaImage", ("nrrd", "nifti", "mha", "mhd")),
    ("the output folder", ("output",)),
    ("paths and file types", ("",)),
]


def group_of(case: Case) -> str:
    return next(label for label, prefixes in GROUPS if case.name.startswith(prefixes))


def corpus() -> List[Case]:
    rng = np.random.default_rng(0)
    mammo = _mammo()
    eight_bit = (mammo.pixels >> 4).astype(np.uint8)
    cases = [
        # DICOM that should simply work
        Case("dicom-monochrome2", "ok", "", lambda d: _dicom(d, "m2.dcm")),
        Case("dicom-monochrome1", "ok", "", lambda d: _dicom(d, "m1.dcm", photometric="MONOCHROME1")),
        Case("dicom-rle", "ok", "", lambda d: _dicom(d, "rle.dcm", transfer_syntax="rle")),
        Case("dicom-jpeg2000", "ok", "", lambda d: _dicom(d, "j2k.dcm", transfer_syntax="jpeg2000")),
        Case("dicom-jpegls", "ok", "", lambda d: _dicom(d, "jls.dcm", transfer_syntax="jpegls")),
        Case("dicom-imager-spacing", "ok", "", lambda d: _dicom(d, "imager.dcm", spacing_tag="ImagerPixelSpacing")),
        Case("dicom-window", "ok", "", lambda d: _dicom(d, "window.dcm", window=True)),
        Case("dicom-12-bit", "ok", "", lambda d: _dicom(d, "b12.dcm", bits_stored=14)),
        Case("dicom-no-extension", "ok", "", lambda d: _dicom(d, "IM0001")),
        Case("dicom-dotted-uid-name", "ok", "", lambda d: _dicom(d, "1.2.840.99.1.dcm")),
        # DICOM analysed with a warning
        Case("dicom-no-spacing", "warning", "no pixel spacing", lambda d: _dicom(d, "nospacing.dcm", spacing_tag="")),
        Case("dicom-zero-spacing", "warning", "PixelSpacing is 0 x 0 mm, which is not a spacing",
             lambda d: _dicom(d, "zerospacing.dcm", edit=_set(PixelSpacing=[0, 0], ImagerPixelSpacing=None))),
        Case("dicom-negative-spacing", "warning", "PixelSpacing is -0.1 x -0.1 mm, which is not a spacing",
             lambda d: _dicom(d, "negspacing.dcm", edit=_set(PixelSpacing=[-0.1, -0.1], ImagerPixelSpacing=None))),
        Case("dicom-infinite-spacing", "warning", "PixelSpacing is inf x inf mm, which is not a spacing",
             lambda d: _dicom(d, "infspacing.dcm", edit=_set(PixelSpacing=["inf", "inf"], ImagerPixelSpacing=None))),
        Case("dicom-spacing-one-value", "warning", 'PixelSpacing is "0.1", not two numbers',
             lambda d: _dicom(d, "onespacing.dcm", edit=_set(PixelSpacing=[0.1], ImagerPixelSpacing=None))),
        Case("dicom-no-transfer-syntax", "warning", "no Transfer Syntax UID",
             lambda d: _dicom(d, "nosyntax.dcm", edit=_without_transfer_syntax)),
        Case("dicom-position-not-numbers", "warning", "ImagePositionPatient",
             lambda d: _dicom(d, "ipp.dcm", edit=_set(ImagePositionPatient=["abc", "1", "2"]))),
        Case("dicom-orientation-zero", "warning", "ImageOrientationPatient",
             lambda d: _dicom(d, "iop0.dcm", edit=_set(ImageOrientationPatient=[0, 0, 0, 0, 0, 0]))),
        Case("dicom-orientation-nan", "warning", "ImageOrientationPatient",
             lambda d: _dicom(d, "iopnan.dcm", edit=_set(ImageOrientationPatient=["nan"] * 6))),
        Case("dicom-window-width-zero", "warning", "VOI",
             lambda d: _dicom(d, "ww0.dcm", window=True, edit=_set(WindowWidth=0))),
        Case("dicom-ct", "warning", "modality CT", lambda d: _dicom(d, "ct.dcm", edit=_set(Modality="CT"))),
        Case("dicom-mr", "warning", "modality MR", lambda d: _dicom(d, "mr.dcm", edit=_set(Modality="MR"))),
        Case("dicom-us", "warning", "modality US", lambda d: _dicom(d, "us.dcm", edit=_set(Modality="US"))),
        Case("dicom-nm", "warning", "modality NM", lambda d: _dicom(d, "nm.dcm", edit=_set(Modality="NM"))),
        Case("dicom-no-preamble", "warning", "preamble", lambda d: _bare_dataset(d, "bare.dcm")),
        Case("dicom-binary", "warning", "grey levels",
             lambda d: _pixels_dicom(d, "binary.dcm", (mammo.pixels > mammo.pixels.mean()) * 4000)),
        Case("dicom-noise", "warning", "noise",
             lambda d: _pixels_dicom(d, "noise.dcm", rng.integers(0, 4000, SHAPE))),
        Case("dicom-near-blank", "warning", "one value",
             lambda d: _pixels_dicom(d, "nearblank.dcm", np.pad(np.full((4, 4), 4000), ((0, SHAPE[0] - 4),
                                                                                          (0, SHAPE[1] - 4))))),
        # DICOM refused with a clear error
        Case("dicom-spacing-5mm", "error", "outside the range",
             lambda d: _dicom(d, "sp5.dcm", edit=_set(PixelSpacing=[5, 5]))),
        Case("dicom-spacing-1um", "error", "outside the range",
             lambda d: _dicom(d, "sp1um.dcm", edit=_set(PixelSpacing=[0.001, 0.001]))),
        Case("dicom-for-processing", "error", "FOR PROCESSING",
             lambda d: _dicom(d, "raw.dcm", edit=_set(PresentationIntentType="FOR PROCESSING"))),
        Case("dicom-no-pixel-data", "error", "without pixel data", lambda d: _no_pixels(d, "sr.dcm")),
        Case("dicom-float-pixel-data", "error", "Float Pixel Data",
             lambda d: _dicom(d, "float.dcm", edit=_float_pixel_data)),
        Case("dicom-rows-zero", "error", "Rows (0028,0010) is 0", lambda d: _dicom(d, "rows0.dcm", edit=_set(Rows=0))),
        Case("dicom-1mm-breast-too-large", "error", "larger than any breast",
             lambda d: _dicom(d, "metre.dcm", edit=_set(PixelSpacing=[1, 1]))),
        Case("dicom-multiframe", "error", "multi-frame", lambda d: _multiframe(d, "tomo.dcm")),
        Case("dicom-rgb", "error", "colour", lambda d: _rgb_dicom(d, "rgb.dcm")),
        Case("dicom-truncated", "error", "truncated", lambda d: _truncate(_dicom(d, "cut.dcm"), 0.6)),
        Case("dicom-truncated-jpeg2000", "error", "cannot be decoded",
             lambda d: _truncate(_dicom(d, "cutj2k.dcm", transfer_syntax="jpeg2000"), 0.7)),
        Case("dicom-unsupported-syntax", "error", "cannot be decoded", lambda d: _unsupported_syntax(d, "mpeg.dcm")),
        Case("dicom-text", "error", "not a DICOM", lambda d: _file(d, "notes.dcm", b"hello")),
        Case("dicom-empty", "error", "empty", lambda d: _file(d, "empty.dcm", b"")),
        Case("dicom-blank", "error", "blank", lambda d: _pixels_dicom(d, "blank.dcm", np.zeros(SHAPE))),
        Case("dicom-tiny", "error", "smaller than one",
             lambda d: _pixels_dicom(d, "tiny.dcm", mammo.pixels[:100, :100])),
        Case("missing-file", "error", "not found", lambda d: d / "missing.dcm"),
        Case("symlink-loop", "error", "symbolic link loop", lambda d: _symlink_loop(d, "loop.dcm")),
        Case("dangling-symlink", "error", "symbolic link to a missing file", lambda d: _dangling_symlink(d, "gone.dcm")),
        Case("fifo", "error", "named pipe", lambda d: _fifo(d, "pipe.dcm")),
        # Something of the user's where the image's output folder goes: never moved or deleted
        Case("output-taken-by-a-file", "error", "a file that MammoPatch did not write",
             lambda d: _dicom(d, "taken-by-file.dcm"), occupy=_user_file),
        Case("output-taken-by-a-folder", "error", "a folder that MammoPatch did not write",
             lambda d: _dicom(d, "taken-by-folder.dcm"), occupy=_user_folder),
        # Pillow formats (no spacing stored: a warning unless --spacing)
        Case("png-8-bit", "warning", "no pixel spacing", lambda d: _png(d, "a.png", eight_bit)),
        Case("pgm-8-bit", "warning", "no pixel spacing", lambda d: _png(d, "a.pgm", eight_bit)),
        Case("png-16-bit", "warning", "no pixel spacing",
             lambda d: _png(d, "b.png", mammo.pixels.astype(np.uint16))),
        Case("tiff-float", "warning", "no pixel spacing",
             lambda d: _png(d, "f.tif", mammo.pixels.astype(np.float32), mode="F")),
        Case("jpeg", "warning", "no pixel spacing", lambda d: _png(d, "a.jpg", eight_bit)),
        Case("png-non-utf8-name", "warning", "no pixel spacing",
             lambda d: _non_utf8(d, ".png", lambda f: _png(f, "plain.png", eight_bit))),
        Case("png-rgb", "error", "colour", lambda d: _png(d, "rgb.png", np.repeat(eight_bit[..., None], 3, 2))),
        Case("png-rgba", "error", "colour", lambda d: _png(d, "rgba.png", np.repeat(eight_bit[..., None], 4, 2))),
        Case("png-palette", "error", "colour", lambda d: _palette_png(d, eight_bit)),
        Case("png-truncated", "error", "cut short (truncated file)", lambda d: _truncate(_png(d, "cut.png", eight_bit), 0.5)),
        Case("png-decompression-bomb", "error", "Mpx limit", lambda d: _png_bomb(d, "bomb.png")),
        Case("png-text", "error", "not a readable image", lambda d: _file(d, "t.png", b"x")),
        Case("tiff-two-pages", "error", "multi-page", lambda d: _multipage_tiff(d, "pages.tif", np.stack([eight_bit] * 2))),
        Case("png-noise", "warning", "noise",
             lambda d: _png(d, "noise.png", rng.integers(0, 255, SHAPE).astype(np.uint8))),
        Case("unknown-extension", "error", "unknown file type",
             lambda d: _file(d, "image.xyz", b"\0" * 64)),
        # SimpleITK formats
        Case("nrrd", "ok", "", lambda d: _itk(d, "a.nrrd", mammo.pixels.astype(np.uint16))),
        Case("nifti", "ok", "", lambda d: _itk(d, "a.nii.gz", mammo.pixels.astype(np.uint16))),
        Case("mha-85um", "ok", "", lambda d: _itk(d, "a.mha", mammo.pixels.astype(np.uint16), spacing=(0.085, 0.085))),
        Case("nrrd-non-utf8-name", "ok", "",
             lambda d: _non_utf8(d, ".nrrd", lambda f: _itk(f, "plain.nrrd", mammo.pixels.astype(np.uint16)))),
        Case("nrrd-without-spacing", "warning", "no pixel spacing", lambda d: _nrrd_without_spacing(d, "nosp.nrrd")),
        Case("nrrd-spacing-nan", "warning", "states pixel spacing nan x nan mm",
             lambda d: _nrrd(d, "spnan.nrrd", "spacings: nan nan\n")),
        Case("nrrd-spacing-negative", "warning", "states pixel spacing -0.1 x -0.1 mm",
             lambda d: _nrrd(d, "spneg.nrrd", "spacings: -0.1 -0.1\n")),
        Case("nrrd-spacing-zero", "warning", "states pixel spacing 0 x 0 mm",
             lambda d: _nrrd(d, "spzero.nrrd", "spacings: 0 0\n")),
        Case("nrrd-space-directions-nan", "warning", "states pixel spacing nan x 0.1 mm",
             lambda d: _nrrd(d, "dirnan.nrrd", "space: left-posterior-superior\n"
                                               "space directions: (0.1,0,0) (0,nan,0)\nspace origin: (0,0,0)\n")),
        Case("mha-spacing-nan", "warning", "states pixel spacing nan x nan mm",
             lambda d: _metaimage(d, "spnan.mha", "ElementSpacing = nan nan\n")),
        Case("mha-itk-default-1mm", "warning", "the default its format's writers put",
             lambda d: _itk(d, "default.mha", mammo.pixels.astype(np.uint16), spacing=(1, 1))),
        Case("nifti-itk-default-1mm", "warning", "the default its format's writers put",
             lambda d: _itk(d, "default.nii.gz", mammo.pixels.astype(np.uint16), spacing=(1, 1))),
        Case("nrrd-0.9mm-breast-too-large", "error", "larger than any breast",
             lambda d: _itk(d, "huge.nrrd", mammo.pixels.astype(np.uint16), spacing=(0.9, 0.9))),
        Case("nrrd-1d", "error", "1-D image", lambda d: _nrrd(d, "line.nrrd", dimension=1)),
        Case("mhd-data-file-missing", "error", "names the data file 'gone.raw', which does not exist",
             lambda d: _metaimage(d, "detached.mhd", "ElementSpacing = 0.1 0.1\n", data_file="gone.raw")),
        Case("nrrd-50mm", "error", "outside the range",
             lambda d: _itk(d, "big.nrrd", mammo.pixels.astype(np.uint16), spacing=(50, 50))),
        Case("nrrd-1um", "error", "outside the range",
             lambda d: _itk(d, "small.nrrd", mammo.pixels.astype(np.uint16), spacing=(0.001, 0.001))),
        Case("nrrd-3d", "error", "3-D image",
             lambda d: _itk(d, "vol.nrrd", np.stack([mammo.pixels.astype(np.uint16)] * 3), spacing=(0.1, 0.1))),
        Case("nrrd-vector", "error", "multi-component",
             lambda d: _itk(d, "vec.nrrd", np.stack([mammo.pixels.astype(np.uint16)] * 2, -1), components=True)),
        Case("nrrd-nan", "error", "NaN",
             lambda d: _itk(d, "nan.nrrd", np.where(mammo.pixels > 2000, np.nan, 1.0).astype(np.float32))),
        Case("nrrd-truncated", "error", "the file is truncated",
             lambda d: _truncate(_itk(d, "cut.nrrd", mammo.pixels.astype(np.uint16)), 0.3)),
    ]
    return cases
