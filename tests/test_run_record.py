"""The run's state as typed records: run.json as this version and the one before it wrote it reads back field
for field and writes back byte for byte (a resume across the upgrade); a damaged or hand-edited run.json is
refused with the file and the field named (exit 2), never a KeyError; the fold's clock (medseg_clock.json)
reads whole or partial; the run's time ledger continues across a resume."""
from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from medseg_auto.errors import InputError
from medseg_auto.fold import FoldRecord
from medseg_auto.manifest import ChannelsRecord, StageRecord
from medseg_auto.plan import PlanResult
from medseg_auto.report import model_card
from medseg_auto.run_record import (CLOCK_FILE, CaseRecord, FoldClock, FoldEntry, PlanRecord, RunRecord,
                                    TimeLedger)
from medseg_auto.train import FoldResult
from medseg_auto.trainers.epoch_plan import EpochPlanner, FoldBudget, _Speed
from medseg_auto.workspace import write_json_atomic

# A run.json literally as run.py wrote it before the typed record (a cascade interrupted in fold 1, fold 0
# done): the keys in the order the dict grew, ``phases`` and ``clock`` as the run kept them.
OLD_RUN_JSON = """{
  "arguments": "python3 exe_train.py -d brats -t 30 -f 0,1 --trainer cascade",
  "cases": {
    "case_001": {
      "images": ["/data/input_train/brats/images/case_001_t1.nii.gz", "/data/input_train/brats/images/case_001_flair.nii.gz"],
      "label": "/data/input_train/brats/labels/case_001.nii.gz"
    },
    "case_002": {
      "images": ["/data/input_train/brats/images/case_002_t1.nii.gz", "/data/input_train/brats/images/case_002_flair.nii.gz"],
      "label": "/data/input_train/brats/labels/case_002.nii.gz"
    }
  },
  "labels": {
    "original_to_nnunet": {"0": 0, "1": 1, "2": 2, "4": 3},
    "nnunet_to_original": {"0": 0, "1": 1, "2": 2, "3": 4},
    "names": {"1": "edema", "2": "non-enhancing", "3": "enhancing"},
    "regions": null,
    "regions_class_order": null
  },
  "input": "/data/input_train/brats",
  "layout": "paired",
  "skipped_cases": ["case_003"],
  "channels": {"keys": ["t1", "flair"], "nnunet_names": ["T1", "FLAIR"], "colour": []},
  "file_ending": ".nii.gz",
  "is_2d": false,
  "raw_dataset": "/work/brats/nnUNet_raw/Dataset742_brats",
  "name": "brats",
  "identity": {"folds": ["0", "1"], "configuration": "auto", "trainer": "cascade", "width": null,
               "settings": {}, "trainer_options": {}, "pretrained": null},
  "version": "0.1.0",
  "state": "interrupted",
  "phases": {"ingest": 3.21, "plan": 41.07, "fold_0": 612.4},
  "clock": {"budget": 1800.0, "spent": 701.3},
  "training_settings": {"device": "cpu", "torch_threads": 2, "augmentation_workers": 1, "nnunet_processes": 2,
                        "augmentation": "nnunet", "lr_shape": "constant_decay", "learning_rate": 0.01,
                        "decay_fraction": 0.3, "precision": "auto", "cpu_batch_voxels": 180000},
  "width": 0.5,
  "plan": {"configuration": "3d_fullres", "patch_size": [64, 80, 64], "planned_batch_size": 2,
           "seconds": {"fingerprint": 12.5, "planning": 3.1, "preprocessing": 25.47},
           "stages": [{"name": "roi", "trainer": "nnUNetTrainerRoi", "configuration": "3d_lowres_roi",
                       "share": 0.3}]},
  "folds": {
    "0": {"state": "done", "planned": 620.0,
          "result": {"fold": 0, "seconds": 430.2, "epochs": 9, "iterations": 180, "batch_size": 2,
                     "validation": "mirrored", "precision": "bf16", "dice": {"edema": 0.71, "enhancing": 0.55},
                     "folder": "/work/brats/nnUNet_results/Dataset742_brats/cas/fold_0", "compiled": false,
                     "warmup_seconds": 0.0,
                     "stages": {"roi": {"fold": 0, "seconds": 182.2, "epochs": 6, "iterations": 90,
                                        "batch_size": 2, "validation": "fast", "precision": "bf16", "dice": {},
                                        "folder": "/work/brats/nnUNet_results/Dataset742_brats/roi/fold_0",
                                        "compiled": false, "warmup_seconds": 0.0}}}},
    "1": {"state": "training", "planned": 615.5}
  }
}"""


