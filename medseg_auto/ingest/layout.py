"""Layout detection and case discovery: which files form which case, as which channel, with which label.

Accepted layouts (``input_train/README.md`` shows each as a tree):

- ``nnunet_raw``: ``imagesTr/`` + ``labelsTr/`` (+ ``dataset.json``), files named ``case_0000.nii.gz``;
- ``paired``: an image folder (``images/``, ``imgs/`` ...) and a label folder (``labels/``, ``masks/``,
  ``segmentations/``, ``gt/`` ...), matched by case name with suffixes like ``_seg`` or ``_mask`` removed;
- ``per_case``: one folder per case, one file per modality plus a label file (BraTS style);
- ``flat``: images and labels side by side in one folder, labels marked by a suffix (``case_seg.nii.gz``).

Nothing is guessed silently: where the label file or the channels cannot be told apart, a problem says
which flag resolves it.
"""
from __future__ import annotations

import fnmatch
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medseg_auto.errors import InputError
from medseg_auto.ingest.channels import canonical_name, channel_keys, same_channel
from medseg_auto.ingest.dicom import is_series_folder
from medseg_auto.ingest.formats import image_ending, stem
from medseg_auto.ingest.problems import DATASET, Problem

IMAGE_DIRS = ("images", "image", "imgs", "img", "imagestr", "volumes", "scans")
LABEL_DIRS = ("labels", "label", "labelstr", "masks", "mask", "segmentations", "segmentation", "segs", "seg",
              "gt", "groundtruth", "ground_truth", "annotations")

_SEP = r"[_\-. ]"
_LABEL_WORD = r"(seg|segmentation|label|labels|labelmap|gt|groundtruth|truth|annotation|annotations|ot|otmulticlass)"
_STRONG_LABEL = re.compile(rf"(^|{_SEP}){_LABEL_WORD}({_SEP}|$)", re.IGNORECASE)
_WEAK_LABEL = re.compile(rf"(^|{_SEP})(mask|masks)({_SEP}|$)", re.IGNORECASE)
# Masks that sit beside images but are not the segmentation target (BraTS ships a brain mask).
_AUX_MASK = re.compile(r"(brain|skull|body|head|roi|fov|lung|tissue)[_\-. ]?mask", re.IGNORECASE)
_LABEL_SUFFIX = re.compile(rf"{_SEP}{_LABEL_WORD}$|{_SEP}(mask|masks)$", re.IGNORECASE)
NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class SourceCase:
    """One training case as found in the input: its channel files by channel key, and its label file."""

    name: str
    channels: dict[str, Path]
    label: Path | None


@dataclass
class Discovery:
    """What was found in a dataset folder, before any file is read."""

    root: Path
    layout: str
    cases: list[SourceCase]
    channel_keys: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    dataset_json: dict | None = None


def locate_dataset(input_root: Path, name: str | None) -> Path:
    """The dataset folder for ``-d NAME``: ``input_root/NAME``, or ``input_root`` when it holds one dataset."""
    if not input_root.is_dir():
        raise InputError(f"The input folder {input_root} does not exist. Create it and copy your dataset into "
                         f"it (see input_train/README.md).")
    if name and (input_root / name).is_dir():
        return input_root / name
    if detect_layout(input_root) is not None:
        return input_root
    found = sorted(d.name for d in input_root.iterdir() if d.is_dir() and not d.name.startswith(".") and detect_layout(d) is not None)
    if name is None and len(found) == 1:
        return input_root / found[0]
    listing = ", ".join(found) if found else "none"
    if name:
        raise InputError(f"No dataset '{name}' in {input_root} (datasets found there: {listing}). Copy it to "
                         f"{input_root / name}/ or pass one of the names found with -d.")
    if found:
        raise InputError(f"{input_root} holds several datasets ({listing}): choose one with -d NAME.")
    raise InputError(f"No dataset found in {input_root}: expected images with labels in one of the layouts "
                     f"of input_train/README.md (nnU-Net raw, images/ + labels/, one folder per case, or "
                     f"images and *_seg files side by side).")


def dataset_name(dataset_dir: Path, input_root: Path, name: str | None) -> str:
    """The name a run uses: ``-d`` if given, else the dataset folder's name."""
    if name:
        return name
    return dataset_dir.name if dataset_dir != input_root else "dataset"


