"""Shared fixtures: small copies of the real datasets in ../shared/data, dropped into a temp input_train/."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSEG_DATA", REPO.parent / "shared" / "data"))


def real_data(name: str) -> Path:
    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"real dataset {name} not found at {path} (set MEDSEG_DATA to the shared data folder)")
    return path


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its SHA-256: equal digests mean a byte-identical tree."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project root with an empty input_train/ (the CLI's root argument)."""
    (tmp_path / "input_train").mkdir()
    return tmp_path


def copy_pairs(dataset: str, dest: Path, n: int) -> Path:
    """The first ``n`` cases of a real paired-folder dataset (images/ + labels/) copied to ``dest``."""
    src = real_data(dataset)
    names = sorted(p.name for p in (src / "images").iterdir())[:n]
    for sub in ("images", "labels"):
        (dest / sub).mkdir(parents=True)
        for name in names:
            shutil.copy2(src / sub / name, dest / sub / name)
    return dest


def copy_hippocampus(dest: Path, n: int = 10) -> Path:
    return copy_pairs("hippocampus", dest, n)


def copy_membrane(dest: Path, n: int = 6, crop: int | None = None) -> Path:
    """``n`` membrane image/mask pairs; ``crop`` keeps the top-left crop x crop pixels of each (real data,
    a smaller network: a 2D model then trains in seconds on a CPU)."""
    copy_pairs("membrane_2d", dest, n)
    if crop:
        from PIL import Image

        for f in (dest / "images").iterdir():
            for sub in ("images", "labels"):
                with Image.open(dest / sub / f.name) as image:
                    image.crop((0, 0, crop, crop)).save(dest / sub / f.name)
    return dest


def copy_brats(dest: Path) -> Path:
    shutil.copytree(real_data("brats2015_subset"), dest)
    return dest


def copy_brats_crops(dest: Path, n: int = 4, size: tuple[int, int, int] = (48, 48, 32)) -> Path:
    """``n`` BraTS cases (FLAIR + T1c + label, one folder per case), each cropped to ``size`` voxels around
    its tumour's centre: real data, small enough to train a 2-channel 3D model in a minute on a CPU."""
    import nibabel
    import numpy as np

    src = real_data("brats2015_subset")
    for case in sorted(src.iterdir())[:n]:
        label = nibabel.load(case / "OTMultiClass.nii.gz")
        centre = np.argwhere(np.asarray(label.dataobj) > 0).mean(0).round().astype(int)
        lo = [int(np.clip(c - s // 2, 0, dim - s)) for c, s, dim in zip(centre, size, label.shape)]
        box = tuple(slice(a, a + s) for a, s in zip(lo, size))
        (dest / case.name).mkdir(parents=True)
        for name in ("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz", "OTMultiClass.nii.gz"):
            image = nibabel.load(case / name)
            nibabel.save(image.slicer[box], dest / case.name / name)
    return dest


def verify_with_nnunet(raw_dataset: Path | str) -> None:
    """nnU-Net's own integrity check must accept what we converted (it raises on any problem)."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(raw_dataset), num_processes=1)


@pytest.fixture
def train_cli(project: Path, capsys, monkeypatch):
    """Run ``exe_train.py`` in-process against ``project``; returns (exit code, stdout, stderr).

    The terminal is made wide so that each problem of the report stays on one line.
    """
    from medseg_auto.cli.train import main

    monkeypatch.setenv("COLUMNS", "1000")

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args), root=project)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def read_record(project: Path, name: str) -> dict:
    import json

    return json.loads((project / "work" / name / "run.json").read_text())


# --- tiny real training runs, shared by the training and prediction tests -----------------------------

BUDGET_MIN = 2.0


def clean_env() -> dict:
    """The environment of a user's shell: no nnUNet_* variables, a wide terminal."""
    return {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")} | {"COLUMNS": "200"}


def train_command(project: Path, name: str, *extra: str, minutes: float = BUDGET_MIN, folds: str = "0") -> list[str]:
    return [sys.executable, str(REPO / "exe_train.py"), "-d", name, "-f", folds, "-t", str(minutes),
            "--input-dir", str(project / "input_train"), "--work-dir", str(project / "work"),
            "--output-dir", str(project / "output_models"), *extra]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """One tiny run: 12 hippocampus cases, fold 0, a two-minute budget. Returns (project, completed
    process, wall seconds, digest of input_train before the run); the bundle is output_models/hippo."""
    project = tmp_path_factory.mktemp("project")
    copy_hippocampus(project / "input_train" / "hippo", 12)
    before = tree_digest(project / "input_train")
    start = time.monotonic()
    done = subprocess.run(train_command(project, "hippo", "-l", "anterior,posterior"), capture_output=True,
                          text=True, timeout=600, env=clean_env())
    return project, done, time.monotonic() - start, before


@pytest.fixture(scope="session")
def membrane_bundle(tmp_path_factory) -> Path:
    """A 2D model trained for a minute and a half on 6 membrane PNGs (128x128 crops, masks 0/255), all cases
    (``-f full``)."""
    project = tmp_path_factory.mktemp("membrane")
    copy_membrane(project / "input_train" / "membrane", 6, crop=128)
    done = subprocess.run(train_command(project, "membrane", "-l", "cells", minutes=1.5, folds="full"),
                          capture_output=True, text=True, timeout=600, env=clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    return project / "output_models" / "membrane"
