"""One training run, start to bundle: ingest -> plan -> train each fold -> export, on one clock.

The run's state lives in ``work/NAME/run.json`` (what was asked, found, planned, trained, and the time
used; ``run_record.RunRecord``), which is what lets a rerun of the same command resume an interrupted run
with the time left.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medseg_auto import __version__
from medseg_auto.budget import (EXPORT_RESERVE_SECONDS, MIN_FOLD_SECONDS, FoldShare, budget_advice,
                                estimate_plan_seconds, fmt_duration, report_reserve_seconds, split_training)
from medseg_auto.errors import InputError, Interrupted, MedsegError
from medseg_auto.fold import FoldRecord
from medseg_auto.ingest import CheckedDataset, IngestOptions, check_dataset, convert
from medseg_auto.ingest.problems import format_table
from medseg_auto.manifest import ChannelsRecord, LabelsRecord, StageRecord
from medseg_auto.report import dataset_summary, model_card, model_card_readme
from medseg_auto.run_record import CaseRecord, FoldEntry, PlanRecord, RunRecord, TimeLedger
from medseg_auto.train import StopRequest
from medseg_auto.trainers.stages import Stage
from medseg_auto.workspace import Workspace

RESUMABLE = ("training", "interrupted", "failed")


@dataclass
class RunOptions:
    """Everything ``exe_train.py`` was asked to do (built by the CLI)."""

    name: str
    ingest: IngestOptions
    minutes: float
    folds: list
    configuration: str = "auto"
    trainer: str = "default"
    device: str = "auto"
    work_dir: Path = Path("work")
    output_dir: Path = Path("output_models")
    command: str = "python3 exe_train.py"   # printed as the resume command
    dry_run: bool = False
    check_only: bool = False
    resume: bool = False
    restart: bool = False
    keep_work: bool = False
    overwrite: bool = False
    consume_input: bool = False
    input_root: Path | None = None           # the drop-in folder (input_train/): --consume-input stays inside
    pretrained: Path | None = None           # a bundle to fine-tune from
    width: float | None = None               # network features, share of nnU-Net's plan (None: by device)
    advise_budget: bool = True               # warn when folds get little time (off for --example)
    settings: dict = field(default_factory=dict)  # trainer settings (FoldBudget fields) from the CLI
    trainer_options: dict = field(default_factory=dict)  # for the trainer's plans (dual-branch: branches, fuse_stage)
    workers: int = 1                         # CPU: folds trained at once, each in its own process (cores split)
    gpus: list | None = None                 # CUDA: GPU indices for folds at once (None: every visible GPU)
    ddp: int = 1                             # ranks (GPUs) per fold through torchrun
    nnodes: int = 1                          # machines a fold's ranks span (torchrun's rendezvous)
    compile: str = "auto"                    # torch.compile on CUDA: auto (by the fold's time), on, off
    rdzv_endpoint: str | None = None         # HOST:PORT where they meet

    def identity(self) -> dict:
        """What must match for a rerun to continue an interrupted run (the budget may change)."""
        identity = {"folds": [str(f) for f in self.folds], "configuration": self.configuration,
                    "trainer": self.trainer, "width": self.width, "settings": self.settings,
                    "trainer_options": self.trainer_options,
                    "pretrained": str(self.pretrained) if self.pretrained else None}
        if self.ingest.series:  # another DICOM series is other data in the same files' folders
            identity["series"] = self.ingest.series
        return identity


def train(opts: RunOptions) -> Path | None:
    """Run the whole pipeline; returns the exported bundle (None for a dry run)."""
    from medseg_auto.export import refuse_existing
    from medseg_auto.trainers.augmentation import check_augmentation
    from medseg_auto.trainers.precision import check_precision

    check_augmentation(opts.settings.get("augmentation", "nnunet"), opts.trainer)  # API callers skip the CLI's
    check_precision(opts.settings.get("precision", "auto"))
    clock = TimeLedger(opts.minutes * 60.0)
    bundle = opts.output_dir / opts.name
    if not (opts.dry_run or opts.check_only):
        refuse_existing(bundle, opts.overwrite)
    checked = check_dataset(opts.ingest)
    if checked.problems:
        print(format_table(checked.problems), file=sys.stderr)
    if checked.skipped:
        print(f"--skip-invalid: continuing without {len(checked.skipped)} case(s): "
              f"{', '.join(checked.skipped)}", file=sys.stderr)
    workspace = Workspace.create(opts.work_dir, opts.name, opts.ingest.dataset_dir)
    stop = StopRequest()
    with workspace.lock(), stop.installed():
        return _Run(opts, workspace, checked, clock, bundle, stop).execute()


class _Run:
    def __init__(self, opts: RunOptions, workspace: Workspace, checked: CheckedDataset, clock: TimeLedger,
                 bundle: Path, stop):
        self.opts, self.workspace, self.checked, self.clock, self.bundle = opts, workspace, checked, clock, bundle
        self.stop = stop
        self.pretrained = None  # a PretrainedBundle once checked
        self.stages: list = []  # the models trained on each fold, in order (one, or the cascade's two)
        self.slots: list = []  # fold processes at once (medseg_auto.parallel); none: folds in turn, here
        self.nnunet_env_ours: set = set()  # nnU-Net's variables we set (not the user): fold processes get shares
        self.record: RunRecord  # set once the data is converted; its time is ``clock``

    # -- the phases --------------------------------------------------------------------------------------
    def execute(self) -> Path | None:
        resumed = self._resume_or_start(self._previous())
        start = time.monotonic()
        conversion = convert(self.checked, self.workspace)
        converting = time.monotonic() - start
        now = dict(_ingest_fields(self.checked, conversion, str(self.workspace.run_record)), name=self.opts.name,
                   identity=self.opts.identity(), version=__version__, state="planning", time=self.clock)
        self.record = replace(resumed, **now) if resumed else RunRecord(arguments=self.opts.command, **now)
        self.clock.phases["ingest"] = round(self.checked.seconds + converting, 2)  # check, convert
        self.save()
        print(dataset_summary(self.opts.name, self.checked, conversion))
        if self.opts.check_only:
            self.record.state = "checked"
            self.save()
            print("\n--check: the data is ready for training; nothing planned or trained.")
            return None
        if not resumed:
            self._warn_up_front()
        try:
            return self._plan_train_export()
        except (KeyboardInterrupt, Interrupted) as e:
            self._interrupted(e)
        except MedsegError as e:
            # refused input (exit 2) leaves nothing to resume: a corrected command starts afresh
            self.record.state = "refused" if isinstance(e, InputError) else "failed"
            self.save()
            raise
        except Exception as e:
            self.record.state = "failed"
            self.save()
            raise MedsegError(f"Training failed: {type(e).__name__}: {e}\nThe work folder {self.workspace.root} "
                              f"is kept; rerun the same command to resume.") from e

    def _plan_train_export(self) -> Path | None:
        from medseg_auto.device import describe_device, select_device
        from medseg_auto.parallel import fold_slots, rendezvous_arguments
        from medseg_auto.plan import CPU_WIDTH, lowres_hint, plan_and_preprocess
        from medseg_auto.train import configure_nnunet_processes, training_settings
        from medseg_auto.trainers import trainer_class as get_trainer

        device = select_device(self.opts.device)
        print(f"[device] {describe_device(device)}", file=sys.stderr)
        if device.type == "cpu" and self.opts.gpus is not None:
            raise InputError("--gpus: no CUDA GPU is visible to torch here (training on the CPU); leave out --gpus, "
                             "or use --workers N to train folds at once on the CPU's cores")
        if device.type == "cuda" and self.opts.workers > 1:
            raise InputError("--workers is for CPU training and this run trains on CUDA: use --gpus (one fold "
                             "per GPU) or --device cpu")
        self.nnunet_env_ours = configure_nnunet_processes(device.type)  # before nnunetv2 is imported
        channels = list(self.record.channels.nnunet_names)
        get_trainer(self.opts.trainer).check_options(channels, self.opts.trainer_options)
        self.record.training_settings = training_settings(device.type, self.opts.settings)
        if self.opts.pretrained is not None:
            from medseg_auto.pretrained import open_pretrained

            self.pretrained = open_pretrained(self.opts.pretrained, channels, self.opts.configuration)
        print(f"\n[plan] nnU-Net's fingerprint, planning and preprocessing: about "
              f"{fmt_duration(self._plan_estimate())} (estimate)", file=sys.stderr)
        # the device's default width, or the one the interrupted run started with (its checkpoints' network)
        if self.record.width is None:
            self.record.width = (self.opts.width if self.opts.width is not None else
                                 CPU_WIDTH if device.type == "cpu" else 1.0)
        width = self.record.width
        plan = plan_and_preprocess(self.workspace, self.opts.configuration, self.checked.is_2d,
                                   processes=os.cpu_count() or 1, pretrained=self.pretrained, width=width)
        trainer = get_trainer(self.opts.trainer)
        plan.configuration = trainer.adapt_plans(plan.plans, plan.configuration, channels, self.opts.trainer_options)
        earlier = trainer.earlier_stages(self.workspace, plan, os.cpu_count() or 1)
        self.stages = earlier + [Stage("", trainer, plan.configuration, 1.0 - sum(s.share for s in earlier))]
        self.record.plan = PlanRecord(plan.configuration, tuple(plan.patch_size), plan.batch_size, dict(plan.seconds),
                                      tuple(StageRecord(**s.record()) for s in earlier))
        self.clock.phases["plan"] = round(sum(plan.seconds.values()) + self.clock.phases.get("plan", 0), 2)
        self.slots = fold_slots(device, self.opts.workers, self.opts.gpus, self.opts.ddp, len(self._todo()),
                                rendezvous_arguments(self.opts.nnodes, self.opts.rdzv_endpoint))
        if self.slots:
            from medseg_auto.train import nnunet_process_settings

            processes = len(self.slots) * self.slots[0].ranks
            workers = nnunet_process_settings(device.type, processes)["nnUNet_n_proc_DA"] \
                if "nnUNet_n_proc_DA" in self.nnunet_env_ours else os.environ["nnUNet_n_proc_DA"]
            self.record.training_settings["fold_processes"] = {
                "at_once": len(self.slots), "ranks_per_fold": self.slots[0].ranks,
                "torch_threads_per_rank": self.slots[0].threads, "augmentation_workers_per_rank": int(workers),
                "where": [s.label for s in self.slots]}
        shares = self._split()
        self._print_budget(plan, shares)
        hint = lowres_hint(device.type, self.opts.configuration, plan.patch_size)
        if hint:
            print(hint, file=sys.stderr)
        if self.opts.dry_run:
            self.record.state = "planned"
            self.save()
            print("\nDry run: nothing trained.")
            return None
        self.record.state = "training"
        self.save()
        results = self._train_folds(plan, shares, device)
        return self._export(plan, results)

    def _train_folds(self, plan, shares: dict, device) -> list[FoldRecord]:
        """Each fold's stages in turn in this process, or in fold processes (``--workers``, ``--gpus``,
        ``--ddp``); returns each fold's result, in the order of ``-f``."""
        from medseg_auto.parallel import FoldLauncher
        from medseg_auto.trainers.time_budget import TrainingInterrupted

        todo = self._todo()
        if self.slots:
            try:
                FoldLauncher(self, plan, self.slots).train(todo)
            except TrainingInterrupted as e:
                raise Interrupted(str(e)) from None
        else:
            for fold in todo:
                self._train_fold_here(plan, fold, shares[fold], device)
                shares = self._split()  # a fold that ended early leaves its time to the next ones
        return [self.record.folds[str(f)].result for f in self.opts.folds]

    def fold_job(self, plan, fold, seconds: float, device_type: str, threads: int | None = None):
        """The fold as a job (``medseg_auto.fold``): what this process or a fold process trains."""
        from medseg_auto.fold import FoldJob, StageSpec

        return FoldJob(str(self.workspace.root), self.workspace.name, fold, seconds, plan.plans,
                       [StageSpec.of(s) for s in self.stages], dict(self.opts.settings), device_type, threads,
                       str(self.pretrained.checkpoint) if self.pretrained else None, self.opts.compile)

    def announce_fold(self, fold, seconds: float) -> None:
        entry = self.record.folds.setdefault(str(fold), FoldEntry())
        entry.state, entry.planned = "training", seconds
        self.save()
        print(f"\n[train] fold {fold}: {fmt_duration(seconds)} for training and validation "
              f"(run: {fmt_duration(self.clock.elapsed())} used of {fmt_duration(self.clock.budget)})",
              file=sys.stderr)

    def fold_finished(self, record: FoldRecord) -> None:
        """Keep a finished fold's result in the run record (what the export and a resumed run read)."""
        entry = self.record.folds[str(record.fold)]
        entry.state, entry.result = "done", record
        self.clock.phases[f"fold_{record.fold}"] = round(sum(r.seconds for r in record.stages.values()), 1)
        self.save()

    def _train_fold_here(self, plan, fold, seconds: float, device) -> None:
        from medseg_auto.fold import record_path, train_stages
        from medseg_auto.train import epoch_line
        from medseg_auto.trainers.time_budget import TrainingInterrupted

        self.announce_fold(fold, seconds)
        out = record_path(self.workspace.job_file(fold))

        def on_epoch(trainer, used):
            print(epoch_line(trainer), file=sys.stderr, flush=True)
            self.save()  # the run's clock, for a resume after kill -9

        try:
            record = train_stages(self.fold_job(plan, fold, seconds, device.type), self.stop, FoldRecord.load(out),
                                  on_epoch, lambda r: r.save(out), device)
        except TrainingInterrupted as e:
            raise Interrupted(str(e)) from None
        self.fold_finished(record)

    def _export(self, plan, results: list[FoldRecord]) -> Path:
        from medseg_auto.export import export_bundle
        from medseg_auto.manifest import BundleManifest
        from medseg_auto.trainers import trainer_class as get_trainer

        trainer_class = get_trainer(self.opts.trainer)
        self.record.state = "exporting"
        card = model_card(self.record, plan, results, trainer_class.__name__)
        card["cross_validation_method"] = trainer_class.validation_method
        manifest = BundleManifest(
            medseg_auto_version=__version__, name=self.opts.name, trainer=trainer_class.__name__,
            inference_trainer=trainer_class.inference_trainer_name, predictor=trainer_class.case_predictor,
            configuration=plan.configuration, folds=tuple(str(f) for f in self.opts.folds),
            channels=self.record.channels, labels=self.record.labels, file_ending=self.record.file_ending,
            is_2d=self.record.is_2d, stages=self.record.plan.stages if len(self.stages) > 1 else None)
        results_folder = Path(results[0].final.folder).parent
        parts = {name: Path(stage.folder).parent for name, stage in results[0].stages.items() if name}
        print(f"\n[export] writing and verifying {self.bundle}", file=sys.stderr)
        export_bundle(self.bundle, results_folder, self.opts.folds, trainer_class.inference_trainer_name,
                      manifest, card, model_card_readme(card), self.opts.overwrite, parts)
        self.record.state = "exported"
        self.record.bundle = str(self.bundle)
        self.save()
        print(f"\nModel exported to {self.bundle} ({fmt_duration(self.clock.elapsed())} of "
              f"{fmt_duration(self.clock.budget)} used).")
        self._clean_up()
        return self.bundle

    def _clean_up(self) -> None:
        if self.opts.keep_work:
            print(f"--keep-work: the work folder {self.workspace.root} is kept.")
        else:
            self.workspace.remove()
        if self.opts.consume_input:
            dataset_dir = self.opts.ingest.dataset_dir.resolve()
            root = (self.opts.input_root or dataset_dir.parent).resolve()
            if dataset_dir == root or root not in dataset_dir.parents:
                print(f"--consume-input: {dataset_dir} is not a dataset folder inside {root}; left in place.")
            else:
                shutil.rmtree(dataset_dir)
                print(f"--consume-input: removed {dataset_dir} (the model was exported and verified).")

    # -- resume, budget, records --------------------------------------------------------------------------
    def _previous(self) -> RunRecord | None:
        """The work folder's record; with --restart one that cannot be read is set aside (nothing is kept)."""
        try:
            return RunRecord.load(self.workspace.run_record)
        except InputError:
            if not self.opts.restart:
                raise
            print(f"--restart: {self.workspace.run_record} cannot be read (damaged or edited by hand); starting "
                  f"afresh.", file=sys.stderr)
            return None

    def _resume_or_start(self, previous: RunRecord | None) -> RunRecord | None:
        """The unfinished run to continue (its time counts as spent), or None: start afresh."""
        cases, labels = _data_identity(self.checked, str(self.workspace.run_record))
        same_data = previous is not None and previous.cases == cases and previous.labels == labels
        resumable = previous is not None and previous.state in RESUMABLE and not self.opts.restart
        if resumable and previous.identity != self.opts.identity():
            raise InputError(
                f"{self.workspace.root} holds an unfinished run of '{self.opts.name}' started with other options "
                f"({_describe(previous.identity)}; now {_describe(self.opts.identity())}). Rerun it with "
                f"the same options to continue it, or add --restart to discard it.")
        if resumable and not same_data:
            raise InputError(f"The input of '{self.opts.name}' changed since the unfinished run in "
                             f"{self.workspace.root} started: add --restart to train from scratch on the new data.")
        if self.opts.resume and not resumable:
            raise InputError(f"--resume: there is no unfinished run of '{self.opts.name}' in {self.workspace.root}.")
        if resumable:
            self.clock.resume(previous.time)
            print(f"Resuming the unfinished run: {fmt_duration(self.clock.spent_before)} of the budget used, "
                  f"{fmt_duration(self.clock.remaining())} left.", file=sys.stderr)
            return previous
        old = previous.identity if previous else {}
        new = self.opts.identity()
        self.workspace.clear_training(keep_preprocessed=same_data and all(
            old.get(k) == new[k] for k in ("configuration", "pretrained")))  # same plans: keep preprocessing
        return None

    def _todo(self) -> list:
        folds = self.record.folds
        return [f for f in self.opts.folds if str(f) not in folds or folds[str(f)].state != "done"]

    def _split(self) -> dict:
        """Shares of the time left for the folds still to train (a resumed fold counts its checkpointed time):
        in turn, or in rounds of parallel fold processes."""
        from medseg_auto.parallel import parallel_shares

        if self.slots:
            return parallel_shares(self.time_for_folds(), {f: self.fold_spent(f) for f in self._todo()},
                                   len(self.slots))
        folds = self.record.folds
        todo = [FoldShare(f, folds[str(f)].planned if str(f) in folds else None, self.fold_spent(f))
                for f in self._todo()]
        return split_training(self.time_for_folds(), todo)

    def time_for_folds(self) -> float:
        """What the clock has left for training, the export's and the report's reserves kept."""
        return self.clock.remaining() - EXPORT_RESERVE_SECONDS - self._report_reserve()

    def _report_reserve(self) -> float:
        return report_reserve_seconds(len(self.opts.folds))

    def fold_spent(self, fold) -> float:
        """The fold's time saved with its stages' last checkpoints (what a kill -9 cannot take back)."""
        from medseg_auto.fold import stage_spent

        return sum(stage_spent(self.workspace, stage, fold) for stage in self.stages)

    def _plan_estimate(self) -> float:
        channels = len(self.checked.channel_keys) or 1
        voxels = sum(int(np.prod(self.checked.infos[c.label].shape)) for c in self.checked.cases) * channels
        return estimate_plan_seconds(voxels, len(self.checked.cases))

    def _rounds(self) -> int:
        """Folds one after another, or rounds of folds at once (``--workers``, ``--gpus``; a GPU count not
        yet known counts as one)."""
        at_once = max(self.opts.workers, len(self.opts.gpus or ()), 1) if self.opts.ddp == 1 else 1
        return int(np.ceil(len(self.opts.folds) / at_once))

    def _warn_up_front(self) -> None:
        rest = self.clock.remaining() - self._plan_estimate() - EXPORT_RESERVE_SECONDS - self._report_reserve()
        rounds = self._rounds()
        per_fold = rest / rounds
        if per_fold < MIN_FOLD_SECONDS and not self.opts.dry_run:
            need = (self.clock.budget - rest + MIN_FOLD_SECONDS * rounds) / 60
            raise InputError(f"-t {self.opts.minutes:g}: after checking and preprocessing, about "
                             f"{fmt_duration(max(rest, 0))} would be left for {len(self.opts.folds)} fold(s), "
                             f"too little to train anything. Use at least -t {np.ceil(need):.0f} or fewer folds "
                             f"(-f 0).")
        advice = budget_advice(self.clock.budget, self.opts.folds, per_fold, rounds) if self.opts.advise_budget else None
        if advice:
            print(f"\nWarning: {advice}", file=sys.stderr)

    def _print_budget(self, plan, shares: dict) -> None:
        from medseg_auto.plan import xyz

        phases = ", ".join(f"{k} {fmt_duration(v)}" for k, v in self.clock.phases.items())
        print(f"\nBudget {fmt_duration(self.clock.budget)}: used {fmt_duration(self.clock.elapsed())} ({phases}); "
              f"configuration {plan.configuration}, patch {xyz(plan.patch_size)}; per fold: "
              + ", ".join(f"{f}: {fmt_duration(s)}" for f, s in shares.items())
              + f"; export {fmt_duration(EXPORT_RESERVE_SECONDS)}, report {fmt_duration(self._report_reserve())}.")
        if shares and min(shares.values()) < MIN_FOLD_SECONDS and not self.opts.dry_run:
            raise MedsegError(f"Only {fmt_duration(min(shares.values()))} are left per fold after preprocessing: "
                              f"too little to train. Rerun with a larger -t (the preprocessing is kept).")

    def _interrupted(self, error: BaseException) -> None:
        self.record.state = "interrupted"
        self.save()
        raise Interrupted(f"Interrupted ({error or 'signal'}). The last checkpoint is saved; "
                          f"{fmt_duration(self.clock.remaining())} of the budget is left. Resume with:\n"
                          f"  {self.opts.command}") from None

    def save(self) -> None:
        """The record, with the run's clock as it stands (``run.json``)."""
        self.record.save(self.workspace.run_record)