def detect_layout(folder: Path) -> str | None:
    """The layout of ``folder``, or None when it does not look like a dataset."""
    subdirs = {d.name.lower(): d for d in list_subdirs(folder)}
    if "imagestr" in subdirs and ("labelstr" in subdirs or (folder / "dataset.json").is_file()):
        return "nnunet_raw"
    if any(n in subdirs for n in IMAGE_DIRS) and any(n in subdirs for n in LABEL_DIRS):
        return "paired"
    files = list_image_files(folder)
    if not files and any(list_image_files(d) for d in subdirs.values()):
        return "per_case"
    if files and any(is_label_name(stem(f)) for f in files):
        return "flat"
    return None


def discover(folder: Path, label_pattern: str | None = None, ending: str | None = None,
             channels: list[str] | None = None) -> Discovery:
    """Find the cases of a dataset folder. Pairing problems are collected, not raised.

    ``channels`` (``--channels``) keeps only the named channels; other image files are ignored.
    """
    layout = detect_layout(folder)
    if layout is None:
        raise InputError(f"{folder} does not hold a dataset in a layout we know (see input_train/README.md).")
    if ending is not None:
        ending = ending if ending.startswith(".") else "." + ending
    finder = {"nnunet_raw": _discover_nnunet, "paired": _discover_paired,
              "per_case": _discover_per_case, "flat": _discover_flat}[layout]
    discovery = finder(folder, label_pattern, ending)
    _name_lone_channels(discovery)
    if channels:
        _keep_channels(discovery, channels)
    _check_duplicates(discovery)
    _check_channel_sets(discovery)
    return discovery


# --- the layouts ---------------------------------------------------------------------------------------

