"""Broken datasets built from real cases: every problem is reported (case, file, problem), exit code 2,
and the input stays byte-identical."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import copy_brats, copy_hippocampus, read_record, tree_digest


@pytest.fixture
def hippo(project) -> Path:
    return copy_hippocampus(project / "input_train" / "hippo", n=10)


def _edit(path: Path, change) -> None:
    """Rewrite a NIfTI file with ``change(image) -> image`` (the test's way of breaking a real case)."""
    image = change(sitk.ReadImage(str(path)))
    sitk.WriteImage(image, str(path))


def _with_array(image: sitk.Image, fn) -> sitk.Image:
    out = sitk.GetImageFromArray(fn(sitk.GetArrayFromImage(image)))
    out.CopyInformation(image)
    return out


def _fails(train_cli, project, *args) -> str:
    """Run the CLI on a broken dataset: exit code 2, input untouched; returns what it printed."""
    before = tree_digest(project / "input_train")
    code, out, err = train_cli(*args, "--check")
    assert code == 2, out + err
    assert tree_digest(project / "input_train") == before
    last = err.rstrip().splitlines()[-1]  # the table's verdict: how many errors, the way out, nothing changed
    assert re.fullmatch(r"\d+ error\(s\) in the input \(\d+ case\(s\) affected\)\. (Fix them and rerun|Fix them, "
                        r"or rerun with --skip-invalid to continue without the \d+ listed case\(s\))\. "
                        r"Nothing was changed\.", last), err
    return err


def _row(err: str, case: str, *words: str) -> None:
    """One row of the problem table names ``case`` and says all ``words``."""
    rows = [line for line in err.splitlines() if f"| {case}" in line]
    assert any(all(w in row for w in words) for row in rows), f"no row for {case} with {words}:\n{err}"


def test_all_problems_reported_together(project, hippo, train_cli):
    img = sorted((hippo / "images").iterdir())
    lab = sorted((hippo / "labels").iterdir())
    _edit(img[0], lambda im: (im.SetOrigin((5.0, -1.0, 1.0)), im)[1])            # shifted origin
    (lab[1]).unlink()                                                            # dropped label
    _edit(img[2], lambda im: _with_array(sitk.Cast(im, sitk.sitkFloat32),
                                         lambda a: np.where(a == a.max(), np.nan, a)))  # NaN
    _edit(lab[3], lambda im: im[:, :-3, :])                                       # cropped label
    _edit(lab[4], lambda im: _with_array(im, lambda a: np.where(a == 2, 3, a).astype(a.dtype)))  # new value
    _edit(lab[5], lambda im: _with_array(sitk.Cast(im, sitk.sitkFloat32), lambda a: a * 0.5))  # 0.5 values
    err = _fails(train_cli, project, "-d", "hippo", "-l", "anterior,posterior")
    name = lambda p: p.name.replace(".nii.gz", "")  # noqa: E731
    _row(err, name(img[0]), "origin", "geometry differs")
    _row(err, name(img[1]), "image has no label file")
    _row(err, name(img[2]), "NaN or infinite")
    _row(err, name(lab[3]), "shape")
    _row(err, name(lab[4]), "label value(s) 3 not among the named labels")
    _row(err, name(lab[5]), "non-integral label values: 0.5")
    assert "6 case(s) affected" in err


def test_skip_invalid_goes_on_without_the_listed_cases(project, hippo, train_cli):
    img = sorted((hippo / "images").iterdir())
    _edit(img[0], lambda im: (im.SetSpacing((1.0, 1.0, 3.0)), im)[1])
    before = tree_digest(project / "input_train")
    code, out, err = train_cli("-d", "hippo", "--skip-invalid", "--check")
    assert code == 0, err
    assert "9 usable, 1 skipped" in out and "spacing" in err
    rec = read_record(project, "hippo")
    assert rec["skipped_cases"] == [img[0].name.replace(".nii.gz", "")]
    assert len(rec["cases"]) == 9
    assert tree_digest(project / "input_train") == before


def test_unreadable_and_empty_files(project, hippo, train_cli):
    img = sorted((hippo / "images").iterdir())
    img[0].write_bytes(img[0].read_bytes()[:200])   # truncated
    img[1].write_bytes(b"")                          # empty
    err = _fails(train_cli, project, "-d", "hippo")
    _row(err, img[0].name.replace(".nii.gz", ""), "cannot read the file", img[0].name)
    _row(err, img[1].name.replace(".nii.gz", ""), "empty (0 bytes)", img[1].name)


def test_empty_label_is_a_warning(project, hippo, train_cli):
    lab = sorted((hippo / "labels").iterdir())
    _edit(lab[0], lambda im: _with_array(im, lambda a: np.zeros_like(a)))
    code, out, err = train_cli("-d", "hippo", "--check")
    assert code == 0, err
    _row(err, lab[0].name.replace(".nii.gz", ""), "empty (background only)")


def test_four_d_image(project, hippo, train_cli):
    img = sorted((hippo / "images").iterdir())
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(img[0])))
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([a, a]).astype(np.float32), isVector=False), str(img[0]))
    err = _fails(train_cli, project, "-d", "hippo")
    _row(err, img[0].name.replace(".nii.gz", ""), "a 4D image")


def test_duplicate_case_names(project, hippo, train_cli):
    img = sorted((hippo / "images").iterdir())
    sitk.WriteImage(sitk.ReadImage(str(img[0])), str(img[0]).replace(".nii.gz", ".nrrd"))
    err = _fails(train_cli, project, "-d", "hippo")
    _row(err, img[0].name.replace(".nii.gz", ""), "duplicate", "-e")
    code, out, _ = train_cli("-d", "hippo", "-e", ".nii.gz", "--check")  # -e resolves it
    assert code == 0 and "10 usable" in out


