"""End to end on real data: a tiny budgeted run of exe_train.py, its bundle, plain nnU-Net loading it,
and interrupted runs (SIGTERM, kill -9) that resume and finish. Each run is a separate process, as a
user's would be."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import BUDGET_MIN, REPO, clean_env as _env, copy_hippocampus, train_command, tree_digest

TOLERANCE_S = 15.0  # process start-up before the clock, and the export's last file moves


def _command(project: Path, *extra: str, minutes: float = BUDGET_MIN) -> list[str]:
    return train_command(project, "hippo", "-l", "anterior,posterior", *extra, minutes=minutes)


def test_tiny_run_exports_a_bundle_within_budget(trained):
    project, done, wall, before = trained
    assert done.returncode == 0, done.stderr[-3000:]
    assert wall <= BUDGET_MIN * 60 + TOLERANCE_S, f"run took {wall:.0f} s for a {BUDGET_MIN:g} min budget"
    bundle = project / "output_models" / "hippo"
    for name in ("dataset.json", "plans.json", "dataset_fingerprint.json", "medseg_auto.json", "model_card.json",
                 "README.md", "fold_0/checkpoint_final.pth", "fold_0/progress.png"):
        assert (bundle / name).is_file(), name
    assert "dataset" not in json.loads((bundle / "dataset.json").read_text())  # no paths of training files
    card = json.loads((bundle / "model_card.json").read_text())
    assert card["budget_minutes"] == BUDGET_MIN and card["time_used_seconds"] <= BUDGET_MIN * 60
    fold = card["folds"]["0"]
    assert fold["epochs"] >= 1 and fold["iterations"] >= fold["epochs"] and fold["batch_size"] >= 1
    assert set(card["cross_validation_dice"]) == {"anterior", "posterior"}
    assert all(0.0 <= d <= 1.0 for d in card["cross_validation_dice"].values())
    assert card["channels"] == ["MRI"] and card["training_cases"] == 12
    readme = (bundle / "README.md").read_text()
    assert "anterior" in readme and "| 0 |" in readme
    network = card["network"]  # on a CPU the network is nnU-Net's at half width, in the bundle's plans too
    assert network["width"] == 0.5 and "0.5 of nnU-Net's plan" in readme
    assert network["planned_features_per_stage"] == [2 * f for f in network["features_per_stage"]]
    arch = json.loads((bundle / "plans.json").read_text())["configurations"]["3d_fullres"]["architecture"]
    assert arch["arch_kwargs"]["features_per_stage"] == network["features_per_stage"]
    settings = card["training_settings"]  # the CPU defaults the run used, as nnU-Net read them
    assert settings["device"] == "cpu" and settings["torch_threads"] == (os.cpu_count() or 1)
    assert settings["augmentation_workers"] == max(1, (os.cpu_count() or 1) // 4)
    assert settings["nnunet_processes"] == max(1, min(4, os.cpu_count() or 1))  # set before nnU-Net read it
    assert settings["lr_shape"] == "constant_decay" and settings["cpu_batch_voxels"] > 0
    assert settings["augmentation"] == "nnunet" and settings["precision"] == "auto"
    from medseg_auto.trainers.precision import native_bf16  # auto: bf16 only where native and timed faster

    assert fold["precision"] in (("fp32", "bf16") if native_bf16() else ("fp32",))
    assert "(--precision auto: by the processor's bfloat16 support and a timed step)" in readme
    assert f"{settings['torch_threads']} torch thread(s)" in readme and "batch at most" in readme
    checkpoint = torch.load(bundle / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == "nnUNetTrainer" and "optimizer_state" not in checkpoint
    assert json.loads((bundle / "medseg_auto.json").read_text())["trainer"] == "nnUNetTrainerTimeBudget"
    assert not (project / "work" / "hippo").exists()  # removed after the verified export
    assert tree_digest(project / "input_train") == before
    assert "fold 0 | epoch 1 |" in done.stderr and "ETA" in done.stderr and "pseudo-Dice" in done.stderr
    assert done.stderr.count("[device] CPU, ") == 1  # the device, once, in our words; none of nnU-Net's remarks
    assert "Using device" not in done.stdout + done.stderr
    assert "perform_everything_on_device" not in done.stdout + done.stderr


def test_bundle_loads_in_plain_nnunet(trained, tmp_path):
    """nnU-Net's own command, no environment variables, on a case of the training data."""
    project, done, _, _ = trained
    assert done.returncode == 0
    scan = sorted((project / "input_train" / "hippo" / "images").iterdir())[0]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "case_0000.nii.gz").write_bytes(scan.read_bytes())
    predict = subprocess.run(["nnUNetv2_predict_from_modelfolder", "-i", str(tmp_path / "in"), "-o",
                              str(tmp_path / "out"), "-m", str(project / "output_models" / "hippo"), "-f", "0",
                              "-device", "cpu", "--disable_tta"], capture_output=True, text=True, timeout=300,
                             env=_env())
    assert predict.returncode == 0, predict.stderr[-3000:]
    import SimpleITK as sitk

    out = sitk.ReadImage(str(tmp_path / "out" / "case.nii.gz"))
    assert out.GetSize() == sitk.ReadImage(str(scan)).GetSize()
    assert set(sitk.GetArrayFromImage(out).ravel().tolist()) <= {0, 1, 2}