@pytest.fixture
def frozen(monkeypatch):
    """The monotonic clock, set by hand."""
    now = {"t": 1000.0}
    monkeypatch.setattr("medseg_auto.run_record.time.monotonic", lambda: now["t"])
    return now


def _old(tmp_path: Path) -> Path:
    path = tmp_path / "run.json"
    path.write_text(OLD_RUN_JSON)
    return path


def test_a_run_json_of_the_version_before_reads_into_typed_fields(tmp_path, frozen):
    record = RunRecord.load(_old(tmp_path))
    assert record.state == "interrupted" and record.identity["trainer"] == "cascade" and record.width == 0.5
    assert record.cases["case_001"] == CaseRecord(
        ("/data/input_train/brats/images/case_001_t1.nii.gz", "/data/input_train/brats/images/case_001_flair.nii.gz"),
        "/data/input_train/brats/labels/case_001.nii.gz")
    assert record.channels == ChannelsRecord(("t1", "flair"), ("T1", "FLAIR"), ())
    assert record.labels.original_to_nnunet == {0: 0, 1: 1, 2: 2, 4: 3} and record.skipped_cases == ("case_003",)
    assert record.plan == PlanRecord("3d_fullres", (64, 80, 64), 2,
                                     {"fingerprint": 12.5, "planning": 3.1, "preprocessing": 25.47},
                                     (StageRecord("roi", "nnUNetTrainerRoi", "3d_lowres_roi", 0.3),))
    assert record.time.budget == 1800.0 and record.time.spent_before == 701.3
    assert record.time.phases == {"ingest": 3.21, "plan": 41.07, "fold_0": 612.4}
    done = record.folds["0"]
    assert done.state == "done" and done.planned == 620.0 and done.result.fold == 0
    assert done.result.final == FoldResult(0, 430.2, 9, 180, 2, "mirrored", "bf16", {"edema": 0.71, "enhancing": 0.55},
                                           "/work/brats/nnUNet_results/Dataset742_brats/cas/fold_0")
    assert done.result.stages["roi"].validation == "fast" and done.result.done
    assert record.folds["1"] == FoldEntry("training", 615.5, None)
    assert record.bundle is None and record.training_settings["cpu_batch_voxels"] == 180000


def test_the_record_writes_back_the_same_bytes(tmp_path, frozen):
    """Resuming across the upgrade keeps the file as it was: same keys, same order, same values."""
    before = tmp_path / "before.json"
    write_json_atomic(before, json.loads(OLD_RUN_JSON))
    record = RunRecord.load(before)
    record.save(tmp_path / "after.json")
    assert (tmp_path / "after.json").read_bytes() == before.read_bytes()


