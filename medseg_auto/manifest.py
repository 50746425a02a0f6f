"""The bundle's manifest (``medseg_auto.json``): what prediction needs beyond nnU-Net's model folder, as a
typed record.

Export writes it, prediction reads it back. Reading validates every field, so a damaged or foreign manifest
is refused with the file and the field named (exit 2), never a ``KeyError`` deep inside prediction. The JSON
is the one exports have always written (same keys, same order); fields added since have defaults, so older
bundles still load:

- ``predictor`` (added with the cascade trainer): ``"sliding_window"``;
- ``channels.colour`` (added with colour images): inferred from the channel counts;
- ``labels.nnunet_to_original``, ``labels.regions``, ``labels.regions_class_order``: ``None``;
- ``stages`` (multi-stage models only): ``None``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from medseg_auto import __version__
from medseg_auto.errors import InputError
from medseg_auto.workspace import write_json_atomic

MANIFEST = "medseg_auto.json"

_MISSING: Any = object()


@dataclass(frozen=True)
class ChannelsRecord:
    """The model's inputs: one key per input file of a case (``[]`` for single-file cases, whose key is
    empty), the nnU-Net channel names they become, and the keys of colour files (three channels each)."""

    keys: tuple[str, ...]
    nnunet_names: tuple[str, ...]
    colour: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"keys": list(self.keys), "nnunet_names": list(self.nnunet_names), "colour": list(self.colour)}

    @classmethod
    def from_dict(cls, data: Any, source: str = MANIFEST, field: str = "channels") -> ChannelsRecord:
        f = _Fields.of(data, source, field)
        keys, names = f.get("keys", _str_list), f.get("nnunet_names", _str_list)
        one_per_file = keys or ("",)
        inferred = one_per_file if len(names) == 3 * len(one_per_file) else ()  # before colour was recorded
        return cls(keys, names, f.get("colour", _str_list, inferred))


@dataclass(frozen=True)
class RegionRecord:
    """A region of a region model: its name and the nnU-Net label values it unites."""

    name: str
    labels: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "labels": list(self.labels)}

    @classmethod
    def from_dict(cls, data: Any, source: str, field: str) -> RegionRecord:
        f = _Fields.of(data, source, field)
        return cls(f.get("name", _str), f.get("labels", _int_list))


@dataclass(frozen=True)
class LabelsRecord:
    """How the dataset's label values map to nnU-Net's and back, and what each is called.

    ``nnunet_to_original`` is ``None`` when several dataset values were merged into one nnU-Net value (no way
    back); ``names`` maps each foreground nnU-Net value to its name."""

    original_to_nnunet: dict[int, int]
    nnunet_to_original: dict[int, int] | None
    names: dict[int, str]
    regions: tuple[RegionRecord, ...] | None = None
    regions_class_order: tuple[int, ...] | None = None

    def to_dict(self) -> dict:
        return {
            "original_to_nnunet": {str(k): v for k, v in self.original_to_nnunet.items()},
            "nnunet_to_original": (None if self.nnunet_to_original is None
                                   else {str(k): v for k, v in self.nnunet_to_original.items()}),
            "names": {str(k): v for k, v in self.names.items()},
            "regions": None if self.regions is None else [r.to_dict() for r in self.regions],
            "regions_class_order": None if self.regions_class_order is None else list(self.regions_class_order),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = MANIFEST, field: str = "labels") -> LabelsRecord:
        f = _Fields.of(data, source, field)
        regions = f.get("regions", _list_of_mappings, None)
        return cls(
            original_to_nnunet=f.get("original_to_nnunet", _int_to_int),
            nnunet_to_original=f.get("nnunet_to_original", _int_to_int, None),
            names=f.get("names", _int_to_str),
            regions=None if regions is None else tuple(
                RegionRecord.from_dict(r, source, f"{field}.regions[{i}]") for i, r in enumerate(regions)),
            regions_class_order=f.get("regions_class_order", _int_list, None),
        )


@dataclass(frozen=True)
class StageRecord:
    """An earlier stage of a multi-stage model (the cascade's ROI model), exported in the bundle's folder of
    that name."""

    name: str
    trainer: str
    configuration: str
    share: float

    def to_dict(self) -> dict:
        return {"name": self.name, "trainer": self.trainer, "configuration": self.configuration,
                "share": self.share}

    @classmethod
    def from_dict(cls, data: Any, source: str = MANIFEST, field: str = "stages[0]") -> StageRecord:
        f = _Fields.of(data, source, field)
        return cls(f.get("name", _str), f.get("trainer", _str), f.get("configuration", _str),
                   f.get("share", _number))


@dataclass(frozen=True, kw_only=True)
class BundleManifest:
    """``medseg_auto.json``: who made the model, which case predictor runs it, its nnU-Net configuration
    and folds, its input channels, its label mapping, and whether it is 2D.

    Fields are in the file's order; a field without a default is required when the file is read."""

    medseg_auto_version: str
    name: str
    trainer: str
    inference_trainer: str
    predictor: str = "sliding_window"
    configuration: str
    folds: tuple[str, ...]
    channels: ChannelsRecord
    labels: LabelsRecord
    file_ending: str
    is_2d: bool
    stages: tuple[StageRecord, ...] | None = None

    def to_dict(self) -> dict:
        """The JSON form, key for key what exports have always written."""
        data = {"medseg_auto_version": self.medseg_auto_version, "name": self.name, "trainer": self.trainer,
                "inference_trainer": self.inference_trainer, "predictor": self.predictor,
                "configuration": self.configuration, "folds": list(self.folds),
                "channels": self.channels.to_dict(), "labels": self.labels.to_dict(),
                "file_ending": self.file_ending, "is_2d": self.is_2d}
        if self.stages is not None:
            data["stages"] = [s.to_dict() for s in self.stages]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Any, source: str = MANIFEST) -> BundleManifest:
        """Validated; raises ``InputError`` naming ``source`` (the file) and the first bad field."""
        try:
            return cls._from_dict(data, source)
        except InputError as e:
            version = data.get("medseg_auto_version") if isinstance(data, Mapping) else None
            if not isinstance(version, str) or version == __version__:
                raise
            raise InputError(f"{e} (It was written by medseg_auto {version}; this is {__version__}.)") from None

    @classmethod
    def _from_dict(cls, data: Any, source: str) -> BundleManifest:
        f = _Fields.of(data, source, "")
        stages = f.get("stages", _list_of_mappings, None)
        return cls(
            medseg_auto_version=f.get("medseg_auto_version", _str),
            name=f.get("name", _str),
            trainer=f.get("trainer", _str),
            inference_trainer=f.get("inference_trainer", _str),
            predictor=f.get("predictor", _str, "sliding_window"),
            configuration=f.get("configuration", _str),
            folds=f.get("folds", _fold_list),
            channels=ChannelsRecord.from_dict(f.get("channels", _mapping), source, "channels"),
            labels=LabelsRecord.from_dict(f.get("labels", _mapping), source, "labels"),
            file_ending=f.get("file_ending", _str),
            is_2d=f.get("is_2d", _bool),
            stages=None if stages is None else tuple(
                StageRecord.from_dict(s, source, f"stages[{i}]") for i, s in enumerate(stages)),
        )

    @classmethod
    def from_json(cls, text: str, source: str = MANIFEST) -> BundleManifest:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise InputError(f"{source} is not valid JSON ({e}); the model folder is damaged.") from None
        return cls.from_dict(data, source)

    @classmethod
    def read(cls, path: Path) -> BundleManifest:
        """Read and validate a bundle's ``medseg_auto.json``."""
        return cls.from_json(path.read_text(), str(path))

    def write(self, path: Path) -> None:
        """Written atomically: a reader never sees half a manifest."""
        write_json_atomic(path, self.to_dict())


