"""Write what prediction produces: one segmentation per scan in the scan's own format and geometry, the
probabilities when asked for, and ``volumes.csv``.

NIfTI outputs copy the scan's header (qform, sform and their codes included), other volume formats its
spacing, origin and direction; 2D outputs are 8- or 16-bit greyscale images of the scan's size. Lossy or
palette formats (JPEG, GIF) and 16-bit values in BMP are written as PNG instead, since a segmentation
must survive being saved. Each file is written beside its name and renamed into place.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from medseg_auto.errors import InputError
from medseg_auto.ingest.formats import DICOM_ENDINGS, ImageHeader, image_ending, is_planar
from medseg_auto.predict.bundle import LabelClass
from medseg_auto.predict.scans import Scan

VOLUMES_CSV = "volumes.csv"
OUTPUT_FORMATS = ("auto", "dicom-seg")
METRICS_CSV = "metrics.csv"
_LOSSY = (".jpg", ".jpeg", ".gif")
# ``--output-format dicom-seg``: DICOM series scans are written as DICOM-SEGs holding the model's segments,
# (name, label values) each (``dicom_seg.model_segments``); None: as NIfTI (the default).
Segments = list[tuple[str, tuple[int, ...]]]


def output_file(folder: Path, scan: Scan, segments: Segments | None = None) -> Path:
    """``OUT/<scan><ending>``: the scan's own file type, PNG for lossy 2D types; for a DICOM series NIfTI,
    or a DICOM-SEG (``.dcm``) with ``segments`` (``--output-format dicom-seg``)."""
    if is_dicom(scan):
        return folder / f"{scan.name}{'.dcm' if segments is not None else '.nii.gz'}"
    ending = scan.ending
    return folder / f"{scan.name}{'.png' if ending in _LOSSY else ending}"


def is_dicom(scan: Scan) -> bool:
    """A DICOM series folder, or a DICOM image file (a multi-frame image): its segmentation is NIfTI in its
    geometry, or a DICOM-SEG referencing it."""
    return scan.files[0].is_dir() or image_ending(scan.files[0]) in DICOM_ENDINGS


def prepare_output(folder: Path, scans: list[Scan], inputs: Path, overwrite: bool,
                   segments: Segments | None = None) -> list[Path]:
    """The output files, after refusing (exit 2, nothing written) an output folder that holds results
    (unless ``overwrite``), that is the input folder or inside it, or a name that is an input file; with
    ``segments`` (DICOM-SEG outputs), any scan that is not a DICOM series."""
    if segments is not None and not all(is_dicom(s) for s in scans):
        other = next(s for s in scans if not is_dicom(s))
        raise InputError(f"--output-format dicom-seg: {other.name} ({other.files[0].name}) is not a DICOM series; a "
                         f"DICOM-SEG references the series it segments. Leave out --output-format for other scans.")
    folder = folder.resolve()
    root = inputs.resolve()
    if inputs.is_dir() and (folder == root or root in folder.parents):
        raise InputError(f"-o {folder}: the output folder must not be the input folder or inside it (the "
                         f"segmentations would mix with the scans). Choose another -o, e.g. {root.parent / 'predictions'}.")
    outputs = [output_file(folder, s, segments) for s in scans]
    inputs_set = {f.resolve() for s in scans for f in s.files}
    clash = [o for o in outputs if o in inputs_set]
    if clash:
        raise InputError(f"-o {folder}: {clash[0].name} would overwrite an input scan. Choose another -o.")
    if folder.is_dir():
        existing = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        if existing and not overwrite:
            raise InputError(f"-o {folder} already holds {len(existing)} file(s) ({', '.join(existing[:3])}"
                             f"{' ...' if len(existing) > 3 else ''}): nothing was written. Choose another -o, or "
                             f"add --overwrite to replace the outputs of the same names (other files stay).")
    elif folder.exists():
        raise InputError(f"-o {folder} is a file, not a folder.")
    return outputs


def write_segmentation(segmentation: np.ndarray, path: Path, scan: Scan, segments: Segments | None = None,
                       series: str | None = None) -> Path:
    """Write ``segmentation`` (the scan's numpy-order shape) in the scan's format and geometry; returns
    the path written (PNG where the scan's 2D type cannot hold labels). A ``.dcm`` path is a DICOM-SEG
    holding ``segments``, referencing the series of the scan's folder (``series`` picks it where several)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dicom(scan):  # a DICOM series or multi-frame file: NIfTI in its geometry, or a DICOM-SEG referencing it
        if image_ending(path) == ".dcm":
            from medseg_auto.predict.dicom_seg import write_dicom_seg

            _atomic(path, lambda tmp: write_dicom_seg(segmentation, tmp, scan.files[0], segments, series))
        else:
            _atomic(path, lambda tmp: _write_itk(segmentation, tmp, scan.header))
        return path
    if is_planar(path):
        return _write_planar(segmentation.reshape(scan.header.shape), path)
    ending = image_ending(path)
    if ending in (".nii", ".nii.gz"):
        _atomic(path, lambda tmp: _write_nifti(segmentation, tmp, scan.files[0]))
    elif ending == ".mhd":  # the header names its pixel file: written in place, not renamed
        _write_itk(segmentation, path, scan.header)
    else:
        _atomic(path, lambda tmp: _write_itk(segmentation, tmp, scan.header))
    return path


def _atomic(path: Path, write) -> None:
    tmp = path.parent / f".partial-{os.getpid()}-{path.name}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_nifti(segmentation: np.ndarray, path: Path, like: Path) -> None:
    import nibabel

    source = nibabel.load(like)
    header = source.header.copy()
    header.set_data_dtype(segmentation.dtype)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0, float(segmentation.max(initial=0))
    image = type(source)(np.asarray(segmentation).T, source.affine, header)
    image.set_qform(*source.header.get_qform(coded=True))
    image.set_sform(*source.header.get_sform(coded=True))
    nibabel.save(image, path)


def _write_itk(segmentation: np.ndarray, path: Path, header: ImageHeader) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(segmentation)
    image.SetSpacing(header.spacing)
    image.SetOrigin(header.origin)
    image.SetDirection(header.direction)
    sitk.WriteImage(image, str(path), useCompression=True)


def _write_planar(segmentation: np.ndarray, path: Path) -> Path:
    from PIL import Image

    if segmentation.dtype == np.uint8:
        image = Image.fromarray(segmentation, mode="L")
    else:
        image = Image.fromarray(segmentation.astype(np.uint16))
        if image_ending(path) == ".bmp":
            path = path.with_suffix(".png")
    _atomic(path, lambda tmp: image.save(tmp, format=Image.registered_extensions()[image_ending(path)]))
    return path


def write_probabilities(probabilities: np.ndarray, path: Path, classes: list[str]) -> None:
    """``probabilities`` (classes x the scan's shape, float16) with the class names, as one ``.npz``."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, probabilities=probabilities.astype(np.float16), classes=np.array(classes))

    _atomic(path, write)


def volume_row(name: str, output: Path, segmentation: np.ndarray, classes: list[LabelClass],
               header: ImageHeader, is_2d: bool) -> dict:
    """One row of ``volumes.csv``: per label (or region) the voxel count and mm^3 (pixels and mm^2 in 2D)."""
    unit, size = ("pixels", "mm2") if is_2d else ("voxels", "mm3")
    voxel = float(np.prod(header.spacing))
    row: dict = {"case": name, "file": output.name}
    for c in classes:
        n = int(np.isin(segmentation, c.values).sum())
        row[f"{c.name}_{unit}"] = n
        row[f"{c.name}_{size}"] = round(n * voxel, 3)
    return row


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    _atomic(path, write)
