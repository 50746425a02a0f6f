"""Multi-frame DICOM images (one file, each slice a frame): built with highdicom's legacy conversion from the
single-frame series that test_dicom.py writes from the real hippocampus and BraTS volumes, then read as a
series folder and compared with the series they came from; frames out of order, per-frame rescale, files
that hold more than one volume, several series in one folder, and the whole ``--check`` of a paired dataset."""
from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
sitk = pytest.importorskip("SimpleITK")
hd = pytest.importorskip("highdicom")

from test_dicom import (assert_same, hippocampus_image, rotated, uint8_cases, write_series)  # noqa: E402
from medseg_auto.ingest import dicom  # noqa: E402
from medseg_auto.ingest.dicom import pixels as dicom_pixels  # noqa: E402
from medseg_auto.ingest.formats import read_header, read_image  # noqa: E402

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(autouse=True)
def _quiet_highdicom():
    """highdicom's legacy conversion logs each attribute it cannot fill from our minimal headers."""
    logger = logging.getLogger("highdicom")
    level, logger.level = logger.level, logging.ERROR
    yield
    logger.setLevel(level)


def datasets(folder: Path) -> list:
    return [pydicom.dcmread(f) for f in sorted(folder.iterdir())]


def as_ct(sources: list, intercept: float = -1024.0) -> list:
    """The same slices as CT Image Storage, with a rescale intercept (as CT stores Hounsfield units)."""
    for ds in sources:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CT_STORAGE
        ds.Modality, ds.KVP, ds.ImageType = "CT", "120", ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.RescaleIntercept, ds.RescaleType = f"{intercept:g}", "HU"
    return sources


