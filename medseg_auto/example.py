"""The embedded example dataset: a small synthetic two-channel 3D MRI-like lesion segmentation task.

``python3 exe_train.py --example`` trains on it, so that a first run works without any data of one's own.
The cases are built to be *realistic enough* to exercise the whole pipeline (a head with tissue texture,
Rician noise, a smooth intensity bias field, two contrasts, irregular lesions with a core) and *small
enough* that nnU-Net plans a small patch and learns the task in a few minutes of CPU training.

Layout written (one folder per case, BraTS style, detected by the ingest without flags)::

    example/
    ├── .medseg_auto_example        <- marker: this folder was written by write_example_dataset
    ├── case_000/
    │   ├── case_000_t1.nii.gz      <- channel T1 (float32)
    │   ├── case_000_t2.nii.gz      <- channel T2 (float32)
    │   └── case_000_seg.nii.gz     <- label (uint8): 0 background, 1 lesion, 2 core
    └── case_001/ ...

Contrasts: in T1 the lesion is slightly darker than the tissue around it and the core darker still; in T2
the lesion is bright and the core intermediate. CSF (a rim and two ventricles) is dark in T1 and brighter
than the lesion in T2, so that neither channel alone separates lesion from everything else.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np

from medseg_auto.errors import InputError

EXAMPLE_NAME = "example"
MARKER = ".medseg_auto_example"
CHANNELS = ("t1", "t2")                 # file-name keys; the ingest names them T1 and T2
LABELS = {1: "lesion", 2: "core"}       # label values and names (``-l lesion,core``)
SHAPE = (40, 40, 32)                    # voxels, (x, y, z)
SPACING = (1.5, 1.5, 2.0)               # mm, (x, y, z)
FORMAT_VERSION = 1

# Mean intensity of each tissue, (T1, T2), in arbitrary MRI-like units.
_TISSUE = {
    "scalp": (820.0, 420.0),
    "csf": (240.0, 1100.0),
    "grey": (560.0, 640.0),
    "white": (760.0, 440.0),
    "lesion": (470.0, 900.0),
    "core": (300.0, 700.0),
}
_NOISE_SIGMA = 0.03          # Rician noise, as a fraction of white-matter intensity
_BIAS_AMPLITUDE = 0.18       # the bias field's log-amplitude (about +-20 % across the head)
_MIN_CORE, _MIN_RIM = 40, 150  # voxels of label 2 and label 1 every case has at least


def write_example_dataset(folder: Path, n_cases: int = 16, seed: int = 0) -> Path:
    """Write the synthetic example dataset into ``folder`` (e.g. ``input_train/example``) and return it.

    The same ``seed`` gives the same voxels. ``folder`` is written whole or not at all (cases are generated
    in a hidden sibling folder that is renamed into place), and nothing of anyone else's is overwritten:
    a ``folder`` that holds a previous example (it carries the marker file) is reused as it is, whatever
    ``n_cases`` and ``seed`` are; any other non-empty ``folder`` raises :class:`InputError`.
    """
    folder = Path(folder)
    if n_cases < 1:
        raise ValueError(f"n_cases must be at least 1, got {n_cases}")
    if _is_example(folder):
        return folder
    _refuse_foreign(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()  # not tempfile.mkdtemp: its mode 0700 would stay on the renamed folder
    try:
        for i in range(n_cases):
            _write_case(tmp, f"case_{i:03d}", np.random.default_rng([seed, i]))
        (tmp / MARKER).write_text(json.dumps({
            "written_by": "medseg_auto.example.write_example_dataset", "format_version": FORMAT_VERSION,
            "n_cases": n_cases, "seed": seed, "shape_xyz": SHAPE, "spacing_xyz_mm": SPACING,
            "channels": list(CHANNELS), "labels": {str(k): v for k, v in LABELS.items()}}, indent=1) + "\n")
        if folder.is_dir():
            folder.rmdir()  # empty (checked above); rmdir refuses if something appeared meanwhile
        os.rename(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_example(folder):  # written by a concurrent call: same thing, use it
            return folder
        _refuse_foreign(folder)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _is_example(folder: Path) -> bool:
    return folder.is_dir() and (folder / MARKER).is_file()


def _refuse_foreign(folder: Path) -> None:
    """Raise :class:`InputError` if ``folder`` is a file or a non-empty folder (not an example)."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"Cannot write the example dataset to {folder}: a file of that name exists. "
                         f"Move it away, or choose another folder.")
    if folder.is_dir() and any(folder.iterdir()):
        raise InputError(f"Cannot write the example dataset to {folder}: the folder exists, is not empty and "
                         f"was not written by the example generator (no {MARKER} file in it). Nothing was "
                         f"changed. Move or rename that folder, or choose another one.")