def _discover_nnunet(folder: Path, label_pattern: str | None, ending: str | None) -> Discovery:
    subdirs = {d.name.lower(): d for d in list_subdirs(folder)}
    dataset_json = None
    if (folder / "dataset.json").is_file():
        try:
            dataset_json = json.loads((folder / "dataset.json").read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{folder / 'dataset.json'} is not valid JSON ({e}). Fix or remove it.") from None
        ending = ending or dataset_json.get("file_ending")
    disc = Discovery(root=folder, layout="nnunet_raw", cases=[], dataset_json=dataset_json)
    images: dict[str, dict[str, Path]] = {}
    for f in list_image_files(subdirs["imagestr"], ending, disc.ignored):
        m = NNUNET_CHANNEL.match(stem(f))
        if not m:
            disc.problems.append(Problem(DATASET, relative_name(f, folder), "image name lacks the _0000 channel suffix "
                                         "of nnU-Net's raw format", "rename to CASE_0000" + image_ending(f)))
            continue
        images.setdefault(m["case"], {})[m["channel"]] = f
    labels = {stem(f): f for f in list_image_files(subdirs.get("labelstr", folder / "labelsTr"), ending, disc.ignored)}
    _pair(disc, images, labels)
    return disc


def _discover_paired(folder: Path, label_pattern: str | None, ending: str | None) -> Discovery:
    subdirs = {d.name.lower(): d for d in list_subdirs(folder)}
    image_dirs = [subdirs[n] for n in IMAGE_DIRS if n in subdirs]
    label_dirs = [subdirs[n] for n in LABEL_DIRS if n in subdirs]
    if len(image_dirs) > 1 or len(label_dirs) > 1:
        raise InputError(f"{folder} has several image or label folders "
                         f"({', '.join(d.name + '/' for d in image_dirs + label_dirs)}): keep one of each.")
    disc = Discovery(root=folder, layout="paired", cases=[])
    image_files = list_image_files(image_dirs[0], ending, disc.ignored)
    label_files = list_image_files(label_dirs[0], ending, disc.ignored)
    if label_pattern:
        keep = [f for f in label_files if _matches(f, label_pattern)]
        disc.ignored += [f for f in label_files if f not in keep]
        label_files = keep
    _match_by_name(disc, image_files, label_files)
    return disc


def _discover_flat(folder: Path, label_pattern: str | None, ending: str | None) -> Discovery:
    disc = Discovery(root=folder, layout="flat", cases=[])
    files = list_image_files(folder, ending, disc.ignored)
    is_label = (lambda f: _matches(f, label_pattern)) if label_pattern else (lambda f: is_label_name(stem(f)))
    _match_by_name(disc, [f for f in files if not is_label(f)], [f for f in files if is_label(f)])
    return disc


def _discover_per_case(folder: Path, label_pattern: str | None, ending: str | None) -> Discovery:
    disc = Discovery(root=folder, layout="per_case", cases=[])
    for case_dir in list_subdirs(folder):
        files = list_image_files(case_dir, ending, disc.ignored)
        if not files:
            continue
        aux = [f for f in files if _AUX_MASK.search(stem(f))]
        disc.ignored += aux
        files = [f for f in files if f not in aux]
        label = _find_label(case_dir.name, files, label_pattern, folder, disc.problems)
        channel_files = [f for f in files if f != label]
        if not channel_files:
            disc.problems.append(Problem(case_dir.name, relative_name(case_dir, folder), "no image file beside the label",
                                         "add the image file(s) of this case, or remove the folder"))
            continue
        keys = channel_keys([stem(f) for f in channel_files], case_dir.name)
        disc.cases.append(SourceCase(case_dir.name, dict(zip(keys, channel_files)), label))
    return disc


def _find_label(case: str, files: list[Path], pattern: str | None, root: Path,
                problems: list[Problem]) -> Path | None:
    """The label file of one case folder, or None with a problem saying why."""
    names = ", ".join(f.name for f in files)
    if pattern:
        hits = [f for f in files if _matches(f, pattern)]
        how = f"--label-pattern '{pattern}'"
    else:
        hits = [f for f in files if _STRONG_LABEL.search(stem(f))] or \
               [f for f in files if _WEAK_LABEL.search(stem(f))]
        how = "--label-pattern 'GLOB' (a file-name pattern such as '*seg*')"
    if len(hits) == 1:
        return hits[0]
    if not hits:
        problems.append(Problem(case, case + "/", f"no label file found among: {names}",
                                f"add the label file, or name it with {how}"))
    else:
        problems.append(Problem(case, case + "/", "several files could be the label: "
                                + ", ".join(f.name for f in hits), f"choose one with {how}"))
    return None


# --- pairing by name -----------------------------------------------------------------------------------

def _match_by_name(disc: Discovery, image_files: list[Path], label_files: list[Path]) -> None:
    """Pair image files to label files: a label names a case (its suffix like ``_seg`` removed), and the
    images of that case are named like it, with at most a channel part after it (``case_0000``, ``case_t1``)."""
    labels: dict[str, Path] = {}
    for f in label_files:
        case = label_case_name(stem(f))
        if case in labels:
            disc.problems.append(Problem(case, relative_name(f, disc.root), f"two label files for one case: "
                                         f"{labels[case].name} and {f.name}", "keep one of them (or pick a "
                                         "file type with -e)"))
            continue
        labels[case] = f
    images: dict[str, dict[str, Path]] = {}
    by_length = sorted(labels, key=len, reverse=True)
    for f in image_files:
        s = stem(f)
        case = next((c for c in by_length if s == c or (s.startswith(c) and s[len(c)] in "_-. ")), None)
        if case is None:  # the label may carry an unknown suffix: "case" <-> "case_lesion"
            case = next((c for c in by_length if c.startswith(s) and c[len(s)] in "_-. "), s)
        if s in images.setdefault(case, {}):
            disc.problems.append(_duplicate(case, [images[case][s], f]))
        images[case][s] = f
    for case, files in images.items():
        keys = channel_keys(list(files), case)
        images[case] = dict(zip(keys, files.values()))
    _pair(disc, images, labels)


def _pair(disc: Discovery, images: dict[str, dict[str, Path]], labels: dict[str, Path]) -> None:
    for case in sorted(set(images) | set(labels)):
        if case not in labels:
            for f in images[case].values():
                disc.problems.append(Problem(case, relative_name(f, disc.root), "image has no label file",
                                             "add its label (named like the image, e.g. with _seg) or remove "
                                             "the image"))
        elif case not in images:
            disc.problems.append(Problem(case, relative_name(labels[case], disc.root), "label has no image file",
                                         "add the image named like the label, or remove the label"))
        else:
            disc.cases.append(SourceCase(case, images[case], labels[case]))


# --- checks that need names only -----------------------------------------------------------------------

def _name_lone_channels(disc: Discovery) -> None:
    """A case left with one image file has no channel key of its own (``""``); where other cases name
    their channels, give it the key its file name shows, so that a missing channel is reported by name."""
    known = {k for c in disc.cases for k in c.channels if k}
    for case in disc.cases:
        if list(case.channels) == [""]:
            name = stem(case.channels[""]).lower()
            hits = [k for k in known if re.search(rf"(^|{_SEP}){re.escape(k.lower())}({_SEP}|$)", name)]
            if len(hits) == 1:
                case.channels = {hits[0]: case.channels[""]}


def _keep_channels(disc: Discovery, wanted: list[str]) -> None:
    for case in disc.cases:
        keep = {k: f for k, f in case.channels.items() if any(same_channel(k, w) for w in wanted)}
        disc.ignored += [f for k, f in case.channels.items() if k not in keep]
        case.channels = keep


def _check_duplicates(disc: Discovery) -> None:
    """The same case or channel twice, e.g. ``a.nii`` beside ``a.nii.gz``."""
    for case in disc.cases:
        by_stem = Counter(stem(f) for f in case.channels.values())
        by_key = Counter(canonical_name(k).lower() for k in case.channels)
        dup = [s for s, n in by_stem.items() if n > 1] + [k for k, n in by_key.items() if n > 1]
        if dup:
            disc.problems.append(_duplicate(case.name, sorted(case.channels.values())))
    counts = Counter(c.name for c in disc.cases)
    for name in sorted(n for n, k in counts.items() if k > 1):
        disc.problems.append(Problem(name, "", "duplicate case name", "rename one of the cases"))


def _duplicate(case: str, files: list[Path]) -> Problem:
    return Problem(case, ", ".join(f.name for f in files), "duplicate case or channel: the same name in several "
                   "files", "remove the copies, or pick one file type with -e (e.g. -e .nii.gz)")


def _check_channel_sets(disc: Discovery) -> None:
    """Every case must have the same channels; the most common set is taken as the dataset's."""
    sets = Counter(tuple(sorted(canonical_name(k).lower() for k in c.channels)) for c in disc.cases)
    if not sets:
        return
    (common, _), = sets.most_common(1)
    disc.channel_keys = _keys_of(disc, common)
    for case in disc.cases:
        have = sorted(canonical_name(k).lower() for k in case.channels)
        if tuple(have) != common:
            missing = sorted(set(common) - set(have))
            extra = sorted(set(have) - set(common))
            what = f"has {len(have)} channel(s) ({_fmt_keys(have)}) where most cases have {len(common)} " \
                   f"({_fmt_keys(common)})"
            if missing:
                what += f"; missing: {_fmt_keys(missing)}"
            if extra:
                what += f"; extra: {_fmt_keys(extra)}"
            disc.problems.append(Problem(case.name, ", ".join(f.name for f in case.channels.values()), what,
                                         "add or remove files so every case has the same channels, or choose "
                                         "channels with --channels"))


def _keys_of(disc: Discovery, common: tuple[str, ...]) -> list[str]:
    for case in disc.cases:
        if tuple(sorted(canonical_name(k).lower() for k in case.channels)) == common:
            return sorted(case.channels, key=lambda k: canonical_name(k).lower())
    return []


def _fmt_keys(keys) -> str:
    return ", ".join(canonical_name(k) or "image" for k in keys)


# --- small helpers ---------------------------------------------------------------------------------------

def list_subdirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def list_image_files(folder: Path, ending: str | None = None, ignored: list[Path] | None = None) -> list[Path]:
    """Image files directly in ``folder`` (sorted); other files go to ``ignored``. A DICOM series folder in
    ``folder`` counts as one image file; the files of a series folder itself are its slices, not images."""
    if not folder.is_dir() or is_series_folder(folder):
        return []
    out = []
    for f in sorted(folder.iterdir()):
        if f.name.startswith("."):
            continue
        if not f.is_file():
            if ending is None and is_series_folder(f):
                out.append(f)
            continue
        e = image_ending(f)
        if e is not None and (ending is None or e == ending.lower()):
            out.append(f)
        elif ignored is not None:
            ignored.append(f)
    return out


def label_case_name(s: str) -> str:
    """The case a label file names: its stem without a label suffix (``case_seg`` -> ``case``)."""
    return _LABEL_SUFFIX.sub("", s) or s


def is_aux_mask(s: str) -> bool:
    """A mask beside the images that is not the segmentation target (``brainmask``)."""
    return bool(_AUX_MASK.search(s))


def is_label_name(s: str) -> bool:
    return bool(_LABEL_SUFFIX.search(s)) and not _AUX_MASK.search(s)


def _matches(f: Path, pattern: str) -> bool:
    return fnmatch.fnmatch(f.name.lower(), pattern.lower())


def relative_name(f: Path, root: Path) -> str:
    """A file's path relative to the dataset folder, as problems show it."""
    try:
        return str(f.relative_to(root))
    except ValueError:
        return str(f)
