"""Layout detection and case discovery: which files form which case, as which channel, with which label.

Accepted layouts (``input_train/README.md`` shows each as a tree):

- ``nnunet_raw``: ``imagesTr/`` + ``labelsTr/`` (+ ``dataset.json``), files named ``case_0000.nii.gz``;
- ``decathlon``: the Medical Segmentation Decathlon's form: ``imagesTr/`` + ``labelsTr/`` (+ ``imagesTs/``),
  an image and its label named alike, a ``dataset.json`` with ``modality`` and ``labels`` as value -> name;
  a multi-modal case is one 4D file whose volumes are the channels, in ``modality``'s order;
- ``paired``: an image folder (``images/``, ``imgs/`` ...) and a label folder (``labels/``, ``masks/``,
  ``segmentations/``, ``gt/`` ..., or any folder whose files pair one to one with the images), matched by
  case name with suffixes like ``_seg`` or ``_mask`` removed, else by the id the names share
  (``07_scan.tif`` + ``07_rater1.gif``). When several folders could hold the labels, ``--labels-dir`` picks;
- ``per_case``: one folder per case, one file per modality plus a label file (BraTS style);
- ``flat``: images and labels side by side in one folder, labels marked by a suffix (``case_seg.nii.gz``).

Nothing is guessed silently: where the label file or the channels cannot be told apart, a problem says
which flag resolves it.
"""
from __future__ import annotations

import fnmatch
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medseg_auto.errors import InputError
from medseg_auto.ingest.channels import canonical_name, channel_keys, common_affix, same_channel
from medseg_auto.ingest.dataset_json import DatasetJson, looks_like_decathlon, read_dataset_json
from medseg_auto.ingest.dicom import is_seg_file, is_series_folder
from medseg_auto.ingest.formats import image_ending, stem
from medseg_auto.ingest.label_folders import choose
from medseg_auto.ingest.problems import DATASET, WARNING, Problem

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
    volumes: dict[str, int] = field(default_factory=dict)  # channel key -> its volume in a 4D file

    def files(self) -> list[Path]:
        """The case's distinct image files (a 4D file holds several channels)."""
        return list(dict.fromkeys(self.channels.values()))


@dataclass
class Discovery:
    """What was found in a dataset folder, before any file is read."""

    root: Path
    layout: str
    cases: list[SourceCase]
    channel_keys: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    hidden: list[Path] = field(default_factory=list)  # dot files (macOS ._* copies): never read
    label_dir: Path | None = None  # the folder the labels came from (folder layouts)
    unused_dirs: list[Path] = field(default_factory=list)  # folders beside the images not used
    pairs_by_id: list[tuple[Path, Path]] = field(default_factory=list)  # image + label paired by a shared id
    dataset_json: DatasetJson | None = None
    to_predict: list[Path] = field(default_factory=list)  # imagesTs/: scans without labels, not trained on


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
        return "decathlon" if _is_decathlon(folder, subdirs) else "nnunet_raw"
    image_dirs = [subdirs[n] for n in IMAGE_DIRS if n in subdirs]
    if image_dirs and (any(n in subdirs for n in LABEL_DIRS) or
                       label_folder_candidates(folder, image_dirs[0], list_image_files(image_dirs[0]))):
        return "paired"
    files = list_image_files(folder)
    if not any(f.is_file() for f in files) and any(list_image_files(d) for d in subdirs.values()):
        return "per_case"  # (a case folder may itself be a DICOM series, with its label beside the slices)
    if files and any(is_label_name(stem(f)) for f in files):
        return "flat"
    return None


