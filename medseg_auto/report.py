"""Readable reports for people: the dataset summary printed by ``exe_train.py`` and the model card."""
from __future__ import annotations

import datetime
import platform
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medseg_auto.ingest import CheckedDataset
from medseg_auto.ingest.convert import Conversion
from medseg_auto.ingest.formats import image_ending, stem
from medseg_auto.ingest.layout import LABEL_DIRS
from medseg_auto.trainers.augmentation import DESCRIPTIONS

if TYPE_CHECKING:
    from medseg_auto.fold import FoldRecord
    from medseg_auto.run_record import RunRecord
    from medseg_auto.train import FoldResult

LAYOUTS = {
    "nnunet_raw": "nnU-Net raw (imagesTr/ + labelsTr/)",
    "decathlon": "Medical Segmentation Decathlon (imagesTr/ + labelsTr/, dataset.json)",
    "paired": "paired folders (images + labels)",
    "per_case": "one folder per case",
    "flat": "images and labels side by side",
}


def dataset_summary(name: str, checked: CheckedDataset, conversion: Conversion) -> str:
    """What was found and how it was converted, one topic per line."""
    disc = checked.discovery
    infos = [checked.infos[f] for c in checked.cases for f in c.channels.values()]
    shapes = np.array([i.shape for i in infos])
    spacings = np.array([i.spacing for i in infos])
    lines = [
        f"Dataset    {name}  ({disc.root})",
        f"Layout     {LAYOUTS[disc.layout]}"
        + (f", labels from {disc.label_dir.name}/" if _label_dir_news(disc) else ""),
        f"Cases      {len(checked.cases)} usable" + (f", {len(checked.skipped)} skipped" if checked.skipped else ""),
        f"Channels   {len(conversion.channel_names)}: " + ", ".join(
            f"{i}={n}" + (f" (files '{k}')" if k and k != n else "")
            for i, (n, k) in enumerate(zip(conversion.channel_names, _file_keys(checked, conversion)))),
        "Labels     " + _labels_line(checked),
        f"Images     {'2D' if checked.is_2d else '3D'}, size (x, y{', z' if not checked.is_2d else ''}) "
        f"min {_dims(shapes.min(0))}, median {_dims(np.median(shapes, 0))}, max {_dims(shapes.max(0))}"
        + ("" if checked.is_2d else f"; spacing median {_dims(np.median(spacings, 0)[::-1], '{:.3g}')} mm"),
    ]
    if disc.ignored:
        counts = Counter(f.name if image_ending(f) else f.suffix or f.name for f in disc.ignored)
        lines.append(f"Ignored    {len(disc.ignored)} file(s) that are neither channel nor label: "
                     + ", ".join(f"{k} x{n}" for k, n in counts.most_common(6)))
    renamed = [(c.files()[0], c.label) for c in checked.cases
               if disc.layout == "paired" and len(c.channels) == 1 and stem(c.files()[0]) != stem(c.label)]
    if renamed:
        how = "by the id their names share" if disc.pairs_by_id else "by name"
        shown = ", ".join(f"{i.name} + {lab.name}" for i, lab in renamed[:3])
        lines.append(f"Paired     {len(renamed)} image(s) with a label named otherwise, {how}: {shown}"
                     + (" ..." if len(renamed) > 3 else ""))
    if disc.unused_dirs:
        lines.append("Not used   " + ", ".join(f"{d.name}/ ({sum(1 for f in d.iterdir() if f.is_file())} files)"
                                               for d in disc.unused_dirs)
                     + " (--labels-dir names another label folder)")
    if disc.hidden:
        apple = sum(1 for f in disc.hidden if f.name.startswith("._"))
        lines.append(f"Hidden     {len(disc.hidden)} hidden file(s) ignored"
                     + (f" ({apple} macOS ._* copies)" if apple else "") + ", e.g. " + disc.hidden[0].name)
    if disc.to_predict:
        folder = disc.to_predict[0].parent
        lines.append(f"To predict {len(disc.to_predict)} scan(s) in {folder.name}/, not trained on: after training, "
                     f"exe_predict.py -m output_models/{name} -i {folder} -o OUT")
    lines.append(f"Converted  {conversion.folder}: {conversion.referenced} file(s) used in place, "
                 f"{conversion.written} written (file ending {conversion.file_ending})")
    lines.append(f"Checked    in {checked.seconds:.1f} s")
    return "\n".join(lines)


