"""The cascade's inference geometry: crop boxes around the ROI's components, and pasting crops back.

Boxes are half-open ``(start, stop)`` pairs per spatial axis, in the array's own voxel grid (nnU-Net's and
acvl_utils' convention); components and slices are acvl_utils' and scipy's. Pasting averages the class
probabilities where crops overlap and gives every voxel outside all crops the background's probability 1,
so a crop can never flip a label it does not cover.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice as box_slices
from acvl_utils.morphology.morphology_helper import label_with_component_sizes
from scipy import ndimage

Box = tuple[tuple[int, int], ...]

MARGIN_SHARE = 0.125  # a crop's margin around its component, per side, as a share of the segmentation patch


def crop_margin(patch_size: Sequence[int]) -> list[int]:
    """The margin of a crop around its component, per side and axis, for a segmentation patch (rounded down,
    so a component that fits a patch less the margins still fits one window)."""
    return [int(n * MARGIN_SHARE) for n in patch_size]


def component_boxes(mask: np.ndarray, max_components: int, min_share: float) -> list[Box]:
    """Bounding boxes of the ``max_components`` largest connected components of ``mask`` (26-connectivity in
    3D), largest first; after the largest, only those of at least ``min_share`` of its size (smaller ones are
    the ROI model's noise, not a second structure)."""
    labelled, sizes = label_with_component_sizes(mask.astype(bool, copy=False))  # full connectivity
    if not sizes:
        return []
    ranked = sorted(sizes, key=lambda i: -sizes[i])  # stable: equal sizes keep the labels' raster order
    keep = [i for i in ranked if sizes[i] >= min_share * sizes[ranked[0]]][:max_components]
    slices = ndimage.find_objects(labelled)
    return [tuple((s.start, s.stop) for s in slices[i - 1]) for i in keep]


def expand_box(box: Box, margin: Sequence[int], min_size: Sequence[int], shape: Sequence[int]) -> Box:
    """``box`` grown by ``margin`` on each side and to at least ``min_size`` (centred), then moved inside the
    volume: a box that would cross a border is shifted back in, and cut only where the volume is smaller.

    Ours, not acvl_utils' ``pad_bbox``: that one clips at the border, so a crop there would lose its margin."""
    out = []
    for (lo, hi), m, size, n in zip(box, margin, min_size, shape):
        lo, hi = lo - m, hi + m
        if hi - lo < size:
            grow = size - (hi - lo)
            lo, hi = lo - grow // 2, hi + grow - grow // 2
        if lo < 0:
            lo, hi = 0, hi - lo
        if hi > n:
            lo, hi = max(0, lo - (hi - n)), n
        out.append((lo, hi))
    return tuple(out)


def boxes_overlap(a: Box, b: Box) -> bool:
    return all(alo < bhi and blo < ahi for (alo, ahi), (blo, bhi) in zip(a, b))


def merge_overlapping(boxes: Sequence[Box]) -> list[Box]:
    """Overlapping boxes replaced by their common bounding box, until no two overlap (acvl_utils has no
    such merge)."""
    merged = list(boxes)
    changed = True
    while changed:
        changed = False
        for i in range(len(merged)):
            for j in range(i + 1, len(merged)):
                if boxes_overlap(merged[i], merged[j]):
                    a, b = merged[i], merged.pop(j)
                    merged[i] = tuple((min(x[0], y[0]), max(x[1], y[1])) for x, y in zip(a, b))
                    changed = True
                    break
            if changed:
                break
    return merged


def crop_boxes(mask: np.ndarray, patch_size: Sequence[int], margin: Sequence[int], max_components: int,
               min_share: float) -> list[Box]:
    """The crops to segment for an ROI mask: a box per kept component, grown by ``margin`` and to at least
    one patch, clamped at the borders, merged where they overlap. Empty when the ROI found nothing."""
    boxes = [expand_box(b, margin, patch_size, mask.shape)
             for b in component_boxes(mask, max_components, min_share)]
    return merge_overlapping(boxes)


def paste_back(crops: Sequence[np.ndarray], boxes: Sequence[Box], shape: Sequence[int],
               background: np.ndarray) -> np.ndarray:
    """Probabilities of the whole volume from per-crop probabilities ``(classes, *box size)``: averaged where
    crops overlap, ``background`` (one value per class: 1 for the background class, 0 for the others) where
    no crop reaches. Ours, not acvl_utils' ``insert_crop_into_image``: that one overwrites where crops overlap."""
    classes = len(background)
    total = np.zeros((classes, *shape), np.float32)
    count = np.zeros(tuple(shape), np.float32)
    for crop, box in zip(crops, boxes):
        where = box_slices(box)
        if crop.shape != (classes, *(hi - lo for lo, hi in box)):
            raise ValueError(f"crop of shape {crop.shape} does not fit box {box} with {classes} classes")
        total[(slice(None), *where)] += crop
        count[where] += 1
    covered = count > 0
    total[:, covered] /= count[covered]
    total[:, ~covered] = np.asarray(background, np.float32)[:, None]
    return total
