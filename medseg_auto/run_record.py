"""A run's state as typed records: ``work/NAME/run.json`` (``RunRecord``), the run's time (``TimeLedger``) and
each fold stage's clock beside its checkpoint (``FoldClock``, ``medseg_clock.json``).

The run writes ``run.json`` at each step and reads it back to resume an interrupted run; a fold process
reads its stages' clocks. Reading validates every field, as the bundle's manifest does
(``medseg_auto.manifest``, whose records for channels, labels and stages are reused here), so a damaged or
hand-edited file is refused with the file and the field named, never a ``KeyError``. The JSON is the one
earlier versions wrote (same keys, same shape); fields a file may lack have defaults.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

from medseg_auto.errors import InputError
from medseg_auto.fold import FoldRecord
from medseg_auto.manifest import (ChannelsRecord, LabelsRecord, RecordError, StageRecord, _Fields, _Invalid, _bool,
                                  _int_list, _is_int, _mapping, _number, _shown, _str, _str_list)
from medseg_auto.train import FoldResult
from medseg_auto.trainers.epoch_plan import FoldBudget, _Speed
from medseg_auto.workspace import write_json_atomic

RUN_FILE = "run.json"
CLOCK_FILE = "medseg_clock.json"

_RUN_REMEDY = ("the run record is damaged or was edited by hand: add --restart to train this dataset afresh "
               "(what the run trained so far is discarded).")
_CLOCK_REMEDY = ("the fold's clock beside its checkpoint is damaged or was edited by hand: add --restart to "
                 "train afresh, or delete this fold's folder to train the fold again.")


@dataclass
class TimeLedger:
    """The run's time: the ``-t`` budget, what earlier sessions of an interrupted run used, this session's
    start and the seconds each phase took (``ingest``, ``plan``, ``fold_F``).

    Where each second is kept, and why:

    - the run's clock (``elapsed``: ``spent_before`` plus this session's monotonic time) counts everything,
      checking, planning, waiting for fold processes and export included. It is saved in ``run.json``
      (``clock.spent``, with ``phases``) after each step, every epoch of a fold trained in the run's process
      and every 15 s while fold processes train, so a resume after a kill -9 loses at most that much;
    - each fold stage's own clock (``FoldClock.spent``) is written with its checkpoint, atomically, beside it:
      it is the time that checkpoint holds, so it is what survives a kill -9 for the fold. A resumed fold
      continues from it (``FoldBudget.spent``) and the folds' shares of the time left are split by it. The
      time between a fold's last checkpoint and a kill counts against the run, not the fold: that training
      is done again;
    - ``phases`` says where the run's time went, for the model card: ``ingest`` this session's check and
      conversion, ``plan`` summed over sessions, ``fold_F`` the fold's stages once it is done.
    """

    budget: float
    spent_before: float = 0.0
    started: float = field(default_factory=lambda: time.monotonic())  # this session's start
    phases: dict[str, float] = field(default_factory=dict)

    def elapsed(self) -> float:
        """Seconds of the budget used, earlier sessions included."""
        return self.spent_before + time.monotonic() - self.started

    def remaining(self) -> float:
        return self.budget - self.elapsed()

    def resume(self, earlier: TimeLedger) -> None:
        """Continue an interrupted run: its time counts as spent (the budget is this session's ``-t``)."""
        self.spent_before = earlier.spent_before
        self.phases = dict(earlier.phases)

    def clock(self) -> dict:
        """``run.json``'s ``clock``."""
        return {"budget": self.budget, "spent": round(self.elapsed(), 1)}

    @classmethod
    def from_dict(cls, clock: Any, phases: dict[str, float], source: str = RUN_FILE) -> TimeLedger:
        """Read back from ``run.json``'s ``clock`` and ``phases``: the time saved, counting on from now."""
        f = _Fields.of(clock, source, "clock")
        return cls(f.get("budget", _number), f.get("spent", _number), phases=dict(phases))


@dataclass(frozen=True)
class CaseRecord:
    """A training case's files as the run found them (a change of them is other data: no resume)."""

    images: tuple[str, ...]
    label: str

    def to_dict(self) -> dict:
        return {"images": list(self.images), "label": self.label}

    @classmethod
    def from_dict(cls, data: Any, source: str, field: str) -> CaseRecord:
        f = _Fields.of(data, source, field)
        return cls(f.get("images", _str_list), f.get("label", _str))


@dataclass
class PlanRecord:
    """What planning chose: the configuration to train, its patch and batch, each step's seconds and the
    earlier stages of a multi-stage model (the cascade's ROI model)."""

    configuration: str
    patch_size: tuple[int, ...]
    planned_batch_size: int
    seconds: dict[str, float]
    stages: tuple[StageRecord, ...] = ()

    def to_dict(self) -> dict:
        return {"configuration": self.configuration, "patch_size": list(self.patch_size),
                "planned_batch_size": self.planned_batch_size, "seconds": dict(self.seconds),
                "stages": [s.to_dict() for s in self.stages]}

    @classmethod
    def from_dict(cls, data: Any, source: str, field: str = "plan") -> PlanRecord:
        f = _Fields.of(data, source, field)
        stages = f.get("stages", _list, [])
        return cls(f.get("configuration", _str), f.get("patch_size", _int_list), f.get("planned_batch_size", _int),
                   f.get("seconds", _numbers),
                   tuple(StageRecord.from_dict(s, source, f"{field}.stages[{i}]") for i, s in enumerate(stages)))


@dataclass
class FoldEntry:
    """A fold of the run: ``training`` (its share ``planned``, in seconds) or ``done`` with its result."""

    state: str = "training"
    planned: float | None = None
    result: FoldRecord | None = None

    def to_dict(self) -> dict:
        data = {"state": self.state, "planned": self.planned}
        if self.result is not None:
            data["result"] = self.result.result()
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str, field: str) -> FoldEntry:
        f = _Fields.of(data, source, field)
        result = f.get("result", _mapping, None)
        return cls(f.get("state", _str), f.get("planned", _number, None),
                   None if result is None else _fold_record(result, source, f"{field}.result"))


