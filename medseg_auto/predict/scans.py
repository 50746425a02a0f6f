"""Find the scans to segment and match their files to the model's channels.

``-i`` is one file, or a folder in any layout training accepts, without labels: files side by side
(``case.nii.gz``, ``case_0000.nii.gz`` + ``case_0001.nii.gz``, ``case_flair.nii.gz`` + ``case_t1c.nii.gz``),
an ``images/`` or ``imagesTs/`` folder, or one folder per case. Files named like labels (``_seg``,
``OTMultiClass``) and auxiliary masks (``brainmask``) are left out and listed. Channels are matched to
the model's by name where the file names carry them, by order where they do not.

Only headers are read here (milliseconds per file); every problem of every scan is collected and
reported at once before anything is predicted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from medseg_auto.errors import InputError
from medseg_auto.ingest.channels import channel_keys, same_channel
from medseg_auto.ingest.checks import DICOM_FIX, UNREADABLE_FIX, geometry_differences
from medseg_auto.ingest.dicom import (DicomError, describe_dicom_file, is_dicom_file, is_multiframe_file,
                                     is_series_folder)
from medseg_auto.ingest.formats import DICOM_ENDINGS
from medseg_auto.ingest.dataset_json import read_dataset_json
from medseg_auto.ingest.formats import VOLUME_ENDINGS, ImageHeader, image_ending, read_header, spatial_part, stem
from medseg_auto.ingest.layout import (IMAGE_DIRS, LABEL_DIRS, NNUNET_CHANNEL, is_aux_mask, is_label_name,
                                      is_label_word, label_case_name, list_image_files, list_subdirs,
                                      relative_name)
from medseg_auto.ingest.scan import reader_message
from medseg_auto.ingest.problems import DATASET, Problem, format_table
from medseg_auto.predict.bundle import Bundle, ModelChannel

_SEP = re.compile(r"[_\-. ]")
# A scan's own folder holds its channels and perhaps a label and a few masks; more files than this beyond
# the model's channels make it a folder of many scans (or of masks), which -i must name itself.
CASE_FOLDER_EXTRA = 6


@dataclass
class Scan:
    """One case to segment: its files in the model's channel order, and the first file's header (the
    geometry and format the output copies)."""

    name: str
    files: list[Path]
    header: ImageHeader | None = None
    volumes: list[int] | None = None  # a 4D file (the Decathlon's): the volume of each model channel

    @property
    def ending(self) -> str:
        return image_ending(self.files[0]) or ""


@dataclass
class FoundScans:
    root: Path
    scans: list[Scan]
    ignored: list[Path] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


class ScanProblems(InputError):
    """The scans cannot be segmented as given; the message holds every problem found."""

    def __init__(self, problems: list[Problem], root: Path):
        self.problems = problems
        n = len({p.case for p in problems if p.case != DATASET})
        super().__init__(f"{format_table(problems)}\n\n{len(problems)} problem(s) in {root} ({n} scan(s) "
                         f"affected). Fix them and rerun; nothing was predicted or written.")


def find_scans(path: Path, bundle: Bundle, ending: str | None = None, series: str | None = None) -> FoundScans:
    """Discover the scans under ``path`` and check their headers against the model; raises
    :class:`ScanProblems` (exit 2) listing every problem, or :class:`InputError` when nothing is found.
    ``series`` (``--series``) picks the series of a DICOM folder that holds several."""
    if not path.exists():
        raise InputError(f"-i {path}: no such file or folder.")
    channels = bundle.channels
    if ending is not None:
        ending = ending if ending.startswith(".") else "." + ending
    if is_series_folder(path):  # one DICOM series: one scan, named after its folder
        if len(channels) > 1:
            raise InputError(f"-i {path}: one DICOM series for a model of {len(channels)} channels "
                             f"({_names(channels)}); give a folder holding one series folder per channel, named "
                             f"by channel (e.g. case/{channels[0].display}/).")
        found = FoundScans(path.parent, [Scan(path.name, [path])])
    elif path.is_file():
        if image_ending(path) is None and is_dicom_file(path):
            raise InputError(f"-i {path}: {describe_dicom_file(path)}. Give -i a DICOM series folder (one "
                             f"series, one file per slice) or a folder of series folders.")
        if image_ending(path) is None:
            raise InputError(f"-i {path}: not an image file we read (NIfTI, NRRD, MHA/MHD, PNG, TIF, BMP, JPG, "
                             f"a DICOM series folder).")
        found = FoundScans(path.parent, [])
        if len(channels) == 1:
            found.scans.append(Scan(_single_case_name(path, [path]), [path]))
        else:
            raise InputError(f"-i {path}: the model needs {len(channels)} channels per scan "
                             f"({_names(channels)}); give a folder holding one file per channel, named by "
                             f"channel (e.g. case_{channels[0].display}{image_ending(path)}).")
    else:
        found = _find_in_folder(_image_folder(path), channels, ending)
    if not found.scans and not found.problems:
        raise InputError(f"-i {path}: no image files found (looked for NIfTI, NRRD, MHA/MHD and 2D image files"
                         f"{' ending in ' + ending if ending else ''}).")
    _check_headers(found, bundle, series)
    if found.problems:
        raise ScanProblems(found.problems, found.root)
    return found


def _image_folder(folder: Path) -> Path:
    """``images/`` (``imagesTs/`` ...) when the folder holds one beside a label folder or alone."""
    subdirs = {d.name.lower(): d for d in list_subdirs(folder)}
    image_dirs = [subdirs[n] for n in (*IMAGE_DIRS, "imagests") if n in subdirs]
    if list_image_files(folder) or not image_dirs:
        return folder
    if len(image_dirs) > 1:
        raise InputError(f"-i {folder} holds several image folders ({', '.join(d.name + '/' for d in image_dirs)}): "
                         f"point -i at the one to segment, e.g. -i {image_dirs[-1]}")
    return image_dirs[0]


def _find_in_folder(folder: Path, channels: list[ModelChannel], ending: str | None) -> FoundScans:
    found = FoundScans(folder, [])
    files = list_image_files(folder, ending)
    if files:
        found.ignored += [f for f in files if _not_a_scan(f)]
        files = [f for f in files if not _not_a_scan(f)]
        _group_flat(found, files, channels)
        return found
    case_dirs = [d for d in list_subdirs(folder) if d.name.lower() not in LABEL_DIRS]
    crowded = [d for d in case_dirs if len(list_image_files(d, ending)) > len(channels) + CASE_FOLDER_EXTRA]
    if crowded:  # folders of scans or of masks (manual/, mask/ ...), not one scan's folder: never guess which
        listing = ", ".join(f"{d.name}/ ({len(list_image_files(d, ending))} files)" for d in crowded)
        found.problems.append(Problem(DATASET, listing, "folders holding many image files each: a folder of "
                                      "scans beside folders of masks or labels, not one folder per scan",
                                      f"point -i at the folder of scans itself, e.g. -i {crowded[0]}"))
        return found
    for case_dir in case_dirs:
        case_files = list_image_files(case_dir, ending)
        found.ignored += [f for f in case_files if _not_a_scan(f)]
        case_files = [f for f in case_files if not _not_a_scan(f)]
        if case_files:
            _assign(found, case_dir.name, case_files, channels, case_dir)
    return found


def _not_a_scan(f: Path) -> bool:
    """Labels, auxiliary masks and DICOM files other than multi-frame images (a DICOM-SEG, a slice: a series is
    a folder) are no scans."""
    return (is_label_name(stem(f)) or is_label_word(stem(f)) or is_aux_mask(stem(f))
            or (image_ending(f) in DICOM_ENDINGS and not is_multiframe_file(f)))


def _group_flat(found: FoundScans, files: list[Path], channels: list[ModelChannel]) -> None:
    """Files side by side: one file per scan for a one-channel model, else grouped by the channel part of
    their names (``_0000``-style numbers or the channel names)."""
    if len(channels) == 1:
        for f in files:
            found.scans.append(Scan(_single_case_name(f, files), [f]))
        return
    groups: dict[str, list[Path]] = {}
    for f in files:
        if _four_d(found, stem(f), f, channels):
            continue
        case = _case_of(stem(f), channels)
        if case is None:
            found.problems.append(Problem(stem(f), f.name, f"cannot tell which channel this file is (the model "
                                          f"needs {_names(channels)})", f"name the files by channel, e.g. "
                                          f"{stem(f)}_{channels[0].display}{image_ending(f)}, or use one folder "
                                          f"per scan"))
            continue
        groups.setdefault(case, []).append(f)
    for case, group in sorted(groups.items()):
        _assign(found, case, group, channels, found.root)


def _case_of(s: str, channels: list[ModelChannel]) -> str | None:
    """The case part of a multi-channel file's stem: the stem without its ``_NNNN`` or channel-name part."""
    m = NNUNET_CHANNEL.match(s)
    if m:
        return m["case"]
    tokens = _SEP.split(s)
    for i, token in enumerate(tokens):
        if any(_channel_matches(token, c) for c in channels):
            rest = [t for j, t in enumerate(tokens) if j != i]
            return "_".join(rest) if rest else None
    return None


def _channel_matches(name: str, channel: ModelChannel) -> bool:
    candidates = [channel.key, channel.display, *channel.names]
    return any(c and not c.isdigit() and same_channel(name, c) for c in candidates)


def _assign(found: FoundScans, case: str, files: list[Path], channels: list[ModelChannel], where: Path) -> None:
    """Order one scan's files as the model's channels: by name, else by order when nothing is named."""
    listing = ", ".join(f.name for f in files)
    if len(channels) == 1:
        if len(files) == 1:
            found.scans.append(Scan(case, files))
        else:
            found.problems.append(Problem(case, listing, f"{len(files)} image files where the model takes one "
                                          f"({channels[0].display})", "keep one image per scan (or pick a file "
                                          "type with -e)"))
        return
    if len(files) == 1 and _four_d(found, case, files[0], channels):
        return
    keys = channel_keys([stem(f) for f in files], case)
    by_name = {}
    for channel in channels:
        hits = [f for k, f in zip(keys, files) if _channel_matches(k, channel)]
        if len(hits) == 1:
            by_name[channel] = hits[0]
    if len(by_name) == len(channels) and len(files) == len(channels):
        found.scans.append(Scan(case, [by_name[c] for c in channels]))
        return
    unnamed = all(not k or k.isdigit() for k in keys) or all(not c.key or c.key.isdigit() for c in channels)
    if unnamed and len(files) == len(channels):
        found.scans.append(Scan(case, sorted(files, key=lambda f: stem(f))))
        return
    missing = [c.display for c in channels if c not in by_name]
    what = f"{len(files)} file(s) ({listing}) for a model that needs {len(channels)} ({_names(channels)})"
    if missing and len(files) >= len(channels):
        what += f"; no file is named for: {', '.join(missing)}"
    elif missing:
        what += f"; missing: {', '.join(missing)}"
    found.problems.append(Problem(case, str(where.name) + "/", what, "give one file per channel, named by "
                                  "channel as in training (e.g. " + ", ".join(f"{case}_{c.display}" for c in channels)
                                  + "), or numbered in the model's order (_0000, _0001, ...)"))


def _four_d(found: FoundScans, case: str, f: Path, channels: list[ModelChannel]) -> bool:
    """A 4D file holding the scan's channels as volumes (the Decathlon's form) becomes one scan. Volumes are
    matched to the model's channels by the names of a Decathlon dataset.json beside or above the folder,
    else by position when their number is the model's."""
    if image_ending(f) not in VOLUME_ENDINGS:
        return False
    try:
        header = read_header(f)
    except Exception:  # unreadable: reported with the scan's other problems later
        return False
    if header.ndim != 4:
        return False
    n = header.shape[0]
    declared = _declared_channels(found.root)
    order = [next((i for i, d in enumerate(declared) if same_channel(d, c.key) or same_channel(d, c.display)), None)
             for c in channels] if declared and len(declared) == n else []
    if order and None not in order:
        found.scans.append(Scan(case, [f] * len(channels), volumes=order))
    elif n == len(channels):
        found.scans.append(Scan(case, [f] * len(channels), volumes=list(range(n))))
    else:
        found.problems.append(Problem(case, f.name, f"a 4D image of {n} volume(s) for a model of {len(channels)} "
                                      f"channels ({_names(channels)})", "give one volume per channel, in the "
                                      "training data's order, or one 3D file per channel named by channel"))
    return True


def _declared_channels(folder: Path) -> list[str]:
    """The ``modality`` names of a Decathlon dataset.json in ``folder`` or its parent (``imagesTs/``'s)."""
    for candidate in (folder / "dataset.json", folder.parent / "dataset.json"):
        if candidate.is_file():
            try:
                return read_dataset_json(candidate).channels
            except InputError:  # a broken dataset.json does not stop prediction: volumes go by position
                return []
    return []


def _single_case_name(f: Path, files: list[Path]) -> str:
    """The output name of a one-channel scan: its file name, without nnU-Net's ``_0000`` when every file
    in the folder carries one."""
    if all(NNUNET_CHANNEL.match(stem(g)) for g in files):
        return NNUNET_CHANNEL.match(stem(f))["case"]
    return stem(f)