def _label_dir_news(disc) -> bool:
    """The label folder is worth naming: an unusual name, or other folders beside it were not used."""
    return disc.label_dir is not None and (disc.label_dir.name.lower() not in LABEL_DIRS or bool(disc.unused_dirs))


def _file_keys(checked: CheckedDataset, conversion: Conversion) -> list[str]:
    """The file-name key of each nnU-Net channel; none where colour images were split into R, G, B."""
    if len(checked.channel_keys) == len(conversion.channel_names):
        return checked.channel_keys
    return [""] * len(conversion.channel_names)


def _labels_line(checked: CheckedDataset) -> str:
    plan = checked.labels
    if plan.regions:
        values = ", ".join(f"{orig}->{new}" for orig, new in sorted(plan.mapping.items()) if orig)
        regions = "; ".join(f"{n} = labels {v}" for n, v in plan.regions)
        return f"values {values}; regions: {regions}"
    parts = []
    for orig, new in sorted(plan.mapping.items()):
        if new:
            name = plan.names.get(new, f"label_{new}")
            parts.append(f"{new} {name}" + (f" (value {orig} in the files)" if orig != new else ""))
    merged = "" if plan.inverse else " (several values merged)"
    return "0 background, " + ", ".join(parts) + merged


def _dims(values, fmt: str = "{:.0f}") -> str:
    return "x".join(fmt.format(v) for v in values[::-1])


def model_card(record: RunRecord, plan, folds: list[FoldRecord], trainer: str) -> dict:
    """What the model is, how it was trained and how good it is (JSON; rendered by model_card_readme)."""
    finals = [f.final for f in folds]
    dice_names = sorted({k for f in finals for k in f.dice})
    cv = {k: round(float(np.mean([f.dice[k] for f in finals if k in f.dice])), 4) for k in dice_names}
    fold_cards = {str(f.final.fold): _fold_card(f) for f in folds}
    return {
        "name": record.name,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "trainer": trainer,
        "pretrained_from": record.identity.get("pretrained"),
        "configuration": plan.configuration,
        "patch_size": plan.patch_size,
        "planned_batch_size": plan.batch_size,
        "network": network_description(plan, list(record.channels.nnunet_names)),
        "channels": list(record.channels.nnunet_names),
        "labels": record.labels.to_dict(),
        "training_cases": len(record.cases),
        "skipped_cases": list(record.skipped_cases),
        "input_layout": record.layout,
        "budget_minutes": round(record.time.budget / 60, 2),
        "time_used_seconds": round(record.time.elapsed(), 1),
        "phases_seconds": dict(record.time.phases),
        "training_settings": record.training_settings or {},
        "stages": [s.to_dict() for s in record.plan.stages] if record.plan and record.plan.stages else None,
        "folds": fold_cards,
        "cross_validation_dice": cv,
        "cross_validation_hd95": _mean_hd95(fold_cards),
        "versions": {"medseg_auto": _version("medseg_auto"), "nnunetv2": _version("nnunetv2"),
                     "torch": _version("torch"), "python": platform.python_version()},
    }


def _fold_card(fold: FoldRecord) -> dict:
    """A fold's line, with its learning curves, HD95 and per-case validation scores read from its folder in
    the work folder (still there at export) for the report."""
    from medseg_auto.reporting.validation import fold_details

    final = fold.final
    card = _stage_card(final)
    if final.folder and Path(final.folder).is_dir():
        card.update(fold_details(Path(final.folder), validation=bool(final.dice)))
    earlier = {name: stage for name, stage in fold.stages.items() if name}
    if earlier:  # a multi-stage model's earlier stages (the cascade's ROI model): their curves
        card["stages"] = {name: _stage_card(stage) for name, stage in earlier.items()}
        for name, stage in earlier.items():
            if stage.folder and Path(stage.folder).is_dir():
                card["stages"][name].update(fold_details(Path(stage.folder), validation=False))
    return card


def _mean_hd95(folds: dict) -> dict:
    """HD95 per label, the mean over the folds that have one (the report's cross-validation HD95)."""
    names = dict.fromkeys(k for f in folds.values() for k in f.get("hd95", {}))
    values = {k: [f["hd95"][k] for f in folds.values() if f.get("hd95", {}).get(k) is not None] for k in names}
    return {k: round(float(np.mean(v)), 2) if v else None for k, v in values.items()}