def multiframe(sources: list, path: Path, *, shuffle: int | None = None, ct: bool = False,
               description: str | None = None, series_uid: str | None = None, edit=None) -> Path:
    """Convert single-frame data sets into one Legacy Converted Enhanced MR (or CT) image at ``path``:
    frames in position order (highdicom's dimension index), or in an order shuffled by ``shuffle`` (no
    index); ``description`` its SeriesDescription. ``edit`` changes the converted data set before it is
    written."""
    from pydicom.uid import generate_uid

    sources = list(sources)
    if shuffle is not None:
        random.Random(shuffle).shuffle(sources)
    kind = hd.legacy.LegacyConvertedEnhancedCTImage if ct else hd.legacy.LegacyConvertedEnhancedMRImage
    image = kind(sources, series_uid or generate_uid(), 7, generate_uid(), 1,
                 include_dimension_index=None if shuffle is None else False)
    if description is not None:  # (highdicom appends " (enhanced conversion)" to the source's)
        image.SeriesDescription = description
    if edit is not None:
        edit(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(path)
    return path


def frame_positions(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return np.array([[float(v) for v in g.PlanePositionSequence[0].ImagePositionPatient]
                     for g in ds.PerFrameFunctionalGroupsSequence])


def assert_same_volume(ours, reference, atol: float = 1e-4) -> None:
    """The same pixels (values and type) and the same grid, within ``atol``."""
    assert ours.array.dtype == reference.array.dtype
    np.testing.assert_array_equal(ours.array, reference.array)
    for a, b in ((ours.spacing, reference.spacing), (ours.origin, reference.origin),
                 (ours.direction, reference.direction)):
        np.testing.assert_allclose(a, b, atol=atol)


# --- one multi-frame file read as the series it came from ---------------------------------------------------

@pytest.mark.parametrize("orientation", ["axial", "oblique"])
def test_multiframe_file_reads_as_the_series_it_was_converted_from(tmp_path, orientation):
    source = hippocampus_image(uint8_cases(1)[0])
    image = source if orientation == "axial" else rotated(source, (20, -15, 10))
    write_series(image, tmp_path / "series")
    path = multiframe(datasets(tmp_path / "series"), tmp_path / "mf" / "image.dcm")
    assert pydicom.dcmread(path, stop_before_pixels=True).NumberOfFrames == image.GetSize()[2]
    assert dicom.is_series_folder(tmp_path / "mf")
    single, multi = read_image(tmp_path / "series"), read_image(tmp_path / "mf")
    assert_same_volume(multi, single)
    assert_same(multi, image)  # and the real volume's pixels and grid
    header = read_header(tmp_path / "mf")
    assert header.shape == multi.shape and np.allclose(header.origin, multi.origin, atol=1e-6)
    grid = dicom.read_series_geometry(tmp_path / "mf")
    assert [s.frame is not None for s in grid.slices] == [True] * multi.shape[0]
    assert_same_volume(read_image(path), single)  # the file alone, where a .dcm file is read
    assert read_header(path).shape == multi.shape


def test_frames_out_of_order_come_out_ordered_with_per_frame_rescale(tmp_path):
    """Frames shuffled in the file, each with its own rescale slope (a PixelValueTransformationSequence per
    frame): placed by position, each rescaled as its source slice was; GDCM's fallback reads the same."""
    from pydicom.uid import RLELossless

    image = hippocampus_image(uint8_cases(1)[0])
    write_series(image, tmp_path / "series", seed=3)
    sources = datasets(tmp_path / "series")
    for ds in sources:  # a slope per slice, as some scanners scale each slice
        ds.RescaleSlope = f"{1 + (int(ds.InstanceNumber) % 3) / 4:g}"
        ds.save_as(ds.filename, enforce_file_format=True)
    path = multiframe(sources, tmp_path / "mf" / "shuffled.dcm", shuffle=11)
    groups = pydicom.dcmread(path, stop_before_pixels=True).PerFrameFunctionalGroupsSequence
    assert "PixelValueTransformationSequence" in groups[0]  # per frame, not shared
    depth = frame_positions(path)[:, 2]
    assert not (np.all(np.diff(depth) > 0) or np.all(np.diff(depth) < 0))  # not in position order
    single, multi = read_image(tmp_path / "series"), read_image(tmp_path / "mf")
    assert multi.array.dtype == np.float64
    assert_same_volume(multi, single)

    # RLE-compressed frames, one slope for all: pydicom's decoder, and GDCM's for the fallback (GDCM applies
    # one rescale to every frame: a file with a rescale per frame that only GDCM decodes is refused)
    write_series(image, tmp_path / "uniform", slope=0.5)
    path = multiframe(datasets(tmp_path / "uniform"), tmp_path / "rle" / "rle.dcm", shuffle=4)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(path)
    rle = read_image(tmp_path / "rle")
    assert_same(rle, image, slope=0.5)
    itk, components = dicom_pixels._itk_pixels(dicom.read_series_geometry(tmp_path / "rle"))
    assert components == 1
    np.testing.assert_allclose(itk, rle.array, rtol=0, atol=1e-9)


def test_enhanced_ct_with_rescale_from_a_brats_crop(tmp_path):
    from conftest import copy_brats_crops

    copy_brats_crops(tmp_path / "crops", n=1, size=(40, 36, 24))
    case = next((tmp_path / "crops").iterdir())
    image = sitk.ReadImage(str(case / "Flair_subtrMeanDivStd.nii.gz"))
    write_series(image, tmp_path / "series", slope=0.001)
    for ds in as_ct(datasets(tmp_path / "series"), intercept=-2.5):
        ds.save_as(ds.filename, enforce_file_format=True)
    multiframe(datasets(tmp_path / "series"), tmp_path / "mf" / "ct.dcm", ct=True, shuffle=2)
    ds = pydicom.dcmread(tmp_path / "mf" / "ct.dcm", stop_before_pixels=True)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2.2"  # Legacy Converted Enhanced CT
    assert_same_volume(read_image(tmp_path / "mf"), read_image(tmp_path / "series"))
    data = read_image(tmp_path / "mf")
    expected = np.rint(sitk.GetArrayFromImage(image).astype(np.float64) / 0.001) * 0.001 - 2.5
    np.testing.assert_allclose(data.array, expected, rtol=0, atol=1e-9)


# --- what is refused: frames that are not one volume, a grid that would misplace them ------------------------

def two_echoes(folder: Path, path: Path, enhanced: bool) -> Path:
    """Two echoes of the same slices in one file: a legacy conversion keeps each source slice's EchoTime
    per frame; an Enhanced image states it in an MREchoSequence per frame, with a dimension index."""
    from pydicom.uid import generate_uid

    first, second = datasets(folder), datasets(folder)
    for ds in second:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PixelData = (ds.pixel_array // 2).astype(np.int16).tobytes()
    for echo, sources in ((10, first), (25, second)):
        for ds in sources:
            ds.EchoTime = str(echo)

    def as_enhanced(image):
        for group in image.PerFrameFunctionalGroupsSequence:
            converted = group.UnassignedPerFrameConvertedAttributesSequence[0]
            item = pydicom.Dataset()
            item.EffectiveEchoTime = float(converted.EchoTime)
            group.MREchoSequence = [item]
            del converted.EchoTime

    return multiframe(first + second, path, shuffle=1, edit=as_enhanced if enhanced else None)


@pytest.mark.parametrize("enhanced", [False, True])
def test_two_echoes_in_one_file_are_refused_naming_the_file(tmp_path, enhanced):
    image = hippocampus_image(uint8_cases(1)[0])
    write_series(image, tmp_path / "series")
    two_echoes(tmp_path / "series", tmp_path / "mf" / "echoes.dcm", enhanced)
    assert dicom.is_series_folder(tmp_path / "mf")
    n = image.GetSize()[2]
    pattern = (rf"echoes\.dcm: a multi-frame image of {2 * n} frames at {n} positions, holding 2 echo times "
               r"\(10, 25\); one image is one volume")
    with pytest.raises(dicom.DicomError, match=pattern):
        read_image(tmp_path / "mf")
    with pytest.raises(dicom.DicomError, match=pattern):
        read_header(tmp_path / "mf")


def test_tilt_and_missing_frames_are_reported(tmp_path):
    image = hippocampus_image(uint8_cases(1)[0])
    write_series(image, tmp_path / "tilt", tilt=0.2)
    multiframe(datasets(tmp_path / "tilt"), tmp_path / "mf_tilt" / "tilt.dcm", shuffle=0)
    with pytest.raises(dicom.DicomError, match=r"mf_tilt/ \(series .*gantry tilt of 11\.3\d degrees"):
        read_image(tmp_path / "mf_tilt")
    write_series(image, tmp_path / "gap", drop=10)
    multiframe(datasets(tmp_path / "gap"), tmp_path / "mf_gap" / "gap.dcm", shuffle=0)
    with pytest.raises(dicom.DicomError, match=r"mf_gap/.*non-uniform slice spacing \(steps from 1 to 2 mm.*"
                                               r"missing frames\?\)"):
        read_image(tmp_path / "mf_gap")
    ds = pydicom.dcmread(tmp_path / "mf_gap" / "gap.dcm")
    del ds.PerFrameFunctionalGroupsSequence[3].PlanePositionSequence
    ds.save_as(tmp_path / "mf_gap" / "gap.dcm")
    with pytest.raises(dicom.DicomError, match=r"gap\.dcm: frame 4 of the multi-frame image has no readable "
                                               r"position \(PlanePositionSequence\)"):
        read_image(tmp_path / "mf_gap")


def test_several_multiframe_files_and_slices_in_one_folder_are_several_series(tmp_path):
    a, b, c = uint8_cases(3)
    write_series(hippocampus_image(c), tmp_path / "slices", description="T1 AX")
    write_series(hippocampus_image(c), tmp_path / "mixed", description="T1 AX")  # the slices beside the files
    folder = tmp_path / "mixed"
    for case, name in ((a, "T2 MF"), (b, "FLAIR MF")):
        write_series(hippocampus_image(case), tmp_path / case)
        multiframe(datasets(tmp_path / case), folder / f"{case}.dcm", description=name)
    with pytest.raises(dicom.DicomError) as e:
        read_image(folder)
    message = str(e.value)
    assert "3 DICOM series in one folder" in message and "--series" in message
    frames = hippocampus_image(b).GetSize()[2]
    assert f"'FLAIR MF' ({frames} frames in {b}.dcm)" in message and "'T1 AX' (" in message, message
    assert_same(read_image(folder, series="flair mf"), hippocampus_image(b))
    assert_same(read_image(folder, series="T2 MF"), hippocampus_image(a))
    assert_same(read_image(folder, series="T1 AX"), hippocampus_image(c))

    # a multi-frame file under the series UID of the slices beside it: a series of its own, named by its SOP UID
    uid = pydicom.dcmread(next(iter(sorted((tmp_path / "slices").iterdir())))).SeriesInstanceUID
    same = tmp_path / "same_uid"
    write_series(hippocampus_image(c), same, uid=uid, description="T1 AX")
    path = multiframe(datasets(tmp_path / a), same / "mf.dcm", series_uid=uid, description="T1 AX")
    sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    with pytest.raises(dicom.DicomError, match=rf"2 DICOM series in one folder.*UIDs in that order: .*{sop}"):
        read_image(same)
    assert_same(read_image(same, series=sop), hippocampus_image(a))
    assert_same(read_image(same, series=uid), hippocampus_image(c))


def test_files_that_are_no_image_and_single_frames_keep_their_messages(tmp_path):
    image = hippocampus_image(uint8_cases(1)[0])
    write_series(image, tmp_path / "series")
    one = next(iter(sorted((tmp_path / "series").iterdir())))
    with pytest.raises(dicom.DicomError, match="a single DICOM slice"):
        read_image(one.rename(tmp_path / "one.dcm"))
    path = multiframe(datasets(tmp_path / "series"), tmp_path / "mf.dcm")
    assert "a multi-frame DICOM image (" in dicom.describe_dicom_file(path)
    assert "Legacy Converted Enhanced MR Image Storage" in dicom.describe_dicom_file(path)


# --- a DICOM-SEG on a multi-frame series, training and prediction through the same readers -----------------

def seg_of(label: np.ndarray, source: Path, path: Path) -> Path:
    """A BINARY DICOM-SEG of a multi-frame image, built by highdicom: its frames in the source's frame
    order (the source file's frames need not be in position order)."""
    from pydicom.sr.codedict import codes

    ds = pydicom.dcmread(source)
    grid = dicom.read_series_geometry(source)
    in_file_order = np.empty_like(label)
    for k, s in enumerate(grid.slices):
        in_file_order[s.frame] = label[k]
    masks = np.stack([in_file_order == value for value in (1, 2)], axis=-1)
    algorithm = hd.AlgorithmIdentificationSequence(name="test", version="1",
                                                   family=codes.cid7162.ArtificialIntelligence)
    segments = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=name, segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm) for i, name in enumerate(("anterior", "posterior"))]
    seg = hd.seg.Segmentation(source_images=[ds], pixel_array=masks,
                              segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
                              series_instance_uid=hd.UID(), series_number=99, sop_instance_uid=hd.UID(),
                              instance_number=1, manufacturer="test", manufacturer_model_name="test",
                              software_versions="1", device_serial_number="1")
    seg.save_as(path)
    return path


def test_paired_multiframe_dataset_checks_and_converts_voxel_exact(project, train_cli):
    import json

    from conftest import read_record, tree_digest

    cases = uint8_cases(6)
    root = project / "input_train" / "mfdcm"
    (root / "labels").mkdir(parents=True)
    for i, case in enumerate(cases):
        write_series(hippocampus_image(case), project / "slices" / case, seed=i)
        multiframe(datasets(project / "slices" / case), root / "images" / case / "enhanced.dcm",
                   shuffle=None if i % 2 else i)
        label = hippocampus_image(case, label=True)
        if i == 1:  # a DICOM-SEG of the multi-frame series as this case's label
            dicom.is_series_folder(root / "images" / case)
            seg_of(sitk.GetArrayFromImage(label), root / "images" / case / "enhanced.dcm",
                   root / "labels" / f"{case}.dcm")
        else:
            sitk.WriteImage(label, str(root / "labels" / f"{case}.nii.gz"))
    echoes = cases[-1]  # this case's file holds two echoes
    (root / "images" / echoes / "enhanced.dcm").unlink()
    two_echoes(project / "slices" / echoes, root / "images" / echoes / "echoes.dcm", enhanced=True)
    before = tree_digest(root)

    code, out, err = train_cli("-d", "mfdcm", "-l", "anterior,posterior", "--check")
    assert code == 2, err
    row = next(line for line in err.splitlines() if echoes in line and "ERROR" in line)
    assert "echoes.dcm: a multi-frame image" in row and "2 echo times (10, 25)" in row

    code, out, err = train_cli("-d", "mfdcm", "-l", "anterior,posterior", "--check", "--skip-invalid")
    assert code == 0, err
    assert f"Cases      {len(cases) - 1} usable" in out
    assert tree_digest(root) == before
    raw = Path(read_record(project, "mfdcm")["raw_dataset"])
    listing = json.loads((raw / "dataset.json").read_text())["dataset"]
    assert sorted(listing) == sorted(cases[:-1])
    for case, files in listing.items():
        image, written = hippocampus_image(case), sitk.ReadImage(files["images"][0])
        np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(image))
        for a, b in ((written.GetOrigin(), image.GetOrigin()), (written.GetSpacing(), image.GetSpacing()),
                     (written.GetDirection(), image.GetDirection())):
            np.testing.assert_allclose(a, b, atol=1e-4)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(files["label"])),
                                      sitk.GetArrayFromImage(hippocampus_image(case, label=True)))


