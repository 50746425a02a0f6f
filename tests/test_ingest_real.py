"""--check on the three real datasets, dropped into input_train/ as they are, and one --dry-run."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

from conftest import REPO, copy_membrane, read_record, real_data, tree_digest, verify_with_nnunet


def test_hippocampus_all_cases(project, train_cli):
    shutil.copytree(real_data("hippocampus"), project / "input_train" / "hippocampus")
    before = tree_digest(project / "input_train")
    code, out, err = train_cli("-d", "hippocampus", "-l", "anterior,posterior", "--check")
    assert code == 0, err
    assert "200 usable" in out and "paired folders" in out
    assert "Channels   1: 0=MRI" in out
    assert "1 anterior, 2 posterior" in out
    rec = read_record(project, "hippocampus")
    assert len(rec["cases"]) == 200
    assert rec["labels"]["original_to_nnunet"] == {"0": 0, "1": 1, "2": 2}
    raw = Path(rec["raw_dataset"])
    ds = json.loads((raw / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "anterior": 1, "posterior": 2}
    assert ds["numTraining"] == 200 and ds["file_ending"] == ".nii.gz"
    # Unchanged files are used where they lie; only float-typed labels are rewritten as integers.
    written = [c["label"] for c in ds["dataset"].values() if str(raw) in c["label"]]
    for label in written:
        assert sitk.ReadImage(label).GetPixelID() == sitk.sitkUInt8
    assert len(written) < 10
    assert tree_digest(project / "input_train") == before
    verify_with_nnunet(raw)


def test_brats_per_case_folders(project, train_cli):
    shutil.copytree(real_data("brats2015_subset"), project / "input_train" / "brats")
    before = tree_digest(project / "input_train")
    code, out, err = train_cli("--check")  # the only dataset: -d is optional
    assert code == 0, err
    assert "one folder per case" in out and "6 usable" in out
    assert "Channels   2: 0=FLAIR" in out and "1=T1c" in out
    assert "brainmask.nii.gz x6" in out  # seen, and not taken for the label
    rec = read_record(project, "brats")
    assert rec["labels"]["names"] == {"1": "label_1", "2": "label_2", "3": "label_3", "4": "label_4"}
    case = rec["cases"]["brats_2013_pat0001_1"]
    assert case["label"].endswith("OTMultiClass.nii.gz")
    assert [Path(p).name for p in case["images"]] == ["Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz"]
    ds = json.loads((Path(rec["raw_dataset"]) / "dataset.json").read_text())
    label = sitk.ReadImage(ds["dataset"]["brats_2013_pat0001_1"]["label"])
    assert label.GetPixelID() == sitk.sitkUInt8  # float labels holding integers -> integers
    src = sitk.ReadImage(case["label"])
    assert np.array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(src).astype(np.uint8))
    assert label.GetOrigin() == src.GetOrigin()
    assert tree_digest(project / "input_train") == before
    verify_with_nnunet(Path(rec["raw_dataset"]))


def test_brats_regions_and_channel_order(project, train_cli):
    shutil.copytree(real_data("brats2015_subset"), project / "input_train" / "brats")
    code, out, err = train_cli("-d", "brats", "--check", "--channels", "T1c,FLAIR", "-f", "full",
                               "--regions", "WT=1,2,3,4;TC=1,3,4;ET=4")
    assert code == 0, err
    rec = read_record(project, "brats")
    assert rec["channels"]["nnunet_names"] == ["T1c", "FLAIR"]
    ds = json.loads((Path(rec["raw_dataset"]) / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "WT": [1, 2, 3, 4], "TC": [1, 3, 4], "ET": [4]}
    assert ds["regions_class_order"] == [2, 1, 4]
    assert Path(ds["dataset"]["brats_2013_pat0001_1"]["images"][0]).name.startswith("T1c")
    verify_with_nnunet(Path(rec["raw_dataset"]))


def test_membrane_2d_masks_0_255(project, train_cli):
    shutil.copytree(real_data("membrane_2d"), project / "input_train" / "membrane")
    before = tree_digest(project / "input_train")
    code, out, err = train_cli("-d", "membrane", "-l", "membrane", "--check")
    assert code == 0, err
    assert "30 usable" in out and "2D" in out
    assert "1 membrane (value 255 in the files)" in out
    rec = read_record(project, "membrane")
    assert rec["labels"]["nnunet_to_original"] == {"0": 0, "1": 255}
    ds = json.loads((Path(rec["raw_dataset"]) / "dataset.json").read_text())
    assert ds["file_ending"] == ".png"
    first = ds["dataset"]["0"]
    assert first["images"][0] == str(project / "input_train" / "membrane" / "images" / "0.png")
    mask = np.asarray(Image.open(first["label"]))
    src = np.asarray(Image.open(project / "input_train" / "membrane" / "labels" / "0.png"))
    assert set(np.unique(mask)) == {0, 1} and np.array_equal(mask == 1, src == 255)
    assert tree_digest(project / "input_train") == before
    verify_with_nnunet(Path(rec["raw_dataset"]))


def test_exe_train_shim_runs_as_a_script(tmp_path):
    """The documented command itself, as a separate process, exit code and all."""
    copy_membrane(tmp_path / "in" / "membrane", n=5)
    cmd = [sys.executable, str(REPO / "exe_train.py"), "-d", "membrane", "-f", "full", "--dry-run",
           "--input-dir", str(tmp_path / "in"), "--work-dir", str(tmp_path / "work")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "5 usable" in done.stdout
    assert "configuration 2d" in done.stdout and "Dry run: nothing trained" in done.stdout  # planned, not trained
    bad = subprocess.run(cmd[:2] + ["-d", "nothing", "--input-dir", str(tmp_path / "in")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "No dataset 'nothing'" in bad.stderr and "membrane" in bad.stderr
