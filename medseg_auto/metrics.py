"""Overlap and surface-distance metrics of a segmentation against a reference, per label or region.

Conventions (those of nnU-Net's own evaluation and MONAI): Dice is undefined (NaN, left out of means)
when the label is absent from both; HD95 is the larger of the two directed 95th-percentile surface
distances in mm, undefined when either side is empty. Masks and voxel counts are nnU-Net's evaluation's;
HD95 is ours (nnU-Net has none).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """2TP / (2TP + FP + FN) of two boolean masks, as nnU-Net's evaluation counts them; NaN when both are
    empty."""
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn  # imports torch: only when scoring

    tp, fp, fn, _ = compute_tp_fp_fn_tn(np.asarray(reference, bool), np.asarray(prediction, bool))
    if tp + fp + fn == 0:
        return math.nan
    return 2.0 * int(tp) / int(2 * tp + fp + fn)


def hd95(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in the units of ``spacing`` (numpy axis order); NaN when either
    mask is empty. Computed inside the masks' joint bounding box (plus a margin), so large volumes with
    small structures cost little."""
    from scipy import ndimage

    if not prediction.any() or not reference.any():
        return math.nan
    both = np.argwhere(prediction | reference)
    lo = np.maximum(both.min(axis=0) - 1, 0)
    hi = both.max(axis=0) + 2
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    p, r = np.pad(prediction[box], 1), np.pad(reference[box], 1)
    p_surface, r_surface = _surface(p), _surface(r)
    to_r = ndimage.distance_transform_edt(~r_surface, sampling=spacing)[p_surface]
    to_p = ndimage.distance_transform_edt(~p_surface, sampling=spacing)[r_surface]
    return float(max(np.percentile(to_r, 95), np.percentile(to_p, 95)))


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))


def evaluate(prediction: np.ndarray, reference: np.ndarray, classes: Iterable[tuple[str, Sequence[int]]],
             spacing: Sequence[float]) -> dict[str, dict[str, float]]:
    """Dice and HD95 per class; a class is a label or region given by its values in both label maps."""
    from nnunetv2.evaluation.evaluate_predictions import region_or_label_to_mask

    out = {}
    for name, values in classes:
        p, r = (region_or_label_to_mask(seg, tuple(values)) for seg in (prediction, reference))
        out[name] = {"dice": dice(p, r), "hd95": hd95(p, r, spacing)}
    return out


def nanmean(values: Iterable[float]) -> float:
    """The mean of the defined values (NaN when none is)."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan
