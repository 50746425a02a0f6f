"""DICOM in: a folder holding one series is one image (its slices single-frame files, or the frames of one
multi-frame file); a DICOM-SEG file is a label on its series' grid.

One idea a module: :mod:`.base` (errors, slice and series records, tolerances), :mod:`.fast_reader` (our
parser of plain little-endian files), :mod:`.identify` (what a DICOM file holds), :mod:`.pixels` (stored
values, rescale, the GDCM fallback), :mod:`.multiframe` (Enhanced and legacy multi-frame images),
:mod:`.series` (listing, choosing, ordering and reading series, with the caches), :mod:`.seg` (DICOM-SEG
labels) and :mod:`.read` (the entry points the image readers call). The public names are re-exported here.
"""
from medseg_auto.ingest.dicom.base import (COSINE_ATOL, SEG_SOP_CLASS, SERIES_FLAG, SPACING_RTOL, TILT_DEGREES,
                                           DicomError, Series, Slice, series_choice)
from medseg_auto.ingest.dicom.identify import (describe_dicom_file, is_dicom_file, is_multiframe_file,
                                              is_seg_file)
from medseg_auto.ingest.dicom.read import read_dicom, read_dicom_file, read_dicom_header
from medseg_auto.ingest.dicom.seg import read_seg
from medseg_auto.ingest.dicom.series import (GEOMETRY_CACHE_ENTRIES, PIXEL_CACHE_BYTES, clear_caches,
                                             is_series_folder, list_series, order_series, pick_series,
                                             read_series, read_series_geometry, series_listing)

__all__ = ["COSINE_ATOL", "GEOMETRY_CACHE_ENTRIES", "PIXEL_CACHE_BYTES", "SEG_SOP_CLASS", "SERIES_FLAG",
           "SPACING_RTOL", "TILT_DEGREES", "DicomError", "Series", "Slice", "clear_caches", "describe_dicom_file",
           "is_dicom_file", "is_multiframe_file", "is_seg_file", "is_series_folder", "list_series", "order_series", "pick_series", "read_dicom",
           "read_dicom_file", "read_dicom_header", "read_seg", "read_series", "read_series_geometry",
           "series_choice", "series_listing"]
