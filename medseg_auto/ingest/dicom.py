"""DICOM in: a folder holding one series is one image; a DICOM-SEG file is a label on its series' grid.

Every file of a series is read once, header and pixels together: plain files (little endian, explicit or
implicit VR) by a small reader of our own that decodes only the values needed, the rest by pydicom. The
headers group the files by series, order the slices by their position along the slice normal (never by
file name) and find what would make the volume wrong: several series in one folder, non-uniform slice
spacing (missing slices), gantry tilt, slices of different orientation or size, files that hold no image
(a DICOMDIR, a structured report). Each of these raises :class:`DicomError` with a message that names the
folder or file, the problem and how to fix it. Native pixels are taken straight from the files' bytes,
others are decoded by pydicom, or by SimpleITK's series reader (GDCM: every transfer syntax) where pydicom
cannot; rescale slope and intercept are applied as ITK applies them. The geometry is ours, from the
headers, in ITK's terms.

Series read are kept for the process (geometry, and the pixels up to a bound, so that the conversion after
the checks reads no file again), keyed by the state of the folder's files: a file added, removed or
rewritten since is seen by the next read.

A DICOM-SEG (read with pydicom) is placed frame by frame on the slices of the series it references, found
among the series folders seen so far; a frame that does not lie on one of its slices is an error, never
resampled.
"""
from __future__ import annotations

import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg_auto.ingest.formats import ImageData, ImageHeader, image_ending

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")  # implicit and explicit VR little endian
SERIES_FLAG = "--series"
# Tolerances: positions in mm relative to the slice step, direction cosines, tilt in degrees.
SPACING_RTOL = 0.01
COSINE_ATOL = 1e-4
TILT_DEGREES = 0.05

_known_series: dict[str, Path] = {}  # SeriesInstanceUID -> folder, for DICOM-SEG references
_lock = threading.Lock()


class DicomError(ValueError):
    """A DICOM input that cannot be read as asked; the message says where, what and how to fix it."""


class _MissingSeries(DicomError):
    """The folder holds no series of the UID asked for (for a DICOM-SEG: it was moved or rewritten)."""


def series_choice(text: str | None) -> str | None:
    """``--series`` as given: the series (UID or description) to read where a folder holds several, or None.
    The choice travels with the options (``IngestOptions.series``, ``PredictOptions.series``) to the readers."""
    return text.strip() or None if text else None


@dataclass(frozen=True)
class Slice:
    """One DICOM file's header, as far as the geometry needs it."""

    path: Path
    sop_instance_uid: str
    series_uid: str
    description: str
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]  # (between rows, between columns), as DICOM orders it
    position: tuple[float, float, float]
    orientation: tuple[float, ...]       # row cosines, then column cosines


@dataclass(frozen=True)
class Series:
    """One series of a folder: its slices in position order, and its voxel grid in ITK's terms."""

    folder: Path
    uid: str
    description: str
    slices: tuple[Slice, ...]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.slices), self.slices[0].rows, self.slices[0].columns)

    @property
    def normal(self) -> np.ndarray:
        return np.array(self.direction).reshape(3, 3)[:, 2]


# --- reading headers: a fast path for plain files, pydicom for the rest -----------------------------------
#
# pydicom builds a Dataset of every element of every file (about 1 ms a slice with the value conversions we
# need: 8 s of the 9 s ingest of the 200 hippocampus series, 7171 slices). A plain file, little endian with
# explicit or implicit VR, is read here instead: its elements are walked over the bytes (sequences skipped)
# and only the few values the geometry and the pixels need are decoded (under 0.1 ms a slice, the read
# included). Anything else (big endian, deflated, a malformed layout, an empty or unusual value, a character
# set other than Latin-1 or UTF-8) takes pydicom's path, as does every file that is no single-frame image, so
# that the messages and the values are pydicom's wherever the fast path is not sure. A file that ends inside
# an element is named as truncated (pydicom reads what is there, and calls such a slice "not an image").

