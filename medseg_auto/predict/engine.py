"""Segment one scan with a bundle: nnU-Net's preprocessing, sliding window and resampling back, unchanged.

A bundle names its *case predictor* (``predictor`` in ``medseg_auto.json``, set from the trainer's
``case_predictor`` at export); the default is nnU-Net's own sliding window over the bundle's folds
(Gaussian weighting, mirroring, fold logits averaged). A trainer that needs another inference procedure
(the cascade) registers its predictor in :data:`PREDICTORS`; nothing else changes.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from medseg_auto.device import without_nnunet_device_remarks
from medseg_auto.errors import InputError
from medseg_auto.export import CHECKPOINT
from medseg_auto.ingest.formats import read_image, read_volume
from medseg_auto.ingest.problems import Problem
from medseg_auto.predict.bundle import Bundle
from medseg_auto.predict.scans import Scan

# nnU-Net's default step between sliding windows (a fraction of the patch), and the fast mode's.
DEFAULT_STEP = 0.5
FAST_STEP = 0.75
PREDICTORS = {"sliding_window": "medseg_auto.predict.engine:SlidingWindow",
              "cascade": "medseg_auto.predict.cascade:Cascade"}


@dataclass
class Settings:
    """How to predict: nnU-Net's defaults unless changed (``--fast`` = no mirroring, step 0.75)."""

    mirroring: bool = True
    step_size: float = DEFAULT_STEP
    probabilities: bool = False


@dataclass
class ScanImage:
    """A scan as nnU-Net's predictor takes it: (channels, z, y, x) float32 ((channels, 1, y, x) in 2D), and
    the spacing in the same axis order (nnU-Net's 999 for the dummy axis of 2D images)."""

    data: np.ndarray
    spacing: list[float]


@dataclass
class Prediction:
    segmentation: np.ndarray            # nnU-Net's label values, the scan's own shape (numpy order)
    probabilities: np.ndarray | None    # (classes, *shape) float, when asked for


class CaseError(Exception):
    """One scan cannot be segmented (found when its pixels are read); the others go on."""

    def __init__(self, problem: Problem):
        super().__init__(problem.problem)
        self.problem = problem


class CasePredictor(Protocol):
    def predict(self, image: ScanImage, progress: Callable[[float], None] | None = None) -> Prediction:
        """Segment one scan; ``progress`` receives fractions of the scan done, summing to 1."""


def read_scan(scan: Scan, bundle: Bundle, series: str | None = None) -> ScanImage:
    """Read a scan's files as the model's channels (colour split into R, G, B where the model was trained
    on colour); raises :class:`CaseError` for pixels nnU-Net must not see (NaN, unreadable). ``series``
    (``--series``) picks the series of a DICOM folder that holds several."""
    arrays = []
    spacing: tuple[float, ...] = ()
    for i, (f, channel) in enumerate(zip(scan.files, bundle.channels)):
        try:
            image = read_volume(f, scan.volumes[i]) if scan.volumes else read_image(f, series)
        except Exception as e:  # the user's file, reported with the case
            from medseg_auto.ingest.checks import DICOM_FIX
            from medseg_auto.ingest.dicom import DicomError
            from medseg_auto.ingest.scan import reader_message

            fix = DICOM_FIX if isinstance(e, DicomError) else "re-export or replace the file"
            raise CaseError(Problem(scan.name, f.name, f"cannot read the pixels: {reader_message(e)}", fix)) from None
        array = image.array
        if image.components > 1 and channel.colour:
            arrays += [array[..., i] for i in range(3)]
        elif image.components > 1:  # grey model, colour file: luminance, as Pillow's "L" conversion
            arrays.append(array[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
        else:
            arrays += [array] * (3 if channel.colour else 1)
        if array.dtype.kind == "f":
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            if bad:
                raise CaseError(Problem(scan.name, f.name, f"{bad} voxel(s) are NaN or infinite",
                                        "replace them (e.g. by 0) when exporting the image"))
        spacing = image.spacing
    data = np.stack([a.astype(np.float32, copy=False) for a in arrays])
    nnunet_spacing = [float(s) for s in reversed(spacing)]
    if bundle.is_2d:
        return ScanImage(data[:, None], [999.0, *nnunet_spacing])
    return ScanImage(data, nnunet_spacing)


def case_predictor(bundle: Bundle, settings: Settings, device) -> CasePredictor:
    """The bundle's case predictor, loaded with its weights on ``device``."""
    name = bundle.manifest.predictor
    if name not in PREDICTORS:
        raise InputError(f"-m {bundle.folder}: the model needs the '{name}' predictor, which this version of "
                         f"medseg_auto does not have; update medseg_auto (the model was made with version "
                         f"{bundle.manifest.medseg_auto_version}).")
    module, cls = PREDICTORS[name].split(":")
    return getattr(importlib.import_module(module), cls)(bundle, settings, device)


def _progress_predictor_class():
    """nnU-Net's predictor, telling a callback about each sliding-window step (the progress bar's ticks).

    Built on first use: importing nnU-Net takes seconds and must follow the worker settings."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    class ProgressPredictor(nnUNetPredictor):
        tick: Callable[[int], None] | None = None
        windows = 1

        def _internal_get_sliding_window_slicers(self, image_size):
            slicers = super()._internal_get_sliding_window_slicers(image_size)
            self.windows = len(slicers)
            return slicers

        def _internal_maybe_mirror_and_predict(self, x):
            out = super()._internal_maybe_mirror_and_predict(x)
            if self.tick is not None:
                self.tick(self.windows)
            return out

    return ProgressPredictor


class SlidingWindow:
    """nnU-Net's predictor on the bundle's folds: the default for every trainer whose network nnU-Net
    rebuilds from the plans (the checkpoint names ``nnUNetTrainer``)."""

    def __init__(self, bundle: Bundle, settings: Settings, device):
        self._start(settings, device)
        self.predictor.initialize_from_trained_model_folder(str(bundle.folder), use_folds=tuple(bundle.folds),
                                                            checkpoint_name=CHECKPOINT)
        self.preprocessor = self.predictor.configuration_manager.preprocessor_class(verbose=False)

    @classmethod
    def from_network(cls, network, plans: dict, configuration: str, dataset_json: dict, weights: list[dict],
                     mirroring_axes, settings: Settings, device) -> "SlidingWindow":
        """nnU-Net's predictor on a network in memory (a trainer's, to validate as this module predicts)."""
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        self = cls.__new__(cls)
        self._start(settings, device)
        plans_manager = PlansManager(plans)
        self.predictor.manual_initialization(network, plans_manager, plans_manager.get_configuration(configuration),
                                             weights, dataset_json, "nnUNetTrainer", mirroring_axes)
        self.preprocessor = self.predictor.configuration_manager.preprocessor_class(verbose=False)
        return self

    @classmethod
    def from_training_folder(cls, folder: Path, fold, settings: Settings, device) -> "SlidingWindow":
        """nnU-Net's predictor on one fold of a trainer's output folder in the work folder (its checkpoint names
        our trainer, which nnU-Net's own loader cannot find: the network is built from the plans, as
        ``nnUNetTrainer`` builds it)."""
        import torch
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        plans, dataset_json = (json.loads((folder / n).read_text()) for n in ("plans.json", "dataset.json"))
        checkpoint = torch.load(folder / f"fold_{fold}" / CHECKPOINT, map_location="cpu", weights_only=False)
        configuration = checkpoint["init_args"]["configuration"]
        plans_manager = PlansManager(plans)
        manager = plans_manager.get_configuration(configuration)
        network = nnUNetTrainer.build_network_architecture(
            plans_manager, manager, determine_num_input_channels(plans_manager, manager, dataset_json),
            plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
        return cls.from_network(network, plans, configuration, dataset_json, [checkpoint["network_weights"]],
                                checkpoint.get("inference_allowed_mirroring_axes"), settings, device)

    def _start(self, settings: Settings, device) -> None:
        self.settings = settings
        with without_nnunet_device_remarks():
            self.predictor = _progress_predictor_class()(
                tile_step_size=settings.step_size, use_gaussian=True, use_mirroring=settings.mirroring,
                perform_everything_on_device=device.type == "cuda", device=device, verbose=False, allow_tqdm=False)

    def preprocess(self, image: ScanImage) -> tuple[np.ndarray, dict]:
        """nnU-Net's preprocessing of a scan for this model: the array and nnU-Net's properties."""
        p = self.predictor
        data, _, properties = self.preprocessor.run_case_npy(image.data, None, {"spacing": image.spacing},
                                                             p.plans_manager, p.configuration_manager,
                                                             p.dataset_json)
        return data, properties

    def to_prediction(self, logits, properties: dict) -> Prediction:
        """nnU-Net's logits on the preprocessed grid -> the segmentation (and probabilities) in the scan's shape."""
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        p = self.predictor
        result = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, p.plans_manager, p.configuration_manager, p.label_manager, properties,
            return_probabilities=self.settings.probabilities)
        if self.settings.probabilities:
            segmentation, probabilities = result
            return Prediction(np.asarray(segmentation), np.asarray(probabilities))
        return Prediction(np.asarray(result), None)

    def predict(self, image: ScanImage, progress: Callable[[float], None] | None = None) -> Prediction:
        import torch

        p = self.predictor
        data, properties = self.preprocess(image)
        passes = len(p.list_of_parameters)
        p.tick = (lambda windows: progress(1.0 / (windows * passes))) if progress else None
        return self.to_prediction(p.predict_logits_from_preprocessed_data(torch.from_numpy(data)), properties)