def discover(folder: Path, label_pattern: str | None = None, ending: str | None = None,
             channels: list[str] | None = None, labels_dir: str | None = None) -> Discovery:
    """Find the cases of a dataset folder. Pairing problems are collected, not raised.

    ``channels`` (``--channels``) keeps only the named channels; other image files are ignored.
    ``labels_dir`` (``--labels-dir``) names the label folder where several could hold the labels.
    """
    layout = detect_layout(folder)
    if layout is None:
        raise InputError(f"{folder} does not hold a dataset in a layout we know (see input_train/README.md).")
    if ending is not None:
        ending = ending if ending.startswith(".") else "." + ending
    finder = {"nnunet_raw": _discover_nnunet, "decathlon": _discover_decathlon, "paired": _discover_paired,
              "per_case": _discover_per_case, "flat": _discover_flat}[layout]
    if labels_dir and layout in ("per_case", "flat"):
        kind = "one folder per case" if layout == "per_case" else "its images and labels side by side"
        raise InputError(f"--labels-dir {labels_dir}: this dataset has {kind}, "
                         f"with no label folder to choose; pick the label files by name with --label-pattern "
                         f"(e.g. '*seg*').")
    # Only the folder layouts' finders take a label folder.
    discovery = finder(folder, label_pattern, ending, labels_dir) if labels_dir else \
        finder(folder, label_pattern, ending)
    _name_lone_channels(discovery)
    if channels:
        _keep_channels(discovery, channels)
    _check_duplicates(discovery)
    _check_channel_sets(discovery)
    if discovery.dataset_json is not None and discovery.dataset_json.channels:
        order = [c.lower() for c in discovery.dataset_json.channels]  # the declared order, not alphabetical
        discovery.channel_keys.sort(key=lambda k: order.index(k.lower()) if k.lower() in order else len(order))
    return discovery


# --- the layouts ---------------------------------------------------------------------------------------

def _is_decathlon(folder: Path, subdirs: dict[str, Path]) -> bool:
    """The Decathlon form: its dataset.json keys, or (without one) images named like their labels, with no
    nnU-Net channel suffix."""
    if (folder / "dataset.json").is_file():
        return looks_like_decathlon(folder)
    images = [stem(f) for f in list_image_files(subdirs["imagestr"])]
    labels = {stem(f) for f in list_image_files(subdirs.get("labelstr", folder / "labelsTr"))}
    return bool(images) and (any(s in labels for s in images) or
                             not any(NNUNET_CHANNEL.match(s) for s in images))


def _read_meta(folder: Path) -> DatasetJson | None:
    return read_dataset_json(folder / "dataset.json") if (folder / "dataset.json").is_file() else None


def _start_imagestr(folder: Path, layout: str, label_pattern: str | None, ending: str | None,
                    labels_dir: str | None) -> tuple[Discovery, dict[str, Path], Path, str | None]:
    """What the two ``imagesTr/`` layouts share: the dataset.json (and its file ending), the scans to predict
    named, the training labels' folder chosen."""
    subdirs = {d.name.lower(): d for d in list_subdirs(folder)}
    meta = _read_meta(folder)
    ending = ending or (meta.file_ending if meta else None)
    disc = Discovery(root=folder, layout=layout, cases=[], dataset_json=meta)
    _list_to_predict(disc, subdirs, ending)
    return disc, subdirs, _training_label_dir(disc, subdirs, ending, label_pattern, labels_dir), ending


def _discover_nnunet(folder: Path, label_pattern: str | None, ending: str | None,
                     labels_dir: str | None = None) -> Discovery:
    disc, subdirs, label_dir, ending = _start_imagestr(folder, "nnunet_raw", label_pattern, ending, labels_dir)
    images: dict[str, dict[str, Path]] = {}
    for f in list_image_files(subdirs["imagestr"], ending, disc.ignored, disc.hidden):
        m = NNUNET_CHANNEL.match(stem(f))
        if not m:
            disc.problems.append(Problem(DATASET, relative_name(f, folder), "image name lacks the _0000 channel suffix "
                                         "of nnU-Net's raw format", "rename to CASE_0000" + image_ending(f)))
            continue
        images.setdefault(m["case"], {})[m["channel"]] = f
    labels = {stem(f): f for f in list_image_files(label_dir, ending, disc.ignored, disc.hidden)}
    _pair(disc, images, labels)
    return disc


def _discover_decathlon(folder: Path, label_pattern: str | None, ending: str | None,
                        labels_dir: str | None = None) -> Discovery:
    """One file per case in ``imagesTr/`` (3D, or 4D with one volume per channel of ``modality``), its label
    of the same name in ``labelsTr/``. nnU-Net v1's folders (same dataset.json, ``_0000`` files) too."""
    disc, subdirs, label_dir, ending = _start_imagestr(folder, "decathlon", label_pattern, ending, labels_dir)
    meta = disc.dataset_json
    files = list_image_files(subdirs["imagestr"], ending, disc.ignored, disc.hidden)
    labels = {stem(f): f for f in list_image_files(label_dir, ending, disc.ignored, disc.hidden)}
    names = meta.channels if meta and meta.channels else [""]
    images: dict[str, dict[str, Path]] = {}
    suffixed = [NNUNET_CHANNEL.match(stem(f)) for f in files]
    if files and all(suffixed) and not any(stem(f) in labels for f in files):  # nnU-Net v1: one file a channel
        for f, m in zip(files, suffixed):
            i = int(m["channel"])
            images.setdefault(m["case"], {})[names[i] if i < len(names) and names[i] else m["channel"]] = f
    else:
        images = {stem(f): {n: f for n in names} for f in files}
    _pair(disc, images, labels)
    if not all(suffixed) or not files:
        for case in disc.cases:
            case.volumes = {n: i for i, n in enumerate(names)}
    _check_training_list(disc, meta, files, labels)
    return disc


def _check_training_list(disc: Discovery, meta: DatasetJson | None, files: list[Path],
                         labels: dict[str, Path]) -> None:
    """dataset.json's ``training`` list against the files: cases it names that are absent are a warning
    (a subset copied with the full dataset.json), so is a case present that it does not name."""
    if meta is None or not meta.training:
        return
    listed = {stem(Path(image)) for image, _ in meta.training}
    present = {c.name for c in disc.cases}
    absent = sorted(listed - present - {stem(f) for f in files} - set(labels))
    if absent:
        disc.problems.append(Problem(DATASET, "dataset.json", f"\"training\" lists {len(absent)} case(s) that are "
                                     f"not in imagesTr/ and labelsTr/: {', '.join(absent[:5])}"
                                     f"{' ...' if len(absent) > 5 else ''}", "fine if you copied a subset; the "
                                     "cases found are used", WARNING))
    unlisted = sorted(present - listed)
    if unlisted:
        disc.problems.append(Problem(DATASET, "dataset.json", f"{len(unlisted)} case(s) found are not in its "
                                     f"\"training\" list: {', '.join(unlisted[:5])}"
                                     f"{' ...' if len(unlisted) > 5 else ''}", "they are used like the others",
                                     WARNING))


def _training_label_dir(disc: Discovery, subdirs: dict[str, Path], ending: str | None, label_pattern: str | None,
                        labels_dir: str | None) -> Path:
    """``labelsTr/``, unless another folder pairs with ``imagesTr/`` as well (then ``--labels-dir`` picks)."""
    images = subdirs["imagestr"]
    skip = {images, subdirs.get("imagests")}
    candidates = [c for c in label_folder_candidates(disc.root, images, list_image_files(images, ending), ending,
                                                     label_pattern) if c[0] not in skip]
    default = subdirs.get("labelstr")
    if default is not None and not any(c[0] == default for c in candidates):
        candidates.insert(0, (default, list_image_files(default, ending)))  # its pairing problems are reported
    chosen = choose(images, candidates, labels_dir, disc.root, default) or disc.root / "labelsTr"
    disc.label_dir = chosen
    disc.unused_dirs = [d for d in subdirs.values() if d not in skip and d != chosen]
    return chosen


def _list_to_predict(disc: Discovery, subdirs: dict[str, Path], ending: str | None) -> None:
    """``imagesTs/``: named in the summary as scans to predict, never trained on."""
    if "imagests" in subdirs:
        disc.to_predict = list_image_files(subdirs["imagests"], ending, None, disc.hidden)


def _discover_paired(folder: Path, label_pattern: str | None, ending: str | None,
                     labels_dir: str | None = None) -> Discovery:
    subdirs = {d.name.lower(): d for d in list_subdirs(folder)}
    image_dirs = [subdirs[n] for n in IMAGE_DIRS if n in subdirs]
    label_dirs = [subdirs[n] for n in LABEL_DIRS if n in subdirs]
    if len(image_dirs) > 1:
        raise InputError(f"{folder} has several image folders ({', '.join(d.name + '/' for d in image_dirs)}): "
                         f"keep one.")
    disc = Discovery(root=folder, layout="paired", cases=[])
    image_files = list_image_files(image_dirs[0], ending, disc.ignored, disc.hidden)
    candidates = label_folder_candidates(folder, image_dirs[0], image_files, ending, label_pattern)
    if not candidates and len(label_dirs) > 1:  # none pairs: list the label-named ones to choose from
        candidates = [(d, list_image_files(d, ending)) for d in label_dirs]
    label_dir = choose(image_dirs[0], candidates, labels_dir, folder, label_dirs[0] if label_dirs else None)
    if label_dir is None:
        raise InputError(f"{folder}: no folder beside {image_dirs[0].name}/ holds files named like the images. "
                         f"Name the label folder with --labels-dir.")
    disc.label_dir = label_dir
    disc.unused_dirs = [d for d in subdirs.values() if d not in (image_dirs[0], label_dir)]
    label_files = list_image_files(label_dir, ending, disc.ignored, disc.hidden)
    if label_pattern:
        keep = [f for f in label_files if _matches(f, label_pattern)]
        disc.ignored += [f for f in label_files if f not in keep]
        label_files = keep
    _match_by_name(disc, image_files, label_files)
    return disc


def _discover_flat(folder: Path, label_pattern: str | None, ending: str | None) -> Discovery:
    disc = Discovery(root=folder, layout="flat", cases=[])
    files = list_image_files(folder, ending, disc.ignored, disc.hidden)
    is_label = (lambda f: _matches(f, label_pattern)) if label_pattern else (lambda f: is_label_name(stem(f)))
    _match_by_name(disc, [f for f in files if not is_label(f)], [f for f in files if is_label(f)])
    return disc


def _discover_per_case(folder: Path, label_pattern: str | None, ending: str | None) -> Discovery:
    disc = Discovery(root=folder, layout="per_case", cases=[])
    for case_dir in list_subdirs(folder):
        files = list_image_files(case_dir, ending, disc.ignored, disc.hidden)
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
    """The label file of one case folder (by its name, else a DICOM-SEG by its content), or None with a
    problem saying why."""
    names = ", ".join(f.name for f in files)
    if pattern:
        hits = [f for f in files if _matches(f, pattern)]
        how = f"--label-pattern '{pattern}'"
    else:
        hits = [f for f in files if _STRONG_LABEL.search(stem(f))] or \
               [f for f in files if _WEAK_LABEL.search(stem(f))] or \
               [f for f in files if f.is_file() and image_ending(f) in (None, ".dcm") and is_seg_file(f)]
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

def label_folder_candidates(root: Path, image_dir: Path, image_files: list[Path], ending: str | None = None,
                            label_pattern: str | None = None) -> list[tuple[Path, list[Path]]]:
    """Folders beside ``image_dir`` whose image files pair one to one with the images (by name or by a
    shared id), whatever their names: each could hold the labels. With their files."""
    out = []
    for d in list_subdirs(root):
        if d == image_dir:
            continue
        files = list_image_files(d, ending)
        if label_pattern:
            files = [f for f in files if _matches(f, label_pattern)]
        if files and image_files and _pairs_one_to_one(image_files, files):
            out.append((d, files))
    return out


def _pairs_one_to_one(image_files: list[Path], label_files: list[Path]) -> bool:
    probe = Discovery(root=Path("."), layout="", cases=[])
    _match_by_name(probe, image_files, label_files)
    return len(probe.cases) == len(label_files) and not any("two label files" in p.problem for p in probe.problems)


def _match_by_name(disc: Discovery, image_files: list[Path], label_files: list[Path]) -> None:
    """Pair image files to label files by name, else by the id their names share (when that pairs more)."""
    images, labels, problems = _names_to_cases(disc.root, image_files, label_files)
    paired = len(set(images) & set(labels))
    if paired < max(len(images), len(labels)):
        by_id = _shared_id_pairs(image_files, label_files)
        if len(by_id) > paired:
            labels = {stem(i): lab for i, lab in by_id}
            used = set(labels.values())
            labels |= {label_case_name(stem(f)): f for f in label_files if f not in used}  # listed unpaired
            images = {stem(i): {"": i} for i in image_files}
            problems = []
            disc.pairs_by_id = by_id
    disc.problems += problems
    _pair(disc, images, labels)


