"""The time decisions of a budgeted fold, apart from nnU-Net: how long each epoch is, when the time is up,
how much of the fold the final validation keeps and in which mode it runs, and how far along the learning
rate is.

``EpochPlanner`` holds the fold's ``FoldBudget`` and the measured speed and is fed plain numbers (elapsed
seconds, loop timings), so it runs in tests without a network, nnU-Net or a real clock. The trainer
(``time_budget.nnUNetTrainerTimeBudget``) keeps only nnU-Net's hooks: it times the loops, asks the planner,
and, under DDP, sends rank 0's answers to the other ranks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from medseg_auto.run_record import FoldClock

FIRST_EPOCH_ITERATIONS = 5  # an epoch of unknown speed: short, it measures the speed for the next ones
VALIDATION_MODES = ("mirrored", "fast", "skipped")
MODE_FIXED_AFTER_EPOCH = 3  # the first epochs' speed includes warm-up: the mode is chosen again until then
UNKNOWN_SPEED_RESERVE = 0.15  # share of the fold kept for the final validation before its speed is measured
RESERVE_MARGIN = 1.25  # the reserve is this times the validation's estimate


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


class EpochPlanner:
    """Decides, from the fold's budget and measured speed, each epoch's length, when training stops, and
    the final validation's mode and reserve.

    ``estimate_validation(mirrored)`` gives the final validation's seconds (the trainer counts its sliding
    windows); it is only called once a validation step was measured. ``held_out`` is False for fold
    ``all`` (no held-out cases: its validation is skipped). Times are seconds of the fold's clock
    (``elapsed`` includes earlier sessions), passed in by the caller.
    """

    def __init__(self, budget: FoldBudget, estimate_validation: Callable[[bool], float], held_out: bool = True):
        self.budget = budget
        self.estimate_validation = estimate_validation
        self.held_out = held_out
        self.speed = _Speed()
        self.validation_mode = "mirrored"  # decided from measured speed: mirrored, fast, skipped
        self.mode_fixed = False  # decided once, after warm-up, so the reserve (and the schedule) stay stable
        self.reserve: float | None = None  # seconds kept for the final validation, updated every epoch
        self.epoch = 0  # the epoch the last decision was for
        self.warmup: dict[str, float] = {}  # this session's first iteration less a steady one: "train", "val"
        self.earlier_warmup = 0.0  # the same, summed over the fold's earlier sessions
        self._warm: set[str] = set()  # loops whose warm-up iteration this session has seen
        self._first_pending: dict[str, float] = {}  # a warm-up iteration waiting for a steady one to compare
        self._loops = 0.0  # seconds of the current epoch's training and validation loops

    # -- the clock -------------------------------------------------------------------------------------------
    def training_seconds(self) -> float:
        """The part of the fold's time for training: the whole minus the final validation's reserve."""
        if self.reserve is None:
            self.validation_reserve(self.epoch)
        return self.budget.seconds - self.reserve

    def training_fraction(self, elapsed: float) -> float:
        """How far training is at ``elapsed`` seconds (1: its time is up): what the learning rate follows."""
        return elapsed / max(self.training_seconds(), 1e-6)

    def next_epoch(self, elapsed: float, epoch: int) -> int:
        """Training iterations for ``epoch``, starting at ``elapsed`` seconds; 0 when the time is up. The
        validation reserve is updated first (the speed measured so far may have changed it)."""
        self.validation_reserve(epoch)
        left = self.training_seconds() - elapsed
        if self.speed.train_iter is None:
            return FIRST_EPOCH_ITERATIONS if left > 0 else 0
        return epoch_iterations(left, self.training_seconds(), self.speed, self.budget.max_epoch_seconds)

    def validation_iterations(self, iterations: int) -> int:
        """Validation steps of an epoch of ``iterations`` training steps: only the pseudo-Dice shown per epoch
        comes from them, so a tenth (one while the speed is unknown)."""
        return 1 if self.speed.train_iter is None else max(1, round(iterations / 10))

    def checkpoint_interval(self) -> float:
        """Seconds between ``checkpoint_latest`` writes: the budget's, more often for short folds."""
        return min(self.budget.checkpoint_every, max(15.0, self.budget.seconds / 10))

    def checkpoint_due(self, since_last_save: float) -> bool:
        return since_last_save >= self.checkpoint_interval()

    # -- the final validation -------------------------------------------------------------------------------
    def validation_reserve(self, epoch: int) -> float:
        """Seconds kept for the final validation: a share before any validation step was measured, then the
        estimate of the mode that fits (chosen again until ``MODE_FIXED_AFTER_EPOCH``)."""
        self.epoch = epoch
        if self.speed.val_iter is None:
            self.reserve = UNKNOWN_SPEED_RESERVE * self.budget.seconds
            return self.reserve
        if not self.mode_fixed:
            self.validation_mode = self.choose_validation()
            self.mode_fixed = epoch >= MODE_FIXED_AFTER_EPOCH
        if self.validation_mode == "skipped":
            self.reserve = 0.0
        else:
            self.reserve = RESERVE_MARGIN * self.estimate_validation(self.validation_mode == "mirrored")
        return self.reserve

    def choose_validation(self) -> str:
        """``mirrored`` if it costs at most ``mirror_share`` of the fold, else ``fast`` (no mirroring) if that
        costs at most ``validation_share``, else ``skipped``; fold ``all`` always skips (no held-out cases)."""
        if not self.held_out:
            return "skipped"
        total = self.budget.seconds
        if self.estimate_validation(True) <= self.budget.mirror_share * total:
            return "mirrored"
        if self.estimate_validation(False) <= self.budget.validation_share * total:
            return "fast"
        return "skipped"

    def adopt(self, reserve: float, validation_mode: str, mode_fixed: bool) -> None:
        """Take another planner's validation decision (under DDP, rank 0's)."""
        self.reserve, self.validation_mode, self.mode_fixed = reserve, validation_mode, mode_fixed

    # -- measurements ----------------------------------------------------------------------------------------
    def record_loop(self, kind: str, seconds: float, iterations: int, first: float) -> None:
        """One epoch's ``kind`` loop (``train`` or ``val``) took ``seconds`` for ``iterations`` steps, ``first``
        of them the first step's. The first step of each loop in a session is warm-up (torch.compile's
        compilation, cuDNN's benchmark, allocator and caches): it is left out of the speed and kept in
        ``warmup``. A one-step loop cannot tell warm-up from speed: the speed keeps what it had (an earlier
        session's, or none: the next epoch measures it) and the warm-up waits for the next loop's speed."""
        if iterations < 1:
            return
        self._loops += seconds
        name = f"{kind}_iter"
        if kind in self._warm:
            steady = seconds / iterations
            self.speed.update(name, steady)
            if kind in self._first_pending:
                self.warmup[kind] = max(0.0, self._first_pending.pop(kind) - steady)
            return
        self._warm.add(kind)
        if iterations > 1:
            steady = (seconds - first) / (iterations - 1)
            self.speed.update(name, steady)
            self.warmup[kind] = max(0.0, first - steady)
        else:
            self._first_pending[kind] = first

    def end_epoch(self, seconds: float) -> None:
        """The epoch took ``seconds`` in all: what its loops did not take is the per-epoch overhead (logging,
        checkpoint, plot); warm-up stays out of it, as it stays out of the loops' speed."""
        self.speed.overhead = max(0.0, seconds - self._loops)
        self._loops = 0.0

    @property
    def warmup_seconds(self) -> float:
        """Seconds the fold's sessions spent in warm-up iterations beyond their steady speed."""
        return self.earlier_warmup + sum(self.warmup.values())

    # -- resume ----------------------------------------------------------------------------------------------
    def restore(self, clock: FoldClock) -> None:
        """Continue from the clock an earlier session saved beside its checkpoint (``medseg_clock.json``)."""
        self.speed = replace(clock.speed)  # a copy: the planner updates its own
        self.validation_mode, self.mode_fixed = clock.validation, clock.epochs > MODE_FIXED_AFTER_EPOCH
        self.epoch = clock.epochs
        self.earlier_warmup = float(clock.warmup_seconds)
