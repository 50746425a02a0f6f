"""DICOM series: the image files of a folder grouped into series, one chosen, ordered and read as one volume.

Every file of a series is read once, header and pixels together (plain files by :mod:`.fast_reader`, the rest
by pydicom). The headers group the files by series, order the slices by their position along the slice
normal (never by file name) and find what would make the volume wrong: several series in one folder,
non-uniform slice spacing (missing slices), gantry tilt, slices of different orientation or size, files that
hold no image (a DICOMDIR, a structured report). Each of these raises :class:`DicomError` with a message that
names the folder or file, the problem and how to fix it. A multi-frame image file (:mod:`.multiframe`) is a
series of its own, its frames the slices. The geometry is ours, from the headers, in ITK's terms.

Series read are kept for the process (geometry, and the pixels up to a bound, so that the conversion after
the checks reads no file again), keyed by the state of the folder's files: a file added, removed or
rewritten since is seen by the next read. The folders seen are recorded by series UID, for DICOM-SEG
references (:mod:`.seg`).
"""
from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from medseg_auto.ingest.dicom.base import (COSINE_ATOL, SEG_SOP_CLASS, SERIES_FLAG, SPACING_RTOL, TILT_DEGREES,
                                           DicomError, Series, Slice, _MissingSeries, first_line)
from medseg_auto.ingest.dicom.fast_reader import (_SERIES, _SOP_CLASS, _fast_is_image, _fast_is_multiframe,
                                                  _fast_pixels, _fast_read, _fast_slice, _text)
from medseg_auto.ingest.dicom.identify import (_is_image, _is_multiframe_image, _read_header, _what_it_is,
                                               is_dicom_file)
from medseg_auto.ingest.dicom.multiframe import check_one_volume, frame_pixels, frame_slices
from medseg_auto.ingest.dicom.pixels import _dataset_pixels, _decoded_pixels, _itk_pixels, _Pixels, _stack_pixels
from medseg_auto.ingest.formats import ImageData, image_ending

_known_series: dict[str, Path] = {}  # SeriesInstanceUID -> folder, for DICOM-SEG references
_lock = threading.Lock()
_PixelMap = dict[tuple[Path, "int | None"], _Pixels]  # a slice's stored values by Slice.key


# --- finding series folders --------------------------------------------------------------------------------

def _listing(path: Path) -> tuple[Path, list[str], tuple]:
    """The folder, its file names (sorted, no dot files) and its state: its path, then name, size, mtime and
    inode of each file. The caches are keyed by the state, so that a file added, removed, replaced or
    rewritten in place (its size or its modification time changes) is read again. For a file (a multi-frame
    image given alone): its folder, its name and its own state."""
    if not os.path.isdir(path):
        st = os.stat(path)
        return path.parent, [path.name], (os.path.abspath(path), ((path.name, st.st_size, st.st_mtime_ns, st.st_ino),))
    with os.scandir(path) as entries:
        files = [e for e in entries if not e.name.startswith(".") and e.is_file()]
    state = sorted((e.name, st.st_size, st.st_mtime_ns, st.st_ino) for e, st in ((e, e.stat()) for e in files))
    return path, [item[0] for item in state], (os.path.abspath(path), tuple(state))


def _files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))


def is_series_folder(folder: Path) -> bool:
    """A folder whose DICOM files include image slices (a DICOM-SEG among them is the case's label), or hold
    no image at all (a DICOMDIR, a report: read as a series, they are reported by name); a folder of
    DICOM-SEGs alone holds labels. A folder of several
    multi-frame ``.dcm`` files and no slices holds volumes, one per file (``images/CASE.dcm``, a case's
    ``T1.dcm`` and ``T2.dcm``), as a folder of NIfTI files does; one such file alone is a series folder.
    Reads the first few DICOM headers only (every one of a folder of multi-frame files); records the series
    it sees for DICOM-SEG references."""
    if not folder.is_dir():
        return False
    seen, segs, volumes = 0, 0, {}
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
            multi = _is_multiframe_image(ds)
            image, sop_class = _is_image(ds) or multi, str(ds.get("SOPClassUID", ""))
            uid = str(ds.get("SeriesInstanceUID", ""))
        else:
            multi = _fast_is_multiframe(raw)
            image = _fast_is_image(raw) or multi
            sop_class = _text(raw.values.get(_SOP_CLASS, b""))
            uid = _text(raw.values.get(_SERIES, b""))
        if multi and image_ending(f) == ".dcm":  # a volume of its own: slices, or more such files, decide
            volumes[uid] = f
            continue
        if image:
            _remember(uid, folder)
            return True
        if sop_class == SEG_SOP_CLASS:
            segs += 1
        else:
            seen += 1
        if seen + segs >= 4:
            stopped = True
            break
    else:
        stopped = False
    if len(volumes) == 1:
        _remember(next(iter(volumes)), folder)
        return True
    for uid, f in volumes.items():  # each file holds its series: a DICOM-SEG of it finds it there
        _remember(uid, f)
    return not volumes and not stopped and seen > 0


