"""Our own reader of plain DICOM files: little endian, explicit or implicit VR, single-frame images.

pydicom builds a Dataset of every element of every file (about 1 ms a slice with the value conversions we
need: 8 s of the 9 s ingest of the 200 hippocampus series, 7171 slices). A plain file is read here instead:
its elements are walked over the bytes (sequences skipped) and only the few values the geometry and the
pixels need are decoded (under 0.1 ms a slice, the read included). Anything else (big endian, deflated, a
malformed layout, an empty or unusual value, a character set other than Latin-1 or UTF-8) takes pydicom's
path, as does every file that is no single-frame image (a multi-frame image's geometry lies in sequences),
so that the messages and the values are pydicom's wherever the fast path is not sure. A file that ends inside
an element is named as truncated (pydicom reads what is there, and calls such a slice "not an image").
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg_auto.ingest.dicom.base import NATIVE_SYNTAXES, SEG_SOP_CLASS, DicomError, Slice
from medseg_auto.ingest.dicom.pixels import _Pixels

_IMPLICIT_LE = NATIVE_SYNTAXES[0]
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


def _fast_frames(raw: _Raw) -> int:
    """NumberOfFrames as stored (1 where absent or empty, 0 where unreadable)."""
    frames = raw.values.get(_FRAMES)
    text = frames.strip(b"\0 ") if frames is not None else b""
    try:
        return int(text) if text else 1
    except ValueError:
        return 0


def _fast_is_multiframe(raw: _Raw) -> bool:
    """A multi-frame image (its geometry in functional groups, read by pydicom), not a DICOM-SEG."""
    v = raw.values
    return _text(v.get(_SOP_CLASS, b"")) != SEG_SOP_CLASS and _ROWS in v and _fast_frames(raw) > 1


def _fast_pixels(raw: _Raw) -> _Pixels | None:
    """Native little-endian words that use all their bits, read straight from the file's bytes; None where a
    decoder is needed (pydicom's path) or a value is unusual."""
    v = raw.values
    bits, stored_bits, signed = _ushort(v.get(_BITS)), _ushort(v.get(_BITS_STORED)), _ushort(v.get(_SIGNED))
    samples = _ushort(v.get(_SAMPLES)) if _SAMPLES in v else 1
    slope = _numbers(v[_SLOPE]) if v.get(_SLOPE) else (1.0,)
    intercept = _numbers(v[_INTERCEPT]) if v.get(_INTERCEPT) else (0.0,)
    if (raw.pixels is None or raw.syntax not in NATIVE_SYNTAXES or bits not in (8, 16, 32)
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
