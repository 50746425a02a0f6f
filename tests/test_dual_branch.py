"""The dual-branch trainer: the network follows nnU-Net's plans, each branch sees only its channels, the
channel groups come from names, and a bundle trained on real BraTS crops predicts through exe_predict.py."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, clean_env, copy_brats_crops, train_command
from medseg_auto.errors import InputError
from medseg_auto.networks.dual_branch import BRANCH_WIDTH, CLASS_NAME, LEGACY_BRANCH_WIDTH, DualBranchUNet
from medseg_auto.trainers.dual_branch import add_configuration, parse_branches


def arch_kwargs(n_stages: int, features: list[int], dim: int = 3) -> dict:
    """Architecture kwargs as nnU-Net's planner writes them for a 3D (or 2D) PlainConvUNet."""
    conv = "torch.nn.modules.conv.Conv3d" if dim == 3 else "torch.nn.modules.conv.Conv2d"
    norm = "torch.nn.modules.instancenorm.InstanceNorm3d" if dim == 3 else \
        "torch.nn.modules.instancenorm.InstanceNorm2d"
    return {"n_stages": n_stages, "features_per_stage": features, "conv_op": conv,
            "kernel_sizes": [[3] * dim] * n_stages, "strides": [[1] * dim] + [[2] * dim] * (n_stages - 1),
            "n_conv_per_stage": [2] * n_stages, "n_conv_per_stage_decoder": [2] * (n_stages - 1),
            "conv_bias": True, "norm_op": norm, "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True}}


def plans_for(kwargs: dict) -> dict:
    return {"dataset_name": "Dataset001_x", "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "original_median_spacing_after_transp": [1, 1, 1], "original_median_shape_after_transp": [32, 32, 32],
            "foreground_intensity_properties_per_channel": {},
            "configurations": {"3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2, "patch_size": [32, 32, 32], "median_image_size_in_voxels": [32, 32, 32],
                "spacing": [1, 1, 1], "normalization_schemes": ["ZScoreNormalization"] * 2,
                "use_mask_for_norm": [False, False], "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": {},
                "resampling_fn_seg_kwargs": {}, "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {}, "batch_dice": False,
                "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                                 "arch_kwargs": kwargs,
                                 "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}}}


def build(kwargs: dict, channels: int, classes: int = 3, **dual) -> torch.nn.Module:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    name = CLASS_NAME if dual else "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    return get_network_from_plans(name, kwargs | dual, ["conv_op", "norm_op", "dropout_op", "nonlin"], channels,
                                  classes, deep_supervision=True)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("width", [BRANCH_WIDTH, LEGACY_BRANCH_WIDTH])
@pytest.mark.parametrize("n_stages,features", [(4, [32, 64, 128, 256]), (6, [32, 64, 128, 256, 320, 320]),
                                               (5, [16, 32, 64, 128, 160])])
def test_parameter_count_within_ten_percent_of_the_plain_unet(n_stages, features, width):
    kwargs = arch_kwargs(n_stages, features)
    plain = n_params(build(kwargs, 2))
    dual = n_params(build(kwargs, 2, branches=[[0], [1]], fuse_stage=n_stages // 2, branch_width=width))
    assert abs(dual - plain) / plain <= 0.10, (dual, plain)


def test_new_plans_store_the_branch_width_and_old_plans_keep_theirs():
    """New plans name a width that keeps nnU-Net's channel counts multiples of 8 (the CPU's fast path);
    plans written before the width was stored build the network their weights were trained for."""
    plans = plans_for(arch_kwargs(4, [16, 32, 64, 128]))
    name = add_configuration(plans, "3d_fullres", [[1], [0]], 2)
    assert plans["configurations"][name]["architecture"]["arch_kwargs"]["branch_width"] == BRANCH_WIDTH
    kwargs = plans["configurations"][name]["architecture"]["arch_kwargs"]
    new = build({k: v for k, v in kwargs.items() if k not in ("branches", "fuse_stage", "branch_width")}, 2,
                branches=kwargs["branches"], fuse_stage=2, branch_width=kwargs["branch_width"])
    assert [e.output_channels for e in new.encoders] == [[8, 16], [8, 16]]
    old = build(arch_kwargs(4, [16, 32, 64, 128]), 2, branches=[[1], [0]], fuse_stage=2)
    assert [e.output_channels for e in old.encoders] == [[11, 23], [11, 23]]


def test_outputs_match_the_plain_unet_in_shape_with_deep_supervision():
    kwargs = arch_kwargs(4, [8, 16, 32, 64])
    x = torch.randn(2, 3, 32, 32, 32)
    plain = build(kwargs, 3).eval()
    dual = build(kwargs, 3, branches=[[0, 2], [1]], fuse_stage=2).eval()
    with torch.no_grad():
        assert [o.shape for o in dual(x)] == [o.shape for o in plain(x)]
        dual.decoder.deep_supervision = False  # how nnU-Net switches it off for inference
        assert dual(x).shape == (2, 3, 32, 32, 32)


@pytest.mark.parametrize("branches", [[[0], [1]], [[1], [0]], [[0, 2], [1]]])
def test_each_branch_sees_only_its_own_channels(branches):
    """Zeroing one group's channels changes that branch's activations and leaves the other's identical."""
    torch.manual_seed(0)
    channels = sum(len(g) for g in branches)
    net = build(arch_kwargs(3, [8, 16, 32]), channels, branches=branches, fuse_stage=2).eval()
    seen: dict[int, list[torch.Tensor]] = {}
    for i, encoder in enumerate(net.encoders):
        encoder.register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, [o.clone() for o in out]))
    x = torch.randn(1, channels, 16, 16, 16)
    with torch.no_grad():
        net(x)
        before = dict(seen)
        for zeroed, group in enumerate(branches):
            y = x.clone()
            y[:, group] = 0
            net(y)
            other = 1 - zeroed
            assert all(torch.equal(a, b) for a, b in zip(before[other], seen[other])), f"branch {other} changed"
            assert not any(torch.equal(a, b) for a, b in zip(before[zeroed], seen[zeroed])), \
                f"branch {zeroed} did not see its channels {group}"


def test_nnunet_builds_the_network_from_the_plans_edit():
    """What nnU-Net's trainer and predictor do with the bundle's plans: the configuration inherits patch and
    preprocessed data from nnU-Net's, and its architecture is the dual-branch network with the groups."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = plans_for(arch_kwargs(4, [8, 16, 32, 64]))
    name = add_configuration(plans, "3d_fullres", [[1], [0]], None)
    config = PlansManager(json.loads(json.dumps(plans))).get_configuration(name)
    assert (config.patch_size, config.data_identifier) == ([32, 32, 32], "nnUNetPlans_3d_fullres")
    net = nnUNetTrainer.build_network_architecture(PlansManager(plans), config, 2, 3, False)
    assert isinstance(net, DualBranchUNet)
    assert (net.branches, net.fuse_stage) == ([[1], [0]], 2)
    with pytest.raises(ValueError, match="fuse-stage 4"):
        add_configuration(plans, "3d_fullres", [[1], [0]], 4)


def test_branches_by_name_alias_and_position():
    channels = ["T1", "T1c", "T2", "FLAIR"]
    assert parse_branches("T1,T1c|T2,FLAIR", channels) == [[0, 1], [2, 3]]
    assert parse_branches("t1ce | flair, 0, t2", channels) == [[1], [3, 0, 2]]
    assert parse_branches(None, channels) == [[0, 1], [2, 3]]
    assert parse_branches(None, ["FLAIR", "T1c", "T2"]) == [[0, 1], [2]]


@pytest.mark.parametrize("text,channels,message", [
    ("T1c|FLAIR", ["MRI"], "at least two image channels"),
    ("T1c", ["T1c", "FLAIR"], "two groups of channel names"),
    ("T1c|T2", ["T1c", "FLAIR"], "no channel 'T2'"),
    ("T1c,FLAIR|FLAIR", ["T1c", "FLAIR"], "FLAIR in both groups"),
    ("T1|T1c", ["T1", "T1c", "FLAIR"], "FLAIR in neither group"),
])
def test_bad_branches_are_refused_with_the_channels_listed(text, channels, message):
    with pytest.raises(InputError, match=message) as e:
        parse_branches(text, channels)
    assert "channel" in str(e.value)


def test_single_channel_data_is_refused_before_planning(project, train_cli):
    from conftest import copy_hippocampus

    copy_hippocampus(project / "input_train" / "hippo", 10)
    code, _, err = train_cli("-d", "hippo", "-l", "anterior,posterior", "-t", "5", "-f", "0",
                             "--trainer", "dualbranch", "--dry-run")
    assert code == 2
    assert "at least two image channels" in err and "0=MRI" in err
    assert not (project / "work" / "hippo" / "nnUNet_preprocessed").exists() or \
        not any((project / "work" / "hippo" / "nnUNet_preprocessed").rglob("*.json"))  # refused before planning


def test_branch_flags_need_the_dualbranch_trainer(project, train_cli):
    code, _, err = train_cli("-d", "x", "-l", "a", "--branches", "T1c|FLAIR")
    assert code == 2 and "--branches: only for --trainer dualbranch" in err


@pytest.mark.slow
def test_dual_branch_bundle_trains_and_predicts_on_brats_crops(tmp_path):
    """Real BraTS crops (FLAIR + T1c, regions): exe_train.py --trainer dualbranch, then exe_predict.py with
    no extra flags; the bundle keeps the groups by name and nnU-Net's predictor builds the same network."""
    copy_brats_crops(tmp_path / "input_train" / "brats", 4)
    done = subprocess.run(train_command(tmp_path, "brats", "--regions", "WT=1,2,3,4;TC=1,3,4;ET=4",
                                        "--trainer", "dualbranch", "--branches", "T1c|FLAIR", minutes=1.5,
                                        folds="full"),
                          capture_output=True, text=True, timeout=600, env=clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    bundle = tmp_path / "output_models" / "brats"
    card = json.loads((bundle / "model_card.json").read_text())
    network = card["network"]  # on a CPU both branches are built at half of nnU-Net's planned width
    planned = network["planned_features_per_stage"]
    assert network == {"class": CLASS_NAME, "branches": [["T1c"], ["FLAIR"]], "fuse_stage": network["fuse_stage"],
                       "branch_width": BRANCH_WIDTH, "width": 0.5, "planned_features_per_stage": planned,
                       "features_per_stage": [f // 2 for f in planned]}
    channels = card["channels"]
    assert channels.index("T1c") != channels.index("FLAIR")
    scans = tmp_path / "scans"
    (scans / "case").mkdir(parents=True)
    case = tmp_path / "input_train" / "brats" / "brats_2013_pat0001_1"
    for name in ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz"):
        (scans / "case" / name).symlink_to(case / name)
    out = tmp_path / "pred"
    done = subprocess.run([sys.executable, str(REPO / "exe_predict.py"), "-m", str(bundle), "-i", str(scans),
                           "-o", str(out), "--fast"], capture_output=True, text=True, timeout=300, env=clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    import nibabel

    [written] = [p for p in out.iterdir() if p.name.endswith(".nii.gz")]
    seg = np.asarray(nibabel.load(written).dataobj)
    assert seg.shape == (48, 48, 32)
    assert set(np.unique(seg)) <= {0, 1, 2, 3, 4}

    from medseg_auto.predict.bundle import open_bundle
    from medseg_auto.predict.engine import Settings, case_predictor

    predictor = case_predictor(open_bundle(bundle, None), Settings(False, 0.75, False), torch.device("cpu"))
    network = getattr(predictor, "predictor", predictor).network
    assert isinstance(network, DualBranchUNet)
    assert network.branches == [[channels.index("T1c")], [channels.index("FLAIR")]]
