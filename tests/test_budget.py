"""The clock, the learning-rate shapes and the budget split: fast unit tests, no training."""
from __future__ import annotations

import time

import pytest
import torch

from medseg_auto.budget import FoldShare, budget_advice, fmt_duration, split_training
from medseg_auto.trainers.schedule import ElapsedFractionLR, lr_factor
from medseg_auto.trainers.time_budget import _Speed, epoch_iterations
from conftest import copy_hippocampus

def test_constant_then_linear_decay_reaches_zero_when_time_is_up():
    assert lr_factor(0.0) == 1.0 and lr_factor(0.69) == 1.0
    assert lr_factor(0.85) == pytest.approx(0.5)
    assert lr_factor(1.0) == 0.0 and lr_factor(1.3) == 0.0  # past the end: still zero, never negative
    assert lr_factor(0.5, decay_fraction=1.0) == pytest.approx(0.5)  # all decay = linear from the start

def test_poly_and_cosine_follow_the_time_fraction():
    assert lr_factor(0.5, "poly") == pytest.approx(0.5 ** 0.9)
    assert lr_factor(0.5, "cosine") == pytest.approx(0.5)
    assert lr_factor(1.0, "poly") == 0.0 and lr_factor(1.0, "cosine") == pytest.approx(0.0)
    with pytest.raises(ValueError, match="unknown learning-rate shape"):
        lr_factor(0.5, "step")
    with pytest.raises(ValueError, match="decay_fraction"):
        lr_factor(0.5, decay_fraction=0.0)

def test_scheduler_sets_every_group_from_the_clock_not_the_epoch():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias]}], lr=0.01)
    now = {"f": 0.0}
    sched = ElapsedFractionLR(opt, 0.01, lambda: now["f"], "constant_decay", 0.3)
    assert sched.step(500) == pytest.approx(0.01)  # nnU-Net passes the epoch: ignored
    now["f"] = 0.85
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.005, 0.005])
    now["f"] = 0.8  # the time left was re-estimated upwards: the rate holds, it never climbs back
    assert sched.step() == pytest.approx(0.005)

def test_epochs_are_sized_from_measured_speed_and_stop_when_time_is_up():
    speed = _Speed(train_iter=0.5, val_iter=0.2, overhead=2.0)  # hippocampus, half width, 2 cores
    assert epoch_iterations(1500.0, 1800.0, speed, 120.0) == int(90.0 / 0.52)  # a twentieth of the time
    assert epoch_iterations(1500.0, 36000.0, speed, 120.0) == 230  # at most max_epoch_seconds
    assert epoch_iterations(1500.0, 36000.0, _Speed(0.01, 0.005, 0.1), 120.0) == 250  # nnU-Net's epoch at most
    assert epoch_iterations(5.0, 1800.0, speed, 120.0) == 5  # what still fits
    assert epoch_iterations(2.0, 1800.0, speed, 120.0) == 0  # nothing fits: time is up


def test_slow_iterations_make_epochs_long_enough_to_amortise_their_validation_step():
    speed = _Speed(train_iter=30.0, val_iter=9.0, overhead=2.0)  # full-size BraTS patches on 2 cores
    n = epoch_iterations(800.0, 850.0, speed, 120.0)
    assert n == 4  # a twentieth of the time would be 1 iteration, then 9 + 2 of every 41 s would go to overhead
    assert speed.val_iter + speed.overhead <= 0.1 * n * speed.train_iter
    assert epoch_iterations(100.0, 850.0, speed, 120.0) == 3  # but never more than fit


def test_light_augmentation_drops_only_the_degradations_of_nnunets_pipeline():
    """The trainer builds nnU-Net's own pipeline, then keeps all of it or all but noise, blur and low
    resolution, as its budget says."""
    from types import SimpleNamespace

    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    from medseg_auto.trainers.augmentation import select_augmentation
    from medseg_auto.trainers.time_budget import FoldBudget, nnUNetTrainerTimeBudget

    args = ((40, 56, 40), (-0.5, 0.5), [[1, 1, 1], [0.5, 0.5, 0.5]], (0, 1, 2), False)

    def build(augmentation: str) -> list:
        trainer = SimpleNamespace(budget=FoldBudget(seconds=600.0, augmentation=augmentation))
        return nnUNetTrainerTimeBudget.get_training_transforms(trainer, *args, use_mask_for_norm=[False],
                                                               foreground_labels=[1, 2]).transforms

    def names(steps: list) -> list[str]:
        return [type(t.transform if isinstance(t, RandomTransform) else t).__name__ for t in steps]

    full, light = names(build("nnunet")), names(build("light"))
    dropped = ["GaussianNoiseTransform", "GaussianBlurTransform", "SimulateLowResolutionTransform"]
    assert all(n in full for n in dropped) and len(full) == len(light) + 3
    assert light == [n for n in full if n not in dropped]
    assert "SpatialTransform" in light and "MirrorTransform" in light and "GammaTransform" in light
    with pytest.raises(ValueError, match="unknown augmentation 'none'"):
        select_augmentation(None, "none")


