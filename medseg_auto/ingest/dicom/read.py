"""The DICOM entry points of :mod:`medseg_auto.ingest.formats`: a path given as an image or label, read.

A folder is a series folder (:mod:`.series`); a single file is a DICOM-SEG label (:mod:`.seg`) or a
multi-frame image (:mod:`.multiframe`, read as the series it holds); any other file is refused, saying what
it is.
"""
from __future__ import annotations

from pathlib import Path

from medseg_auto.ingest.dicom.base import SEG_SOP_CLASS, DicomError, first_line
from medseg_auto.ingest.dicom.fast_reader import _fast_is_multiframe, _fast_read
from medseg_auto.ingest.dicom.identify import _is_image, _is_multiframe_image, _read_header, _what_it_is
from medseg_auto.ingest.dicom.seg import read_seg
from medseg_auto.ingest.dicom.series import read_series, read_series_geometry
from medseg_auto.ingest.formats import ImageData, ImageHeader


def read_dicom(path: Path, series: str | None = None) -> ImageData:
    """A series folder's pixels (``series``: the one to read where it holds several), or a ``.dcm`` file (a
    DICOM-SEG on its series' grid, a multi-frame image)."""
    return read_series(path, series) if path.is_dir() else read_dicom_file(path)


def read_dicom_header(path: Path, series: str | None = None) -> ImageHeader:
    """The grid of a series folder (headers only; ``series`` as for :func:`read_dicom`), of a multi-frame image
    file (headers only) or of a DICOM-SEG (its series' grid)."""
    if path.is_dir() or _is_multiframe_file(path):
        grid = read_series_geometry(path, series=series)
        return ImageHeader(grid.spacing, grid.origin, grid.direction, 1, shape=grid.shape)
    data = read_dicom_file(path)
    return ImageHeader(data.spacing, data.origin, data.direction, 1, shape=data.shape)


def read_dicom_file(path: Path) -> ImageData:
    """A ``.dcm`` file given as an image or label: a DICOM-SEG is read onto its series' grid, a multi-frame
    image as the series its frames are; anything else raises a :class:`DicomError` saying what the file is."""
    try:
        ds = _read_header(path)
    except Exception as e:
        raise DicomError(f"not a readable DICOM file ({first_line(e)})") from None
    if str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS:
        return read_seg(path)
    if _is_multiframe_image(ds):
        return read_series(path)
    if _is_image(ds):
        raise DicomError("a single DICOM slice: a series is read from its folder; put the slices of each "
                         "series in a folder of their own (images/CASE/*.dcm)")
    raise DicomError(f"{_what_it_is(path, ds)}; give the series folder (or a DICOM-SEG as the label)")


def _is_multiframe_file(path: Path) -> bool:
    """A multi-frame image, from the first bytes of its header (pydicom's read where ours cannot)."""
    try:
        raw = _fast_read(path, pixels=False)
        if raw is not None:
            return _fast_is_multiframe(raw)
        return _is_multiframe_image(_read_header(path))
    except Exception:  # unreadable: read_dicom_file says so
        return False
