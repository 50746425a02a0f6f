"""Multi-frame DICOM images (Enhanced MR/CT, Legacy Converted Enhanced, ...): one file, each slice a frame.

Each frame's geometry lies in the functional groups, per frame or shared by all: its position
(PlanePositionSequence), orientation (PlaneOrientationSequence), pixel spacing (PixelMeasuresSequence) and
modality rescale (PixelValueTransformationSequence, applied per frame as ITK and highdicom apply it). The
frames become the slices of a series like any other: placed by position (never by their order in the file)
and checked the same way (spacing, tilt, the label's grid). A file whose frames are not one volume (several
echoes, time points, stacks or b-values, frames that share a position) is refused, saying what it holds:
never stacked silently.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg_auto.ingest.dicom.base import DicomError, Slice
from medseg_auto.ingest.dicom.identify import _frames, _what_it_is
from medseg_auto.ingest.dicom.pixels import _native_words, _Pixels

_FIX = "or convert it to NIfTI (e.g. with dcm2niix) and give the NIfTI file"
# What tells frames apart besides their position: (what, functional group, attribute) ...
_CONTENT = (("stack", "FrameContentSequence", "StackID"),
            ("time point", "FrameContentSequence", "TemporalPositionIndex"),
            ("echo time", "MREchoSequence", "EffectiveEchoTime"),
            ("b-value", "MRDiffusionSequence", "DiffusionBValue"))
# ... and what a legacy converted image keeps of its source slices' attributes, per frame
_CONVERTED = "UnassignedPerFrameConvertedAttributesSequence"
_CONVERTED_CONTENT = (("time point", "TemporalPositionIdentifier"), ("echo time", "EchoTime"),
                      ("b-value", "DiffusionBValue"))
_NOUN = {"echo time": "echo"}  # what to export, for the message


def _groups(ds):
    """The shared functional groups item (None where absent) and the per-frame items (None where absent)."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    return (shared[0] if shared else None), ds.get("PerFrameFunctionalGroupsSequence")


def _item(group, shared, sequence: str):
    """The first item of ``sequence`` in a frame's functional groups, else in the shared ones; None if neither."""
    for g in (group, shared):
        if g is not None and sequence in g:
            items = g[sequence].value
            if items:
                return items[0]
    return None


def _value(group, shared, sequence: str, name: str, top=None):
    """Attribute ``name`` of a frame's (else the shared) ``sequence`` item, else of the data set ``top``."""
    item = _item(group, shared, sequence)
    if item is not None and item.get(name) not in (None, ""):
        return item.get(name)
    if top is not None and top.get(name) not in (None, ""):
        return top.get(name)
    return None


def _floats(value, n: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == n else None


def _text(value) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value).strip()
    return f"{number:g}"