def test_existing_bundle_is_never_overwritten(trained):
    project, done, _, _ = trained
    assert done.returncode == 0
    bundle = project / "output_models" / "hippo"
    before = tree_digest(bundle)
    again = subprocess.run(_command(project), capture_output=True, text=True, timeout=120, env=_env())
    assert again.returncode == 2
    assert "already holds a model" in again.stderr and "--overwrite" in again.stderr
    assert tree_digest(bundle) == before
    assert not (project / "work" / "hippo").exists()  # refused before any work


BF16 = ("--precision", "bf16")  # the interrupted run trains in bfloat16 autocast, and its resumes keep it


def _start(project: Path, log: Path, minutes: float) -> subprocess.Popen:
    return subprocess.Popen(_command(project, *BF16, minutes=minutes), stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"), env=_env(), start_new_session=True)


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in log.read_text():
            return
        assert proc.poll() is None, f"run ended before '{text}':\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"'{text}' not seen in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def test_sigterm_then_kill9_resume_and_finish(tmp_path):
    project = tmp_path
    copy_hippocampus(project / "input_train" / "hippo", 10)
    minutes = 2.0
    record = project / "work" / "hippo" / "run.json"

    # 1. SIGTERM during training: checkpoint saved, resume command printed, exit 130
    first = _start(project, tmp_path / "first.log", minutes)
    _wait_for(tmp_path / "first.log", "fold 0 | epoch 2 |", first)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 130
    log = (tmp_path / "first.log").read_text()
    assert "Resume with:" in log and "exe_train.py -d hippo" in log
    fold = next((project / "work" / "hippo" / "nnUNet_results").rglob("fold_0"))
    assert (fold / "checkpoint_latest.pth").is_file()
    state = json.loads(record.read_text())
    assert state["state"] == "interrupted" and 0 < state["clock"]["spent"] < minutes * 60

    # 2. the same command resumes; a second run on the same dataset meanwhile is refused by the lock
    second = _start(project, tmp_path / "second.log", minutes)
    _wait_for(tmp_path / "second.log", "fold 0: resuming after epoch", second)
    rival = subprocess.run(_command(project, *BF16, minutes=minutes), capture_output=True, text=True, timeout=120,
                           env=_env())
    assert rival.returncode == 2 and "Another medseg_auto run" in rival.stderr
    _wait_for(tmp_path / "second.log", "| epoch", second)
    os.killpg(second.pid, signal.SIGKILL)  # no chance to save anything
    second.wait(timeout=60)
    spent_before_kill = json.loads(record.read_text())["clock"]["spent"]
    assert spent_before_kill > state["clock"]["spent"]

    # 3. resumes again after kill -9 (the lock died with the process) and finishes within the budget
    third = subprocess.run(_command(project, *BF16, minutes=minutes), capture_output=True, text=True, timeout=600,
                           env=_env())
    assert third.returncode == 0, third.stderr[-3000:]
    assert "Resuming the unfinished run" in third.stderr
    card = json.loads((project / "output_models" / "hippo" / "model_card.json").read_text())
    assert card["time_used_seconds"] <= minutes * 60 + TOLERANCE_S
    assert card["folds"]["0"]["epochs"] >= 2
    assert card["training_settings"]["precision"] == "bf16" and card["folds"]["0"]["precision"] == "bf16"
    assert "training forward in bfloat16 autocast (--precision bf16)" in \
        (project / "output_models" / "hippo" / "README.md").read_text()


@pytest.mark.slow
def test_pretrained_fine_tunes_from_the_bundle_and_refuses_other_channels(trained, tmp_path):
    """--pretrained (with --consume-input): nnU-Net's plans transfer and weights; wrong channels refused."""
    project, done, _, _ = trained
    assert done.returncode == 0
    source = project / "output_models" / "hippo"
    copy_hippocampus(tmp_path / "input_train" / "hippo", 8)
    command = _command(tmp_path, "--pretrained", str(source), "--consume-input", minutes=1.5)
    tuned = subprocess.run(command, capture_output=True, text=True, timeout=600, env=_env())
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    assert f"starting from the weights of {source}" in tuned.stderr
    new = tmp_path / "output_models" / "hippo"
    plans = [json.loads((b / "plans.json").read_text()) for b in (source, new)]
    assert plans[0]["configurations"]["3d_fullres"]["architecture"] == \
        plans[1]["configurations"]["3d_fullres"]["architecture"]  # nnU-Net's plans transfer: same network
    assert json.loads((new / "model_card.json").read_text())["pretrained_from"] == str(source)
    # --consume-input: the drop-in copy goes, but only after the verified export; input_train/ stays
    assert not (tmp_path / "input_train" / "hippo").exists() and (tmp_path / "input_train").is_dir()

    brats = tmp_path / "other"
    from conftest import copy_brats

    copy_brats(brats / "input_train" / "brats")
    refused = subprocess.run([sys.executable, str(REPO / "exe_train.py"), "-d", "brats", "-f", "0", "-t", "5",
                              "--label-pattern", "OTMulti*", "--pretrained", str(source), "--input-dir",
                              str(brats / "input_train"), "--work-dir", str(brats / "work"), "--output-dir",
                              str(brats / "out")], capture_output=True, text=True, timeout=300, env=_env())
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "trained on 1 channel(s) (MRI)" in refused.stderr and "this data has 2" in refused.stderr


@pytest.mark.parametrize("labels, keys, expected", [
    ({"background": 0, "anterior": 1, "posterior": 2}, ["1", "2"], ["anterior", "posterior"]),
    ({"background": 0, "WT": [1, 2, 3, 4], "TC": [1, 3, 4], "ET": [4]}, ["(1, 2, 3, 4)", "(1, 3, 4)", "(4,)"],
     ["WT", "TC", "ET"]),  # nnU-Net keys a region of one label as "(4,)"
])
def test_validation_dice_is_named_by_label_or_region(tmp_path, labels, keys, expected):
    from medseg_auto.train import _validation_dice

    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"mean": {k: {"Dice": 0.5 + i / 10} for i, k in enumerate(keys)}}))
    assert _validation_dice(summary, {"labels": labels}) == {n: 0.5 + i / 10 for i, n in enumerate(expected)}


