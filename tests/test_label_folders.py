"""Label folders are chosen, never guessed; images and labels named differently are paired by the id their
names share. Built from the real membrane set: its masks in an oddly named folder beside a field-of-view-like
``mask/`` folder (1 on most of each image), as in DRIVE-style retina sets."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import copy_hippocampus, copy_membrane, read_record, tree_digest
from test_decathlon import make_msd_hippocampus


def _fov_masks(images: Path, dest: Path) -> None:
    """A field-of-view mask per image: 1 inside a disc covering about 80% of it, 0 outside."""
    dest.mkdir()
    for f in sorted(images.iterdir()):
        with Image.open(f) as image:
            h, w = image.height, image.width
        y, x = np.mgrid[:h, :w]
        disc = ((y - h / 2) ** 2 + (x - w / 2) ** 2) < (0.5 * min(h, w)) ** 2 * 1.0
        Image.fromarray(disc.astype(np.uint8)).save(dest / f.name)


@pytest.fixture
def retina(project) -> Path:
    """images/ + manual/ (the membrane masks, 0/255) + mask/ (field of view)."""
    ds = copy_membrane(project / "input_train" / "retina", n=6, crop=64)
    (ds / "labels").rename(ds / "manual")
    _fov_masks(ds / "images", ds / "mask")
    return ds


def test_two_label_folders_stop_with_each_described(project, retina, train_cli):
    before = tree_digest(project / "input_train")
    code, out, err = train_cli("-d", "retina", "--check", "-f", "0")
    assert code == 2, out + err
    assert "2 folders beside images/ could hold the labels" in err
    manual = next(line for line in err.splitlines() if line.strip().startswith("manual/"))
    mask = next(line for line in err.splitlines() if line.strip().startswith("mask/"))
    assert "6 file(s), values 0, 255" in manual and "field-of-view" not in manual
    assert "6 file(s), values 0, 1" in mask and "looks like a field-of-view mask" in mask
    share = float(mask.split("foreground ")[1].split("%")[0])
    assert 70 < share < 85  # the disc covers pi/4 of the square
    assert "--labels-dir manual" in err
    assert "Traceback" not in err
    assert tree_digest(project / "input_train") == before


def test_labels_dir_picks_one_and_the_other_is_named(project, retina, train_cli):
    code, out, err = train_cli("-d", "retina", "--check", "-f", "0", "--labels-dir", "manual")
    assert code == 0, err
    assert "labels from manual/" in out
    assert "Not used   mask/ (6 files)" in out
    rec = read_record(project, "retina")
    assert all("/manual/" in c["label"] for c in rec["cases"].values())
    assert rec["labels"]["original_to_nnunet"] == {"0": 0, "255": 1}
    code, out, err = train_cli("-d", "retina", "--check", "-f", "0", "--labels-dir", "ground_truth")
    assert code == 2 and "--labels-dir ground_truth: no such folder" in err and "manual/, mask/" in err


def test_one_oddly_named_folder_is_the_labels(project, train_cli):
    ds = copy_membrane(project / "input_train" / "em", n=5, crop=64)
    (ds / "labels").rename(ds / "annotations_rater1")
    (ds / "notes").mkdir()
    (ds / "notes" / "protocol.txt").write_text("rater 1, 2019")
    code, out, err = train_cli("-d", "em", "--check", "-f", "0")
    assert code == 0, err
    assert "5 usable" in out and "labels from annotations_rater1/" in out
    assert "Not used   notes/ (1 files)" in out


def test_labels_dir_in_the_decathlon_form_and_refused_where_meaningless(project, train_cli, tmp_path):
    task = make_msd_hippocampus(project / "input_train" / "task", n=5, n_test=1)
    shutil.copytree(task / "labelsTr", task / "labelsTr_rater2")
    code, out, err = train_cli("-d", "task", "--check", "-f", "0")
    assert code == 2 and "labelsTr/" in err and "labelsTr_rater2/" in err and "--labels-dir" in err
    code, out, err = train_cli("-d", "task", "--check", "-f", "0", "--labels-dir", "labelsTr_rater2")
    assert code == 0, err
    assert "labels from labelsTr_rater2/" in out and "labelsTr/" in out.split("Not used")[1]
    flat = project / "input_train" / "flat"
    src = copy_hippocampus(tmp_path / "h", n=5)
    flat.mkdir()
    for f in (src / "images").iterdir():
        shutil.copy2(f, flat / f.name)
        shutil.copy2(src / "labels" / f.name, flat / f.name.replace(".nii.gz", "_seg.nii.gz"))
    code, out, err = train_cli("-d", "flat", "--check", "-f", "0", "--labels-dir", "x")
    assert code == 2 and "no label folder to choose" in err and "--label-pattern" in err


def _rename(folder: Path, pattern: str, ending: str) -> list[str]:
    """Rename the i-th membrane PNG (in name order) to ``pattern.format(i)`` + ending, converting the format."""
    names = []
    for i, f in enumerate(sorted(folder.iterdir())):
        name = pattern.format(f"{i:02d}") + ending
        with Image.open(f) as image:
            image.save(folder / name)
        f.unlink()
        names.append(name)
    return names


def test_images_and_labels_named_differently_are_paired_by_id(project, train_cli):
    ds = copy_membrane(project / "input_train" / "drive", n=5, crop=64)
    (ds / "labels").rename(ds / "ground_truth")
    _rename(ds / "images", "{}_scan", ".tif")
    _rename(ds / "ground_truth", "{}_rater1", ".gif")
    code, out, err = train_cli("-d", "drive", "--check", "-f", "0")
    assert code == 0, err
    assert "5 usable" in out
    assert "Paired     5 image(s) with a label named otherwise, by the id their names share: 00_scan.tif + " \
           "00_rater1.gif, 01_scan.tif + 01_rater1.gif, 02_scan.tif + 02_rater1.gif ..." in out
    rec = read_record(project, "drive")
    assert rec["cases"]["03_scan"]["label"].endswith("03_rater1.gif")


def test_case_img_and_case_annotation_and_what_cannot_be_paired(project, train_cli):
    ds = copy_membrane(project / "input_train" / "cells", n=6, crop=64)
    _rename(ds / "images", "case1{}_img", ".png")
    _rename(ds / "labels", "case1{}_annotation", ".png")
    (ds / "labels" / "case105_annotation.png").unlink()
    (ds / "labels" / "case199_annotation.png").write_bytes((ds / "labels" / "case100_annotation.png").read_bytes())
    code, out, err = train_cli("-d", "cells", "--check", "-f", "0")
    assert code == 2, out + err
    rows = [line for line in err.splitlines() if "|" in line]
    assert any("case105_img" in r and "image has no label file" in r for r in rows), err
    assert any("case199_annotation.png" in r and "label has no image file" in r for r in rows), err
    (ds / "labels" / "case199_annotation.png").unlink()
    code, out, err = train_cli("-d", "cells", "--check", "-f", "0", "--skip-invalid")
    assert code == 0, err
    assert "5 usable, 1 skipped" in out
    assert "Paired     5 image(s) with a label named otherwise, by name: " \
           "case100_img.png + case100_annotation.png" in out


def test_rgb_images_take_one_name_per_colour_channel(project, train_cli):
    ds = copy_membrane(project / "input_train" / "rgb", n=5, crop=64)
    for f in (ds / "images").iterdir():
        with Image.open(f) as image:
            grey = np.asarray(image.convert("L"))
        Image.fromarray(np.stack([grey, 255 - grey, grey // 2], -1)).save(f)
    code, out, err = train_cli("-d", "rgb", "--check", "-f", "0", "-i", "R,G,B")
    assert code == 0, err
    assert "Channels   3: 0=R, 1=G, 2=B" in out
    ds_json = json.loads((Path(read_record(project, "rgb")["raw_dataset"]) / "dataset.json").read_text())
    assert ds_json["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    code, out, err = train_cli("-d", "rgb", "--check", "-f", "0", "-i", "R,G")
    assert code == 2 and "-i names 2 channels" in err


def test_prediction_never_takes_side_folders_masks_for_scans(tmp_path):
    """-i on a dataset folder with images/, manual/ and mask/: the images are the scans, the masks are not;
    without a folder named like images, the folders of many files are listed and -i must name one."""
    from medseg_auto.predict.scans import ScanProblems, find_scans
    from test_manifest import bundle_in_memory

    labels = {"original_to_nnunet": {"0": 0, "255": 1}, "nnunet_to_original": {"0": 0, "1": 255},
              "names": {"1": "membrane"}, "regions": None, "regions_class_order": None}
    bundle = bundle_in_memory([""], ["MRI"], labels, is_2d=True, folds=("all",))
    ds = copy_membrane(tmp_path / "retina", n=3, crop=64)
    (ds / "labels").rename(ds / "manual")
    _fov_masks(ds / "images", ds / "mask")
    found = find_scans(ds, bundle)
    assert sorted(f.parent.name + "/" + f.name for s in found.scans for f in s.files) == \
        sorted("images/" + p.name for p in (ds / "images").iterdir())
    for f in (ds / "manual", ds / "mask"):
        for n in range(4, 12):  # more masks than one scan's own folder holds
            shutil.copy2(next(f.iterdir()), f / f"extra{n}.png")
    (ds / "images").rename(ds / "raw_scans")
    for n in range(4, 12):
        shutil.copy2(next((ds / "raw_scans").iterdir()), ds / "raw_scans" / f"extra{n}.png")
    with pytest.raises(ScanProblems) as refused:
        find_scans(ds, bundle)
    (problem,) = refused.value.problems
    assert problem.file == "manual/ (11 files), raw_scans/ (11 files)"  # mask/ is named as no scan folder
    assert "point -i at the folder of scans itself" in problem.fix
