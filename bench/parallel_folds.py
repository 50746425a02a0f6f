#!/usr/bin/env python3
"""Folds at once on a CPU (``--workers 2``) against folds in turn, beside plain nnU-Net's trainer.

Two measurements on the same hippocampus data and plan:
1. throughput: a trainer in one process with every core, against two processes of one core's share each
   running at the same time (their iterations per second added up): plain nnU-Net's ``nnUNetTrainer`` and
   ours, timed by ``bench/throughput.py``;
2. whole runs: ``exe_train.py -f 0,1 -t MINUTES`` with the folds in turn, then with ``--workers 2``, each
   in a fresh work folder: iterations, epochs and held-out Dice per fold from the model cards.

    python3 bench/parallel_folds.py --cases 60 --minutes 8

Not a test: one run, printed as tables. Keep the machine otherwise idle while it runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from machine import describe  # bench/ is on the path when a script runs
from throughput import NAME, PROBES, VARIANTS, prepare

REPO = Path(__file__).resolve().parents[1]
CPUS = os.cpu_count() or 1


def throughput(work: Path, variant: str, copies: int, iterations: int, warmup: int) -> list[dict]:
    """``copies`` processes of ``throughput.py --variant`` at the same time; each one's figures."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env = clean | (VARIANTS | PROBES)[variant][1]
    procs = [subprocess.Popen([sys.executable, str(REPO / "bench" / "throughput.py"), "--variant", variant,
                               "--work", str(work), "--iterations", str(iterations), "--warmup", str(warmup)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(copies)]
    rows = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(err[-3000:])
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def whole_run(work: Path, minutes: float, workers: int) -> dict:
    """``exe_train.py -f 0,1`` in a fresh work folder; the model card and the wall time."""
    root = work / f"run_workers_{workers}"
    if root.exists():
        shutil.rmtree(root)
    (root / "input_train").mkdir(parents=True)
    (root / "input_train" / NAME).symlink_to((work / "input_train" / NAME).resolve())
    clean = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(REPO / "exe_train.py"), "-d", NAME, "-l", "anterior,posterior",
                           "-f", "0,1", "-t", str(minutes), "--workers", str(workers),
                           "--input-dir", str(root / "input_train"), "--work-dir", str(root / "work"),
                           "--output-dir", str(root / "output_models")],
                          capture_output=True, text=True, env=clean)
    wall = time.monotonic() - start
    (root / "log.txt").write_text(done.stderr)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    card = json.loads((root / "output_models" / NAME / "model_card.json").read_text())
    return {"workers": workers, "wall": wall, "card": card}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=60, help="hippocampus cases (12 held out per fold at 60)")
    p.add_argument("--minutes", type=float, default=8.0, help="-t of each whole run")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--work", type=Path, default=None, help="default: /tmp/medseg_parallel_CASES")
    p.add_argument("--skip-runs", action="store_true", help="only the throughput part")
    args = p.parse_args()
    args.work = args.work or Path(f"/tmp/medseg_parallel_{args.cases}")
    prepare(args.work, args.cases)

    print(f"\n{describe('cpu')}; hippocampus 3d_fullres, {args.cases} cases, {args.iterations} timed iterations "
          f"after {args.warmup}\n")
    print("| trainer | processes x torch threads | s / iteration (each) | iterations / s (all processes) |")
    print("|---|---|---|---|")
    for trainer, one, alone in (("nnU-Net's nnUNetTrainer", "nnunet 1 torch thread", "nnunet"),
                                ("ours", "ours 1 torch thread", "ours")):
        for variant, copies in ((alone, 1), (one, 2)):
            print(f"measuring {variant} x {copies} ...", file=sys.stderr, flush=True)
            rows = throughput(args.work, variant, copies, args.iterations, args.warmup)
            each = " / ".join(f"{r['seconds_per_iteration']:.2f}" for r in rows)
            total = sum(r["iterations_per_second"] for r in rows)
            print(f"| {trainer} | {copies} x {rows[0]['torch_threads']} | {each} | {total:.3f} |", flush=True)
    if args.skip_runs:
        return 0

    print(f"\nWhole runs: exe_train.py -f 0,1 -t {args.minutes:g} on {args.cases} cases\n")
    print("| folds | wall | fold | seconds | epochs | iterations x batch | validation | held-out Dice |")
    print("|---|---|---|---|---|---|---|---|")
    for workers in (1, 2):
        print(f"training with --workers {workers} ...", file=sys.stderr, flush=True)
        run = whole_run(args.work, args.minutes, workers)
        how = "in turn" if workers == 1 else f"{workers} at once"
        for fold, f in run["card"]["folds"].items():
            dice = ", ".join(f"{k} {v:.3f}" for k, v in f["dice"].items()) or "-"
            print(f"| {how} | {run['wall'] / 60:.1f} min | {fold} | {f['seconds']:.0f} | {f['epochs']} | "
                  f"{f['iterations']} x {f['batch_size']} | {f['validation']} | {dice} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
