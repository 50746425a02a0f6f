"""Folds in parallel (``--workers`` on a CPU, ``--gpus`` on CUDA) and the fold process they run in."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import clean_env, copy_hippocampus, train_command
from medseg_auto.errors import InputError
from medseg_auto.fold import FoldJob, FoldRecord, StageSpec, record_path
from medseg_auto.parallel import Slot, fold_slots, parallel_shares, rendezvous_arguments, rounds_left
from medseg_auto.train import FoldResult

CPU, CUDA = SimpleNamespace(type="cpu"), SimpleNamespace(type="cuda")


def test_cpu_workers_split_the_cores_and_one_fold_stays_in_the_run(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    slots = fold_slots(CPU, workers=4, folds=5)
    assert [s.threads for s in slots] == [4] * 4 and all(s.ranks == 1 and not s.env for s in slots)
    assert len(fold_slots(CPU, workers=4, folds=2)) == 2  # never more processes than folds
    assert fold_slots(CPU, workers=4, folds=1) == [] and fold_slots(CPU, workers=1, folds=5) == []
    ddp = fold_slots(CPU, ddp=2, folds=5)
    assert len(ddp) == 1 and ddp[0].ranks == 2 and ddp[0].threads == 8


def test_gpu_slots_name_the_physical_gpus_a_child_must_see(monkeypatch):
    monkeypatch.setattr("medseg_auto.parallel.visible_gpus", lambda: ["2", "3", "5"])
    assert [s.env for s in fold_slots(CUDA, folds=5)] == [{"CUDA_VISIBLE_DEVICES": g} for g in ("2", "3", "5")]
    assert [s.env for s in fold_slots(CUDA, gpus=[1], folds=5)] == [{"CUDA_VISIBLE_DEVICES": "3"}]
    assert len(fold_slots(CUDA, folds=2)) == 2 and fold_slots(CUDA, folds=1) == []
    ddp = fold_slots(CUDA, ddp=2, folds=5)
    assert len(ddp) == 1 and ddp[0].env == {"CUDA_VISIBLE_DEVICES": "2,3"} and ddp[0].ranks == 2
    with pytest.raises(InputError, match="GPU 3 is not one of them"):
        fold_slots(CUDA, gpus=[0, 3], folds=5)
    with pytest.raises(InputError, match="--ddp 4: only 3 GPU"):
        fold_slots(CUDA, ddp=4, folds=1)


def test_fold_processes_start_alone_or_through_torchrun(tmp_path):
    job = tmp_path / "fold_0.job.json"
    assert Slot("worker 1", threads=1).command(job)[1:] == ["-m", "medseg_auto.fold", str(job)]
    assert Slot("GPUs 0,1", ranks=2).command(job)[1:] == ["-m", "torch.distributed.run", "--standalone",
                                                          "--nproc-per-node=2", "-m", "medseg_auto.fold", str(job)]
    meet = rendezvous_arguments(2, "node1:29500")
    assert meet == ["--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node1:29500"]
    assert Slot("here", ranks=1, rendezvous=meet).command(job)[3:6] == meet
    assert rendezvous_arguments(1, None) == []
    with pytest.raises(InputError, match="--rdzv-endpoint HOST:PORT"):
        rendezvous_arguments(2, None)


def test_parallel_folds_share_the_time_by_rounds():
    # 5 folds on 2 slots: 3 rounds of 200 s each; a resumed fold keeps what it used before
    shares = parallel_shares(600.0, {0: 0.0, 1: 50.0, 2: 0.0, 3: 0.0, 4: 0.0}, 2)
    assert shares == {0: 200.0, 1: 250.0, 2: 200.0, 3: 200.0, 4: 200.0}
    assert parallel_shares(600.0, {0: 0.0, 1: 0.0}, 2) == {0: 600.0, 1: 600.0}


@pytest.mark.parametrize("folds, slots", [(4, 2), (5, 3), (6, 3), (5, 2), (5, 4), (2, 2)])
def test_each_fold_started_gets_an_equal_share_of_the_run(folds, slots):
    """Folds start as slots free up (the next round's folds at slightly different times); each gets the time
    left over the rounds left, so all end at the budget with equal shares, whatever the order of endings."""
    total, rounds = 1000.0, -(-folds // slots)
    share = total / rounds
    for started in range(folds):
        now = (started // slots) * share + 0.01 * (started % slots)  # the slot frees up a little later
        got = (total - now) / rounds_left(started, folds, slots)
        assert abs(got - share) < 0.05 * share, (started, got, share)


def test_fold_job_and_record_round_trip(tmp_path):
    job = FoldJob(str(tmp_path), "hippo", 1, 300.0, {"configurations": {}},
                  [StageSpec("roi", "medseg_auto.trainers.cascade:nnUNetTrainerCascadeROI", "3d_roi", 0.3),
                   StageSpec("", "medseg_auto.trainers.cascade:nnUNetTrainerCascadeCoord", "3d_coord", 0.7)],
                  {"lr_shape": "poly"}, "cpu", 1, None)
    path = job.save(tmp_path / "fold_1.job.json")
    assert FoldJob.load(path) == job
    assert [s.stage().trainer.__name__ for s in job.stages] == ["nnUNetTrainerCascadeROI",
                                                                 "nnUNetTrainerCascadeCoord"]
    out = record_path(path)
    assert out.name == "fold_1.record.json" and FoldRecord.load(out) is None
    record = FoldRecord(1, {"roi": FoldResult(1, 90.0, 3, 30, 2, "fast", folder="a")})
    record.save(out)
    assert not FoldRecord.load(out).done  # the ROI stage alone: the fold resumes at its second stage
    record.stages[""] = FoldResult(1, 200.0, 5, 50, 2, "mirrored", dice={"WT": 0.8}, folder="b")
    record.save(out)
    loaded = FoldRecord.load(out)
    assert loaded.done and loaded.result()["dice"] == {"WT": 0.8} and loaded.result()["stages"]["roi"]["folder"] == "a"


def test_the_fold_entry_point_refuses_a_missing_job(tmp_path):
    from medseg_auto.fold import main

    assert main([str(tmp_path / "nothing.job.json")]) == 2


def test_cli_refuses_workers_on_gpus_and_gpus_on_a_cpu(project, train_cli):
    copy_hippocampus(project / "input_train" / "hippo", 2)
    code, _, err = train_cli("-d", "hippo", "--device", "cpu", "--gpus", "0", "--check")
    assert code == 2 and "--gpus with --device cpu" in err
    code, _, err = train_cli("-d", "hippo", "--device", "cuda", "--workers", "2", "--check")
    assert code == 2 and "--workers is for CPU training" in err
    code, _, err = train_cli("-d", "hippo", "--gpus", "0,x", "--check")
    assert code == 2 and "--gpus '0,x'" in err
    code, _, err = train_cli("-d", "hippo", "--pretrained", str(project), "--ddp", "2", "--check")
    assert code == 2 and "--pretrained with --ddp/--nnodes" in err
    code, _, err = train_cli("-d", "hippo", "--nnodes", "2", "--check")
    assert code == 2 and "--rdzv-endpoint HOST:PORT" in err


def _wait_for(log: Path, pattern: str, proc: subprocess.Popen, timeout: float = 300.0) -> re.Match:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = re.search(pattern, log.read_text())
        if found:
            return found
        assert proc.poll() is None, f"run ended before '{pattern}':\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"'{pattern}' not seen in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def test_two_folds_at_once_one_killed_then_resumed_and_exported(tmp_path):
    """Two fold processes on two CPU workers; a kill -9 of one stops the other with a checkpoint, the run
    says how to resume, and the same command then resumes both and exports a two-fold bundle."""
    project = tmp_path
    copy_hippocampus(project / "input_train" / "hippo", 10)
    command = train_command(project, "hippo", "-l", "anterior,posterior", "--workers", "2", minutes=2.0,
                            folds="0,1")
    log = tmp_path / "first.log"
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=clean_env(),
                             start_new_session=True)
    pid = int(_wait_for(log, r"fold 1: own process (\d+)", first).group(1))
    clocks = list((project / "work" / "hippo" / "nnUNet_results").rglob("medseg_clock.json"))
    end = time.monotonic() + 120
    while len(clocks) < 2 and time.monotonic() < end:  # each fold has saved a checkpoint
        time.sleep(0.5)
        clocks = list((project / "work" / "hippo" / "nnUNet_results").rglob("medseg_clock.json"))
    assert len(clocks) == 2, log.read_text()[-3000:]
    os.kill(pid, signal.SIGKILL)
    assert first.wait(timeout=240) == 130, log.read_text()[-3000:]
    text = log.read_text()
    assert "fold 1's process was killed (signal 9)" in text and "Resume with:" in text
    record = json.loads((project / "work" / "hippo" / "run.json").read_text())
    assert record["state"] == "interrupted"
    assert {f: e["state"] for f, e in record["folds"].items()} == {"0": "training", "1": "training"}
    folds = {p.name: p for p in (project / "work" / "hippo" / "nnUNet_results").rglob("fold_*")}
    assert (folds["fold_0"] / "checkpoint_latest.pth").is_file()  # fold 0 was stopped: it saved its epoch

    second = subprocess.run(command, capture_output=True, text=True, timeout=600, env=clean_env())
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Resuming the unfinished run" in second.stderr and "fold 0: resuming after epoch" in second.stderr
    card = json.loads((project / "output_models" / "hippo" / "model_card.json").read_text())
    assert set(card["folds"]) == {"0", "1"} and all(f["epochs"] >= 2 for f in card["folds"].values())
    assert card["training_settings"]["fold_processes"]["at_once"] == 2
    assert card["training_settings"]["fold_processes"]["torch_threads_per_rank"] == max(1, (os.cpu_count() or 1) // 2)
    assert card["time_used_seconds"] <= 2.0 * 60 + 20
    assert sorted(p.name for p in (project / "output_models" / "hippo").rglob("fold_*")) == ["fold_0", "fold_1"]
    # nothing of the killed fold process is left behind (nnU-Net's augmentation workers outlive a kill -9)
    leftover = subprocess.run(["pgrep", "-f", str(project / "work")], capture_output=True, text=True).stdout
    assert not leftover.strip(), leftover


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_one_fold_on_two_gloo_ranks_through_torchrun(tmp_path):
    """``--ddp 2`` on a CPU: the run starts torchrun, two gloo ranks train fold 0, the bundle is exported."""
    project = tmp_path
    copy_hippocampus(project / "input_train" / "hippo", 10)
    done = subprocess.run(train_command(project, "hippo", "-l", "anterior,posterior", "--device", "cpu",
                                        "--ddp", "2", minutes=2.0), capture_output=True, text=True, timeout=600,
                          env=clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch.distributed.run --standalone --nproc-per-node=2" in done.stderr
    card = json.loads((project / "output_models" / "hippo" / "model_card.json").read_text())
    assert card["training_settings"]["fold_processes"]["ranks_per_fold"] == 2
    assert card["folds"]["0"]["epochs"] >= 2


@pytest.mark.slow
def test_two_machines_meet_through_torchrun_rendezvous(tmp_path):
    """``--nnodes 2``: the run starts its rank and prints the command for the other machine; that command,
    run as a second process here, joins the rendezvous and the fold trains on both."""
    import shlex
    import sys

    project = tmp_path
    copy_hippocampus(project / "input_train" / "hippo", 10)
    log = tmp_path / "first.log"
    command = train_command(project, "hippo", "-l", "anterior,posterior", "--device", "cpu", "--nnodes", "2",
                            "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", minutes=2.5)
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=clean_env())
    other = _wait_for(log, r"on each other machine.*\n  torchrun (.+)\n", first).group(1)
    env = clean_env() | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    second = subprocess.run([sys.executable, "-m", "torch.distributed.run", *shlex.split(other)],
                            capture_output=True, text=True, timeout=600, env=env)
    assert first.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    card = json.loads((project / "output_models" / "hippo" / "model_card.json").read_text())
    assert card["folds"]["0"]["epochs"] >= 2


def test_gpus_on_a_machine_without_cuda_is_refused_before_planning(project, train_cli):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    copy_hippocampus(project / "input_train" / "hippo", 6)
    code, _, err = train_cli("-d", "hippo", "-f", "0", "-t", "30", "--gpus", "0")  # --device auto: the CPU
    assert code == 2 and "--gpus: no CUDA GPU is visible" in err
    assert not (project / "work" / "hippo" / "nnUNet_preprocessed").exists()


def test_model_card_says_what_each_fold_process_had():
    """The card's line on the machine gives each fold process's threads and workers, not the launcher's."""
    from medseg_auto.report import _settings_text

    settings = {"device": "cpu", "torch_threads": 2, "augmentation_workers": 1, "precision": "fp32", "lr_shape": "poly",
                "fold_processes": {"at_once": 2, "ranks_per_fold": 1, "torch_threads_per_rank": 1,
                                   "augmentation_workers_per_rank": 0, "where": ["cpu worker 1", "cpu worker 2"]}}
    folds = {"0": {"batch_size": 2, "precision": "fp32"}, "1": {"batch_size": 2, "precision": "fp32"}}
    text = _settings_text(settings, folds, 7)
    assert text.startswith("- Trained on cpu: 2 fold process(es) at once (cpu worker 1, cpu worker 2), each "
                           "process with 1 torch thread(s), no augmentation worker(s)"), text
    alone = _settings_text({k: v for k, v in settings.items() if k != "fold_processes"}, folds, 7)
    assert alone.startswith("- Trained on cpu: 2 torch thread(s), 1 augmentation worker(s);"), alone
