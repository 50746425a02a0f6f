"""Ingest cost against nnU-Net's own planning and preprocessing, same data, same machine, one run.

Ours: discovery + reading and checking every file + conversion to nnU-Net raw.
nnU-Net: fingerprint extraction, experiment planning and preprocessing of its default configurations,
through its Python API, on the dataset we converted.

    python3 bench/ingest_vs_preprocess.py --data ../shared/data/hippocampus [--processes 2]

Not part of the test suite. The work folder is a temporary directory, removed at the end.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medseg_auto.ingest import IngestOptions, check_dataset, convert  # noqa: E402
from medseg_auto.workspace import Workspace  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/hippocampus")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                   help="nnU-Net worker processes for fingerprint and preprocessing (default: all cores)")
    p.add_argument("--configurations", default="2d,3d_fullres", help="nnU-Net configurations to preprocess")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workspace = Workspace.create(Path(tmp), args.data.name, args.data)
        workspace.activate()  # before nnunetv2 is imported: it reads its paths at import time

        t0 = time.perf_counter()
        checked = check_dataset(IngestOptions(args.data, progress=False))
        t1 = time.perf_counter()
        conversion = convert(checked, workspace, progress=False)
        ours = time.perf_counter() - t0
        print(f"ours: {len(checked.cases)} cases, check {t1 - t0:.2f} s, convert {ours - (t1 - t0):.2f} s "
              f"({conversion.referenced} files used in place, {conversion.written} written)", flush=True)

        from nnunetv2.experiment_planning.plan_and_preprocess_api import (
            extract_fingerprints, plan_experiments, preprocess)

        configs = tuple(c for c in args.configurations.split(",") if c)
        t0 = time.perf_counter()
        extract_fingerprints([workspace.dataset_id], num_processes=args.processes, verbose=False,
                             show_progress_bar=False)
        t1 = time.perf_counter()
        plan_experiments([workspace.dataset_id])
        t2 = time.perf_counter()
        preprocess([workspace.dataset_id], configurations=configs, num_processes=[args.processes] * len(configs),
                   verbose=False)
        t3 = time.perf_counter()
        nnunet = t3 - t0

    print("\n| step | seconds |\n|---|---|")
    print(f"| medseg_auto ingest (discover + check every file + convert) | {ours:.2f} |")
    print(f"| nnU-Net fingerprint | {t1 - t0:.2f} |")
    print(f"| nnU-Net planning | {t2 - t1:.2f} |")
    print(f"| nnU-Net preprocessing ({', '.join(configs)}, {args.processes} processes) | {t3 - t2:.2f} |")
    print(f"| nnU-Net total | {nnunet:.2f} |")
    print(f"\ningest / nnU-Net plan+preprocess = {100 * ours / nnunet:.1f} %  "
          f"(ingest / preprocessing alone = {100 * ours / (t3 - t2):.1f} %; target <= 5 %)")


if __name__ == "__main__":
    main()
