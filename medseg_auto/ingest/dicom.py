"""DICOM in: a folder holding one series is one image; a DICOM-SEG file is a label on its series' grid.

Headers are read with pydicom (every file once, without pixels): they group the files by series, order
the slices by their position along the slice normal (never by file name) and find what would make the
volume wrong: several series in one folder, non-uniform slice spacing (missing slices), gantry tilt,
slices of different orientation or size, files that hold no image (a DICOMDIR, a structured report).
Each of these raises :class:`DicomError` with a message that names the folder or file, the problem and
how to fix it. The pixels are read by SimpleITK's series reader (GDCM: every transfer syntax, rescale
slope and intercept applied) in that order; the geometry is ours, from the headers, in ITK's terms.

A DICOM-SEG (read with pydicom) is placed frame by frame on the slices of the series it references, found
among the series folders seen so far; a frame that does not lie on one of its slices is an error, never
resampled.
"""
from __future__ import annotations

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


# --- finding DICOM files and series folders --------------------------------------------------------------

def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: ``DICM`` after the 128-byte preamble (whatever its name or ending)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))


def is_series_folder(folder: Path) -> bool:
    """A folder whose DICOM files include image slices, or hold no image at all (a DICOMDIR, a report: read
    as a series, they are reported by name); a folder of DICOM-SEGs holds labels. Reads the first few DICOM
    headers only; records the series it sees for DICOM-SEG references."""
    if not folder.is_dir():
        return False
    seen = 0
    for f in _files(folder):
        if image_ending(f) not in (None, ".dcm") or not is_dicom_file(f):
            continue
        seen += 1
        try:
            ds = _read_header(f)
        except Exception:  # an unreadable file is reported when the series is read
            return True
        if _is_image(ds):
            with _lock:
                _known_series.setdefault(str(ds.get("SeriesInstanceUID", "")), folder)
            return True
        if str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS or seen >= 4:
            return False
    return seen > 0


def _read_header(path: Path):
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True)  # specific_tags would be 3x slower


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

def list_series(folder: Path, datasets: dict[Path, object] | None = None) -> dict[str, list[Slice]]:
    """Every image slice of ``folder`` by SeriesInstanceUID; raises for a DICOM file that holds no image.
    With ``datasets``, each file is read whole (pixels too: one read per file) and kept there by path."""
    import pydicom

    by_uid: dict[str, list[Slice]] = {}
    for f in _files(folder):
        if not is_dicom_file(f):
            continue
        try:
            ds = _read_header(f) if datasets is None else pydicom.dcmread(f)
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
        uid = str(ds.get("SeriesInstanceUID", ""))
        if datasets is not None:
            datasets[f] = ds
        by_uid.setdefault(uid, []).append(Slice(
            f, str(ds.get("SOPInstanceUID", "")), uid, str(ds.get("SeriesDescription", "") or ""),
            int(ds.Rows), int(ds.Columns), tuple(float(v) for v in ds.get("PixelSpacing", (1.0, 1.0))),
            tuple(float(v) for v in ds.ImagePositionPatient), tuple(float(v) for v in ds.ImageOrientationPatient)))
    with _lock:
        for uid in by_uid:
            _known_series.setdefault(uid, folder)
    return by_uid


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
    for s in slices[1:]:
        if (s.rows, s.columns) != (first.rows, first.columns) or \
                not np.allclose(s.orientation, first.orientation, atol=COSINE_ATOL) or \
                not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=1e-4):
            raise DicomError(f"{where}: slices of different size, orientation or pixel spacing ({first.path.name}: "
                             f"{first.rows}x{first.columns}, {s.path.name}: {s.rows}x{s.columns}); a localizer or "
                             f"a second series under the same UID? Keep one stack of parallel slices")
    row, col = np.array(first.orientation[:3]), np.array(first.orientation[3:])
    normal = np.cross(row, col)
    ordered = sorted(slices, key=lambda s: float(np.dot(s.position, normal)))
    depth = np.array([np.dot(s.position, normal) for s in ordered])
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


_geometry_cache: dict[tuple, Series] = {}
# The series read last, so that the conversion after the checks reads no file twice (bounded: large
# datasets are read again, small ones once).
PIXEL_CACHE_BYTES = 512 * 2 ** 20
_pixel_cache: OrderedDict[tuple, ImageData] = OrderedDict()


