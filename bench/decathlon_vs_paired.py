#!/usr/bin/env python3
"""The Decathlon form against paired folders: the same hippocampus cases trained at the same budget.

The first ``--cases`` hippocampus cases are linked into ``input_train/`` twice, once as the Medical
Segmentation Decathlon publishes them (``imagesTr/``, ``labelsTr/``, a ``dataset.json`` with ``modality``,
``labels`` and ``training``) and once as paired ``images/`` + ``labels/`` folders; each is trained with
``exe_train.py -t MINUTES -f 0`` in its own work folder, one after the other, and its bundle predicts the
same held-out cases (the last ``--heldout``, never trained on) with ``exe_predict.py``. Both forms become
the same nnU-Net raw dataset (tests/test_decathlon.py), so the two Dice differ by run noise only.

    nohup python3 bench/decathlon_vs_paired.py --minutes 10 > decathlon.log 2>&1 &

Not a test. Keep the machine otherwise idle while it runs (about 2 x MINUTES + 3 minutes).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import shutil
import subprocess
import sys
import time
from pathlib import Path

from heldout import mean_dice, per_case_dice  # bench/ is on the path when a script runs
from machine import describe

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSEG_DATA", REPO.parent / "shared" / "data"))


def case_differences(a: Path, b: Path, labels: Path, names: dict[str, str]) -> list[float]:
    """Per held-out case: mean foreground Dice of the predictions in ``b`` minus those in ``a``."""
    first, second = per_case_dice(a, labels, names), per_case_dice(b, labels, names)
    return [sum(second[c].values()) / len(names) - sum(first[c].values()) / len(names) for c in first]


def link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.symlink_to(src.resolve())


def build(form: str, folder: Path, names: list[str]) -> None:
    """``names`` of the real hippocampus set in ``folder`` (a dataset folder of input_train/), in ``form``."""
    src = DATA / "hippocampus"
    if form == "paired":
        for name in names:
            link(src / "images" / name, folder / "images" / name)
            link(src / "labels" / name, folder / "labels" / name)
        return
    for name in names:
        link(src / "images" / name, folder / "imagesTr" / name)
        link(src / "labels" / name, folder / "labelsTr" / name)
    (folder / "dataset.json").write_text(json.dumps({
        "name": "Hippocampus", "tensorImageSize": "3D", "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"}, "numTraining": len(names),
        "training": [{"image": f"./imagesTr/{n}", "label": f"./labelsTr/{n}"} for n in names]}, indent=1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--cases", type=int, default=160, help="training cases")
    p.add_argument("--heldout", type=int, default=40)
    p.add_argument("--work", type=Path, default=Path("/tmp/medseg_decathlon_vs_paired"))
    p.add_argument("--forms", default="paired,decathlon", help="the runs, in order (paired,paired: the run-to-run "
                   "noise of the same form)")
    args = p.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    names = sorted(f.name for f in (DATA / "hippocampus" / "images").iterdir())
    train, test = names[:args.cases], names[-args.heldout:]
    heldout = args.work / "heldout"
    for name in test:
        link(DATA / "hippocampus" / "images" / name, heldout / "images" / name)
        link(DATA / "hippocampus" / "labels" / name, heldout / "labels" / name)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    rows = []
    for i, form in enumerate(args.forms.split(",")):
        root = args.work / f"{i}_{form}"
        build(form, root / "input_train" / "hippocampus", train)
        labels = ["-l", "Anterior,Posterior"] if form == "paired" else []
        print(f"[{form}] exe_train.py -t {args.minutes:g} -f 0", file=sys.stderr, flush=True)
        start = time.monotonic()
        subprocess.run([sys.executable, str(REPO / "exe_train.py"), "-d", "hippocampus", *labels, "-f", "0",
                        "-t", f"{args.minutes:g}", "--input-dir", str(root / "input_train"), "--work-dir",
                        str(root / "work"), "--output-dir", str(root / "output_models")], check=True, env=clean)
        wall = time.monotonic() - start
        bundle = root / "output_models" / "hippocampus"
        subprocess.run([sys.executable, str(REPO / "exe_predict.py"), "-m", str(bundle), "-i",
                        str(heldout / "images"), "-o", str(root / "pred"), "--quiet"], check=True, env=clean)
        card = json.loads((bundle / "model_card.json").read_text())
        dice, per = mean_dice(root / "pred", heldout / "labels", card["labels"]["names"])
        rows.append((form, wall, card["folds"]["0"], dice, per, root / "pred"))

    print(f"\n{describe('cpu')}; hippocampus, {args.cases} training cases (fold 0 of nnU-Net's split), "
          f"{args.heldout} held-out cases, -t {args.minutes:g}\n")
    print("| form | wall | fold seconds | iterations x batch | validation | held-out Dice (mirrored) | per label |")
    print("|---|---|---|---|---|---|---|")
    for form, wall, fold, dice, per, _ in rows:
        print(f"| {form} | {wall / 60:.1f} min | {fold['seconds']:.0f} | {fold['iterations']} x {fold['batch_size']} "
              f"| {fold['validation']} | {dice:.4f} | " + ", ".join(f"{k} {v:.4f}" for k, v in per.items()) + " |")
    first = rows[0]
    for form, _, _, dice, _, pred in rows[1:]:
        diffs = case_differences(first[5], pred, heldout / "labels", card["labels"]["names"])
        se = statistics.stdev(diffs) / math.sqrt(len(diffs))
        print(f"\ndifference ({form} - {first[0]}): {dice - first[3]:+.4f} mean foreground Dice; case by case "
              f"{statistics.mean(diffs):+.4f} +- {se:.4f} (paired standard error over {len(diffs)} cases: the "
              f"two models' difference on these cases, not the run-to-run noise of training)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
