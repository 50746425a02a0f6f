"""Shared by the benchmarks: mean foreground Dice of a folder of predictions against reference labels."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def mean_dice(predictions: Path, labels: Path, names: dict[str, str]) -> tuple[float, dict[str, float]]:
    """Mean over labels of the mean over scans (files matched by name); ``names``: label value -> name."""
    import nibabel
    import numpy as np

    sys.path.insert(0, str(REPO))
    from medseg_auto.metrics import dice, nanmean

    per: dict[str, list[float]] = {n: [] for n in names.values()}
    for ref in sorted(labels.iterdir()):
        pred = np.asarray(nibabel.load(predictions / ref.name).dataobj)
        truth = np.asarray(nibabel.load(ref).dataobj)
        for value, name in names.items():
            per[name].append(dice(pred == int(value), truth == int(value)))
    means = {n: nanmean(v) for n, v in per.items()}
    return nanmean(means.values()), means