def _stage_card(result: FoldResult) -> dict:
    """One trained model's line of a fold: time, iterations, validation, Dice and training precision."""
    card = {"seconds": result.seconds, "epochs": result.epochs, "iterations": result.iterations,
            "batch_size": result.batch_size, "validation": result.validation, "dice": result.dice,
            "precision": result.precision}
    if result.compiled:  # CUDA's torch.compile, and the first steps' time it cost
        card.update(compiled=True, warmup_seconds=result.warmup_seconds)
    return card


def network_description(plan, channels: list[str]) -> dict:
    """The network class the plans name, and a dual-branch network's channel groups by name."""
    arch = plan.setting("architecture")
    kwargs = arch["arch_kwargs"]
    desc = {"class": arch["network_class_name"], "features_per_stage": kwargs["features_per_stage"]}
    narrowed = _width_record(plan)
    if narrowed:  # nnU-Net's widths, scaled for a CPU (plan.narrow_network)
        desc["width"] = narrowed["width"]
        desc["planned_features_per_stage"] = narrowed["planned_features_per_stage"]
    if "branches" in kwargs:
        from medseg_auto.networks.dual_branch import LEGACY_BRANCH_WIDTH

        desc["branches"] = [[channels[i] for i in group] for group in kwargs["branches"]]
        desc["fuse_stage"] = kwargs["fuse_stage"]
        desc["branch_width"] = kwargs.get("branch_width", LEGACY_BRANCH_WIDTH)
    return desc


def _width_record(plan) -> dict | None:
    from medseg_auto.plan import WIDTH_KEY

    try:
        return plan.setting(WIDTH_KEY)
    except KeyError:
        return None


def _stages_text(stages: list | None) -> str:
    """The cascade's split of each fold's time, e.g. '; each fold: roi model 30% (3d_roi), then this one 70%'."""
    if not stages:
        return ""
    first = ", ".join(f"{s['name']} model {s['share']:.0%} ({s['configuration']})" for s in stages)
    return f"; each fold: {first}, then this model {1 - sum(s['share'] for s in stages):.0%}"


def model_card_readme(card: dict) -> str:
    """The model card for people: a short Markdown page beside the weights."""
    names = card["labels"]["names"]
    regions = card["labels"].get("regions")
    label_text = (", ".join(f"{r['name']} (labels {r['labels']})" for r in regions) if regions else
                  ", ".join(f"{k} = {v}" for k, v in names.items()))
    rows = ["| fold | time | epochs | iterations x batch | validation | Dice |", "|---|---|---|---|---|---|"]
    for fold, f in card["folds"].items():
        dice = ", ".join(f"{k} {v:.3f}" for k, v in f["dice"].items()) or "not measured"
        rows.append(f"| {fold} | {f['seconds'] / 60:.1f} min | {f['epochs']} | {f['iterations']} x "
                    f"{f['batch_size']} | {f['validation']} | {dice} |")
    cv = ", ".join(f"{k} {v:.3f}" for k, v in card["cross_validation_dice"].items()) or "not measured"
    return "\n".join([
        f"# {card['name']}: segmentation model (nnU-Net {card['versions']['nnunetv2']}, medseg_auto "
        f"{card['versions']['medseg_auto']})",
        "",
        f"- Created {card['created']} from {card['training_cases']} cases ({card['input_layout']} layout).",
        f"- Channels: {', '.join(card['channels'])}. Labels: {label_text}.",
        f"- nnU-Net configuration {card['configuration']}, patch {'x'.join(map(str, card['patch_size'][::-1]))} "
        f"voxels (x, y, z), "
        f"trainer {card['trainer']}" + _branches_text(card.get("network", {})) + ".",
        _width_text(card.get("network", {})),
        _settings_text(card.get("training_settings", {}), card["folds"], card.get("planned_batch_size")),
        f"- Budget {card['budget_minutes']:g} min, used {card['time_used_seconds'] / 60:.1f} min"
        + _stages_text(card.get("stages")) + ".",
        f"- Cross-validation Dice (mean over folds, held-out cases): {cv}"
        + (f" ({card['cross_validation_method']})" if card.get("cross_validation_method") else "") + ".",
        "",
        *rows,
        "",
        "The report (dataset, plan, budget, learning curves, scores, validation cases): `report.html`; "
        "nnU-Net's curves: `fold_*/progress.png`. Predict with:",
        "",
        "    python3 exe_predict.py -m output_models/" + card["name"] + " -i SCANS -o OUT",
        "",
        "Plain nnU-Net can load this folder too (`nnUNetv2_predict_from_modelfolder -m THIS_FOLDER ...`) "
        "when the trainer is nnU-Net-compatible (see medseg_auto.json).",
        "",
    ])