def frame_slices(path: Path, ds) -> list[Slice]:
    """One :class:`Slice` per frame of the multi-frame image ``ds`` (read from ``path``), in the file's order,
    with its position, orientation and pixel spacing from the functional groups and what tells it apart
    from the other frames (``content``). Raises where a frame's place is not known."""
    n = _frames(ds)
    shared, per_frame = _groups(ds)
    if per_frame is None or len(per_frame) != n:
        found = "no per-frame functional groups" if per_frame is None else f"{len(per_frame)} per-frame groups"
        raise DicomError(f"{path.name}: a multi-frame DICOM image ({n} frames, {_what_it_is(path, ds, named=True)}) "
                         f"without the position of each frame ({found}); export the series as single-frame files "
                         f"or as an Enhanced image, {_FIX}")
    uid, sop = str(ds.get("SeriesInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))
    description = str(ds.get("SeriesDescription", "") or "")
    rows, columns = int(ds.Rows), int(ds.Columns)
    slices = []
    for i, group in enumerate(per_frame):
        position = _floats(_value(group, shared, "PlanePositionSequence", "ImagePositionPatient"), 3)
        orientation = _floats(_value(group, shared, "PlaneOrientationSequence", "ImageOrientationPatient", ds), 6)
        spacing = _value(group, shared, "PixelMeasuresSequence", "PixelSpacing", ds)
        spacing = (1.0, 1.0) if spacing is None else _floats(spacing, 2)
        if position is None or orientation is None or spacing is None:
            missing = ("position (PlanePositionSequence)" if position is None else
                       "orientation (PlaneOrientationSequence)" if orientation is None else
                       "pixel spacing (PixelMeasuresSequence)")
            raise DicomError(f"{path.name}: frame {i + 1} of the multi-frame image has no readable {missing}; "
                             f"export the series again, {_FIX}")
        content = [(what, _text(v)) for what, sequence, name in _CONTENT
                   if (v := _value(group, shared, sequence, name)) is not None]
        converted = _item(group, shared, _CONVERTED)
        if converted is not None:
            content += [(what, _text(converted.get(name))) for what, name in _CONVERTED_CONTENT
                        if converted.get(name) not in (None, "") and what not in dict(content)]
        slices.append(Slice(path, sop, uid, description, rows, columns, spacing, position, orientation,
                            frame=i, content=tuple(content)))
    return slices


def _rescale(group, shared, ds) -> tuple[float, float]:
    """A frame's (slope, intercept): its PixelValueTransformationSequence, else the shared one, else the data
    set's own, else none (1, 0)."""
    item = _item(group, shared, "PixelValueTransformationSequence")
    source = item if item is not None and "RescaleSlope" in item else ds
    return float(source.get("RescaleSlope", 1) or 1), float(source.get("RescaleIntercept", 0) or 0)


def frame_pixels(path: Path, ds) -> dict[tuple[Path, int], _Pixels]:
    """Each frame's stored values (native words straight from the bytes, else pydicom's decoder; none where
    pydicom cannot decode them, or for colour pixels: GDCM reads those) and its rescale, by (path, frame)."""
    shared, per_frame = _groups(ds)
    n = _frames(ds)
    rescale = [_rescale(group, shared, ds) for group in per_frame]
    try:
        stored = None
        if int(ds.get("SamplesPerPixel", 1)) == 1:
            stored = _native_words(ds, n)
            stored = ds.pixel_array if stored is None else stored
            if stored.shape[0] != n or stored.ndim != 3:
                stored = None
    except Exception:  # pydicom cannot decode these: GDCM can
        stored = None
    return {(path, i): _Pixels(None if stored is None else stored[i], *rescale[i]) for i in range(n)}


def check_one_volume(slices: list[Slice]) -> None:
    """Refuse the frames of one multi-frame file where they are not one volume: several values of what tells
    frames apart (echoes, time points, stacks, b-values), or frames that share a position."""
    first = slices[0]
    n = len(slices)
    m = len(np.unique(np.round(np.array([s.position for s in slices]), 3), axis=0))
    values: dict[str, list[str]] = {}
    for s in slices:
        for what, value in s.content:
            seen = values.setdefault(what, [])
            if value not in seen:
                seen.append(value)
    several = {what: v for what, v in values.items() if len(v) > 1}
    if m == n and not several:
        return
    holds = ", ".join(f"{len(v)} {what}s ({', '.join(sorted(v, key=_number)[:6])}{', ...' if len(v) > 6 else ''})"
                      for what, v in several.items())
    if not holds:
        holds = "frames that share positions, with nothing in the file that tells them apart"
    kinds = " or ".join(_NOUN.get(what, what) for what in several) or "set of frames"
    raise DicomError(f"{first.path.name}: a multi-frame image of {n} frames at {m} positions, holding {holds}; "
                     f"one image is one volume, never frames stacked at one position: export the {kinds} you "
                     f"want as a series of its own, or convert the file (e.g. with dcm2niix) and give the NIfTI "
                     f"file of one")


def _number(text: str) -> tuple[float, str]:
    try:
        return float(text), text
    except ValueError:
        return float("inf"), text
