"""DICOM-SEG out (``--output-format dicom-seg``): a segmentation of a DICOM series, as a BINARY DICOM-SEG that
references the source series, one segment per label of the model, named as the model names it.

highdicom builds it from the source slices (patient, study and frame of reference are copied, each frame
references its source slice), so viewers and PACS place it on the series; :func:`medseg_auto.ingest.dicom.read_seg`
(or highdicom) reads it back onto the series' grid.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg_auto import __version__
from medseg_auto.ingest.dicom import read_series_geometry

SEG_ENDING = ".dcm"
_CATEGORY = ("91723000", "SCT", "Anatomical Structure")


def write_dicom_seg(segmentation: np.ndarray, path: Path, series_folder: Path,
                    segments: list[tuple[str, tuple[int, ...]]], series_choice: str | None = None) -> Path:
    """Write ``segmentation`` (the series' numpy-order shape, slices in position order) as a DICOM-SEG with
    one segment per ``(name, values)``: the voxels whose value is one of ``values``. ``series_choice``
    (``--series``) picks the series where the folder holds several."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    series = read_series_geometry(series_folder, series=series_choice)
    if segmentation.shape != series.shape:
        raise ValueError(f"segmentation of shape {segmentation.shape} for a series of shape {series.shape}")
    masks = np.stack([np.isin(segmentation, values) for _, values in segments], axis=-1)
    if series.multiframe:  # one source file: the masks in its frames' order, which need not be by position
        sources = [pydicom.dcmread(series.slices[0].path)]
        in_file_order = np.empty_like(masks)
        for k, s in enumerate(series.slices):
            in_file_order[s.frame] = masks[k]
        masks = in_file_order
    else:
        sources = [pydicom.dcmread(s.path) for s in series.slices]
    algorithm = hd.AlgorithmIdentificationSequence(name="medseg_auto", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1, segment_label=name[:64],
            segmented_property_category=hd.sr.CodedConcept(*_CATEGORY),
            segmented_property_type=hd.sr.CodedConcept(f"L{i + 1}", "99MEDSEG", name[:64]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        for i, (name, _) in enumerate(segments)]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=masks, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=_series_number(sources),
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medseg_auto",
        manufacturer_model_name="medseg_auto", software_versions=__version__, device_serial_number="none",
        series_description=f"medseg_auto segmentation of {series.description or series.uid}"[:64],
        omit_empty_frames=not _all_empty(masks))
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path


def _series_number(sources) -> int:
    """The source's series number plus 1000: near its series in a viewer, never equal to it."""
    try:
        return int(sources[0].SeriesNumber) + 1000
    except (AttributeError, TypeError, ValueError):
        return 1000


def _all_empty(masks: np.ndarray) -> bool:
    """Nothing found: the frames are kept (empty), since a SEG needs at least one."""
    return not masks.any()


def model_segments(bundle) -> list[tuple[str, tuple[int, ...]]]:
    """The segments a DICOM-SEG of this model holds: each label (or region) by name, with its values in the
    dataset's own label values (what the written segmentation holds)."""
    inverse = bundle.manifest.labels.nnunet_to_original or {}
    original = lambda v: inverse.get(v, v)  # noqa: E731 - a short local helper
    return [(c.name, tuple(sorted({original(v) for v in c.values}))) for c in bundle.classes]