def test_one_multiframe_file_per_case_is_a_folder_of_volumes(project, train_cli):
    """``images/CASE.dcm`` (one Enhanced file per case, as NIfTI files would lie) beside ``labels/``: each file
    is a case, not a slice of one series; a case folder's ``T1.dcm`` and ``FLAIR.dcm`` are its channels. One
    file alone in a folder stays a series folder (the layouts above)."""
    import json

    from conftest import read_record

    cases = uint8_cases(4)
    root = project / "input_train" / "files"
    (root / "labels").mkdir(parents=True)
    for i, case in enumerate(cases):
        write_series(hippocampus_image(case), project / "slices" / case, seed=i)
        multiframe(datasets(project / "slices" / case), root / "images" / f"{case}.dcm", shuffle=i)
        sitk.WriteImage(hippocampus_image(case, label=True), str(root / "labels" / f"{case}.nii.gz"))
    assert not dicom.is_series_folder(root / "images")
    code, out, err = train_cli("-d", "files", "-l", "anterior,posterior", "--check", "-f", "full")
    assert code == 0, err
    assert f"Cases      {len(cases)} usable" in out
    listing = json.loads((Path(read_record(project, "files")["raw_dataset"]) / "dataset.json").read_text())["dataset"]
    assert sorted(listing) == sorted(cases)
    for case, files in listing.items():
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(files["images"][0])),
                                      sitk.GetArrayFromImage(hippocampus_image(case)))

    channels = project / "input_train" / "channels"
    for i, case in enumerate(cases):
        for name in ("T1", "FLAIR"):
            multiframe(datasets(project / "slices" / case), channels / case / f"{name}.dcm", shuffle=i)
        sitk.WriteImage(hippocampus_image(case, label=True), str(channels / case / "seg.nii.gz"))
    code, out, err = train_cli("-d", "channels", "-l", "anterior,posterior", "-i", "T1,FLAIR", "--check", "-f", "full")
    assert code == 0, err
    assert json.loads((Path(read_record(project, "channels")["raw_dataset"]) / "dataset.json").read_text())[
        "channel_names"] == {"0": "T1", "1": "FLAIR"}


