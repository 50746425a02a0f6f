"""``report.html``: one self-contained page (pictures embedded, opens offline) rendered from the model card
and the bundle's files: the dataset, the plan, the budget, learning curves, cross-validation scores and
overlays of validation cases.

Cards of older bundles lack some sections (curves, HD95, overlays): the page says so where they would be.
"""
from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np

from medseg_auto.reporting import figures
from medseg_auto.reporting.overlays import mean_dice, overlay_file, ranked

REPORT = "report.html"
TEMPLATE = Path(__file__).with_name("report.html.j2")


def write_html(bundle: Path, card: dict) -> Path:
    """Render the page into ``bundle/report.html`` (written aside, then renamed into place)."""
    target = bundle / REPORT
    tmp = target.with_name(f".{REPORT}.tmp")
    tmp.write_text(render(bundle, card), encoding="utf-8")
    tmp.replace(target)
    return target


def render(bundle: Path, card: dict) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    return env.from_string(TEMPLATE.read_text()).render(**context(bundle, card))


def context(bundle: Path, card: dict) -> dict:
    """Everything the template shows, as text, tables and PNG data URIs."""
    from medseg_auto.report import model_card_readme

    folds = card.get("folds", {})
    return {
        "name": card.get("name", bundle.name),
        "created": card.get("created", "unknown"),
        "versions": ", ".join(f"{k} {v}" for k, v in card.get("versions", {}).items()),
        "summary": _readme_bullets(model_card_readme, card),
        "dataset": _dataset(bundle, card),
        "plan": _plan(card),
        "budget": _budget(card),
        "curves": [_curves(fold, entry, bundle) for fold, entry in folds.items()],
        "scores": _scores(card, "pixels" if _pictures(bundle) else "mm"),
        "overlays": [_overlays(fold, entry, bundle) for fold, entry in folds.items()],
    }


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# -- sections ------------------------------------------------------------------------------------------------

def _readme_bullets(readme, card: dict) -> list[str]:
    """The model card README's bullet lines (the same sentences as README.md), where the card allows."""
    try:
        text = readme(card)
    except (KeyError, TypeError, ValueError):  # an older card without some key: the sections below still show
        return []
    return [line[2:] for line in text.splitlines() if line.startswith("- ")]


def _dataset(bundle: Path, card: dict) -> dict:
    labels = card.get("labels", {})
    names = labels.get("names", {})
    to_original = labels.get("nnunet_to_original") or {}
    rows = [(to_original.get(v, "several" if not to_original else v), v, n) for v, n in
            sorted(names.items(), key=lambda kv: int(kv[0]))]
    regions = [(r["name"], ", ".join(map(str, r["labels"]))) for r in labels.get("regions") or []]
    merged = ([f"{o} -> {n}" for o, n in sorted(labels.get("original_to_nnunet", {}).items(), key=lambda kv: int(kv[0]))
               if int(n)] if not to_original else [])
    skipped = card.get("skipped_cases")
    return {"cases": card.get("training_cases", "unknown"), "layout": card.get("input_layout", "unknown"),
            "channels": card.get("channels", []), "labels": rows, "regions": regions, "merged": merged,
            "images": _images(bundle),
            "skipped": ("not recorded in this model card" if skipped is None else
                        ", ".join(skipped) if skipped else "none"),
            "skipped_reasons": card.get("skipped_reasons") or {}}


def _images(bundle: Path) -> list[tuple[str, str]]:
    """Sizes and spacings of the training images, from nnU-Net's fingerprint in the bundle (after its
    crop to the non-zero region)."""
    path = bundle / "dataset_fingerprint.json"
    if not path.is_file():
        return [("sizes and spacings", "not available (no dataset_fingerprint.json in the bundle)")]
    fingerprint = json.loads(path.read_text())
    shapes = np.asarray(fingerprint["shapes_after_crop"], dtype=float)
    spacings = np.asarray(fingerprint["spacings"], dtype=float)
    planar = _planar(shapes, spacings)
    if planar:  # nnU-Net's 2D images: a dummy first axis
        shapes, spacings = shapes[:, 1:], spacings[:, 1:]
    axes = "x, y" if shapes.shape[1] == 2 else "x, y, z"

    def dims(v, fmt="{:.0f}"):
        return " x ".join(fmt.format(x) for x in v[::-1])

    rows = [(f"size ({axes}), after nnU-Net's crop",
             f"min {dims(shapes.min(0))}, median {dims(np.median(shapes, 0))}, max {dims(shapes.max(0))}")]
    rows.append((f"spacing ({axes})", "none (2D pictures: 1 per pixel)" if planar else
                 f"min {dims(spacings.min(0), '{:.3g}')}, median {dims(np.median(spacings, 0), '{:.3g}')}, "
                 f"max {dims(spacings.max(0), '{:.3g}')} mm"))
    return rows


