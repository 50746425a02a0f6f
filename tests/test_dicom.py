"""DICOM in and out, on DICOM series written from the real volumes (hippocampus, a cropped BraTS case):
slice order by position, orientations, several series, non-image files, DICOM-SEG labels, and the
whole ``--check`` of a paired DICOM dataset."""
from __future__ import annotations

import random
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
sitk = pytest.importorskip("SimpleITK")

from conftest import copy_brats_crops, real_data  # noqa: E402
from medseg_auto.ingest import dicom  # noqa: E402
from medseg_auto.ingest.dicom import fast_reader, pixels as dicom_pixels, series as dicom_series  # noqa: E402
from medseg_auto.ingest.formats import read_header, read_image  # noqa: E402

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def hippocampus_image(case: str = "hippocampus_001", label: bool = False) -> sitk.Image:
    folder = real_data("hippocampus") / ("labels" if label else "images")
    return sitk.ReadImage(str(folder / f"{case}.nii.gz"))


def uint8_cases(n: int) -> list[str]:
    """Hippocampus cases stored as integers (uint8): DICOM holds their pixels exactly."""
    import nibabel

    out = []
    for f in sorted((real_data("hippocampus") / "images").iterdir()):
        if nibabel.load(f).get_data_dtype() == np.uint8:
            out.append(f.name[: -len(".nii.gz")])
        if len(out) == n:
            return out
    pytest.skip("too few integer hippocampus cases")


def write_series(image: sitk.Image, folder: Path, *, uid: str | None = None, description: str = "T1 3D",
                 seed: int = 0, slope: float = 1.0, drop: int | None = None, tilt: float = 0.0,
                 bits_stored: int = 16, syntax: str | None = None) -> list[str]:
    """Write ``image`` as an MR DICOM series, one file per slice along its third axis: plausible headers
    (position, orientation, spacing, rescale), files shuffled and named at random (half ``.dcm``, half
    without an ending). ``drop`` leaves out one slice, ``tilt`` (mm per slice) shifts each slice sideways
    as a gantry tilt does. Returns the SOPInstanceUIDs in slice order."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    array = sitk.GetArrayFromImage(image)
    assert np.abs(np.rint(array / slope)).max() < 2 ** 15, "values overflow int16 at this slope"
    stored = np.rint(array / slope).astype(np.int16)
    axes = np.array(image.GetDirection()).reshape(3, 3)
    spacing, origin = np.array(image.GetSpacing()), np.array(image.GetOrigin())
    uid = uid or generate_uid()
    study, frame = generate_uid(), generate_uid()
    rng = random.Random(seed)
    order = list(range(array.shape[0]))
    rng.shuffle(order)
    uids = [generate_uid() for _ in range(array.shape[0])]
    for k in order:
        if k == drop:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MR_STORAGE, uids[k]
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MR_STORAGE, uids[k]
        ds.Modality, ds.PatientName, ds.PatientID = "MR", "Test^Case", "T0001"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, uid, frame
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = description, 3, rng.randint(1, 999)
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240101", "120000", "A1", "1"
        ds.ReferringPhysicianName, ds.PatientBirthDate, ds.PatientSex = "", "", "O"
        ds.Manufacturer = "medseg_auto tests"
        position = origin + k * spacing[2] * axes[:, 2] + k * tilt * axes[:, 1]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*axes[:, 0], *axes[:, 1])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.Rows, ds.Columns = array.shape[1], array.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", "0"
        ds.PixelData = stored[k].tobytes()
        if syntax:  # an encapsulated (compressed) transfer syntax, as PACS exports often are
            ds.compress(syntax, stored[k])
        name = f"{rng.getrandbits(40):010x}" + (".dcm" if k % 2 else "")
        ds.save_as(folder / name, enforce_file_format=True)
    return [u for k, u in enumerate(uids) if k != drop]


def write_sr(path: Path) -> None:
    """A Basic Text SR: a DICOM file that holds no image."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.11", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID = "SR", generate_uid()
    ds.save_as(path, enforce_file_format=True)