def test_prediction_reads_multiframe_series_as_the_single_frame_ones(tmp_path):
    """Prediction finds and reads scans through the same readers: a folder of multi-frame series folders
    gives the scans, and the pixels, of the series they were converted from."""
    from medseg_auto.predict.engine import read_scan
    from medseg_auto.predict.scans import find_scans
    from test_manifest import bundle_in_memory

    labels = {"original_to_nnunet": {"0": 0, "1": 1, "2": 2}, "nnunet_to_original": {"0": 0, "1": 1, "2": 2},
              "names": {"1": "anterior", "2": "posterior"}, "regions": None, "regions_class_order": None}
    bundle = bundle_in_memory(["MRI"], ["MRI"], labels, folds=("all",))
    cases = uint8_cases(2)
    for i, case in enumerate(cases):
        image = hippocampus_image(case) if i == 0 else rotated(hippocampus_image(case), (10, 0, -5))
        write_series(image, tmp_path / "series" / case, seed=i)
        multiframe(datasets(tmp_path / "series" / case), tmp_path / "mf" / case / "image.dcm", shuffle=i)
    found, reference = find_scans(tmp_path / "mf", bundle), find_scans(tmp_path / "series", bundle)
    assert [s.name for s in found.scans] == [s.name for s in reference.scans] == sorted(cases)
    for ours, ref in zip(found.scans, reference.scans):
        assert ours.header.shape == ref.header.shape
        np.testing.assert_allclose(ours.header.origin, ref.header.origin, atol=1e-4)
        np.testing.assert_allclose(ours.header.direction, ref.header.direction, atol=1e-6)
        a, b = read_scan(ours, bundle), read_scan(ref, bundle)
        np.testing.assert_array_equal(a.data, b.data)
        assert a.spacing == pytest.approx(b.spacing, abs=1e-6)

    # a folder of multi-frame files (images/CASE.dcm): each file a scan; a DICOM-SEG beside them is none
    flat = tmp_path / "flat"
    flat.mkdir()
    for case in cases:
        (tmp_path / "mf" / case / "image.dcm").rename(flat / f"{case}.dcm")
    seg_of(sitk.GetArrayFromImage(hippocampus_image(cases[0], label=True)), flat / f"{cases[0]}.dcm",
           flat / "zz_seg.dcm")
    found = find_scans(flat, bundle)
    assert [s.name for s in found.scans] == sorted(cases) and [f.name for f in found.ignored] == ["zz_seg.dcm"]
    for ours, ref in zip(found.scans, reference.scans):
        np.testing.assert_array_equal(read_scan(ours, bundle).data, read_scan(ref, bundle).data)


