"""``exe_predict.py`` / ``medseg-predict``: segment new scans with an exported model bundle.

Argument parsing, messages and exit codes only; the work is :func:`medseg_auto.predict.predict`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medseg_auto import __version__
from medseg_auto.errors import InputError, MedsegError

EPILOG = """\
examples:
  exe_predict.py -m output_models/hippocampus -i new_scans/ -o predictions/
  exe_predict.py -m output_models/brats -i case_dir/ -o out/ --fast          # CPU: no mirroring, step 0.75
  exe_predict.py -m output_models/hippocampus -i test/images -o out/ --labels-dir test/labels   # + metrics.csv

exit codes: 0 success, 2 bad input or arguments (nothing written), 1 internal failure, 130 interrupted."""


def build_parser() -> argparse.ArgumentParser:
    from medseg_auto.predict.engine import DEFAULT_STEP, FAST_STEP

    p = argparse.ArgumentParser(prog="exe_predict.py", description="Segment new scans with a trained model.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", dest="model", type=Path, required=True, help="model folder (output_models/NAME)")
    p.add_argument("-i", dest="scans", type=Path, required=True,
                   help="a scan, or a folder of scans in any layout training accepts (labels there are left out)")
    p.add_argument("-o", dest="output", type=Path, required=True, help="output folder (created)")
    p.add_argument("--folds", help="folds to ensemble, e.g. 0,2 (default: every fold the model holds)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto = CUDA when available (default)")
    p.add_argument("--no-tta", action="store_true", help="no test-time mirroring (up to 8x faster in 3D)")
    p.add_argument("--fast", action="store_true",
                   help=f"fast mode for CPUs: no mirroring and sliding-window step {FAST_STEP} instead of {DEFAULT_STEP}")
    p.add_argument("--step-size", type=float, help=f"sliding-window step as a fraction of the patch "
                   f"(default {DEFAULT_STEP}, {FAST_STEP} with --fast)")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write CASE_probabilities.npz (per class, float16)")
    p.add_argument("--labels-dir", type=Path, help="reference labels: also write metrics.csv (Dice, HD95)")
    p.add_argument("--output-format", choices=("auto", "dicom-seg"), default="auto", help="auto: each scan's "
                   "own format (NIfTI for a DICOM series; default); dicom-seg: a DICOM-SEG per DICOM series, "
                   "referencing it")
    p.add_argument("--series", metavar="UID_OR_DESCRIPTION", help="DICOM: the series to read where a folder "
                   "holds several (its SeriesInstanceUID or SeriesDescription)")
    p.add_argument("--preview", action="store_true", help="also preview/NAME.png per scan (the segmentation over "
                   "three orthogonal slices through its largest structure; 2D: the image) and preview/index.html")
    p.add_argument("-e", dest="ending", help="only read files with this ending when a folder holds several types")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an output folder that already holds files (same names are replaced)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--version", action="version", version=f"medseg_auto {__version__}")
    return p


def parse_options(argv: list[str] | None = None):
    from medseg_auto.predict import PredictOptions, Settings
    from medseg_auto.predict.engine import DEFAULT_STEP, FAST_STEP

    args = build_parser().parse_args(argv)
    step = args.step_size if args.step_size is not None else FAST_STEP if args.fast else DEFAULT_STEP
    if not 0 < step <= 1:
        raise InputError(f"--step-size {step:g}: give a fraction of the patch in (0, 1], e.g. 0.5")
    folds = None
    if args.folds:
        folds = [f.strip() for f in args.folds.split(",") if f.strip()]
        if not folds or any(not (f.isdigit() or f in ("all", "full")) for f in folds):
            raise InputError(f"--folds {args.folds}: give fold numbers separated by commas (e.g. 0,2) or full")
    from medseg_auto.ingest.dicom import series_choice

    settings = Settings(mirroring=not (args.no_tta or args.fast), step_size=step,
                        probabilities=args.save_probabilities)
    return PredictOptions(model=args.model, scans=args.scans, output=args.output, folds=folds, device=args.device,
                          settings=settings, labels_dir=args.labels_dir, ending=args.ending,
                          overwrite=args.overwrite, progress=not args.quiet, preview=args.preview,
                          series=series_choice(args.series), output_format=args.output_format)


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parse_options(argv)
        from medseg_auto.predict import predict

        predict(opts)
    except MedsegError as e:
        print(f"\n{e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\nInterrupted: the segmentations finished so far are in the output folder; rerun with "
              "--overwrite to redo them all.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
