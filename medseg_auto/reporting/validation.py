"""What a trained fold's folder says beyond its Dice, for the model card: the learning curves against
minutes (from the checkpoint's log) and Dice and HD95 per validation case (from nnU-Net's validation
predictions against the references), read at export while the work folder still holds them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from medseg_auto.metrics import evaluate, nanmean

PAUSE_SECONDS = 120.0  # a longer gap between two epochs is an interruption, not training time


def fold_details(folder: Path, validation: bool = True) -> dict:
    """``curves`` from the fold's checkpoint and, with ``validation``, ``hd95`` per class and
    ``validation_cases`` (per case: Dice and HD95 per class); keys are left out where the folder lacks
    what they come from."""
    out: dict = {}
    curves = learning_curves(folder)
    if curves:
        out["curves"] = curves
    if validation:
        cases = validation_cases(folder)
        if cases:
            names = list(next(iter(cases.values()))["dice"])
            out["hd95"] = {n: _number(nanmean(_nan(c["hd95"][n]) for c in cases.values())) for n in names}
            out["validation_cases"] = cases
    return out


def learning_curves(folder: Path) -> dict | None:
    """Per epoch: minutes of training at its end, training and validation loss, pseudo-Dice per class and
    learning rate, from the log nnU-Net keeps in its checkpoint; None without a checkpoint."""
    import torch

    checkpoint = next((folder / n for n in ("checkpoint_final.pth", "checkpoint_latest.pth")
                       if (folder / n).is_file()), None)
    if checkpoint is None:
        return None
    log = torch.load(checkpoint, map_location="cpu", weights_only=False).get("logging") or {}
    keys = ("epoch_start_timestamps", "epoch_end_timestamps", "train_losses", "val_losses", "lrs",
            "dice_per_class_or_region")
    if not all(log.get(k) for k in keys):
        return None
    n = min(len(log[k]) for k in keys)
    starts, ends = log["epoch_start_timestamps"][:n], log["epoch_end_timestamps"][:n]
    minutes, total = [], 0.0
    for i in range(n):
        gap = starts[i] - ends[i - 1] if i else 0.0
        total += (ends[i] - starts[i]) + (gap if 0.0 <= gap < PAUSE_SECONDS else 0.0)
        minutes.append(round(total / 60.0, 3))
    names = class_names(folder.parent / "dataset.json")
    per_class = np.asarray(log["dice_per_class_or_region"][:n], dtype=float).reshape(n, -1)
    return {"minutes": minutes,
            "train_loss": [_number(v, 4) for v in log["train_losses"][:n]],
            "val_loss": [_number(v, 4) for v in log["val_losses"][:n]],
            "pseudo_dice": {name: [_number(v, 4) for v in per_class[:, i]]
                            for i, name in enumerate(names[:per_class.shape[1]])},
            "lr": [_number(v, 6) for v in log["lrs"][:n]]}


def validation_cases(folder: Path) -> dict[str, dict]:
    """Dice and HD95 (mm) per class of each case nnU-Net's final validation predicted, against the
    reference it scored; empty when the fold has no validation."""
    import SimpleITK as sitk

    summary = folder / "validation" / "summary.json"
    if not summary.is_file():
        return {}
    dataset_json = json.loads((folder.parent / "dataset.json").read_text())
    classes = dataset_classes(dataset_json)
    ending = dataset_json.get("file_ending", ".nii.gz")
    out = {}
    for entry in json.loads(summary.read_text()).get("metric_per_case", []):
        prediction, reference = Path(entry["prediction_file"]), Path(entry["reference_file"])
        if not (prediction.is_file() and reference.is_file()):
            continue
        ref = sitk.ReadImage(str(reference))
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction)))
        scores = evaluate(pred, sitk.GetArrayFromImage(ref), classes, tuple(reversed(ref.GetSpacing())))
        name = prediction.name[:-len(ending)] if prediction.name.endswith(ending) else prediction.stem
        out[name] = {"dice": {k: _number(v["dice"], 4) for k, v in scores.items()},
                     "hd95": {k: _number(v["hd95"], 2) for k, v in scores.items()}}
    return out


def class_names(dataset_json: Path) -> list[str]:
    """The foreground labels (or regions) of an nnU-Net dataset.json, in nnU-Net's order."""
    return [name for name, _ in dataset_classes(json.loads(dataset_json.read_text()))]


def dataset_classes(dataset_json: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(name, nnU-Net values) of each foreground label or region of an nnU-Net dataset.json."""
    out = []
    for name, value in dataset_json["labels"].items():
        values = tuple(value) if isinstance(value, list) else (value,)
        if name not in ("background", "ignore") and values != (0,):
            out.append((name, values))
    return out


def _number(value: float, digits: int = 4) -> float | None:
    """JSON has no NaN: undefined values are stored as null."""
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else round(value, digits)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value
