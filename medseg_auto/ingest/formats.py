"""Image file formats: which files are images, how their names split into stem and ending, how to read them.

3D formats are read with SimpleITK (what nnU-Net's SimpleITKIO uses), 2D formats with Pillow. Reading
returns an :class:`ImageData` in one shape for both, so the checks never care which library read a file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

VOLUME_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
PLANAR_ENDINGS = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg", ".gif")
# A single DICOM file is a DICOM-SEG label; a DICOM series is a folder (``medseg_auto.ingest.dicom``).
DICOM_ENDINGS = (".dcm",)
IMAGE_ENDINGS = VOLUME_ENDINGS + PLANAR_ENDINGS + DICOM_ENDINGS

# Endings nnU-Net reads as they are, so a file in one of them that needs no change is referenced, not copied.
# .mhd is left out on purpose: its pixels live in a sidecar file and we convert it to a single file.
NNUNET_VOLUME_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")
NNUNET_PLANAR_ENDINGS = (".png", ".bmp", ".tif")


def image_ending(path: Path | str) -> str | None:
    """The image ending of a file name (``.nii.gz`` counts as one), or None for a non-image file."""
    name = Path(path).name.lower()
    for ending in IMAGE_ENDINGS:
        if name.endswith(ending) and len(name) > len(ending):
            return ending
    return None


def stem(path: Path | str) -> str:
    """The file name without its image ending (``case_01.nii.gz`` -> ``case_01``)."""
    name = Path(path).name
    ending = image_ending(name)
    return name[: -len(ending)] if ending else name


def is_dicom_path(path: Path) -> bool:
    """Read by the DICOM reader: a series folder, a ``.dcm`` file, or a DICOM file without an ending (as PACS
    exports name them, by UID)."""
    if path.is_dir() or image_ending(path) in DICOM_ENDINGS:
        return True
    if image_ending(path) is not None or not path.is_file():
        return False
    from medseg_auto.ingest.dicom import is_dicom_file

    return is_dicom_file(path)


def is_planar(path: Path | str) -> bool:
    return image_ending(path) in PLANAR_ENDINGS


@dataclass
class Geometry:
    """Where an image's voxels lie, in ITK's (x, y, z) order, and how many components a voxel has."""

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    components: int


@dataclass
class ImageData(Geometry):
    """One image file, read: pixels plus geometry.

    ``array`` is in numpy order (z, y, x) for volumes and (y, x) for 2D, with a trailing axis when a pixel
    has several components (RGB).
    """

    array: np.ndarray = None

    @property
    def ndim(self) -> int:
        """Spatial dimensions: 2 or 3 (4 for a 4D volume)."""
        return self.array.ndim - (1 if self.components > 1 else 0)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[: self.ndim])


@dataclass
class ImageHeader(Geometry):
    """One image file's geometry without its pixels, as nnU-Net's reader sees it."""

    shape: tuple[int, ...] = ()  # numpy order, like ImageData.shape

    @property
    def ndim(self) -> int:
        return len(self.shape)


def read_header(path: Path, series: str | None = None) -> ImageHeader:
    """Read only the header: checking a folder of large scans costs milliseconds per file, not a read.
    ``series`` (``--series``) picks the series of a DICOM folder that holds several."""
    if is_dicom_path(path):
        from medseg_auto.ingest.dicom import read_dicom_header

        return read_dicom_header(path, series)
    if path.stat().st_size == 0:
        raise ValueError("the file is empty (0 bytes)")
    if is_planar(path):
        from PIL import Image

        with Image.open(path) as image:
            components = 3 if image.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV") else 1
            return ImageHeader((1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), components,
                               shape=(image.height, image.width))
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return ImageHeader(tuple(reader.GetSpacing()), tuple(reader.GetOrigin()), tuple(reader.GetDirection()),
                       reader.GetNumberOfComponents(), shape=tuple(reversed(reader.GetSize())))


def read_image(path: Path, series: str | None = None) -> ImageData:
    """Read any supported image file; raises an exception with the library's message when it cannot.
    ``series`` (``--series``) picks the series of a DICOM folder that holds several."""
    if is_dicom_path(path):  # a DICOM series folder, a DICOM-SEG
        from medseg_auto.ingest.dicom import read_dicom

        return read_dicom(path, series)
    if path.stat().st_size == 0:
        raise ValueError("the file is empty (0 bytes)")
    if is_planar(path):
        return _read_planar(path)
    import SimpleITK as sitk

    if image_ending(path) in (".nii", ".nii.gz"):
        nifti = _read_nifti(path)
        if nifti is not None:
            return nifti
    image = sitk.ReadImage(str(path))
    return ImageData(
        array=sitk.GetArrayFromImage(image),
        spacing=tuple(image.GetSpacing()),
        origin=tuple(image.GetOrigin()),
        direction=tuple(image.GetDirection()),
        components=image.GetNumberOfComponentsPerPixel(),
    )


def spatial_part(image: ImageData | ImageHeader) -> ImageHeader:
    """The 3D grid of a 4D image's volumes: ITK's fourth axis (numpy's first) dropped from its geometry."""
    direction = np.asarray(image.direction, dtype=float).reshape(4, 4)[:3, :3]
    return ImageHeader(tuple(image.spacing[:3]), tuple(image.origin[:3]), tuple(float(v) for v in direction.ravel()),
                       image.components, shape=tuple(image.shape[1:]))


def read_volume(path: Path, index: int) -> ImageData:
    """Volume ``index`` of a 4D file as a 3D image on its grid (index 0 of a 3D file is the file itself)."""
    image = read_image(path)
    if image.ndim != 4:
        if index == 0:
            return image
        raise ValueError(f"a {image.ndim}D image has no volume {index}")
    if not 0 <= index < image.shape[0]:
        raise ValueError(f"the 4D image holds {image.shape[0]} volume(s), not volume {index}")
    grid = spatial_part(image)
    return ImageData(grid.spacing, grid.origin, grid.direction, image.components, array=image.array[index])


def _read_nifti(path: Path) -> ImageData | None:
    """A scalar 3D NIfTI file read with nibabel, its geometry in ITK's (LPS) terms; None where only ITK
    can say what nnU-Net will see (qform and sform disagree, not 3D, vector pixels).

    nibabel, not ITK, reads the pixels: ITK reads a truncated .nii.gz as zeros without an error and turns
    NaN into 0, nibabel reports both. It is also faster than ITK's header reader alone.
    """
    import gzip

    import nibabel

    if image_ending(path) == ".nii.gz":  # one C-speed decompression: faster than nibabel's stream reader
        image = nibabel.Nifti1Image.from_bytes(gzip.decompress(path.read_bytes()))
    else:
        image = nibabel.load(path)
    header = image.header
    if len(image.shape) != 3 or header.get_data_dtype().fields is not None:
        return None
    qform, qcode = header.get_qform(coded=True)
    sform, scode = header.get_sform(coded=True)
    if qcode and scode and not np.allclose(qform, sform, atol=1e-4):
        return None
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine  # RAS -> LPS, as ITK reports it
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return ImageData(
        array=np.asarray(image.dataobj).T,
        spacing=tuple(float(v) for v in spacing),
        origin=tuple(float(v) for v in affine[:3, 3]),
        direction=tuple(float(v) for v in (affine[:3, :3] / spacing).ravel()),
        components=1,
    )


def write_volume(image: ImageData, out: Path) -> None:
    """Write a scalar 3D image as ``out`` (``.nii.gz`` or another volume format nnU-Net reads).

    NIfTI goes through nibabel at zlib level 1 (a hippocampus case: about 3 ms against SimpleITK's 7-11 ms,
    which is most of a DICOM dataset's conversion), qform and sform both set to the grid, as ITK writes them;
    a direction that is not a rotation (which a qform cannot hold), vector pixels and the other formats go
    through SimpleITK.
    """
    import SimpleITK as sitk

    axes = np.asarray(image.direction, dtype=float).reshape(3, 3) if len(image.direction) == 9 else None
    if (image_ending(out) in (".nii.gz", ".nii") and image.components == 1 and image.array.ndim == 3
            and axes is not None and np.allclose(axes @ axes.T, np.eye(3), atol=1e-6)):
        import nibabel

        affine = np.eye(4)
        affine[:3, :3] = axes * np.asarray(image.spacing, dtype=float)
        affine[:3, 3] = image.origin
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS, as NIfTI stores it
        nifti = nibabel.Nifti1Image(np.ascontiguousarray(image.array.T), affine)
        nifti.set_qform(affine, code=1)
        nifti.set_sform(affine, code=1)
        nifti.header.set_xyzt_units("mm")
        if image_ending(out) == ".nii.gz":
            import gzip

            out.write_bytes(gzip.compress(nifti.to_bytes(), compresslevel=1))
        else:
            nifti.to_filename(out)
        return
    volume = sitk.GetImageFromArray(image.array, isVector=image.components > 1)
    volume.SetSpacing(image.spacing)
    volume.SetOrigin(image.origin)
    volume.SetDirection(image.direction)
    sitk.WriteImage(volume, str(out), useCompression=True)


def _read_planar(path: Path) -> ImageData:
    from PIL import Image

    with Image.open(path) as image:
        frames = getattr(image, "n_frames", 1)
        if frames > 1 and image_ending(path) in (".tif", ".tiff"):
            raise ValueError(f"a multi-page TIFF ({frames} pages); save 3D data as NIfTI (.nii.gz) instead")
        if image.mode == "P":  # palette images: keep the indices for masks, colours would lose them
            array = np.asarray(image)
        elif image.mode in ("RGBA", "LA"):
            array = np.asarray(image.convert("RGB" if image.mode == "RGBA" else "L"))
        else:
            array = np.asarray(image)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    components = array.shape[2] if array.ndim == 3 else 1
    return ImageData(array=array, spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0),
                     components=components)