def _branches_text(network: dict) -> str:
    if "branches" not in network:
        return ""
    groups = " | ".join(", ".join(g) for g in network["branches"])
    width = f", each {network['branch_width']:.2g} of the features" if "branch_width" in network else ""
    return f" (branches {groups}, fused after stage {network['fuse_stage']}{width})"


def _width_text(network: dict) -> str:
    features = ", ".join(map(str, network.get("features_per_stage", [])))
    if "width" not in network:
        return f"- Network features per stage: {features} (nnU-Net's plan)."
    planned = ", ".join(map(str, network["planned_features_per_stage"]))
    return (f"- Network features per stage: {features}, {network['width']:g} of nnU-Net's plan ({planned}): "
            f"a narrower network runs more iterations in the budget (the default on a CPU).")


def _settings_text(settings: dict, folds: dict, planned_batch: int | None) -> str:
    """One line on how training used the machine (train.training_settings), e.g. the CPU defaults."""
    if not settings:
        return "- Training settings: not recorded."
    processes = settings.get("fold_processes")
    threads, workers = settings["torch_threads"], settings["augmentation_workers"]
    if processes:  # what each fold process (each DDP rank) had, not the launching process
        threads, workers = processes["torch_threads_per_rank"], processes["augmentation_workers_per_rank"]
    machine = f"{threads} torch thread(s), {workers or 'no'} augmentation worker(s)" + (
        " (augmentation in the main process)" if not workers else "")
    if processes:
        ranks = processes["ranks_per_fold"]
        parts = [f"- Trained on {settings['device']}: {processes['at_once']} fold process(es) at once "
                 f"({', '.join(processes['where'])})" + (f", {ranks} DDP ranks per fold" if ranks > 1 else "")
                 + f", each {'rank' if ranks > 1 else 'process'} with {machine}"]
    else:
        parts = [f"- Trained on {settings['device']}: {machine}"]
    compiled = [f for f in folds.values() if f.get("compiled")]
    if compiled:
        parts.append(f"network compiled (torch.compile) in {len(compiled)} fold(s), first steps "
                     f"{max(f['warmup_seconds'] for f in compiled):.0f} s longer")
    if settings.get("augmentation", "nnunet") != "nnunet":  # cards written before the setting existed: nnunet
        parts.append(f"{settings['augmentation']} augmentation ({DESCRIPTIONS[settings['augmentation']]})")
    if "precision" in settings:  # cards written before it was recorded say nothing
        parts.append(_precision_text(settings["precision"], folds))
    if "batch_size" in settings:
        parts.append(f"batch {settings['batch_size']} (--batch-size; nnU-Net planned {planned_batch})")
    elif "cpu_batch_voxels" in settings:
        batches = sorted({f["batch_size"] for f in folds.values()})
        parts.append(f"batch at most {settings['cpu_batch_voxels']:,} voxels on a CPU (batch "
                     f"{', '.join(map(str, batches))}; nnU-Net planned {planned_batch} for a GPU)")
    lr = f"learning rate {settings.get('learning_rate', 0.01):g}"  # cards written before it was an option: 0.01
    if settings["lr_shape"] == "constant_decay":
        parts.append(f"{lr} constant, then linear to zero over the last "
                     f"{settings['decay_fraction']:.0%} of each fold's time")
    else:
        parts.append(f"{lr}, {settings['lr_shape']} over each fold's time")
    return "; ".join(parts) + "."


def _precision_text(asked: str, folds: dict) -> str:
    """The training forward's precision in each fold, and who chose it."""
    names = {"fp32": "float32", "bf16": "bfloat16 autocast", "fp16": "nnU-Net's float16 autocast"}
    used = " and ".join(names.get(p, p) for p in sorted({f.get("precision", "fp32") for f in folds.values()}))
    if asked == "auto":
        return f"training forward in {used} (--precision auto: by the processor's bfloat16 support and a timed step)"
    return f"training forward in {used}" + (f" (--precision {asked})" if asked != "fp32" else "")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"