def _data_identity(checked: CheckedDataset, source: str) -> tuple[dict[str, CaseRecord], LabelsRecord]:
    """The cases' files and the label mapping: what must not change for a run to resume."""
    cases = {c.name: CaseRecord(tuple(str(f) for f in c.channels.values()), str(c.label)) for c in checked.cases}
    return cases, LabelsRecord.from_dict(checked.labels.record(), source)


def _ingest_fields(checked: CheckedDataset, conversion, source: str) -> dict:
    """The run record's ingest part: what was found and how it was converted."""
    cases, labels = _data_identity(checked, source)
    return {"cases": cases, "labels": labels, "input": str(checked.discovery.root),
            "layout": checked.discovery.layout, "skipped_cases": tuple(checked.skipped),
            "channels": ChannelsRecord(tuple(checked.channel_keys), tuple(conversion.channel_names),
                                       tuple(sorted(conversion.colour))),
            "file_ending": conversion.file_ending, "is_2d": bool(checked.is_2d),
            "raw_dataset": str(conversion.folder)}


def _describe(identity: dict | None) -> str:
    if not identity:
        return "unknown options"
    text = f"folds {','.join(identity['folds'])}, -c {identity['configuration']}, trainer {identity['trainer']}"
    return text + (f", --series {identity['series']}" if identity.get("series") else "")
