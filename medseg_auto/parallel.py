"""Folds in parallel: one fold process per GPU (``--gpus``) or per share of a CPU's cores (``--workers N``),
and one fold on several GPUs at once through torchrun (``--ddp K``).

The run plans and preprocesses once (nnU-Net 2.8's blosc2 data needs no unpacking), then starts
``python -m medseg_auto.fold JOB`` for up to one fold per slot. Each fold gets the time left over the rounds
still to run (``ceil(folds / slots)``); a fold process writes its own record, which the run reads back when
the process ends. A stop (Ctrl+C, SIGTERM) reaches every fold process, which saves a checkpoint; a fold
process that fails or is killed stops the others the same way, and a rerun resumes every fold.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from medseg_auto.errors import InputError, MedsegError

STOP_GRACE_SECONDS = 180.0  # a stopped fold process finishes its step and saves a checkpoint in this time


@dataclass
class Slot:
    """Where one fold process runs: the environment it gets (the GPUs it sees), its torch threads, and its
    ranks (more than one: started by torchrun, DDP)."""

    label: str
    env: dict[str, str] = field(default_factory=dict)
    threads: int | None = None
    ranks: int = 1
    device_type: str = "cpu"
    rendezvous: list[str] = field(default_factory=list)  # torchrun's arguments for several machines

    def command(self, job: Path) -> list[str]:
        """The fold process: ``python -m medseg_auto.fold JOB``, through torchrun for DDP."""
        if self.ranks == 1 and not self.rendezvous:
            return [sys.executable, "-m", "medseg_auto.fold", str(job)]
        return [sys.executable, "-m", "torch.distributed.run", *(self.rendezvous or ["--standalone"]),
                f"--nproc-per-node={self.ranks}", "-m", "medseg_auto.fold", str(job)]


def rendezvous_arguments(nnodes: int, endpoint: str | None) -> list[str]:
    """torchrun's arguments for a fold on ``nnodes`` machines meeting at ``endpoint`` (HOST:PORT)."""
    if nnodes <= 1:
        return []
    if not endpoint or ":" not in endpoint:
        raise InputError(f"--nnodes {nnodes}: give --rdzv-endpoint HOST:PORT, the address every machine reaches "
                         f"this one at (e.g. --rdzv-endpoint node1:29500)")
    return [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}"]


def visible_gpus() -> list[str]:
    """The GPUs this process may use, named as a child's ``CUDA_VISIBLE_DEVICES`` must name them."""
    import torch

    count = torch.cuda.device_count()
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [g.strip() for g in inherited.split(",") if g.strip()] if inherited else [str(i) for i in range(count)]
    return names[:count]


