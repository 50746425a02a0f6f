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
  nnU-Net's ``nnUNetTrainerDA5`` augmentation (``augmentation.py``).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from medseg_auto.device import without_nnunet_device_remarks
from medseg_auto.trainers.augmentation import pipeline_source, select_augmentation
from medseg_auto.trainers.precision import choose_precision, native_bf16, train_in_bf16
from medseg_auto.trainers.schedule import ElapsedFractionLR

CLOCK_FILE = "medseg_clock.json"


class TrainingInterrupted(Exception):
    """Ctrl+C or SIGTERM during training: a checkpoint was saved, the run can resume."""


class _TimeUp(Exception):
    """Raised at the start of an epoch that cannot end inside the fold's time."""


@dataclass
class FoldBudget:
    """The fold's share of the run's budget and how to spend it (set by the runner before training).
    ``seconds`` has no default: a trainer without a time limit would train for ever at a constant rate."""

    seconds: float                     # training + final validation of this fold
    spent: float = 0.0                 # used by earlier sessions of this fold (resume)
    lr_shape: str = "constant_decay"
    decay_fraction: float = 0.3
    checkpoint_every: float = 120.0    # seconds between checkpoint_latest writes
    max_epoch_seconds: float = 120.0
    cpu_batch_voxels: int = 180_000    # about two 3D hippocampus patches: ~1.6 s per iteration on 2 cores
    batch_size: int | None = None      # the user's batch: replaces nnU-Net's plan and the CPU cap
    learning_rate: float | None = None  # the user's initial rate: replaces nnU-Net's 0.01
    mirror_share: float = 0.15         # validate with mirroring if it costs at most this share of the fold
    validation_share: float = 0.35     # validate at all if it costs at most this share
    augmentation: str = "nnunet"       # or "light", "strong" (augmentation.py)
    precision: str = "auto"            # CPU training forward: "fp32", "bf16" autocast, or timed (precision.py)


@dataclass
class _Speed:
    """Measured seconds per training iteration, per validation iteration, per epoch overhead and per
    sliding window of the final validation."""

    train_iter: float | None = None
    val_iter: float | None = None
    overhead: float = 2.0
    window: float | None = None

    def update(self, name: str, value: float) -> None:
        old = getattr(self, name)
        setattr(self, name, value if old is None else 0.5 * old + 0.5 * value)


