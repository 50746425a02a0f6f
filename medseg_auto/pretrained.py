"""Fine-tuning from an earlier bundle (``--pretrained BUNDLE``), nnU-Net's way.

nnU-Net fine-tunes by moving the source plans onto the new dataset (same network, same preprocessing)
and loading the source weights into the new trainer's network, all but the segmentation heads (so the
labels may differ). Here the source is a bundle: any nnU-Net model folder, ours or plain nnU-Net's.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from medseg_auto.errors import InputError
from medseg_auto.workspace import Workspace

_SOURCE = "Dataset000_medseg_pretrained"  # a scratch name in the work folder, never a user's dataset


@dataclass(frozen=True)
class PretrainedBundle:
    folder: Path
    plans: dict
    configuration: str
    checkpoint: Path


def open_pretrained(folder: Path, channels: list[str], requested: str) -> PretrainedBundle:
    """Check that ``folder`` is a model the new data can fine-tune; say precisely why not otherwise."""
    missing = [n for n in ("plans.json", "dataset.json") if not (folder / n).is_file()]
    checkpoints = sorted(folder.glob("fold_*/checkpoint_final.pth"))
    if not folder.is_dir() or missing or not checkpoints:
        raise InputError(f"--pretrained {folder}: not a model folder (needs plans.json, dataset.json and "
                         f"fold_*/checkpoint_final.pth, as in output_models/NAME).")
    plans = json.loads((folder / "plans.json").read_text())
    source_channels = list(json.loads((folder / "dataset.json").read_text())["channel_names"].values())
    if len(source_channels) != len(channels):
        raise InputError(f"--pretrained {folder}: the model was trained on {len(source_channels)} channel(s) "
                         f"({', '.join(source_channels)}), this data has {len(channels)} ({', '.join(channels)}); "
                         f"fine-tuning needs the same channels in the same order (choose them with --channels).")
    if [c.lower() for c in source_channels] != [c.lower() for c in channels]:
        raise InputError(f"--pretrained {folder}: the model's channels are {', '.join(source_channels)}, this "
                         f"data's are {', '.join(channels)}; name them alike with -i (e.g. -i "
                         f"{','.join(source_channels)}) if they are the same images.")
    import torch

    preferred = folder / "fold_all" / "checkpoint_final.pth"
    checkpoint = preferred if preferred.is_file() else checkpoints[0]
    trained = torch.load(checkpoint, map_location="cpu", weights_only=False)["init_args"]["configuration"]
    if requested not in ("auto", trained):
        raise InputError(f"--pretrained {folder}: the model is a {trained} model; fine-tuning keeps its network, "
                         f"so use -c {trained} or -c auto.")
    return PretrainedBundle(folder, plans, trained, checkpoint)


def transfer_plans(workspace: Workspace, bundle: PretrainedBundle, plans_identifier: str) -> None:
    """nnU-Net's plans transfer onto this run's dataset (its network, spacing and normalisation)."""
    from nnunetv2.experiment_planning.plans_for_pretraining.move_plans_between_datasets import (
        move_plans_between_datasets)

    source = workspace.preprocessed / _SOURCE
    source.mkdir(parents=True, exist_ok=True)
    (source / f"{plans_identifier}.json").write_text(json.dumps(bundle.plans))
    try:
        move_plans_between_datasets(_SOURCE, workspace.nnunet_name, plans_identifier, plans_identifier)
    finally:
        shutil.rmtree(source)
    # nnU-Net's planner would have copied dataset.json beside the plans; the transfer does not
    shutil.copy2(workspace.raw_dataset / "dataset.json", workspace.preprocessed / workspace.nnunet_name)


def load_weights(network, bundle_checkpoint: Path) -> None:
    """All weights but the segmentation heads, through nnU-Net's own loader (it checks every shape). The
    loader reads its file without a ``map_location``, which fails on a CPU-only machine for a checkpoint
    saved on a GPU, so it is handed the weights already mapped to the CPU."""
    import io

    import torch
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    weights = torch.load(bundle_checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    buffer = io.BytesIO()
    torch.save({"network_weights": weights}, buffer)
    buffer.seek(0)
    try:
        load_pretrained_weights(network, buffer, verbose=False)
    except AssertionError as e:
        raise InputError(f"--pretrained: the weights in {bundle_checkpoint} do not fit this network: {e}") from e
