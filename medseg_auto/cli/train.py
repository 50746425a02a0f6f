"""``exe_train.py`` / ``medseg-train``: argument parsing, messages and exit codes only.

Exit codes: 0 success, 2 bad input or arguments (nothing changed), 1 internal failure, 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medseg_auto import __version__
from medseg_auto.errors import InputError, MedsegError
from medseg_auto.ingest import CheckedDataset, IngestOptions, check_dataset, convert
from medseg_auto.ingest.labels import LabelRequest, parse_label_arg, parse_regions
from medseg_auto.ingest.layout import dataset_name, locate_dataset
from medseg_auto.ingest.problems import format_table
from medseg_auto.report import dataset_summary
from medseg_auto.workspace import Workspace

CONFIGURATIONS = ("auto", "2d", "3d_fullres", "3d_lowres")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="exe_train.py",
        description="Train an nnU-Net segmentation model on a labelled dataset within a wall-clock budget.",
        epilog="Example: python3 exe_train.py -d Hippocampus -l anterior,posterior -i MRI -t 60 -f all")
    p.add_argument("-d", dest="dataset", help="dataset name: input_train/NAME/ (optional when only one dataset "
                   "is present)")
    p.add_argument("-l", dest="labels", help="foreground label names in value order (TUMOR or a,b), or with "
                   "their values (edema=2,enhancing=4); default label_1..N")
    p.add_argument("-i", dest="image_type", default="MRI", help="image type (MRI, CT: CT selects nnU-Net's CT "
                   "normalisation) or one name per channel (T1c,FLAIR); default MRI")
    p.add_argument("-t", dest="minutes", type=float, default=60.0, help="wall-clock budget in minutes for the "
                   "whole run (default 60)")
    p.add_argument("-f", dest="folds", default="all", help="'all' = folds 0-4, '0' or '0,2' = those folds, "
                   "'full' = one model on all cases (default all)")
    p.add_argument("-e", dest="ending", help="image file ending to use when a folder holds several (.nii.gz)")
    p.add_argument("-c", dest="configuration", default="auto", choices=CONFIGURATIONS,
                   help="nnU-Net configuration (default auto: nnU-Net's choice, 2d for 2D data)")
    p.add_argument("--channels", help="channels to use, in this order, by the names found in the files "
                   "(e.g. T1c,FLAIR)")
    p.add_argument("--label-pattern", help="file-name pattern of the label files, when not detected (e.g. "
                   "'*OTMultiClass*')")
    p.add_argument("--regions", help="BraTS-style regions from label values, largest first: "
                   "\"WT=1,2,3,4;TC=1,3,4;ET=4\"")
    p.add_argument("--merge-labels", action="store_true", help="merge all foreground values into the one label "
                   "named with -l")
    p.add_argument("--skip-invalid", action="store_true", help="leave out the cases with errors and go on")
    p.add_argument("--dry-run", action="store_true", help="ingest, check and convert, print what training would "
                   "do; train nothing")
    p.add_argument("--input-dir", type=Path, help="folder holding the datasets (default ./input_train)")
    p.add_argument("--work-dir", type=Path, help="folder for the run's work files (default ./work)")
    p.add_argument("--output-dir", type=Path, help="folder for exported models (default ./output_models)")
    p.add_argument("--version", action="version", version=f"medseg_auto {__version__}")
    return p


def parse_folds(text: str) -> list:
    """``all`` -> [0..4]; ``full`` -> ['all'] (nnU-Net's fold on all cases); ``0,2`` -> [0, 2]."""
    text = text.strip().lower()
    if text == "all":
        return [0, 1, 2, 3, 4]
    if text == "full":
        return ["all"]
    try:
        folds = sorted({int(f) for f in text.split(",")})
    except ValueError:
        folds = []
    if not folds or any(f < 0 or f > 4 for f in folds):
        raise InputError(f"-f '{text}': use all, full, or fold numbers 0-4 separated by commas (e.g. -f 0,2)")
    return folds


def main(argv: list[str] | None = None, root: Path | None = None) -> int:
    """Run the CLI; ``root`` is where input_train/, work/ and output_models/ live (default: cwd)."""
    args = build_parser().parse_args(argv)
    root = root or Path.cwd()
    try:
        return _run(args, root)
    except MedsegError as e:
        print(f"\n{e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, root: Path) -> int:
    input_root = args.input_dir or root / "input_train"
    folds = parse_folds(args.folds)
    if args.minutes <= 0:
        raise InputError(f"-t {args.minutes:g}: the budget must be a positive number of minutes")
    names, values = parse_label_arg(args.labels)
    request = LabelRequest(names, values, parse_regions(args.regions), args.merge_labels)
    dataset_dir = locate_dataset(input_root, args.dataset)
    name = dataset_name(dataset_dir, input_root, args.dataset)
    print(f"medseg_auto {__version__}: dataset '{name}' from {dataset_dir}", file=sys.stderr)
    options = IngestOptions(
        dataset_dir=dataset_dir, labels=request,
        image_type=[t.strip() for t in args.image_type.split(",") if t.strip()],
        channels=[c.strip() for c in args.channels.split(",")] if args.channels else None,
        label_pattern=args.label_pattern, ending=args.ending, folds=folds, skip_invalid=args.skip_invalid)
    checked = check_dataset(options)
    _print_problems(checked)
    workspace = Workspace.create(args.work_dir or root / "work", name, dataset_dir)
    conversion = convert(checked, workspace)
    workspace.write_record(_run_record(args, checked, conversion, folds))
    print(dataset_summary(name, checked, conversion))
    print(_training_intent(args, folds, checked))
    if args.dry_run:
        return 0
    raise MedsegError("Training is not available in this version yet: the data was checked and converted to "
                      f"{conversion.folder}. Use --dry-run to check data without this message.")


def _print_problems(checked: CheckedDataset) -> None:
    if checked.problems:
        print(format_table(checked.problems), file=sys.stderr)
    if checked.skipped:
        print(f"--skip-invalid: continuing without {len(checked.skipped)} case(s): "
              f"{', '.join(checked.skipped)}", file=sys.stderr)


def _training_intent(args: argparse.Namespace, folds: list, checked: CheckedDataset) -> str:
    config = args.configuration
    if config == "auto":
        config = "2d (the data is 2D)" if checked.is_2d else "auto (nnU-Net's choice at planning)"
    fold_text = "one model on all cases (nnU-Net fold 'all')" if folds == ["all"] else \
        "folds " + ", ".join(str(f) for f in folds)
    head = "Dry run, nothing trained. Training would use" if args.dry_run else "Training"
    return f"\n{head}: configuration {config}, {fold_text}, whole-run budget {args.minutes:g} min."


def _run_record(args: argparse.Namespace, checked: CheckedDataset, conversion, folds: list) -> dict:
    """The run's record in the work folder: what was asked, found and converted (read by later stages)."""
    return {
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "input": str(checked.discovery.root),
        "layout": checked.discovery.layout,
        "folds": folds,
        "cases": {c.name: {"images": [str(f) for f in c.channels.values()], "label": str(c.label)}
                  for c in checked.cases},
        "skipped_cases": checked.skipped,
        "channels": {"keys": checked.channel_keys, "nnunet_names": conversion.channel_names},
        "labels": checked.labels.record(),
        "file_ending": conversion.file_ending,
        "is_2d": checked.is_2d,
        "raw_dataset": str(conversion.folder),
        "ingest_seconds": round(checked.seconds, 3),
    }


if __name__ == "__main__":
    sys.exit(main())