def test_dicom_seg_of_a_multiframe_series_reads_back_on_its_grid(tmp_path):
    """``--output-format dicom-seg`` on a multi-frame scan whose frames are shuffled in the file: the SEG
    references the one source file, its frames follow the file's, and it reads back (ours and highdicom's
    reading alike) as the label map it was written from."""
    from medseg_auto.predict.dicom_seg import write_dicom_seg

    case = uint8_cases(1)[0]
    write_series(hippocampus_image(case), tmp_path / "series", seed=5)
    source = multiframe(datasets(tmp_path / "series"), tmp_path / "mf" / "image.dcm", shuffle=7)
    label = sitk.GetArrayFromImage(hippocampus_image(case, label=True)).astype(np.uint8)
    out = write_dicom_seg(label, tmp_path / "seg.dcm", tmp_path / "mf", [("anterior", (1,)), ("posterior", (2,))])
    back = read_image(out)
    np.testing.assert_array_equal(back.array, label)
    assert_same_volume(read_image(tmp_path / "mf"), read_image(tmp_path / "series"))
    seg = hd.seg.segread(out)
    assert [r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence] == \
        [pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID]


def test_a_multiframe_file_given_alone_is_segmented_into_nifti_or_dicom_seg(tmp_path):
    """``exe_predict.py -i image.dcm`` (a multi-frame file, no folder): its segmentation is NIfTI in the
    file's geometry, or with ``--output-format dicom-seg`` a DICOM-SEG of it, never a '.dcm' written by ITK."""
    from medseg_auto.predict.outputs import output_file, prepare_output, write_segmentation
    from medseg_auto.predict.scans import find_scans
    from test_manifest import bundle_in_memory

    labels = {"original_to_nnunet": {"0": 0, "1": 1, "2": 2}, "nnunet_to_original": {"0": 0, "1": 1, "2": 2},
              "names": {"1": "anterior", "2": "posterior"}, "regions": None, "regions_class_order": None}
    bundle = bundle_in_memory(["MRI"], ["MRI"], labels, folds=("all",))
    case = uint8_cases(1)[0]
    write_series(rotated(hippocampus_image(case), (0, 15, 0)), tmp_path / "series", seed=2)
    source = multiframe(datasets(tmp_path / "series"), tmp_path / "mf" / "image.dcm", shuffle=3)
    (scan,) = find_scans(source, bundle).scans
    label = sitk.GetArrayFromImage(hippocampus_image(case, label=True)).astype(np.uint8)
    (nifti,) = prepare_output(tmp_path / "out", [scan], source, overwrite=False)
    assert nifti == (tmp_path / "out" / "image.nii.gz").resolve()
    written = sitk.ReadImage(str(write_segmentation(label, nifti, scan)))
    grid = read_image(source)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), label)
    np.testing.assert_allclose(written.GetOrigin(), grid.origin, atol=1e-4)
    np.testing.assert_allclose(written.GetDirection(), grid.direction, atol=1e-5)
    segments = [("anterior", (1,)), ("posterior", (2,))]
    seg = output_file(tmp_path / "seg", scan, segments)
    assert seg.name == "image.dcm"
    write_segmentation(label, seg, scan, segments)
    read_image(tmp_path / "mf")  # a SEG is read on its series' grid: the folder of the source, once seen
    np.testing.assert_array_equal(read_image(seg).array, label)
