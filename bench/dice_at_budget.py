#!/usr/bin/env python3
"""Dice at a fixed budget: exe_train.py against plain nnU-Net given the same minutes on the same machine.

For one dataset, budget and fold 0, one after the other on the same split:

- ours: ``exe_train.py -t BUDGET -f 0`` on the training cases (work folder kept), then ``exe_predict.py``
  on the held-out cases;
- plain nnU-Net: its default trainer (``nnUNetTrainer``, its plans, network width and batch size, its
  data loading settings) through its own API on the same preprocessed data and split, stopped when it has
  run as long as our fold did (training plus validation); its best checkpoint (or, before its first epoch
  ends, the weights at the stop) predicts the same held-out cases with its own predictor.

Held-out cases (the last ``--heldout`` of the sorted cases) are never seen by either training. Both
predict them twice with the same settings: without mirroring, and with it (both predictors' default).
Prints one table.

    nohup python3 bench/dice_at_budget.py --minutes 15 > dice15.log 2>&1 &

Not a test; runs take about twice the budget plus prediction. Keep the machine otherwise idle. With
``--ours-only`` it stops after our half; the same command run again later adds plain nnU-Net's half.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from heldout import mean_dice  # bench/ is on the path when a script runs
from machine import describe

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSEG_DATA", REPO.parent / "shared" / "data"))


def split_cases(dataset: Path, work: Path, heldout: int, train_cases: int | None) -> tuple[Path, Path]:
    """Symlinks: ``work/input_train/NAME`` (training) and ``work/heldout/{images,labels}``."""
    names = sorted(p.name for p in (dataset / "images").iterdir())
    test, train = names[-heldout:], names[:-heldout]
    if train_cases:
        train = train[:train_cases]
    for group, folder in ((train, work / "input_train" / dataset.name), (test, work / "heldout")):
        for sub in ("images", "labels"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            for name in group:
                link = folder / sub / name
                if not link.exists():
                    link.symlink_to((dataset / sub / name).resolve())
    return work / "input_train" / dataset.name, work / "heldout"


def run_plain(work: Path, name: str, seconds: float, device: str = "cpu") -> None:
    """In this process: nnU-Net's default trainer on our run's preprocessed data, stopped after
    ``seconds``; then its own predictor on the held-out scans. Writes ``plain.json``."""
    sys.path.insert(0, str(REPO))
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from medseg_auto.plan import PLANS_IDENTIFIER, narrow_network
    from medseg_auto.workspace import Workspace

    class _Stop(Exception):
        pass

    class Stopwatch(nnUNetTrainer):
        """nnU-Net's trainer, unchanged but for a stop when the wall-clock time is up."""

        deadline = float("inf")
        iterations = 0

        def train_step(self, batch):
            if time.monotonic() >= self.deadline:
                raise _Stop
            self.iterations += 1
            return super().train_step(batch)

    ws = Workspace(work / "work" / name, name)
    ws.activate()
    pre = ws.preprocessed / ws.nnunet_name
    plans = json.loads((pre / f"{PLANS_IDENTIFIER}.json").read_text()) | {"continue_training": False}
    narrow_network(plans, "3d_fullres", 1.0)  # nnU-Net's network as it planned it, where ours was narrowed
    trainer = Stopwatch(plans, "3d_fullres", 0, json.loads((pre / "dataset.json").read_text()),
                        torch.device(device))
    start = time.monotonic()
    trainer.deadline = start + seconds
    try:
        trainer.run_training()
    except _Stop:
        pass
    trained = time.monotonic() - start
    folder = Path(trainer.output_folder)
    best = folder / "checkpoint_best.pth"
    used = "best" if best.is_file() else "weights at the stop"
    if not best.is_file():
        trainer.save_checkpoint(str(best))
    for loader in (trainer.dataloader_train, trainer.dataloader_val):
        if hasattr(loader, "_finish"):
            loader._finish()
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    checkpoint["trainer_name"] = "nnUNetTrainer"  # the same class as far as inference is concerned
    torch.save(checkpoint, best)
    named = work / "heldout_nnunet_named"
    named.mkdir(exist_ok=True)
    for f in sorted((work / "heldout" / "images").iterdir()):
        link = named / f.name.replace(".nii.gz", "_0000.nii.gz")
        if not link.exists():
            link.symlink_to(f.resolve())
    for mirroring, out in ((False, "pred_plain"), (True, "pred_plain_tta")):
        predictor = nnUNetPredictor(use_mirroring=mirroring, device=torch.device(device),
                                    perform_everything_on_device=device == "cuda", allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(folder.parent), use_folds=(0,),
                                                       checkpoint_name="checkpoint_best.pth")
        predictor.predict_from_files(str(named), str(work / out), overwrite=True,
                                     num_processes_preprocessing=2, num_processes_segmentation_export=2)
    (work / "plain.json").write_text(json.dumps({
        "seconds": trained, "iterations": trainer.iterations, "batch_size": trainer.batch_size,
        "epochs_finished": trainer.current_epoch, "checkpoint": used}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=Path, default=DATA / "hippocampus")
    p.add_argument("--labels", default="anterior,posterior", help="-l for exe_train.py")
    p.add_argument("--minutes", type=float, required=True, help="the whole-run budget (-t)")
    p.add_argument("--heldout", type=int, default=40)
    p.add_argument("--train-cases", type=int, default=None, help="at most this many training cases")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--ours-only", action="store_true", help="stop after our half (a rerun adds nnU-Net's)")
    p.add_argument("--train-args", default="", help="more exe_train.py flags for our half, to try a setting "
                   "against the defaults (e.g. '--decay-fraction 0.5')")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where both train and predict")
    p.add_argument("--plain-seconds", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    name = args.dataset.name
    work = args.work or Path(f"/tmp/dice_at_budget_{name}_{args.minutes:g}")
    if args.plain_seconds:
        run_plain(work, name, args.plain_seconds, args.device)
        return 0
    clean = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    bundle = work / "output_models" / name
    ours_file = work / "ours.json"
    if ours_file.is_file():  # our half is done (an earlier invocation): run plain nnU-Net's half only
        print(f"[ours] reusing the finished run in {work}", file=sys.stderr, flush=True)
        heldout = work / "heldout"
        ours_wall = json.loads(ours_file.read_text())["wall"]
    elif (work / "work").exists() or (work / "output_models").exists():
        print(f"{work} holds an unfinished earlier run: remove it or pass another --work", file=sys.stderr)
        return 2
    else:
        _, heldout = split_cases(args.dataset, work, args.heldout, args.train_cases)
        print(f"[ours] exe_train.py -t {args.minutes:g} -f 0 {args.train_args}", file=sys.stderr, flush=True)
        start = time.monotonic()
        subprocess.run([sys.executable, str(REPO / "exe_train.py"), "-d", name, "-l", args.labels, "-f", "0", "-t",
                        f"{args.minutes:g}", "--keep-work", "--input-dir", str(work / "input_train"), "--work-dir",
                        str(work / "work"), "--output-dir", str(work / "output_models"), "--device", args.device,
                        *shlex.split(args.train_args)],
                       check=True, env=clean)
        ours_wall = time.monotonic() - start
        for flags, out in ((["--no-tta"], "pred_ours"), ([], "pred_ours_tta")):
            subprocess.run([sys.executable, str(REPO / "exe_predict.py"), "-m", str(bundle), "-i",
                            str(heldout / "images"), "-o", str(work / out), "--quiet", "--device", args.device]
                           + flags, check=True, env=clean)
        ours_file.write_text(json.dumps({"wall": ours_wall}))
        if args.ours_only:
            names = json.loads((bundle / "model_card.json").read_text())["labels"]["names"]
            print(describe(args.device))
            for tta in (False, True):
                d, per = mean_dice(work / f"pred_ours{'_tta' if tta else ''}", heldout / "labels", names)
                print(f"ours, {'mirrored' if tta else 'no mirroring'}: mean Dice {d:.4f} ({per})")
            print("rerun the same command to add plain nnU-Net's half")
            return 0
    card = json.loads((bundle / "model_card.json").read_text())
    fold = card["folds"]["0"]

    print(f"[plain nnU-Net] nnUNetTrainer for {fold['seconds']:.0f} s (our fold's time)", file=sys.stderr, flush=True)
    # a fresh results folder for it: ours stays where the bundle came from
    shutil.rmtree(work / "work" / name / "nnUNet_results", ignore_errors=True)
    subprocess.run([sys.executable, __file__, "--dataset", str(args.dataset), "--minutes", f"{args.minutes:g}",
                    "--work", str(work), "--plain-seconds", str(fold["seconds"]), "--device", args.device],
                   check=True, env=clean)
    plain = json.loads((work / "plain.json").read_text())

    names = card["labels"]["names"]
    dice = {(engine, tta): mean_dice(work / f"pred_{engine}{'_tta' if tta else ''}", heldout / "labels", names)
            for engine in ("ours", "plain") for tta in (False, True)}

    print(f"\n{describe(args.device)}; {name}: "
          f"{card['training_cases']} training cases (fold 0 of nnU-Net's split), {args.heldout} held-out cases\n")
    print("| | budget | wall time | training time | iterations x batch | samples seen | mean Dice, no mirroring "
          "| mean Dice, mirrored | per label (mirrored) |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = (("medseg_auto", "ours", f"{args.minutes:g} min", f"{ours_wall / 60:.1f} min (whole run)", fold["seconds"],
             fold["iterations"], fold["batch_size"], ""),
            ("plain nnU-Net", "plain", "same time", "-", plain["seconds"], plain["iterations"], plain["batch_size"],
             f" ({plain['checkpoint']}, {plain['epochs_finished']} epoch(s) finished)"))
    for label, engine, budget, wall, seconds, iterations, batch, extra in rows:
        fast, (tta, per) = dice[engine, False][0], dice[engine, True]
        print(f"| {label} | {budget} | {wall} | {seconds / 60:.1f} min | {iterations} x {batch} | {iterations * batch} "
              f"| {fast:.4f} | {tta:.4f} | " + ", ".join(f"{k} {v:.4f}" for k, v in per.items()) + f"{extra} |")
    for tta in (False, True):
        print(f"difference (ours - plain), {'mirrored' if tta else 'no mirroring'}: "
              f"{dice['ours', tta][0] - dice['plain', tta][0]:+.4f} mean foreground Dice")
    return 0


if __name__ == "__main__":
    sys.exit(main())