def test_strong_augmentation_is_nnunets_DA5_pipeline_and_patch_size():
    """``strong`` trains with nnUNetTrainerDA5's pipeline and its larger initial patch (it scales down to 0.7),
    ``nnunet`` with nnUNetTrainer's."""
    from types import SimpleNamespace

    from batchgeneratorsv2.transforms.noise.blank_rectangle import BlankRectangleTransform
    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    from medseg_auto.trainers.time_budget import FoldBudget, nnUNetTrainerTimeBudget

    def trainer(augmentation: str) -> SimpleNamespace:
        return SimpleNamespace(budget=FoldBudget(seconds=600.0, augmentation=augmentation), local_rank=0,
                               configuration_manager=SimpleNamespace(patch_size=[40, 56, 40]),
                               print_to_log_file=lambda *a, **k: None)

    def build(augmentation: str) -> tuple[list, list, list]:
        t = trainer(augmentation)
        rotation, dummy_2d, initial, mirror = \
            nnUNetTrainerTimeBudget.configure_rotation_dummyDA_mirroring_and_inital_patch_size(t)
        steps = nnUNetTrainerTimeBudget.get_training_transforms(
            t, [40, 56, 40], rotation, [[1, 1, 1], [0.5, 0.5, 0.5]], mirror, dummy_2d,
            use_mask_for_norm=[False], foreground_labels=[1, 2]).transforms
        kinds = [type(s.transform if isinstance(s, RandomTransform) else s) for s in steps]
        return list(initial), kinds, list(t.inference_allowed_mirroring_axes)

    (default_patch, default_steps, default_axes) = build("nnunet")
    (strong_patch, strong_steps, strong_axes) = build("strong")
    assert BlankRectangleTransform in strong_steps and BlankRectangleTransform not in default_steps
    assert len(strong_steps) > len(default_steps)
    assert all(s > d for s, d in zip(strong_patch, default_patch))  # room for DA5's 0.7 scaling
    assert strong_axes == default_axes == [0, 1, 2]  # inference mirrors as before


def test_the_cascade_refuses_strong_augmentation(project, train_cli):
    code, _, err = train_cli("-d", "x", "-l", "a", "--trainer", "cascade", "--augmentation", "strong")
    assert code == 2 and "--augmentation strong with --trainer cascade" in err
    from medseg_auto.errors import InputError
    from medseg_auto.ingest import IngestOptions
    from medseg_auto.run import RunOptions, train

    api = RunOptions(name="x", ingest=IngestOptions(dataset_dir=project / "input_train" / "x"), minutes=5,
                     folds=[0], trainer="cascade", settings={"augmentation": "strong"}, work_dir=project / "work")
    with pytest.raises(InputError, match="--augmentation strong with --trainer cascade"):
        train(api)  # the API refuses it too, before it looks for the data (there is none)
    assert not (project / "work").exists()


def test_the_initial_learning_rate_is_the_users_and_the_shape_scales_it(project, train_cli):
    from medseg_auto.trainers.time_budget import FoldBudget, nnUNetTrainerTimeBudget

    def optimizer_and_schedule(**settings):
        trainer = nnUNetTrainerTimeBudget.__new__(nnUNetTrainerTimeBudget)
        trainer.budget, trainer.initial_lr, trainer.weight_decay, trainer.num_epochs = FoldBudget(seconds=600.0, **settings), 1e-2, 3e-5, 9
        trainer.network = torch.nn.Linear(2, 2)
        trainer.training_fraction = lambda: 0.85  # halfway through the default decay
        return trainer.configure_optimizers()

    _, default = optimizer_and_schedule()
    assert default.step() == pytest.approx(0.005)  # nnU-Net's 0.01, halved
    optimizer, schedule = optimizer_and_schedule(learning_rate=0.03)
    assert schedule.step() == pytest.approx(0.015)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.015])
    code, _, err = train_cli("-d", "x", "-l", "a", "--lr", "0")
    assert code == 2 and "--lr 0:" in err