def test_a_record_made_as_run_py_makes_one_round_trips(tmp_path, frozen):
    """Fresh, then planned, then a fold trained here (a FoldRecord), then exported: each save reads back equal."""
    ledger = TimeLedger(600.0)
    record = RunRecord(arguments="python3 exe_train.py -d hippo -t 10", cases={"a": CaseRecord(("a.nii.gz",), "la.nii.gz")},
                       labels=RunRecord.from_dict(json.loads(OLD_RUN_JSON)).labels, input="/in/hippo",
                       layout="flat", channels=ChannelsRecord(("",), ("MRI",)), file_ending=".nii.gz", is_2d=False,
                       raw_dataset="/w/raw", name="hippo", identity={"folds": ["0"], "configuration": "auto"},
                       version="0.1.0", state="planning", time=ledger)
    path = tmp_path / "run.json"
    ledger.phases["ingest"] = 1.5
    frozen["t"] += 2.0
    record.save(path)
    data = json.loads(path.read_text())
    assert list(data)[-2:] == ["phases", "clock"] and data["clock"] == {"budget": 600.0, "spent": 2.0}
    assert "folds" not in data and "plan" not in data and "bundle" not in data  # not reached yet: left out
    assert RunRecord.load(path).to_dict() == data
    record.training_settings, record.width = {"device": "cpu"}, 0.5
    record.plan = PlanRecord("3d_fullres", (40, 56, 40), 9, {"planning": 2.0})
    record.folds["0"] = FoldEntry("training", 500.0)
    record.save(path)
    assert RunRecord.load(path).to_dict() == json.loads(path.read_text())
    record.folds["0"].state = "done"
    record.folds["0"].result = FoldRecord(0, {"": FoldResult(0, 480.0, 7, 70, 9, "fast", folder="/w/f0")})
    record.state, record.bundle = "exported", "/out/hippo"
    record.save(path)
    data = json.loads(path.read_text())
    assert data["folds"]["0"]["result"]["folder"] == "/w/f0" and data["bundle"] == "/out/hippo"
    assert list(data)[-5:] == ["training_settings", "width", "plan", "folds", "bundle"]
    loaded = RunRecord.load(path)
    assert loaded.to_dict() == data and loaded.folds == record.folds and loaded.plan == record.plan


@pytest.mark.parametrize("edit, named", [
    (lambda d: d.pop("labels"), "field 'labels' missing"),
    (lambda d: d.pop("clock"), "field 'clock' missing"),
    (lambda d: d["clock"].update(spent="701"), "field 'clock.spent' should be a number"),
    (lambda d: d.update(is_2d="no"), "field 'is_2d' should be true or false"),
    (lambda d: d["channels"].pop("nnunet_names"), "field 'channels.nnunet_names' missing"),
    (lambda d: d["labels"].update(names=[1, 2]), "field 'labels.names' should be an object of label names"),
    (lambda d: d["cases"]["case_002"].pop("label"), "field 'cases.case_002.label' missing"),
    (lambda d: d["phases"].update(plan="long"), "field 'phases' should be an object of numbers"),
    (lambda d: d["plan"]["stages"][0].pop("share"), "field 'plan.stages[0].share' missing"),
    (lambda d: d["folds"]["1"].update(state=None), "field 'folds.1.state' should be a string"),
    (lambda d: d["folds"]["0"]["result"].update(epochs=9.5), "field 'folds.0.result.epochs' should be a whole number"),
    (lambda d: d["folds"]["0"]["result"]["stages"]["roi"].pop("seconds"),
     "field 'folds.0.result.stages.roi.seconds' missing"),
])
def test_a_damaged_run_json_is_refused_naming_the_file_and_the_field(tmp_path, edit, named):
    data = json.loads(OLD_RUN_JSON)
    edit(data)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError) as e:
        RunRecord.load(path)
    assert str(path) in str(e.value) and named in str(e.value)
    assert "--restart" in str(e.value) and "bundle" not in str(e.value)  # the run record's remedy, not a bundle's
    assert e.value.exit_code == 2


@pytest.mark.parametrize("text, named", [("{\"state\": ", "is not valid JSON"), ("[1, 2]", "should hold a JSON object"),
                                         ("\xff\xfe", "is not valid JSON")])
def test_a_run_json_that_is_no_record_at_all_is_refused(tmp_path, text, named):
    path = tmp_path / "run.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(InputError, match=named) as e:
        RunRecord.load(path)
    assert str(path) in str(e.value) and "--restart" in str(e.value)


