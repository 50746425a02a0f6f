#!/usr/bin/env python3
"""Cross-validation on the BraTS subset, trainer against trainer under the same whole-run budget: Dice per
region and fold, and each bundle's efficiency.

- training: ``exe_train.py --regions WT/TC/ET -f all -t MINUTES -c CONFIG`` on the 6 cases of
  ``../shared/data/brats2015_subset`` (FLAIR + T1c, 240x240x155; nnU-Net's 5-fold split), once with the
  default trainer and once with ``--trainer dualbranch --branches "T1c|FLAIR"``, one after the other;
- Dice: nnU-Net's validation of each fold on its held-out cases, at the images' own resolution (the model
  card's per-fold figures);
- efficiency: ``bench/efficiency.py`` on both bundles (parameters, training-step time and memory, inference
  latency and memory on two full-size scans, ``--fast``), with the dual-branch step timed against the plain
  U-Net of the same plans interleaved in one process.

The default configuration is ``3d_lowres`` (nnU-Net's planner at about 3.2 mm, since nnU-Net plans none for
these images): at full resolution one training iteration takes about 20 s on a 2-core CPU, and a fold of a
30-minute run would see about 15 of them.

    nohup python3 bench/brats_cv.py --minutes 30 > brats_cv30.log 2>&1 &

Not a test: one run, printed as tables. Keep the machine otherwise idle. A trainer whose model exists in the
work folder is not trained again.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cascade_vs_default import CHANNELS, DATA, NAME, REGIONS, split_cases  # bench/ is on the path
from machine import describe

REPO = Path(__file__).resolve().parents[1]
TRAINERS = {"default": [], "dualbranch": ["--branches", "T1c|FLAIR"]}
SCANS = 2  # full-size scans timed at inference


def train(work: Path, trainer: str, minutes: float, configuration: str, env: dict) -> dict:
    """One budgeted cross-validation run (skipped when its bundle exists; its work folder kept for nnU-Net's
    split); returns its model card, wall time and each fold's validation cases."""
    bundle = work / f"models_{trainer}" / NAME
    wall_file = work / f"wall_{trainer}.json"
    if not (bundle / "model_card.json").is_file():
        print(f"[{trainer}] exe_train.py --trainer {trainer} -c {configuration} -t {minutes:g} -f all",
              file=sys.stderr, flush=True)
        start = time.monotonic()
        subprocess.run([sys.executable, str(REPO / "exe_train.py"), "-d", NAME, "--regions", REGIONS, "-f", "all",
                        "-t", f"{minutes:g}", "-c", configuration, "--trainer", trainer, *TRAINERS[trainer],
                        "--input-dir", str(work / "input_train"), "--work-dir", str(work / f"work_{trainer}"),
                        "--output-dir", str(work / f"models_{trainer}"), "--keep-work"], check=True, env=env)
        wall_file.write_text(json.dumps({"wall": time.monotonic() - start}))
    splits = next((work / f"work_{trainer}" / NAME / "nnUNet_preprocessed").glob("Dataset*/splits_final.json"))
    return json.loads((bundle / "model_card.json").read_text()) | json.loads(wall_file.read_text()) | {
        "validation_cases": {str(i): s["val"] for i, s in enumerate(json.loads(splits.read_text()))}}


def link_scans(work: Path, cases: list[str]) -> Path:
    """``work/scans/CASE/`` with the image channels of ``cases`` (inference timing only: the folds' own
    validation gives the Dice)."""
    for case in cases:
        for f in CHANNELS:
            link = work / "scans" / case / f
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to((DATA / case / f).resolve())
    return work / "scans"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, required=True, help="the whole-run budget of each training (-t)")
    p.add_argument("-c", dest="configuration", default="3d_lowres", help="nnU-Net configuration (default 3d_lowres)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--work", type=Path, default=None)
    args = p.parse_args()
    work = args.work or Path(f"/tmp/brats_cv_{args.minutes:g}")
    if not DATA.is_dir():
        print(f"BraTS subset not found in {DATA} (set MEDSEG_DATA)", file=sys.stderr)
        return 2
    cases, _ = split_cases(work, 0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    cards = {t: train(work, t, args.minutes, args.configuration, env) for t in TRAINERS}
    print("[efficiency] bench/efficiency.py on both bundles", file=sys.stderr, flush=True)
    efficiency = subprocess.run([sys.executable, str(REPO / "bench" / "efficiency.py"), "-m",
                                 *(str(work / f"models_{t}" / NAME) for t in TRAINERS),
                                 "-i", str(link_scans(work, cases[:SCANS])), "--device", args.device,
                                 "--steps", "5", "--interleave", "5", "--write-card"],
                                capture_output=True, text=True, env=env)
    if efficiency.returncode != 0:
        print(efficiency.stderr[-3000:], file=sys.stderr)
        return 1

    regions = list(next(iter(cards.values()))["cross_validation_dice"])
    print(f"\n{describe(args.device)}; BraTS 2015 "
          f"subset, {len(cases)} cases, FLAIR + T1c; -c {args.configuration}, -f all, -t {args.minutes:g} each\n")
    print("| trainer | run wall time | fold | held-out cases | iterations x batch | "
          + " | ".join(f"Dice {r}" for r in regions) + " |")
    print("|---|---|---|---|---|" + "---|" * len(regions))
    for t, card in cards.items():
        for fold, f in card["folds"].items():
            print(f"| {t} | {card['wall'] / 60:.1f} min | {fold} | {', '.join(card['validation_cases'][fold])} "
                  f"| {f['iterations']} x {f['batch_size']} | "
                  + " | ".join(f"{f['dice'][r]:.3f}" if r in f["dice"] else "-" for r in regions) + " |")
        print(f"| **{t}** | | **mean** | | | "
              + " | ".join(f"**{card['cross_validation_dice'][r]:.3f}**" for r in regions) + " |")
    print("\n" + efficiency.stdout.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
