"""Shared by the benchmarks: foreground Dice of a folder of predictions against reference labels."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def per_case_dice(predictions: Path, labels: Path, names: dict[str, str]) -> dict[str, dict[str, float]]:
    """Label name -> Dice for each reference scan (files matched by name); ``names``: label value -> name."""
    import nibabel
    import numpy as np

    sys.path.insert(0, str(REPO))
    from medseg_auto.metrics import dice

    out: dict[str, dict[str, float]] = {}
    for ref in sorted(labels.iterdir()):
        pred = np.asarray(nibabel.load(predictions / ref.name).dataobj)
        truth = np.asarray(nibabel.load(ref).dataobj)
        out[ref.name] = {name: dice(pred == int(value), truth == int(value)) for value, name in names.items()}
    return out


def mean_dice(predictions: Path, labels: Path, names: dict[str, str]) -> tuple[float, dict[str, float]]:
    """Mean over labels of the mean over scans."""
    sys.path.insert(0, str(REPO))
    from medseg_auto.metrics import nanmean

    cases = per_case_dice(predictions, labels, names).values()
    means = {n: nanmean([c[n] for c in cases]) for n in names.values()}
    return nanmean(means.values()), means