def test_mixed_2d_and_3d(project, hippo, train_cli):
    from PIL import Image

    for sub in ("images", "labels"):
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(hippo / sub / "flat_case.png")
    err = _fails(train_cli, project, "-d", "hippo")
    _row(err, "flat_case", "2D and 3D mixed")


def test_too_few_cases_for_folds(project, train_cli):
    copy_hippocampus(project / "input_train" / "tiny", n=3)
    err = _fails(train_cli, project, "-d", "tiny", "-f", "0")
    assert "3 usable case(s): cross-validation folds need at least 5" in err and "-f full" in err
    code, out, err = train_cli("-d", "tiny", "-f", "full", "--check")
    assert code == 0, err


def test_single_label_name_for_several_values(project, hippo, train_cli):
    err = _fails(train_cli, project, "-d", "hippo", "-l", "hippocampus")
    assert "2 foreground values: 1 in 10 case(s); 2 in 10 case(s)" in err
    assert "--merge-labels" in err and "-l hippocampus_1,hippocampus_2" in err
    code, out, err = train_cli("-d", "hippo", "-l", "hippocampus", "--merge-labels", "--check")
    assert code == 0, err
    assert read_record(project, "hippo")["labels"]["original_to_nnunet"] == {"0": 0, "1": 1, "2": 1}


def test_named_values_and_values_outside(project, hippo, train_cli):
    err = _fails(train_cli, project, "-d", "hippo", "-l", "anterior=1")
    _row(err, "hippocampus_001", "label value(s) 2 not among the named labels (anterior=1)")


def test_label_without_image_and_missing_channel(project, train_cli):
    brats = copy_brats(project / "input_train" / "brats")
    (brats / "brats_2013_pat0002_1" / "T1c_subtrMeanDivStd.nii.gz").unlink()
    (brats / "brats_2013_pat0003_1" / "Flair_subtrMeanDivStd.nii.gz").rename(
        brats / "brats_2013_pat0003_1" / "Flair_subtrMeanDivStd.txt")
    (brats / "brats_2013_pat0003_1" / "T1c_subtrMeanDivStd.nii.gz").unlink()
    err = _fails(train_cli, project, "-d", "brats")
    _row(err, "brats_2013_pat0002_1", "has 1 channel(s) (FLAIR)", "missing: T1c")
    _row(err, "brats_2013_pat0003_1", "no image file beside the label")


def test_ambiguous_label_file_names_the_flag(project, train_cli):
    brats = copy_brats(project / "input_train" / "brats")
    for case in brats.iterdir():
        shutil.copy2(case / "OTMultiClass.nii.gz", case / "seg_rater2.nii.gz")
    err = _fails(train_cli, project, "-d", "brats")
    _row(err, "brats_2013_pat0001_1", "several files could be the label", "OTMultiClass.nii.gz",
         "seg_rater2.nii.gz", "--label-pattern")
    code, out, err = train_cli("-d", "brats", "--label-pattern", "OTMulti*", "--check")
    assert code == 0, err
    assert read_record(project, "brats")["cases"]["brats_2013_pat0001_1"]["label"].endswith("OTMultiClass.nii.gz")


def test_channel_names_that_do_not_match(project, train_cli):
    copy_brats(project / "input_train" / "brats")
    code, out, err = train_cli("-d", "brats", "-i", "T1,T2", "--check")
    assert code == 2 and "FLAIR, T1c" in err and "--channels" in err
    code, out, err = train_cli("-d", "brats", "--channels", "T2", "--check")
    assert code == 2 and "no channel 'T2'" in err


def test_dataset_selection(project, train_cli):
    copy_hippocampus(project / "input_train" / "a", n=5)
    copy_hippocampus(project / "input_train" / "b", n=5)
    code, out, err = train_cli("--check")
    assert code == 2 and "several datasets (a, b)" in err
    code, out, err = train_cli("-d", "c", "--check")
    assert code == 2 and "No dataset 'c'" in err
    code, out, err = train_cli("-d", "b", "-f", "full", "--check")
    assert code == 0 and "5 usable" in out


def test_input_train_itself_holds_the_dataset(project, train_cli):
    copy_hippocampus(project / "input_train", n=5)
    code, out, err = train_cli("-d", "Hippo", "-f", "full", "--check")
    assert code == 0, err
    assert (project / "work" / "Hippo" / "run.json").is_file()


def test_bad_arguments_exit_2(project, hippo, train_cli):
    assert train_cli("-d", "hippo", "-f", "7", "--check")[0] == 2
    assert train_cli("-d", "hippo", "-t", "0", "--check")[0] == 2
    assert train_cli("-d", "hippo", "--regions", "WT=", "--check")[0] == 2
    assert train_cli("-d", "hippo", "-l", "a,a", "--check")[0] == 2


def test_label_without_image_and_extra_channel(project, hippo, train_cli, tmp_path):
    shutil.copy2(sorted((hippo / "labels").iterdir())[0], hippo / "labels" / "orphan_seg.nii.gz")
    err = _fails(train_cli, project, "-d", "hippo")
    _row(err, "orphan", "label has no image file", "labels/orphan_seg.nii.gz")
    brats = copy_brats(project / "input_train" / "brats")
    case = brats / "brats_2013_pat0004_1"
    shutil.copy2(case / "T1c_subtrMeanDivStd.nii.gz", case / "T2_subtrMeanDivStd.nii.gz")
    err = _fails(train_cli, project, "-d", "brats")
    _row(err, "brats_2013_pat0004_1", "has 3 channel(s)", "extra: T2")
    code, out, err = train_cli("-d", "brats", "--channels", "FLAIR,T1c", "--check")  # choosing resolves it
    assert code == 0, err