_IMPLICIT_LE = _NATIVE_SYNTAXES[0]
_SLOW_SYNTAXES = ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99")  # big endian, deflated: pydicom's path
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"))
_SHORT_VRS = frozenset((b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN",
                         b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"))
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MEDIA_CLASS, _SYNTAX = 0x00020002, 0x00020010
_CHARSET, _SOP_CLASS, _SOP_INSTANCE, _DESCRIPTION = 0x00080005, 0x00080016, 0x00080018, 0x0008103E
_SERIES, _POSITION, _ORIENTATION = 0x0020000E, 0x00200032, 0x00200037
_SAMPLES, _FRAMES, _ROWS, _COLUMNS, _PIXEL_SPACING = 0x00280002, 0x00280008, 0x00280010, 0x00280011, 0x00280030
_BITS, _BITS_STORED, _SIGNED, _INTERCEPT, _SLOPE = 0x00280100, 0x00280101, 0x00280103, 0x00281052, 0x00281053
_PIXEL_DATA = 0x7FE00010
_WANTED = frozenset((_CHARSET, _SOP_CLASS, _SOP_INSTANCE, _DESCRIPTION, _SERIES, _POSITION, _ORIENTATION,
                     _SAMPLES, _FRAMES, _ROWS, _COLUMNS, _PIXEL_SPACING, _BITS, _BITS_STORED, _SIGNED,
                     _INTERCEPT, _SLOPE))
_LAST_HEADER_TAG = max(_WANTED)
_HEAD_BYTES = 16384  # a header-only read starts with this much of the file (the rest only where needed)
_TEXT_CODECS = {"": "latin_1", "ISO_IR 6": "latin_1", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}
_IMPLICIT_ELEMENT = struct.Struct("<HHI")
_EXPLICIT_ELEMENT = struct.Struct("<HH2sH")
_LENGTH = struct.Struct("<I")


class _Truncated(Exception):
    """The bytes at hand end inside an element: the whole file is needed (or it is truncated)."""


class _TruncatedPixels(_Truncated):
    """The file ends inside its pixel data."""


class _Unusual(Exception):
    """A layout the fast path leaves to pydicom."""


@dataclass(frozen=True)
class _Raw:
    """A plain DICOM file's wanted values as stored (``tag -> bytes``) and where its pixel data lies."""

    values: dict[int, bytes]
    data: bytes
    pixels: tuple[int, int] | None  # (offset, length) of a native PixelData value, where asked for

    @property
    def syntax(self) -> str:
        return _text(self.values.get(_SYNTAX, b""))


def _fast_read(path: Path, pixels: bool) -> _Raw | None:
    """The wanted values of a plain DICOM Part 10 file (and the place of its pixels, with ``pixels``), or None
    where the file is no DICOM file or pydicom should read it. Raises OSError where it cannot be read, and
    :class:`DicomError` where it ends inside an element (pydicom would read what is there, and call a
    truncated slice "not an image")."""
    with open(path, "rb") as f:
        data = f.read(_HEAD_BYTES)
        if data[128:132] != b"DICM":
            return None
        if pixels and len(data) == _HEAD_BYTES:
            data += f.read()
        if not pixels and len(data) == _HEAD_BYTES:
            try:
                return _parse(data, pixels, complete=False)
            except _Truncated:  # the header goes on: the rest of the file
                data += f.read()
    try:
        return _parse(data, pixels, complete=True)
    except _Truncated as e:
        part = "its pixel data" if isinstance(e, _TruncatedPixels) else "its header"
        raise DicomError(f"{path.name}: the file is truncated (it ends inside {part}); copy it again from its "
                         f"source") from None


def _parse(data: bytes, pixels: bool, complete: bool) -> _Raw | None:
    """The file's wanted values; None for a layout left to pydicom. Raises _Truncated where ``data`` ends
    inside the header (or inside the pixels, with ``pixels``)."""
    values: dict[int, bytes] = {}
    try:
        pos = _walk_meta(data, values)
        syntax = _text(values.get(_SYNTAX, b""))
        if not syntax or syntax in _SLOW_SYNTAXES:
            return None
        place = _walk_dataset(data, pos, syntax != _IMPLICIT_LE, values, pixels, complete)
    except (_Unusual, struct.error):
        return None
    return _Raw(values, data, place)


def _element(data: bytes, pos: int, explicit: bool) -> tuple[int, bytes, int, int]:
    """The element at ``pos``: (tag, VR or b"", value length, value offset)."""
    if pos + 8 > len(data):
        raise _Truncated
    group, element, length = _IMPLICIT_ELEMENT.unpack_from(data, pos)
    if not explicit or group == 0xFFFE:  # items and delimiters have no VR
        return group << 16 | element, b"", length, pos + 8
    vr = data[pos + 4:pos + 6]
    if vr in _LONG_VRS:
        if pos + 12 > len(data):
            raise _Truncated
        return group << 16 | element, vr, _LENGTH.unpack_from(data, pos + 8)[0], pos + 12
    if vr not in _SHORT_VRS:
        raise _Unusual
    return group << 16 | element, vr, _EXPLICIT_ELEMENT.unpack_from(data, pos)[3], pos + 8


def _skip(data: bytes, start: int, vr: bytes, length: int, explicit: bool) -> int:
    """The offset after a value: its length on, or past the items of a sequence of undefined length (an
    undefined-length UN holds implicit-VR items)."""
    if length != _UNDEFINED:
        return start + length
    if vr not in (b"", b"SQ", b"UN"):
        raise _Unusual  # encapsulated values outside PixelData
    explicit = explicit and vr != b"UN"
    pos = start
    while True:
        tag, _, length, pos = _element(data, pos, False)
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise _Unusual
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # an item of undefined length: its elements up to the item delimiter
            tag, vr, length, value = _element(data, pos, explicit)
            if tag == _ITEM_END:
                pos = value
                break
            pos = _skip(data, value, vr, length, explicit)


def _walk_meta(data: bytes, out: dict[int, bytes]) -> int:
    """Collect the file meta group's wanted values (explicit VR); returns where the data set starts."""
    pos, end = 132, len(data)
    while True:
        if pos + 12 > end:
            raise _Truncated
        group, element, vr, length = _EXPLICIT_ELEMENT.unpack_from(data, pos)
        if group != 2:
            return pos
        value = pos + 8
        if vr in _LONG_VRS:
            length, value = _LENGTH.unpack_from(data, pos + 8)[0], pos + 12
            if length == _UNDEFINED:
                raise _Unusual
        elif vr not in _SHORT_VRS:
            raise _Unusual
        tag = group << 16 | element
        if tag in (_MEDIA_CLASS, _SYNTAX):
            if value + length > end:
                raise _Truncated
            out[tag] = data[value:value + length]
        pos = value + length


def _walk_dataset(data: bytes, pos: int, explicit: bool, out: dict[int, bytes], pixels: bool,
                  complete: bool) -> tuple[int, int] | None:
    """Collect the data set's wanted top-level values; with ``pixels``, returns (offset, length) of a native
    PixelData value (None where there is none, or it is encapsulated). The hot loop of a series' read: the
    common element is decoded inline (about 40 a slice)."""
    end, last = len(data), _PIXEL_DATA if pixels else _LAST_HEADER_TAG
    unpack = _EXPLICIT_ELEMENT.unpack_from if explicit else _IMPLICIT_ELEMENT.unpack_from
    previous = -1
    while True:
        if pos + 12 > end:  # near the end: element by element, with every bound checked
            if pos == end and complete:
                return None
            tag, vr, length, value = _element(data, pos, explicit)
        elif explicit:
            group, element, vr, length = unpack(data, pos)
            tag, value = group << 16 | element, pos + 8
            if vr in _LONG_VRS:
                length, value = _LENGTH.unpack_from(data, pos + 8)[0], pos + 12
            elif vr not in _SHORT_VRS:
                raise _Unusual
        else:
            group, element, length = unpack(data, pos)
            tag, vr, value = group << 16 | element, b"", pos + 8
        if tag <= previous:  # out of order (not conformant): stopping at the first tag past the last wanted
            raise _Unusual   # one could miss a wanted value, so pydicom reads the whole file
        previous = tag
        if tag > last or tag == _PIXEL_DATA:
            if tag != _PIXEL_DATA or not pixels or length == _UNDEFINED:
                return None
            if explicit and vr not in _LONG_VRS:
                raise _Unusual
            if value + length > end:
                raise _TruncatedPixels
            return value, length
        if length == _UNDEFINED:
            if tag in _WANTED:
                raise _Unusual
            pos = _skip(data, value, vr, length, explicit)
            continue
        if tag in _WANTED:
            if value + length > end:
                raise _Truncated
            out[tag] = data[value:value + length]
        pos = value + length


def _text(raw: bytes, codec: str = "latin_1") -> str:
    return raw.decode(codec, errors="replace").rstrip("\0 ")


def _numbers(raw: bytes | None) -> tuple[float, ...] | None:
    """A DS value's numbers; None where absent, empty or not numbers (pydicom's path then decides)."""
    if not raw:
        return None
    try:
        return tuple(map(float, raw.split(b"\\")))  # float() takes bytes and ignores the padding spaces
    except ValueError:
        try:
            return tuple(map(float, raw.rstrip(b"\0 ").split(b"\\")))
        except ValueError:
            return None


def _ushort(raw: bytes | None) -> int | None:
    return struct.unpack_from("<H", raw)[0] if raw is not None and len(raw) >= 2 else None


def _fast_is_image(raw: _Raw) -> bool:
    v = raw.values
    return _text(v.get(_SOP_CLASS, b"")) != SEG_SOP_CLASS and _ROWS in v and _POSITION in v and _ORIENTATION in v


def _fast_slice(path: Path, raw: _Raw) -> Slice | None:
    """The slice a plain single-frame image file describes, or None where pydicom should read it (a file
    that is no such image, an empty or unusual value): its messages and conversions are the reference."""
    v = raw.values
    codec = _TEXT_CODECS.get(_text(v.get(_CHARSET, b"")))
    if codec is None or not _fast_is_image(raw):
        return None
    frames = v.get(_FRAMES)
    if frames is not None and frames.strip(b"\0 ") not in (b"", b"1"):
        return None
    rows, columns = _ushort(v.get(_ROWS)), _ushort(v.get(_COLUMNS))
    position, orientation = _numbers(v.get(_POSITION)), _numbers(v.get(_ORIENTATION))
    spacing = _numbers(v[_PIXEL_SPACING]) if _PIXEL_SPACING in v else (1.0, 1.0)
    uid, sop = _text(v.get(_SERIES, b"")), _text(v.get(_SOP_INSTANCE, b""))
    description = _text(v.get(_DESCRIPTION, b""), codec)
    if (rows is None or columns is None or position is None or len(position) != 3 or orientation is None
            or len(orientation) != 6 or spacing is None or len(spacing) != 2
            or "\\" in uid + sop + description):
        return None
    return Slice(path, sop, uid, description, rows, columns, spacing, position, orientation)


@dataclass(frozen=True)
class _Pixels:
    """One slice's stored values (None: decoded later, by pydicom or GDCM) and its modality rescale."""

    stored: np.ndarray | None
    slope: float
    intercept: float


def _fast_pixels(raw: _Raw) -> _Pixels | None:
    """Native little-endian words that use all their bits, read straight from the file's bytes; None where a
    decoder is needed (pydicom's path) or a value is unusual."""
    v = raw.values
    bits, stored_bits, signed = _ushort(v.get(_BITS)), _ushort(v.get(_BITS_STORED)), _ushort(v.get(_SIGNED))
    samples = _ushort(v.get(_SAMPLES)) if _SAMPLES in v else 1
    slope = _numbers(v[_SLOPE]) if v.get(_SLOPE) else (1.0,)
    intercept = _numbers(v[_INTERCEPT]) if v.get(_INTERCEPT) else (0.0,)
    if (raw.pixels is None or raw.syntax not in _NATIVE_SYNTAXES or bits not in (8, 16, 32)
            or stored_bits != bits or signed not in (0, 1) or samples != 1 or slope is None or intercept is None
            or len(slope) != 1 or len(intercept) != 1):
        return None
    rows, columns = _ushort(v[_ROWS]), _ushort(v[_COLUMNS])
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    offset, length = raw.pixels
    if length < rows * columns * dtype.itemsize:
        return None
    stored = np.frombuffer(raw.data, dtype, count=rows * columns, offset=offset).reshape(rows, columns)
    return _Pixels(stored, slope[0] or 1.0, intercept[0])


# --- finding DICOM files and series folders --------------------------------------------------------------

def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: ``DICM`` after the 128-byte preamble (whatever its name or ending)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _listing(folder: Path) -> tuple[list[str], tuple]:
    """The folder's file names (sorted, no dot files) and its state: its path, then name, size, mtime and
    inode of each file. The caches are keyed by the state, so that a file added, removed, replaced or
    rewritten in place (its size or its modification time changes) is read again."""
    with os.scandir(folder) as entries:
        files = [e for e in entries if not e.name.startswith(".") and e.is_file()]
    state = sorted((e.name, st.st_size, st.st_mtime_ns, st.st_ino) for e, st in ((e, e.stat()) for e in files))
    return [item[0] for item in state], (os.path.abspath(folder), tuple(state))


def _files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))


