"""Ingest as one call: discover -> read -> check -> (skip invalid cases) -> convert to nnU-Net raw.

The input folder is only ever read. All problems of all cases are collected before anything is decided;
errors raise :class:`DataProblems` (exit code 2) carrying the whole table.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from medseg_auto.errors import InputError
from medseg_auto.ingest.channels import resolve_channels
from medseg_auto.ingest.checks import check_case_count, check_consistency, check_files, check_geometry
from medseg_auto.ingest.convert import Conversion, colour_channels, convert_dataset
from medseg_auto.ingest.labels import LabelPlan, LabelRequest, plan_labels
from medseg_auto.ingest.layout import Discovery, SourceCase, discover, relative_name
from medseg_auto.ingest.problems import DATASET, Problem, format_table, invalid_cases
from medseg_auto.ingest.scan import FileInfo, scan_files
from medseg_auto.workspace import Workspace


class DataProblems(InputError):
    """The input has errors; ``problems`` holds every problem found (errors and warnings)."""

    def __init__(self, problems: list[Problem], skippable: set[str]):
        self.problems = problems
        errors = [p for p in problems if p.is_error]
        cases = invalid_cases(problems)
        hint = (f"Fix them, or rerun with --skip-invalid to continue without the {len(cases)} listed case(s)."
                if skippable and not any(p.case == DATASET for p in errors) else "Fix them and rerun.")
        super().__init__(f"{format_table(problems)}\n\n{len(errors)} error(s) in the input "
                         f"({len(cases)} case(s) affected). {hint} Nothing was changed.")


@dataclass
class IngestOptions:
    dataset_dir: Path
    labels: LabelRequest = field(default_factory=LabelRequest)
    image_type: list[str] = field(default_factory=lambda: ["MRI"])
    channels: list[str] | None = None
    label_pattern: str | None = None
    labels_dir: str | None = None  # --labels-dir: the label folder where several could hold the labels
    ending: str | None = None
    folds: list = field(default_factory=lambda: [0, 1, 2, 3, 4])
    skip_invalid: bool = False
    progress: bool = True
    series: str | None = None  # --series: the DICOM series (UID or description) to read where a folder holds several


@dataclass
class CheckedDataset:
    """A dataset that passed the checks: the cases to use, and everything known about them."""

    discovery: Discovery
    infos: dict[Path, FileInfo]
    cases: list[SourceCase]
    skipped: list[str]
    channel_keys: list[str]
    channel_names: list[str]
    labels: LabelPlan
    is_2d: bool
    problems: list[Problem]  # warnings, and the errors of skipped cases
    seconds: float
    colour_names: dict[str, list[str]] = field(default_factory=dict)  # -i R,G,B: names of a colour key's channels
    series: str | None = None  # --series, as checked: the conversion reads the same series


def check_dataset(options: IngestOptions) -> CheckedDataset:
    """Discover and check every case; raise :class:`DataProblems` unless the data can be used."""
    start = time.perf_counter()
    disc = discover(options.dataset_dir, options.label_pattern, options.ending, options.channels,
                    options.labels_dir)
    meta = disc.dataset_json
    # nnU-Net raw names its channels by position (_0000); the Decathlon's keys are already its names.
    declared = dict(enumerate(meta.channels)) if meta and meta.channels and disc.layout == "nnunet_raw" else None
    image_type = options.image_type
    if len(image_type) > 1 and disc.channel_keys and len(image_type) > len(disc.channel_keys):
        image_type = ["MRI"]  # perhaps one name per colour channel: decided once the files are read
    keys, names = resolve_channels(disc.channel_keys, options.channels, image_type, declared)
    problems = list(disc.problems)
    if not keys:
        problems.append(Problem(DATASET, relative_name(disc.root, disc.root.parent), "no case with both an image "
                                "and a label was found", "see the rows above; input_train/README.md shows the "
                                "layouts"))
        raise DataProblems(problems, set())
    # Cases missing a selected channel were reported by discovery; only complete cases are read.
    cases = [c for c in disc.cases if c.label is not None and all(k in c.channels for k in keys)]
    cases = [SourceCase(c.name, {k: c.channels[k] for k in keys}, c.label,
                        {k: c.volumes[k] for k in keys if k in c.volumes}) for c in cases]
    files = list(dict.fromkeys([(f, False) for c in cases for f in c.files()] + [(c.label, True) for c in cases]))
    infos = scan_files(files, progress=options.progress, series=options.series)
    rel = lambda f: relative_name(f, disc.root)  # noqa: E731 - a short local helper
    colour_names = _colour_names(cases, infos, keys, options) if image_type is not options.image_type else {}
    if colour_names:
        names = [colour_names.get(k, [n])[0] for k, n in zip(keys, names)]
    for case in cases:
        problems += check_files(case, infos, rel) + check_geometry(case, infos, rel)
    problems += check_consistency(cases, infos, rel)

    def label_values(case: SourceCase) -> set[int] | None:
        info = infos[case.label]
        if info.error or info.values is None or any(v != int(v) for v in info.values):
            return None
        return {int(v) for v in info.values}

    values = {c.name: v for c in cases if (v := label_values(c)) is not None}
    plan = plan_labels(values, options.labels, _declared_labels(disc, options.labels),
                       {c.name: rel(c.label) for c in cases})
    problems += plan.problems
    bad = invalid_cases(problems)
    usable = [c for c in cases if c.name not in bad]
    problems += check_case_count(len(usable) if options.skip_invalid else len(disc.cases), options.folds)
    errors = [p for p in problems if p.is_error]
    if errors and (not options.skip_invalid or any(p.case == DATASET for p in errors)):
        raise DataProblems(problems, bad)
    if not usable:
        raise DataProblems(problems, set())
    dims = {infos[f].ndim for c in usable for f in c.channels.values()}
    return CheckedDataset(disc, infos, usable, sorted(bad), keys, names, plan, dims == {2}, problems,
                          time.perf_counter() - start, colour_names, options.series)


def _colour_names(cases: list[SourceCase], infos: dict[Path, FileInfo], keys: list[str],
                  options: IngestOptions) -> dict[str, list[str]]:
    """``-i R,G,B``: one name per nnU-Net channel where colour images become three; by channel key."""
    colour = colour_channels(cases, infos, keys)
    wanted = options.image_type
    if len(wanted) != len(keys) + 2 * len(colour):
        resolve_channels(keys, None, wanted)  # raises the usual message, naming what was found
        return {}
    out, i = {}, 0
    for key in keys:
        n = 3 if key in colour else 1
        out[key] = list(wanted[i:i + n])
        i += n
    return out


def _declared_labels(disc: Discovery, request: LabelRequest) -> dict | None:
    """The labels a dataset.json declares, in nnU-Net's form: always for nnU-Net raw; for the Decathlon
    unless ``-l``, ``--regions`` or ``--merge-labels`` asks for others."""
    meta = disc.dataset_json
    if meta is None or not meta.labels:
        return None
    if meta.is_decathlon and (request.names or request.regions or request.merge):
        return None
    return {"labels": meta.labels, "regions_class_order": meta.regions_class_order}


def convert(checked: CheckedDataset, workspace: Workspace, progress: bool = True) -> Conversion:
    """Write the checked dataset to nnU-Net raw in the work folder."""
    folder = workspace.reset_raw()
    return convert_dataset(folder, checked.cases, checked.infos, checked.channel_keys, checked.channel_names,
                           checked.labels, checked.is_2d, progress, checked.colour_names, checked.series)