def test_batch_is_nnunets_capped_on_a_cpu_unless_the_user_sets_it():
    from types import SimpleNamespace

    from medseg_auto.trainers.time_budget import FoldBudget, nnUNetTrainerTimeBudget

    def batch(device: str, **settings) -> int:
        trainer = nnUNetTrainerTimeBudget.__new__(nnUNetTrainerTimeBudget)
        trainer.is_ddp, trainer.device, trainer.budget = False, torch.device(device), FoldBudget(seconds=600.0, **settings)
        trainer.configuration_manager = SimpleNamespace(batch_size=6, patch_size=[40, 56, 40])
        trainer.print_to_log_file = lambda *a, **k: None
        trainer._set_batch_size_and_oversample()
        return trainer.batch_size

    assert batch("cpu") == 2 and batch("meta") == 6  # 180,000 voxels: two 40x56x40 patches; no cap off a CPU
    assert batch("cpu", cpu_batch_voxels=360_000) == 4
    assert batch("cpu", batch_size=5) == 5 and batch("meta", batch_size=1) == 1


def test_validation_window_is_timed_once_at_batch_one_in_inference_mode():
    """The final validation's reserve comes from a measured window, not from the training batch's steps."""
    from types import SimpleNamespace

    from medseg_auto.trainers.time_budget import nnUNetTrainerTimeBudget

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.seen = []

        def forward(self, x):
            self.seen.append((tuple(x.shape), self.training, torch.is_grad_enabled()))
            time.sleep(1.0 if len(self.seen) == 1 else 0.05)  # a slow first call, as a warm-up is
            return x

    net = Net().train()
    trainer = SimpleNamespace(planner=SimpleNamespace(speed=_Speed(0.5, 0.2)), _input_channels=None, batch_size=2,
                              network=net, device=torch.device("cpu"),
                              configuration_manager=SimpleNamespace(patch_size=[4, 6, 8]))
    assert nnUNetTrainerTimeBudget.window_seconds(trainer) == 0.1  # before any training step: a guess
    assert not net.seen
    trainer._input_channels = 5  # image channels plus any the trainer adds (the cascade's coordinates)
    first = nnUNetTrainerTimeBudget.window_seconds(trainer)
    assert 0.05 <= first < 1.0 and trainer.planner.speed.window == first  # the second call's time, not the warm-up's
    assert net.seen == [((1, 5, 4, 6, 8), False, False)] * 2 and net.training  # warm-up + timed; mode restored
    assert nnUNetTrainerTimeBudget.window_seconds(trainer) == first and len(net.seen) == 2  # measured once


@pytest.mark.parametrize("shape, patch", [
    ((36, 50, 35), (56, 40)),          # a hippocampus volume trained in 2D: the patch slides over every slice
    ((1, 300, 700), (256, 256)),       # a 2D image: one slice, 2 x 5 windows
    ((1, 512, 512), (512, 512)),
    ((36, 50, 35), (40, 56, 40)),      # 3D: smaller than the patch, padded to one window
    ((155, 240, 240), (128, 128, 128)),
])
def test_validation_windows_are_those_nnunets_predictor_runs(shape, patch):
    """The count behind the validation reserve equals the slicers nnU-Net's predictor builds for the case."""
    from types import SimpleNamespace

    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from medseg_auto.trainers.time_budget import sliding_windows

    padded = pad_nd_image(torch.zeros((1, *shape)), patch, "constant", {"value": 0})  # as nnU-Net pads
    predictor = SimpleNamespace(configuration_manager=SimpleNamespace(patch_size=list(patch)), tile_step_size=0.5,
                                verbose=False)
    slicers = nnUNetPredictor._internal_get_sliding_window_slicers(predictor, padded.shape[1:])
    assert sliding_windows(shape, patch) == len(slicers)


