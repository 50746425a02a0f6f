"""One fold, start to validated model: in the run's own process, or alone in a process of its own.

``exe_train.py`` trains its folds one after another in its own process, or, with several GPUs (``--gpus``) or
``--workers N`` on a CPU, starts ``python -m medseg_auto.fold JOB`` once per fold, up to one per device at a
time. ``torchrun`` starts the same entry point for one fold on several GPUs (``--ddp K``, DDP): every rank
trains the fold, rank 0 makes the time decisions and writes the files.

A job (``FoldJob``) is everything a fold needs, written as JSON into the work folder by the run; the fold
writes its ``FoldRecord`` beside it, after each stage, so a killed fold resumes where its stages stopped.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from medseg_auto.budget import fmt_duration
from medseg_auto.train import FoldResult, StopRequest
from medseg_auto.trainers.stages import Stage
from medseg_auto.workspace import Workspace, write_json_atomic

EXIT_INTERRUPTED = 130


@dataclass
class StageSpec:
    """A stage as a job carries it: the trainer class by import path (``module:Class``)."""

    name: str
    trainer: str
    configuration: str
    share: float

    @classmethod
    def of(cls, stage: Stage) -> "StageSpec":
        return cls(stage.name, f"{stage.trainer.__module__}:{stage.trainer.__qualname__}", stage.configuration,
                   stage.share)

    def stage(self) -> Stage:
        module, name = self.trainer.split(":")
        return Stage(self.name, getattr(importlib.import_module(module), name), self.configuration, self.share)


@dataclass
class FoldJob:
    """One fold to train: where, for how long (``seconds``: all its stages, validation included, the time
    its earlier sessions used counted in), with which plans and stages, on which device."""

    work_dir: str                      # the run's work folder (work/NAME)
    name: str                          # the dataset's name
    fold: int | str
    seconds: float
    plans: dict                        # nnU-Net's plans, with the trainers' own configurations
    stages: list[StageSpec]            # in order; the last is the model exe_predict.py runs
    settings: dict = field(default_factory=dict)  # FoldBudget fields from the command line
    device: str = "cpu"                # "cpu" or "cuda" (the process sees its GPU(s) as cuda:0..)
    threads: int | None = None         # torch threads (CPU workers split the cores)
    pretrained: str | None = None      # a checkpoint the last stage starts from
    compile: str = "auto"              # torch.compile on CUDA: auto, on, off (medseg_auto.device.compile_policy)

    @property
    def workspace(self) -> Workspace:
        return Workspace(Path(self.work_dir), self.name)

    def save(self, path: Path) -> Path:
        write_json_atomic(path, asdict(self))
        return path

    @classmethod
    def load(cls, path: Path) -> "FoldJob":
        data = json.loads(Path(path).read_text())
        data["stages"] = [StageSpec(**s) for s in data["stages"]]
        return cls(**data)


@dataclass
class FoldRecord:
    """What a fold produced: each finished stage's result by name (``""``: the model exe_predict.py runs)."""

    fold: int | str
    stages: dict[str, FoldResult] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return "" in self.stages

    @property
    def final(self) -> FoldResult:
        """The last stage's result: the model exe_predict.py runs."""
        return self.stages[""]

    def result(self) -> dict:
        """The run record's and model card's form: the last stage's result, the earlier stages under ``stages``."""
        final = self.final.record()
        earlier = {name: r.record() for name, r in self.stages.items() if name}
        return dict(final, stages=earlier) if earlier else final

    def save(self, path: Path) -> None:
        write_json_atomic(path, {"fold": self.fold, "stages": {k: v.record() for k, v in self.stages.items()}})

    @classmethod
    def load(cls, path: Path) -> "FoldRecord | None":
        if not Path(path).is_file():
            return None
        data = json.loads(Path(path).read_text())
        return cls(data["fold"], {k: FoldResult(**v) for k, v in data["stages"].items()})


def record_path(job_path: Path) -> Path:
    """Where the fold of ``job_path`` writes its record."""
    return job_path.with_name(job_path.name.replace(".job.json", ".record.json"))