def test_a_stop_asked_for_as_the_fold_ends_is_not_lost(tmp_path):
    """SIGTERM between the fold's last step and the end of its training (when the trainer no longer looks):
    the fold stops before its validation instead of running on to the export."""
    from medseg_auto.plan import PlanResult
    from medseg_auto.train import StopRequest, train_fold
    from medseg_auto.trainers.time_budget import FoldBudget, TrainingInterrupted
    from medseg_auto.workspace import Workspace

    (tmp_path / "data").mkdir()
    workspace = Workspace.create(tmp_path / "work", "stop", tmp_path / "data")
    (workspace.preprocessed / workspace.nnunet_name).mkdir(parents=True)
    (workspace.preprocessed / workspace.nnunet_name / "dataset.json").write_text("{}")
    stop = StopRequest()

    class Trainer:
        validation_mode = "mirrored"

        def __init__(self, plans, configuration, fold, dataset_json, device):
            pass

        def run_training(self):
            stop.event.set()  # the signal handler, as the last epoch ends

        def perform_actual_validation(self):
            raise AssertionError("validated after the user asked to stop")

    with pytest.raises(TrainingInterrupted, match="fold 0 interrupted after its training"):
        train_fold(workspace, PlanResult("3d_fullres", {"configurations": {}}, {}), 0, FoldBudget(seconds=60.0),
                   Trainer, "cpu", stop)


def test_another_dicom_series_is_another_run_to_resume(tmp_path):
    """``--series`` picks other images in the same folders: a rerun with another one must not continue the
    unfinished run (the data identity sees the same folders)."""
    from medseg_auto.ingest import IngestOptions
    from medseg_auto.run import RunOptions, _describe

    def identity(series):
        ingest = IngestOptions(dataset_dir=tmp_path, image_type=["CT"], series=series)
        return RunOptions(name="ct", ingest=ingest, minutes=10, folds=[0]).identity()

    assert "series" not in identity(None)  # runs without DICOM keep the identity earlier versions wrote
    assert identity("T1 AX") != identity("T1 AX repeat")
    assert _describe(identity("T1 AX")).endswith("--series T1 AX")