def _remember(uid: str, folder: Path) -> None:
    """Record where series ``uid`` was last seen, for DICOM-SEG references (checked again when used)."""
    with _lock:
        if len(_known_series) > 100_000:
            _known_series.clear()
        _known_series[uid] = folder


# --- series: discovery, ordering, geometry -----------------------------------------------------------

def list_series(folder: Path, pixels: _PixelMap | None = None, names: list[str] | None = None,
                remember: bool = True) -> dict[str, list[Slice]]:
    """Every image slice of ``folder`` (of its files ``names``, where given) by series: SeriesInstanceUID, or
    for a multi-frame file whose series UID another file shares, its SOPInstanceUID. Raises for a DICOM file
    that holds no image. With ``pixels``, each file is read whole (one read per file: header and pixels) and
    its stored values are kept there by :attr:`Slice.key`. With ``remember``, the folder is recorded as where
    its series are, for DICOM-SEG references."""
    by_uid: dict[str, list[Slice]] = {}
    files_of_frames: list[list[Slice]] = []
    for f in _files(folder) if names is None else [folder / name for name in names]:
        try:
            raw = _fast_read(f, pixels is not None)
        except OSError:  # as a file that is no DICOM file
            continue
        item = _fast_slice(f, raw) if raw is not None else None
        if item is not None and pixels is not None:
            pixels[item.key] = _fast_pixels(raw) or _decoded_pixels(f)
        elif item is None:
            if raw is None and not is_dicom_file(f):
                continue
            items = _slices_by_pydicom(folder, f, pixels, raw.data if raw is not None and pixels is not None else None)
            if not items:  # a DICOM-SEG beside the slices: the case's label, not part of the series
                continue
            if items[0].frame is not None:
                files_of_frames.append(items)
                continue
            item = items[0]
        by_uid.setdefault(item.series_uid, []).append(item)
    single = set(by_uid)
    for frames in files_of_frames:  # a multi-frame file is a series of its own
        uid = frames[0].series_uid
        shared = uid in single or sum(other[0].series_uid == uid for other in files_of_frames) > 1
        by_uid.setdefault(frames[0].sop_instance_uid if shared else uid, []).extend(frames)
    for slices in by_uid.values() if remember else ():
        _remember(slices[0].series_uid, folder)
    return by_uid


def _slices_by_pydicom(folder: Path, f: Path, pixels: _PixelMap | None, data: bytes | None = None) -> list[Slice]:
    """A file the fast path leaves to pydicom: its slice, or a multi-frame image's frames (and, with
    ``pixels``, their values decoded by pydicom where it can), none for a DICOM-SEG (a label may lie beside
    its slices), or the :class:`DicomError` that says what the file is. ``data``: the whole file, where the
    fast path has read it already."""
    import pydicom

    try:
        ds = _read_header(f) if pixels is None else pydicom.dcmread(f if data is None else io.BytesIO(data))
    except Exception as e:
        raise DicomError(f"{f.name}: not a readable DICOM file ({first_line(e)}); remove or replace "
                         "it") from None
    if _is_multiframe_image(ds):
        frames = frame_slices(f, ds)
        if pixels is not None:
            pixels.update(frame_pixels(f, ds))
        return frames
    if str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS:
        return []
    if not _is_image(ds):
        raise DicomError(f"{f.name} in the series folder {folder.name}/ is {_what_it_is(f, ds)}: move it "
                         f"out of the folder (a series folder holds the slices of one series only)")
    uid = str(ds.get("SeriesInstanceUID", ""))
    item = Slice(f, str(ds.get("SOPInstanceUID", "")), uid, str(ds.get("SeriesDescription", "") or ""),
                 int(ds.Rows), int(ds.Columns), tuple(float(v) for v in ds.get("PixelSpacing", (1.0, 1.0))),
                 tuple(float(v) for v in ds.ImagePositionPatient), tuple(float(v) for v in ds.ImageOrientationPatient))
    if pixels is not None:
        pixels[item.key] = _dataset_pixels(ds)
    return [item]


def series_listing(by_uid: dict[str, list[Slice]]) -> str:
    """The series by description and slice count (frame count and file for a multi-frame file), then their
    UIDs in the same order (descriptions first: a message cut short still names every series)."""
    ordered = sorted(by_uid.items(), key=lambda item: (item[1][0].description, item[0]))
    return (", ".join(f"'{s[0].description}' ({_count(s)})" for _, s in ordered)
            + "; UIDs in that order: " + ", ".join(uid for uid, _ in ordered))


