"""nnUNetTrainerTimeBudget: nnU-Net's default trainer, trained for a wall-clock budget instead of 1000 epochs.

What changes, and nothing else (network, loss, augmentation and inference are nnU-Net's):
- the learning rate follows the elapsed fraction of the fold's time (``schedule.py``), reaching zero when
  the time is up;
- epochs are short and sized from measured speed; an epoch that cannot end in time is shortened or not
  started, so training stops on time;
- the final sliding-window validation is reserved inside the budget (without mirroring when that would
  not fit, skipped when even that would not fit, each said in the log);
- ``checkpoint_latest`` is written every few minutes, atomically, with the fold's clock beside it, and an
  interruption saves one before leaving;
- on a CPU the batch is capped in voxels (nnU-Net sizes it for a GPU's memory, not a CPU's speed);
- on a CPU with native bfloat16 the training forward runs in bfloat16 autocast where a timed step shows it
  faster (``precision.py``; ``precision: fp32`` or ``bf16`` decides instead);
- ``augmentation: light`` leaves out nnU-Net's noise, blur and low-resolution transforms; ``strong`` is
  nnU-Net's ``nnUNetTrainerDA5`` augmentation (``augmentation.py``);
- under DDP (``torchrun``, an initialised process group) it trains on CPUs too (gloo), and every time
  decision is rank 0's (``distributed.py``).

The decisions themselves are ``epoch_plan.EpochPlanner``'s; this class times nnU-Net's loops for it and
applies its answers.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from typing import Callable, Sequence

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from medseg_auto.device import without_nnunet_device_remarks
from medseg_auto.run_record import CLOCK_FILE, FoldClock  # noqa: F401  (CLOCK_FILE importable from here too)
from medseg_auto.trainers import distributed
from medseg_auto.trainers.augmentation import pipeline_source, select_augmentation
from medseg_auto.trainers.epoch_plan import VALIDATION_MODES, EpochPlanner, FoldBudget
from medseg_auto.trainers.epoch_plan import _Speed, epoch_iterations  # noqa: F401  (importable from here too)
from medseg_auto.trainers.precision import choose_precision, native_bf16, train_in_bf16
from medseg_auto.trainers.schedule import ElapsedFractionLR

TRAINING_PRECISIONS = ("fp32", "bf16", "fp16")  # fp16: nnU-Net's CUDA autocast


class TrainingInterrupted(Exception):
    """Ctrl+C or SIGTERM during training: a checkpoint was saved, the run can resume."""


class _TimeUp(Exception):
    """Raised at the start of an epoch that cannot end inside the fold's time."""


def padded_shape(shape: Sequence[int], patch: Sequence[int]) -> list[int]:
    """A preprocessed case's spatial ``shape`` as nnU-Net's predictor pads it: each axis the patch covers
    grows to at least the patch; a 2D patch leaves a volume's first (slice) axis as it is."""
    lead = len(shape) - len(patch)
    return list(shape[:lead]) + [max(s, p) for s, p in zip(shape[lead:], patch)]


