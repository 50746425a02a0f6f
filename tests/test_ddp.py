"""One fold trained by two DDP ranks on CPUs (gloo), as ``torchrun --nproc_per_node=2`` starts them: every time
decision is rank 0's, so both ranks run the same epochs and learning rates and stop together, even when one
rank's clock is late; only rank 0 writes the fold's files.

The ranks are subprocesses of this file (``python tests/test_ddp.py MODE RANK SPEC``) with torchrun's
variables, one thread each; each rank has its own nnU-Net results folder, so what rank 1 writes shows. On an
idle 2-core machine the training test takes about 55 s (preprocessing included), twice that on a busy one.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, copy_hippocampus

RANKS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ranks(mode: str, spec: dict, tmp_path: Path, env: dict | None = None, timeout: float = 240.0) -> list[dict]:
    """Start RANKS processes of this file in ``mode`` with torchrun's variables; their results, rank by rank.
    A rank still running at ``timeout`` means a hang: every rank is killed and the test fails."""
    port, procs, logs = _free_port(), [], [tmp_path / f"{mode}_rank{rank}.log" for rank in range(RANKS)]
    spec_file = tmp_path / f"{mode}.json"
    spec_file.write_text(json.dumps(spec))
    for rank in range(RANKS):
        rank_env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")} | (env or {}) | {
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(RANKS), "OMP_NUM_THREADS": "1", "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        if "results" in spec:  # each rank its own results folder: what rank 1 writes shows
            rank_env["nnUNet_results"] = str(Path(spec["results"]) / f"rank{rank}")
        with open(logs[rank], "w") as log:
            procs.append(subprocess.Popen([sys.executable, __file__, mode, str(rank), str(spec_file)], env=rank_env,
                                          stdout=log, stderr=subprocess.STDOUT, cwd=REPO))
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
            proc.wait()
        pytest.fail(f"the ranks hung ({timeout:.0f} s):\n" + "\n".join(log.read_text()[-1500:] for log in logs))
    for rank, proc in enumerate(procs):
        assert proc.returncode == 0, f"rank {rank} failed:\n{logs[rank].read_text()[-4000:]}"
    return [json.loads((tmp_path / f"{mode}_rank{rank}.result.json").read_text()) for rank in range(RANKS)]


# -- the collectives alone: quick ------------------------------------------------------------------------------
def test_rank_0_decides_and_any_rank_can_stop(tmp_path):
    results = _run_ranks("collectives", {}, tmp_path, timeout=120.0)
    for rank, out in enumerate(results):
        assert out["rank"] == rank and out["world"] == RANKS
        assert out["values"] == [1.5, -2.0]  # rank 0's, though rank 1 sent 2.5 and 8.0
        assert out["flags"] == [True, False]  # rank 1 raised the first flag
        assert out["agree"] == 3.0 and out["any"] is True and out["none"] is False
        assert out["device"] == "cpu"  # the device asked for stays a CPU; CUDA would be cuda:LOCAL_RANK


# -- a real fold -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hippo_2d(tmp_path_factory) -> dict:
    """Six real hippocampus cases, ingested, planned and preprocessed by medseg_auto for nnU-Net's 2d
    configuration (slices of 56 x 40: a small network), with nnU-Net's splits written up front (two ranks
    would otherwise both write them)."""
    import numpy as np
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    from medseg_auto.ingest import IngestOptions, check_dataset, convert
    from medseg_auto.ingest.labels import LabelRequest
    from medseg_auto.plan import plan_and_preprocess
    from medseg_auto.workspace import Workspace

    root = tmp_path_factory.mktemp("ddp")
    data = copy_hippocampus(root / "input" / "hippo", 6)
    checked = check_dataset(IngestOptions(data, labels=LabelRequest(names=["anterior", "posterior"]), folds=[0, 1],
                                          progress=False))
    workspace = Workspace.create(root / "work", "hippo", data)
    convert(checked, workspace, progress=False)
    plan = plan_and_preprocess(workspace, "2d", checked.is_2d, processes=2, width=0.5)
    base = workspace.preprocessed / workspace.nnunet_name
    keys = sorted(p.name.split(".")[0] for p in (base / "gt_segmentations").iterdir())
    splits = generate_crossval_split(list(np.sort(keys)), seed=12345, n_splits=5)
    (base / "splits_final.json").write_text(json.dumps(splits))
    env = {k: v for k, v in workspace.environment().items() if k != "nnUNet_results"}
    return {"env": env, "base": str(base), "configuration": plan.configuration, "root": str(root)}


def test_two_ranks_train_one_fold_on_rank_0s_clock(hippo_2d, tmp_path):
    """Fold 0 for a 50 s budget with rank 1's clock 500 s late (alone it would stop at once and train at a
    zero rate), validated; then fold 1 until rank 1 is asked to stop at its 8th step."""
    results = tmp_path / "results"
    spec = {"base": hippo_2d["base"], "configuration": hippo_2d["configuration"], "results": str(results),
            "seconds": 50.0, "late": 500.0, "stop_at": 7}
    rank0, rank1 = _run_ranks("train", spec, tmp_path, env=hippo_2d["env"], timeout=300.0)

    timed, other = rank0["timed"], rank1["timed"]
    assert timed["end"] == other["end"] == "time up"
    assert len(timed["epochs"]) >= 2
    assert other["epochs"] == timed["epochs"]  # iterations, validation steps, mode, reserve: rank 0's
    assert other["lrs"] == timed["lrs"] and len(timed["lrs"]) == sum(e[1] for e in timed["epochs"])
    assert timed["lrs"][-1] < timed["lrs"][0] == 0.01  # the rate decayed on rank 0's clock (rank 1's: zero)
    assert other["logged_lrs"] == timed["logged_lrs"] and other["current_epoch"] == timed["current_epoch"]
    assert other["precision"] == timed["precision"]
    assert (timed["batch_size"], other["batch_size"]) == (2, 2)  # the user's 5, in equal shares, split by nnU-Net
    assert timed["device"] == other["device"] == "cpu" and timed["ddp"] and other["ddp"]
    fold0 = [results / f"rank{r}" / rank0["folder"] / "fold_0" for r in range(RANKS)]
    clock = json.loads((fold0[0] / "medseg_clock.json").read_text())
    assert clock["ranks"] == 2 and clock["global_batch_size"] == 4 and clock["compiled"] is False
    assert clock["epochs"] == timed["current_epoch"] and clock["validation"] == timed["epochs"][-1][2]
    assert clock["warmup_seconds"] >= 0.0
    assert (fold0[0] / "checkpoint_final.pth").is_file()
    assert not (fold0[1] / "medseg_clock.json").exists()  # rank 1 wrote none of our files ...
    assert not list(fold0[1].glob("checkpoint_*"))  # ... nor checkpoints
    # the final validation: the held-out cases shared out over the ranks by nnU-Net, scored by rank 0
    assert timed["validated"] == other["validated"] == "fast"
    assert [len(list((f / "validation").glob("*.nii.gz"))) for f in fold0] == [1, 1]
    summary = json.loads((fold0[0] / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"} and not (fold0[1] / "validation" / "summary.json").exists()

    stopped, asked = rank0["stopped"], rank1["stopped"]
    assert stopped["end"] == asked["end"] == "interrupted"  # rank 1's stop stopped rank 0 too ...
    assert stopped["iterations"] == asked["iterations"] == 7  # ... at the same step
    assert stopped["current_epoch"] == asked["current_epoch"] == 1
    assert (stopped["batch_size"], asked["batch_size"]) == (2, 2)  # the CPU cap (4 patches) split over the ranks
    fold1 = [results / f"rank{r}" / rank0["folder"] / "fold_1" for r in range(RANKS)]
    clock = json.loads((fold1[0] / "medseg_clock.json").read_text())
    assert clock["iterations"] == 7 and clock["global_batch_size"] == 4
    assert (fold1[0] / "checkpoint_latest.pth").is_file()  # one checkpoint, by rank 0
    assert not (fold1[1] / "medseg_clock.json").exists() and not list(fold1[1].glob("checkpoint_*"))


# -- the ranks -------------------------------------------------------------------------------------------------
def _collectives(rank: int, spec: dict) -> dict:
    import torch

    from medseg_auto.trainers import distributed

    values, flags = distributed.rank0_and_any([1.5 + rank, -2.0 + 10 * rank], [rank == 1, False])
    return {"rank": distributed.rank(), "world": distributed.world_size(), "values": values, "flags": flags,
            "agree": distributed.agree(3.0 + 10 * rank), "any": distributed.any_rank(rank == 0),
            "none": distributed.any_rank(False), "device": str(distributed.rank_device(torch.device("cpu")))}


def _train(rank: int, spec: dict) -> dict:
    import torch

    from medseg_auto.trainers import distributed
    from medseg_auto.trainers.time_budget import FoldBudget, TrainingInterrupted, nnUNetTrainerTimeBudget

    class Recorded(nnUNetTrainerTimeBudget):
        """Records each step's learning rate and each epoch's decisions; ``late`` seconds on its clock."""

        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.late, self.stop_at, self.lrs, self.epochs = 0.0, None, [], []
            self.on_epoch_done = lambda t: t.epochs.append(
                [t.current_epoch, t.num_iterations_per_epoch, t.validation_mode, t.planner.reserve])

        def elapsed(self) -> float:
            return super().elapsed() + self.late

        def train_step(self, batch: dict) -> dict:
            if self.iterations_done == self.stop_at:
                self.stop_requested.set()  # as the signal handler would, on this rank only
            out = super().train_step(batch)
            self.lrs.append(self.optimizer.param_groups[0]["lr"])
            return out

    base = Path(spec["base"])
    dataset_json = json.loads((base / "dataset.json").read_text())

    def fold(number: int, budget: FoldBudget, late: float = 0.0, stop_at: int | None = None) -> dict:
        plans = json.loads((base / "nnUNetPlans.json").read_text()) | {"continue_training": False}
        trainer = Recorded(plans, spec["configuration"], number, dataset_json, torch.device("cpu"))
        trainer.budget, trainer.late, trainer.stop_at = budget, late, stop_at
        validated = None
        try:
            trainer.run_training()
            end = "time up"
            if trainer.validation_mode != "skipped":  # as medseg_auto.train.train_fold does
                trainer.perform_actual_validation()
                validated = trainer.validation_mode
        except TrainingInterrupted:
            end = "interrupted"
        return {"end": end, "validated": validated, "epochs": trainer.epochs, "lrs": trainer.lrs,
                "current_epoch": trainer.current_epoch, "logged_lrs": trainer.logger.local_logger.my_fantastic_logging["lrs"],
                "iterations": trainer.iterations_done, "precision": trainer.precision,
                "batch_size": trainer.batch_size, "device": str(trainer.device),
                "ddp": distributed.unwrap(trainer.network) is not trainer.network,
                "folder": os.path.relpath(trainer.output_folder_base, os.environ["nnUNet_results"])}

    timed = fold(0, FoldBudget(seconds=spec["seconds"], batch_size=5, mirror_share=0.0, validation_share=1.0),
                 late=spec["late"] if rank == 1 else 0.0)  # validated without mirroring, whatever it costs
    patch = 56 * 40  # nnU-Net's 2d patch of these cases
    stopped = fold(1, FoldBudget(seconds=600.0, cpu_batch_voxels=4 * patch, precision="fp32"),
                   stop_at=spec["stop_at"] if rank == 1 else None)
    return {"timed": timed, "stopped": stopped, "folder": timed["folder"]}


if __name__ == "__main__":
    mode, rank, spec_file = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    import datetime

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    try:
        out = {"collectives": _collectives, "train": _train}[mode](rank, json.loads(spec_file.read_text()))
    finally:
        dist.destroy_process_group()
    (spec_file.parent / f"{mode}_rank{rank}.result.json").write_text(json.dumps(out))