def _chosen(folder: Path, by_uid: dict[str, list[Slice]], uid: str | None, choice: str | None) -> Series:
    if uid is not None and uid not in by_uid:
        raise DicomError(f"{folder.name}/ holds no series {uid}")
    series = order_series(folder, by_uid[uid if uid is not None else pick_series(folder, by_uid, choice)])
    with _lock:
        if len(_geometry_cache) > 4096:
            _geometry_cache.clear()
        _geometry_cache[_cache_key(folder, uid, choice)] = series
    return series


def _cache_key(folder: Path, uid: str | None, choice: str | None) -> tuple:
    return folder.resolve(), choice, uid, folder.stat().st_mtime_ns


def read_series_geometry(folder: Path, uid: str | None = None, series: str | None = None) -> Series:
    """Series ``uid`` of ``folder``, else the one ``series`` (``--series``: UID or description) names where the
    folder holds several, from headers only (kept per folder and choice)."""
    with _lock:
        cached = _geometry_cache.get(_cache_key(folder, uid, series))
    return cached if cached is not None else _chosen(folder, list_series(folder), uid, series)


def read_series(folder: Path, series: str | None = None) -> ImageData:
    """The series' pixels (``series``, as ``--series``, picks one where the folder holds several), slices in
    position order, with each slice's rescale slope and intercept applied (as ITK applies them). One read
    per file with pydicom; SimpleITK's series reader (GDCM) where pydicom cannot decode the pixels
    (compressed transfer syntaxes without a pydicom decoder) or a pixel has several samples."""
    key = _cache_key(folder, None, series)
    with _lock:
        if key in _pixel_cache:
            _pixel_cache.move_to_end(key)
            return _pixel_cache[key]
    datasets: dict[Path, object] = {}
    chosen = _chosen(folder, list_series(folder, datasets), None, series)
    try:
        array = _stack_pixels([datasets[s.path] for s in chosen.slices])
    except Exception:  # pydicom cannot decode these: GDCM can
        array = None
    components = 1
    if array is None:
        array, components = _itk_pixels(chosen)
    if array.shape[:3] != chosen.shape:
        raise DicomError(f"{folder.name}/: pixels of shape {array.shape[:3]} where the headers describe "
                         f"{chosen.shape}")
    array.flags.writeable = False  # shared by the checks and the conversion: read once, never changed
    data = ImageData(array=array, spacing=chosen.spacing, origin=chosen.origin, direction=chosen.direction,
                     components=components)
    with _lock:
        _pixel_cache[key] = data
        while sum(d.array.nbytes for d in _pixel_cache.values()) > PIXEL_CACHE_BYTES and len(_pixel_cache) > 1:
            _pixel_cache.popitem(last=False)
    return data


def _stack_pixels(datasets: list) -> np.ndarray | None:
    """The slices' stored values with the modality rescale: the stored type where every slope is 1 and every
    intercept 0, else float64 (as ITK's GDCM reader returns them). None for colour pixels."""
    if any(int(ds.get("SamplesPerPixel", 1)) != 1 for ds in datasets):
        return None
    stored = np.stack([_slice_pixels(ds) for ds in datasets])
    slope = np.array([float(ds.get("RescaleSlope", 1) or 1) for ds in datasets])
    intercept = np.array([float(ds.get("RescaleIntercept", 0) or 0) for ds in datasets])
    if np.all(slope == 1) and np.all(intercept == 0):
        return stored
    return stored.astype(np.float64) * slope[:, None, None] + intercept[:, None, None]


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
    folders = _series_folders(refs)
    if not folders:  # a series not first in its folder is known once the folder is listed in full
        with _lock:
            seen = set(_known_series.values())
        for folder in seen:
            try:
                list_series(folder)
            except DicomError:
                continue
        folders = _series_folders(refs)
    if not folders:
        raise DicomError(f"the DICOM-SEG references series {', '.join(refs) or '(none)'}, which is not among "
                         f"the series folders given; keep the SEG with the case of its source series")
    uid, folder = folders[0]
    series = read_series_geometry(folder, uid)
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