def sliding_windows(shape: Sequence[int], patch: Sequence[int], step: float = 0.5) -> int:
    """Windows nnU-Net's sliding-window prediction runs over a case of spatial ``shape``: a 3D patch tiles the
    volume; a 2D patch tiles every slice of it (``(z, x, y)`` for a volume trained in 2D, ``(1, x, y)`` for a
    2D image)."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    padded = padded_shape(shape, patch)
    lead = len(padded) - len(patch)
    steps = compute_steps_for_sliding_window(padded[lead:], patch, step)
    return int(np.prod(padded[:lead], dtype=np.int64)) * int(np.prod([len(s) for s in steps]))


class nnUNetTrainerTimeBudget(nnUNetTrainer):
    inference_trainer_name = "nnUNetTrainer"  # same network and inference: bundles load in plain nnU-Net
    case_predictor = "sliding_window"  # how exe_predict.py runs its bundles (medseg_auto.predict.engine)
    # what the model card's cross-validation Dice measures
    validation_method = "nnU-Net's sliding window over each held-out case, as exe_predict.py predicts"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        with without_nnunet_device_remarks(), warnings.catch_warnings():  # the run names the device itself
            # under DDP nnU-Net makes a CUDA grad scaler whatever the device (dropped below on a CPU)
            warnings.filterwarnings("ignore", message=".*GradScaler is enabled, but CUDA is not available")
            super().__init__(plans, configuration, fold, dataset_json, device)
        if distributed.is_distributed():  # nnU-Net moved every rank to cuda:RANK: CPUs keep the device asked for
            self.device = distributed.rank_device(device)
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            else:
                self.grad_scaler = None  # nnU-Net's is for CUDA's float16
        self.num_epochs = 10 ** 9  # the clock ends training, not the epoch count
        self.num_iterations_per_epoch = 5  # a short first epoch measures the speed; later ones are sized
        self.num_val_iterations_per_epoch = 1
        self._budget: FoldBudget | None = None  # set by the runner (medseg_auto.train.train_fold)
        self._planner: EpochPlanner | None = None  # made from the budget at its first use
        self.stop_requested = threading.Event()  # set by the runner's signal handler
        self.on_epoch_done: Callable[["nnUNetTrainerTimeBudget"], None] | None = None
        self._t0 = time.monotonic()
        self.iterations_done = 0
        self._marks: dict[str, float] = {}
        self._first_step_end: float | None = None  # when the current loop's first step ended
        self._last_save = time.monotonic()
        self._shared_fraction = 0.0  # under DDP: rank 0's training fraction, for the learning rate
        self._val_windows: int | None = None
        self._input_channels: int | None = None  # as the network receives them (with any added channels)
        self.precision: str | None = None  # of the training forward, chosen at the first step
        self.compiled = False  # whether nnU-Net compiled the network (torch.compile; CUDA only)
        self.global_batch_size: int | None = None  # the batch of all ranks together

    @classmethod
    def check_options(cls, channels: list[str], options: dict) -> None:
        """Refuse the run's trainer options for this dataset's channels before anything is planned."""

    @classmethod
    def adapt_plans(cls, plans: dict, configuration: str, channels: list[str], options: dict) -> str:
        """The configuration this trainer trains, given nnU-Net's plans, the dataset's channel names and the
        run's trainer options; a variant may add its own configuration to ``plans`` (in place)."""
        return configuration

    @classmethod
    def earlier_stages(cls, workspace, plan, processes: int) -> list:
        """Models to train before this one on each fold (``Stage``s; the cascade's ROI model), planned and
        preprocessed here; none for a single-stage trainer."""
        return []

    @property
    def budget(self) -> FoldBudget:
        budget = getattr(self, "_budget", None)
        if budget is None:
            raise RuntimeError(f"{type(self).__name__} trains for a time budget: set trainer.budget = "
                               "FoldBudget(seconds=...) before initialize() (medseg_auto.train.train_fold does).")
        return budget

    @budget.setter
    def budget(self, value: FoldBudget) -> None:
        self._budget = value
        if getattr(self, "_planner", None) is not None:
            self._planner.budget = value

    @property
    def planner(self) -> EpochPlanner:
        """The fold's time decisions (``epoch_plan.EpochPlanner``), made from the budget at first use."""
        planner = getattr(self, "_planner", None)
        if planner is None:
            planner = self._planner = EpochPlanner(self.budget, self.estimate_validation_seconds,
                                                   held_out=self.fold != "all")
        return planner

    @property
    def validation_mode(self) -> str:
        """The final validation's mode: mirrored, fast or skipped (decided from measured speed)."""
        return self.planner.validation_mode

    @validation_mode.setter
    def validation_mode(self, mode: str) -> None:
        self.planner.validation_mode = mode

    # -- the clock ------------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.budget.spent + time.monotonic() - self._t0

    def training_seconds(self) -> float:
        """The part of the fold's time for training: the whole minus the final validation's reserve."""
        return self.planner.training_seconds()

    def training_fraction(self) -> float:
        """The elapsed share of the training time, which the learning rate follows; under DDP rank 0's, as
        last shared (every step shares it)."""
        if distributed.is_distributed():
            return self._shared_fraction
        return self.planner.training_fraction(self.elapsed())

    def validation_reserve(self) -> float:
        """Seconds kept for the final validation (``EpochPlanner.validation_reserve``)."""
        return self.planner.validation_reserve(self.current_epoch)

    def _share_step(self) -> bool:
        """Before a step: rank 0's training fraction for the learning rate, and whether any rank was asked
        to stop (one all_reduce under DDP, where each rank's own clock would give each its own rate)."""
        fraction = self.planner.training_fraction(self.elapsed()) if distributed.rank() == 0 else 0.0
        (self._shared_fraction,), (stop,) = distributed.rank0_and_any([fraction], [self.stop_requested.is_set()])
        if stop:
            self.stop_requested.set()  # on every rank, as the signal handler does on its own
        return stop

    def configure_optimizers(self):
        if self.budget.learning_rate:
            self.initial_lr = self.budget.learning_rate
        optimizer, _ = super().configure_optimizers()
        return optimizer, ElapsedFractionLR(optimizer, self.initial_lr, self.training_fraction,
                                            self.budget.lr_shape, self.budget.decay_fraction)

    # -- DDP: on CPUs too, wrapped here -------------------------------------------------------------------
    def initialize(self):
        """nnU-Net's, with the DDP wrap done here: nnU-Net's passes ``device_ids=[global rank]``, which DDP
        refuses for a CPU module and which names a missing GPU on a second machine."""
        if not self.is_ddp:
            super().initialize()
        else:
            self.is_ddp = False  # nnU-Net's initialize then builds, compiles and leaves the network unwrapped
            try:
                super().initialize()
            finally:
                self.is_ddp = True
            self.network = distributed.wrap(self.network, self.device)
            self.loss = self._build_loss()  # again, with DDP's settings (batch Dice gathered over the ranks)
        from torch._dynamo import OptimizedModule

        self.compiled = isinstance(distributed.unwrap(self.network), OptimizedModule)

    def _set_batch_size_and_oversample(self):
        """The user's batch, or nnU-Net's capped in voxels on a CPU; under DDP that is the batch of all ranks,
        split over them by nnU-Net, each rank's oversampling with it. Every rank gets the same share (at least
        one): nnU-Net's batch Dice gathers each rank's per-sample sums, which fails on unequal batches."""
        batch = self._global_batch_size()
        ranks = distributed.world_size()
        if not distributed.is_distributed():
            self.global_batch_size = self.batch_size = batch
            return
        self.global_batch_size = max(ranks, batch - batch % ranks)
        if self.global_batch_size != batch:
            self.print_to_log_file(f"batch size {batch} -> {self.global_batch_size}: an equal share for each of "
                                   f"{ranks} ranks")
        config = self.configuration_manager.configuration
        planned, ddp = config["batch_size"], self.is_ddp
        config["batch_size"], self.is_ddp = self.global_batch_size, True
        try:
            super()._set_batch_size_and_oversample()
        finally:
            config["batch_size"], self.is_ddp = planned, ddp

    def _global_batch_size(self) -> int:
        planned = self.configuration_manager.batch_size
        if self.budget.batch_size:
            self.print_to_log_file(f"batch size {planned} -> {self.budget.batch_size} (--batch-size)")
            return self.budget.batch_size
        if self.device.type == "cpu":
            cap = max(2, self.budget.cpu_batch_voxels // int(np.prod(self.configuration_manager.patch_size)))
            if planned > cap:
                self.print_to_log_file(f"CPU: batch size {planned} -> {cap} (at most "
                                       f"{self.budget.cpu_batch_voxels} voxels per batch)")
                return cap
        return planned

    def _set_precision(self, batch_shape: tuple[int, ...]) -> None:
        """Choose the training forward's precision, at the first step (the probe needs the batch's shape):
        ``fp16`` on CUDA (nnU-Net's autocast), else the run's ``fp32`` or ``bf16``; ``auto`` keeps an
        interrupted fold's choice, or times both (``precision.choose_precision``). Under DDP rank 0 chooses."""
        if distributed.rank() == 0:
            self.precision = self._choose_precision(batch_shape)
        code = distributed.agree(TRAINING_PRECISIONS.index(self.precision) if distributed.rank() == 0 else 0)
        self.precision = TRAINING_PRECISIONS[int(code)]
        if self.precision == "bf16":
            train_in_bf16(distributed.unwrap(self.network))

    def _choose_precision(self, batch_shape: tuple[int, ...]) -> str:
        asked = self.budget.precision
        if self.device.type != "cpu":
            if asked == "bf16":
                self.print_to_log_file(f"--precision bf16 is for CPU training; on {self.device.type} nnU-Net's "
                                       "own mixed precision is used.")
            return "fp16" if self.device.type == "cuda" else "fp32"
        if asked != "auto":
            if asked == "bf16" and not native_bf16():
                self.print_to_log_file("--precision bf16: this CPU has no native bfloat16, so it may be slower "
                                       "than float32.")
            return asked
        clock = FoldClock.read(self.output_folder)
        if clock is not None and clock.precision in ("fp32", "bf16"):
            return clock.precision  # a resumed fold keeps its choice
        precision, why = choose_precision(distributed.unwrap(self.network), batch_shape)
        self.print_to_log_file(f"--precision auto: {precision} ({why}).")
        return precision

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        """The rotation, mirroring and initial patch size of the augmentation's nnU-Net trainer (``strong``
        scales more, so it loads larger patches before cropping)."""
        source = pipeline_source(self.budget.augmentation)
        return source.configure_rotation_dummyDA_mirroring_and_inital_patch_size(self)

    def get_training_transforms(self, *args, **kwargs):
        """The augmentation's nnU-Net pipeline, or the run's share of it (an instance method here, so it can
        read the budget; nnU-Net calls it through ``self``)."""
        pipeline = pipeline_source(self.budget.augmentation).get_training_transforms(*args, **kwargs)
        return select_augmentation(pipeline, self.budget.augmentation)

    # -- epochs sized to the time left ----------------------------------------------------------------------
    def on_epoch_start(self):
        """The epoch's length from the planner (under DDP rank 0's, with its validation decision and its
        fraction for the learning rate); a stop asked of any rank, or no time left, ends training here."""
        self._marks["epoch"] = time.monotonic()
        planner, stop = self.planner, self.stop_requested.is_set()
        decision = [0.0] * 6
        if distributed.rank() == 0 and not stop:
            n = planner.next_epoch(self.elapsed(), self.current_epoch)
            decision = [n, planner.validation_iterations(n), planner.reserve,
                        VALIDATION_MODES.index(planner.validation_mode), planner.mode_fixed,
                        planner.training_fraction(self.elapsed())]
        decision, (stop,) = distributed.rank0_and_any(decision, [stop])
        if stop:
            self.stop_requested.set()
            raise TrainingInterrupted
        n, n_val, reserve, mode, fixed, self._shared_fraction = decision
        planner.adopt(reserve, VALIDATION_MODES[int(mode)], bool(fixed))
        if n < 1:
            raise _TimeUp
        self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = int(n), int(n_val)
        super().on_epoch_start()

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._marks["train"], self._first_step_end = time.monotonic(), None

    def train_step(self, batch: dict) -> dict:
        if self._share_step():
            raise TrainingInterrupted
        self.lr_scheduler.step()
        if self.precision is None:
            self._set_precision(tuple(batch["data"].shape))
        self._input_channels = batch["data"].shape[1]
        out = super().train_step(batch)  # ends on the loss copied to the CPU: the step is done, even on CUDA
        self._mark_first_step()
        self.iterations_done += 1
        return out

    def _mark_first_step(self) -> None:
        if self._first_step_end is None:
            self._first_step_end = time.monotonic()

    def on_train_epoch_end(self, train_outputs):
        self._record_loop("train", len(train_outputs))
        super().on_train_epoch_end(train_outputs)

    def _record_loop(self, kind: str, iterations: int) -> None:
        """The loop's timing for the planner: the whole, and its first step (the session's first is warm-up)."""
        now, start = time.monotonic(), self._marks[kind]
        first = (self._first_step_end or now) - start
        self.planner.record_loop(kind, now - start, iterations, first)

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._marks["val"], self._first_step_end = time.monotonic(), None

    def validation_step(self, batch: dict) -> dict:
        out = super().validation_step(batch)
        self._mark_first_step()
        return out

    def on_validation_epoch_end(self, val_outputs):
        self._record_loop("val", len(val_outputs))
        super().on_validation_epoch_end(val_outputs)

    def on_epoch_end(self):
        # nnU-Net saves checkpoint_latest when save_every divides the epoch; only rank 0 saves
        self.save_every = 1 if self.planner.checkpoint_due(time.monotonic() - self._last_save) else self.num_epochs
        super().on_epoch_end()
        self.planner.end_epoch(time.monotonic() - self._marks["epoch"])
        if self.on_epoch_done is not None:
            self.on_epoch_done(self)

    def run_training(self):
        try:
            super().run_training()
        except _TimeUp:
            self.print_to_log_file(f"Time is up for training after {self.current_epoch} epochs "
                                   f"({self.elapsed():.0f} s of {self.budget.seconds:.0f} s).")
            self.on_train_end()
        except BaseException as e:
            if not (self.stop_requested.is_set() or isinstance(e, KeyboardInterrupt)):
                raise
            self._save_interrupted()
            raise TrainingInterrupted(f"fold {self.fold} interrupted in epoch {self.current_epoch}") from None

    def _save_interrupted(self) -> None:
        """Keep the weights of the unfinished epoch; the logs stay those of the finished epochs."""
        if self.was_initialized:
            for values in self.logger.local_logger.my_fantastic_logging.values():
                del values[self.current_epoch:]
            self.current_epoch -= 1  # save_checkpoint stores current_epoch + 1: the finished epochs
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_latest.pth"))
            self.current_epoch += 1
        for loader in (self.dataloader_train, self.dataloader_val):
            if hasattr(loader, "_finish"):
                loader._finish()

    # -- checkpoints that survive a kill ------------------------------------------------------------------
    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written atomically with the fold's clock beside it (rank 0 only, as nnU-Net)."""
        tmp = filename + ".tmp"
        super().save_checkpoint(tmp)
        if distributed.rank() == 0 and os.path.isfile(tmp):  # another rank must not move rank 0's half-written file
            os.replace(tmp, filename)
        if os.path.basename(filename) != "checkpoint_best.pth":
            self._last_save = time.monotonic()
            if distributed.rank() == 0:
                self._write_clock()

    def _write_clock(self) -> None:
        """The fold's clock beside the checkpoint just saved (``run_record.FoldClock``)."""
        planner = self.planner
        FoldClock(spent=self.elapsed(), epochs=self.current_epoch + 1, iterations=self.iterations_done,
                  batch_size=self.batch_size, speed=planner.speed, budget=self.budget,
                  validation=planner.validation_mode, precision=self.precision, compiled=self.compiled,
                  warmup_seconds=round(planner.warmup_seconds, 2), ranks=distributed.world_size(),
                  global_batch_size=self.global_batch_size or self.batch_size).write(self.output_folder)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        clock = FoldClock.read(self.output_folder)
        if clock is not None:
            self.planner.restore(clock)
            self.iterations_done = clock.iterations

    # -- final validation inside the budget ---------------------------------------------------------------
    def estimate_validation_seconds(self, mirrored: bool) -> float:
        """Sliding windows of all validation cases x measured seconds per window, plus each case's share of
        the rest (about 1.5 s, and 1 s per million voxels: nnU-Net's export workers share the cores) and the
        start and end of nnU-Net's validation (15 s). Hippocampus on 2 cores, 32 one-window cases mirrored:
        83 s and 101 s in two runs; this gives 96 s, and the reserve is 1.25x it."""
        if self._val_windows is None:
            _, val_keys = self.do_split()
            dataset = self.dataset_class(self.preprocessed_dataset_folder, val_keys)
            patch = self.configuration_manager.patch_size
            windows, voxels = 0, 0
            for key in val_keys:
                shape = dataset.load_case(key)[0].shape[1:]
                windows += sliding_windows(shape, patch)
                voxels += int(np.prod(padded_shape(shape, patch)))
            self._val_windows, self._val_cases, self._val_voxels = windows, len(val_keys), voxels
        axes = self.inference_allowed_mirroring_axes or ()
        factor = 2 ** len(axes) if mirrored else 1
        export = 1.5 * self._val_cases + 1e-6 * self._val_voxels
        return 15.0 + self._val_windows * self.window_seconds() * factor + export

    def window_seconds(self) -> float:
        """Seconds of one sliding window (batch 1, inference mode), measured once on a blank patch. The
        validation steps are no guide: on a CPU their batch of 2 costs about what a single window does.
        Under DDP the network inside the wrapper is timed: the probe runs on rank 0 alone."""
        speed = self.planner.speed
        if speed.window is None:
            if self._input_channels is None:  # no training step yet
                return (speed.val_iter or 1.0) / self.batch_size
            x = torch.zeros((1, self._input_channels, *self.configuration_manager.patch_size), device=self.device)
            autocast = torch.autocast("cuda") if self.device.type == "cuda" else contextlib.nullcontext()
            network = distributed.unwrap(self.network)
            training = network.training
            network.eval()
            try:
                with torch.no_grad(), autocast:
                    for _ in range(2):  # the first call pays for warm-up
                        start = time.monotonic()
                        network(x)
                        if self.device.type == "cuda":
                            torch.cuda.synchronize()
                        speed.window = time.monotonic() - start
            finally:
                network.train(training)
        return speed.window

    def perform_actual_validation(self, save_probabilities: bool = False):
        planner = self.planner
        mode = planner.validation_mode
        if distributed.rank() == 0 and not planner.mode_fixed and planner.speed.val_iter is not None:
            mode = planner.choose_validation()
        mode = planner.validation_mode = VALIDATION_MODES[int(distributed.agree(VALIDATION_MODES.index(mode)))]
        if mode == "skipped":
            why = "fold 'all' has no held-out cases" if self.fold == "all" else \
                "it would not fit in the fold's budget"
            self.print_to_log_file(f"Final validation skipped: {why}.", also_print_to_console=True)
            return
        mirrored = mode == "mirrored"
        logs = distributed.rank() == 0  # the estimates are for the log, which rank 0 writes
        estimate, start = self.estimate_validation_seconds(mirrored) if logs else 0.0, time.monotonic()
        axes = self.inference_allowed_mirroring_axes
        if not mirrored:
            if logs:
                self.print_to_log_file("Final validation without mirroring: with mirroring it would take about "
                                       f"{self.estimate_validation_seconds(True):.0f} s, more than "
                                       f"{self.budget.mirror_share:.0%} of the fold's budget.")
            self.inference_allowed_mirroring_axes = None
        try:
            with without_nnunet_device_remarks():
                self.validate_held_out_cases(save_probabilities)
        finally:
            self.inference_allowed_mirroring_axes = axes
        self.print_to_log_file(f"Final validation ({mode}) took {time.monotonic() - start:.0f} s "
                               f"(estimated {estimate:.0f} s).")

    def validate_held_out_cases(self, save_probabilities: bool = False) -> None:
        """The final validation itself, in the mode chosen: nnU-Net's sliding window over each held-out case."""
        super().perform_actual_validation(save_probabilities)

    def print_to_log_file(self, *args, also_print_to_console=True, add_timestamp=True):
        """Everything goes to nnU-Net's log file; the console gets the runner's one line per epoch."""
        super().print_to_log_file(*args, also_print_to_console=False, add_timestamp=add_timestamp)