def epoch_iterations(left: float, training_seconds: float, speed: _Speed, max_epoch_seconds: float) -> int:
    """Training iterations for the next epoch, from measured speed: about a twentieth of the training time
    (10 s to ``max_epoch_seconds``), so the log and the checkpoints come often, but enough that the epoch's
    validation step and its end (checkpoint, plot) stay under a tenth of it when iterations are slow (large
    patches on a CPU); never more than fit in the ``left`` seconds (0: time is up) nor nnU-Net's 250."""
    per_iter = speed.train_iter + (speed.val_iter or 0.0) / 10
    target = min(max_epoch_seconds, max(10.0, training_seconds / 20))
    least = math.ceil(10 * ((speed.val_iter or 0.0) + speed.overhead) / speed.train_iter)
    fits = int((left - speed.overhead) / per_iter)
    return max(0, min(max(int(target / per_iter), least), fits, 250))


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
        with without_nnunet_device_remarks():  # the run names the device itself
            super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 10 ** 9  # the clock ends training, not the epoch count
        self.num_iterations_per_epoch = 5  # a short first epoch measures the speed; later ones are sized
        self.num_val_iterations_per_epoch = 1
        self._budget: FoldBudget | None = None  # set by the runner (medseg_auto.train.train_fold)
        self.stop_requested = threading.Event()  # set by the runner's signal handler
        self.on_epoch_done: Callable[["nnUNetTrainerTimeBudget"], None] | None = None
        self.validation_mode = "mirrored"  # decided from measured speed: mirrored, fast, skipped
        self._mode_fixed = False  # decided once, after warm-up, so the reserve (and the schedule) stay stable
        self._t0 = time.monotonic()
        self._speed = _Speed()
        self.iterations_done = 0
        self._marks: dict[str, float] = {}
        self._last_save = time.monotonic()
        self._val_windows: int | None = None
        self._reserve: float | None = None  # seconds kept for the final validation, updated every epoch
        self._input_channels: int | None = None  # as the network receives them (with any added channels)
        self.precision: str | None = None  # of the training forward, chosen at the first step

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

    # -- the clock ------------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.budget.spent + time.monotonic() - self._t0

    def training_seconds(self) -> float:
        """The part of the fold's time for training: the whole minus the final validation's reserve."""
        if self._reserve is None:
            self._reserve = self.validation_reserve()
        return self.budget.seconds - self._reserve

    def training_fraction(self) -> float:
        return self.elapsed() / max(self.training_seconds(), 1e-6)

    def configure_optimizers(self):
        if self.budget.learning_rate:
            self.initial_lr = self.budget.learning_rate
        optimizer, _ = super().configure_optimizers()
        return optimizer, ElapsedFractionLR(optimizer, self.initial_lr, self.training_fraction,
                                            self.budget.lr_shape, self.budget.decay_fraction)

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        if self.budget.batch_size and not self.is_ddp:
            self.print_to_log_file(f"batch size {self.batch_size} -> {self.budget.batch_size} (--batch-size)")
            self.batch_size = self.budget.batch_size
        elif self.device.type == "cpu" and not self.is_ddp:
            cap = max(2, self.budget.cpu_batch_voxels // int(np.prod(self.configuration_manager.patch_size)))
            if self.batch_size > cap:
                self.print_to_log_file(f"CPU: batch size {self.batch_size} -> {cap} (at most "
                                       f"{self.budget.cpu_batch_voxels} voxels per batch)")
                self.batch_size = cap

    def _set_precision(self, batch_shape: tuple[int, ...]) -> None:
        """Choose the training forward's precision, at the first step (the probe needs the batch's shape):
        ``fp16`` on CUDA (nnU-Net's autocast), else the run's ``fp32`` or ``bf16``; ``auto`` keeps an
        interrupted fold's choice, or times both (``precision.choose_precision``)."""
        asked = self.budget.precision
        if self.device.type != "cpu":
            if asked == "bf16":
                self.print_to_log_file(f"--precision bf16 is for CPU training; on {self.device.type} nnU-Net's "
                                       "own mixed precision is used.")
            self.precision = "fp16" if self.device.type == "cuda" else "fp32"
        elif asked != "auto":
            self.precision = asked
            if asked == "bf16" and not native_bf16():
                self.print_to_log_file("--precision bf16: this CPU has no native bfloat16, so it may be slower "
                                       "than float32.")
        elif (clock := read_fold_clock(self.output_folder) or {}).get("precision") in ("fp32", "bf16"):
            self.precision = clock["precision"]  # a resumed fold keeps its choice
        else:
            self.precision, why = choose_precision(self.network, batch_shape)
            self.print_to_log_file(f"--precision auto: {self.precision} ({why}).")
        if self.precision == "bf16":
            train_in_bf16(self.network)

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
        if self.stop_requested.is_set():
            raise TrainingInterrupted
        self._marks["epoch"] = time.monotonic()
        self._reserve = self.validation_reserve()
        left = self.training_seconds() - self.elapsed()
        s = self._speed
        if s.train_iter is None:
            if left <= 0:
                raise _TimeUp
        else:
            n = epoch_iterations(left, self.training_seconds(), s, self.budget.max_epoch_seconds)
            if n < 1:
                raise _TimeUp
            self.num_iterations_per_epoch = n
            self.num_val_iterations_per_epoch = max(1, round(n / 10))  # only the pseudo-Dice shown per epoch
        super().on_epoch_start()

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._marks["train"] = time.monotonic()

    def train_step(self, batch: dict) -> dict:
        if self.stop_requested.is_set():
            raise TrainingInterrupted
        self.lr_scheduler.step()
        if self.precision is None:
            self._set_precision(tuple(batch["data"].shape))
        self._input_channels = batch["data"].shape[1]
        out = super().train_step(batch)
        self.iterations_done += 1
        return out

    def on_train_epoch_end(self, train_outputs):
        self._speed.update("train_iter", (time.monotonic() - self._marks["train"]) / len(train_outputs))
        super().on_train_epoch_end(train_outputs)

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._marks["val"] = time.monotonic()

    def on_validation_epoch_end(self, val_outputs):
        self._speed.update("val_iter", (time.monotonic() - self._marks["val"]) / len(val_outputs))
        super().on_validation_epoch_end(val_outputs)

    def on_epoch_end(self):
        every = min(self.budget.checkpoint_every, max(15.0, self.budget.seconds / 10))  # short folds: often
        due = time.monotonic() - self._last_save >= every
        self.save_every = 1 if due else self.num_epochs  # nnU-Net saves checkpoint_latest when this divides
        super().on_epoch_end()
        loops = (self._speed.train_iter * self.num_iterations_per_epoch
                 + self._speed.val_iter * self.num_val_iterations_per_epoch)
        self._speed.overhead = max(0.0, time.monotonic() - self._marks["epoch"] - loops)
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
        tmp = filename + ".tmp"
        super().save_checkpoint(tmp)
        if os.path.isfile(tmp):
            os.replace(tmp, filename)
        if os.path.basename(filename) != "checkpoint_best.pth":
            self._last_save = time.monotonic()
            self._write_clock()

    def _write_clock(self) -> None:
        state = {"spent": self.elapsed(), "epochs": self.current_epoch + 1, "iterations": self.iterations_done,
                 "batch_size": self.batch_size, "speed": asdict(self._speed),
                 "budget": asdict(self.budget), "validation": self.validation_mode, "precision": self.precision}
        path = os.path.join(self.output_folder, CLOCK_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(state, f, indent=1, default=float)
        os.replace(path + ".tmp", path)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        clock = read_fold_clock(self.output_folder)
        if clock:
            self._speed = _Speed(**clock["speed"])
            self.iterations_done = clock["iterations"]
            self.validation_mode, self._mode_fixed = clock["validation"], clock["epochs"] > 3

    # -- final validation inside the budget ---------------------------------------------------------------
    def validation_reserve(self) -> float:
        """Seconds kept for the final validation: estimated from measured speed, a share before that."""
        if self._speed.val_iter is None:
            return 0.15 * self.budget.seconds
        if not self._mode_fixed:
            self.validation_mode = self._choose_validation()
            self._mode_fixed = self.current_epoch >= 3  # the first epochs' speed includes warm-up
        if self.validation_mode == "skipped":
            return 0.0
        return 1.25 * self.estimate_validation_seconds(self.validation_mode == "mirrored")

    def _choose_validation(self) -> str:
        if self.fold == "all":
            return "skipped"  # no held-out cases: fold 'all' trains on every case
        total = self.budget.seconds
        if self.estimate_validation_seconds(True) <= self.budget.mirror_share * total:
            return "mirrored"
        if self.estimate_validation_seconds(False) <= self.budget.validation_share * total:
            return "fast"
        return "skipped"

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
        validation steps are no guide: on a CPU their batch of 2 costs about what a single window does."""
        if self._speed.window is None:
            if self._input_channels is None:  # no training step yet
                return (self._speed.val_iter or 1.0) / self.batch_size
            x = torch.zeros((1, self._input_channels, *self.configuration_manager.patch_size), device=self.device)
            autocast = torch.autocast("cuda") if self.device.type == "cuda" else contextlib.nullcontext()
            training = self.network.training
            self.network.eval()
            try:
                with torch.no_grad(), autocast:
                    for _ in range(2):  # the first call pays for warm-up
                        start = time.monotonic()
                        self.network(x)
                        if self.device.type == "cuda":
                            torch.cuda.synchronize()
                        self._speed.window = time.monotonic() - start
            finally:
                self.network.train(training)
        return self._speed.window

    def perform_actual_validation(self, save_probabilities: bool = False):
        if not self._mode_fixed and self._speed.val_iter is not None:
            self.validation_mode = self._choose_validation()
        mode = self.validation_mode
        if mode == "skipped":
            why = "fold 'all' has no held-out cases" if self.fold == "all" else \
                "it would not fit in the fold's budget"
            self.print_to_log_file(f"Final validation skipped: {why}.", also_print_to_console=True)
            return
        mirrored = mode == "mirrored"
        estimate, start = self.estimate_validation_seconds(mirrored), time.monotonic()
        axes = self.inference_allowed_mirroring_axes
        if not mirrored:
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


def read_fold_clock(fold_folder: str) -> dict | None:
    """The clock saved beside the fold's last checkpoint, or None."""
    path = os.path.join(fold_folder, CLOCK_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
