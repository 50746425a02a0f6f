"""What a DICOM file holds: an image slice, a multi-frame image, a DICOM-SEG, or an object that is no image
(a DICOMDIR, a structured report), in words for the messages about a file found where an image was expected.
"""
from __future__ import annotations

from pathlib import Path

from medseg_auto.ingest.dicom.base import SEG_SOP_CLASS, first_line


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: ``DICM`` after the 128-byte preamble (whatever its name or ending)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _read_header(path: Path):
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True)


def _frames(ds) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def _is_image(ds) -> bool:
    """A single-frame image slice with its position (or a multi-frame file that claims one)."""
    return (str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS and "Rows" in ds
            and "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds)


def _is_multiframe_image(ds) -> bool:
    """A multi-frame image (Enhanced or Legacy Converted Enhanced MR/CT ...): its frames' geometry in the
    functional groups, or none at all (which its read reports)."""
    return str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS and "Rows" in ds and _frames(ds) > 1


def _kind(path: Path) -> tuple[str, bool] | None:
    """The file's SOP class and whether it is a multi-frame image, from its header alone (our fast reader,
    pydicom for what it leaves); None for a file that is no readable DICOM file."""
    from medseg_auto.ingest.dicom.fast_reader import _SOP_CLASS, _fast_is_multiframe, _fast_read, _text

    try:
        raw = _fast_read(path, pixels=False)
        if raw is not None:
            return _text(raw.values.get(_SOP_CLASS, b"")), _fast_is_multiframe(raw)
        if not is_dicom_file(path):
            return None
        ds = _read_header(path)
        return str(ds.get("SOPClassUID", "")), _is_multiframe_image(ds)
    except Exception:  # unreadable or truncated: reading it as an image or label says why
        return None


def is_multiframe_file(path: Path) -> bool:
    """A DICOM file holding a multi-frame image: a volume by itself (a scan), where a single slice or a
    DICOM-SEG is not."""
    kind = _kind(path)
    return kind is not None and kind[1]


def is_seg_file(path: Path) -> bool:
    """A DICOM-SEG (a label), whatever its name: its SOP class, read from the header alone."""
    kind = _kind(path)
    return kind is not None and kind[0] == SEG_SOP_CLASS


def describe_dicom_file(path: Path) -> str:
    """What a DICOM file holds, for a message about a file given where a series was expected."""
    try:
        ds = _read_header(path)
    except Exception as e:
        return f"not a readable DICOM file ({first_line(e)})"
    if _is_multiframe_image(ds):
        return (f"a multi-frame DICOM image ({_frames(ds)} frames, {_what_it_is(path, ds, named=True)}; it is "
                f"read as a series from a folder of its own)")
    if _is_image(ds):
        return "a single DICOM slice (a series is read from its folder)"
    if str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS:
        return "a DICOM-SEG (a segmentation, not a scan)"
    return _what_it_is(path, ds)


def _what_it_is(path: Path, ds, named: bool = False) -> str:
    """Which kind of DICOM object a file holds, for messages (``a DICOMDIR``, ``Basic Text SR Storage``);
    with ``named``, the SOP class's name alone."""
    from pydicom.uid import UID

    media = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    sop = str(ds.get("SOPClassUID", "")) or media
    if named:
        return UID(sop).name if sop else "an unknown SOP class"
    if media == "1.2.840.10008.1.3.10" or path.name.upper() == "DICOMDIR":
        return "a DICOMDIR (an index of a DICOM medium, not an image)"
    name = UID(sop).name if sop else "an unknown DICOM object"
    if ".88." in sop:
        return f"a structured report ({name}), not an image"
    return f"{name}, not an image slice with a position"
