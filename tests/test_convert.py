"""Conversion of the other layouts and formats to nnU-Net raw, checked by nnU-Net's own integrity check."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from conftest import copy_hippocampus, copy_membrane, read_record, tree_digest, verify_with_nnunet
from medseg_auto.ingest.labels import LabelRequest, parse_label_arg, parse_regions, plan_labels


def _dataset_json(project: Path, name: str) -> dict:
    return json.loads((Path(read_record(project, name)["raw_dataset"]) / "dataset.json").read_text())


def _verify(project: Path, name: str) -> None:
    verify_with_nnunet(read_record(project, name)["raw_dataset"])


def test_nnunet_raw_layout_keeps_its_dataset_json(project, train_cli, tmp_path):
    src = copy_hippocampus(tmp_path / "src", n=6)
    raw = project / "input_train" / "Dataset004_Hippocampus"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for f in (src / "images").iterdir():
        shutil.copy2(f, raw / "imagesTr" / f.name.replace(".nii.gz", "_0000.nii.gz"))
        shutil.copy2(src / "labels" / f.name, raw / "labelsTr" / f.name)
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
        "numTraining": 6, "file_ending": ".nii.gz"}))
    code, out, err = train_cli("--check", "-f", "0")
    assert code == 0, err
    assert "nnU-Net raw" in out and "1 Anterior, 2 Posterior" in out
    ds = _dataset_json(project, "Dataset004_Hippocampus")
    assert ds["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
    _verify(project, "Dataset004_Hippocampus")


def test_flat_layout_with_seg_suffix_and_ct(project, train_cli, tmp_path):
    src = copy_hippocampus(tmp_path / "src", n=5)
    flat = project / "input_train" / "flat"
    flat.mkdir()
    for f in (src / "images").iterdir():
        shutil.copy2(f, flat / f.name)
        shutil.copy2(src / "labels" / f.name, flat / f.name.replace(".nii.gz", "_seg.nii.gz"))
    code, out, err = train_cli("-d", "flat", "-i", "CT", "-f", "0", "--check")
    assert code == 0, err
    assert "side by side" in out and "5 usable" in out
    assert _dataset_json(project, "flat")["channel_names"] == {"0": "CT"}  # selects nnU-Net's CT scheme
    _verify(project, "flat")


def test_mhd_and_mixed_endings_are_converted(project, train_cli, tmp_path):
    src = copy_hippocampus(tmp_path / "src", n=5)
    ds = project / "input_train" / "mixed"
    for sub in ("images", "labels"):
        (ds / sub).mkdir(parents=True)
    for i, f in enumerate(sorted((src / "images").iterdir())):
        ending = [".mhd", ".nrrd", ".nii.gz", ".nii.gz", ".mha"][i]
        for sub in ("images", "labels"):
            sitk.WriteImage(sitk.ReadImage(str(src / sub / f.name)), str(ds / sub / f.name.replace(".nii.gz", ending)))
    before = tree_digest(project / "input_train")
    code, out, err = train_cli("-d", "mixed", "-f", "0", "--check")
    assert code == 0, err
    dj = _dataset_json(project, "mixed")
    assert dj["file_ending"] == ".nii.gz"
    for case in dj["dataset"].values():
        assert case["images"][0].endswith(".nii.gz") and case["label"].endswith(".nii.gz")
    first = sorted(dj["dataset"])[0]  # the .mhd case, written anew with the same pixels and geometry
    a, b = sitk.ReadImage(dj["dataset"][first]["images"][0]), sitk.ReadImage(str(src / "images" / (first + ".nii.gz")))
    assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)) and a.GetOrigin() == b.GetOrigin()
    assert tree_digest(project / "input_train") == before
    _verify(project, "mixed")


def test_jpeg_rgb_images_and_gif_masks(project, train_cli, tmp_path):
    src = copy_membrane(tmp_path / "src", n=5)
    ds = project / "input_train" / "colour"
    (ds / "img").mkdir(parents=True)
    (ds / "masks").mkdir()
    rng = np.random.default_rng(0)
    for f in (src / "images").iterdir():
        grey = np.asarray(Image.open(f))
        rgb = np.stack([grey, 255 - grey, rng.integers(0, 255, grey.shape, dtype=np.uint8)], -1)
        Image.fromarray(rgb).save(ds / "img" / (f.stem + ".jpg"), quality=95)
        Image.open(src / "labels" / f.name).convert("L").save(ds / "masks" / (f.stem + "_mask.gif"))
    code, out, err = train_cli("-d", "colour", "-l", "membrane", "-f", "0", "--check")
    assert code == 0, err
    dj = _dataset_json(project, "colour")
    assert dj["file_ending"] == ".png"
    assert list(dj["channel_names"].values()) == ["MRI_R", "MRI_G", "MRI_B"]
    case = dj["dataset"]["0"]
    assert len(case["images"]) == 3 and all(p.endswith(".png") for p in case["images"])
    assert set(np.unique(np.asarray(Image.open(case["label"])))) == {0, 1}
    _verify(project, "colour")


def test_sparse_values_are_made_consecutive_and_recorded():
    plan = plan_labels({"a": {0, 1, 2, 4}, "b": {0, 4}}, LabelRequest())
    assert plan.mapping == {0: 0, 1: 1, 2: 2, 4: 3}
    assert plan.record()["nnunet_to_original"] == {"0": 0, "1": 1, "2": 2, "3": 4}
    assert not [p for p in plan.problems if p.is_error]


def test_named_values_and_regions_parse():
    assert parse_label_arg("edema=2,enhancing=4") == (["edema", "enhancing"], [2, 4])
    plan = plan_labels({"a": {0, 2, 4}}, LabelRequest(*parse_label_arg("enhancing=4,edema=2")))
    assert plan.mapping == {0: 0, 2: 1, 4: 2} and plan.names == {1: "edema", 2: "enhancing"}
    regions = parse_regions("WT=1,2,4;TC=1,4;ET=4")
    plan = plan_labels({"a": {0, 1, 2, 4}}, LabelRequest(regions=regions))
    assert plan.regions == [("WT", [1, 2, 3]), ("TC", [1, 3]), ("ET", [3])]
    assert plan.regions_class_order == [2, 1, 3]


def test_regions_that_cannot_be_painted_are_refused():
    from medseg_auto.errors import InputError

    with pytest.raises(InputError, match="largest to the smallest"):
        plan_labels({"a": {0, 1, 2}}, LabelRequest(regions=parse_regions("ET=2;WT=1,2")))


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_written_volumes_keep_the_grid_nnunet_reads(tmp_path, ending):
    """``write_volume`` (nibabel, for speed) writes what SimpleITK, nnU-Net's reader, reads back: the pixels,
    spacing, origin and an oblique direction of a real hippocampus case; a sheared direction, which a NIfTI
    qform cannot hold, still goes through SimpleITK and reads back as SimpleITK's own file does."""
    from medseg_auto.ingest.formats import ImageData, write_volume

    src = copy_hippocampus(tmp_path / "src", n=1)
    case = sitk.ReadImage(str(next((src / "images").iterdir())))
    array = sitk.GetArrayFromImage(case)
    angle = np.deg2rad(25)
    rotation = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    sheared = np.array([[1.0, 0.2, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    for name, axes in (("oblique", rotation), ("sheared", sheared)):
        image = ImageData((0.9, 1.1, 2.5), (-12.5, 30.25, 7.0), tuple(axes.ravel()), 1, array=array)
        out = tmp_path / f"{name}{ending}"
        write_volume(image, out)
        reference = sitk.GetImageFromArray(array)
        reference.SetSpacing(image.spacing)
        reference.SetOrigin(image.origin)
        reference.SetDirection(image.direction)
        sitk.WriteImage(reference, str(tmp_path / f"itk{ending}"))
        expected = sitk.ReadImage(str(tmp_path / f"itk{ending}"))
        back = sitk.ReadImage(str(out))
        assert np.array_equal(sitk.GetArrayFromImage(back), array), name
        assert back.GetPixelID() == case.GetPixelID(), name
        assert np.allclose(back.GetSpacing(), image.spacing, atol=1e-5), name
        assert np.allclose(back.GetOrigin(), image.origin, atol=1e-4), name
        assert np.allclose(back.GetDirection(), expected.GetDirection(), atol=1e-5), name
        if name == "oblique":
            assert np.allclose(back.GetDirection(), image.direction, atol=1e-5)