@pytest.mark.parametrize("shapes, patch, windows", [
    ([(1, 300, 700), (1, 512, 512)], (256, 256), 10 + 9),       # 2D images
    ([(36, 50, 35), (30, 48, 36)], (56, 40), 36 + 30),           # 3D data trained in 2D: every slice
    ([(36, 50, 35), (30, 48, 36)], (40, 56, 40), 2),             # the same trained in 3D
])
def test_validation_reserve_counts_every_window_of_2d_and_3d_validation(shapes, patch, windows):
    """The final validation's estimate: 15 s + windows x seconds per window x mirrorings + export per case."""
    from types import SimpleNamespace

    import numpy as np

    from medseg_auto.trainers.time_budget import nnUNetTrainerTimeBudget

    class Cases:
        def __init__(self, folder, keys):
            self.keys = keys

        def load_case(self, key):
            return np.zeros((1, *shapes[int(key)]), np.float32), None, None, {}

    keys = [str(i) for i in range(len(shapes))]
    trainer = SimpleNamespace(_val_windows=None, do_split=lambda: ([], keys), dataset_class=Cases,
                              preprocessed_dataset_folder="", configuration_manager=SimpleNamespace(patch_size=patch),
                              inference_allowed_mirroring_axes=tuple(range(len(patch))), window_seconds=lambda: 0.5)
    voxels = sum(int(np.prod([max(s, p) for s, p in zip(shape[len(shape) - len(patch):], patch)]))
                 * int(np.prod(shape[:len(shape) - len(patch)])) for shape in shapes)
    export = 1.5 * len(shapes) + 1e-6 * voxels
    fast = nnUNetTrainerTimeBudget.estimate_validation_seconds(trainer, False)
    assert fast == pytest.approx(15.0 + windows * 0.5 + export)
    mirrored = nnUNetTrainerTimeBudget.estimate_validation_seconds(trainer, True)
    assert mirrored == pytest.approx(15.0 + windows * 0.5 * 2 ** len(patch) + export)


def test_split_is_equal_when_fresh_and_by_remaining_need_when_resumed():
    fresh = split_training(300.0, [FoldShare(0), FoldShare(1), FoldShare(2)])
    assert fresh == pytest.approx({0: 100.0, 1: 100.0, 2: 100.0})
    # fold 0 used half of its 100 s before a kill; 150 s are left for it and an untouched fold 1
    resumed = split_training(150.0, [FoldShare(0, 100.0, 50.0), FoldShare(1, 100.0, 0.0)])
    assert resumed[0] == pytest.approx(50.0 + 50.0) and resumed[1] == pytest.approx(100.0)
    assert sum(resumed.values()) - 50.0 == pytest.approx(150.0)  # new time handed out = time left

def test_budget_advice_has_numbers_and_suggests_one_fold():
    text = budget_advice(600.0, [0, 1, 2, 3, 4], 100.0)
    assert "1:40 of training per fold for 5 folds" in text and "-f 0" in text and "8:20" in text
    assert budget_advice(3600.0, [0], 3000.0) is None
    assert fmt_duration(75) == "1:15" and fmt_duration(3725) == "1:02:05"

def test_too_small_budget_is_refused_up_front_without_planning(project, train_cli):
    copy_hippocampus(project / "input_train" / "hippo", 6)
    code, out, err = train_cli("-d", "hippo", "-t", "0.3", "-f", "all")
    assert code == 2, err
    assert "too little to train anything" in err and "-f 0" in err and "Use at least -t" in err
    assert not (project / "work" / "hippo" / "nnUNet_preprocessed").exists()  # refused before planning
    assert not (project / "output_models" / "hippo").exists()


def test_bf16_casts_only_the_training_forward_and_keeps_float32_weights():
    from medseg_auto.trainers.precision import train_in_bf16

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 1))
    inside: list[torch.dtype] = []
    network[0].register_forward_hook(lambda module, args, out: inside.append(out.dtype))
    x = torch.randn(2, 1, 8, 8, 8)
    reference = network(x)
    train_in_bf16(network)
    out = network(x)
    assert inside == [torch.float32, torch.bfloat16]  # the convolution ran in bfloat16 ...
    assert out.dtype == torch.float32  # ... and the loss gets float32
    assert torch.allclose(out, reference, atol=0.05) and not torch.equal(out, reference)
    out.square().mean().backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 and p.grad.abs().sum() > 0
               for p in network.parameters())
    assert all(v.dtype == torch.float32 for v in network.state_dict().values())
    network.eval()
    assert network(x).dtype == torch.float32 and inside[-1] == torch.float32  # validation: nnU-Net's float32


def test_an_unknown_precision_is_refused_before_any_work(project):
    from medseg_auto.errors import InputError
    from medseg_auto.ingest import IngestOptions
    from medseg_auto.run import RunOptions, train

    api = RunOptions(name="x", ingest=IngestOptions(dataset_dir=project / "input_train" / "x"), minutes=5,
                     folds=[0], settings={"precision": "fp16"}, work_dir=project / "work")
    with pytest.raises(InputError, match="precision .fp16.: use one of auto, fp32, bf16"):
        train(api)
    assert not (project / "work").exists()


