"""Which folder holds the labels, when several could: chosen by the user, never guessed.

A dataset often ships more than one folder of masks beside its images (a second rater, a field-of-view or
ROI mask, the annotations under an unusual name). Discovery finds every folder whose files pair one to one
with the images (:func:`medseg_auto.ingest.layout.label_folder_candidates`); when there is more than one,
this module reads a few masks of each and stops with a table that lets the user pick with ``--labels-dir``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg_auto.errors import InputError
from medseg_auto.ingest.formats import read_image

SAMPLE = 6            # masks read per candidate folder for its statistics
FIELD_OF_VIEW = 0.5   # masks covering more than this share of each image ...
SAME_REGION = 0.9     # ... with this overlap (IoU) between images look like a field-of-view (or ROI) mask


@dataclass
class FolderStats:
    """A few masks of a candidate folder, read: their values and the share of the image they cover."""

    folder: Path
    files: int
    values: list[float]
    too_many_values: bool
    foreground: float | None  # mean share of non-zero pixels over the masks read; None if none was readable
    overlap: float | None = None  # mean IoU of the masks read with the first of them (same shape only)

    @property
    def looks_like_field_of_view(self) -> bool:
        """Covers most of each image, and the same region in each: a field of view, not a structure."""
        return (self.foreground is not None and self.foreground > FIELD_OF_VIEW
                and (self.overlap is None or self.overlap > SAME_REGION))

    def describe(self) -> str:
        values = ("more than 10 values (an image, not a mask?)" if self.too_many_values
                  else "values " + ", ".join(f"{v:g}" for v in self.values) if self.values else "unreadable")
        text = f"{self.folder.name}/: {self.files} file(s), {values}"
        if self.foreground is not None:
            text += f", foreground {100 * self.foreground:.0f}% of each image"
        if self.looks_like_field_of_view:
            text += " (the same region in every image: looks like a field-of-view mask)"
        return text


def folder_stats(folder: Path, files: list[Path]) -> FolderStats:
    """Read up to :data:`SAMPLE` of ``files`` (evenly spread); unreadable files are skipped here (the checks
    report them once a folder is chosen)."""
    picks = [files[i] for i in sorted({round(i) for i in np.linspace(0, len(files) - 1, min(SAMPLE, len(files)))})]
    values: set[float] = set()
    shares, masks = [], []
    for f in picks:
        try:
            array = read_image(f).array
        except Exception:  # the user's file: reported by the checks if this folder is chosen
            continue
        if array.ndim == 3 and array.shape[-1] in (3, 4) and f.suffix.lower() in (".png", ".gif", ".bmp", ".tif"):
            array = array[..., 0]
        values.update(float(v) for v in np.unique(array)[:11])
        shares.append(float(np.count_nonzero(array)) / max(1, array.size))
        masks.append(array != 0)
    same = [m for m in masks[1:] if m.shape == masks[0].shape]
    overlap = float(np.mean([np.count_nonzero(m & masks[0]) / max(1, np.count_nonzero(m | masks[0]))
                             for m in same])) if same else None
    return FolderStats(folder, len(files), sorted(values)[:10], len(values) > 10,
                       float(np.mean(shares)) if shares else None, overlap)


def refuse_several(images: Path, candidates: list[tuple[Path, list[Path]]], root: Path) -> InputError:
    """The error when several folders could hold the labels: each with its statistics, and the flag."""
    stats = [folder_stats(folder, files) for folder, files in candidates]
    likely = [s for s in stats if not s.looks_like_field_of_view and not s.too_many_values]
    example = (likely or stats)[0].folder.name
    lines = "\n".join(f"  {s.describe()}" for s in stats)
    return InputError(f"{root}: {len(stats)} folders beside {images.name}/ could hold the labels (their files "
                      f"pair one to one with the images):\n{lines}\nChoose the one with the segmentation to "
                      f"learn with --labels-dir, e.g. --labels-dir {example}. Nothing was changed.")


def choose(images: Path, candidates: list[tuple[Path, list[Path]]], wanted: str | None, root: Path,
           fallback: Path | None = None) -> Path | None:
    """The label folder: ``--labels-dir`` if given (a subfolder name or a path), the only candidate, or the
    folder named like labels (``fallback``) when no folder pairs one to one; raises when several could."""
    if wanted:
        path = Path(wanted)
        folder = path if path.is_absolute() else root / path
        if not folder.is_dir():
            names = ", ".join(c.name + "/" for c, _ in candidates) or "none"
            raise InputError(f"--labels-dir {wanted}: no such folder in {root} (folders whose files pair with "
                             f"the images: {names}).")
        if folder.resolve() == images.resolve():
            raise InputError(f"--labels-dir {wanted}: that is the image folder; name the folder of labels.")
        return folder
    if len(candidates) > 1:
        raise refuse_several(images, candidates, root)
    if candidates:
        return candidates[0][0]
    return fallback
