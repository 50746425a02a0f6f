"""What every part of the DICOM reader shares: the error it raises, a slice's header (:class:`Slice`), a series'
grid (:class:`Series`) and the tolerances of the geometry checks.

A slice is one image plane: a single-frame file, or one frame of a multi-frame file (``frame`` set); a series
is such planes ordered by position, its voxel grid in ITK's terms.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")  # implicit and explicit VR little endian
SERIES_FLAG = "--series"
# Tolerances: positions in mm relative to the slice step, direction cosines, tilt in degrees.
SPACING_RTOL = 0.01
COSINE_ATOL = 1e-4
TILT_DEGREES = 0.05


class DicomError(ValueError):
    """A DICOM input that cannot be read as asked; the message says where, what and how to fix it."""


class _MissingSeries(DicomError):
    """The folder holds no series of the UID asked for (for a DICOM-SEG: it was moved or rewritten)."""


def series_choice(text: str | None) -> str | None:
    """``--series`` as given: the series (UID or description) to read where a folder holds several, or None.
    The choice travels with the options (``IngestOptions.series``, ``PredictOptions.series``) to the readers."""
    return text.strip() or None if text else None


@dataclass(frozen=True)
class Slice:
    """One image plane's header, as far as the geometry needs it: a single-frame file, or frame ``frame``
    (from 0, in the file's order) of a multi-frame file."""

    path: Path
    sop_instance_uid: str
    series_uid: str
    description: str
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]  # (between rows, between columns), as DICOM orders it
    position: tuple[float, float, float]
    orientation: tuple[float, ...]       # row cosines, then column cosines
    frame: int | None = None
    # a frame's place in the dimensions of its file that are not its position: (what, value) pairs such as
    # ("echo", "10"), ("stack", "1"); frames of one volume share them
    content: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        """The file's name, with the frame's number (from 1) for a frame of a multi-frame file."""
        return self.path.name if self.frame is None else f"{self.path.name} frame {self.frame + 1}"

    @property
    def key(self) -> tuple[Path, int | None]:
        """Where its pixels are: the file, and the frame in it."""
        return self.path, self.frame


@dataclass(frozen=True)
class Series:
    """One series of a folder: its slices in position order, and its voxel grid in ITK's terms."""

    folder: Path
    uid: str
    description: str
    slices: tuple[Slice, ...]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.slices), self.slices[0].rows, self.slices[0].columns)

    @property
    def normal(self) -> np.ndarray:
        return np.array(self.direction).reshape(3, 3)[:, 2]

    @property
    def multiframe(self) -> bool:
        """The frames of one multi-frame file."""
        return self.slices[0].frame is not None


def first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:160]