# --- one case ------------------------------------------------------------------------------------------

def _write_case(root: Path, name: str, rng: np.random.Generator) -> None:
    import SimpleITK as sitk

    images, label = make_case(rng)
    case_dir = root / name
    case_dir.mkdir()
    origin = tuple(-(n - 1) * s / 2 for n, s in zip(SHAPE, SPACING))  # the volume centred on 0 (non-zero)
    for key, array in [*zip(CHANNELS, images), ("seg", label)]:
        image = sitk.GetImageFromArray(array)  # (z, y, x) array -> (x, y, z) image
        image.SetSpacing(SPACING)
        image.SetOrigin(origin)
        sitk.WriteImage(image, str(case_dir / f"{name}_{key}.nii.gz"), useCompression=True)


def make_case(rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """One synthetic case in numpy order (z, y, x): ``([t1, t2], label)``, float32 images, uint8 label.

    Both foreground labels are present in every case: lesions are redrawn (from the same generator,
    so still deterministic) until the core and the lesion rim each have a minimum size.
    """
    grid = _grid()
    head_centre = rng.uniform(-2.0, 2.0, 3)
    head_axes = np.array([23.0, 25.0, 26.0]) * rng.uniform(0.92, 1.03, 3)
    rho = np.sqrt(_quadric(grid, head_centre, head_axes, _rotation(rng, 0.15)))  # 1 on the head's surface
    head, brain = rho <= 1.0, rho <= 0.83
    csf = (rho > 0.83) & (rho <= 0.89)
    for side in (-1.0, 1.0):  # two ventricles, either side of the midline
        centre = head_centre + np.array([side * rng.uniform(4.0, 6.0), rng.uniform(-3, 1), rng.uniform(-2, 4)])
        csf |= _quadric(grid, centre, rng.uniform([2.0, 6.0, 4.0], [3.5, 9.0, 6.0]), _rotation(rng, 0.3)) <= 1.0
    csf &= head
    # Grey/white matter: a smooth random field thresholded softly, with grey matter towards the surface.
    grey = 1.0 / (1.0 + np.exp(-(2.5 * _smooth_noise(rng, 3.0) + 10.0 * (rho - 0.68))))

    for _ in range(100):
        lesion, core = _lesion(grid, rng, head_centre, head_axes * 0.83, rho <= 0.8)
        if core.sum() >= _MIN_CORE and (lesion & ~core).sum() >= _MIN_RIM:
            break
    else:  # not seen in practice: a lesion of this size almost always fits
        raise RuntimeError("could not place a lesion with a core in 100 tries")
    label = np.zeros(grid[0].shape, np.uint8)
    label[lesion] = 1
    label[core] = 2

    images = []
    scale = rng.uniform(0.85, 1.15)
    for c in range(len(CHANNELS)):
        t = {k: v[c] for k, v in _TISSUE.items()}
        tissue = grey * t["grey"] + (1 - grey) * t["white"]
        clean = np.where(head, t["scalp"], 0.0)
        clean = np.where(brain, tissue * (1 + 0.04 * _smooth_noise(rng, 1.5)), clean)
        clean = np.where(csf, t["csf"], clean)
        lesion_texture = 1 + 0.06 * _smooth_noise(rng, 2.0)
        clean = np.where(lesion, t["lesion"] * lesion_texture, clean)
        clean = np.where(core, t["core"] * lesion_texture, clean)
        clean = _blur(clean, 0.6)  # partial-volume edges
        clean *= scale * rng.uniform(0.95, 1.05) * _bias_field(grid, rng)
        sigma = _NOISE_SIGMA * t["white"] * scale
        noisy = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))
        images.append(noisy.astype(np.float32))
    return images, label