# -- validation ----------------------------------------------------------------------------------------------

class _Invalid(Exception):
    """A value of the wrong kind; the message says what was expected."""


class RecordError(InputError):
    """A field of a JSON record missing or of the wrong kind: ``problem`` names the file and the field, the
    message adds what to do (``remedy``; other records, run.json for one, read with these readers and give
    their own)."""

    def __init__(self, problem: str, remedy: str | None = None):
        super().__init__(f"{problem}; {remedy or _REMEDY}")
        self.problem = problem


@dataclass(frozen=True)
class _Fields:
    """The fields of one JSON object of the manifest, read with their dotted name for messages."""

    data: Mapping[str, Any]
    source: str
    prefix: str

    @classmethod
    def of(cls, data: Any, source: str, field: str) -> _Fields:
        if not isinstance(data, Mapping):
            what = f"field '{field}'" if field else "the manifest"
            raise RecordError(f"{source}: {what} should be a JSON object, not {_shown(data)}")
        return cls(data, source, f"{field}." if field else "")

    def get(self, key: str, convert: Callable[[Any], Any], default: Any = _MISSING) -> Any:
        name = self.prefix + key
        if key not in self.data:
            if default is _MISSING:
                raise RecordError(f"{self.source}: field '{name}' missing")
            return default
        value = self.data[key]
        if value is None and default is None:  # an optional field written as null
            return None
        try:
            return convert(value)
        except _Invalid as e:
            raise RecordError(f"{self.source}: field '{name}' should be {e}, not {_shown(value)}") from None


_REMEDY = ("the bundle was written by an older medseg_auto or edited by hand: re-export it with this version "
           "of medseg_auto, or train it again (exe_train.py, with --overwrite to replace it).")


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise _Invalid("a string")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Invalid("true or false")
    return v


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> float:
    if not (_is_int(v) or isinstance(v, float)):
        raise _Invalid("a number")
    return v


def _mapping(v: Any) -> Mapping:
    if not isinstance(v, Mapping):
        raise _Invalid("a JSON object")
    return v


def _list_of_mappings(v: Any) -> list:
    if not isinstance(v, list):
        raise _Invalid("a list")
    return v


def _str_list(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _Invalid("a list of strings")
    return tuple(v)


def _int_list(v: Any) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(_is_int(x) for x in v):
        raise _Invalid("a list of integers")
    return tuple(v)


def _fold_list(v: Any) -> tuple[str, ...]:
    """Fold names as strings ("0", "all"); integers are accepted, as a hand-written manifest may hold."""
    if not isinstance(v, list) or not all(isinstance(x, str) or _is_int(x) for x in v):
        raise _Invalid('a list of fold names ("0", "all")')
    return tuple(str(x) for x in v)


def _int_key(k: Any) -> int:
    try:
        return int(k)
    except ValueError:
        raise _Invalid("an object keyed by integer label values") from None


def _int_to_int(v: Any) -> dict[int, int]:
    if not isinstance(v, Mapping) or not all(_is_int(x) for x in v.values()):
        raise _Invalid("an object of integer label values")
    return {_int_key(k): x for k, x in v.items()}


def _int_to_str(v: Any) -> dict[int, str]:
    if not isinstance(v, Mapping) or not all(isinstance(x, str) for x in v.values()):
        raise _Invalid("an object of label names")
    return {_int_key(k): x for k, x in v.items()}