def test_auto_precision_takes_bf16_only_where_native_and_timed_faster(monkeypatch):
    from medseg_auto.trainers import precision

    network = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 2, 1))
    timed: list[bool] = []

    def fake_step(net, shape, bf16, repeats=2):
        timed.append(bf16)
        return seconds[bf16]

    monkeypatch.setattr(precision, "step_seconds", fake_step)
    monkeypatch.setattr(precision, "native_bf16", lambda: False)
    seconds = {False: 1.0, True: 0.5}
    choice, why = precision.choose_precision(network, (2, 1, 8, 8, 8))
    assert choice == "fp32" and "no native bfloat16" in why and timed == []  # not even timed
    monkeypatch.setattr(precision, "native_bf16", lambda: True)
    assert precision.choose_precision(network, (2, 1, 8, 8, 8))[0] == "bf16" and timed == [False, True]
    seconds = {False: 1.0, True: 0.95}  # within the 10% margin: not worth it
    choice, why = precision.choose_precision(network, (2, 1, 8, 8, 8))
    assert choice == "fp32" and "0.95 s in bfloat16 against 1.00 s in float32" in why


def test_the_precision_probe_times_a_real_step_and_leaves_no_gradients():
    from medseg_auto.trainers.precision import step_seconds

    network = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 2, 1))
    network.eval()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    for bf16 in (False, True):
        assert 0.0 < step_seconds(network, (2, 1, 8, 8, 8), bf16) < 60.0
    assert all(p.grad is None for p in network.parameters()) and not network.training  # its mode is restored
    assert all(torch.equal(v, before[k]) for k, v in network.state_dict().items())


def test_a_resumed_fold_keeps_the_precision_auto_chose(tmp_path, monkeypatch):
    from medseg_auto.trainers import time_budget
    from medseg_auto.trainers.time_budget import CLOCK_FILE, FoldBudget, nnUNetTrainerTimeBudget

    trainer = nnUNetTrainerTimeBudget.__new__(nnUNetTrainerTimeBudget)
    trainer.budget, trainer.device, trainer.output_folder = FoldBudget(seconds=600.0), torch.device("cpu"), str(tmp_path)
    trainer.network = torch.nn.Conv3d(1, 2, 3)
    trainer.print_to_log_file = lambda *a, **k: None
    probes: list[tuple] = []
    monkeypatch.setattr(time_budget, "choose_precision", lambda net, shape: probes.append(shape) or ("fp32", "timed"))
    trainer._set_precision((2, 1, 8, 8, 8))
    assert trainer.precision == "fp32" and probes == [(2, 1, 8, 8, 8)]  # a fresh fold: timed

    (tmp_path / CLOCK_FILE).write_text('{"precision": "bf16"}')  # an interrupted fold that chose bf16
    trainer.network = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3))
    inside: list[torch.dtype] = []
    trainer.network[0].register_forward_hook(lambda module, args, out: inside.append(out.dtype))
    trainer._set_precision((2, 1, 8, 8, 8))
    assert trainer.precision == "bf16" and len(probes) == 1  # kept, not timed again
    assert trainer.network(torch.randn(1, 1, 8, 8, 8)).dtype == torch.float32 and inside == [torch.bfloat16]
    trainer.budget.precision = "fp32"  # the user's choice wins over the clock's
    trainer._set_precision((2, 1, 8, 8, 8))
    assert trainer.precision == "fp32" and len(probes) == 1


def test_a_trainer_without_a_budget_says_so_instead_of_training_for_ever():
    """A budget with no time cannot be built, and a trainer whose runner set none stops at the first use with
    the way to set it (an unlimited default failed in epoch 2 on int(inf))."""
    from medseg_auto.trainers.time_budget import FoldBudget, nnUNetTrainerTimeBudget

    with pytest.raises(TypeError, match="seconds"):
        FoldBudget()
    trainer = nnUNetTrainerTimeBudget.__new__(nnUNetTrainerTimeBudget)
    trainer.fold, trainer._planner = 0, None  # as __init__ leaves them
    with pytest.raises(RuntimeError, match=r"trainer.budget = FoldBudget\(seconds=...\)"):
        trainer.training_seconds()
    trainer.budget = FoldBudget(seconds=600.0)
    assert trainer.training_seconds() == pytest.approx(0.85 * 600.0)  # before any speed: 15% kept for validation
