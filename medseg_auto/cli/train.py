"""``exe_train.py`` / ``medseg-train``: argument parsing, messages and exit codes only.

Exit codes: 0 success, 2 bad input or arguments (nothing changed), 1 internal failure, 130 interrupted.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from medseg_auto import __version__
from medseg_auto.device import COMPILE_CHOICES
from medseg_auto.errors import InputError, MedsegError
from medseg_auto.example import EXAMPLE_NAME, LABELS as EXAMPLE_LABELS, write_example_dataset
from medseg_auto.ingest import IngestOptions
from medseg_auto.ingest.dicom import series_choice
from medseg_auto.ingest.labels import LabelRequest, parse_label_arg, parse_regions
from medseg_auto.ingest.layout import dataset_name, locate_dataset
from medseg_auto.parallel import rendezvous_arguments
from medseg_auto.plan import CONFIGURATIONS
from medseg_auto.run import RunOptions, train
from medseg_auto.trainers import TRAINER_NAMES
from medseg_auto.trainers.augmentation import AUGMENTATIONS, check_augmentation
from medseg_auto.trainers.precision import PRECISIONS
from medseg_auto.trainers.schedule import SHAPES

EXAMPLE_MINUTES = 4.0  # with start-up and data generation, about 5 minutes on a 2-core CPU


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
    p.add_argument("-t", dest="minutes", type=float, help="wall-clock budget in minutes for the whole run "
                   "(default 60)")
    p.add_argument("-f", dest="folds", help="'all' = folds 0-4, '0' or '0,2' = those folds, 'full' = one model "
                   "on all cases (default all)")
    p.add_argument("-e", dest="ending", help="image file ending to use when a folder holds several (.nii.gz)")
    p.add_argument("-c", dest="configuration", default="auto", choices=CONFIGURATIONS,
                   help="nnU-Net configuration (default auto: nnU-Net's choice, 2d for 2D data); 3d_lowres where "
                   "nnU-Net planned none is planned by its planner at a coarser spacing (large images on a CPU)")
    p.add_argument("--channels", help="channels to use, in this order, by the names found in the files "
                   "(e.g. T1c,FLAIR)")
    p.add_argument("--label-pattern", help="file-name pattern of the label files, when not detected (e.g. "
                   "'*OTMultiClass*')")
    p.add_argument("--series", metavar="UID_OR_DESCRIPTION", help="DICOM: the series to read where a folder "
                   "holds several (its SeriesInstanceUID or SeriesDescription, e.g. 'T1 AX')")
    p.add_argument("--labels-dir", metavar="FOLDER", help="the folder holding the labels where several folders "
                   "beside the images could (e.g. --labels-dir manual); a subfolder of the dataset or a path")
    p.add_argument("--regions", help="BraTS-style regions from label values, largest first: "
                   "\"WT=1,2,3,4;TC=1,3,4;ET=4\"")
    p.add_argument("--merge-labels", action="store_true", help="merge all foreground values into the one label "
                   "named with -l")
    p.add_argument("--skip-invalid", action="store_true", help="leave out the cases with errors and go on")
    p.add_argument("--dry-run", action="store_true", help="ingest, check, convert and plan, print the plan and "
                   "the budget split; train nothing")
    p.add_argument("--example", action="store_true", help=f"first run: generate a small two-channel dataset in "
                   f"input_train/{EXAMPLE_NAME}/ and train it (-t {EXAMPLE_MINUTES:g} -f 0 unless given)")
    p.add_argument("--check", action="store_true", help="only find, check and convert the data (seconds): is it "
                   "ready for training?")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to train (default "
                   "auto: CUDA if available)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="CPU: train N folds at once, each in its own "
                   "process with cores/N threads (default 1: folds in turn with every core; see the README for when "
                   "it pays)")
    p.add_argument("--gpus", metavar="LIST", help="CUDA: the GPUs to train folds on at once, one fold per GPU, by "
                   "index among the visible ones (e.g. 0,1; default: every visible GPU)")
    p.add_argument("--ddp", type=int, default=1, metavar="K", help="train each fold on K GPUs at once with "
                   "PyTorch DDP, started through torchrun (default 1)")
    p.add_argument("--nnodes", type=int, default=1, metavar="N", help="--ddp across N machines sharing the work "
                   "folder: this run starts the fold's ranks here and prints the torchrun command for the others")
    p.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="with --nnodes: where the machines meet (this "
                   "machine's address and a free port)")
    p.add_argument("--compile", default="auto", choices=COMPILE_CHOICES, help="CUDA: nnU-Net's torch.compile of "
                   "the network: auto (default: only for folds of 20 minutes or more, where the minute or two of "
                   "compilation pays back), on, off; a CPU never compiles")
    p.add_argument("--trainer", default="default", choices=TRAINER_NAMES, help="trainer (default: nnU-Net's, "
                   "trained for the time budget; dualbranch: one encoder per group of channels, fused deeper; cascade: "
                   "a low-resolution ROI model, then a CoordConv model segments crops around what it finds; 3D)")
    p.add_argument("--branches", metavar="GROUPS", help="dualbranch: the channels of each branch by name, groups "
                   "separated by '|' (e.g. \"T1c|FLAIR\" or \"T1,T1c|T2,FLAIR\"; default: first half | rest)")
    p.add_argument("--fuse-stage", type=int, metavar="K", help="dualbranch: resolution stages encoded per branch "
                   "before the shared deeper stages (default: half of nnU-Net's planned stages)")
    p.add_argument("--resume", action="store_true", help="continue the unfinished run of this dataset (rerunning "
                   "the same command does this too); an error if there is none")
    p.add_argument("--restart", action="store_true", help="discard an unfinished run of this dataset and start over")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model in output_models/NAME "
                   "(only once the new one is exported and verified)")
    p.add_argument("--keep-work", action="store_true", help="keep the work folder (nnU-Net's raw, preprocessed "
                   "and results folders) after the export")
    p.add_argument("--consume-input", action="store_true", help="delete input_train/NAME after a verified export")
    p.add_argument("--pretrained", type=Path, metavar="BUNDLE", help="fine-tune from an earlier model "
                   "(output_models/OLD) trained on the same channels; its network and preprocessing are kept")
    p.add_argument("--width", type=float, metavar="W", help="network features per stage as a share of nnU-Net's "
                   "plan (default: 0.5 on a CPU, where more iterations are worth more than width; 1 on a GPU)")
    p.add_argument("--lr-shape", default="constant_decay", choices=SHAPES, help="learning rate over the fold's "
                   "time: constant then linear decay (default), poly, cosine")
    p.add_argument("--lr", type=float, metavar="LR", help="initial learning rate, which --lr-shape then scales "
                   "over the time (default: nnU-Net's 0.01)")
    p.add_argument("--decay-fraction", type=float, default=0.3, help="constant_decay: share of the time spent "
                   "decaying to zero (default 0.3)")
    p.add_argument("--batch-size", type=int, metavar="N", help="patches per training step (default: nnU-Net's "
                   "plan, at most 180,000 voxels on a CPU)")
    p.add_argument("--augmentation", default="nnunet", choices=AUGMENTATIONS, help="nnunet: nnU-Net's data "
                   "augmentation (default); light: without its noise, blur and low-resolution transforms; strong: "
                   "nnU-Net's heavier nnUNetTrainerDA5 augmentation (not with --trainer cascade)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="CPU training's forward pass: fp32 "
                   "(nnU-Net's), bf16 (bfloat16 autocast, faster on processors with native bfloat16: AVX-512 BF16, "
                   "AMX) or auto (default: bf16 where the processor has it and a timed step is faster); a GPU uses "
                   "nnU-Net's mixed precision either way")
    p.add_argument("--report", type=Path, metavar="BUNDLE", help="only write BUNDLE/report.html for a model "
                   "already exported (output_models/NAME), older ones too; nothing is trained")
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


def parse_gpus(text: str | None) -> list[int] | None:
    """``0,1`` -> [0, 1]; None (every visible GPU) when not given."""
    if text is None:
        return None
    try:
        gpus = [int(g) for g in text.split(",") if g.strip()]
    except ValueError:
        gpus = []
    if not gpus or min(gpus) < 0 or len(set(gpus)) != len(gpus):
        raise InputError(f"--gpus '{text}': use GPU indices separated by commas, each once (e.g. --gpus 0,1)")
    return gpus


def main(argv: list[str] | None = None, root: Path | None = None) -> int:
    """Run the CLI; ``root`` is where input_train/, work/ and output_models/ live (default: cwd)."""
    args = build_parser().parse_args(argv)
    root = root or Path.cwd()
    try:
        return _run(args, root, list(sys.argv[1:] if argv is None else argv))
    except MedsegError as e:
        print(f"\n{e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, root: Path, argv: list[str]) -> int:
    if args.report is not None:
        from medseg_auto.reporting.command import report_for_bundle

        print(f"Report written: {report_for_bundle(args.report)}")
        return 0
    input_root = args.input_dir or root / "input_train"
    if args.example:
        _prepare_example(args, input_root)
    args.minutes = 60.0 if args.minutes is None else args.minutes
    folds = parse_folds(args.folds or "all")
    if args.minutes <= 0:
        raise InputError(f"-t {args.minutes:g}: the budget must be a positive number of minutes")
    if not 0.0 < args.decay_fraction <= 1.0:
        raise InputError(f"--decay-fraction {args.decay_fraction:g}: use a share of the time in (0, 1]")
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError(f"--batch-size {args.batch_size}: use 1 or more patches per step")
    if args.width is not None and not 0.0 < args.width <= 1.0:
        raise InputError(f"--width {args.width:g}: use a share of nnU-Net's planned features in (0, 1]")
    if args.width is not None and args.pretrained:
        raise InputError("--width with --pretrained: a fine-tuned model keeps the network of the bundle it starts "
                         "from; leave out --width")
    trainer_options = {k: v for k, v in (("branches", args.branches), ("fuse_stage", args.fuse_stage))
                       if v is not None}
    if trainer_options and args.trainer != "dualbranch":
        flags = " and ".join("--" + k.replace("_", "-") for k in trainer_options)
        raise InputError(f"{flags}: only for --trainer dualbranch")
    check_augmentation(args.augmentation, args.trainer)
    if args.lr is not None and not 0.0 < args.lr <= 1.0:
        raise InputError(f"--lr {args.lr:g}: use an initial learning rate in (0, 1] (nnU-Net's is 0.01)")
    gpus = parse_gpus(args.gpus)
    if min(args.workers, args.ddp, args.nnodes) < 1:
        raise InputError(f"--workers {args.workers} --ddp {args.ddp} --nnodes {args.nnodes}: use 1 or more")
    rendezvous_arguments(args.nnodes, args.rdzv_endpoint)  # refuses a missing endpoint before any work
    if args.pretrained and (args.ddp > 1 or args.nnodes > 1):
        raise InputError("--pretrained with --ddp/--nnodes: fine-tuning under DDP is not supported yet (nnU-Net's "
                         "weight loader maps the file to each rank's GPU); fine-tune without --ddp, or train with "
                         "--ddp from scratch")
    if args.nnodes > 1 and args.workers > 1:
        raise InputError("--nnodes with --workers: several machines train one fold at a time (--ddp K ranks each)")
    if args.device == "cpu" and gpus is not None:
        raise InputError("--gpus with --device cpu: on a CPU use --workers N to train folds at once")
    if args.workers > 1 and (args.ddp > 1 or args.device == "cuda"):
        raise InputError("--workers is for CPU training (folds at once on shares of the cores); on GPUs use --gpus "
                         "(one fold per GPU) or --ddp K (one fold on K GPUs)")
    names, values = parse_label_arg(args.labels)
    request = LabelRequest(names, values, parse_regions(args.regions), args.merge_labels)
    dataset_dir = locate_dataset(input_root, args.dataset)
    name = dataset_name(dataset_dir, input_root, args.dataset)
    print(f"medseg_auto {__version__}: dataset '{name}' from {dataset_dir}, budget {args.minutes:g} min",
          file=sys.stderr)
    options = IngestOptions(
        dataset_dir=dataset_dir, labels=request,
        image_type=[t.strip() for t in args.image_type.split(",") if t.strip()],
        channels=[c.strip() for c in args.channels.split(",")] if args.channels else None,
        label_pattern=args.label_pattern, ending=args.ending, folds=folds, skip_invalid=args.skip_invalid,
        labels_dir=args.labels_dir, series=series_choice(args.series))
    resume_argv = [a for a in argv if a not in ("--restart", "--dry-run", "--check")]
    run = RunOptions(
        name=name, ingest=options, minutes=args.minutes, folds=folds, configuration=args.configuration,
        trainer=args.trainer, device=args.device, work_dir=(args.work_dir or root / "work"),
        output_dir=(args.output_dir or root / "output_models"), command=shlex.join([*_program(), *resume_argv]),
        dry_run=args.dry_run, check_only=args.check, resume=args.resume, restart=args.restart, keep_work=args.keep_work,
        overwrite=args.overwrite, consume_input=args.consume_input, input_root=input_root,
        pretrained=args.pretrained.resolve() if args.pretrained else None, width=args.width,
        advise_budget=not args.example, workers=args.workers, gpus=gpus, ddp=args.ddp, nnodes=args.nnodes,
        rdzv_endpoint=args.rdzv_endpoint, compile=args.compile,
        settings={"lr_shape": args.lr_shape, "decay_fraction": args.decay_fraction,
                  "augmentation": args.augmentation, "batch_size": args.batch_size,
                  "learning_rate": args.lr, "precision": args.precision}, trainer_options=trainer_options)
    bundle = train(run)
    if bundle is not None:
        if (bundle / "report.html").is_file():
            print(f"\nReport:  {bundle / 'report.html'} (open it in a browser)")
        print(f"\nTry it:  {_predict_program()} -m {bundle} -i SCANS -o predictions --preview")
    return 0


def _prepare_example(args: argparse.Namespace, input_root: Path) -> None:
    """``--example``: the generated dataset (written once, reused after) and the settings for a first run."""
    if args.dataset not in (None, EXAMPLE_NAME):
        raise InputError(f"--example trains the generated dataset '{EXAMPLE_NAME}': leave out -d {args.dataset}")
    folder = write_example_dataset(input_root / EXAMPLE_NAME)
    print(f"--example: the generated dataset is in {folder}", file=sys.stderr)
    args.dataset = EXAMPLE_NAME
    args.labels = args.labels or ",".join(EXAMPLE_LABELS.values())
    args.folds = args.folds or "0"
    args.minutes = EXAMPLE_MINUTES if args.minutes is None else args.minutes


def _program() -> list[str]:
    """How this command was started, for the resume line."""
    return ["medseg-train"] if Path(sys.argv[0]).name == "medseg-train" else ["python3", "exe_train.py"]


def _predict_program() -> str:
    return "medseg-predict" if _program() == ["medseg-train"] else "python3 exe_predict.py"


if __name__ == "__main__":
    sys.exit(main())