def is_series_folder(folder: Path) -> bool:
    """A folder whose DICOM files include image slices, or hold no image at all (a DICOMDIR, a report: read
    as a series, they are reported by name); a folder of DICOM-SEGs holds labels. Reads the first few DICOM
    headers only; records the series it sees for DICOM-SEG references."""
    if not folder.is_dir():
        return False
    seen = 0
    with os.scandir(folder) as entries:  # the entries' types come with the listing: no stat of every file
        names = sorted(e.name for e in entries if not e.name.startswith(".") and e.is_file())
    for name in names:
        f = folder / name
        if image_ending(f) not in (None, ".dcm"):
            continue
        try:
            raw = _fast_read(f, pixels=False)
        except OSError:  # unreadable: as a file that is no DICOM file
            continue
        except DicomError:  # a truncated file is reported when the series is read
            return True
        if raw is None:
            if not is_dicom_file(f):
                continue
            try:
                ds = _read_header(f)
            except Exception:  # an unreadable file is reported when the series is read
                return True
            image, sop_class = _is_image(ds), str(ds.get("SOPClassUID", ""))
            uid = str(ds.get("SeriesInstanceUID", ""))
        else:
            image, sop_class = _fast_is_image(raw), _text(raw.values.get(_SOP_CLASS, b""))
            uid = _text(raw.values.get(_SERIES, b""))
        seen += 1
        if image:
            _remember(uid, folder)
            return True
        if sop_class == SEG_SOP_CLASS or seen >= 4:
            return False
    return seen > 0