def write_dicomdir(path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.1.3.10", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.FileSetID = "TEST"
    ds.save_as(path, enforce_file_format=True)


def canonical(image: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(array, spacing, origin, direction) with the third axis along the slice normal (a left-handed
    direction flipped, as a DICOM reader orders slices by position)."""
    axes = np.array(image.GetDirection()).reshape(3, 3)
    if np.dot(np.cross(axes[:, 0], axes[:, 1]), axes[:, 2]) < 0:
        image = sitk.Flip(image, [False, False, True])
    return (sitk.GetArrayFromImage(image), np.array(image.GetSpacing()), np.array(image.GetOrigin()),
            np.array(image.GetDirection()))


def assert_same(data, image: sitk.Image, slope: float = 1.0) -> None:
    array, spacing, origin, direction = canonical(image)
    expected = np.rint(array / slope).astype(np.float64) * slope  # the stored integers, rescaled
    assert data.array.shape == expected.shape
    np.testing.assert_allclose(np.asarray(data.array, dtype=np.float64), expected, rtol=1e-12, atol=0)
    np.testing.assert_allclose(data.spacing, spacing, atol=1e-5)
    np.testing.assert_allclose(data.origin, origin, atol=1e-4)
    np.testing.assert_allclose(data.direction, direction, atol=1e-6)


def rotated(image: sitk.Image, degrees: tuple[float, float, float]) -> sitk.Image:
    """The same pixels with an oblique orientation (rotation about x, y, z) in the header."""
    from scipy.spatial.transform import Rotation

    out = sitk.Image(image)
    axes = Rotation.from_euler("xyz", degrees, degrees=True).as_matrix() @ np.array(image.GetDirection()).reshape(3, 3)
    out.SetDirection(tuple(axes.ravel()))
    return out


# --- reading a series ------------------------------------------------------------------------------------

@pytest.mark.parametrize("orientation", ["axial", "sagittal", "oblique", "flipped"])
def test_series_reads_voxel_exact_in_any_orientation(tmp_path, orientation):
    source = hippocampus_image(uint8_cases(1)[0])
    image = {"axial": lambda i: i,
             "sagittal": lambda i: sitk.PermuteAxes(i, [1, 2, 0]),  # slices along the old x axis
             "oblique": lambda i: rotated(i, (20, -15, 10)),
             "flipped": lambda i: sitk.Flip(i, [False, True, True])}[orientation](source)
    write_series(image, tmp_path / "series", seed=hash(orientation) % 1000)
    assert dicom.is_series_folder(tmp_path / "series")
    data = read_image(tmp_path / "series")
    assert_same(data, image)
    header = read_header(tmp_path / "series")
    assert header.shape == data.shape and np.allclose(header.origin, data.origin)
    if orientation == "flipped":  # slices come back in position order: the source's own pixels
        np.testing.assert_array_equal(data.array[::-1], sitk.GetArrayFromImage(sitk.Flip(source, [False, True, False])))


def test_twelve_bit_and_compressed_series_read_through_a_decoder(tmp_path):
    from pydicom.uid import RLELossless

    image = hippocampus_image(uint8_cases(1)[0])
    write_series(image, tmp_path / "twelve", bits_stored=12)
    assert_same(read_image(tmp_path / "twelve"), image)
    write_series(image, tmp_path / "rle", syntax=RLELossless)
    assert pydicom.dcmread(next((tmp_path / "rle").iterdir())).file_meta.TransferSyntaxUID == RLELossless
    assert_same(read_image(tmp_path / "rle"), image)
    itk_array, components = dicom_pixels._itk_pixels(dicom.read_series_geometry(tmp_path / "rle"))  # GDCM's fallback
    np.testing.assert_array_equal(itk_array, sitk.GetArrayFromImage(image))
    assert components == 1


def test_float_series_with_rescale_and_brats_crop(tmp_path):
    copy_brats_crops(tmp_path / "crops", n=1, size=(40, 36, 24))
    case = next((tmp_path / "crops").iterdir())
    image = sitk.ReadImage(str(case / "Flair_subtrMeanDivStd.nii.gz"))
    write_series(image, tmp_path / "flair", slope=0.001)
    assert_same(read_image(tmp_path / "flair"), image, slope=0.001)


def test_two_series_in_one_folder_are_listed_and_picked_by_flag(tmp_path):
    a, b = uint8_cases(2)
    write_series(hippocampus_image(a), tmp_path / "mixed", uid="1.2.826.0.1.3680043.8.498.1", description="T1 AX")
    write_series(hippocampus_image(b), tmp_path / "mixed", uid="1.2.826.0.1.3680043.8.498.2", description="T2 COR",
                 seed=5)
    with pytest.raises(dicom.DicomError) as e:
        read_image(tmp_path / "mixed")
    message = str(e.value)
    slices = hippocampus_image(a).GetSize()[2]
    assert "2 DICOM series" in message and "--series" in message
    assert f"'T1 AX' ({slices} slices), 'T2 COR' ({hippocampus_image(b).GetSize()[2]} slices); UIDs in that order: " \
           "1.2.826.0.1.3680043.8.498.1, 1.2.826.0.1.3680043.8.498.2" in message
    assert_same(read_image(tmp_path / "mixed", series=dicom.series_choice(" t2 cor ")), hippocampus_image(b))
    assert_same(read_image(tmp_path / "mixed", series="1.2.826.0.1.3680043.8.498.1"), hippocampus_image(a))
    assert read_header(tmp_path / "mixed", series="T2 COR").shape == hippocampus_image(b).GetSize()[::-1]
    assert dicom.series_choice("  ") is None and dicom.series_choice(None) is None


def test_series_choice_travels_with_each_calls_options(tmp_path):
    """Two API calls with different series choices each read their own series (nothing kept between them);
    a third without one reports every case's series, the whole message (UIDs too) in the problem table."""
    from types import SimpleNamespace

    from medseg_auto.ingest.checks import DICOM_FIX
    from medseg_auto.ingest.pipeline import DataProblems, IngestOptions, check_dataset, convert
    from medseg_auto.ingest.problems import format_table

    root = tmp_path / "ds"
    (root / "labels").mkdir(parents=True)
    images, uids = {}, {}
    for i, case in enumerate(uint8_cases(2)):
        images[case] = hippocampus_image(case)
        brighter = sitk.Cast(images[case], sitk.sitkInt16) + 7  # the same grid, other values
        for j, (description, image) in enumerate((("T1 AX", images[case]), ("T2 COR", brighter))):
            uids[case, description] = f"1.2.826.0.1.3680043.8.498.{i + 1}{j + 1}" + "7" * 36  # 64 characters
            write_series(image, root / "images" / case, uid=uids[case, description], description=description,
                         seed=2 * i + j)
        sitk.WriteImage(hippocampus_image(case, label=True), str(root / "labels" / f"{case}.nii.gz"))

    def converted(choice: str) -> dict[str, np.ndarray]:
        checked = check_dataset(IngestOptions(root, folds=["all"], progress=False, series=choice))
        raw = tmp_path / f"raw_{choice}"
        (raw / "imagesTr").mkdir(parents=True)
        (raw / "labelsTr").mkdir()
        conv = convert(checked, SimpleNamespace(reset_raw=lambda: raw), progress=False)
        return {case: sitk.GetArrayFromImage(sitk.ReadImage(files["images"][0])) for case, files in conv.cases.items()}

    first, second = converted("t1 ax"), converted("T2 COR")
    for case, image in images.items():
        np.testing.assert_array_equal(first[case], canonical(image)[0])
        np.testing.assert_array_equal(second[case], canonical(image)[0].astype(np.int16) + 7)
    with pytest.raises(DataProblems) as e:
        check_dataset(IngestOptions(root, folds=["all"], progress=False))
    rows = [p for p in e.value.problems if "2 DICOM series in one folder" in p.problem]
    assert sorted(p.case for p in rows) == sorted(images)
    table = format_table(e.value.problems, width=2000)  # one line per row
    for p in rows:
        assert len(p.problem) > 200 and p.fix == DICOM_FIX and "--series" in p.problem
        for description in ("T1 AX", "T2 COR"):
            assert uids[p.case, description] in p.problem and uids[p.case, description] in table


def test_missing_slice_and_gantry_tilt_are_reported(tmp_path):
    image = hippocampus_image(uint8_cases(1)[0])
    write_series(image, tmp_path / "gap", drop=10)
    with pytest.raises(dicom.DicomError, match=r"gap/.*non-uniform slice spacing \(steps from 1 to 2 mm"):
        read_image(tmp_path / "gap")
    write_series(image, tmp_path / "tilt", tilt=0.2)
    with pytest.raises(dicom.DicomError, match=r"tilt/.*gantry tilt of 11\.3\d degrees"):
        read_image(tmp_path / "tilt")


def test_files_that_hold_no_image_are_named(tmp_path):
    image = hippocampus_image(uint8_cases(1)[0])
    write_series(image, tmp_path / "with_sr")
    write_sr(tmp_path / "with_sr" / "report.dcm")
    with pytest.raises(dicom.DicomError, match=r"report\.dcm in the series folder with_sr/ is a structured report "
                       r"\(Basic Text SR Storage\)"):
        read_image(tmp_path / "with_sr")
    write_series(image, tmp_path / "with_dir")
    write_dicomdir(tmp_path / "with_dir" / "DICOMDIR")
    with pytest.raises(dicom.DicomError, match=r"DICOMDIR in the series folder with_dir/ is a DICOMDIR"):
        read_image(tmp_path / "with_dir")
    write_sr(tmp_path / "alone.dcm")
    with pytest.raises(dicom.DicomError, match="structured report"):
        read_image(tmp_path / "alone.dcm")



# --- the fast header reader against pydicom, and the caches of a long-lived process -----------------------

def resave(folder: Path, *, implicit: bool = False, big_endian: bool = False, charset: str | None = None,
           description: str | None = None, padding: int = 0) -> None:
    """Rewrite every slice of ``folder`` in another encoding: implicit VR or big endian, a character set with a
    description in it; with nested sequences of undefined length (and an undefined-length UN, its items in
    implicit VR), and ``padding`` bytes of a private OB before the geometry (a header longer than a first
    read)."""
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        if charset:
            ds.SpecificCharacterSet = charset
        if description is not None:
            ds.SeriesDescription = description
        inner = Dataset()
        inner.CodeMeaning = "inner"
        inner.is_undefined_length_sequence_item = True
        item = Dataset()
        item.CodeValue, item.ConceptNameCodeSequence = "X1", Sequence([inner])
        item["ConceptNameCodeSequence"].is_undefined_length = True
        item.is_undefined_length_sequence_item = True
        ds.ProcedureCodeSequence = Sequence([item, Dataset()])
        ds["ProcedureCodeSequence"].is_undefined_length = True
        if padding:
            ds.add_new(0x00110010, "LO", "MEDSEG TEST")
            ds.add_new(0x00111001, "OB", bytes(range(256)) * (padding // 256))
        if big_endian:
            ds.PixelData = ds.pixel_array.astype(">i2").tobytes()  # decoded before the syntax changes
            ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        elif implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        if big_endian:
            pydicom.dcmwrite(f, ds, implicit_vr=False, little_endian=False,
                             force_encoding=True)
            continue
        # an undefined-length UN (its items in implicit VR), as some archives keep them
        ds.add(DataElement(0x00091032, "UN", UN_ITEMS, is_undefined_length=True))
        ds.save_as(f, enforce_file_format=True)


def _implicit(group: int, element: int, value: bytes, length: int | None = None) -> bytes:
    return struct.pack("<HHI", group, element, len(value) if length is None else length) + value


# two items, the first holding a nested sequence of undefined length, everything in implicit VR
UN_ITEMS = (_implicit(0xFFFE, 0xE000, b"", 0xFFFFFFFF) + _implicit(0x0008, 0x0100, b"X1")
            + _implicit(0x0040, 0xA043, b"", 0xFFFFFFFF) + _implicit(0xFFFE, 0xE000, b"", 0xFFFFFFFF)
            + _implicit(0x0008, 0x0104, b"inner ") + _implicit(0xFFFE, 0xE00D, b"") + _implicit(0xFFFE, 0xE0DD, b"")
            + _implicit(0xFFFE, 0xE00D, b"") + _implicit(0xFFFE, 0xE000, b""))


def pydicom_only(monkeypatch) -> None:
    """Every file read by pydicom, as before the fast reader: the reference."""
    monkeypatch.setattr(dicom_series, "_fast_read", lambda path, pixels: None)
    dicom.clear_caches()


@pytest.mark.parametrize("variant", ["implicit", "unicode", "latin1", "long_header", "big_endian"])
def test_fast_reader_reads_as_pydicom_does(tmp_path, monkeypatch, variant):
    image = hippocampus_image(uint8_cases(1)[0])
    folder = tmp_path / "series"
    write_series(image, folder)
    resave(folder, **{"implicit": dict(implicit=True, padding=20000),
                      "unicode": dict(charset="ISO_IR 192", description="Kopf T1 – Hirn ü"),
                      "latin1": dict(charset="ISO_IR 100", description="Kopf T1 Hirn ü"),
                      "long_header": dict(padding=40000),
                      "big_endian": dict(big_endian=True)}[variant])
    first = sorted(folder.iterdir())[0]
    raw = fast_reader._fast_read(first, pixels=True)
    if variant == "big_endian":
        assert raw is None  # pydicom's path
    else:
        assert fast_reader._fast_slice(first, raw) is not None and fast_reader._fast_pixels(raw) is not None
        assert (fast_reader._fast_slice(first, fast_reader._fast_read(first, pixels=False))
                == fast_reader._fast_slice(first, raw))
    dicom.clear_caches()
    fast = dicom.read_series(folder), dicom.read_series_geometry(folder)
    assert_same(fast[0], image)
    pydicom_only(monkeypatch)
    slow = dicom.read_series(folder), dicom.read_series_geometry(folder)
    assert fast[1] == slow[1]  # every slice's header, the order and the grid
    np.testing.assert_array_equal(fast[0].array, slow[0].array)
    assert fast[0].array.dtype == slow[0].array.dtype
    if variant in ("unicode", "latin1"):
        assert fast[1].description == pydicom.dcmread(first).SeriesDescription


def test_truncated_and_stray_files_are_named(tmp_path, monkeypatch):
    image = hippocampus_image(uint8_cases(1)[0])
    folder = tmp_path / "series"
    write_series(image, folder)
    victim = sorted(folder.iterdir())[3]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # truncated inside the pixels
    with pytest.raises(dicom.DicomError, match=rf"{victim.name}: the file is truncated \(it ends inside its pixel"):
        dicom.read_series(folder)
    assert dicom.read_series_geometry(folder).shape[0] == image.GetSize()[2]  # its header is whole
    victim.write_bytes(data[:300])  # truncated inside the header
    with pytest.raises(dicom.DicomError, match=rf"{victim.name}: the file is truncated \(it ends inside its header"):
        dicom.read_series_geometry(folder)
    assert dicom.is_series_folder(folder)
    monkeypatch.setattr(dicom_series, "_fast_read", lambda path, pixels: None)  # pydicom's path: its own message
    with pytest.raises(dicom.DicomError, match=rf"{victim.name} in the series folder series/ is MR Image Storage"):
        dicom.read_series_geometry(folder)
    monkeypatch.undo()
    victim.write_bytes(data)
    (folder / "README").write_text("not DICOM at all")  # a stray file beside the slices is no slice
    assert_same(dicom.read_series(folder), image)


def test_a_series_rewritten_in_place_is_read_again_by_the_next_check(tmp_path):
    """A long-lived process (a notebook, a server) checks, the user fixes the files in place, checks again:
    the second check reads the files as they are now, not as the caches remember them."""
    from medseg_auto.ingest.pipeline import DataProblems, IngestOptions, check_dataset

    root = tmp_path / "ds"
    (root / "labels").mkdir(parents=True)
    cases = uint8_cases(2)
    for i, case in enumerate(cases):
        write_series(hippocampus_image(case), root / "images" / case, seed=i)
        sitk.WriteImage(hippocampus_image(case, label=True), str(root / "labels" / f"{case}.nii.gz"))
    options = IngestOptions(root, folds=["all"], progress=False)
    first = check_dataset(options)
    pixels, moved = (root / "images" / c for c in cases)
    before = first.infos[pixels].shape, dicom.read_series(pixels).array.copy()

    sizes = {f: f.stat().st_size for f in pixels.iterdir()}
    for f in pixels.iterdir():  # the same files, the same sizes, other values: only the times change
        ds = pydicom.dcmread(f)
        ds.PixelData = (ds.pixel_array + 5).astype(np.int16).tobytes()
        with open(f, "r+b") as out:
            ds.save_as(out, enforce_file_format=True)
    assert {f: f.stat().st_size for f in pixels.iterdir()} == sizes
    names = {f.name for f in moved.iterdir()}
    for f in moved.iterdir():  # the series re-exported 2 mm off its label
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [f"{v + d:.6f}" for v, d in zip(map(float, ds.ImagePositionPatient), (0, 2, 0))]
        ds.save_as(f, enforce_file_format=True)
    assert {f.name for f in moved.iterdir()} == names

    with pytest.raises(DataProblems) as e:
        check_dataset(options)
    rows = [p for p in e.value.problems if p.is_error]
    assert [p.case for p in rows] == [cases[1]] and "geometry differs" in rows[0].problem
    now = dicom.read_series(pixels)
    assert now.array.shape == before[0] and np.array_equal(now.array, before[1] + 5)


def test_a_dicom_seg_follows_its_series_to_a_new_folder(tmp_path):
    from medseg_auto.predict.dicom_seg import write_dicom_seg

    case = uint8_cases(1)[0]
    image, label = hippocampus_image(case), hippocampus_image(case, label=True)
    write_series(image, tmp_path / "before")
    assert dicom.is_series_folder(tmp_path / "before")
    write_dicom_seg(sitk.GetArrayFromImage(label), tmp_path / "seg.dcm", tmp_path / "before",
                    [("anterior", (1,)), ("posterior", (2,))])
    np.testing.assert_array_equal(read_image(tmp_path / "seg.dcm").array, sitk.GetArrayFromImage(label))
    (tmp_path / "before").rename(tmp_path / "after")  # the series moved: found where discovery sees it now
    assert dicom.is_series_folder(tmp_path / "after")
    np.testing.assert_array_equal(read_image(tmp_path / "seg.dcm").array, sitk.GetArrayFromImage(label))
    shutil.rmtree(tmp_path / "after")  # and gone: said so, not a stale folder's error
    with pytest.raises(dicom.DicomError, match="references series .* not among the series folders"):
        read_image(tmp_path / "seg.dcm")

# --- training: paired and per-case DICOM datasets, end to end through --check ------------------------------

def write_seg_nrrd(label: sitk.Image, path: Path) -> None:
    """A label saved as 3D Slicer saves a segmentation (``.seg.nrrd`` with its segment keys)."""
    image = sitk.Cast(label, sitk.sitkUInt8)
    for i, name in enumerate(("anterior", "posterior")):
        image.SetMetaData(f"Segment{i}_ID", f"Segment_{i + 1}")
        image.SetMetaData(f"Segment{i}_Name", name)
        image.SetMetaData(f"Segment{i}_LabelValue", str(i + 1))
        image.SetMetaData(f"Segment{i}_Layer", "0")
    sitk.WriteImage(image, str(path), useCompression=True)


def dicom_hippocampus(root: Path, cases: list[str]) -> dict[str, sitk.Image]:
    """A paired dataset: ``images/CASE/`` one DICOM series per case (real pixels, float cases stored with a
    rescale slope of 0.25), labels as NIfTI, DICOM-SEG and Slicer ``.seg.nrrd`` in turn. Returns each case's
    source image."""
    from medseg_auto.predict.dicom_seg import write_dicom_seg

    (root / "labels").mkdir(parents=True)
    sources = {}
    for i, case in enumerate(cases):
        image, label = hippocampus_image(case), hippocampus_image(case, label=True)
        slope = 1.0 if image.GetPixelID() == sitk.sitkUInt8 else 0.25
        write_series(image, root / "images" / case, seed=i, slope=slope)
        sources[case] = (image, slope)
        kind = ("nifti", "seg", "nrrd")[i % 3]
        if kind == "nifti":
            sitk.WriteImage(label, str(root / "labels" / f"{case}.nii.gz"))
        elif kind == "seg":
            dicom.is_series_folder(root / "images" / case)  # as discovery does: the SEG's series is known
            write_dicom_seg(sitk.GetArrayFromImage(label), root / "labels" / f"{case}.dcm", root / "images" / case,
                            [("anterior", (1,)), ("posterior", (2,))])
        else:
            write_seg_nrrd(label, root / "labels" / f"{case}.seg.nrrd")
    return sources


def test_paired_dicom_dataset_checks_and_converts_voxel_exact(project, train_cli):
    from conftest import read_record, tree_digest, verify_with_nnunet

    cases = [f"hippocampus_{n:03d}" for n in (1, 3, 7, 8, 17, 19, 23, 14)]
    root = project / "input_train" / "hdcm"
    sources = dicom_hippocampus(root, cases)
    tilted = "hippocampus_014"  # this one's series is rewritten with a gantry tilt
    for f in (root / "images" / tilted).iterdir():
        f.unlink()
    write_series(sources[tilted][0], root / "images" / tilted, slope=0.25, tilt=0.3)
    shifted = cases[0]  # and this one's NIfTI label lies 2 mm off its series' grid
    label = hippocampus_image(shifted, label=True)
    label.SetOrigin(tuple(np.array(label.GetOrigin()) + (0, 2, 0)))
    sitk.WriteImage(label, str(root / "labels" / f"{shifted}.nii.gz"))
    mixed = "hippocampus_020"  # and this one's folder holds a second series, with a structured report
    write_series(hippocampus_image(mixed), root / "images" / mixed, description="T1 AX", slope=0.25)
    write_series(hippocampus_image(mixed), root / "images" / mixed, description="T1 AX repeat", slope=0.25, seed=9)
    sitk.WriteImage(hippocampus_image(mixed, label=True), str(root / "labels" / f"{mixed}.nii.gz"))
    write_sr(root / "images" / cases[2] / "report")
    before = tree_digest(root)

    code, out, err = train_cli("-d", "hdcm", "-l", "anterior,posterior", "--check")
    assert code == 2, err
    tilt_row = next(line for line in err.splitlines() if tilted in line and "gantry tilt" in line)
    assert "16.7" in tilt_row and f"images/{tilted}" in tilt_row
    grid_row = next(line for line in err.splitlines() if shifted in line and "geometry differs" in line)
    assert "origin" in grid_row
    mixed_row = next(line for line in err.splitlines() if mixed in line and "2 DICOM series" in line)
    assert "'T1 AX' (" in mixed_row and "'T1 AX repeat' (" in mixed_row and "--series" in mixed_row
    sr_row = next(line for line in err.splitlines() if cases[2] in line and "ERROR" in line)
    assert "report in the series folder" in sr_row and "structured report" in sr_row
    assert tree_digest(root) == before

    code, out, err = train_cli("-d", "hdcm", "-l", "anterior,posterior", "--check", "--skip-invalid")
    assert code == 0, err
    assert "Cases      5 usable" in out
    assert tree_digest(root) == before  # converted into the work folder, never beside the input
    raw = Path(read_record(project, "hdcm")["raw_dataset"])
    verify_with_nnunet(raw)
    import json

    listing = json.loads((raw / "dataset.json").read_text())["dataset"]
    assert sorted(listing) == sorted(set(cases) - {tilted, shifted, cases[2]})
    for case, files in listing.items():
        image, slope = sources[case]
        written = sitk.ReadImage(files["images"][0])
        array = sitk.GetArrayFromImage(image)
        np.testing.assert_allclose(sitk.GetArrayFromImage(written), np.rint(array / slope) * slope, rtol=1e-6,
                                   atol=1e-6)
        assert np.allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-4)
        assert np.allclose(written.GetDirection(), image.GetDirection(), atol=1e-6)
        assert Path(files["images"][0]).is_relative_to(project / "work")
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(files["label"])),
                                      sitk.GetArrayFromImage(hippocampus_image(case, label=True)))


def test_per_case_dicom_series_folders_are_channels(project, train_cli):
    from conftest import read_record

    crops = copy_brats_crops(project / "crops", n=2, size=(40, 36, 24))
    root = project / "input_train" / "bdcm"
    for case in sorted(crops.iterdir()):
        for channel, name in (("flair", "Flair_subtrMeanDivStd"), ("t1c", "T1c_subtrMeanDivStd")):
            write_series(sitk.ReadImage(str(case / f"{name}.nii.gz")), root / case.name / channel,
                         description=channel.upper(), slope=0.001)
        shutil.copy(case / "OTMultiClass.nii.gz", root / case.name / "OTMultiClass.nii.gz")
    code, out, err = train_cli("-d", "bdcm", "-i", "FLAIR,T1c", "--check", "-f", "full")
    assert code == 0, err
    assert "one folder per case" in out and "Cases      2 usable" in out
    raw = Path(read_record(project, "bdcm")["raw_dataset"])
    import json

    channels = json.loads((raw / "dataset.json").read_text())["channel_names"]
    assert sorted(channels.values()) == ["FLAIR", "T1c"]


def test_dicom_seg_inside_the_case_series_folder_is_its_label(project, train_cli):
    """A case folder as a PACS export leaves it: the slices and the case's DICOM-SEG side by side, every file
    named by its UID without an ending. The SEG is the case's label (found by its content, not its name) and
    no slice of the series; labels come out voxel-exact, and prediction's reading of the folder skips it."""
    import json

    from conftest import read_record
    from medseg_auto.predict.dicom_seg import write_dicom_seg

    cases = uint8_cases(5)
    root = project / "input_train" / "pacs"
    for i, case in enumerate(cases):
        folder = root / case
        write_series(hippocampus_image(case), folder, seed=i)
        for f in folder.iterdir():  # PACS names: the SOP instance UID, no ending
            f.rename(folder / pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        label = sitk.GetArrayFromImage(hippocampus_image(case, label=True)).astype(np.uint8)
        seg = write_dicom_seg(label, project / "seg.dcm", folder, [("anterior", (1,)), ("posterior", (2,))])
        seg.rename(folder / pydicom.dcmread(seg, stop_before_pixels=True).SOPInstanceUID)
    assert dicom.is_series_folder(root / cases[0])
    assert_same(read_image(root / cases[0]), hippocampus_image(cases[0]))  # the SEG is no slice
    code, out, err = train_cli("-d", "pacs", "-l", "anterior,posterior", "--check")
    assert code == 0, err
    assert "Cases      5 usable" in out
    listing = json.loads((Path(read_record(project, "pacs")["raw_dataset"]) / "dataset.json").read_text())["dataset"]
    for case, files in listing.items():
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(files["label"])),
                                      sitk.GetArrayFromImage(hippocampus_image(case, label=True)))


