#!/usr/bin/env python3
"""The cascade against the default trainer on full-size BraTS: the same budget and training cases, the same
held-out scans; time per case, peak memory and Dice per region at inference, for both.

- training: ``exe_train.py --regions WT/TC/ET -f full -t MINUTES`` on all but the last ``--heldout`` cases
  of ``../shared/data/brats2015_subset`` (FLAIR + T1c, 240x240x155), once with the default trainer and once
  with ``--trainer cascade``, one after the other;
- inference: ``exe_predict.py``'s engine on the held-out scans at full size (``--fast`` settings unless
  ``--tta``), each model in a fresh process: seconds per case (reading and writing included, model loading
  apart) and the process's peak resident memory (``ru_maxrss``; on CUDA also the peak GPU memory);
- Dice per region against the held-out labels (``--labels-dir``'s metrics).

    nohup python3 bench/cascade_vs_default.py --minutes 15 > cascade15.log 2>&1 &

Not a test: one run, printed as a table. Keep the machine otherwise idle. A trainer whose model exists in
the work folder is not trained again (rerun with another ``--work`` to start over).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from machine import describe  # bench/ is on the path when a script runs

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSEG_DATA", REPO.parent / "shared" / "data")) / "brats2015_subset"
NAME = "brats"
TRAINERS = ("default", "cascade")
REGIONS = "WT=1,2,3,4;TC=1,3,4;ET=4"
CHANNELS = ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz")
LABEL = "OTMultiClass.nii.gz"


def split_cases(work: Path, heldout: int) -> tuple[list[str], list[str]]:
    """Symlinks: ``work/input_train/brats/CASE/`` (channels + label) for training, ``work/heldout/images/CASE/``
    and ``work/heldout/labels/CASE.nii.gz`` for the held-out cases. Returns both lists of case names."""
    cases = sorted(d for d in DATA.iterdir() if d.is_dir())
    train, test = (cases[:-heldout], cases[-heldout:]) if heldout else (cases, [])
    links = [(work / "input_train" / NAME / c.name / f, c / f) for c in train for f in (*CHANNELS, LABEL)]
    links += [(work / "heldout" / "images" / c.name / f, c / f) for c in test for f in CHANNELS]
    links += [(work / "heldout" / "labels" / f"{c.name}.nii.gz", c / LABEL) for c in test]
    for link, target in links:
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(target.resolve())
    return [c.name for c in train], [c.name for c in test]


def train(work: Path, trainer: str, minutes: float, env: dict) -> dict:
    """One budgeted run; returns its wall time and the model card's training figures."""
    bundle = work / f"models_{trainer}" / NAME
    if not (bundle / "model_card.json").is_file():
        print(f"[{trainer}] exe_train.py --trainer {trainer} -t {minutes:g} -f full", file=sys.stderr, flush=True)
        start = time.monotonic()
        subprocess.run([sys.executable, str(REPO / "exe_train.py"), "-d", NAME, "--regions", REGIONS, "-f", "full",
                        "-t", f"{minutes:g}", "--trainer", trainer, "--input-dir", str(work / "input_train"),
                        "--work-dir", str(work / f"work_{trainer}"), "--output-dir", str(work / f"models_{trainer}")],
                       check=True, env=env)
        (work / f"wall_{trainer}.json").write_text(json.dumps({"wall": time.monotonic() - start}))
    card = json.loads((bundle / "model_card.json").read_text())
    fold = card["folds"]["all"]
    stages = [f"{name} {s['iterations']} x {s['batch_size']}" for name, s in fold.get("stages", {}).items()]
    return {"wall": json.loads((work / f"wall_{trainer}.json").read_text())["wall"],
            "iterations": ", ".join(stages + [f"{'segmentation ' if stages else ''}{fold['iterations']} x "
                                              f"{fold['batch_size']}"]),
            "patch": card["patch_size"], "features": card["network"].get("features_per_stage")}


def measure(work: Path, trainer: str, device: str, tta: bool) -> dict:
    """In this process: predict the held-out scans with the trainer's bundle; timings, memory, Dice."""
    sys.path.insert(0, str(REPO))
    import torch

    from medseg_auto.predict import PredictOptions, Settings, predict

    settings = Settings() if tta else Settings(mirroring=False, step_size=0.75)
    summary = predict(PredictOptions(model=work / f"models_{trainer}" / NAME, scans=work / "heldout" / "images",
                                     output=work / f"pred_{trainer}", device=device, settings=settings,
                                     labels_dir=work / "heldout" / "labels", overwrite=True, progress=False))
    gpu = torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None
    return {"load": summary.load_seconds, "per_case": summary.seconds_per_scan,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "gpu_peak_mb": gpu,
            "dice": {k: v["dice"] for k, v in summary.metrics.items()}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, help="the whole-run budget of each training (-t); required")
    p.add_argument("--heldout", type=int, default=2, help="the last cases, never trained on")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--tta", action="store_true", help="predict with mirroring and step 0.5 (default: --fast)")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--measure", choices=TRAINERS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.minutes is None and not args.measure:
        p.error("the following arguments are required: --minutes")
    work = args.work or Path(f"/tmp/cascade_vs_default_{args.minutes:g}")
    if args.measure:
        print(json.dumps(measure(work, args.measure, args.device, args.tta)))
        return 0
    if not DATA.is_dir():
        print(f"BraTS subset not found in {DATA} (set MEDSEG_DATA)", file=sys.stderr)
        return 2
    train_cases, test_cases = split_cases(work, args.heldout)
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    trained = {t: train(work, t, args.minutes, env) for t in TRAINERS}
    results = {}
    for t in TRAINERS:
        print(f"[{t}] predicting {len(test_cases)} held-out scans", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, __file__, "--measure", t, "--work", str(work), "--device", args.device]
                              + (["--tta"] if args.tta else []), capture_output=True, text=True, env=env)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        print(done.stderr[-1500:], file=sys.stderr)
        results[t] = json.loads(done.stdout.strip().splitlines()[-1])

    inference = "step 0.5 with mirroring" if args.tta else "--fast"
    print(f"\n{describe(args.device)}; BraTS 2015 "
          f"subset, FLAIR + T1c at 240x240x155; trained on {', '.join(train_cases)} (-f full, -t {args.minutes:g} "
          f"each); held out: {', '.join(test_cases)}; inference {inference}\n")
    regions = list(results["default"]["dice"])
    print("| trainer | run wall time | iterations x batch | patch | features per stage | s / case | model load s "
          "| peak memory MB | " + " | ".join(f"Dice {r}" for r in regions) + " |")
    print("|---|---|---|---|---|---|---|---|" + "---|" * len(regions))
    for t in TRAINERS:
        tr, r = trained[t], results[t]
        memory = f"{r['peak_mb']:,.0f}" + (f" (GPU {r['gpu_peak_mb']:,.0f})" if r["gpu_peak_mb"] else "")
        print(f"| {t} | {tr['wall'] / 60:.1f} min | {tr['iterations']} | {'x'.join(map(str, tr['patch'][::-1]))} | "
              f"{','.join(map(str, tr['features'] or []))} | {r['per_case']:.1f} | {r['load']:.1f} | {memory} | "
              + " | ".join(f"{r['dice'][k]:.4f}" for k in regions) + " |")
    d, c = results["default"], results["cascade"]
    print(f"\ncascade: {d['per_case'] / c['per_case']:.2f}x faster per case than the default (target >= 3x); "
          f"WT Dice {c['dice']['WT'] - d['dice']['WT']:+.4f} against the default (target within 0.02); "
          f"peak memory {c['peak_mb'] / d['peak_mb']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
