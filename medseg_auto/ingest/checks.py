"""Checks on the files as read: readability, dimensions, NaN/Inf, geometry between channels and label,
consistency across cases, and enough cases for the requested folds.

Every check adds :class:`Problem` rows; nothing stops at the first one.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from medseg_auto.ingest.layout import SourceCase
from medseg_auto.ingest.problems import DATASET, WARNING, Problem
from medseg_auto.ingest.scan import MAX_LABEL_VALUES, FileInfo

# Geometry tolerances between a case's channels and its label.
SPACING_RTOL = 1e-3      # relative
ORIGIN_ATOL = 1e-2       # in units of the smallest voxel spacing
DIRECTION_ATOL = 1e-3    # direction cosines
CV_FOLDS = 5             # nnU-Net's cross-validation splits
# How to fix a file that cannot be read; a DICOM problem's message says what to do about it.
UNREADABLE_FIX = "re-export or replace the file (is it complete, and really this format?)"
DICOM_FIX = "see the problem: pick a series with --series, or fix the series as it says"


def check_files(case: SourceCase, infos: dict, rel) -> list[Problem]:
    """Problems of single files: unreadable, 4D, vector labels, NaN/Inf, non-integral labels."""
    out = []
    files = [(f, False) for f in case.files()] + ([(case.label, True)] if case.label else [])
    for path, is_label in files:
        info: FileInfo = infos[path]
        where = rel(path)
        if info.error:
            out.append(Problem(case.name, where, f"cannot read the file: {info.error}",
                               DICOM_FIX if info.dicom_error else UNREADABLE_FIX))
            continue
        if info.volumes is not None and (is_label or not case.volumes):
            out.append(Problem(case.name, where, f"a 4D {'label' if is_label else 'image'} ({info.volumes} volumes "
                               f"of shape {info.shape}); one 3D file per channel is expected",
                               "split the last dimension into one 3D file per channel (or use the Decathlon "
                               "form: imagesTr/ + labelsTr/ with a dataset.json naming the channels)"))
        elif info.ndim > 3:
            out.append(Problem(case.name, where, f"a {info.ndim}D image (shape {info.shape})",
                               "save 2D or 3D images, one file per channel"))
        elif not is_label and case.volumes:
            out += _volume_problems(case, info, where)
        if info.components > 1 and not info.grey_rgb and is_label:
            out.append(Problem(case.name, where, f"a colour ({info.components}-component) label",
                               "save the mask as a single-channel (greyscale) image"))
        elif info.components > 1 and not info.grey_rgb and info.ndim == 3:
            out.append(Problem(case.name, where, f"a volume with {info.components} components per voxel",
                               "save one scalar volume per channel"))
        if info.nonfinite:
            out.append(Problem(case.name, where, f"{info.nonfinite} voxel(s) are NaN or infinite",
                               "replace them (e.g. by 0) when exporting the image"))
        if is_label and info.values is None and info.n_values > MAX_LABEL_VALUES:
            out.append(Problem(case.name, where, f"{info.n_values} distinct values: this is not a label map "
                               "(an image in the label folder, or a lossy JPEG mask?)",
                               "use the integer mask, saved losslessly (PNG, NIfTI)"))
        elif is_label and info.values is not None:
            odd = [v for v in info.values if v != int(v)]
            if odd:
                out.append(Problem(case.name, where, "non-integral label values: "
                                   + ", ".join(f"{v:g}" for v in odd[:5]) + (" ..." if len(odd) > 5 else ""),
                                   "labels must be whole numbers: was it resampled with linear interpolation? "
                                   "Resample labels with nearest neighbour"))
    return out


def _volume_problems(case: SourceCase, info: FileInfo, where: str) -> list[Problem]:
    """A Decathlon image holds one volume per declared channel (a single channel may be a 3D file)."""
    wanted = len(case.volumes)
    held = info.volumes if info.volumes is not None else 1
    if held == wanted:
        return []
    names = ", ".join(k or "image" for k in case.volumes)
    return [Problem(case.name, where, f"holds {held} volume(s) where dataset.json's \"modality\" names {wanted} "
                    f"channel(s) ({names})", "give every case one volume per channel, in modality's order, or "
                    "fix \"modality\" in dataset.json")]


def check_geometry(case: SourceCase, infos: dict, rel) -> list[Problem]:
    """Shape, spacing, origin and direction equal (within tolerance) between channels and label."""
    files = case.files() + ([case.label] if case.label else [])
    readable = [f for f in files if not infos[f].error]
    if len(readable) < 2:
        return []
    ref = infos[readable[0]]
    out = []
    for f in readable[1:]:
        what = geometry_differences(infos[f], ref)
        if what:
            out.append(Problem(case.name, rel(f), f"geometry differs from {rel(readable[0])}: " + "; ".join(what),
                               "the channels and the label must be on the same voxel grid: resample or "
                               "re-export them together (fix the header if only it is wrong)"))
    return out


def geometry_differences(image, ref) -> list[str]:
    """How ``image``'s voxel grid differs from ``ref``'s (anything with shape, ndim, spacing, origin and
    direction: a FileInfo or an ImageHeader), within the tolerances above; empty when they agree."""
    if image.shape != ref.shape:
        return [f"shape {image.shape} vs {ref.shape}"]
    what = []
    if image.ndim == ref.ndim:
        if not np.allclose(image.spacing, ref.spacing, rtol=SPACING_RTOL, atol=0):
            what.append(f"spacing {_fmt(image.spacing)} vs {_fmt(ref.spacing)}")
        if not np.allclose(image.origin, ref.origin, rtol=0, atol=ORIGIN_ATOL * min(ref.spacing)):
            what.append(f"origin {_fmt(image.origin)} vs {_fmt(ref.origin)}")
        if not np.allclose(image.direction, ref.direction, rtol=0, atol=DIRECTION_ATOL):
            what.append("direction (orientation) differs")
    return what


def check_consistency(cases: list[SourceCase], infos: dict, rel) -> list[Problem]:
    """Across cases: all 2D or all 3D, and the same number of colour components per channel."""
    out = []
    dims = {c.name: infos[f].ndim for c in cases for f in c.channels.values() if not infos[f].error}
    counts = Counter(dims.values())
    if len(counts) > 1:
        common = counts.most_common(1)[0][0]
        for c in cases:
            if c.name in dims and dims[c.name] != common:
                out.append(Problem(c.name, rel(next(iter(c.channels.values()))),
                                   f"a {dims[c.name]}D image in a dataset of {common}D images (2D and 3D mixed)",
                                   "keep 2D and 3D data in separate datasets"))
    return out


def check_case_count(n_cases: int, folds: list[int | str]) -> list[Problem]:
    """Enough cases for the requested folds: nnU-Net's split has 5 folds, each validated on n/5 cases."""
    out = []
    cv = [f for f in folds if f != "all"]
    if cv and n_cases < CV_FOLDS:
        out.append(Problem(DATASET, "", f"{n_cases} usable case(s): cross-validation folds need at least "
                           f"{CV_FOLDS} (nnU-Net splits the cases into 5 folds)",
                           "add cases, or train one model on all cases with -f full"))
    elif cv and n_cases < 2 * CV_FOLDS:
        out.append(Problem(DATASET, "", f"{n_cases} cases: some folds validate on a single case, so their Dice "
                           "is noisy", f"use {2 * CV_FOLDS} or more cases for reliable cross-validation", WARNING))
    if not cv and n_cases < 1:
        out.append(Problem(DATASET, "", "no usable case", "add labelled cases"))
    return out


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