@dataclass(kw_only=True)
class RunRecord:
    """``run.json``: what was asked (``arguments``, ``identity``: what a resume must match), what was found
    and converted (the ingest part, ``cases`` to ``raw_dataset``), the time (``time``, written as ``phases``
    and ``clock``), and once planning ran, the network width, the training settings, the plan and the folds;
    ``bundle`` once exported. Fields are in the file's order."""

    arguments: str = ""
    cases: dict[str, CaseRecord]
    labels: LabelsRecord
    input: str
    layout: str
    skipped_cases: tuple[str, ...] = ()
    channels: ChannelsRecord
    file_ending: str
    is_2d: bool
    raw_dataset: str
    name: str
    identity: dict                      # RunOptions.identity(), compared as a whole
    version: str
    state: str                          # planning, checked, planned, training, interrupted, failed, ...
    time: TimeLedger
    training_settings: dict | None = None  # train.training_settings, for the model card
    width: float | None = None
    plan: PlanRecord | None = None
    folds: dict[str, FoldEntry] = field(default_factory=dict)
    bundle: str | None = None

    def to_dict(self) -> dict:
        """The JSON form: the keys earlier versions wrote; those not reached yet are left out, as they were."""
        data = {"arguments": self.arguments,
                "cases": {name: case.to_dict() for name, case in self.cases.items()},
                "labels": self.labels.to_dict(), "input": self.input, "layout": self.layout,
                "skipped_cases": list(self.skipped_cases), "channels": self.channels.to_dict(),
                "file_ending": self.file_ending, "is_2d": self.is_2d, "raw_dataset": self.raw_dataset,
                "name": self.name, "identity": self.identity, "version": self.version, "state": self.state,
                "phases": dict(self.time.phases), "clock": self.time.clock()}
        if self.training_settings is not None:
            data["training_settings"] = self.training_settings
        if self.width is not None:
            data["width"] = self.width
        if self.plan is not None:
            data["plan"] = self.plan.to_dict()
        if self.folds:
            data["folds"] = {fold: entry.to_dict() for fold, entry in self.folds.items()}
        if self.bundle is not None:
            data["bundle"] = self.bundle
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = RUN_FILE) -> RunRecord:
        """Validated; raises ``InputError`` naming ``source`` (the file) and the first bad field."""
        if not isinstance(data, Mapping):
            raise InputError(f"{source} should hold a JSON object, not {_shown(data)}; {_RUN_REMEDY}")
        with _remedy(_RUN_REMEDY):
            f = _Fields(data, source, "")
            plan = f.get("plan", _mapping, None)
            return cls(
                arguments=f.get("arguments", _str, ""),
                cases={name: CaseRecord.from_dict(case, source, f"cases.{name}")
                       for name, case in f.get("cases", _mapping).items()},
                labels=LabelsRecord.from_dict(f.get("labels", _mapping), source, "labels"),
                input=f.get("input", _str),
                layout=f.get("layout", _str),
                skipped_cases=f.get("skipped_cases", _str_list, ()),
                channels=ChannelsRecord.from_dict(f.get("channels", _mapping), source, "channels"),
                file_ending=f.get("file_ending", _str),
                is_2d=f.get("is_2d", _bool),
                raw_dataset=f.get("raw_dataset", _str),
                name=f.get("name", _str),
                identity=dict(f.get("identity", _mapping)),
                version=f.get("version", _str),
                state=f.get("state", _str),
                time=TimeLedger.from_dict(f.get("clock", _mapping), f.get("phases", _numbers, {}), source),
                training_settings=_optional_dict(f.get("training_settings", _mapping, None)),
                width=f.get("width", _number, None),
                plan=None if plan is None else PlanRecord.from_dict(plan, source),
                folds={fold: FoldEntry.from_dict(entry, source, f"folds.{fold}")
                       for fold, entry in f.get("folds", _mapping, {}).items()},
                bundle=f.get("bundle", _str, None),
            )

    @classmethod
    def load(cls, path: Path) -> RunRecord | None:
        """The record of ``path``, or None where there is none yet."""
        if not path.is_file():
            return None
        return cls.from_dict(_json_file(path, _RUN_REMEDY), str(path))

    def save(self, path: Path) -> None:
        """Written atomically: a kill leaves the previous record or this one, never half of one."""
        write_json_atomic(path, self.to_dict())


