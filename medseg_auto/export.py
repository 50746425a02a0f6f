"""Export stage: the model bundle in ``output_models/NAME/``, self-contained and loadable without env vars.

Layout (an nnU-Net model folder plus our files, so plain nnU-Net's ``nnUNetv2_predict_from_modelfolder``
loads it for standard trainers)::

    dataset.json  plans.json  dataset_fingerprint.json
    fold_K/checkpoint_final.pth  fold_K/progress.png
    medseg_auto.json   (medseg_auto.manifest: what prediction needs beyond nnU-Net: channels, labels, trainer)
    model_card.json  README.md  report.html  report_files/ (the report's overlays of validation cases)

The bundle is written beside its destination, verified by loading it with nnU-Net's predictor, then
renamed into place; an existing bundle is never replaced unless ``overwrite`` is given.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from medseg_auto.errors import InputError, MedsegError
from medseg_auto.manifest import MANIFEST, BundleManifest
from medseg_auto.workspace import write_json_atomic

CHECKPOINT = "checkpoint_final.pth"


def refuse_existing(bundle: Path, overwrite: bool) -> None:
    """Checked before training starts, so a run never spends its budget and then cannot export."""
    if bundle.exists() and not overwrite:
        raise InputError(f"{bundle} already holds a model: nothing was changed. Choose another -d name, move "
                         f"the old model away, or add --overwrite to replace it after the new one is verified.")


def export_bundle(bundle: Path, results_folder: Path, folds: list, inference_trainer: str,
                  manifest: BundleManifest, card: dict, readme: str, overwrite: bool,
                  parts: dict[str, Path] | None = None) -> Path:
    """Write, verify and move the bundle into place; returns its path. ``parts``: the results folders of a
    multi-stage model's earlier stages, each exported as an nnU-Net model folder of that name inside."""
    refuse_existing(bundle, overwrite)
    bundle.parent.mkdir(parents=True, exist_ok=True)
    tmp = bundle.parent / f".{bundle.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        folders = {"": results_folder, **(parts or {})}  # "": the bundle's own model, at its top
        for name, folder in folders.items():
            _write_model_folder(tmp / name, folder, folds, inference_trainer)
        manifest.write(tmp / MANIFEST)
        write_json_atomic(tmp / "model_card.json", card)
        (tmp / "README.md").write_text(readme)
        write_report_safely(tmp, card, results_folder)
        for name in folders:
            verify_bundle(tmp / name, folds)
        _move_into_place(tmp, bundle)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays behind
        raise
    return bundle


def write_report_safely(bundle: Path, card: dict, results_folder: Path | None) -> None:
    """``report.html`` (medseg_auto.reporting), timed; a report that fails must not cost the trained model:
    the failure is said, with the command that writes the report later."""
    from medseg_auto.reporting import write_report

    start = time.monotonic()
    try:
        write_report(bundle, card, results_folder)
    except Exception as e:
        print(f"[export] report.html could not be written ({type(e).__name__}: {e}); the model is exported "
              f"without it. Write it later with: python3 exe_train.py --report BUNDLE", file=sys.stderr)
        return
    print(f"[export] report.html written in {time.monotonic() - start:.1f} s", file=sys.stderr)


def _write_model_folder(dst: Path, results_folder: Path, folds: list, inference_trainer: str) -> None:
    """nnU-Net's model folder layout: dataset.json, plans.json, fingerprint, fold_K/checkpoint_final.pth."""
    import torch

    dst.mkdir(exist_ok=True)
    dataset_json = json.loads((results_folder / "dataset.json").read_text())
    dataset_json.pop("dataset", None)  # absolute paths of the training files: not the bundle's business
    write_json_atomic(dst / "dataset.json", dataset_json)
    for name in ("plans.json", "dataset_fingerprint.json"):
        shutil.copy2(results_folder / name, dst / name)
    for fold in folds:
        src, fold_dst = results_folder / f"fold_{fold}", dst / f"fold_{fold}"
        fold_dst.mkdir()
        checkpoint = torch.load(src / CHECKPOINT, map_location="cpu", weights_only=False)
        torch.save(_inference_checkpoint(checkpoint, inference_trainer), fold_dst / CHECKPOINT)
        if (src / "progress.png").is_file():
            shutil.copy2(src / "progress.png", fold_dst / "progress.png")


def _inference_checkpoint(checkpoint: dict, inference_trainer: str) -> dict:
    """Only what inference reads: weights, configuration, mirroring axes, and the trainer class that builds
    the network (ours differ from nnU-Net's in training only, so nnU-Net's class rebuilds them)."""
    init_args = dict(checkpoint["init_args"])
    init_args["dataset_json"] = {k: v for k, v in init_args["dataset_json"].items() if k != "dataset"}
    init_args.pop("device", None)
    return {
        "network_weights": checkpoint["network_weights"],
        "init_args": init_args,
        "trainer_name": inference_trainer,
        "inference_allowed_mirroring_axes": checkpoint.get("inference_allowed_mirroring_axes"),
        "current_epoch": checkpoint.get("current_epoch"),
    }


def verify_bundle(folder: Path, folds: list) -> None:
    """Load the bundle with nnU-Net's predictor, as a user's prediction would; raises if it cannot."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from medseg_auto.device import without_nnunet_device_remarks

    with without_nnunet_device_remarks():  # nnU-Net remarks on any predictor off CUDA
        predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, verbose=False,
                                    allow_tqdm=False)
    try:
        predictor.initialize_from_trained_model_folder(str(folder), use_folds=tuple(folds),
                                                       checkpoint_name=CHECKPOINT)
    except Exception as e:  # a bundle that cannot load must not replace anything
        raise MedsegError(f"The exported model does not load in nnU-Net ({e}); nothing was "
                          f"replaced and the work folder is kept.") from e


def _move_into_place(tmp: Path, bundle: Path) -> None:
    old = None
    if bundle.exists():
        old = bundle.parent / f".{bundle.name}.replaced-{int(time.time())}"
        bundle.rename(old)
    tmp.rename(bundle)
    if old is not None:
        shutil.rmtree(old)
        print(f"--overwrite: replaced the earlier model in {bundle}", file=sys.stderr)
