"""A model bundle as prediction sees it: which channels it wants, which folds it holds, how its labels map
back to the dataset's own values, and which case predictor runs it.

Everything comes from the bundle's files (``medseg_auto.json`` beside nnU-Net's model folder); no
environment variables are read.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg_auto.errors import InputError
from medseg_auto.export import CHECKPOINT
from medseg_auto.ingest.channels import canonical_name
from medseg_auto.manifest import MANIFEST, BundleManifest


@dataclass(frozen=True)
class ModelChannel:
    """One input file per case: its key in the training data's file names and the nnU-Net channels it
    becomes (three for a colour image split into R, G and B)."""

    key: str
    names: tuple[str, ...]

    @property
    def display(self) -> str:
        if self.key and not self.key.isdigit():
            return canonical_name(self.key)
        return self.names[0].rsplit("_", 1)[0] if len(self.names) == 3 else self.names[0]

    @property
    def colour(self) -> bool:
        return len(self.names) == 3


@dataclass(frozen=True)
class LabelClass:
    """A label (or region) the model predicts: its name and its nnU-Net values (several for a region)."""

    name: str
    values: tuple[int, ...]


@dataclass
class Bundle:
    """An opened bundle: its folder, its manifest (``medseg_auto.json``) and the folds chosen to predict with."""

    folder: Path
    manifest: BundleManifest
    folds: list[str]

    @property
    def is_2d(self) -> bool:
        return self.manifest.is_2d

    @property
    def channels(self) -> list[ModelChannel]:
        record = self.manifest.channels
        keys, names = record.keys or ("",), record.nnunet_names
        colour = set(record.colour)
        out, i = [], 0
        for key in keys:
            n = 3 if key in colour else 1
            out.append(ModelChannel(key, tuple(names[i:i + n])))
            i += n
        return out

    @property
    def classes(self) -> list[LabelClass]:
        """What metrics and volumes are reported for: the regions of a region model, else each label."""
        labels = self.manifest.labels
        if labels.regions:
            return [LabelClass(r.name, r.labels) for r in labels.regions]
        return [LabelClass(name, (v,)) for v, name in sorted(labels.names.items())]

    def to_original(self, segmentation: np.ndarray) -> np.ndarray:
        """nnU-Net's label values -> the dataset's own (0/255 masks come back as 0/255), in the smallest
        unsigned type that holds them."""
        inverse = self.manifest.labels.nnunet_to_original
        if not inverse:
            return segmentation.astype(_dtype_for(int(segmentation.max(initial=0))))
        lut = np.zeros(max(inverse) + 1, dtype=np.int64)
        for k, v in inverse.items():
            lut[k] = v
        return lut[segmentation].astype(_dtype_for(int(lut.max())))

    def to_nnunet(self, reference: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """A reference label map in the dataset's values -> nnU-Net's values; also returns the values found
        that the model does not know (they count as background)."""
        mapping = self.manifest.labels.original_to_nnunet
        values = np.unique(reference)
        unknown = [int(v) for v in values if int(v) not in mapping or v != int(v)]
        out = np.zeros(reference.shape, dtype=np.uint16)
        for v in values:
            if int(v) in mapping and v == int(v):
                out[reference == v] = mapping[int(v)]
        return out, unknown


def _dtype_for(max_value: int):
    return np.uint8 if max_value < 256 else np.uint16 if max_value < 65536 else np.uint32


def open_bundle(folder: Path, folds: list[str] | None = None) -> Bundle:
    """Open ``output_models/NAME`` and choose its folds (all it holds by default); exit 2 with the reason
    when it is not a complete bundle or a requested fold is missing."""
    if not folder.is_dir():
        raise InputError(f"-m {folder}: no such folder. Give a model folder made by exe_train.py "
                         f"(output_models/NAME).")
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        hint = (" It looks like a plain nnU-Net model folder: use nnU-Net's own nnUNetv2_predict_from_modelfolder "
                "for it." if (folder / "plans.json").is_file() else "")
        raise InputError(f"-m {folder}: not a medseg_auto model (no {MANIFEST}).{hint}")
    manifest = BundleManifest.read(manifest_file)
    for name in ("plans.json", "dataset.json"):
        if not (folder / name).is_file():
            raise InputError(f"-m {folder}: {name} is missing; the model folder is incomplete (copy it again).")
    held = [f for f in manifest.folds if (folder / f"fold_{f}" / CHECKPOINT).is_file()]
    if not held:
        raise InputError(f"-m {folder}: no fold_K/{CHECKPOINT} found; the model folder is incomplete.")
    chosen = held if not folds else ["all" if f in ("all", "full") else str(int(f)) for f in folds]
    missing = [f for f in chosen if f not in held]
    if missing:
        raise InputError(f"--folds {','.join(folds or [])}: the model holds fold(s) {', '.join(held)} only "
                         f"(missing: {', '.join(missing)}).")
    return Bundle(folder, manifest, chosen)
