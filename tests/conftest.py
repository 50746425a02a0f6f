"""Shared fixtures: small copies of the real datasets in ../shared/data, dropped into a temp input_train/."""
from __future__ import annotations

import hashlib
import os
import shutil
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


def copy_membrane(dest: Path, n: int = 6) -> Path:
    return copy_pairs("membrane_2d", dest, n)


def copy_brats(dest: Path) -> Path:
    shutil.copytree(real_data("brats2015_subset"), dest)
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