def _remember(uid: str, folder: Path) -> None:
    """Record where series ``uid`` was last seen, for DICOM-SEG references (checked again when used)."""
    with _lock:
        if len(_known_series) > 100_000:
            _known_series.clear()
        _known_series[uid] = folder


def _read_header(path: Path):
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True)


def _is_image(ds) -> bool:
    return (str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS and "Rows" in ds
            and "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds)


def describe_dicom_file(path: Path) -> str:
    """What a DICOM file holds, for a message about a file given where a series was expected."""
    try:
        ds = _read_header(path)
    except Exception as e:
        return f"not a readable DICOM file ({_first_line(e)})"
    if _is_image(ds):
        return "a single DICOM slice (a series is read from its folder)"
    if str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS:
        return "a DICOM-SEG (a segmentation, not a scan)"
    return _what_it_is(path, ds)


def _what_it_is(path: Path, ds) -> str:
    """Which kind of DICOM object a file holds, for messages (``a DICOMDIR``, ``Basic Text SR Storage``)."""
    from pydicom.uid import UID

    media = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    sop = str(ds.get("SOPClassUID", "")) or media
    if media == "1.2.840.10008.1.3.10" or path.name.upper() == "DICOMDIR":
        return "a DICOMDIR (an index of a DICOM medium, not an image)"
    name = UID(sop).name if sop else "an unknown DICOM object"
    if ".88." in sop:
        return f"a structured report ({name}), not an image"
    return f"{name}, not an image slice with a position"


# --- series: discovery, ordering, geometry -----------------------------------------------------------

def list_series(folder: Path, pixels: dict[Path, _Pixels] | None = None,
                names: list[str] | None = None) -> dict[str, list[Slice]]:
    """Every image slice of ``folder`` (of its files ``names``, where given) by SeriesInstanceUID; raises for a
    DICOM file that holds no image. With ``pixels``, each file is read whole (one read per file: header and
    pixels) and its stored values are kept there by path."""
    by_uid: dict[str, list[Slice]] = {}
    for f in _files(folder) if names is None else [folder / name for name in names]:
        try:
            raw = _fast_read(f, pixels is not None)
        except OSError:  # as a file that is no DICOM file
            continue
        item = _fast_slice(f, raw) if raw is not None else None
        if item is not None and pixels is not None:
            pixels[f] = _fast_pixels(raw) or _decoded_pixels(f)
        elif item is None:
            if raw is None and not is_dicom_file(f):
                continue
            item = _slice_by_pydicom(folder, f, pixels)
        by_uid.setdefault(item.series_uid, []).append(item)
    for uid in by_uid:
        _remember(uid, folder)
    return by_uid


def _slice_by_pydicom(folder: Path, f: Path, pixels: dict[Path, _Pixels] | None) -> Slice:
    """A file the fast path leaves to pydicom: its slice (and, with ``pixels``, its values decoded by pydicom
    where it can), or the :class:`DicomError` that says what the file is."""
    import pydicom

    try:
        ds = _read_header(f) if pixels is None else pydicom.dcmread(f)
    except Exception as e:
        raise DicomError(f"{f.name}: not a readable DICOM file ({_first_line(e)}); remove or replace "
                         "it") from None
    if not _is_image(ds):
        raise DicomError(f"{f.name} in the series folder {folder.name}/ is {_what_it_is(f, ds)}: move it "
                         f"out of the folder (a series folder holds the slices of one series only)")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise DicomError(f"{f.name}: a multi-frame DICOM image ({ds.NumberOfFrames} frames in one file); "
                         f"only one slice per file is read: export the series as single-frame files, or "
                         f"convert it to NIfTI (e.g. with dcm2niix)")
    if pixels is not None:
        pixels[f] = _dataset_pixels(ds)
    uid = str(ds.get("SeriesInstanceUID", ""))
    return Slice(f, str(ds.get("SOPInstanceUID", "")), uid, str(ds.get("SeriesDescription", "") or ""),
                 int(ds.Rows), int(ds.Columns), tuple(float(v) for v in ds.get("PixelSpacing", (1.0, 1.0))),
                 tuple(float(v) for v in ds.ImagePositionPatient), tuple(float(v) for v in ds.ImageOrientationPatient))


def _dataset_pixels(ds) -> _Pixels:
    """A pydicom data set's stored values and its modality rescale; no values where pydicom cannot decode
    them, or for colour pixels (GDCM reads those)."""
    try:
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            return _Pixels(None, slope, intercept)
        return _Pixels(_slice_pixels(ds), slope, intercept)
    except Exception:  # pydicom cannot decode these: GDCM can
        return _Pixels(None, 1.0, 0.0)


def _decoded_pixels(path: Path) -> _Pixels:
    """A slice whose pixels the fast path leaves to a decoder (compressed, packed, 12 bits): pydicom's."""
    import pydicom

    try:
        return _dataset_pixels(pydicom.dcmread(path))
    except Exception:
        return _Pixels(None, 1.0, 0.0)


def series_listing(by_uid: dict[str, list[Slice]]) -> str:
    """The series by description and slice count, then their UIDs in the same order (descriptions first: a
    message cut short still names every series)."""
    ordered = sorted(by_uid.items(), key=lambda item: (item[1][0].description, item[0]))
    return (", ".join(f"'{s[0].description}' ({len(s)} slices)" for _, s in ordered)
            + "; UIDs in that order: " + ", ".join(uid for uid, _ in ordered))


def pick_series(folder: Path, by_uid: dict[str, list[Slice]], choice: str | None) -> str:
    """The UID to read: the only series, or the one ``--series`` names (UID or description)."""
    if not by_uid:
        raise DicomError(f"{folder.name}/ holds no DICOM image files")
    if len(by_uid) == 1:
        return next(iter(by_uid))
    hits = [u for u, s in by_uid.items() if choice and (choice == u or choice.lower() == s[0].description.lower())]
    if len(hits) == 1:
        return hits[0]
    named = f" ({SERIES_FLAG} '{choice}' names {'several' if hits else 'none'} of them)" if choice else ""
    raise DicomError(f"{len(by_uid)} DICOM series in one folder{named}, pick one with {SERIES_FLAG} DESCRIPTION "
                     f"or UID (or give each a folder): {series_listing(by_uid)}")


def order_series(folder: Path, slices: list[Slice]) -> Series:
    """The slices ordered along the slice normal, with the grid they span; raises where one regular grid
    would misplace them (mixed orientation or size, duplicates, non-uniform spacing, gantry tilt)."""
    first = slices[0]
    where = f"{folder.name}/ (series {first.series_uid})"
    # every slice against the first at once (allclose's tolerances: a loop of allclose calls cost 0.1 ms a slice)
    grid = np.array([s.orientation for s in slices]), np.array([s.pixel_spacing for s in slices])
    alike = ((np.array([(s.rows, s.columns) for s in slices]) == (first.rows, first.columns)).all(axis=1)
             & (np.abs(grid[0] - grid[0][0]) <= COSINE_ATOL + 1e-5 * np.abs(grid[0][0])).all(axis=1)
             & (np.abs(grid[1] - grid[1][0]) <= 1e-8 + 1e-4 * np.abs(grid[1][0])).all(axis=1))
    if not alike.all():
        s = slices[int(np.argmin(alike))]
        raise DicomError(f"{where}: slices of different size, orientation or pixel spacing ({first.path.name}: "
                         f"{first.rows}x{first.columns}, {s.path.name}: {s.rows}x{s.columns}); a localizer or "
                         f"a second series under the same UID? Keep one stack of parallel slices")
    row, col = np.array(first.orientation[:3]), np.array(first.orientation[3:])
    normal = np.cross(row, col)
    along = np.array([s.position for s in slices]) @ normal
    order = np.argsort(along, kind="stable")
    ordered, depth = [slices[i] for i in order], along[order]
    if len(ordered) < 2:
        raise DicomError(f"{where}: a single slice ({first.path.name}); a 3D series needs two or more")
    steps = np.diff(depth)
    if np.any(steps < 1e-3):
        i = int(np.argmin(steps))
        raise DicomError(f"{where}: two slices at the same position ({ordered[i].path.name}, "
                         f"{ordered[i + 1].path.name}); several time points or echoes in one series? Keep one")
    step = float(np.median(steps))
    if np.max(np.abs(steps - step)) > SPACING_RTOL * step:
        raise DicomError(f"{where}: non-uniform slice spacing (steps from {steps.min():.3g} to {steps.max():.3g} "
                         f"mm, median {step:.3g}; missing slices?): add the missing files, or resample the series "
                         f"to uniform spacing (e.g. dcm2niix) and give the NIfTI file")
    span = np.array(ordered[-1].position) - np.array(ordered[0].position)
    lateral = span - np.dot(span, normal) * normal
    tilt = float(np.degrees(np.arctan2(np.linalg.norm(lateral), abs(np.dot(span, normal)))))
    if tilt > TILT_DEGREES:
        raise DicomError(f"{where}: gantry tilt of {tilt:.2f} degrees (the slices are not stacked along their "
                         f"normal), which a regular grid would shear: convert with tilt correction (e.g. "
                         f"dcm2niix) and give the NIfTI file")
    direction = np.column_stack([row, col, normal])
    return Series(folder, first.series_uid, first.description, tuple(ordered),
                  (first.pixel_spacing[1], first.pixel_spacing[0], step), tuple(ordered[0].position),
                  tuple(float(v) for v in direction.ravel()))


# Caches, keyed by the folder's state (every file's name, size, modification time and inode: see
# _listing), so that a long-lived process never serves a series whose files have changed since.
GEOMETRY_CACHE_ENTRIES = 4096
_geometry_cache: dict[tuple, Series] = {}
# The series read last, so that the conversion after the checks reads no file twice (bounded: large
# datasets are read again, small ones once).
PIXEL_CACHE_BYTES = 512 * 2 ** 20
_pixel_cache: OrderedDict[tuple, ImageData] = OrderedDict()
_pixel_cache_bytes = 0


def clear_caches() -> None:
    """Forget every series seen (geometry, pixels, DICOM-SEG references): the next read starts afresh."""
    global _pixel_cache_bytes
    with _lock:
        _geometry_cache.clear()
        _pixel_cache.clear()
        _pixel_cache_bytes = 0
        _known_series.clear()


def _chosen(folder: Path, state: tuple, by_uid: dict[str, list[Slice]], uid: str | None,
            choice: str | None) -> Series:
    if uid is not None and uid not in by_uid:
        raise _MissingSeries(f"{folder.name}/ holds no series {uid}")
    series = order_series(folder, by_uid[uid if uid is not None else pick_series(folder, by_uid, choice)])
    with _lock:
        if len(_geometry_cache) >= GEOMETRY_CACHE_ENTRIES:
            _geometry_cache.clear()
        _geometry_cache[(state, choice, uid)] = series
    return series


def read_series_geometry(folder: Path, uid: str | None = None, series: str | None = None) -> Series:
    """Series ``uid`` of ``folder``, else the one ``series`` (``--series``: UID or description) names where the
    folder holds several, from headers only (kept per folder state and choice)."""
    names, state = _listing(folder)
    with _lock:
        cached = _geometry_cache.get((state, series, uid))
    return cached if cached is not None else _chosen(folder, state, list_series(folder, names=names), uid, series)


def read_series(folder: Path, series: str | None = None) -> ImageData:
    """The series' pixels (``series``, as ``--series``, picks one where the folder holds several), slices in
    position order, with each slice's rescale slope and intercept applied (as ITK applies them). One read
    per file (native little-endian words straight from the bytes, else pydicom's decoders); SimpleITK's
    series reader (GDCM) where pydicom cannot decode the pixels (compressed transfer syntaxes without a
    pydicom decoder) or a pixel has several samples."""
    names, state = _listing(folder)
    key = (state, series)
    with _lock:
        if key in _pixel_cache:
            _pixel_cache.move_to_end(key)
            return _pixel_cache[key]
    pixels: dict[Path, _Pixels] = {}
    chosen = _chosen(folder, state, list_series(folder, pixels, names), None, series)
    array = _stack_pixels([pixels[s.path] for s in chosen.slices])
    components = 1
    if array is None:
        try:
            array, components = _itk_pixels(chosen)
        except RuntimeError as e:  # ITK's message names its source file, not ours
            useful = [line for line in str(e).splitlines() if "ERROR" in line] or [_first_line(e)]
            raise DicomError(f"{folder.name}/: the pixels of its slices cannot be read, by pydicom or GDCM "
                             f"({useful[-1].strip()[:160]}); a file truncated or damaged? Copy the series "
                             f"again, or convert it to NIfTI (e.g. with dcm2niix)") from None
    if array.shape[:3] != chosen.shape:
        raise DicomError(f"{folder.name}/: pixels of shape {array.shape[:3]} where the headers describe "
                         f"{chosen.shape}")
    array.flags.writeable = False  # shared by the checks and the conversion: read once, never changed
    data = ImageData(array=array, spacing=chosen.spacing, origin=chosen.origin, direction=chosen.direction,
                     components=components)
    global _pixel_cache_bytes
    with _lock:
        if key not in _pixel_cache:
            _pixel_cache[key] = data
            _pixel_cache_bytes += data.array.nbytes
        while _pixel_cache_bytes > PIXEL_CACHE_BYTES and len(_pixel_cache) > 1:
            _pixel_cache_bytes -= _pixel_cache.popitem(last=False)[1].array.nbytes
    return data


def _stack_pixels(slices: list[_Pixels]) -> np.ndarray | None:
    """The slices' stored values with the modality rescale: the stored type where every slope is 1 and every
    intercept 0, else float64 (as ITK's GDCM reader returns them). None where a slice was left to GDCM, or
    the slices differ in size or type."""
    if any(p.stored is None for p in slices) or len({(p.stored.shape, p.stored.dtype) for p in slices}) != 1:
        return None
    stored = np.stack([p.stored for p in slices])
    slope = np.array([p.slope for p in slices])
    intercept = np.array([p.intercept for p in slices])
    if np.all(slope == 1) and np.all(intercept == 0):
        return stored
    values = np.multiply(stored, slope[:, None, None], dtype=np.float64)  # one pass, as float64
    if np.any(intercept != 0):
        values += intercept[:, None, None]
    return values


def _slice_pixels(ds) -> np.ndarray:
    """One slice's stored values: read straight from the bytes where they are native little-endian words
    that use all their bits (4x faster than pydicom's decoder framework), else decoded by pydicom."""
    bits = int(ds.get("BitsAllocated", 0))
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if syntax in _NATIVE_SYNTAXES and bits in (8, 16, 32) and int(ds.get("BitsStored", bits)) == bits:
        dtype = np.dtype(f"<{'i' if int(ds.get('PixelRepresentation', 0)) else 'u'}{bits // 8}")
        return np.frombuffer(ds.PixelData, dtype, count=int(ds.Rows) * int(ds.Columns)).reshape(ds.Rows, ds.Columns)
    return ds.pixel_array


def _itk_pixels(series: Series) -> tuple[np.ndarray, int]:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(s.path) for s in series.slices])
    reader.MetaDataDictionaryArrayUpdateOff()
    image = reader.Execute()
    return sitk.GetArrayFromImage(image), image.GetNumberOfComponentsPerPixel()