def fold_slots(device, workers: int = 1, gpus: list[int] | None = None, ddp: int = 1,
               folds: int = 1, rendezvous: list[str] | None = None) -> list[Slot]:
    """The fold processes to run at once for ``folds`` folds; none: train here, one fold after another.

    CUDA: one per GPU of ``gpus`` (indices among the visible GPUs; default every visible GPU), or with ``ddp``
    K > 1 one fold at a time on K GPUs. CPU: ``workers`` processes that split the cores, or ``ddp`` gloo ranks
    (for tests: a CPU gains nothing from DDP). ``rendezvous``: torchrun's arguments where the fold's ranks
    span several machines (``rendezvous_arguments``); one fold at a time then.
    """
    cores = os.cpu_count() or 1
    if rendezvous:
        ranks = ddp if device.type == "cpu" else min(ddp, len(visible_gpus()))
        return [Slot(f"{ranks} rank(s) here and on other machines", threads=max(1, cores // ranks)
                     if device.type == "cpu" else None, ranks=ranks, device_type=device.type,
                     rendezvous=rendezvous)]
    if device.type == "cuda":
        names = visible_gpus()
        if gpus is not None:
            bad = [i for i in gpus if not 0 <= i < len(names)]
            if bad:
                raise InputError(f"--gpus {','.join(map(str, gpus))}: this machine shows {len(names)} GPU(s) "
                                 f"(indices 0-{len(names) - 1}); GPU {bad[0]} is not one of them.")
            names = [names[i] for i in gpus]
        if ddp > 1:
            if ddp > len(names):
                raise InputError(f"--ddp {ddp}: only {len(names)} GPU(s) to use; use --ddp {len(names)} or less.")
            return [Slot(f"GPUs {','.join(names[:ddp])}", {"CUDA_VISIBLE_DEVICES": ",".join(names[:ddp])},
                         ranks=ddp, device_type="cuda")]
        if gpus is None and (len(names) < 2 or folds < 2):
            return []  # the one GPU, in this process
        return [Slot(f"GPU {name}", {"CUDA_VISIBLE_DEVICES": name}, device_type="cuda")
                for name in names[:max(1, folds)]]
    if ddp > 1:
        return [Slot(f"{ddp} CPU ranks", threads=max(1, cores // ddp), ranks=ddp)]
    if workers < 2 or folds < 2:
        return []
    at_once = min(workers, folds)  # never more processes than folds, and their cores shared by those there are
    return [Slot(f"worker {i + 1}", threads=max(1, cores // at_once)) for i in range(at_once)]


def parallel_shares(seconds: float, spent: dict, slots: int) -> dict:
    """Seconds for each unfinished fold when ``slots`` train at once: the time left over the rounds still to
    run, plus what the fold used in earlier sessions (``spent``: fold -> seconds)."""
    rounds = max(1, math.ceil(len(spent) / max(1, slots)))
    return {fold: used + max(0.0, seconds) / rounds for fold, used in spent.items()}


def rounds_left(started: int, folds: int, slots: int) -> int:
    """Rounds still to run, this one included, for the fold that starts after ``started`` others of
    ``folds`` on ``slots``: its round is fixed by its place in the queue, not by how many folds of the round
    before are still running (those end within the same time)."""
    return max(1, math.ceil(folds / slots) - started // slots)


class FoldLauncher:
    """Starts, watches and stops the fold processes of one run (``run``: the runner, which keeps the record)."""

    def __init__(self, run, plan, slots: list[Slot]):
        self.run, self.plan, self.slots = run, plan, slots
        self.running: dict[int, tuple] = {}  # slot index -> (fold, process)
        self.stopping = False  # SIGTERM was sent: a second stop kills

    def train(self, folds: list) -> None:
        """Train ``folds``, up to one per slot at a time; returns when all are done, raises when one fails
        or the run is stopped (every fold process then saves its checkpoint first)."""
        from medseg_auto.trainers.time_budget import TrainingInterrupted

        queue = list(folds)
        stop = self.run.stop
        print(f"\n[train] {len(queue)} fold(s) on {len(self.slots)} slot(s) at once: "
              + "; ".join(s.label for s in self.slots), file=sys.stderr)
        stop.deferred = True  # a signal now asks the fold processes to stop; a second one interrupts at once
        saved = time.monotonic()
        try:
            while queue or self.running:
                if time.monotonic() - saved >= 15.0:  # the run's clock, for a resume after kill -9
                    self.run.save()
                    saved = time.monotonic()
                for index, slot in enumerate(self.slots):
                    if index not in self.running and queue:
                        started = len(folds) - len(queue)
                        fold = queue.pop(0)
                        self.running[index] = (fold, self._start(fold, slot, rounds_left(started, len(folds),
                                                                                         len(self.slots))))
                        if started == 0 and queue:
                            self._wait_for_splits(self.running[index][1])
                if stop.event.wait(0.5):
                    self._stop_all()
                    raise TrainingInterrupted("stop requested while the folds trained")
                for index, (fold, process) in list(self.running.items()):
                    if process.poll() is not None:
                        del self.running[index]
                        _end_session(process)
                        self._finished(fold, process.returncode)
        except BaseException:
            self._stop_all()
            raise
        finally:
            stop.deferred = False

    def _start(self, fold, slot: Slot, rounds: int) -> subprocess.Popen:
        """Write the fold's job and start its process: the time left over the ``rounds`` still to run, this
        fold's included."""
        seconds = self.run.fold_spent(fold) + max(0.0, self.run.time_for_folds()) / max(1, rounds)
        job = self.run.fold_job(self.plan, fold, seconds, slot.device_type, slot.threads)
        path = job.save(self.run.workspace.job_file(fold))
        self.run.announce_fold(fold, seconds)
        entry = slot.command(path)
        print(f"[train] fold {fold} starts on {slot.label}: {' '.join(entry[1:])}", file=sys.stderr)
        if slot.rendezvous:
            print(f"[train] fold {fold}: on each other machine, with this work folder at the same path, run\n"
                  f"  torchrun {' '.join(entry[3:])}", file=sys.stderr)
        from medseg_auto.train import nnunet_process_settings

        package_root = str(Path(__file__).resolve().parents[1])  # importable even when run from exe_train.py
        shares = nnunet_process_settings(slot.device_type, len(self.slots) * slot.ranks)  # the machine is shared
        env = dict(os.environ) | {k: v for k, v in shares.items() if k in self.run.nnunet_env_ours} | slot.env | {
            "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        # a session of its own: a terminal's Ctrl+C reaches the run alone, which forwards one SIGTERM
        # and it stops when the run dies (even by kill -9), torchrun with its ranks
        return subprocess.Popen(entry, env=env, start_new_session=True, preexec_fn=stop_with_parent)

    def _wait_for_splits(self, first: subprocess.Popen, timeout: float = 300.0) -> None:
        """Let the first fold process write nnU-Net's splits_final.json before others start: nnU-Net writes
        it where it is missing, not atomically, and a second process could read it half-written."""
        ws = self.run.workspace
        splits = ws.preprocessed / ws.nnunet_name / "splits_final.json"
        end = time.monotonic() + timeout
        while not splits.is_file() and first.poll() is None and time.monotonic() < end:
            if self.run.stop.event.wait(0.5):
                return
        time.sleep(0.5)  # nnU-Net's save_json closes the file right after creating it

    def _finished(self, fold, code: int) -> None:
        from medseg_auto.fold import EXIT_INTERRUPTED, FoldRecord, record_path
        from medseg_auto.trainers.time_budget import TrainingInterrupted

        record = FoldRecord.load(record_path(self.run.workspace.job_file(fold)))
        if code == 0 and record is not None and record.done:
            self.run.fold_finished(record)
            return
        if code == EXIT_INTERRUPTED or code < 0:
            how = "was stopped" if code == EXIT_INTERRUPTED else f"was killed (signal {-code})"
            raise TrainingInterrupted(f"fold {fold}'s process {how}")
        raise MedsegError(f"fold {fold} failed in its own process (exit {code}); its messages are above.")

    def _stop_all(self) -> None:
        """SIGTERM to every fold process still running, then wait for their checkpoints (killed after
        ``STOP_GRACE_SECONDS``); a second stop while waiting kills them at once."""
        if self.stopping:
            for _, process in self.running.values():
                process.kill()
        self.stopping = True
        for _, process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for _, process in self.running.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            _end_session(process)
        self.running.clear()


def stop_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when the process that started it dies (even by kill -9): a
    fold never trains on unattended while a rerun resumes the same fold. Called in a fold process, or between
    fork and exec of one (torchrun then stops its ranks)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _end_session(process: subprocess.Popen) -> None:
    """Kill what is left of an ended fold process's session: nnU-Net's augmentation workers outlive a fold
    process killed by a signal (they stop with it only when it exits normally)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
