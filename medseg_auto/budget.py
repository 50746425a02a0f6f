"""The clock for the whole run: ``-t`` minutes from the start of the command to the exported bundle.

Phases are measured as they run; what is left after ingest and planning, minus a reserve for the export,
is split across the folds still to train (each fold's share holds its training and its final validation).
The time used is kept by the run's ``run_record.TimeLedger`` and saved in its record, so a resumed run
continues with the remaining budget.
"""
from __future__ import annotations

from dataclasses import dataclass

EXPORT_RESERVE_SECONDS = 10.0   # copy checkpoints, load the bundle once to verify it, model card, curves
REPORT_BASE_SECONDS = 3.0       # report.html: imports, timeline, score charts, the page
REPORT_FOLD_SECONDS = 1.5       # and per fold: curves, validation scores, overlays (1.5x the 0.9 s measured per
                                # hippocampus fold of 40 cases; 5 folds: 5.5 s of CPU in all)
USEFUL_FOLD_SECONDS = 300.0     # below this a fold's model is a sketch: warn and suggest fewer folds
MIN_FOLD_SECONDS = 30.0         # below this nothing can be trained: refuse


def report_reserve_seconds(folds: int) -> float:
    """Seconds kept for writing report.html at export, for a model of ``folds`` folds."""
    return REPORT_BASE_SECONDS + REPORT_FOLD_SECONDS * folds


@dataclass
class FoldShare:
    """A fold still to train: its planned share (None before the first split) and the time it has used."""

    fold: int | str
    planned: float | None = None
    spent: float = 0.0


def split_training(seconds: float, folds: list[FoldShare]) -> dict:
    """Seconds for each unfinished fold, training and validation included.

    Fresh run: equal shares. Resumed run: what is left goes to each fold in proportion to the part of its
    planned share it has not used, so a fold half done gets half as much new time as an untouched one.
    """
    need = {f.fold: (1.0 if f.planned is None else max(0.0, 1.0 - f.spent / f.planned)) for f in folds}
    total = sum(need.values())
    if total <= 0:
        return {f.fold: f.spent for f in folds}
    return {f.fold: f.spent + max(0.0, seconds) * need[f.fold] / total for f in folds}


def estimate_plan_seconds(voxels: int, cases: int) -> float:
    """A prior for fingerprint + planning + preprocessing of one configuration on this kind of machine.

    Calibrated on 2 cores: MSD hippocampus (200 cases, 12.6 M voxels) 19-29 s, 12 of its cases 29 s, the
    example dataset (16 cases x 2 channels) 24 s: nnU-Net's worker processes cost most of it. Only used
    to warn before planning starts; the real time is measured.
    """
    return 20.0 + 0.5e-6 * voxels + 0.02 * cases


def budget_advice(budget: float, folds: list, per_fold: float, rounds: int | None = None) -> str | None:
    """A warning with numbers when each fold gets too little time to be useful, or None. ``rounds``: the
    folds train in this many rounds (default: one after another)."""
    if per_fold >= USEFUL_FOLD_SECONDS:
        return None
    n = len(folds)
    rounds = n if rounds is None else rounds
    text = (f"The budget of {fmt_duration(budget)} leaves about {fmt_duration(per_fold)} of training per fold "
            f"for {n} fold{'s' if n > 1 else ''}{' at once' if rounds < n else ''}; a useful model needs at "
            f"least {fmt_duration(USEFUL_FOLD_SECONDS)} per fold.")
    if rounds > 1:
        text += f" Consider -f 0 (one fold would get about {fmt_duration(per_fold * rounds)}) or a larger -t."
    else:
        text += " Consider a larger -t."
    return text


def fmt_duration(seconds: float) -> str:
    """``75`` -> ``1:15``, ``3725`` -> ``1:02:05``."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
