"""The cascade: crop boxes and paste-back geometry, coordinate channels, the stage-2 data pipeline."""
from __future__ import annotations

import itertools

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
    boxes = crop_boxes(labels > 0, PATCH, margin=(2, 2, 2), max_components=20, min_voxels=1)
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
    assert len(crop_boxes(mask, (4, 4, 4), (0, 0, 0), max_components=5, min_voxels=10)) == 2
    boxes = crop_boxes(mask, (4, 4, 4), (0, 0, 0), max_components=1, min_voxels=1)
    assert boxes == [((2, 8), (2, 8), (2, 8))]
    assert crop_boxes(np.zeros((8, 8, 8), bool), (4, 4, 4), (1, 1, 1), 3, 1) == []


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
