#!/usr/bin/env python3
"""Training throughput: iterations and voxels per second through forward and backward, nnU-Net's
default trainer and settings against ours, on the same plan and preprocessed data.

Each variant runs in a fresh process (its own environment variables and worker processes), one after the
other: the trainer is built from the plans, its data loaders started, a few iterations run to warm up,
then ``--iterations`` are timed (data loading included, as in training).

    python3 bench/throughput.py --cases 40 --iterations 20

The first run plans and preprocesses (``exe_train.py --dry-run --keep-work``) into ``--work``. Not a test:
one run, printed as a table. Keep the machine otherwise idle while it runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from machine import describe  # bench/ is on the path when a script runs
from medseg_auto.train import nnunet_process_settings

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSEG_DATA", REPO.parent / "shared" / "data"))
NAME = "throughput"
CPUS = os.cpu_count() or 1

# name -> (trainer class, environment, knobs): nnU-Net as its own command would run it, our CPU defaults,
# and the probes that chose those defaults (``--probes``). Knobs: batch (int), threads (torch threads),
# compile (torch.compile of the network and the Dice loss, as nnU-Net does on a GPU), width (features per
# stage as a share of nnU-Net's plan; ours default to plan.CPU_WIDTH), precision (ours: fp32 or bf16 instead
# of the default auto, which times both at the first step: trainers/precision.py), channels_last
# (channels-last 3D weights).
OURS_ENV = nnunet_process_settings("cpu")  # what exe_train.py sets on a CPU
VARIANTS = {
    "nnunet": ("nnUNetTrainer", {}, {}),
    "ours": ("nnUNetTrainerTimeBudget", OURS_ENV, {}),
}
PROBES = {
    "ours batch 1": ("nnUNetTrainerTimeBudget", OURS_ENV, {"batch": 1}),
    "ours batch 3": ("nnUNetTrainerTimeBudget", OURS_ENV, {"batch": 3}),
    "ours batch 4": ("nnUNetTrainerTimeBudget", OURS_ENV, {"batch": 4}),
    "ours DA in main process": ("nnUNetTrainerTimeBudget", OURS_ENV | {"nnUNet_n_proc_DA": "0"}, {}),
    "ours DA 2 workers": ("nnUNetTrainerTimeBudget", OURS_ENV | {"nnUNet_n_proc_DA": "2"}, {}),
    "ours 1 torch thread": ("nnUNetTrainerTimeBudget", OURS_ENV, {"threads": 1}),
    "nnunet 1 torch thread": ("nnUNetTrainer", {}, {"threads": 1}),
    "ours torch.compile": ("nnUNetTrainerTimeBudget", OURS_ENV, {"compile": True}),
    "ours nnU-Net's width": ("nnUNetTrainerTimeBudget", OURS_ENV, {"width": 1.0}),
    "ours width 0.375": ("nnUNetTrainerTimeBudget", OURS_ENV, {"width": 0.375}),
    "ours width 0.25": ("nnUNetTrainerTimeBudget", OURS_ENV, {"width": 0.25}),
    "ours bf16 autocast": ("nnUNetTrainerTimeBudget", OURS_ENV, {"precision": "bf16"}),
    "ours fp32": ("nnUNetTrainerTimeBudget", OURS_ENV, {"precision": "fp32"}),
    "ours channels-last": ("nnUNetTrainerTimeBudget", OURS_ENV, {"channels_last": True}),
}


def measure(variant: str, work: Path, iterations: int, warmup: int) -> dict:
    """In this process: build the variant's trainer, run ``warmup`` then ``iterations`` timed steps."""
    sys.path.insert(0, str(REPO))
    import numpy as np
    import torch

    from medseg_auto.plan import CPU_WIDTH, PLANS_IDENTIFIER, narrow_network
    from medseg_auto.workspace import Workspace

    ws = Workspace(work / NAME, NAME)
    ws.activate()
    trainer_name, _, knobs = (VARIANTS | PROBES)[variant]
    ours = trainer_name == "nnUNetTrainerTimeBudget"
    if ours:
        from medseg_auto.device import select_device
        from medseg_auto.trainers.time_budget import nnUNetTrainerTimeBudget as base

        device = select_device("cpu")
    else:
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer as base

        device = torch.device("cpu")
    if "threads" in knobs:
        torch.set_num_threads(knobs["threads"])

    class cls(base):
        def _set_batch_size_and_oversample(self):
            super()._set_batch_size_and_oversample()
            self.batch_size = knobs.get("batch", self.batch_size)

        def _do_i_compile(self):
            return knobs.get("compile", False) or super()._do_i_compile()

    pre = ws.preprocessed / ws.nnunet_name
    plans = json.loads((pre / f"{PLANS_IDENTIFIER}.json").read_text()) | {"continue_training": False}
    narrow_network(plans, "3d_fullres", knobs.get("width", CPU_WIDTH) if ours else 1.0)
    dataset_json = json.loads((pre / "dataset.json").read_text())
    trainer = cls(plans, "3d_fullres", 0, dataset_json, device)
    if ours:
        from medseg_auto.trainers.time_budget import FoldBudget

        trainer.budget = FoldBudget(seconds=3600.0)  # only its settings are read here (batch cap, precision)
    trainer.on_train_start()
    trainer.network.train()
    if knobs.get("channels_last"):
        trainer.network.to(memory_format=torch.channels_last_3d)
    if "precision" in knobs:
        trainer.budget.precision = knobs["precision"]
    try:
        start = time.perf_counter()
        for _ in range(warmup):
            trainer.train_step(next(trainer.dataloader_train))
        warmup_seconds = time.perf_counter() - start
        start, waited = time.perf_counter(), 0.0
        for _ in range(iterations):
            t = time.perf_counter()
            batch = next(trainer.dataloader_train)
            waited += time.perf_counter() - t
            trainer.train_step(batch)
        seconds = (time.perf_counter() - start) / iterations
        trainer.network.eval()
        start = time.perf_counter()
        trainer.validation_step(next(trainer.dataloader_val))
        first_validation = time.perf_counter() - start
    finally:
        for loader in (trainer.dataloader_train, trainer.dataloader_val):
            if hasattr(loader, "_finish"):
                loader._finish()
    patch = list(trainer.configuration_manager.patch_size)
    voxels = trainer.batch_size * int(np.prod(patch))
    features = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"]
    return {"variant": variant, "trainer": trainer_name, "batch": trainer.batch_size, "patch": patch,
            "features": features,
            "torch_threads": torch.get_num_threads(),
            "da_workers": os.environ.get("nnUNet_n_proc_DA", "nnU-Net default"),
            "compiled": hasattr(trainer.network, "_orig_mod"), "precision": getattr(trainer, "precision", "fp32"),
            "warmup_seconds": warmup_seconds,
            "first_validation_seconds": first_validation, "seconds_per_iteration": seconds,
            "data_wait_seconds": waited / iterations, "iterations_per_second": 1 / seconds,
            "voxels_per_second": voxels / seconds, "samples_per_second": trainer.batch_size / seconds}


