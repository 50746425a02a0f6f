"""Images and label maps as people look at them: read with their geometry, turned to one anatomical
orientation, and cut into three orthogonal slices through a structure.

Arrays alone do not say which way is up: a scan whose direction cosines are flipped stores its voxels in
the opposite order. Every volume is therefore reoriented to LPS (ITK's DICOM convention: x towards the
patient's left, y posterior, z superior) before slicing, so the image and its label maps, read the same
way, stay on each other and the anatomy shows the same way up whatever the file's orientation. Slices are
shown in the radiological convention: axial and coronal with the patient's right on the left of the
picture, superior and anterior at the top.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

ORIENTATION = "LPS"
PLANES = ("axial", "coronal", "sagittal")


@dataclass
class Volume:
    """An image or label map in display orientation: numpy axes (z, y, x) of LPS, spacing in that order
    (2D: (y, x))."""

    array: np.ndarray
    spacing: tuple[float, ...]

    @property
    def is_2d(self) -> bool:
        return self.array.ndim == 2


@dataclass
class Plane:
    """One slice to draw: rows x columns, the height/width ratio of a pixel, and the index it was cut at."""

    name: str
    index: int
    aspect: float


def read_volume(path: Path, label: bool = False, volume: int | None = None, series: str | None = None) -> Volume:
    """A file in display orientation; colour images become grey (label maps keep their first component).
    DICOM (a series folder, a DICOM-SEG) and one ``volume`` of a 4D file are read as training reads them
    (``series`` picks a folder's series)."""
    import SimpleITK as sitk

    from medseg_auto.ingest.formats import DICOM_ENDINGS, image_ending

    if path.is_dir() or image_ending(path) in DICOM_ENDINGS or volume is not None:
        from medseg_auto.ingest.formats import read_image, read_volume as read_one_volume

        data = read_one_volume(path, volume) if volume is not None else read_image(path, series)
        image = sitk.GetImageFromArray(data.array, isVector=data.components > 1)
        image.SetSpacing(data.spacing)
        image.SetOrigin(data.origin)
        image.SetDirection(data.direction)
    else:
        image = sitk.ReadImage(str(path))
    if image.GetNumberOfComponentsPerPixel() > 1:
        image = (sitk.VectorIndexSelectionCast(image, 0) if label else
                 sitk.Cast(sitk.VectorMagnitude(image), sitk.sitkFloat32))
    if image.GetDimension() == 3 and image.GetSize()[2] == 1:  # a 2D picture stored as one slice
        image = image[:, :, 0]
    return to_display(image)


def to_display(image) -> Volume:
    """A SimpleITK image (2D or 3D) in display orientation (3D: reoriented to LPS)."""
    import SimpleITK as sitk

    if image.GetDimension() == 3:
        image = sitk.DICOMOrient(image, ORIENTATION)
    return Volume(sitk.GetArrayFromImage(image), tuple(reversed(image.GetSpacing())))


def centre_of_structure(mask: np.ndarray) -> tuple[int, ...]:
    """The centre of mass of the largest connected component of ``mask`` (the array's centre when empty),
    rounded to a voxel inside that component's bounding box."""
    from scipy import ndimage

    if not mask.any():
        return tuple(s // 2 for s in mask.shape)
    components, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(components.ravel())[1:]
        mask = components == (int(np.argmax(sizes)) + 1)
    return tuple(int(round(c)) for c in ndimage.center_of_mass(mask))


def planes(volume: Volume, centre: tuple[int, ...]) -> list[Plane]:
    """The three orthogonal slices through ``centre`` (one plane, the image itself, in 2D)."""
    if volume.is_2d:
        dy, dx = volume.spacing
        return [Plane("image", 0, dy / dx)]
    dz, dy, dx = volume.spacing
    z, y, x = centre
    return [Plane("axial", z, dy / dx), Plane("coronal", y, dz / dx), Plane("sagittal", x, dz / dy)]


def cut(array: np.ndarray, plane: Plane) -> np.ndarray:
    """The 2D picture of ``plane``: rows top to bottom, columns left to right as a radiologist reads it
    (superior and anterior up; the patient's right on the picture's left, anterior left in sagittal)."""
    if plane.name == "image":
        return array
    if plane.name == "axial":
        return array[plane.index]  # rows: anterior -> posterior, columns: right -> left
    if plane.name == "coronal":
        return array[::-1, plane.index, :]  # rows: superior -> inferior, columns: right -> left
    return array[::-1, :, plane.index]  # sagittal: rows superior -> inferior, columns anterior -> posterior


def display_window(image: np.ndarray) -> tuple[float, float]:
    """Grey levels shown: the 0.5th to 99.5th percentile of the image, so that one bright voxel does not
    darken the picture; of the voxels inside the body where a fifth or more are background at the minimum
    (a skull-stripped brain)."""
    values = image[np.isfinite(image)]
    if values.size == 0:
        return 0.0, 1.0
    inside = values[values > values.min()]
    if values.size - inside.size >= 0.2 * values.size and inside.size:
        values = inside
    lo, hi = np.percentile(values, (0.5, 99.5))
    return (float(lo), float(hi)) if hi > lo else (float(values.min()), float(values.max()) + 1e-6)