# --- prediction: series in, NIfTI and DICOM-SEG out ---------------------------------------------------------

@pytest.fixture(scope="module")
def hippo_bundle(trained) -> Path:
    project, done, _, _ = trained
    assert done.returncode == 0, done.stderr[-3000:]
    return project / "output_models" / "hippo"


def _predict(capsys, *args) -> tuple[int, str]:
    from medseg_auto.cli.predict import main as predict_main

    code = predict_main([str(a) for a in args] + ["--quiet"])
    return code, capsys.readouterr().err


def test_prediction_on_series_matches_the_nifti_scans_and_writes_dicom_seg(hippo_bundle, tmp_path, capsys):
    import highdicom as hd

    cases = uint8_cases(6)[-2:]
    (tmp_path / "nifti").mkdir()
    for i, case in enumerate(cases):
        image = hippocampus_image(case) if i == 0 else rotated(hippocampus_image(case), (10, 0, -5))
        write_series(image, tmp_path / "series" / case, seed=i)
        sitk.WriteImage(image, str(tmp_path / "nifti" / f"{case}.nii.gz"))
    code, err = _predict(capsys, "-m", hippo_bundle, "-i", tmp_path / "nifti", "-o", tmp_path / "ref", "--fast")
    assert code == 0, err
    code, err = _predict(capsys, "-m", hippo_bundle, "-i", tmp_path / "series", "-o", tmp_path / "out", "--fast")
    assert code == 0, err
    for case in cases:  # a folder of series folders: NIfTI label maps in each series' geometry
        ours = sitk.ReadImage(str(tmp_path / "out" / f"{case}.nii.gz"))
        ref = sitk.ReadImage(str(tmp_path / "ref" / f"{case}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(ref))
        for a, b in ((ours.GetOrigin(), ref.GetOrigin()), (ours.GetSpacing(), ref.GetSpacing()),
                     (ours.GetDirection(), ref.GetDirection())):
            np.testing.assert_allclose(a, b, atol=1e-4)

    series = tmp_path / "series" / cases[1]  # one series folder as -i, a DICOM-SEG out
    code, err = _predict(capsys, "-m", hippo_bundle, "-i", series, "-o", tmp_path / "seg", "--fast",
                         "--output-format", "dicom-seg")
    assert code == 0, err
    seg = hd.seg.segread(tmp_path / "seg" / f"{cases[1]}.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["anterior", "posterior"]
    grid = dicom.read_series_geometry(series)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == grid.uid
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ref" / f"{cases[1]}.nii.gz")))
    back = seg.get_pixels_by_source_instance([s.sop_instance_uid for s in grid.slices], combine_segments=True)
    np.testing.assert_array_equal(back, expected)  # highdicom, onto the series' slices (real labels: paired test)
    np.testing.assert_array_equal(read_image(tmp_path / "seg" / f"{cases[1]}.dcm").array, expected)  # ours

    code, err = _predict(capsys, "-m", hippo_bundle, "-i", tmp_path / "nifti", "-o", tmp_path / "bad",
                         "--output-format", "dicom-seg")
    assert code == 2 and "is not a DICOM series" in err and not (tmp_path / "bad").exists()


def test_prediction_refuses_mixed_series_and_non_image_dicom(hippo_bundle, tmp_path, capsys):
    a, b = uint8_cases(2)
    write_series(hippocampus_image(a), tmp_path / "scans" / "mixed", description="T1 AX")
    write_series(hippocampus_image(b), tmp_path / "scans" / "mixed", description="T2 COR", seed=3)
    code, err = _predict(capsys, "-m", hippo_bundle, "-i", tmp_path / "scans", "-o", tmp_path / "out")
    assert code == 2 and "Traceback" not in err
    assert "2 DICOM series in one folder" in err and "'T2 COR'" in err and "--series" in err
    assert not (tmp_path / "out").exists()
    write_dicomdir(tmp_path / "DICOMDIR")
    code, err = _predict(capsys, "-m", hippo_bundle, "-i", tmp_path / "DICOMDIR", "-o", tmp_path / "out")
    assert code == 2 and "DICOMDIR: a DICOMDIR (an index of a DICOM medium, not an image)" in err
    code, err = _predict(capsys, "-m", hippo_bundle, "-i", tmp_path / "scans", "-o", tmp_path / "out",
                         "--series", "T2 COR", "--fast")
    assert code == 0, err
    assert (tmp_path / "out" / "mixed.nii.gz").is_file()


def test_a_case_folder_holding_only_a_dicomdir_is_named_at_check(project, train_cli):
    cases = [f"hippocampus_{n:03d}" for n in (1, 3, 7, 8, 17, 19)]
    root = project / "input_train" / "hdir"
    dicom_hippocampus(root, cases[:-1])
    (root / "images" / cases[-1]).mkdir()
    write_dicomdir(root / "images" / cases[-1] / "DICOMDIR")  # a CD's index where the slices should be
    sitk.WriteImage(hippocampus_image(cases[-1], label=True), str(root / "labels" / f"{cases[-1]}.nii.gz"))
    code, out, err = train_cli("-d", "hdir", "--check")
    assert code == 2 and "Traceback" not in err
    row = next(line for line in err.splitlines() if cases[-1] in line and "ERROR" in line)
    assert "DICOMDIR in the series folder" in row and "not an image" in row


def test_case_folders_holding_the_slices_and_the_label(project, train_cli):
    from conftest import read_record

    root = project / "input_train" / "flatcase"
    cases = uint8_cases(5)
    for i, case in enumerate(cases):
        write_series(hippocampus_image(case), root / case, seed=i)
        sitk.WriteImage(hippocampus_image(case, label=True), str(root / case / "seg.nii.gz"))
    code, out, err = train_cli("-d", "flatcase", "-l", "anterior,posterior", "--check")
    assert code == 0, err
    assert "one folder per case" in out and "Cases      5 usable" in out
    import json

    raw = Path(read_record(project, "flatcase")["raw_dataset"])
    listing = json.loads((raw / "dataset.json").read_text())["dataset"]
    for case in cases:
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(listing[case]["images"][0])),
                                      sitk.GetArrayFromImage(hippocampus_image(case)))


def test_dicom_seg_off_its_series_grid_is_reported(tmp_path):
    from medseg_auto.predict.dicom_seg import write_dicom_seg

    case = uint8_cases(1)[0]
    image, label = hippocampus_image(case), hippocampus_image(case, label=True)
    uid = "1.2.826.0.1.3680043.8.498.77"
    write_series(image, tmp_path / "series", uid=uid)
    write_dicom_seg(sitk.GetArrayFromImage(label), tmp_path / "seg.dcm", tmp_path / "series",
                    [("anterior", (1,)), ("posterior", (2,))])
    np.testing.assert_array_equal(read_image(tmp_path / "seg.dcm").array, sitk.GetArrayFromImage(label))
    for f in (tmp_path / "series").iterdir():  # the same series re-exported half a voxel off
        f.unlink()
    moved = sitk.Image(image)
    moved.SetOrigin(tuple(np.array(image.GetOrigin()) + (0.5, 0, 0)))
    write_series(moved, tmp_path / "series", uid=uid)
    with pytest.raises(dicom.DicomError, match=r"frame \d+ of the DICOM-SEG is not on a slice of series "
                       rf"{uid} in series/ \(its position is at voxel \[-?0\.5, 0\.0, \d+\.0\]"):
        read_image(tmp_path / "seg.dcm")
