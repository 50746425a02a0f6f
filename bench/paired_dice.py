"""Is one setting better than another on the same held-out cases, or within the noise?

Dice-at-budget runs differ by a few thousandths; with 40 held-out cases a single mean says little. This
pairs the runs case by case (same scans, same labels): for each run against the first, the mean of the
per-case differences of mean foreground Dice and its standard error. It does not see the run-to-run
noise of training (another seed, another speed of the machine): one run per setting stays one run.

    python3 bench/paired_dice.py /tmp/dab30_w05 /tmp/dab30_w025 /tmp/dab30_cos

Each argument is a ``dice_at_budget.py`` work folder (``heldout/labels``, ``pred_ours_tta``);
``--predictions pred_ours`` compares the predictions without mirroring.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from heldout import per_case_dice  # bench/ is on the path when a script runs


def case_means(work: Path, predictions: str) -> dict[str, float]:
    manifests = sorted((work / "output_models").glob("*/medseg_auto.json"))
    if len(manifests) != 1:
        raise SystemExit(f"{work}: expected one trained bundle in output_models/, found {len(manifests)}")
    names = json.loads(manifests[0].read_text())["labels"]["names"]
    per = per_case_dice(work / predictions, work / "heldout" / "labels", names)
    from medseg_auto.metrics import nanmean  # per_case_dice put the repository on the path

    return {case: nanmean(d.values()) for case, d in per.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="dice_at_budget.py work folders, the reference first")
    p.add_argument("--predictions", default="pred_ours_tta", help="prediction folder in each (default mirrored)")
    args = p.parse_args()
    base = case_means(args.runs[0], args.predictions)
    print(f"{'run':<36} {'cases':>5} {'mean Dice':>9} {'diff':>8} {'SE':>7} {'diff/SE':>7}")
    for i, run in enumerate(args.runs):
        means = base if i == 0 else case_means(run, args.predictions)
        if means.keys() != base.keys():
            raise SystemExit(f"{run}: its held-out cases are not those of {args.runs[0]}")
        diffs = [means[c] - base[c] for c in base]
        n = len(diffs)
        mean = sum(diffs) / n
        se = statistics.stdev(diffs) / math.sqrt(n) if n > 1 else float("nan")
        ratio = f"{mean / se:+7.1f}" if se > 0 else "      -"
        print(f"{str(run):<36} {n:>5} {sum(means.values()) / n:>9.4f} {mean:>+8.4f} {se:>7.4f} {ratio}")


if __name__ == "__main__":
    main()
