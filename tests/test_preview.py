"""exe_predict.py --preview: one PNG per scan (three slices through the largest structure found, 2D: the
image) and an index.html beside them; the reference outlined with --labels-dir; the same picture whatever
the scan's direction cosines."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from conftest import copy_membrane, real_data
from medseg_auto.cli.predict import main as predict_main
from medseg_auto.predict.bundle import Bundle
from medseg_auto.predict.preview import write_index, write_preview
from medseg_auto.reporting.views import centre_of_structure
from test_manifest import bundle_in_memory

GREEN = np.array([0x00, 0xD2, 0x5B])  # pictures.REFERENCE_COLOUR


def _green_pixels(png: Path) -> int:
    with Image.open(png) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=int)
    return int((np.abs(rgb - GREEN).sum(axis=-1) < 40).sum())


def _labels_bundle(tmp_path: Path) -> Bundle:
    """What write_preview reads of a bundle: the label values (255 in the files is nnU-Net's 1) and names."""
    labels = {"original_to_nnunet": {"0": 0, "255": 1, "7": 2}, "nnunet_to_original": None,
              "names": {"1": "lesion", "2": "core"}, "regions": None}
    return bundle_in_memory([""], ["MRI"], labels, folder=tmp_path)


def _volume(array: np.ndarray, path: Path, flip: bool) -> Path:
    """Written in LPS as is, or with x and z stored backwards (direction cosines -1): the same anatomy."""
    spacing = (1.0, 1.2, 2.0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array[::-1, :, ::-1] if flip else array))
    image.SetSpacing(spacing)
    if flip:
        image.SetDirection((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
        image.SetOrigin(((array.shape[2] - 1) * spacing[0], 0.0, (array.shape[0] - 1) * spacing[2]))
    sitk.WriteImage(image, str(path))
    return path


def test_preview_is_the_same_picture_whatever_the_direction_cosines(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.normal(50.0, 3.0, (16, 20, 24)).astype(np.float32)
    seg = np.zeros(image.shape, np.uint8)
    seg[9:13, 3:9, 14:21] = 255   # the largest structure: patient's left, anterior, superior
    seg[10:12, 5:7, 16:19] = 7
    seg[2:4, 14:16, 2:4] = 255    # and a small one elsewhere
    image[seg > 0] += 200.0
    bundle = _labels_bundle(tmp_path)
    pngs = {}
    for flip in (False, True):
        folder = tmp_path / ("flipped" if flip else "plain")
        folder.mkdir()
        scan, out = _volume(image, folder / "scan.nii.gz", flip), _volume(seg, folder / "seg.nii.gz", flip)
        ref = _volume(seg, folder / "ref.nii.gz", flip)
        preview = write_preview(folder / "preview", bundle, "scan", scan, out, ref)
        assert preview.found == f"lesion {int((seg == 255).sum())} voxels, core {int((seg == 7).sum())} voxels"
        pngs[flip] = preview.png.read_bytes()
        assert _green_pixels(preview.png) > 20  # the reference's outline
    assert pngs[False] == pngs[True]
    z, y, x = centre_of_structure(seg > 0)  # through the large structure, not the small one
    assert 9 <= z < 13 and 3 <= y < 9 and 14 <= x < 21


def test_index_lists_every_preview(tmp_path):
    rng = np.random.default_rng(2)
    bundle = _labels_bundle(tmp_path)
    previews = []
    for name in ("a", "b c"):
        image = rng.normal(size=(8, 10, 12)).astype(np.float32)
        seg = np.zeros(image.shape, np.uint8)
        seg[2:5, 3:6, 4:8] = 255
        scan = _volume(image, tmp_path / f"{name}.nii.gz", flip=False)
        previews.append(write_preview(tmp_path / "preview", bundle, name, scan,
                                      _volume(seg, tmp_path / f"{name}_seg.nii.gz", flip=False)))
    index = write_index(tmp_path / "preview", previews, tmp_path / "model", references=False).read_text()
    assert re.findall(r'<img src="([^"]+)"', index) == ["a.png", "b c.png"]
    assert "lesion 36 voxels, core 0 voxels" in index and "reference" not in index
    assert sorted(p.name for p in (tmp_path / "preview").iterdir()) == ["a.png", "b c.png", "index.html"]


@pytest.fixture(scope="module")
def hippo_bundle(trained) -> Path:
    project, done, _, _ = trained
    assert done.returncode == 0, done.stderr[-3000:]
    return project / "output_models" / "hippo"


def test_predict_writes_a_preview_per_scan(hippo_bundle, tmp_path, capsys):
    src = real_data("hippocampus")
    names = sorted(p.name for p in (src / "images").iterdir())[-2:]  # not among the training cases
    (tmp_path / "scans").mkdir()
    (tmp_path / "refs").mkdir()
    for name in names:
        (tmp_path / "scans" / name).write_bytes((src / "images" / name).read_bytes())
        (tmp_path / "refs" / name).write_bytes((src / "labels" / name).read_bytes())
    code = predict_main(["-m", str(hippo_bundle), "-i", str(tmp_path / "scans"), "-o", str(tmp_path / "out"),
                         "--fast", "--quiet", "--preview", "--labels-dir", str(tmp_path / "refs")])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    preview = tmp_path / "out" / "preview"
    stems = [n.removesuffix(".nii.gz") for n in names]
    assert sorted(p.name for p in preview.iterdir()) == sorted([f"{s}.png" for s in stems] + ["index.html"])
    assert re.findall(r'<img src="([^"]+)"', (preview / "index.html").read_text()) == [f"{s}.png" for s in stems]
    for stem in stems:
        with Image.open(preview / f"{stem}.png") as picture:
            assert picture.width > 2 * picture.height  # three slices side by side
        assert _green_pixels(preview / f"{stem}.png") > 20  # the reference outlined
    assert f"Previews: {preview / 'index.html'}" in err


def test_predict_preview_of_a_2d_model(membrane_bundle, tmp_path, capsys):
    """2D: the image itself, one picture per scan; the reference outlined, and HD95 in pixels (a PNG has no
    spacing)."""
    src = copy_membrane(tmp_path / "data", 8, crop=160)
    names = sorted(p.name for p in (src / "images").iterdir())[-2:]
    code = predict_main(["-m", str(membrane_bundle), "-i", str(src / "images"), "-o", str(tmp_path / "out"),
                         "--quiet", "--fast", "--preview", "--labels-dir", str(src / "labels")])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    assert re.search(r"cells +Dice [0-9.]+ +HD95 [0-9.na]+ pixels", err), err[-2000:]
    preview = tmp_path / "out" / "preview"
    assert len(list(preview.glob("*.png"))) == 8 and (preview / "index.html").is_file()
    for name in names:
        with Image.open(preview / name) as picture:
            assert 0.8 < picture.width / picture.height < 1.3  # one panel: the image
        assert _green_pixels(preview / name) > 20  # the reference outlined


def test_preview_of_a_dicom_series_and_of_a_4d_volume(tmp_path):
    """A scan given as a DICOM series folder, or as one volume of a 4D (Decathlon) file, gives the picture its
    NIfTI form gives: read the way training reads it, not refused."""
    from test_dicom import write_series

    rng = np.random.default_rng(2)
    image = rng.normal(50.0, 3.0, (16, 20, 24)).astype(np.float32)
    seg = np.zeros(image.shape, np.uint8)
    seg[9:13, 3:9, 14:21] = 255
    image[seg > 0] += 200.0
    image = np.rint(image).astype(np.int16)
    bundle = _labels_bundle(tmp_path)
    nifti, out = tmp_path / "scan.nii.gz", tmp_path / "seg.nii.gz"
    for array, path in ((image, nifti), (seg, out)):
        volume = sitk.GetImageFromArray(array)
        volume.SetSpacing((1.0, 1.25, 2.0))  # exact in NIfTI's float32 and in DICOM's text: the same picture size
        sitk.WriteImage(volume, str(path))
    expected = write_preview(tmp_path / "nifti", bundle, "scan", nifti, out).png.read_bytes()

    write_series(sitk.ReadImage(str(nifti)), tmp_path / "series")
    assert write_preview(tmp_path / "dicom", bundle, "scan", tmp_path / "series", out).png.read_bytes() == expected

    volumes = sitk.JoinSeries([sitk.ReadImage(str(nifti)) * 0, sitk.ReadImage(str(nifti))])
    sitk.WriteImage(volumes, str(tmp_path / "scan4d.nii.gz"))
    assert write_preview(tmp_path / "4d", bundle, "scan", tmp_path / "scan4d.nii.gz", out,
                         volume=1).png.read_bytes() == expected
