"""Plans edits of the plan stage: the network narrowed for a CPU, and the CLI's checks of --width."""
from __future__ import annotations

import json

import pytest

from conftest import copy_hippocampus
from medseg_auto.errors import InputError
from medseg_auto.plan import WIDTH_KEY, lowres_hint, narrow_network

PLANNED = [32, 64, 128, 256, 320]


def _plans() -> dict:
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 5, "features_per_stage": list(PLANNED)}, "_kw_requires_import": []}
    return {"configurations": {"3d_fullres": {"patch_size": [40, 56, 40], "architecture": arch},
                               "3d_child": {"inherits_from": "3d_fullres", "batch_size": 2}}}


def _features(plans: dict, configuration: str) -> list[int]:
    return plans["configurations"][configuration]["architecture"]["arch_kwargs"]["features_per_stage"]


def test_narrowing_scales_every_stage_and_keeps_nnunets_widths():
    plans = _plans()
    assert narrow_network(plans, "3d_fullres", 0.5)
    assert _features(plans, "3d_fullres") == [16, 32, 64, 128, 160]
    assert plans["configurations"]["3d_fullres"][WIDTH_KEY] == {"width": 0.5, "planned_features_per_stage": PLANNED}
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [40, 56, 40]  # nothing else changes
    json.dumps(plans)  # still JSON for nnU-Net's plans file


def test_narrowing_is_applied_once_and_undone_from_nnunets_widths():
    plans = _plans()
    narrow_network(plans, "3d_fullres", 0.5)
    assert not narrow_network(plans, "3d_fullres", 0.5)  # plans kept from an earlier run: not narrowed twice
    assert _features(plans, "3d_fullres") == [16, 32, 64, 128, 160]
    assert narrow_network(plans, "3d_fullres", 0.25)  # another width starts again from nnU-Net's plan
    assert _features(plans, "3d_fullres") == [8, 16, 32, 64, 80]
    assert narrow_network(plans, "3d_fullres", 1.0)
    assert _features(plans, "3d_fullres") == PLANNED and WIDTH_KEY not in plans["configurations"]["3d_fullres"]
    assert not narrow_network(_plans(), "3d_fullres", 1.0)


def test_narrowing_an_inheriting_configuration_leaves_its_parent_alone():
    plans = _plans()
    assert narrow_network(plans, "3d_child", 0.5)
    assert _features(plans, "3d_child") == [16, 32, 64, 128, 160]
    assert _features(plans, "3d_fullres") == PLANNED
    assert narrow_network(plans, "3d_child", 0.125)
    assert _features(plans, "3d_child") == [8, 8, 16, 32, 40]  # at least 8 features per stage


@pytest.mark.parametrize("width", [0.0, -0.5, 1.5])
def test_a_width_outside_0_1_is_refused(width):
    with pytest.raises(InputError, match="--width"):
        narrow_network(_plans(), "3d_fullres", width)


@pytest.mark.parametrize("args, message", [(("--width", "2"), "share of nnU-Net's planned features"),
                                           (("--width", "0.5", "--pretrained", "old"), "keeps the network")])
def test_cli_refuses_bad_width_before_reading_the_data(project, train_cli, args, message):
    copy_hippocampus(project / "input_train" / "hippo", 2)
    code, _, err = train_cli("-d", "hippo", "-t", "5", "-f", "0", *args)
    assert code == 2 and message in err, err
    assert not (project / "work").exists()


def test_lowres_where_nnunet_planned_none_is_planned_coarser_by_its_planner(project, train_cli):
    """-c 3d_lowres on images nnU-Net plans no low resolution for: a coarser configuration from nnU-Net's
    planner (spacing, patch and network its own), preprocessed and chosen, the plans file kept in step."""
    copy_hippocampus(project / "input_train" / "hippo", 6)
    code, out, err = train_cli("-d", "hippo", "-l", "anterior,posterior", "-t", "5", "-f", "0", "-c", "3d_lowres",
                               "--dry-run")
    assert code == 0, err
    assert "nnU-Net planned no 3d_lowres" in err and "configuration 3d_lowres," in out
    base = next((project / "work" / "hippo" / "nnUNet_preprocessed").glob("Dataset*"))
    configurations = json.loads((base / "nnUNetPlans.json").read_text())["configurations"]
    low, full = configurations["3d_lowres"], configurations["3d_fullres"]
    assert all(lo >= 2 * fu for lo, fu in zip(low["spacing"], full["spacing"]))  # at least twice as coarse
    assert low["data_identifier"] == "nnUNetPlans_3d_lowres" and any((base / "nnUNetPlans_3d_lowres").iterdir())
    assert all(lo < fu for lo, fu in zip(low["patch_size"], full["patch_size"]))


@pytest.mark.parametrize("device, requested, patch, hinted", [
    ("cpu", "auto", [96, 160, 160], True),      # full-size BraTS on a CPU
    ("cuda", "auto", [96, 160, 160], False),
    ("cpu", "3d_fullres", [96, 160, 160], False),  # chosen on purpose
    ("cpu", "auto", [40, 56, 40], False),       # hippocampus
    ("cpu", "auto", [1024, 1024], False),       # 2D
])
def test_a_large_3d_patch_on_a_cpu_points_to_lowres(device, requested, patch, hinted):
    hint = lowres_hint(device, requested, patch)
    assert (hint is not None) == hinted
    if hinted:
        assert "160x160x96" in hint and "-c 3d_lowres" in hint


def test_preprocessing_workers_are_capped_as_nnunet_caps_them(tmp_path, monkeypatch):
    """A 64-core server runs 4 workers on full-resolution data and 8 elsewhere, as nnU-Net's own command does
    (each worker holds whole volumes); a small machine uses every core."""
    from nnunetv2.experiment_planning import plan_and_preprocess_api

    from medseg_auto.plan import preprocess_configuration, preprocessing_processes
    from medseg_auto.workspace import Workspace

    assert preprocessing_processes(None, 64) == 8 and preprocessing_processes("3d_fullres", 64) == 4
    assert preprocessing_processes("2d", 64) == 8 and preprocessing_processes("3d_roi", 64) == 8
    assert preprocessing_processes("3d_fullres", 2) == 2 and preprocessing_processes(None, 1) == 1
    seen = []
    monkeypatch.setattr(plan_and_preprocess_api, "preprocess", lambda ids, **kw: seen.append(kw["num_processes"]))
    (tmp_path / "data").mkdir()
    workspace = Workspace.create(tmp_path / "work", "caps", tmp_path / "data")
    plans = _plans()
    plans["configurations"]["3d_fullres"]["spacing"] = [1.0, 1.0, 1.0]
    (workspace.preprocessed / workspace.nnunet_name).mkdir(parents=True)
    (workspace.preprocessed / workspace.nnunet_name / "nnUNetPlans.json").write_text(json.dumps(plans))
    preprocess_configuration(workspace, plans, "3d_fullres", 64)
    assert seen == [[4]]
