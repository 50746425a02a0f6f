"""Train stage: one fold with a budgeted nnU-Net trainer, resumable from its last checkpoint.

nnU-Net runs the loop; this module builds the trainer from the work folder's plans, resumes it where an
earlier session stopped, turns Ctrl+C / SIGTERM into a saved checkpoint, and prints a line per epoch.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from medseg_auto.budget import fmt_duration
from medseg_auto.plan import PLANS_IDENTIFIER, PlanResult
from medseg_auto.workspace import Workspace


@dataclass
class FoldResult:
    """What a finished fold reports to the model card."""

    fold: int | str
    seconds: float
    epochs: int
    iterations: int
    batch_size: int
    validation: str                      # mirrored, fast or skipped
    precision: str = "fp32"              # of the training forward: fp32, bf16 (CPU) or fp16 (CUDA autocast)
    dice: dict[str, float] = field(default_factory=dict)  # label or region name -> held-out Dice
    folder: str = ""
    compiled: bool = False               # torch.compile (CUDA, medseg_auto.device.compile_policy)
    warmup_seconds: float = 0.0          # the first steps' time beyond the steady speed (compilation on CUDA)

    def record(self) -> dict:
        return self.__dict__.copy()


def nnunet_process_settings(device_type: str, processes: int = 1) -> dict[str, str]:
    """Our worker counts for nnU-Net (its environment variables), for ``processes`` training processes sharing
    the machine (folds at once, DDP ranks). On a CPU its augmentation workers compete with the training
    threads for the same cores, so they get few; on a GPU each process gets nnU-Net's 12, or its share of the
    cores less one for itself where that is fewer (nnU-Net's table assumes 4 GPUs on 48 threads)."""
    cpus = os.cpu_count() or 1
    share = max(1, cpus // max(1, processes))
    settings = {"nnUNet_def_n_proc": str(max(1, min(4, cpus)))}
    if device_type == "cpu":
        settings["nnUNet_n_proc_DA"] = str(max(1, share // 4))
    else:
        settings["nnUNet_n_proc_DA"] = str(max(1, min(12, share - 1)))
    return settings


def configure_nnunet_processes(device_type: str, processes: int = 1) -> set[str]:
    """Set ``nnunet_process_settings`` in this process's environment, unless the user set them; returns the
    variables set here (those a fold process may be given its own share of)."""
    ours = set()
    for key, value in nnunet_process_settings(device_type, processes).items():
        if key not in os.environ:
            os.environ[key] = value
            ours.add(key)
    return ours


def training_settings(device_type: str, settings: dict) -> dict:
    """How training used the machine, for the model card: the device, torch threads, nnU-Net's augmentation
    workers and default process count (as nnU-Net read them in this process; fold processes' own are added
    by the run), how much augmentation, the learning rate and its shape, the precision asked for, and the
    user's batch or, on a CPU, the batch cap in voxels."""
    import torch
    from nnunetv2.configuration import default_num_processes
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    from medseg_auto.trainers.time_budget import FoldBudget

    budget = FoldBudget(seconds=0.0, **settings)  # only the settings are read
    out = {"device": device_type, "torch_threads": torch.get_num_threads(),
           "augmentation_workers": get_allowed_n_proc_DA(), "nnunet_processes": default_num_processes,
           "augmentation": budget.augmentation,
           "lr_shape": budget.lr_shape, "learning_rate": budget.learning_rate or 0.01}
    if budget.lr_shape == "constant_decay":
        out["decay_fraction"] = budget.decay_fraction
    out["precision"] = budget.precision
    if budget.batch_size:
        out["batch_size"] = budget.batch_size
    elif device_type == "cpu":
        out["cpu_batch_voxels"] = budget.cpu_batch_voxels
    return out


class StopRequest:
    """Ctrl+C and SIGTERM. While a trainer is in its loop the stop is deferred to its next step (it saves a
    checkpoint first); anywhere else, or at a second signal, it interrupts at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.deferred = False

    def _handle(self, signum, frame) -> None:
        if self.deferred and not self.event.is_set():
            self.event.set()
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self):
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def fold_folder(workspace: Workspace, trainer_class: type, configuration: str, fold) -> Path:
    return (workspace.results / workspace.nnunet_name /
            f"{trainer_class.__name__}__{PLANS_IDENTIFIER}__{configuration}" / f"fold_{fold}")


def train_fold(workspace: Workspace, plan: PlanResult, fold, budget, trainer_class: type, device,
               stop: StopRequest, on_epoch: Callable | None = None,
               pretrained: Path | None = None, earlier_stages: dict[str, str] | None = None) -> FoldResult:
    """Train (or resume, or only validate) one fold inside ``budget`` (a ``FoldBudget``); a fresh fold
    starts from the ``pretrained`` checkpoint's weights when given. ``earlier_stages`` names the fold folders
    of the models trained before this one on the fold (the cascade's ROI model, which its validation runs)."""
    from medseg_auto.run_record import FoldClock
    from medseg_auto.trainers import distributed

    workspace.activate()
    folder = fold_folder(workspace, trainer_class, plan.configuration, fold)
    final, latest = folder / "checkpoint_final.pth", folder / "checkpoint_latest.pth"
    summary = folder / "validation" / "summary.json"
    dataset_json = json.loads((workspace.preprocessed / workspace.nnunet_name / "dataset.json").read_text())
    plans = json.loads(json.dumps(plan.plans)) | {"continue_training": latest.is_file() or final.is_file()}
    trainer = trainer_class(plans, plan.configuration, fold, dataset_json, device)
    trainer.budget = budget
    trainer.earlier_stage_folders = dict(earlier_stages or {})
    trainer.stop_requested = stop.event
    if on_epoch is not None:
        trainer.on_epoch_done = on_epoch
    if final.is_file():
        trainer.load_checkpoint(str(final))
    else:
        if pretrained is not None and not latest.is_file():
            from medseg_auto.pretrained import load_weights

            trainer.initialize()
            load_weights(trainer.network, pretrained)
            print(f"  fold {fold}: starting from the weights of {pretrained}", file=sys.stderr)
        if latest.is_file():
            trainer.load_checkpoint(str(latest))
            print(f"  fold {fold}: resuming after epoch {trainer.current_epoch} "
                  f"({fmt_duration(budget.spent)} used of {fmt_duration(budget.seconds)})", file=sys.stderr)
        stop.deferred = True
        try:
            trainer.run_training()
        finally:
            stop.deferred = False
        if distributed.any_rank(stop.event.is_set()):  # asked to stop as the fold ended: final checkpoint saved
            from medseg_auto.trainers.time_budget import TrainingInterrupted

            raise TrainingInterrupted(f"fold {fold} interrupted after its training, before its validation")
    if distributed.agree(float(not summary.is_file())) > 0.5 and trainer.validation_mode != "skipped":
        trainer.perform_actual_validation()  # rank 0's view of the files: every rank joins nnU-Net's validation
    clock = FoldClock.read(folder) or FoldClock()
    return FoldResult(fold=fold, seconds=round(trainer.elapsed(), 1), epochs=clock.epochs,
                      iterations=clock.iterations, batch_size=clock.global_batch_size or trainer.batch_size,
                      validation=trainer.validation_mode, precision=trainer.precision or clock.precision or "fp32",
                      dice=_validation_dice(summary, dataset_json), folder=str(folder), compiled=clock.compiled,
                      warmup_seconds=round(clock.warmup_seconds, 1))


def epoch_line(trainer) -> str:
    """``fold 0 | epoch 4 | 1:12 / 4:30, ETA 3:18 | 12 it x 2 | lr 0.0100 | pseudo-Dice 0.61 (0.58 0.64)``."""
    log = trainer.logger.local_logger.my_fantastic_logging
    per_label = " ".join(f"{d:.2f}" for d in log["dice_per_class_or_region"][-1])
    left = max(0.0, trainer.budget.seconds - trainer.elapsed())
    return (f"  fold {trainer.fold} | epoch {trainer.current_epoch} | {fmt_duration(trainer.elapsed())} / "
            f"{fmt_duration(trainer.budget.seconds)}, ETA {fmt_duration(left)} | "
            f"{trainer.num_iterations_per_epoch} it x {trainer.batch_size} | lr {log['lrs'][-1]:.4f} | "
            f"pseudo-Dice {log['mean_fg_dice'][-1]:.3f} ({per_label})")


def _validation_dice(summary: Path, dataset_json: dict) -> dict[str, float]:
    """Mean held-out Dice per label (or region) from nnU-Net's validation summary, keyed by name."""
    if not summary.is_file():
        return {}
    names = {}
    for name, value in dataset_json["labels"].items():
        if isinstance(value, list):  # a region: nnU-Net keys it by its tuple of labels, even a tuple of one
            names[str(tuple(value))] = name
        else:
            names[str(value)] = name
    mean = json.loads(summary.read_text())["mean"]
    return {names.get(k, k): round(v["Dice"], 4) for k, v in mean.items()}
