"""Never a traceback on input: whatever lies in input_train/, ingest works or ends with exit code 2 and a
message naming the file and what is wrong with it, and the input stays byte-identical."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import copy_hippocampus, copy_membrane, tree_digest
from test_decathlon import make_msd_hippocampus


def _refused(train_cli, project, *args) -> str:
    """Exit code 2 (never 1, a traceback), input untouched; returns stderr."""
    before = tree_digest(project / "input_train")
    code, out, err = train_cli(*args, "--check", "-f", "0")
    assert code == 2, out + err
    assert "Traceback" not in err
    assert tree_digest(project / "input_train") == before
    return err


@pytest.mark.parametrize("content, words", [
    ("[1, 2, 3]", "holds a list"),
    ("null", "holds a NoneType"),
    ('{"modality": "MRI", "labels": {"0": "background", "1": "a"}}', '"modality" is a str'),
    ('{"modality": {"first": "MRI"}, "labels": {"0": "background"}}', "not channel positions"),
    ('{"modality": {"0": "MRI", "2": "CT"}, "labels": {"0": "background"}}', "do not run 0..1"),
    ('{"modality": {"0": 7}, "labels": {"0": "background"}}', "every channel needs a name"),
    ('{"modality": {"0": "T1", "1": "t1"}, "labels": {"0": "background"}}', "names a channel twice"),
    ('{"modality": {"0": "MRI"}, "labels": ["background", "a"]}', '"labels" is a list'),
    ('{"modality": {"0": "MRI"}, "labels": {"0": "background", "1": ["a"]}}', 'value 1 is named ["a"]'),
    ('{"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "a", "2": "a"}}', "given to values 1 and 2"),
    ('{"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "a", "2": "a "}}', "given to values 1 and 2"),
    ('{"modality": {"0": "MRI"}, "labels": {"0": "background"}, "training": {"a": 1}}', '"training" is a dict'),
    ('{"modality": {"0": "MRI"}, "labels": {"0": "background"}, "training": [1]}', '"training" item 0'),
    ('{"modality": {"0": "MRI"}, "labels": {"0": "background"}, "test": [3]}', '"test" must list'),
    ('{"channel_names": {"0": "MRI"}, "labels": {"background": "zero", "a": 1}}', "'background' has the value"),
    ('{"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": true}}', "'a' has the value true"),
    ('{"channel_names": {"0": "MRI"}, "labels": {"background": 0}, "file_ending": 5}', '"file_ending" is 5'),
    ('{"modality": {"0": "MRI"}, "labels": {"0": "background"', "is not valid JSON"),
    ("\udcff", "not a text file"),
])
def test_dataset_json_of_the_wrong_shape(project, train_cli, content, words):
    task = make_msd_hippocampus(project / "input_train" / "task", n=5, n_test=1)
    if content == "\udcff":
        (task / "dataset.json").write_bytes(b"\xff\xfe\x00garbage\x9c")
    else:
        (task / "dataset.json").write_text(content)
    err = _refused(train_cli, project, "-d", "task")
    assert "dataset.json" in err and words in err, err


def test_nnunet_raw_dataset_json_with_a_wrong_label_value(project, train_cli, tmp_path):
    """nnU-Net raw (channel suffixes) whose dataset.json declares labels as the Decathlon does, with a name
    where a value belongs: the old traceback (int('background')) is now a message."""
    src = copy_hippocampus(tmp_path / "src", n=5)
    raw = project / "input_train" / "raw"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for f in (src / "images").iterdir():
        shutil.copy2(f, raw / "imagesTr" / f.name.replace(".nii.gz", "_0000.nii.gz"))
        shutil.copy2(src / "labels" / f.name, raw / "labelsTr" / f.name)
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"},
                                                  "labels": {"background": "0", "a": 1}}))
    err = _refused(train_cli, project, "-d", "raw")
    assert "'background' has the value \"0\"" in err


def test_empty_nifti_files_are_named(project, train_cli):
    task = make_msd_hippocampus(project / "input_train" / "task", n=5, n_test=1)
    first = sorted((task / "imagesTr").glob("h*.nii.gz"))[0]
    first.write_bytes(b"")
    (task / "labelsTr" / "hippocampus_999.nii.gz").write_bytes(b"")
    (task / "imagesTr" / "hippocampus_999.nii.gz").write_bytes(b"")
    err = _refused(train_cli, project, "-d", "task")
    assert f"imagesTr/{first.name}" in err and "the file is empty (0 bytes)" in err
    assert "labelsTr/hippocampus_999.nii.gz" in err


def test_folder_of_mixed_content(project, train_cli, tmp_path):
    """2D and 3D images, a text file named like an image, a file that is no image, an empty file and a
    subfolder in one paired dataset: every problem named by file, nothing raised."""
    ds = copy_membrane(project / "input_train" / "mixed", n=5, crop=64)
    hippo = copy_hippocampus(tmp_path / "h", n=2)
    for i, f in enumerate(sorted((hippo / "images").iterdir())):
        shutil.copy2(f, ds / "images" / f"vol{i}.nii.gz")
        shutil.copy2(hippo / "labels" / f.name, ds / "labels" / f"vol{i}.nii.gz")
    (ds / "images" / "notes.png").write_text("not an image at all")
    (ds / "labels" / "notes.png").write_text("not an image at all")
    (ds / "images" / "README.txt").write_text("read me")
    (ds / "images" / "empty.tif").write_bytes(b"")
    (ds / "labels" / "empty.tif").write_bytes(b"")
    (ds / "images" / "nested").mkdir()
    (ds / "images" / "nested" / "x.png").write_bytes(b"")
    err = _refused(train_cli, project, "-d", "mixed")
    assert "images/notes.png" in err and "cannot read the file" in err
    assert "images/empty.tif" in err and "empty (0 bytes)" in err
    assert "2D and 3D mixed" in err


def test_folder_holding_no_dataset(project, train_cli):
    folder = project / "input_train" / "junk"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("x")
    (folder / "sub" / "b.bin").write_bytes(b"\x00\x01")
    err = _refused(train_cli, project, "-d", "junk")
    assert "junk" in err and "layout" in err


def test_4d_label_and_5d_image_in_the_decathlon_form(project, train_cli):
    import nibabel
    import numpy as np

    task = make_msd_hippocampus(project / "input_train" / "task", n=5, n_test=0)
    first, second = sorted((task / "imagesTr").glob("h*.nii.gz"))[:2]
    label = nibabel.load(task / "labelsTr" / first.name)
    stacked = np.stack([np.asarray(label.dataobj)] * 2, -1)
    nibabel.save(nibabel.Nifti1Image(stacked, label.affine), task / "labelsTr" / first.name)
    image = nibabel.load(second)
    nibabel.save(nibabel.Nifti1Image(np.asarray(image.dataobj)[..., None, None].repeat(2, 3).repeat(2, 4),
                                     image.affine), second)
    err = _refused(train_cli, project, "-d", "task")
    assert f"labelsTr/{first.name}" in err and "a 4D label (2 volumes" in err
    assert f"imagesTr/{second.name}" in err and "a 5D image" in err