def train_stages(job: FoldJob, stop: StopRequest, done: FoldRecord | None = None,
                 on_epoch: Callable | None = None, on_stage: Callable[[FoldRecord], None] | None = None,
                 device=None) -> FoldRecord:
    """Train the fold's stages in order, each with its share of what the fold has left after the ones before
    it; stages in ``done`` are not trained again. ``on_stage`` gets the record after each stage."""
    import torch

    from medseg_auto.device import apply_compile_policy
    from medseg_auto.plan import PlanResult
    from medseg_auto.train import train_fold
    from medseg_auto.trainers import distributed
    from medseg_auto.trainers.time_budget import FoldBudget

    device = device if device is not None else torch.device(job.device)
    record = done or FoldRecord(job.fold)
    stages = [s.stage() for s in job.stages]
    plan = PlanResult(stages[-1].configuration, job.plans)
    used = 0.0
    for i, stage in enumerate(stages):
        if stage.name not in record.stages:
            seconds = (job.seconds - used) * stage.share / sum(s.share for s in stages[i:])
            budget = FoldBudget(seconds=seconds, spent=stage_spent(job.workspace, stage, job.fold), **job.settings)
            label = f"fold {job.fold}" + (f", {stage.name} stage" if stage.name else "")
            if len(stages) > 1 and distributed.rank() == 0:
                print(f"[train] {label} ({stage.configuration}): {fmt_duration(seconds)}", file=sys.stderr)
            # every rank the same choice (each rank's clock measured the stages before slightly differently)
            compiled, why = apply_compile_policy(device.type, distributed.agree(seconds - budget.spent), job.compile)
            if device.type == "cuda" and distributed.rank() == 0:
                print(f"[train] {label}: torch.compile {'on' if compiled else 'off'} ({why})", file=sys.stderr)
            pretrained = Path(job.pretrained) if job.pretrained and not stage.name else None
            earlier = {name: r.folder for name, r in record.stages.items()}

            def epoch_done(trainer, used=used):
                if on_epoch is not None:
                    on_epoch(trainer, used)

            result = train_fold(job.workspace, replace(plan, configuration=stage.configuration), job.fold, budget,
                                stage.trainer, device, stop, epoch_done, pretrained, earlier)
            record.stages[stage.name] = result
            dice = ", ".join(f"{k} {v:.3f}" for k, v in result.dice.items()) or "not measured"
            if distributed.rank() == 0:
                print(f"[train] {label} done in {fmt_duration(result.seconds)}: {result.epochs} epochs, "
                      f"{result.iterations} iterations x {result.batch_size}; validation {result.validation}, "
                      f"Dice {dice}", file=sys.stderr)
            if on_stage is not None:
                on_stage(record)
        used += record.stages[stage.name].seconds
    return record


def stage_spent(workspace: Workspace, stage: Stage, fold) -> float:
    """The stage's time saved with its last checkpoint (what a kill -9 cannot take back)."""
    from medseg_auto.run_record import FoldClock
    from medseg_auto.train import fold_folder

    clock = FoldClock.read(fold_folder(workspace, stage.trainer, stage.configuration, fold))
    return clock.spent if clock is not None else 0.0


def run_job(job_path: Path) -> int:
    """Train the fold of ``job_path`` in this process (a ``--workers``/``--gpus`` fold, or a torchrun rank)
    and write its record; the exit code says how it ended (0, 130 interrupted, 1 failed)."""
    from medseg_auto.device import apply_device_profile, describe_device
    from medseg_auto.parallel import stop_with_parent
    from medseg_auto.train import configure_nnunet_processes, epoch_line

    job = FoldJob.load(job_path)
    stop_with_parent()  # the run, or torchrun under DDP
    configure_nnunet_processes(job.device)  # before nnunetv2 is imported (the run gave this process its share)
    from medseg_auto.trainers.time_budget import TrainingInterrupted

    device = _process_device(job.device)
    apply_device_profile(device, job.threads)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        print(f"[train] fold {job.fold}: own process {os.getpid()}, {describe_device(device)}", file=sys.stderr)
    out = record_path(job_path)

    def on_epoch(trainer, used):
        if rank == 0:
            print(epoch_line(trainer), file=sys.stderr, flush=True)

    def on_stage(record: FoldRecord):
        if rank == 0:
            record.save(out)

    stop = StopRequest()
    try:
        with stop.installed():
            train_stages(job, stop, FoldRecord.load(out), on_epoch, on_stage, device)
    except (TrainingInterrupted, KeyboardInterrupt) as e:
        print(f"[train] fold {job.fold}: interrupted ({e or 'signal'}); its last checkpoint is saved.",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        _leave_process_group()
    return 0


def _process_device(name: str):
    """This process's device; under torchrun, the process group is joined first (gloo on a CPU, NCCL on
    CUDA) and each rank takes the GPU of its local rank."""
    import torch
    import torch.distributed as dist

    device = torch.device(name)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medseg_auto.fold",
                                description="Train one fold of a run from its job file (started by exe_train.py "
                                            "or by torchrun for DDP).")
    p.add_argument("job", type=Path, help="work/NAME/jobs/fold_F.job.json, written by exe_train.py")
    args = p.parse_args(argv)
    if not args.job.is_file():
        print(f"{args.job}: no such job file (exe_train.py writes it into the work folder).", file=sys.stderr)
        return 2
    return run_job(args.job)


if __name__ == "__main__":
    sys.exit(main())