def _plan(card: dict) -> list[tuple[str, str]]:
    network = card.get("network") or {}
    folds = card.get("folds", {})
    features = ", ".join(map(str, network.get("features_per_stage", []))) or "not recorded"
    width = (f"{network['width']:g} of nnU-Net's plan ({', '.join(map(str, network['planned_features_per_stage']))})"
             if "width" in network else "nnU-Net's plan")
    batches = sorted({f.get("batch_size") for f in folds.values() if f.get("batch_size")})
    precisions = sorted({f.get("precision", "fp32") for f in folds.values()})
    settings = card.get("training_settings") or {}
    rows = [("trainer", card.get("trainer", "unknown")),
            ("configuration", str(card.get("configuration", "unknown"))),
            ("patch (x, y, z)" if len(card.get("patch_size", [])) == 3 else "patch (x, y)",
             " x ".join(map(str, card.get("patch_size", [])[::-1])) or "unknown"),
            ("network", network.get("class", "unknown").rsplit(".", 1)[-1]),
            ("features per stage", f"{features} ({width})")]
    if "branches" in network:
        rows.append(("branches", " | ".join(", ".join(g) for g in network["branches"])
                     + f", fused after stage {network['fuse_stage']}"))
    rows.append(("batch", f"{', '.join(map(str, batches)) or 'unknown'} (nnU-Net planned "
                          f"{card.get('planned_batch_size', 'unknown')})"))
    rows.append(("precision of the training forward", ", ".join(precisions)
                 + (f" (--precision {settings['precision']})" if "precision" in settings else "")))
    if settings:
        rows.append(("device", f"{settings.get('device', '?')}, {settings.get('torch_threads', '?')} torch "
                               f"thread(s), {settings.get('augmentation_workers', '?')} augmentation worker(s)"))
        rows.append(("learning rate", f"{settings.get('learning_rate', 0.01):g}, {settings.get('lr_shape', '?')}"
                     + (f" (decay over the last {settings['decay_fraction']:.0%})" if "decay_fraction" in settings
                        else "")))
        rows.append(("augmentation", settings.get("augmentation", "nnunet")))
    for stage in card.get("stages") or []:
        rows.append((f"stage {stage['name']}", f"{stage['configuration']}, {stage['share']:.0%} of each fold"))
    return rows


def _budget(card: dict) -> dict:
    """The timeline: each recorded phase in order, then the export and report, against -t."""
    from medseg_auto.budget import EXPORT_RESERVE_SECONDS, report_reserve_seconds

    budget = float(card.get("budget_minutes", 0)) * 60.0
    phases = [(name.replace("_", " "), float(s)) for name, s in (card.get("phases_seconds") or {}).items()]
    used = float(card.get("time_used_seconds", 0.0))
    if not phases:
        return {"image": None, "rows": [], "note": "The phases' times are not recorded in this model card.",
                "budget": budget / 60, "used": used / 60}
    export = ("export + report", EXPORT_RESERVE_SECONDS + report_reserve_seconds(len(card.get("folds", {}))))
    shown = phases + [export]
    return {"image": data_uri(figures.timeline(shown, budget)),
            "rows": [(n, f"{s / 60:.2f} min" + (" (reserved)" if (n, s) == export else "")) for n, s in shown],
            "note": "", "budget": budget / 60, "used": used / 60}