def test_restart_sets_a_damaged_record_aside_and_anything_else_refuses_it(tmp_path, capsys):
    from medseg_auto.run import _Run
    from medseg_auto.workspace import Workspace

    workspace = Workspace(tmp_path, "hippo")
    workspace.run_record.write_text('{"state": "training"}')

    def run(restart: bool) -> _Run:
        return _Run(types.SimpleNamespace(restart=restart), workspace, None, TimeLedger(60.0), tmp_path, None)

    with pytest.raises(InputError, match="field 'cases' missing"):
        run(False)._previous()
    assert run(True)._previous() is None and "--restart" in capsys.readouterr().err
    assert RunRecord.load(tmp_path / "none.json") is None  # no record yet: a fresh run


def test_the_ledger_counts_earlier_sessions_across_a_resume(tmp_path, frozen):
    first = TimeLedger(600.0)
    first.phases.update(ingest=2.0, plan=30.0)
    frozen["t"] += 250.0  # then killed; the last save was at 250 s
    record = RunRecord.from_dict(json.loads(OLD_RUN_JSON) | {"phases": first.phases, "clock": first.clock()})
    record.save(tmp_path / "run.json")
    frozen["t"] += 3600.0  # the rerun, an hour later, with another -t
    second = TimeLedger(900.0)
    assert second.elapsed() == 0.0
    second.resume(RunRecord.load(tmp_path / "run.json").time)
    assert second.spent_before == 250.0 and second.budget == 900.0 and second.phases == {"ingest": 2.0, "plan": 30.0}
    frozen["t"] += 50.0
    assert second.elapsed() == pytest.approx(300.0) and second.remaining() == pytest.approx(600.0)
    assert second.clock() == {"budget": 900.0, "spent": 300.0}


def _clock_as_written_before(folder: Path) -> dict:
    """medseg_clock.json as ``nnUNetTrainerTimeBudget._write_clock`` wrote it before the typed clock."""
    state = {"spent": 312.45678, "epochs": 7, "iterations": 140, "batch_size": 2,
             "speed": {"train_iter": 1.61, "val_iter": 0.52, "overhead": 2.3, "window": 0.4},
             "budget": {"seconds": 600.0, "spent": 120.0, "lr_shape": "constant_decay", "decay_fraction": 0.3,
                        "checkpoint_every": 120.0, "max_epoch_seconds": 120.0, "cpu_batch_voxels": 180000,
                        "batch_size": None, "learning_rate": None, "mirror_share": 0.15, "validation_share": 0.35,
                        "augmentation": "nnunet", "precision": "auto"},
             "validation": "fast", "precision": "bf16", "compiled": False, "warmup_seconds": 3.25, "ranks": 1,
             "global_batch_size": 2}
    with open(folder / CLOCK_FILE, "w") as f:
        json.dump(state, f, indent=1, default=float)
    return state


