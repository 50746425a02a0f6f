"""Read every file of a dataset once, in parallel, and keep what the checks and the conversion need.

Pixels are not kept (a CT dataset does not fit in memory): only geometry, value statistics and, for
labels, the set of values. Files that need rewriting are read again by the conversion.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg_auto.ingest.dicom import DicomError
from medseg_auto.ingest.formats import read_image, spatial_part

# A label map with more distinct values than this is almost surely an image or a lossy (JPEG) mask.
MAX_LABEL_VALUES = 64


@dataclass
class FileInfo:
    """What one file holds. ``error`` is set (and the rest left empty) when it could not be read."""

    path: Path
    is_label: bool
    error: str | None = None
    dicom_error: bool = False  # the error is a DICOM problem, whose message says how to fix it
    ndim: int = 0
    shape: tuple[int, ...] = ()
    spacing: tuple[float, ...] = ()
    origin: tuple[float, ...] = ()
    direction: tuple[float, ...] = ()
    components: int = 1
    grey_rgb: bool = False  # a colour image whose channels are all equal
    dtype: str = ""
    nonfinite: int = 0
    values: tuple[float, ...] | None = None  # distinct values (labels only); None if too many
    n_values: int = 0
    volumes: int | None = None  # a 4D file: how many 3D volumes it holds (the geometry above is theirs)


def scan_files(files: list[tuple[Path, bool]], workers: int | None = None, progress: bool = True,
               series: str | None = None) -> dict[Path, FileInfo]:
    """Read ``(path, is_label)`` pairs in parallel; never raises for a bad file. ``series`` (``--series``)
    picks the series of a DICOM folder that holds several."""
    from tqdm import tqdm

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        jobs = pool.map(lambda item: scan_file(*item, series=series), files)
        bar = tqdm(jobs, total=len(files), desc="Checking files", unit="file", file=sys.stderr,
                   disable=not progress or len(files) < 50, mininterval=1.0)
        return {info.path: info for info in bar}


def scan_file(path: Path, is_label: bool, series: str | None = None) -> FileInfo:
    info = FileInfo(path=path, is_label=is_label)
    try:
        image = read_image(path, series)
    except Exception as e:  # any reader failure is the user's file, reported, not raised
        info.error = reader_message(e)
        info.dicom_error = isinstance(e, DicomError)
        return info
    geometry = image
    if image.ndim == 4:  # checked and converted as its volumes (the Decathlon's channels), all on one grid
        info.volumes, geometry = image.shape[0], spatial_part(image)
    info.ndim, info.shape = geometry.ndim, geometry.shape
    info.spacing, info.origin, info.direction = geometry.spacing, geometry.origin, geometry.direction
    info.components, info.dtype = image.components, str(image.array.dtype)
    array = image.array
    if image.components > 1:
        info.grey_rgb = bool(np.all(array == array[..., :1]))
        if info.grey_rgb:
            array = array[..., 0]
    if array.dtype.kind == "f":
        info.nonfinite = int(array.size - np.count_nonzero(np.isfinite(array)))
    if is_label and (image.components == 1 or info.grey_rgb):
        values = np.unique(array)
        info.n_values = len(values)
        info.values = tuple(float(v) for v in values) if len(values) <= MAX_LABEL_VALUES else None
    return info


def reader_message(e: Exception) -> str:
    """The useful line of a reader's exception (ITK's carry source paths and stack lines), cut at 200
    characters; a :class:`DicomError` whole (ours: it names every series of a folder, and the fix)."""
    if isinstance(e, DicomError):
        return str(e).strip()
    text = str(e).strip().splitlines()
    useful = [line.strip() for line in text if line.strip() and not line.startswith(("/", "sitk::"))]
    return (useful[-1] if useful else type(e).__name__)[:200]
