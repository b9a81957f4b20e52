"""The text headers of NRRD and MetaImage files, read before SimpleITK sees the file.

ITK reads these headers with quiet substitutions and cryptic failures: NaN spacings become
1 mm, -0.1 becomes 0.1, a zero spacing fails with "[nrrd] _nrrdFieldCheck_spacings", a 1-D
image with "maximum supported IO dimension is 5", a missing data file without its name. This
module reads the few fields MammoPatch needs itself (dimension, spacing, data file), so the
reader can name the fault, apply the spacing policy (:mod:`.spacing`) and, where the only
fault is an unusable spacing, let ITK read a copy of the header without it.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import ImageReadError, UnsupportedImageError
from .validate import check_source_size

NRRD_EXTENSIONS = (".nrrd", ".nhdr")
META_EXTENSIONS = (".mha", ".mhd")
HEADER_LIMIT = 65536

#: MetaImage fields that carry the spacing (lower case).
_META_SPACING_FIELDS = ("elementspacing", "elementsize")
#: NRRD fields dropped with an unusable spacing (the space fields only make sense together).
_NRRD_GEOMETRY_FIELDS = ("spacings", "space directions", "space", "space origin", "space dimension",
                         "space units", "measurement frame")


@dataclass
class TextHeader:
    """The parsed header of an NRRD or MetaImage file.

    Attributes:
        family: "nrrd" or "meta".
        fields: field name (lower case) -> value text.
        lines: the header's lines as stored (for writing a corrected copy).
        data_offset: where the data starts in the same file (attached data), else None.
        data_file: the separate data file named by the header (resolved), None when attached.
    """

    family: str
    fields: Dict[str, str]
    lines: List[str]
    data_offset: Optional[int]
    data_file: Optional[Path]

    @property
    def dimension(self) -> Optional[int]:
        text = self.fields.get("dimension" if self.family == "nrrd" else "ndims")
        try:
            return int(text) if text is not None else None
        except ValueError:
            return None

    def stated_spacing(self) -> Optional[Tuple[float, ...]]:
        """The in-plane spacing the header states as (row, column), None when it states none.
        Values that are not numbers come back as NaN (stated, but not a spacing)."""
        if self.family == "nrrd":
            if "spacings" in self.fields:
                values = _numbers(self.fields["spacings"])
            elif "space directions" in self.fields:
                values = [_vector_norm(v) for v in re.findall(r"\(([^)]*)\)", self.fields["space directions"])]
                if not values:
                    values = [math.nan, math.nan]
            else:
                return None
        else:
            key = next((k for k in _META_SPACING_FIELDS if k in self.fields), None)
            if key is None:
                return None
            values = _numbers(self.fields[key])
        values = (values + [math.nan, math.nan])[:2]
        return (values[1], values[0])  # headers list x (column) first


def family_of(extension: str) -> Optional[str]:
    return "nrrd" if extension in NRRD_EXTENSIONS else "meta" if extension in META_EXTENSIONS else None


def read_header(path: Path, extension: str) -> Optional[TextHeader]:
    """The header of an NRRD / MetaImage file, None when the file is not one (ITK then reports
    what it finds)."""
    family = family_of(extension)
    if family is None:
        return None
    with open(path, "rb") as handle:
        head = handle.read(HEADER_LIMIT)
    if family == "nrrd":
        if not head.startswith(b"NRRD"):
            return None
        end = head.find(b"\n\n")
        text_end, data_offset = (end, end + 2) if end >= 0 else (len(head), None)
        raw_lines = head[:text_end].decode("latin-1").split("\n")
        fields = {}
        for line in raw_lines[1:]:
            if line.startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.lstrip("=").strip()
        named = fields.get("data file") or fields.get("datafile")
    else:
        raw_lines, fields, data_offset, position = [], {}, None, 0
        for line in head.split(b"\n"):
            position += len(line) + 1
            text = line.decode("latin-1").rstrip("\r")
            raw_lines.append(text)
            key, sep, value = text.partition("=")
            if not sep:
                if not fields:
                    return None
                continue
            fields[key.strip().lower()] = value.strip()
            if key.strip().lower() == "elementdatafile":
                data_offset = position
                break
        if "ndims" not in fields and "objecttype" not in fields:
            return None
        named = fields.get("elementdatafile")
        if named is not None and named.upper() == "LOCAL":
            named = None
        else:
            data_offset = None
    data_file = None
    if named is not None:
        data_file = Path(named) if os.path.isabs(named) else path.parent / named
    return TextHeader(family, fields, raw_lines, data_offset, data_file)


def check_header(header: TextHeader, path: Path) -> None:
    """Refuse what ITK would misreport: a dimension other than 2 (or 3 with one slice, checked
    after reading), a separate data file that is missing."""
    dimension = header.dimension
    if dimension is not None and dimension not in (2, 3):
        raise UnsupportedImageError(f"a {dimension}-D image (its header says dimension {dimension}); "
                                    "expected a 2-D mammogram", path)
    if header.data_file is not None and not _is_pattern(header):
        if not header.data_file.is_file():
            where = "" if str(header.data_file) == header.data_file.name else f" (looked for {header.data_file})"
            raise ImageReadError(f"the header names the data file {header.data_file.name!r}, which does not "
                                 f"exist{where}", path)


    _check_data_length(header, path)


def _element_bytes(header: TextHeader) -> Optional[int]:
    """Bytes per pixel of uncompressed data, None when the header does not say plainly."""
    if header.family == "nrrd":
        name = header.fields.get("type", "").lower()
        digits = re.search(r"(8|16|32|64)", name)
        if digits:
            return int(digits.group(1)) // 8
        for word, size in (("char", 1), ("short", 2), ("long", 8), ("int", 4), ("float", 4), ("double", 8)):
            if word in name:
                return size
        return None
    sizes = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
             "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}
    size = sizes.get(header.fields.get("elementtype", "").upper())
    channels = header.fields.get("elementnumberofchannels", "1")
    return size * int(channels) if size is not None and channels.isdigit() else None


def _check_data_length(header: TextHeader, path: Path) -> None:
    """Uncompressed data shorter than the image its header describes: a truncated file, said
    with the numbers (ITK's is a chain of "[nrrd] ... trouble" lines)."""
    if header.family == "nrrd":
        plain = header.fields.get("encoding", "").lower() == "raw" and "byte skip" not in header.fields \
            and "line skip" not in header.fields
        sizes = header.fields.get("sizes", "")
    else:
        plain = header.fields.get("compresseddata", "false").lower() != "true" and "headersize" not in header.fields
        sizes = header.fields.get("dimsize", "")
    if sizes and all(t.isdigit() for t in sizes.split()) and len(sizes.split()) >= 2:
        columns, *rest = (int(t) for t in sizes.split())
        check_source_size(math.prod(rest), columns, path)  # too large is said as such, before "truncated"
    element = _element_bytes(header)
    if not plain or element is None or not sizes or not all(t.isdigit() for t in sizes.split()):
        return
    needed = element * math.prod(int(t) for t in sizes.split())
    if header.data_file is not None:
        held = header.data_file.stat().st_size if header.data_file.is_file() else needed
    elif header.data_offset is not None:
        held = path.stat().st_size - header.data_offset
    else:
        return
    if held < needed:
        shape = " x ".join(sizes.split()[::-1])
        raise ImageReadError(f"the data holds {held} bytes where the {shape} image its header describes needs "
                             f"{needed}: the file is truncated", path)


def _is_pattern(header: TextHeader) -> bool:
    """A data file given as a list or a printf pattern (several files): left to ITK."""
    named = header.fields.get("data file") or header.fields.get("datafile") or header.fields.get("elementdatafile", "")
    return named.upper().startswith("LIST") or "%" in named or " " in named.strip()


def without_spacing(header: TextHeader, path: Path, folder: str) -> str:
    """A copy of the file in ``folder`` whose header lacks the spacing fields, for ITK to read
    the pixels of a file whose only fault is an unusable spacing. Returns its path."""
    nrrd = header.family == "nrrd"
    dropped = _NRRD_GEOMETRY_FIELDS if nrrd else _META_SPACING_FIELDS
    data_keys = ("data file", "datafile") if nrrd else ("elementdatafile",)
    separator = ":" if nrrd else "="
    kept = []
    for number, line in enumerate(header.lines):
        key = line.partition(separator)[0].strip().lower() if number or not nrrd else ""
        if key in dropped:
            continue
        if key in data_keys and header.data_file is not None:
            line = f"{line.partition(separator)[0]}{separator} {header.data_file.resolve()}"
        kept.append(line)
    extension = (".nhdr" if nrrd else ".mhd") if header.data_file is not None else (".nrrd" if nrrd else ".mha")
    target = os.path.join(folder, "header-copy" + extension)
    with open(target, "wb") as out:
        out.write("\n".join(kept).encode("latin-1"))
        out.write(b"\n\n" if nrrd else b"\n")
        if header.data_offset is not None:
            with open(path, "rb") as source:
                source.seek(header.data_offset)
                while True:
                    block = source.read(1 << 22)
                    if not block:
                        break
                    out.write(block)
    return target


def _numbers(text: str) -> List[float]:
    values = []
    for token in text.replace(",", " ").split():
        try:
            values.append(float(token))
        except ValueError:
            values.append(math.nan)
    return values


def _vector_norm(text: str) -> float:
    values = _numbers(text)
    return math.sqrt(sum(v * v for v in values)) if values else math.nan
