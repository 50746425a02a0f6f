"""Prediction's parts without a network: label mapping back, scan discovery and channel matching for a
two-channel model, and the metrics on shapes whose answers are known."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medseg_auto.errors import InputError
from medseg_auto.metrics import dice, evaluate, hd95
from medseg_auto.predict.bundle import Bundle
from medseg_auto.predict.scans import ScanProblems, find_scans
from test_manifest import bundle_in_memory


def _bundle(keys: list[str], names: list[str], labels: dict | None = None, is_2d: bool = False) -> Bundle:
    labels = labels or {"original_to_nnunet": {"0": 0, "255": 1}, "nnunet_to_original": {"0": 0, "1": 255},
                        "names": {"1": "cells"}, "regions": None, "regions_class_order": None}
    return bundle_in_memory(keys, names, labels, is_2d)


def _volume(path: Path, shape=(6, 7, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape, np.float32)), str(path))
    return path


def test_labels_map_back_to_the_datasets_values():
    b = _bundle([""], ["MRI"])
    seg = np.array([[0, 1], [1, 0]], np.uint8)
    out = b.to_original(seg)
    assert out.tolist() == [[0, 255], [255, 0]] and out.dtype == np.uint8
    sparse = _bundle([""], ["MRI"], {"original_to_nnunet": {"0": 0, "1": 1, "2": 2, "4": 3},
                                     "nnunet_to_original": {"0": 0, "1": 1, "2": 2, "3": 4},
                                     "names": {"1": "a", "2": "b", "3": "c"}})
    assert sparse.to_original(np.array([0, 1, 2, 3])).tolist() == [0, 1, 2, 4]
    reference, unknown = sparse.to_nnunet(np.array([0, 4, 2, 7]))
    assert reference.tolist() == [0, 3, 2, 0] and unknown == [7]
    merged = _bundle([""], ["MRI"], {"original_to_nnunet": {"0": 0, "1": 1, "2": 1}, "nnunet_to_original": None,
                                     "names": {"1": "lesion"}})
    assert merged.to_original(np.array([0, 1])).tolist() == [0, 1]  # merged: nnU-Net's values stay


def test_two_channel_scans_are_matched_by_name_or_number(tmp_path):
    b = _bundle(["t1", "flair"], ["T1", "FLAIR"])
    flat = tmp_path / "flat"
    for case in ("p1", "p2"):
        _volume(flat / f"{case}_FLAIR.nii.gz")
        _volume(flat / f"{case}_t1.nii.gz")
    _volume(flat / "p1_seg.nii.gz")  # a label beside the scans is left out
    found = find_scans(flat, b)
    assert [(s.name, [f.name for f in s.files]) for s in found.scans] == [
        ("p1", ["p1_t1.nii.gz", "p1_FLAIR.nii.gz"]), ("p2", ["p2_t1.nii.gz", "p2_FLAIR.nii.gz"])]
    assert [f.name for f in found.ignored] == ["p1_seg.nii.gz"]

    numbered = tmp_path / "numbered"
    _volume(numbered / "imagesTs" / "c_0001.nii.gz")
    _volume(numbered / "imagesTs" / "c_0000.nii.gz")
    (scan,) = find_scans(numbered, b).scans
    assert scan.name == "c" and [f.name for f in scan.files] == ["c_0000.nii.gz", "c_0001.nii.gz"]

    per_case = tmp_path / "per_case"
    _volume(per_case / "x" / "Flair_x.nii.gz")
    _volume(per_case / "x" / "T1_x.nii.gz")
    _volume(per_case / "x" / "brainmask.nii.gz")
    (scan,) = find_scans(per_case, b).scans
    assert scan.name == "x" and [f.name for f in scan.files] == ["T1_x.nii.gz", "Flair_x.nii.gz"]

    # a case folder whose name is a letter of a channel's name ('a' in 'Flair') leaves the name whole
    short = tmp_path / "short"
    for case in ("a", "l"):
        _volume(short / case / "Flair_subtrMeanDivStd.nii.gz")
        _volume(short / case / "T1_subtrMeanDivStd.nii.gz")
    assert [(s.name, [f.name[:2] for f in s.files]) for s in find_scans(short, b).scans] == [
        ("a", ["T1", "Fl"]), ("l", ["T1", "Fl"])]


def test_channel_problems_name_the_scan_and_the_fix(tmp_path):
    b = _bundle(["t1", "flair"], ["T1", "FLAIR"])
    _volume(tmp_path / "s" / "y" / "a.nii.gz")
    _volume(tmp_path / "s" / "y" / "b.nii.gz")
    _volume(tmp_path / "s" / "z" / "z_t1.nii.gz")
    _volume(tmp_path / "s" / "z" / "z_flair.nii.gz", shape=(6, 7, 9))
    with pytest.raises(ScanProblems) as e:
        find_scans(tmp_path / "s", b)
    text = str(e.value)
    assert "no file is named for: T1, FLAIR" in text and "y_T1" in text
    assert "not on the grid of z_t1.nii.gz: shape (6, 7, 9) vs (6, 7, 8)" in text
    with pytest.raises(InputError, match="needs 2 channels per scan"):
        find_scans(tmp_path / "s" / "z" / "z_t1.nii.gz", b)


def test_dice_and_hd95_on_shapes_with_known_answers():
    a = np.zeros((20, 20, 20), bool)
    b = np.zeros_like(a)
    a[5:15, 5:15, 5:15] = True
    b[5:15, 5:15, 7:17] = True  # the same cube, moved 2 voxels along x
    assert dice(a, b) == pytest.approx(0.8)
    assert hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert hd95(a, b, (3.0, 1.0, 0.5)) == pytest.approx(1.0)  # 2 voxels of 0.5 mm
    assert math.isnan(dice(np.zeros_like(a), np.zeros_like(a)))
    assert math.isnan(hd95(a, np.zeros_like(a), (1, 1, 1)))
    scores = evaluate(a.astype(np.uint8) * 2, b.astype(np.uint8) * 2, [("x", (2,)), ("both", (1, 2))], (1, 1, 1))
    assert scores["x"]["dice"] == pytest.approx(0.8) and scores["both"]["dice"] == pytest.approx(0.8)


def test_output_folder_rules(tmp_path):
    from medseg_auto.predict.outputs import prepare_output
    from medseg_auto.predict.scans import Scan

    scan_file = _volume(tmp_path / "scans" / "a.nii.gz")
    scans = [Scan("a", [scan_file])]
    assert prepare_output(tmp_path / "out", scans, tmp_path / "scans", False) == [(tmp_path / "out" / "a.nii.gz").resolve()]
    with pytest.raises(InputError, match="must not be the input folder or inside it"):
        prepare_output(tmp_path / "scans" / "out", scans, tmp_path / "scans", False)
    # one scan given as a file: an output folder beside it is fine, writing over the scan is not
    assert prepare_output(tmp_path / "scans" / "out", scans, scan_file, False)
    with pytest.raises(InputError, match="would overwrite an input scan"):
        prepare_output(tmp_path / "scans", scans, scan_file, True)


def test_several_image_folders_are_refused(tmp_path):
    _volume(tmp_path / "imagesTr" / "a_0000.nii.gz")
    _volume(tmp_path / "imagesTs" / "b_0000.nii.gz")
    with pytest.raises(InputError, match="several image folders"):
        find_scans(tmp_path, _bundle([""], ["MRI"]))
    (scan,) = find_scans(tmp_path / "imagesTs", _bundle([""], ["MRI"])).scans
    assert scan.name == "b"