def _check_headers(found: FoundScans, bundle: Bundle, series: str | None = None) -> None:
    """Readable, the model's dimensionality, channels on one grid, no duplicate output names. ``series``
    (``--series``) picks the series of a DICOM folder that holds several."""
    want = 2 if bundle.is_2d else 3
    seen: dict[str, Path] = {}
    for scan in found.scans:
        headers = []
        for f, channel in zip(scan.files, bundle.channels):
            where = relative_name(f, found.root)
            try:
                header = read_header(f, series)
            except Exception as e:  # the user's file: reported, not raised
                found.problems.append(Problem(scan.name, where, f"cannot read the file: {reader_message(e)}",
                                              DICOM_FIX if isinstance(e, DicomError) else UNREADABLE_FIX))
                continue
            if scan.volumes is not None and header.ndim == 4:
                header = spatial_part(header)
            if header.ndim != want:
                kind = "2D image" if header.ndim == 2 else f"{header.ndim}D volume"
                found.problems.append(Problem(scan.name, where, f"a {kind} (shape {header.shape}) for a model "
                                              f"trained on {want}D data", f"give {want}D scans like the training "
                                              f"data"))
                continue
            if header.components > 1 and not channel.colour and want == 3:
                found.problems.append(Problem(scan.name, where, f"{header.components} components per voxel",
                                              "save one scalar volume per channel"))
                continue
            headers.append((f, header))
        if headers:
            scan.header = headers[0][1]
            found.problems += _geometry_problems(scan.name, headers, found.root)
        key = scan.name.lower()
        if key in seen:
            both = f"{relative_name(seen[key], found.root)}, {relative_name(scan.files[0], found.root)}"
            found.problems.append(Problem(scan.name, both,
                                          "two scans would write the same output file",
                                          "rename one of them, or pick one file type with -e"))
        seen[key] = scan.files[0]


def _geometry_problems(case: str, headers: list[tuple[Path, ImageHeader]], root: Path) -> list[Problem]:
    (f0, ref), out = headers[0], []
    for f, h in headers[1:]:
        what = geometry_differences(h, ref)
        if what:
            out.append(Problem(case, relative_name(f, root), f"not on the grid of {f0.name}: " + "; ".join(what),
                               "the channels of a scan must share one voxel grid: resample them together"))
    return out


def _names(channels: list[ModelChannel]) -> str:
    return ", ".join(c.display for c in channels)




def find_references(folder: Path, scans: list[Scan]) -> dict[str, Path]:
    """Reference label files for ``--labels-dir``, by scan name: files named like the scan (``_seg`` and
    similar suffixes allowed), side by side or one per case folder. Raises when none matches or when a
    reference is not on its scan's grid; scans without a reference are simply not scored."""
    if not folder.is_dir():
        raise InputError(f"--labels-dir {folder}: no such folder.")
    candidates: dict[str, Path] = {}
    for f in list_image_files(folder):
        candidates.setdefault(label_case_name(stem(f)).lower(), f)
        candidates.setdefault(stem(f).lower(), f)
    for case_dir in list_subdirs(folder):
        labels = [f for f in list_image_files(case_dir) if is_label_name(stem(f)) and not is_aux_mask(stem(f))]
        if len(labels) == 1:
            candidates.setdefault(case_dir.name.lower(), labels[0])
    found = {s.name: candidates[s.name.lower()] for s in scans if s.name.lower() in candidates}
    if not found:
        raise InputError(f"--labels-dir {folder}: no reference label named like the scans (e.g. "
                         f"{scans[0].name}{scans[0].ending} or {scans[0].name}_seg{scans[0].ending}).")
    problems = []
    for scan in scans:
        if scan.name not in found or scan.header is None:
            continue
        try:
            header = read_header(found[scan.name])
        except Exception as e:  # the user's file: reported, not raised
            problems.append(Problem(scan.name, found[scan.name].name, f"cannot read the reference: "
                                    f"{reader_message(e)}", "re-export or replace it"))
            continue
        if header.shape != scan.header.shape:
            problems.append(Problem(scan.name, found[scan.name].name, f"reference shape {header.shape} differs "
                                    f"from the scan's {scan.header.shape}", "give the reference of this scan, on "
                                    "its voxel grid"))
    if problems:
        raise ScanProblems(problems, folder)
    return found
