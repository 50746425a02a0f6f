"""metrics.csv's Dice is nnU-Net's evaluation's, on real labels: the same figure per label and per region, and
the README's NaN conventions where a structure is missing."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import real_data
from medseg_auto.metrics import evaluate


def _write(array: np.ndarray, like: sitk.Image, path) -> str:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(like)
    sitk.WriteImage(image, str(path))
    return str(path)


def test_dice_is_nnunets_on_a_real_label_per_label_and_region(tmp_path):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    src = real_data("hippocampus") / "labels"
    reference_image = sitk.ReadImage(str(sorted(src.iterdir())[0]))
    reference = sitk.GetArrayFromImage(reference_image).astype(np.uint8)
    prediction = np.roll(reference, 1, axis=1)           # one voxel off along one axis
    prediction[(prediction == 2) & (np.arange(prediction.shape[2]) % 3 == 0)] = 1  # some posterior as anterior
    classes = [("anterior", (1,)), ("posterior", (2,)), ("whole", (1, 2)), ("absent", (3,))]
    spacing = reference_image.GetSpacing()[::-1]
    ours = evaluate(prediction, reference, classes, spacing)
    theirs = compute_metrics(_write(reference, reference_image, tmp_path / "ref.nii.gz"),
                             _write(prediction, reference_image, tmp_path / "pred.nii.gz"), SimpleITKIO(),
                             [1, 2, (1, 2), 3])["metrics"]
    for (name, _), key in zip(classes[:3], [1, 2, (1, 2)]):
        assert 0.3 < ours[name]["dice"] < 0.99, name  # a real overlap, neither trivial nor perfect
        assert ours[name]["dice"] == pytest.approx(theirs[key]["Dice"], abs=1e-12), name
        assert ours[name]["hd95"] >= 1.0, name  # one voxel off: at least a voxel's width somewhere
    assert math.isnan(theirs[3]["Dice"]) and math.isnan(ours["absent"]["dice"])  # absent from both
    assert math.isnan(ours["absent"]["hd95"])


def test_an_empty_prediction_scores_dice_zero_and_no_hd95():
    reference = np.zeros((10, 10, 10), np.uint8)
    reference[2:5, 2:5, 2:5] = 1
    scores = evaluate(np.zeros_like(reference), reference, [("x", (1,))], (1.0, 1.0, 1.0))
    assert scores["x"]["dice"] == 0.0 and math.isnan(scores["x"]["hd95"])
    scores = evaluate(reference, np.zeros_like(reference), [("x", (1,))], (1.0, 1.0, 1.0))
    assert scores["x"]["dice"] == 0.0 and math.isnan(scores["x"]["hd95"])
