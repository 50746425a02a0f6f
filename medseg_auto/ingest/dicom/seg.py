"""DICOM-SEG labels: a segmentation placed frame by frame on the slices of the series it references.

The series is found among the series folders seen so far (:func:`.series.is_series_folder` and
:func:`.series.list_series` record them); a frame that does not lie on one of its slices is an error, never
resampled.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg_auto.ingest.dicom.base import COSINE_ATOL, DicomError, Series, _MissingSeries
from medseg_auto.ingest.dicom.series import _known_series, _lock, list_series, read_series_geometry
from medseg_auto.ingest.formats import ImageData


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

