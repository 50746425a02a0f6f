"""The per-run work folder: nnU-Net's raw, preprocessed and results folders for one dataset.

Everything a run writes goes here, never into the user's input. nnU-Net finds the folders through its
environment variables, which :meth:`Workspace.activate` sets for this process only.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

from medseg_auto.errors import InputError

MARKER = ".medseg_auto_work"


def nnunet_dataset_id(name: str) -> int:
    """A stable dataset id in 500-999 (nnU-Net's range left to users) derived from the name."""
    return 500 + zlib.crc32(name.encode()) % 500


@dataclass(frozen=True)
class Workspace:
    root: Path
    name: str

    @property
    def dataset_id(self) -> int:
        return nnunet_dataset_id(self.name)

    @property
    def nnunet_name(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{re.sub(r'[^A-Za-z0-9_-]', '_', self.name)}"

    @property
    def raw(self) -> Path:
        return self.root / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        return self.root / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        return self.root / "nnUNet_results"

    @property
    def raw_dataset(self) -> Path:
        return self.raw / self.nnunet_name

    @property
    def jobs(self) -> Path:
        """The folds' job files and records (``medseg_auto.fold``)."""
        return self.root / "jobs"

    def job_file(self, fold) -> Path:
        self.jobs.mkdir(parents=True, exist_ok=True)
        return self.jobs / f"fold_{fold}.job.json"

    @property
    def run_record(self) -> Path:
        """The run's record (``run_record.RunRecord``)."""
        return self.root / "run.json"

    @classmethod
    def create(cls, work_root: Path, name: str, input_dir: Path) -> "Workspace":
        """Make (or reuse) ``work_root/name``, refusing any place inside the input or holding it."""
        root = (work_root / name).resolve()
        inp = input_dir.resolve()
        if root == inp or inp in root.parents or root in inp.parents:
            raise InputError(f"The work folder {root} overlaps the input {inp}: choose another --work-dir.")
        if root.exists() and any(root.iterdir()) and not (root / MARKER).exists():
            raise InputError(f"{root} exists and was not made by medseg_auto: choose another --work-dir "
                             f"(nothing there was touched).")
        root.mkdir(parents=True, exist_ok=True)
        (root / MARKER).touch()
        return cls(root, name)

    def reset_raw(self) -> Path:
        """An empty raw dataset folder (ours, inside the work folder, so safe to replace)."""
        if self.raw_dataset.exists():
            shutil.rmtree(self.raw_dataset)
        (self.raw_dataset / "imagesTr").mkdir(parents=True)
        (self.raw_dataset / "labelsTr").mkdir(parents=True)
        return self.raw_dataset

    def environment(self) -> dict[str, str]:
        return {"nnUNet_raw": str(self.raw), "nnUNet_preprocessed": str(self.preprocessed),
                "nnUNet_results": str(self.results)}

    def activate(self) -> None:
        """Point nnU-Net at this work folder (for this process and the workers it starts)."""
        os.environ.update(self.environment())

    @contextlib.contextmanager
    def lock(self):
        """One run per dataset at a time. The OS releases the lock when the process dies (even kill -9)."""
        path = self.root / ".lock"
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "unknown"
                raise InputError(f"Another medseg_auto run (pid {holder}) is working on '{self.name}' in "
                                 f"{self.root}: wait for it to finish or stop it first.") from None
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            try:
                yield self
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def clear_training(self, keep_preprocessed: bool) -> None:
        """Forget an earlier run's models (and its preprocessing unless the data is unchanged)."""
        folders = [self.results, self.jobs] + ([] if keep_preprocessed else [self.preprocessed])
        for folder in folders:
            if folder.exists():
                shutil.rmtree(folder)

    def remove(self) -> None:
        """Delete the work folder (only ever one made by medseg_auto: it carries the marker file)."""
        if (self.root / MARKER).is_file():
            shutil.rmtree(self.root)


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str))
    tmp.replace(path)