def series_image(folder: Path, series: str | None = None):
    """The series (``series`` picks one where the folder holds several) as a SimpleITK image (for writing it as
    NIfTI into the work folder)."""
    import SimpleITK as sitk

    data = read_series(folder, series)
    image = sitk.GetImageFromArray(data.array, isVector=data.components > 1)
    image.SetSpacing(data.spacing)
    image.SetOrigin(data.origin)
    image.SetDirection(data.direction)
    return image


def read_dicom(path: Path, series: str | None = None) -> ImageData:
    """A series folder's pixels (``series``: the one to read where it holds several), or a ``.dcm`` file (a
    DICOM-SEG) on its series' grid."""
    return read_series(path, series) if path.is_dir() else read_dicom_file(path)


def read_dicom_header(path: Path, series: str | None = None) -> ImageHeader:
    """The grid of a series folder (headers only; ``series`` as for :func:`read_dicom`) or of a DICOM-SEG (its
    series' grid)."""
    if path.is_dir():
        grid = read_series_geometry(path, series=series)
        return ImageHeader(grid.spacing, grid.origin, grid.direction, 1, shape=grid.shape)
    data = read_dicom_file(path)
    return ImageHeader(data.spacing, data.origin, data.direction, 1, shape=data.shape)


# --- single DICOM files: DICOM-SEG labels, and the files that are no image of ours ------------------------