def _curves(fold: str, entry: dict, bundle: Path) -> dict:
    """Fold ``fold``'s learning curves against minutes (a cascade's stages one after the other); without
    them in the card, nnU-Net's progress.png (against epochs) where the bundle has it."""
    models, offset = [], 0.0
    for name, stage in (entry.get("stages") or {}).items():
        if stage.get("curves"):
            models.append(figures.Curves(f"{name} stage", stage["curves"], offset))
        offset += float(stage.get("seconds", 0.0)) / 60.0
    if entry.get("curves"):
        models.append(figures.Curves("segmentation stage" if models else "", entry["curves"], offset))
    if models:
        return {"fold": fold, "image": data_uri(figures.learning_curves(f"fold {fold}", models)), "note": ""}
    progress = bundle / f"fold_{fold}" / "progress.png"
    if progress.is_file():
        return {"fold": fold, "image": data_uri(progress.read_bytes()),
                "note": "This model card has no learning curves against minutes (a bundle from before they were "
                        "recorded): nnU-Net's progress.png, against epochs."}
    return {"fold": fold, "image": None, "note": "No learning curves recorded for this fold."}


def _planar(shapes: np.ndarray, spacings: np.ndarray) -> bool:
    """nnU-Net's fingerprint of 2D pictures: a dummy first axis of size 1 and spacing 999."""
    return shapes.shape[1] == 3 and bool(np.all(shapes[:, 0] == 1)) and bool(np.all(spacings[:, 0] >= 999))


def _pictures(bundle: Path) -> bool:
    """The model was trained on 2D pictures (PNG, TIFF...), which have no physical spacing: distances are in
    pixels, not mm."""
    path = bundle / "dataset_fingerprint.json"
    if not path.is_file():
        return False
    fingerprint = json.loads(path.read_text())
    return _planar(np.asarray(fingerprint["shapes_after_crop"], dtype=float),
                   np.asarray(fingerprint["spacings"], dtype=float))


def _scores(card: dict, unit: str = "mm") -> dict:
    """Dice and HD95 per class and fold with their means: the table and the charts show the same numbers.
    ``unit``: of HD95, ``mm``, or ``pixels`` for pictures without a spacing."""
    folds = card.get("folds", {})
    names = list(dict.fromkeys([k for f in folds.values() for k in f.get("dice", {})]))
    dice = {f: {n: e.get("dice", {}).get(n) for n in names} for f, e in folds.items()}
    hd95 = {f: {n: (e.get("hd95") or {}).get(n) for n in names} for f, e in folds.items()} \
        if any("hd95" in e for e in folds.values()) else None
    mean_dice_row = {n: card.get("cross_validation_dice", {}).get(n) for n in names}
    mean_hd95 = {n: (card.get("cross_validation_hd95") or {}).get(n) for n in names} if hd95 else None
    if not names:
        return {"names": [], "rows": [], "unit": unit, "note": "No fold was validated (validation skipped, or -f full, which "
                                                "has no held-out cases): there are no cross-validation scores."}
    rows = [(f"fold {f}", [_fmt(dice[f][n], 3) for n in names], [_fmt(hd95[f][n], 2) for n in names] if hd95 else [])
            for f in folds]
    rows.append(("mean", [_fmt(mean_dice_row[n], 3) for n in names],
                 [_fmt(mean_hd95[n], 2) for n in names] if hd95 else []))
    return {"names": names, "rows": rows, "has_hd95": hd95 is not None, "unit": unit,
            "dice_image": data_uri(figures.scores(dice, "Dice", mean_dice_row)),
            "hd95_image": data_uri(figures.scores(hd95, f"HD95 ({unit})", mean_hd95)) if hd95 else None,
            "note": "" if hd95 else "HD95 is not in this model card (a bundle from before it was recorded)."}


def _overlays(fold: str, entry: dict, bundle: Path) -> dict:
    path = overlay_file(bundle, fold)
    cases = entry.get("validation_cases")
    captions = [f"{rank}: {case}, mean Dice {mean_dice(cases[case]):.3f}" for rank, case in ranked(cases)] \
        if cases else []
    if path.is_file():
        return {"fold": fold, "image": data_uri(path.read_bytes()), "captions": captions, "note": ""}
    if entry.get("validation") == "skipped" or not entry.get("dice"):
        why = "this fold was not validated (validation skipped in its time, or -f full)"
    elif cases is None:
        why = "this bundle was exported before overlays were part of the report"
    else:
        why = "its validation predictions were not available when the report was written"
    return {"fold": fold, "image": None, "captions": captions, "note": f"No overlays: {why}."}


def _fmt(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"
