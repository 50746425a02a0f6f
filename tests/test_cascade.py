"""The cascade: crop boxes and paste-back geometry, coordinate channels, the stage-2 data pipeline."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from medseg_auto.networks.coordconv import CoordinateFrame, with_coordinates
from medseg_auto.predict.crops import box_slices, crop_boxes, expand_box, merge_overlapping, paste_back

SHAPE = (20, 24, 28)
PATCH = (8, 8, 8)


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    return np.stack([labels == c for c in range(classes)]).astype(np.float32)


def corner_blobs() -> np.ndarray:
    """Labels 1 and 2 in every corner and on every face of the volume, plus two touching blobs inside."""
    labels = np.zeros(SHAPE, np.uint8)
    for i, corner in enumerate(itertools.product(*[(0, n - 2) for n in SHAPE])):
        labels[tuple(slice(c, c + 2) for c in corner)] = 1 + i % 2
    labels[9:11, 0:2, 13:15] = 2       # a face
    labels[8:12, 10:13, 12:14] = 1     # inside, next to ...
    labels[8:12, 13:15, 12:14] = 2     # ... another label of the same component
    return labels


def test_pasting_the_ground_truths_crops_reproduces_it_at_borders_corners_and_overlaps():
    labels = corner_blobs()
    boxes = crop_boxes(labels > 0, PATCH, margin=(2, 2, 2), max_components=20, min_share=0)
    assert all(0 <= lo < hi <= n for box in boxes for (lo, hi), n in zip(box, SHAPE))
    assert all(hi - lo >= p for box in boxes for (lo, hi), p in zip(box, PATCH))
    assert any(lo == 0 for box in boxes for lo, _ in box) and any(hi == n for box in boxes for (_, hi), n in zip(box, SHAPE))
    probabilities = one_hot(labels, 3)
    crops = [probabilities[(slice(None), *box_slices(b))] for b in boxes]
    pasted = paste_back(crops, boxes, SHAPE, background=np.array([1.0, 0.0, 0.0]))
    np.testing.assert_array_equal(pasted.argmax(0), labels)


def test_overlapping_crops_are_averaged_and_outside_is_background():
    boxes = [((0, 10), (0, 10), (0, 10)), ((5, 15), (5, 15), (5, 15))]
    crops = [np.stack([np.full((10,) * 3, 0.2), np.full((10,) * 3, 0.8)]).astype(np.float32),
             np.stack([np.full((10,) * 3, 0.6), np.full((10,) * 3, 0.4)]).astype(np.float32)]
    pasted = paste_back(crops, boxes, (16, 16, 16), background=np.array([1.0, 0.0]))
    np.testing.assert_allclose(pasted[:, 7, 7, 7], [0.4, 0.6])       # both crops: the mean
    np.testing.assert_allclose(pasted[:, 2, 2, 2], [0.2, 0.8])       # the first only
    np.testing.assert_allclose(pasted[:, 15, 15, 15], [1.0, 0.0])    # no crop: background
    np.testing.assert_allclose(pasted.sum(0), 1.0, rtol=1e-6)


def test_boxes_are_clamped_inside_the_volume_and_overlapping_ones_merged():
    assert expand_box(((0, 2), (26, 28)), (3, 3), (8, 8), (20, 28)) == ((0, 8), (20, 28))
    assert expand_box(((0, 4),), (1,), (10,), (6,)) == ((0, 6),)  # the volume is smaller than a patch
    merged = merge_overlapping([((0, 5), (0, 5)), ((10, 12), (10, 12)), ((4, 11), (4, 11))])
    assert merged == [((0, 12), (0, 12))]


def test_components_below_the_size_threshold_or_past_the_count_are_dropped():
    mask = np.zeros((30, 30, 30), bool)
    mask[2:8, 2:8, 2:8] = True        # 216 voxels
    mask[20:24, 20:24, 20:24] = True  # 64
    mask[15, 2, 2] = True             # 1: noise
    assert len(crop_boxes(mask, (4, 4, 4), (0, 0, 0), max_components=5, min_share=0.1)) == 2
    boxes = crop_boxes(mask, (4, 4, 4), (0, 0, 0), max_components=1, min_share=0)
    assert boxes == [((2, 8), (2, 8), (2, 8))]
    assert crop_boxes(np.zeros((8, 8, 8), bool), (4, 4, 4), (1, 1, 1), 3, 0.1) == []


def test_the_largest_component_is_kept_however_small_against_the_patch():
    """A structure of 27 voxels under a 16^3 patch (0.7% of it) is still the structure to segment."""
    mask = np.zeros((30, 30, 30), bool)
    mask[10:13, 10:13, 10:13] = True
    assert crop_boxes(mask, (16, 16, 16), (2, 2, 2), max_components=3, min_share=0.1) == [((4, 20),) * 3]


def test_components_connect_through_corners_and_come_largest_first():
    """26-connectivity: voxels sharing only a corner are one structure; equal sizes keep the scan order."""
    from medseg_auto.predict.crops import component_boxes

    mask = np.zeros((12, 12, 12), np.uint8)  # an integer mask works as well as a boolean one
    mask[1, 1, 1] = mask[2, 2, 2] = 1        # 2 voxels, touching at a corner
    mask[6, 11, 11] = 1                      # 1 voxel
    mask[5, 0, 0] = 1                        # 1 voxel, earlier in the scan
    mask[8:10, 8:10, 8:10] = 1               # 8 voxels
    assert component_boxes(mask, 10, 0) == [((8, 10),) * 3, ((1, 3),) * 3, ((5, 6), (0, 1), (0, 1)),
                                            ((6, 7), (11, 12), (11, 12))]
    assert component_boxes(mask, 2, 0.25) == [((8, 10),) * 3, ((1, 3),) * 3]


def test_a_box_at_the_border_keeps_its_margin_and_a_crop_must_fit_its_box():
    # shifted in, not clipped (acvl_utils' pad_bbox would give (0, 5): the margin lost at the border)
    assert expand_box(((0, 2),), (3,), (4,), (20,)) == ((0, 8),)
    assert expand_box(((17, 20),), (2,), (4,), (20,)) == ((13, 20),)
    with pytest.raises(ValueError, match="does not fit box"):
        paste_back([np.zeros((2, 4, 4, 4), np.float32)], [((0, 4), (0, 4), (0, 5))], (8, 8, 8),
                   background=np.array([1.0, 0.0]))
    regions = paste_back([np.full((2, 4, 4, 4), 0.7, np.float32)], [((0, 4),) * 3], (8, 8, 8),
                         background=np.zeros(2))  # sigmoid regions: nothing outside the crops
    assert regions[:, :4, :4, :4].min() == pytest.approx(0.7) and regions[:, 4:].max() == 0.0


def test_the_segmentation_model_is_planned_for_crops_that_hold_every_training_structure():
    from medseg_auto.predict.crops import crop_margin
    from medseg_auto.trainers.cascade import crop_size

    boxes = [(30, 60, 40), (45, 20, 40), (10, 10, 10)]
    crop = crop_size(boxes, (96, 160, 160), (155, 240, 240))
    assert crop == [60, 80, 80]  # the largest box per axis with its margins; at least half the image patch
    assert crop_size(boxes, (96, 160, 160), (50, 240, 240)) == [50, 80, 80]  # at most the image
    for box in boxes:  # each structure, grown by the inference margin, fits one window of that size
        grown = expand_box(tuple((0, n) for n in box), crop_margin(crop), crop, (500,) * 3)
        assert all(hi - lo <= n for (lo, hi), n in zip(grown, crop))
    assert crop_size([], (96, 160, 160), (155, 240, 240)) is None  # no foreground: the whole-image plan stays


def frame_for(whole, crop_box, preprocessed_shape) -> CoordinateFrame:
    properties = {"shape_before_cropping": whole, "bbox_used_for_cropping": crop_box,
                  "shape_after_cropping_and_before_resampling": [hi - lo for lo, hi in crop_box]}
    return CoordinateFrame.from_properties(properties, preprocessed_shape)


def test_coordinates_give_the_position_in_the_whole_volume_and_a_crop_carries_its_own():
    # the original volume is 100 x 80 x 60; nnU-Net cropped 10..90 x 0..80 x 20..60 and resampled it 2x coarser
    frame = frame_for([100, 80, 60], [[10, 90], [0, 80], [20, 60]], [40, 40, 20])
    full = with_coordinates(np.zeros((2, 40, 40, 20), np.float32), frame)
    assert full.shape == (5, 40, 40, 20)
    # preprocessed voxel i covers original voxels 10 + 2i, 10 + 2i + 1: centre 10 + 2i + 0.5 of 100
    np.testing.assert_allclose(full[2, :, 0, 0], 2 * (10 + 2 * np.arange(40) + 1.0) / 100 - 1, atol=1e-6)
    np.testing.assert_allclose(full[3, 0, :, 0], 2 * (2 * np.arange(40) + 1.0) / 80 - 1, atol=1e-6)
    np.testing.assert_allclose(full[4, 0, 0, -1], 2 * (20 + 19 * 2 + 1.0) / 60 - 1, atol=1e-6)
    assert full[3].min() > -1 and full[3].max() < 1  # the uncropped axis spans the whole volume
    box = ((5, 21), (30, 40), (0, 8))
    crop = with_coordinates(np.zeros((2, 16, 10, 8), np.float32), frame, box)
    np.testing.assert_array_equal(crop[2:], full[(slice(2, None), *box_slices(box))])


def test_a_voxel_keeps_its_coordinate_whatever_the_preprocessing_crop():
    """The same original voxel gets the same coordinates whether nnU-Net cropped the volume or not."""
    uncropped = frame_for([64, 64, 64], [[0, 64]] * 3, [64, 64, 64])
    cropped = frame_for([64, 64, 64], [[10, 50], [5, 64], [0, 30]], [40, 59, 30])
    a = uncropped.grid(((30, 31), (20, 21), (12, 13)))
    b = cropped.grid(((20, 21), (15, 16), (12, 13)))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_patches_read_through_the_coordinate_view_match_the_whole_volume():
    from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

    from medseg_auto.trainers.cascade import _CoordinateView

    frame = frame_for([30, 40, 50], [[2, 28], [0, 40], [5, 45]], [26, 40, 40])
    image = np.random.default_rng(0).normal(size=(2, 26, 40, 40)).astype(np.float32)
    view, full = _CoordinateView(image, frame), with_coordinates(image, frame)
    assert view.shape == full.shape
    np.testing.assert_array_equal(view[:], full)
    for bbox in ([[0, 16], [10, 26], [30, 46]], [[-4, 12], [-2, 14], [20, 36]], [[5, 21], [3, 19], [1, 17]]):
        np.testing.assert_array_equal(crop_and_pad_nd(view, bbox, 0), crop_and_pad_nd(full, bbox, 0))


def test_foreground_locations_are_jittered_together_and_kept_inside_the_volume():
    from medseg_auto.trainers.cascade import jitter_locations

    shape, jitter = (20, 30, 40), (5, 7, 10)
    locations = {1: np.array([[0, 0, 0, 0], [0, 19, 29, 39], [0, 10, 15, 20]]), 2: np.zeros((0, 4), int)}
    shifts = set()
    for seed in range(50):
        np.random.seed(seed)
        moved = jitter_locations(locations, shape, jitter)
        assert moved[2].shape == (0, 4)
        assert (moved[1][:, 0] == 0).all() and (moved[1][:, 1:] >= 0).all()
        assert (moved[1][:, 1:] < np.array(shape)).all()
        shift = moved[1][2, 1:] - locations[1][2, 1:]  # the inner voxel shows the shift unclipped
        assert (np.abs(shift) <= np.array(jitter)).all()
        expected = np.clip(locations[1][:, 1:] + shift, 0, np.array(shape) - 1)
        assert (moved[1][:, 1:] == expected).all()  # one shift for every voxel of the case
        shifts.add(tuple(shift))
    assert len(shifts) > 40  # random, not a fixed offset


def test_coordinates_follow_spatial_augmentation_but_not_intensity_augmentation():
    import torch
    from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    from medseg_auto.trainers.cascade import shield_last_channels

    def pipeline():
        return ComposeTransforms([
            SpatialTransform((8, 8, 8), 0, False, p_rotation=0, p_scaling=0, p_elastic_deform=0),
            RandomTransform(GaussianNoiseTransform((0.1, 0.1), 1, True), apply_probability=1),
            RandomTransform(MultiplicativeBrightnessTransform(BGContrast((1.2, 1.2)), False, 1), apply_probability=1),
            MirrorTransform(allowed_axes=(0,))])

    frame = frame_for([8, 8, 8], [[0, 8]] * 3, [8, 8, 8])
    sample = torch.from_numpy(with_coordinates(np.ones((1, 8, 8, 8), np.float32), frame))
    segmentation = torch.zeros((1, 8, 8, 8), dtype=torch.int16)
    grid = sample[1:]
    for _ in range(4):
        out = shield_last_channels(pipeline(), 3)(image=sample.clone(), segmentation=segmentation.clone())["image"]
        assert out.shape == sample.shape and not torch.allclose(out[0], sample[0])  # the image was augmented
        assert torch.equal(out[1:], grid) or torch.equal(out[1:], torch.flip(grid, [1]))  # mirrored at most
    plain = pipeline()(image=sample.clone(), segmentation=segmentation.clone())["image"]
    assert not (torch.equal(plain[1:], grid) or torch.equal(plain[1:], torch.flip(grid, [1])))


def test_cascade_trains_and_predicts_on_brats_crops_and_falls_back_on_an_empty_roi(tmp_path, monkeypatch, capsys):
    """Real BraTS crops (FLAIR + T1c, regions): exe_train.py --trainer cascade trains both stages in one
    budget, the bundle holds both, exe_predict.py predicts it with no extra flags; an empty ROI falls back to
    the whole volume."""
    import csv
    import subprocess
    import sys

    import nibabel
    import torch

    from conftest import REPO, clean_env, copy_brats_crops, train_command
    from medseg_auto.predict import cascade
    from medseg_auto.predict.bundle import open_bundle
    from medseg_auto.predict.engine import ScanImage, Settings, case_predictor

    copy_brats_crops(tmp_path / "input_train" / "brats", 5)
    done = subprocess.run(train_command(tmp_path, "brats", "--regions", "WT=1,2,3,4;TC=1,3,4;ET=4",
                                        "--trainer", "cascade", "--keep-work", minutes=3, folds="0"),
                          capture_output=True, text=True, timeout=600, env=clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "roi stage (3d_roi)" in done.stderr
    bundle = tmp_path / "output_models" / "brats"
    manifest = json.loads((bundle / "medseg_auto.json").read_text())
    assert manifest["predictor"] == "cascade" and manifest["stages"][0]["name"] == "roi"
    roi_labels = json.loads((bundle / "roi" / "dataset.json").read_text())["labels"]
    assert roi_labels == {"background": 0, "roi": [1, 2, 3, 4]}
    assert (bundle / "roi" / "fold_0" / "checkpoint_final.pth").is_file()
    roi_config = json.loads((bundle / "roi" / "plans.json").read_text())["configurations"]["3d_roi"]
    assert roi_config["medseg_auto_width"]["width"] == 0.5  # on a CPU the ROI model is narrowed as the main one
    assert "planned by nnU-Net for crops" in done.stderr
    configs = json.loads((bundle / "plans.json").read_text())["configurations"]
    coord, whole = configs["3d_fullres_coord"], configs["3d_fullres"]
    assert coord["inherits_from"] == "3d_fullres" and "patch_size" in coord  # its own patch, the same data
    assert coord["architecture"]["network_class_name"].endswith("CoordConvUNet")
    assert coord["medseg_auto_width"]["width"] == 0.5 and all(p <= w for p, w in zip(coord["patch_size"],
                                                                                     whole["patch_size"]))
    card = json.loads((bundle / "model_card.json").read_text())
    assert card["stages"][0]["share"] == 0.3 and card["folds"]["0"]["stages"]["roi"]["iterations"] > 0
    roi_card, seg_card = card["folds"]["0"]["stages"]["roi"], card["folds"]["0"]
    assert roi_card["precision"] in ("fp32", "bf16") and seg_card["precision"] in ("fp32", "bf16")
    assert "each fold: roi model 30% (3d_roi), then this model 70%" in (bundle / "README.md").read_text()
    # the card's Dice is the cascade's, validated as exe_predict.py predicts: the held-out case's segmentation
    # from the final validation is exe_predict.py's for that case with fold 0, voxel for voxel
    assert card["cross_validation_method"].startswith("the cascade as exe_predict.py runs it")
    assert set(card["cross_validation_dice"]) == {"WT", "TC", "ET"} and seg_card["validation"] != "skipped"
    validation = next((tmp_path / "work" / "brats").rglob("nnUNetTrainerCascadeCoord__*/fold_0/validation"))
    (held_out,) = [p for p in validation.glob("*.nii.gz")]
    case_name = held_out.name.replace(".nii.gz", "")
    assert "(ROI -> crops -> paste back)" in next(validation.parent.glob("training_log_*.txt")).read_text()
    (tmp_path / "held_out" / case_name).mkdir(parents=True)
    for name in ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz"):
        (tmp_path / "held_out" / case_name / name).symlink_to(tmp_path / "input_train" / "brats" / case_name / name)
    done = subprocess.run([sys.executable, str(REPO / "exe_predict.py"), "-m", str(bundle), "-i",
                           str(tmp_path / "held_out"), "-o", str(tmp_path / "again"), "--folds", "0", "--step-size",
                           "0.5"] + (["--no-tta"] if seg_card["validation"] == "fast" else []),
                          capture_output=True, text=True, timeout=300, env=clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    predicted = np.asarray(nibabel.load(tmp_path / "again" / held_out.name).dataobj)
    assert np.array_equal(predicted, np.asarray(nibabel.load(held_out).dataobj))

    scans, refs, out = tmp_path / "scans", tmp_path / "refs", tmp_path / "pred"
    refs.mkdir()
    case = tmp_path / "input_train" / "brats" / "brats_2013_pat0001_1"
    (scans / "case").mkdir(parents=True)
    for name in ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz"):
        (scans / "case" / name).symlink_to(case / name)
    (refs / "case.nii.gz").symlink_to(case / "OTMultiClass.nii.gz")
    done = subprocess.run([sys.executable, str(REPO / "exe_predict.py"), "-m", str(bundle), "-i", str(scans),
                           "-o", str(out), "--fast", "--labels-dir", str(refs)],
                          capture_output=True, text=True, timeout=300, env=clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    seg = np.asarray(nibabel.load(out / "case.nii.gz").dataobj)
    assert seg.shape == (48, 48, 32) and set(np.unique(seg)) <= {0, 1, 2, 3, 4}
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    whole = [r for r in rows if r["case"] == "case"]
    assert whole and float(whole[0]["WT_dice"]) > 0.3

    # the ROI finds nothing: the whole volume is segmented, and the log says so
    predictor = case_predictor(open_bundle(bundle, None), Settings(False, 0.75, False), torch.device("cpu"))
    assert isinstance(predictor, cascade.Cascade)
    monkeypatch.setattr(cascade.Cascade, "_roi_mask", lambda self, image, shape: np.zeros(shape, bool))
    image = nibabel.load(case / "Flair_subtrMeanDivStd.nii.gz")
    data = np.stack([np.asarray(nibabel.load(case / n).dataobj, np.float32).transpose(2, 1, 0)
                     for n in ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz")])
    result = predictor.predict(ScanImage(data, [float(s) for s in image.header.get_zooms()[::-1]]))
    assert predictor.fallbacks == 1 and "found nothing" in capsys.readouterr().err
    assert result.segmentation.shape == data.shape[1:]


def test_the_crop_model_built_outside_the_runner_validates_alone_and_says_so(monkeypatch):
    """nnUNetv2_train builds the trainer without the fold's ROI model: its final validation is nnU-Net's own
    over whole volumes (logged), not a KeyError after the training."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from medseg_auto.trainers.cascade import nnUNetTrainerCascadeCoord

    calls, log = [], []
    monkeypatch.setattr(nnUNetTrainer, "perform_actual_validation", lambda self, save=False: calls.append(save))
    trainer = nnUNetTrainerCascadeCoord.__new__(nnUNetTrainerCascadeCoord)
    trainer.print_to_log_file = lambda *a, **k: log.append(" ".join(map(str, a)))
    trainer.validate_held_out_cases(False)
    assert calls == [False] and "No ROI model given" in log[0]