def _shared_id_pairs(image_files: list[Path], label_files: list[Path]) -> list[tuple[Path, Path]]:
    """Image and label paired by the part of their names that differs between cases (``07_scan`` and
    ``07_rater1`` share ``07``; ``case12_img`` and ``case12_annotation`` share ``case12``); only where the
    ids are unique on both sides, one file each."""
    image_ids, label_ids = _ids(image_files), _ids(label_files)
    if not image_ids or not label_ids:
        return []
    by_id = {i: f for f, i in label_ids.items()}
    return [(f, by_id[i]) for f, i in image_ids.items() if i in by_id]


def _ids(files: list[Path]) -> dict[Path, str]:
    """Each file's id: its stem without the prefix and suffix all stems share; {} unless unique."""
    if len(files) < 2:
        return {}
    stems = [stem(f) for f in files]
    prefix, suffix = common_affix(stems, reverse=False), common_affix(stems, reverse=True)
    ids = [s[len(prefix): len(s) - len(suffix)].strip("_-. ").lower() for s in stems]
    ids = [str(int(i)) if i.isdigit() else i for i in ids]
    if not all(ids) or len(set(ids)) != len(ids):
        return {}
    return dict(zip(files, ids))


def _names_to_cases(root: Path, image_files: list[Path], label_files: list[Path]):
    """A label names a case (its suffix like ``_seg`` removed), and the images of that case are named like
    it, with at most a channel part after it (``case_0000``, ``case_t1``)."""
    problems: list[Problem] = []
    labels: dict[str, Path] = {}
    for f in label_files:
        case = label_case_name(stem(f))
        if case in labels:
            problems.append(Problem(case, relative_name(f, root), f"two label files for one case: "
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
            problems.append(_duplicate(case, [images[case][s], f]))
        images[case][s] = f
    for case, files in images.items():
        keys = channel_keys(list(files), case)
        images[case] = dict(zip(keys, files.values()))
    return images, labels, problems


def _pair(disc: Discovery, images: dict[str, dict[str, Path]], labels: dict[str, Path]) -> None:
    for case in sorted(set(images) | set(labels)):
        if case not in labels:
            for f in dict.fromkeys(images[case].values()):
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
        by_stem = Counter(stem(f) for f in case.files())
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


def list_image_files(folder: Path, ending: str | None = None, ignored: list[Path] | None = None,
                     hidden: list[Path] | None = None) -> list[Path]:
    """Image files directly in ``folder`` (sorted); other files go to ``ignored``, dot files (macOS's
    ``._*`` copies) to ``hidden``. A DICOM series folder in ``folder`` counts as one image file; a series
    folder itself is one image (listed first), with the non-DICOM image files and DICOM-SEGs beside its
    slices (a label)."""
    if not folder.is_dir():
        return []
    series = is_series_folder(folder)
    out = [folder] if series and ending is None else []
    for f in sorted(folder.iterdir()):
        if f.name.startswith("."):
            if hidden is not None and f.is_file():
                hidden.append(f)
            continue
        if not f.is_file():
            if ending is None and is_series_folder(f):
                out.append(f)
            continue
        e = image_ending(f)
        if series and e in (None, ".dcm"):  # the series' own files, but for a DICOM-SEG beside them (a label)
            if ending is None and is_seg_file(f):
                out.append(f)
            continue
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


def is_label_word(s: str) -> bool:
    """A stem that is a label word and nothing else (``OTMultiClass``, ``seg``): a case folder's label file."""
    return bool(re.fullmatch(_LABEL_WORD, s, re.IGNORECASE))


def _matches(f: Path, pattern: str) -> bool:
    return fnmatch.fnmatch(f.name.lower(), pattern.lower())


def relative_name(f: Path, root: Path) -> str:
    """A file's path relative to the dataset folder, as problems show it."""
    try:
        return str(f.relative_to(root))
    except ValueError:
        return str(f)