def read_dicom_file(path: Path) -> ImageData:
    """A ``.dcm`` file given as an image or label: a DICOM-SEG is read onto its series' grid; anything else
    raises a :class:`DicomError` saying what the file is."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as e:
        raise DicomError(f"not a readable DICOM file ({_first_line(e)})") from None
    if str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS:
        return read_seg(path)
    if _is_image(ds):
        raise DicomError("a single DICOM slice: a series is read from its folder; put the slices of each "
                         "series in a folder of their own (images/CASE/*.dcm)")
    raise DicomError(f"{_what_it_is(path, ds)}; give the series folder (or a DICOM-SEG as the label)")


def read_seg(path: Path) -> ImageData:
    """A DICOM-SEG as a label map on the grid of the series it references: voxel = segment number (the
    labelmap value for a LABELMAP SEG). Overlapping segments, fractional SEGs and frames off the series'
    slices are errors."""
    import pydicom

    ds = pydicom.dcmread(path)
    refs = [str(r.SeriesInstanceUID) for r in ds.get("ReferencedSeriesSequence", [])]
    found = _referenced_series(refs)
    if found is None:
        raise DicomError(f"the DICOM-SEG references series {', '.join(refs) or '(none)'}, which is not among "
                         f"the series folders given; keep the SEG with the case of its source series")
    uid, series = found
    folder = series.folder
    kind = str(ds.get("SegmentationType", "BINARY"))
    if kind == "FRACTIONAL":
        raise DicomError("a FRACTIONAL DICOM-SEG (probabilities); export a BINARY or LABELMAP segmentation")
    frames = ds.pixel_array
    if frames.ndim == 2:
        frames = frames[None]
    shared = ds.SharedFunctionalGroupsSequence[0]
    per_frame = ds.PerFrameFunctionalGroupsSequence
    label = np.zeros(series.shape, dtype=np.uint16 if kind == "LABELMAP" else np.uint8)
    origin = np.array(series.origin)
    axes = np.array(series.direction).reshape(3, 3)
    depth = np.array([np.dot(s.position, series.normal) for s in series.slices])
    for i, group in enumerate(per_frame):
        orientation = _group_item(group, shared, "PlaneOrientationSequence").ImageOrientationPatient
        spacing = _group_item(group, shared, "PixelMeasuresSequence").PixelSpacing
        plane = _group_item(group, shared, "PlanePositionSequence")
        position = np.array([float(v) for v in plane.ImagePositionPatient])
        k = int(np.argmin(np.abs(depth - np.dot(position, series.normal))))
        offset = position - np.array(series.slices[k].position)
        on_grid = (np.allclose([float(v) for v in orientation], series.slices[0].orientation, atol=COSINE_ATOL)
                   and np.allclose([float(v) for v in spacing], series.slices[0].pixel_spacing, rtol=1e-4)
                   and np.linalg.norm(offset) < 0.01 * min(series.spacing)
                   and frames.shape[1:] == series.shape[1:])
        if not on_grid:
            where = np.linalg.solve(axes, position - origin) / np.array(series.spacing)
            voxel = (np.round(where, 2) + 0.0).tolist()
            raise DicomError(f"frame {i + 1} of the DICOM-SEG is not on a slice of series {uid} in {folder.name}/ "
                             f"(its position is at voxel {voxel} of the series' grid, its size {frames.shape[1:]} "
                             f"against {series.shape[1:]}): a label must lie on its series' grid; export the "
                             f"segmentation on the source series")
        if kind == "LABELMAP":
            label[k] = frames[i]
            continue
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        mask = frames[i] > 0
        clash = np.count_nonzero(mask & (label[k] > 0) & (label[k] != number))
        if clash:
            raise DicomError(f"segments {int(label[k][mask & (label[k] > 0)].max())} and {number} overlap in "
                             f"{clash} voxel(s) of slice {k}: a label map needs one label per voxel; export "
                             f"non-overlapping segments")
        label[k][mask] = number
    return ImageData(array=label, spacing=series.spacing, origin=series.origin, direction=series.direction,
                     components=1)


def _referenced_series(uids: list[str]) -> tuple[str, Series] | None:
    """The first of ``uids`` that a series folder seen so far holds now, with its grid. A folder that no
    longer holds the series (moved, deleted, rewritten) is forgotten; where no folder holds one, every folder
    seen is listed in full (a series not first in its folder is known only then)."""
    for rescan in (False, True):
        if rescan:
            with _lock:
                seen = set(_known_series.values())
            for folder in seen:
                try:
                    list_series(folder)
                except (DicomError, OSError):
                    continue
        for uid, folder in _series_folders(uids):
            try:
                return uid, read_series_geometry(folder, uid)
            except (_MissingSeries, FileNotFoundError, NotADirectoryError):
                with _lock:
                    if _known_series.get(uid) == folder:
                        del _known_series[uid]
    return None


def _series_folders(uids: list[str]) -> list[tuple[str, Path]]:
    with _lock:
        return [(u, _known_series[u]) for u in uids if u in _known_series]


def _group_item(group, shared, name: str):
    if name in group:
        return getattr(group, name)[0]
    return getattr(shared, name)[0]


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:160]