@dataclass
class FoldClock:
    """A fold stage's clock, ``medseg_clock.json`` beside its last ``checkpoint_latest`` (written with it by
    ``time_budget.nnUNetTrainerTimeBudget``, rank 0): the seconds that checkpoint holds, its epochs and
    iterations, the batch, the measured speed, the budget it trained to, the final validation's mode, the
    training precision, whether the network was compiled and the warm-up it cost, and the DDP ranks.

    A resumed stage continues from it (the time, the speed, the precision ``auto`` chose); fields a file lacks
    get their defaults."""

    spent: float = 0.0
    epochs: int = 0
    iterations: int = 0
    batch_size: int | None = None
    speed: _Speed = field(default_factory=_Speed)
    budget: FoldBudget | None = None
    validation: str = "mirrored"
    precision: str | None = None
    compiled: bool = False
    warmup_seconds: float = 0.0
    ranks: int = 1
    global_batch_size: int | None = None  # the batch of all ranks together

    def to_dict(self) -> dict:
        return {"spent": self.spent, "epochs": self.epochs, "iterations": self.iterations,
                "batch_size": self.batch_size, "speed": asdict(self.speed),
                "budget": None if self.budget is None else asdict(self.budget), "validation": self.validation,
                "precision": self.precision, "compiled": self.compiled, "warmup_seconds": self.warmup_seconds,
                "ranks": self.ranks, "global_batch_size": self.global_batch_size}

    @classmethod
    def from_dict(cls, data: Any, source: str = CLOCK_FILE) -> FoldClock:
        """Validated; raises ``InputError`` naming ``source`` and the first bad field."""
        if not isinstance(data, Mapping):
            raise InputError(f"{source} should hold a JSON object, not {_shown(data)}; {_CLOCK_REMEDY}")
        with _remedy(_CLOCK_REMEDY):
            f = _Fields(data, source, "")
            speed = _Fields.of(f.get("speed", _mapping, {}), source, "speed")
            budget = f.get("budget", _mapping, None)
            return cls(
                spent=f.get("spent", _number, 0.0),
                epochs=f.get("epochs", _int, 0),
                iterations=f.get("iterations", _int, 0),
                batch_size=f.get("batch_size", _int, None),
                speed=_Speed(speed.get("train_iter", _number, None), speed.get("val_iter", _number, None),
                             speed.get("overhead", _number, _Speed.overhead), speed.get("window", _number, None)),
                budget=None if budget is None else _fold_budget(budget, source),
                validation=f.get("validation", _str, "mirrored"),
                precision=f.get("precision", _str, None),
                compiled=f.get("compiled", _bool, False),
                warmup_seconds=f.get("warmup_seconds", _number, 0.0),
                ranks=f.get("ranks", _int, 1),
                global_batch_size=f.get("global_batch_size", _int, None),
            )

    @classmethod
    def read(cls, folder: str | os.PathLike) -> FoldClock | None:
        """The clock saved beside the fold folder's last checkpoint, or None."""
        path = Path(folder) / CLOCK_FILE
        if not path.is_file():
            return None
        return cls.from_dict(_json_file(path, _CLOCK_REMEDY), str(path))

    def write(self, folder: str | os.PathLike) -> None:
        """Written atomically, so the clock beside a checkpoint is never half a file."""
        path = os.path.join(folder, CLOCK_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(self.to_dict(), f, indent=1, default=float)
        os.replace(path + ".tmp", path)


# -- reading -------------------------------------------------------------------------------------------------

def _json_file(path: Path, remedy: str) -> Any:
    """The file's JSON; an ``InputError`` naming it and ending on ``remedy`` where it does not parse."""
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise InputError(f"{path} is not valid JSON ({e}); {remedy}") from None


@contextlib.contextmanager
def _remedy(text: str) -> Iterator[None]:
    """The manifest's field readers end their messages on the bundle's remedy: these files have their own."""
    try:
        yield
    except RecordError as e:
        raise RecordError(e.problem, text) from None


def _fold_record(data: Any, source: str, field: str) -> FoldRecord:
    """``FoldRecord.result()``'s form read back: the last stage's result, earlier stages under ``stages``."""
    earlier = _Fields.of(data, source, field).get("stages", _mapping, {})
    final = _fold_result(data, source, field)
    stages = {name: _fold_result(r, source, f"{field}.stages.{name}") for name, r in earlier.items()}
    return FoldRecord(final.fold, stages | {"": final})


def _fold_result(data: Any, source: str, field: str) -> FoldResult:
    f = _Fields.of(data, source, field)
    return FoldResult(fold=f.get("fold", _fold), seconds=f.get("seconds", _number), epochs=f.get("epochs", _int),
                      iterations=f.get("iterations", _int), batch_size=f.get("batch_size", _int),
                      validation=f.get("validation", _str), precision=f.get("precision", _str, "fp32"),
                      dice=f.get("dice", _numbers, {}), folder=f.get("folder", _str, ""),
                      compiled=f.get("compiled", _bool, False),
                      warmup_seconds=f.get("warmup_seconds", _number, 0.0))


def _fold_budget(data: Mapping, source: str) -> FoldBudget:
    """The budget a clock was written with; settings this version does not know are left out."""
    seconds = _Fields.of(data, source, "budget").get("seconds", _number)
    known = {f.name for f in fields(FoldBudget)}
    return replace(FoldBudget(seconds=seconds), **{k: v for k, v in data.items() if k in known})


def _optional_dict(value: Mapping | None) -> dict | None:
    return None if value is None else dict(value)


def _int(v: Any) -> int:
    if not _is_int(v):
        raise _Invalid("a whole number")
    return v


def _list(v: Any) -> list:
    if not isinstance(v, list):
        raise _Invalid("a list")
    return v


def _fold(v: Any) -> int | str:
    if not (_is_int(v) or isinstance(v, str)):
        raise _Invalid('a fold (0, 1, ... or "all")')
    return v


def _numbers(v: Any) -> dict[str, float]:
    """An object of numbers: seconds by phase or step, Dice by label."""
    if not isinstance(v, Mapping) or not all(_is_int(x) or isinstance(x, float) for x in v.values()):
        raise _Invalid("an object of numbers")
    return dict(v)
