"""Overlap and surface-distance metrics of a segmentation against a reference, per label or region.

Conventions (those of nnU-Net's own evaluation and MONAI): Dice is undefined (NaN, left out of means)
when the label is absent from both; HD95 is the larger of the two directed 95th-percentile surface
distances in mm, undefined when either side is empty.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """2|P∩R| / (|P| + |R|) of two boolean masks; NaN when both are empty."""
    total = int(prediction.sum()) + int(reference.sum())
    if total == 0:
        return math.nan
    return 2.0 * int(np.logical_and(prediction, reference).sum()) / total


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
    out = {}
    for name, values in classes:
        p, r = np.isin(prediction, values), np.isin(reference, values)
        out[name] = {"dice": dice(p, r), "hd95": hd95(p, r, spacing)}
    return out


def nanmean(values: Iterable[float]) -> float:
    """The mean of the defined values (NaN when none is)."""
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan
