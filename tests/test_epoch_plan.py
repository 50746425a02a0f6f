"""The fold's time decisions (``EpochPlanner``) driven by a fake clock, and the compile policy: no network,
no nnU-Net, no real time."""
from __future__ import annotations

import os

import pytest

from medseg_auto.run_record import FoldClock
from medseg_auto.trainers.epoch_plan import EpochPlanner, FoldBudget, _Speed


def simulate(planner: EpochPlanner, train_iter: float = 0.5, val_iter: float = 0.2, overhead: float = 1.5,
             warmup: tuple[float, float] = (20.0, 8.0), start: float = 0.0, max_epochs: int = 10_000):
    """Run a fold on a fake clock: each epoch takes what the planner planned at the given speeds, its first
    training and validation steps (the session's first) ``warmup`` seconds longer. Returns the clock at the
    end and, per epoch, (iterations, validation iterations, learning-rate fraction at its start)."""
    clock, epochs = start, []
    for epoch in range(max_epochs):
        n = planner.next_epoch(clock, epoch)
        if n == 0:
            return clock, epochs
        n_val = planner.validation_iterations(n)
        epochs.append((n, n_val, planner.training_fraction(clock)))
        begin = clock
        first = train_iter + (warmup[0] if epoch == 0 else 0.0)
        planner.record_loop("train", first + (n - 1) * train_iter, n, first)
        first_val = val_iter + (warmup[1] if epoch == 0 else 0.0)
        planner.record_loop("val", first_val + (n_val - 1) * val_iter, n_val, first_val)
        clock += first + (n - 1) * train_iter + first_val + (n_val - 1) * val_iter + overhead
        planner.end_epoch(clock - begin)
    raise AssertionError("the fold never ended")


def test_a_simulated_fold_ends_before_its_validation_reserve_with_the_rate_near_zero():
    budget = FoldBudget(seconds=600.0)
    planner = EpochPlanner(budget, lambda mirrored: 40.0 if mirrored else 10.0)  # 40 s <= 15% of 600: mirrored
    end, epochs = simulate(planner)
    assert epochs[0][:2] == (5, 1)  # a short first epoch measures the speed
    assert planner.validation_mode == "mirrored" and planner.reserve == pytest.approx(1.25 * 40.0)
    assert end <= budget.seconds - planner.reserve  # the final validation's time is left
    assert planner.training_fraction(end) > 0.97  # and the schedule used the training time up
    assert len(epochs) >= 10 and all(n <= 250 for n, _, _ in epochs)
    fractions = [f for _, _, f in epochs]
    assert fractions == sorted(fractions) and fractions[0] == 0.0


def test_warm_up_steps_stay_out_of_the_speed_and_are_kept_apart():
    """The session's first training and validation steps (torch.compile compiles there) are not speed: a
    20 s first step would otherwise make the next epochs tiny and the overhead huge."""
    planner = EpochPlanner(FoldBudget(seconds=600.0), lambda mirrored: 40.0)
    planner.next_epoch(0.0, 0)
    planner.record_loop("train", 20.5 + 4 * 0.5, 5, 20.5)
    planner.record_loop("val", 8.2, 1, 8.2)  # one validation step: warm-up or speed cannot be told apart
    planner.end_epoch(20.5 + 4 * 0.5 + 8.2 + 1.5)
    assert planner.speed.train_iter == pytest.approx(0.5)
    assert planner.speed.val_iter is None  # unknown until a warmed-up validation step is timed
    assert planner.speed.overhead == pytest.approx(1.5)  # the epoch less its loops, warm-up included in those
    assert planner.warmup == pytest.approx({"train": 20.0})
    assert planner.next_epoch(32.2, 1) > 5  # sized from the steady speed
    planner.record_loop("val", 0.4, 2, 0.2)  # the next epoch's validation: steady
    assert planner.speed.val_iter == pytest.approx(0.2)
    assert planner.warmup == pytest.approx({"train": 20.0, "val": 8.0})
    assert planner.warmup_seconds == pytest.approx(28.0)
    planner.record_loop("train", 10.0, 20, 0.5)  # later loops: every step counts
    assert planner.speed.train_iter == pytest.approx(0.5)


def test_a_resumed_session_warms_up_again_and_keeps_the_earlier_speed_through_a_one_step_epoch():
    planner = EpochPlanner(FoldBudget(seconds=600.0, spent=300.0), lambda mirrored: 40.0)
    planner.restore(FoldClock.from_dict({"speed": {"train_iter": 0.5, "val_iter": 0.2, "overhead": 1.0, "window": 0.1},
                                         "validation": "mirrored", "epochs": 6, "warmup_seconds": 20.0}))
    assert planner.mode_fixed and planner.validation_mode == "mirrored"
    planner.record_loop("train", 30.0, 1, 30.0)  # a one-step epoch near the end: warm-up only
    assert planner.speed.train_iter == pytest.approx(0.5)
    planner.record_loop("train", 1.0, 2, 0.5)
    assert planner.speed.train_iter == pytest.approx(0.5) and planner.warmup_seconds == pytest.approx(20.0 + 29.5)


def test_validation_falls_back_from_mirrored_to_fast_to_skipped_as_its_estimate_grows_then_stays():
    seconds = {"base": 10.0}
    planner = EpochPlanner(FoldBudget(seconds=600.0), lambda mirrored: seconds["base"] * (8 if mirrored else 1))
    assert planner.validation_reserve(0) == pytest.approx(0.15 * 600.0)  # no validation step measured yet
    planner.speed = _Speed(train_iter=0.5, val_iter=0.2, overhead=1.0)
    decided = []
    for epoch, base in enumerate([10.0, 20.0, 250.0, 20.0, 5.0]):
        seconds["base"] = base
        planner.next_epoch(0.0, epoch)
        decided.append((planner.validation_mode, planner.reserve, planner.mode_fixed))
    assert decided == [("mirrored", 1.25 * 80.0, False),  # 80 s mirrored <= 15% of 600 s
                       ("fast", 1.25 * 20.0, False),  # 160 s mirrored > 90 s; 20 s <= 35% of 600 s
                       ("skipped", 0.0, False),  # even 250 s without mirroring > 210 s
                       ("fast", 1.25 * 20.0, True),  # chosen again, then fixed from epoch 3 ...
                       ("fast", 1.25 * 5.0, True)]  # ... the mode stays, its reserve follows the estimate
    assert planner.training_seconds() == pytest.approx(600.0 - 1.25 * 5.0)


def test_fold_all_skips_its_validation_without_estimating_it():
    def estimate(mirrored: bool) -> float:
        raise AssertionError("fold 'all' has no held-out cases to estimate")

    planner = EpochPlanner(FoldBudget(seconds=600.0), estimate, held_out=False)
    end, epochs = simulate(planner)
    assert planner.validation_mode == "skipped" and planner.reserve == 0.0
    assert 600.0 - 5.0 < end <= 600.0  # all of the fold trains


def test_the_time_is_up_when_no_epoch_fits():
    planner = EpochPlanner(FoldBudget(seconds=100.0), lambda mirrored: 5.0)
    assert planner.next_epoch(84.0, 0) == 5 and planner.next_epoch(85.0, 0) == 0  # 15% kept before any speed
    planner.speed = _Speed(train_iter=0.5, val_iter=0.2, overhead=2.0)
    assert planner.next_epoch(90.0, 1) == 3  # 6.25 s reserved, 3.75 s left: what fits after the overhead
    assert planner.next_epoch(92.0, 1) == 0  # 1.75 s left: less than the epoch's overhead


def test_checkpoints_come_more_often_in_short_folds():
    assert EpochPlanner(FoldBudget(seconds=36000.0), lambda m: 0.0).checkpoint_interval() == 120.0
    planner = EpochPlanner(FoldBudget(seconds=600.0), lambda m: 0.0)
    assert planner.checkpoint_interval() == 60.0
    assert not planner.checkpoint_due(59.0) and planner.checkpoint_due(60.0)
    assert EpochPlanner(FoldBudget(seconds=100.0), lambda m: 0.0).checkpoint_interval() == 15.0


def test_another_ranks_decision_is_adopted_whole():
    planner = EpochPlanner(FoldBudget(seconds=600.0), lambda m: 40.0)
    planner.adopt(25.0, "fast", True)
    assert (planner.reserve, planner.validation_mode, planner.mode_fixed) == (25.0, "fast", True)
    assert planner.training_seconds() == 575.0


# -- torch.compile: on CUDA only, where the fold is long enough ------------------------------------------------
def test_compile_is_never_asked_off_cuda_and_auto_waits_for_a_long_fold():
    from medseg_auto.device import COMPILE_MIN_FOLD_SECONDS, compile_policy
    from medseg_auto.errors import InputError

    assert compile_policy("cpu", 10 * 3600.0, "on") == (False, "nnU-Net compiles only on CUDA, not on CPU")
    assert compile_policy("mps", 10 * 3600.0)[0] is False
    assert compile_policy("cuda", 60.0, "on") == (True, "--compile on")
    assert compile_policy("cuda", 10 * 3600.0, "off") == (False, "--compile off")
    short, why = compile_policy("cuda", COMPILE_MIN_FOLD_SECONDS - 1.0)
    assert not short and "under the 20 min" in why
    assert compile_policy("cuda", COMPILE_MIN_FOLD_SECONDS)[0] is True
    with pytest.raises(InputError, match="compile 'yes'"):
        compile_policy("cuda", 60.0, "yes")


def test_the_compile_policy_is_applied_through_nnunets_variable(monkeypatch):
    from medseg_auto.device import COMPILE_SET_BY_US, apply_compile_policy

    monkeypatch.delenv("nnUNet_compile", raising=False)
    monkeypatch.delenv(COMPILE_SET_BY_US, raising=False)
    assert apply_compile_policy("cuda", 3600.0)[0] and os.environ["nnUNet_compile"] == "true"
    assert not apply_compile_policy("cuda", 300.0)[0]  # the next fold, short: what we set before is no ask
    assert os.environ["nnUNet_compile"] == "false"
    assert not apply_compile_policy("cpu", 3600.0, "on")[0] and os.environ["nnUNet_compile"] == "false"
    monkeypatch.setenv("nnUNet_compile", "t")  # the user's own choice, under auto
    assert apply_compile_policy("cuda", 300.0) == (True, "nnUNet_compile=t in the environment")
    monkeypatch.setenv("nnUNet_compile", "f")
    assert apply_compile_policy("cuda", 3600.0) == (False, "nnUNet_compile=f in the environment")
    assert apply_compile_policy("cuda", 3600.0, "on")[0]  # an explicit ask wins
