"""The ``dataset.json`` beside ``imagesTr/``: read, its shape checked, and put in one form.

Two forms exist: nnU-Net v2's (``channel_names``, ``labels`` as name -> value) and the Medical Segmentation
Decathlon's, which nnU-Net v1 also wrote (``modality``, ``labels`` as value -> name, a ``training`` list of
image/label paths, a ``test`` list). Every malformed file ends here as an :class:`InputError` that names the
file, the key and what is wrong, so that nothing later meets a value of the wrong type.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from medseg_auto.errors import InputError

NNUNET = "nnunet"
DECATHLON = "decathlon"


@dataclass
class DatasetJson:
    """A checked dataset.json: channel names by position, labels in nnU-Net's form (name -> value, or
    name -> values for a region), and the Decathlon's training and test lists (paths as written)."""

    path: Path
    form: str
    channels: list[str]
    labels: dict[str, int | list[int]]
    regions_class_order: list[int] | None = None
    file_ending: str | None = None
    training: list[tuple[str, str]] = field(default_factory=list)
    test: list[str] = field(default_factory=list)

    @property
    def is_decathlon(self) -> bool:
        return self.form == DECATHLON


def looks_like_decathlon(folder: Path) -> bool:
    """Whether ``folder/dataset.json`` is in the Decathlon form (keys only; a broken file says no here and
    is reported when it is read)."""
    try:
        raw = json.loads((folder / "dataset.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(raw, dict) and _decathlon_keys(raw)


def _decathlon_keys(raw: dict) -> bool:
    labels = raw.get("labels")
    value_to_name = isinstance(labels, dict) and bool(labels) and all(str(k).strip().isdigit() for k in labels)
    return "modality" in raw or isinstance(raw.get("training"), list) or value_to_name


def read_dataset_json(path: Path) -> DatasetJson:
    """Read and check ``path``; raises :class:`InputError` naming the file and the problem."""
    try:
        raw = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a text file (not UTF-8): it cannot be a dataset.json. Replace or "
                         f"remove it.") from None
    except ValueError as e:
        raise InputError(f"{path} is not valid JSON ({e}). Fix it, or remove it to let the files alone "
                         f"describe the dataset.") from None
    except OSError as e:
        raise InputError(f"{path} cannot be read ({e.strerror}).") from None
    if not isinstance(raw, dict):
        raise _shape(path, "the file", f"holds a {type(raw).__name__}, not an object with keys such as "
                     f"\"labels\" and \"modality\" (or \"channel_names\")")
    if _decathlon_keys(raw):
        return _read_decathlon(path, raw)
    return _read_nnunet(path, raw)


def _read_decathlon(path: Path, raw: dict) -> DatasetJson:
    channels = _channel_list(path, raw, "modality") if "modality" in raw else []
    labels: dict[str, int] = {}
    for key, name in _mapping(path, raw, "labels").items():
        if not str(key).strip().isdigit():
            raise _shape(path, "\"labels\"", f"key '{key}' is not a label value: the Decathlon form maps values "
                         f"to names, e.g. {{\"0\": \"background\", \"1\": \"tumour\"}}")
        if not isinstance(name, str) or not name.strip():
            raise _shape(path, "\"labels\"", f"value {int(key)} is named {json.dumps(name)}, not a name")
        name = name.strip()
        if name in labels:
            raise _shape(path, "\"labels\"", f"the name '{name}' is given to values {labels[name]} and {int(key)}")
        labels[name] = int(key)
    training = []
    for i, item in enumerate(_list(path, raw, "training")):
        if not isinstance(item, dict) or not isinstance(item.get("image"), str) or \
                not isinstance(item.get("label"), str):
            raise _shape(path, f"\"training\" item {i}", f"is {json.dumps(item)[:80]}; each item must be "
                         f"{{\"image\": \"./imagesTr/CASE.nii.gz\", \"label\": \"./labelsTr/CASE.nii.gz\"}}")
        training.append((item["image"], item["label"]))
    test = _list(path, raw, "test")
    if any(not isinstance(t, str) for t in test):
        raise _shape(path, "\"test\"", "must list image paths (strings), e.g. [\"./imagesTs/CASE.nii.gz\"]")
    return DatasetJson(path, DECATHLON, channels, labels, file_ending=_ending(path, raw), training=training,
                       test=list(test))


def _read_nnunet(path: Path, raw: dict) -> DatasetJson:
    channels = _channel_list(path, raw, "channel_names") if "channel_names" in raw else []
    labels: dict[str, int | list[int]] = {}
    for name, value in _mapping(path, raw, "labels").items():
        if isinstance(value, bool) or not isinstance(value, (int, list, tuple)) or \
                (isinstance(value, (list, tuple)) and not all(isinstance(v, int) and not isinstance(v, bool)
                                                              for v in value)):
            raise _shape(path, "\"labels\"", f"'{name}' has the value {json.dumps(value)[:60]}; nnU-Net's form maps "
                         f"names to whole numbers (or lists of them for regions), e.g. "
                         f"{{\"background\": 0, \"tumour\": 1}}")
        labels[str(name)] = list(value) if isinstance(value, (list, tuple)) else value
    order = raw.get("regions_class_order")
    if order is not None and (not isinstance(order, list) or not all(isinstance(v, int) for v in order)):
        raise _shape(path, "\"regions_class_order\"", "must be a list of whole numbers")
    return DatasetJson(path, NNUNET, channels, labels, order, _ending(path, raw))


def _channel_list(path: Path, raw: dict, key: str) -> list[str]:
    """``{"0": "FLAIR", "1": "T1w"}`` -> ``["FLAIR", "T1w"]``: positions 0..N-1, each named once."""
    mapping = _mapping(path, raw, key)
    if not mapping:
        raise _shape(path, f"\"{key}\"", "is empty: name each channel, e.g. {\"0\": \"MRI\"}")
    if not all(str(k).strip().isdigit() for k in mapping):
        raise _shape(path, f"\"{key}\"", f"keys {', '.join(map(str, mapping))} are not channel positions "
                     f"(0, 1, ...), e.g. {{\"0\": \"FLAIR\", \"1\": \"T1w\"}}")
    by_position = {int(k): v for k, v in mapping.items()}
    if sorted(by_position) != list(range(len(by_position))):
        raise _shape(path, f"\"{key}\"", f"positions {sorted(by_position)} do not run 0..{len(by_position) - 1}")
    names = [by_position[i] for i in range(len(by_position))]
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise _shape(path, f"\"{key}\"", "every channel needs a name (a string such as \"MRI\" or \"CT\")")
    names = [n.strip() for n in names]
    if len({n.lower() for n in names}) != len(names):
        raise _shape(path, f"\"{key}\"", f"names a channel twice ({', '.join(names)}): give each its own name")
    return names


def _mapping(path: Path, raw: dict, key: str) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise _shape(path, f"\"{key}\"", f"is a {type(value).__name__} ({json.dumps(value)[:60]}), not an object")
    return value


def _list(path: Path, raw: dict, key: str) -> list:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise _shape(path, f"\"{key}\"", f"is a {type(value).__name__}, not a list")
    return value


def _ending(path: Path, raw: dict) -> str | None:
    ending = raw.get("file_ending")
    if ending is not None and (not isinstance(ending, str) or not ending.startswith(".")):
        raise _shape(path, "\"file_ending\"", f"is {json.dumps(ending)}; write it as \".nii.gz\" or \".png\"")
    return ending


def _shape(path: Path, where: str, what: str) -> InputError:
    return InputError(f"{path}: {where} {what}. Fix the dataset.json (or remove it: the files are then "
                      f"described by their names).")