def prepare(work: Path, cases: int) -> None:
    """Link ``cases`` hippocampus cases into an input folder and plan + preprocess them once. nnU-Net's batch
    size depends on the number of cases (at most 5% of the dataset's voxels per batch), so a work folder
    planned for another number is refused rather than reused."""
    record = work / NAME / "run.json"
    if record.is_file():
        planned = len(json.loads(record.read_text())["cases"])
        if planned != cases:
            raise SystemExit(f"{work} was planned for {planned} cases, not {cases}: give another --work")
        return
    src = DATA / "hippocampus"
    dest = work / "input_train" / NAME
    for sub in ("images", "labels"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
        for name in sorted(p.name for p in (src / "images").iterdir())[:cases]:
            link = dest / sub / name
            if not link.exists():
                link.symlink_to((src / sub / name).resolve())
    subprocess.run([sys.executable, str(REPO / "exe_train.py"), "-d", NAME, "-l", "anterior,posterior", "-f", "0",
                    "-t", "60", "--dry-run", "--keep-work", "--input-dir", str(work / "input_train"),
                    "--work-dir", str(work), "--output-dir", str(work / "output_models")], check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=40, help="hippocampus cases to plan and sample from")
    p.add_argument("--iterations", type=int, default=20, help="timed iterations per variant")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--work", type=Path, default=None, help="default: /tmp/medseg_throughput_CASES")
    p.add_argument("--probes", action="store_true", help="also measure the alternatives to our defaults")
    p.add_argument("--variants", help="only these variants, comma-separated (e.g. 'nnunet,ours,ours width 0.25')")
    p.add_argument("--variant", choices=tuple(VARIANTS | PROBES), help=argparse.SUPPRESS)
    args = p.parse_args()
    args.work = args.work or Path(f"/tmp/medseg_throughput_{args.cases}")
    if args.variant:
        print(json.dumps(measure(args.variant, args.work, args.iterations, args.warmup)))
        return 0
    prepare(args.work, args.cases)
    chosen = VARIANTS | (PROBES if args.probes else {})
    if args.variants:
        names = [v.strip() for v in args.variants.split(",")]
        unknown = [v for v in names if v not in VARIANTS | PROBES]
        if unknown:
            p.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS | PROBES)}")
        chosen = {v: (VARIANTS | PROBES)[v] for v in names}
    rows = []
    for variant, (_, env, _) in chosen.items():
        print(f"measuring {variant} ({args.warmup} + {args.iterations} iterations) ...", file=sys.stderr, flush=True)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
        done = subprocess.run([sys.executable, __file__, "--variant", variant, "--work", str(args.work),
                               "--iterations", str(args.iterations), "--warmup", str(args.warmup)],
                              capture_output=True, text=True, env=clean | env)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))

    print(f"\n{describe('cpu')}; hippocampus 3d_fullres, "
          f"{args.cases} cases planned, {args.iterations} timed iterations after {args.warmup}\n")
    print("| variant | trainer | features per stage | batch x patch | torch threads | DA workers | compiled "
          "| precision | warm-up s | first val. step s | s / iteration | waiting for data s / it | samples / s "
          "| voxels / s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['trainer']} | {','.join(map(str, r['features']))} | "
              f"{r['batch']} x {'x'.join(map(str, r['patch']))} | "
              f"{r['torch_threads']} | {r['da_workers']} | {'yes' if r['compiled'] else 'no'} | "
              f"{r['precision']} | "
              f"{r['warmup_seconds']:.0f} | {r['first_validation_seconds']:.1f} | {r['seconds_per_iteration']:.2f} | "
              f"{r['data_wait_seconds']:.2f} | "
              f"{r['samples_per_second']:.2f} | {r['voxels_per_second']:,.0f} |")
    base = next((r["voxels_per_second"] for r in rows if r["variant"] == "nnunet"), None)
    for r in rows if base else []:
        if r["variant"] == "nnunet":
            continue
        print(f"\n{r['variant']}: {r['voxels_per_second'] / base:.2f}x nnU-Net's voxels per second "
              f"(target >= 1.5x at equal or better Dice per budget: bench/dice_at_budget.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
