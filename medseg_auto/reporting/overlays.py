"""Overlays of a fold's validation cases for the report: the best, median and worst case by Dice, their
reference and nnU-Net's validation prediction outlined on the image.

Rendered at export, while the work folder holds the predictions; the bundle keeps only the pictures
(``report_files/overlays_fold_K.png``), not the predictions.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from medseg_auto.reporting.views import read_volume

FOLDER = "report_files"


def overlay_file(bundle: Path, fold: str) -> Path:
    return bundle / FOLDER / f"overlays_fold_{fold}.png"


def mean_dice(case: dict) -> float:
    """A validation case's Dice averaged over the classes where it is defined (NaN when nowhere)."""
    values = [v for v in case["dice"].values() if v is not None]
    return sum(values) / len(values) if values else math.nan


def ranked(cases: dict[str, dict]) -> list[tuple[str, str]]:
    """(rank, case) for the best, median and worst case by mean Dice; fewer when fewer cases are scored."""
    scored = sorted((c for c in cases if not math.isnan(mean_dice(cases[c]))),
                    key=lambda c: (-mean_dice(cases[c]), c))
    if not scored:
        return []
    picks = [("best", scored[0]), ("median", scored[len(scored) // 2]), ("worst", scored[-1])]
    seen: set[str] = set()
    return [(rank, case) for rank, case in picks if not (case in seen or seen.add(case))]


def write_overlays(bundle: Path, card: dict, results_folder: Path) -> list[Path]:
    """One picture per fold with scored validation cases, into the bundle; returns the files written."""
    from medseg_auto.reporting.pictures import OverlayCase, overlays
    from medseg_auto.reporting.validation import dataset_classes

    dataset_json = json.loads((results_folder / "dataset.json").read_text())
    classes = dataset_classes(dataset_json)
    written = []
    for fold, entry in card.get("folds", {}).items():
        cases = entry.get("validation_cases") or {}
        picks = ranked(cases)
        summary = results_folder / f"fold_{fold}" / "validation" / "summary.json"
        if not picks or not summary.is_file():
            continue
        files = _case_files(summary, dataset_json)
        rows = []
        for rank, case in picks:
            if case not in files or _image_file(results_folder, dataset_json, case) is None:
                continue
            prediction, reference = files[case]
            dice = "\n".join(f"  {k} {v:.3f}" for k, v in cases[case]["dice"].items() if v is not None)
            rows.append(OverlayCase(f"{rank}\n{case}\nDice\n{dice}",
                                    read_volume(_image_file(results_folder, dataset_json, case)),
                                    read_volume(reference, label=True), read_volume(prediction, label=True),
                                    classes))
        if rows:
            target = overlay_file(bundle, fold)
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(overlays(rows))
            written.append(target)
    return written


def _case_files(summary: Path, dataset_json: dict) -> dict[str, tuple[Path, Path]]:
    """Case name -> (prediction, reference) of nnU-Net's validation summary."""
    ending = dataset_json.get("file_ending", ".nii.gz")
    out = {}
    for entry in json.loads(summary.read_text()).get("metric_per_case", []):
        prediction = Path(entry["prediction_file"])
        name = prediction.name[:-len(ending)] if prediction.name.endswith(ending) else prediction.stem
        out[name] = (prediction, Path(entry["reference_file"]))
    return out


def _image_file(results_folder: Path, dataset_json: dict, case: str) -> Path | None:
    """The case's first channel: listed in dataset.json where files are used in place, else in the raw
    dataset's imagesTr/."""
    listed = (dataset_json.get("dataset") or {}).get(case)
    raw = results_folder.parents[2] / "nnUNet_raw" / results_folder.parent.name
    if listed:
        path = Path(listed["images"][0])
        path = path if path.is_absolute() else raw / path
    else:
        path = raw / "imagesTr" / f"{case}_0000{dataset_json.get('file_ending', '.nii.gz')}"
    return path if path.is_file() else None