def _count(slices: list[Slice]) -> str:
    if slices[0].frame is None:
        return f"{len(slices)} slices"
    files = sorted({s.path.name for s in slices})
    return f"{len(slices)} frames in {', '.join(files)}"


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
    would misplace them (mixed orientation or size, duplicates, non-uniform spacing, gantry tilt; for the
    frames of a multi-frame file, frames that are not one volume)."""
    first = slices[0]
    where = f"{folder.name}{'' if os.path.isfile(folder) else '/'} (series {first.series_uid})"
    frames = first.frame is not None
    if frames and len({s.path for s in slices}) == 1:
        check_one_volume(slices)
    # every slice against the first at once (allclose's tolerances: a loop of allclose calls cost 0.1 ms a slice)
    grid = np.array([s.orientation for s in slices]), np.array([s.pixel_spacing for s in slices])
    alike = ((np.array([(s.rows, s.columns) for s in slices]) == (first.rows, first.columns)).all(axis=1)
             & (np.abs(grid[0] - grid[0][0]) <= COSINE_ATOL + 1e-5 * np.abs(grid[0][0])).all(axis=1)
             & (np.abs(grid[1] - grid[1][0]) <= 1e-8 + 1e-4 * np.abs(grid[1][0])).all(axis=1))
    if not alike.all():
        s = slices[int(np.argmin(alike))]
        raise DicomError(f"{where}: slices of different size, orientation or pixel spacing ({first.name}: "
                         f"{first.rows}x{first.columns}, {s.name}: {s.rows}x{s.columns}); a localizer or "
                         f"a second series under the same UID? Keep one stack of parallel slices")
    row, col = np.array(first.orientation[:3]), np.array(first.orientation[3:])
    normal = np.cross(row, col)
    along = np.array([s.position for s in slices]) @ normal
    order = np.argsort(along, kind="stable")
    ordered, depth = [slices[i] for i in order], along[order]
    if len(ordered) < 2:
        raise DicomError(f"{where}: a single slice ({first.name}); a 3D series needs two or more")
    steps = np.diff(depth)
    if np.any(steps < 1e-3):
        i = int(np.argmin(steps))
        raise DicomError(f"{where}: two slices at the same position ({ordered[i].name}, "
                         f"{ordered[i + 1].name}); several time points or echoes in one series? Keep one")
    step = float(np.median(steps))
    if np.max(np.abs(steps - step)) > SPACING_RTOL * step:
        fix = ("missing frames?): export the series again whole" if frames else
               "missing slices?): add the missing files")
        raise DicomError(f"{where}: non-uniform slice spacing (steps from {steps.min():.3g} to {steps.max():.3g} "
                         f"mm, median {step:.3g}; {fix}, or resample the series to uniform spacing (e.g. "
                         f"dcm2niix) and give the NIfTI file")
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
    """The series ``uid`` (a series UID, or the key of a multi-frame file: see :func:`list_series`), else the
    one ``choice`` picks, ordered (its grid kept for the folder's state)."""
    key = uid
    if uid is not None and uid not in by_uid:
        keys = [k for k, slices in by_uid.items() if slices[0].series_uid == uid]
        if len(keys) != 1:
            raise _MissingSeries(f"{folder.name}/ holds no series {uid}")
        key = keys[0]
    series = order_series(folder, by_uid[key if key is not None else pick_series(folder, by_uid, choice)])
    with _lock:
        if len(_geometry_cache) >= GEOMETRY_CACHE_ENTRIES:
            _geometry_cache.clear()
        _geometry_cache[(state, choice, uid)] = series
    return series


def read_series_geometry(folder: Path, uid: str | None = None, series: str | None = None) -> Series:
    """Series ``uid`` of ``folder``, else the one ``series`` (``--series``: UID or description) names where the
    folder holds several, from headers only (kept per folder state and choice). ``folder`` may be a
    multi-frame image file alone."""
    parent, names, state = _listing(folder)
    with _lock:
        cached = _geometry_cache.get((state, series, uid))
    if cached is not None:
        return cached
    return _chosen(folder, state, list_series(parent, names=names, remember=parent == folder), uid, series)


def read_series(folder: Path, series: str | None = None) -> ImageData:
    """The series' pixels (``series``, as ``--series``, picks one where the folder holds several), slices in
    position order, with each slice's rescale slope and intercept applied (as ITK applies them). One read
    per file (native little-endian words straight from the bytes, else pydicom's decoders); SimpleITK's
    series reader (GDCM) where pydicom cannot decode the pixels (compressed transfer syntaxes without a
    pydicom decoder) or a pixel has several samples. ``folder`` may be a multi-frame image file alone."""
    parent, names, state = _listing(folder)
    key = (state, series)
    with _lock:
        if key in _pixel_cache:
            _pixel_cache.move_to_end(key)
            return _pixel_cache[key]
    pixels: _PixelMap = {}
    chosen = _chosen(folder, state, list_series(parent, pixels, names, remember=parent == folder), None, series)
    values = [pixels[s.key] for s in chosen.slices]
    array = _stack_pixels(values)
    components = 1
    if array is None and chosen.multiframe and len({(p.slope, p.intercept) for p in values}) > 1:
        raise DicomError(f"{chosen.slices[0].path.name}: pixels that only GDCM decodes, with a rescale per frame "
                         f"that GDCM does not apply; convert the file (e.g. with dcm2niix) and give the NIfTI file")
    if array is None:
        try:
            array, components = _itk_pixels(chosen)
        except RuntimeError as e:  # ITK's message names its source file, not ours
            useful = [line for line in str(e).splitlines() if "ERROR" in line] or [first_line(e)]
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

