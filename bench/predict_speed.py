#!/usr/bin/env python3
"""Prediction speed: exe_predict.py against nnU-Net's own predictor on the same bundle, same scans, same
settings, and our fast mode against the default settings (time and Dice).

Each engine runs in a fresh process, one after the other, on the same machine:

- ``nnunet``: ``nnUNetPredictor.initialize_from_trained_model_folder`` + ``predict_from_files`` with the
  worker counts of nnU-Net's own command (3 preprocessing, 3 export), on a copy of the scans named as
  nnU-Net wants (``case_0000.nii.gz``, symlinks);
- ``ours``: ``medseg_auto.predict.predict`` (what ``exe_predict.py`` runs) on the scans as they are.

Per-scan time is (wall time after the model is loaded) / scans; model loading is reported apart. Dice is
computed afterwards from the written files against the reference labels (mean over scans and labels).

    python3 bench/predict_speed.py -m output_models/hippocampus -i heldout/images --labels heldout/labels

Not a test: one run, printed as a table. Keep the machine otherwise idle while it runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from heldout import mean_dice  # bench/ is on the path when a script runs
from machine import describe

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"default": {"step": 0.5, "mirroring": True}, "fast": {"step": 0.75, "mirroring": False}}


def run_engine(engine: str, setting: str, bundle: Path, scans: Path, out: Path, folds: list[str]) -> dict:
    """One engine, in this process; returns its timings."""
    sys.path.insert(0, str(REPO))
    s = SETTINGS[setting]
    n = len([p for p in scans.iterdir() if p.name.endswith(".nii.gz")])
    start = time.perf_counter()
    if engine == "nnunet":
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        torch.set_num_threads(os.cpu_count() or 1)
        predictor = nnUNetPredictor(tile_step_size=s["step"], use_mirroring=s["mirroring"], device=torch.device("cpu"),
                                    perform_everything_on_device=False, verbose=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(bundle), use_folds=tuple(folds))
        loaded = time.perf_counter()
        predictor.predict_from_files(str(scans), str(out), save_probabilities=False, overwrite=True,
                                     num_processes_preprocessing=3, num_processes_segmentation_export=3)
        end = time.perf_counter()
        return {"load": loaded - start, "predict": end - loaded, "total": end - start, "scans": n}
    from medseg_auto.predict import PredictOptions, Settings, predict

    summary = predict(PredictOptions(model=bundle, scans=scans, output=out, folds=folds, device="cpu",
                                     settings=Settings(mirroring=s["mirroring"], step_size=s["step"]),
                                     progress=False))
    end = time.perf_counter()
    return {"load": summary.load_seconds, "predict": end - start - summary.load_seconds, "total": end - start,
            "scans": n}


def agreement(a: Path, b: Path) -> float:
    """The fraction of voxels labelled the same in two folders of segmentations (same file names)."""
    import nibabel
    import numpy as np

    same = total = 0
    for f in sorted(a.glob("*.nii.gz")):
        x, y = (np.asarray(nibabel.load(d / f.name).dataobj) for d in (a, b))
        same, total = same + int((x == y).sum()), total + x.size
    return same / max(1, total)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", dest="bundle", type=Path, required=True)
    p.add_argument("-i", dest="scans", type=Path, required=True, help="folder of single-channel .nii.gz scans")
    p.add_argument("--labels", type=Path, required=True, help="reference labels, named like the scans")
    p.add_argument("--folds", default=None, help="folds (default: the bundle's)")
    p.add_argument("--work", type=Path, default=None, help="where outputs go (default: a temp folder)")
    p.add_argument("--engine", choices=("nnunet", "ours"), help=argparse.SUPPRESS)
    p.add_argument("--setting", choices=tuple(SETTINGS), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    manifest = json.loads((args.bundle / "medseg_auto.json").read_text())
    folds = args.folds.split(",") if args.folds else manifest["folds"]
    if args.engine:  # one measured run, in its own process
        print(json.dumps(run_engine(args.engine, args.setting, args.bundle, args.scans, args.out, folds)))
        return 0

    work = args.work or Path(tempfile.mkdtemp(prefix="predict_speed_"))
    named = work / "nnunet_named"
    named.mkdir(parents=True, exist_ok=True)
    for f in sorted(args.scans.glob("*.nii.gz")):
        link = named / f.name.replace(".nii.gz", "_0000.nii.gz")
        if not link.exists():
            link.symlink_to(f.resolve())
    results = {}
    for setting in SETTINGS:
        for engine in ("nnunet", "ours"):
            out = work / f"{engine}_{setting}"
            if out.exists():
                subprocess.run(["rm", "-rf", str(out)], check=True)
            scans = named if engine == "nnunet" else args.scans
            print(f"running {engine} ({setting}) on {len(list(scans.iterdir()))} scans ...", file=sys.stderr, flush=True)
            done = subprocess.run([sys.executable, __file__, "-m", str(args.bundle), "-i", str(scans), "--labels",
                                   str(args.labels), "--engine", engine, "--setting", setting, "--out", str(out),
                                   "--folds", ",".join(folds)], capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            results[(engine, setting)] = json.loads(done.stdout.strip().splitlines()[-1])
            results[(engine, setting)]["dice"] = mean_dice(out, args.labels, manifest["labels"]["names"])

    print(f"\n{describe('cpu')}; bundle {args.bundle} "
          f"(folds {','.join(folds)}); {results[('ours', 'default')]['scans']} scans")
    print("settings: default = step 0.5 with mirroring (nnU-Net's defaults); fast = step 0.75, no mirroring\n")
    print("| engine | settings | model load s | per scan s | total s | mean Dice | per label |")
    print("|---|---|---|---|---|---|---|")
    for (engine, setting), r in results.items():
        mean, per = r["dice"]
        labels = ", ".join(f"{k} {v:.4f}" for k, v in per.items())
        print(f"| {'nnU-Net predictor' if engine == 'nnunet' else 'exe_predict.py'} | {setting} | {r['load']:.1f} | "
              f"{r['predict'] / r['scans']:.3f} | {r['total']:.1f} | {mean:.4f} | {labels} |")
    for setting in SETTINGS:
        ours, theirs = results[("ours", setting)], results[("nnunet", setting)]
        print(f"\n{setting}: per-scan time ours / nnU-Net = {ours['predict'] / theirs['predict']:.3f} "
              f"(target <= 1.05)")
    d, f = results[("ours", "default")], results[("ours", "fast")]
    print(f"fast mode: {d['predict'] / f['predict']:.2f}x faster per scan than the default settings (target >= 4), "
          f"mean Dice {f['dice'][0]:.4f} vs {d['dice'][0]:.4f} (loss {d['dice'][0] - f['dice'][0]:+.4f}, target <= 0.01)")
    print(f"voxels labelled the same by both engines (default settings): "
          f"{agreement(work / 'nnunet_default', work / 'ours_default'):.6f}")
    print(f"outputs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