def _lesion(grid, rng: np.random.Generator, brain_centre: np.ndarray, brain_axes: np.ndarray,
            brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An irregular lesion (a few overlapping ellipsoids with a wobbly edge) and its core, inside the brain."""
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    centre = brain_centre + direction * rng.uniform(0.0, 0.55) * brain_axes
    main_axes = rng.uniform(7.0, 11.0, 3)
    inside = 1.0 - _quadric(grid, centre, main_axes, _rotation(rng))
    for _ in range(rng.integers(1, 4)):  # extra lobes
        offset = rng.normal(size=3)
        offset *= rng.uniform(0.5, 0.9) * main_axes / np.linalg.norm(offset)
        lobe = 1.0 - _quadric(grid, centre + offset, rng.uniform(3.5, 7.0, 3), _rotation(rng))
        inside = np.maximum(inside, lobe)
    lesion = (inside + 0.3 * _smooth_noise(rng, 2.0) > 0) & brain
    core_inside = 1.0 - _quadric(grid, centre, main_axes * rng.uniform(0.45, 0.65), _rotation(rng))
    core = (core_inside + 0.25 * _smooth_noise(rng, 1.5) > 0) & _erode(lesion)
    return lesion, core


# --- building blocks ----------------------------------------------------------------------------------

def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Physical coordinates in mm, centred on the volume, as arrays in numpy order (z, y, x)."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(SHAPE, SPACING)]  # x, y, z
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return x, y, z


def _quadric(grid, centre: np.ndarray, axes: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Squared normalised radius of a rotated ellipsoid: <= 1 inside."""
    d = np.stack([g - c for g, c in zip(grid, centre)], axis=-1) @ rotation
    return ((d / axes) ** 2).sum(-1)


def _rotation(rng: np.random.Generator, max_angle: float = np.pi) -> np.ndarray:
    """A random rotation matrix of at most ``max_angle`` radians (Rodrigues' formula)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(-max_angle, max_angle)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _blur(volume: np.ndarray, sigma_voxels: float) -> np.ndarray:
    """Gaussian blur through the FFT (periodic edges: harmless, the volume's border is background)."""
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in volume.shape[:-1]], np.fft.rfftfreq(volume.shape[-1]),
                        indexing="ij")
    kernel = np.exp(-2 * (np.pi * sigma_voxels) ** 2 * sum(f ** 2 for f in freqs))
    axes = tuple(range(volume.ndim))
    return np.fft.irfftn(np.fft.rfftn(volume, axes=axes) * kernel, volume.shape, axes=axes)


def _smooth_noise(rng: np.random.Generator, sigma_mm: float) -> np.ndarray:
    """Smooth random texture with unit standard deviation; ``sigma_mm`` sets its grain."""
    shape = SHAPE[::-1]
    field = _blur(rng.normal(size=shape), sigma_mm / float(np.mean(SPACING)))
    return field / (field.std() + 1e-12)


def _bias_field(grid, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative intensity bias: exp of a random quadratic polynomial of the position."""
    u = [g / (n * s / 2) for g, n, s in zip(grid, SHAPE, SPACING)]  # about -1..1
    terms = u + [u[0] * u[1], u[1] * u[2], u[0] * u[2]] + [v ** 2 - 1 / 3 for v in u]
    coefficients = rng.normal(0, 1, len(terms))
    log_field = sum(c * t for c, t in zip(coefficients, terms))
    return np.exp(_BIAS_AMPLITUDE * log_field / (np.abs(log_field).max() + 1e-12))


def _erode(mask: np.ndarray) -> np.ndarray:
    """Binary erosion by one voxel (6-neighbourhood); voxels on the volume's border are dropped."""
    out = mask.copy()
    for axis in range(mask.ndim):
        for shift in (1, -1):
            out &= np.roll(mask, shift, axis)
    for axis in range(mask.ndim):
        index = [slice(None)] * mask.ndim
        index[axis] = [0, -1]
        out[tuple(index)] = False
    return out