def test_the_fold_clock_reads_and_writes_the_file_the_trainer_wrote(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _clock_as_written_before(tmp_path / "a")
    clock = FoldClock.read(tmp_path / "a")
    assert clock.spent == 312.45678 and clock.epochs == 7 and clock.iterations == 140
    assert clock.speed == _Speed(1.61, 0.52, 2.3, 0.4) and clock.budget == FoldBudget(seconds=600.0, spent=120.0)
    assert (clock.validation, clock.precision, clock.warmup_seconds, clock.global_batch_size) == ("fast", "bf16", 3.25, 2)
    clock.write(str(tmp_path / "b"))
    assert (tmp_path / "b" / CLOCK_FILE).read_bytes() == (tmp_path / "a" / CLOCK_FILE).read_bytes()
    assert not list((tmp_path / "b").glob("*.tmp")) and FoldClock.read(tmp_path / "b") == clock
    assert FoldClock.read(tmp_path / "none") is None  # no checkpoint yet


def test_a_partial_fold_clock_reads_with_defaults():
    """A clock with only some fields (an older version's, or a fold that chose its precision and no more)."""
    clock = FoldClock.from_dict({"precision": "bf16"})
    assert clock == FoldClock(precision="bf16") and clock.spent == 0.0 and clock.speed == _Speed()
    assert FoldClock.from_dict({"spent": 12.0, "precision": None, "budget": {"seconds": 60.0, "gone": 1}}).budget \
        == FoldBudget(seconds=60.0)  # a setting this version does not know is left out


def test_a_damaged_fold_clock_is_refused_naming_the_file_and_the_field(tmp_path):
    _clock_as_written_before(tmp_path)
    path = tmp_path / CLOCK_FILE
    for edit, named in ((lambda d: d.update(epochs="7"), "field 'epochs' should be a whole number"),
                        (lambda d: d["speed"].update(train_iter=[1]), "field 'speed.train_iter' should be a number"),
                        (lambda d: d["budget"].pop("seconds"), "field 'budget.seconds' missing")):
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
        with pytest.raises(InputError, match=named) as e:
            FoldClock.read(tmp_path)
        assert str(path) in str(e.value) and "bundle" not in str(e.value)
        _clock_as_written_before(tmp_path)
    path.write_text('{"spent": 1')
    with pytest.raises(InputError, match="not valid JSON"):
        FoldClock.read(tmp_path)


def test_a_resumed_planner_continues_from_the_fold_clock(tmp_path):
    _clock_as_written_before(tmp_path)
    clock = FoldClock.read(tmp_path)
    planner = EpochPlanner(FoldBudget(seconds=600.0, spent=clock.spent), lambda mirrored: 40.0)
    planner.restore(clock)
    assert planner.speed == clock.speed and planner.speed is not clock.speed  # its own, updated as it goes
    assert planner.validation_mode == "fast" and planner.mode_fixed and planner.epoch == 7
    assert planner.warmup_seconds == 3.25


def test_the_model_card_reads_the_typed_record(tmp_path, frozen):
    """The card of a resumed run: its fields from run.json's record, its folds from the typed results."""
    record = RunRecord.load(_old(tmp_path))
    record.folds["1"] = FoldEntry("done", 615.5, FoldRecord(1, {
        "roi": FoldResult(1, 180.0, 6, 90, 2, "fast", "bf16"),
        "": FoldResult(1, 420.0, 8, 160, 2, "mirrored", "bf16", {"edema": 0.69, "enhancing": 0.51},
                       compiled=True, warmup_seconds=12.5)}))
    arch = {"network_class_name": "PlainConvUNet", "arch_kwargs": {"features_per_stage": [16, 32]}}
    plan = PlanResult("3d_fullres", {"configurations": {"3d_fullres": {
        "patch_size": [64, 80, 64], "batch_size": 2, "architecture": arch}}})
    card = model_card(record, plan, [record.folds["0"].result, record.folds["1"].result], "nnUNetTrainerCascade")
    old = json.loads(OLD_RUN_JSON)
    assert card["labels"] == old["labels"] and card["channels"] == ["T1", "FLAIR"] and card["training_cases"] == 2
    assert card["skipped_cases"] == ["case_003"] and card["input_layout"] == "paired"
    assert card["stages"] == old["plan"]["stages"] and card["training_settings"] == old["training_settings"]
    assert card["phases_seconds"] == old["phases"] and card["budget_minutes"] == 30.0
    assert card["time_used_seconds"] == 701.3 and card["pretrained_from"] is None
    assert card["folds"]["0"] == {"seconds": 430.2, "epochs": 9, "iterations": 180, "batch_size": 2,
                                  "validation": "mirrored", "dice": {"edema": 0.71, "enhancing": 0.55},
                                  "precision": "bf16",
                                  "stages": {"roi": {"seconds": 182.2, "epochs": 6, "iterations": 90, "batch_size": 2,
                                                     "validation": "fast", "dice": {}, "precision": "bf16"}}}
    assert card["folds"]["1"]["compiled"] and card["folds"]["1"]["warmup_seconds"] == 12.5
    assert card["cross_validation_dice"] == {"edema": 0.7, "enhancing": 0.53}
