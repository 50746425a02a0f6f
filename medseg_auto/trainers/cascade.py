"""The cascade's two trainers: a low-resolution ROI model, then a CoordConv segmentation model for the crops.

- ``nnUNetTrainerCascadeROI`` learns one region, the union of all foreground labels, on a coarse
  configuration (``plan.add_coarse_configuration``), at the run's network width: finding *where* to look
  needs no fine detail.
- ``nnUNetTrainerCascadeCoord`` learns the labels at full resolution from the image channels plus three
  coordinate channels (``medseg_auto.networks.coordconv``), mostly on patches around the foreground, shifted
  by up to a quarter patch, which is what it sees at inference (windows over crops around the ROI's
  components). nnU-Net's planner plans its patch and network for those crops (the largest foreground box of
  the training cases with the crop margins), not for whole images: each crop then fits about one window.

Both are the time-budget trainer with one or two methods changed, like nnU-Net's own variants.
"""
from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform

from medseg_auto.errors import InputError
from medseg_auto.networks import coordconv
from medseg_auto.networks.coordconv import COORDINATE_CHANNELS, CoordinateFrame
from medseg_auto.predict.crops import MARGIN_SHARE
from medseg_auto.trainers.stages import Stage
from medseg_auto.trainers.time_budget import nnUNetTrainerTimeBudget

PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
COORD_SUFFIX = "_coord"
ROI_REGION = "roi"
ROI_CONFIGURATION = "3d_roi"
ROI_TARGET_VOXELS = 64 ** 3  # the ROI model sees the median image at about this size (at least 2x coarser)
ROI_SHARE = 0.3              # of each fold's time: finding the region needs less training than segmenting it


# -- stage 1 ----------------------------------------------------------------------------------------------
def roi_dataset_json(dataset_json: dict) -> dict:
    """The dataset's labels as one region, every foreground value (or region) together: the ROI's target."""
    values = set()
    for name, value in dataset_json["labels"].items():
        if name in ("background", "ignore"):
            continue
        values.update(value if isinstance(value, (list, tuple)) else [value])
    out = copy.deepcopy(dataset_json)
    out["labels"] = {"background": 0, ROI_REGION: sorted(int(v) for v in values)}
    out["regions_class_order"] = [1]
    return out


class nnUNetTrainerCascadeROI(nnUNetTrainerTimeBudget):
    """Stage 1: where is the foreground? One region, the union of the labels, at low resolution."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, roi_dataset_json(dataset_json), device)


# -- stage 2 ----------------------------------------------------------------------------------------------
def add_coord_configuration(plans: dict, configuration: str) -> str:
    """Add ``<configuration>_coord`` to nnU-Net's plans (in place): the same patch, spacing and preprocessed
    data, with the CoordConv U-Net; returns its name."""
    base = plans["configurations"][configuration]
    architecture = copy.deepcopy(base["architecture"])
    if architecture["network_class_name"] != PLAIN_UNET:
        raise ValueError(f"the cascade needs nnU-Net's plain U-Net plans, not {architecture['network_class_name']}")
    architecture["network_class_name"] = coordconv.CLASS_NAME
    name = configuration + COORD_SUFFIX
    plans["configurations"][name] = {"inherits_from": configuration, "architecture": architecture}
    return name


def foreground_box_sizes(folder) -> list[tuple[int, ...]]:
    """Each case's foreground bounding box size (all labels together, nnU-Net's axis order) in the nnU-Net
    preprocessed data ``folder``; cases without foreground are left out."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    dataset = infer_dataset_class(str(folder))(str(folder))
    sizes = []
    for case in dataset.identifiers:
        _, seg, _, _ = dataset.load_case(case)
        where = np.argwhere(np.asarray(seg[0]) > 0)
        if len(where):
            sizes.append(tuple(int(n) for n in where.max(0) - where.min(0) + 1))
    return sizes


def crop_size(box_sizes: Sequence[Sequence[int]], patch_size: Sequence[int],
              image_size: Sequence[int]) -> list[int] | None:
    """The crop the segmentation model is planned for: per axis, the largest foreground box with the
    inference margin on both sides (so every training case's structure fits one window), at least half of
    the whole-image ``patch_size`` (a small structure still gets context and a U-Net of some depth) and at
    most the (median) ``image_size``. None without foreground."""
    if not box_sizes:
        return None
    largest = np.max(np.asarray(box_sizes), axis=0)
    return [min(max(int(np.ceil(n / (1 - 2 * MARGIN_SHARE))), p // 2), int(i))
            for n, p, i in zip(largest, patch_size, image_size)]


class _CoordinateView:
    """A preprocessed case's image channels followed by its coordinate channels, computed for the part that
    is read: slicing reads only that region of nnU-Net's (memory-mapped, compressed) array."""

    def __init__(self, data, frame: CoordinateFrame):
        self.data, self.frame = data, frame
        self.shape = (data.shape[0] + COORDINATE_CHANNELS, *data.shape[1:])
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, key) -> np.ndarray:
        key = (key if isinstance(key, tuple) else (key,)) + (slice(None),) * (self.ndim - 1)
        key = key[:self.ndim]
        if key[0] != slice(None) or not all(isinstance(k, slice) for k in key):
            raise IndexError("a coordinate view is read by spatial slices, all channels at once")
        box = []
        for k, n in zip(key[1:], self.shape[1:]):
            start, stop, step = k.indices(n)
            if step != 1:
                raise IndexError("a coordinate view is read with step 1")
            box.append((start, stop))
        return np.concatenate([np.asarray(self.data[key], np.float32), self.frame.grid(box)])


def jitter_locations(locations: dict, shape: Sequence[int], jitter: Sequence[int]) -> dict:
    """nnU-Net's ``class_locations`` (rows: channel, then voxel index per axis) all moved by one random shift
    of up to ``jitter`` voxels per axis, kept inside ``shape``: its sampler centres foreground patches on
    these voxels, so the structure then also sits off-centre in a patch, as it does in the crops' windows."""
    shift = np.array([0] + [np.random.randint(-j, j + 1) for j in jitter])
    upper = np.array([np.iinfo(np.int64).max] + [n - 1 for n in shape])
    return {key: np.clip(np.asarray(voxels) + shift, 0, upper) if len(voxels) else voxels
            for key, voxels in locations.items()}


def coordinate_dataset(dataset_class: type, jitter: Sequence[int] = ()) -> type:
    """nnU-Net's dataset class whose cases carry their coordinate channels (for training patches and for
    nnU-Net's own full-volume validation alike), their foreground locations jittered by up to ``jitter``."""

    class WithCoordinates(dataset_class):
        def load_case(self, identifier):
            data, seg, seg_prev, properties = super().load_case(identifier)
            frame = CoordinateFrame.from_properties(properties, data.shape[1:])
            if any(jitter) and properties.get("class_locations"):
                properties = dict(properties, class_locations=jitter_locations(
                    properties["class_locations"], data.shape[1:], jitter))
            return _CoordinateView(data, frame), seg, seg_prev, properties

    WithCoordinates.__name__ = WithCoordinates.__qualname__ = f"{dataset_class.__name__}WithCoordinates"
    return WithCoordinates


class SetAsideChannels(BasicTransform):
    """Take the last ``n`` image channels out of the intensity augmentations (noise, contrast, gamma must
    not move a coordinate) until :class:`PutBackChannels`."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def apply(self, data_dict, **params):
        data_dict["set_aside"] = data_dict["image"][-self.n:]
        data_dict["image"] = data_dict["image"][:-self.n]
        return data_dict


class PutBackChannels(BasicTransform):
    def apply(self, data_dict, **params):
        data_dict["image"] = torch.cat([data_dict["image"], data_dict.pop("set_aside")])
        return data_dict


def shield_last_channels(pipeline: ComposeTransforms, n: int) -> ComposeTransforms:
    """nnU-Net's training pipeline with the last ``n`` channels following the spatial transforms (rotation,
    scaling, mirroring) but none of the intensity transforms between them."""
    steps = list(pipeline.transforms)
    after = max(i for i, t in enumerate(steps) if isinstance(t, (SpatialTransform, Convert2DTo3DTransform))) + 1
    before = next(i for i, t in enumerate(steps)
                  if isinstance(t, (MirrorTransform, MaskImageTransform, RemoveLabelTansform)))
    return ComposeTransforms(steps[:after] + [SetAsideChannels(n)] + steps[after:before] + [PutBackChannels()]
                             + steps[before:])


class nnUNetTrainerCascadeCoord(nnUNetTrainerTimeBudget):
    """Stage 2: segmentation of crops, from the image channels plus three coordinate channels, trained
    mostly on patches around the foreground (as the crops around the ROI are)."""

    case_predictor = "cascade"  # medseg_auto.predict.cascade
    earlier_stage_folders: dict = {}  # stage name -> its fold folder (the ROI model's), set by the runner
    validation_method = ("the cascade as exe_predict.py runs it: each held-out case's files, the fold's ROI "
                         "model, crops, this model, pasted back")
    foreground_share = 0.67  # nnU-Net's oversampling: this share of each batch is centred on foreground

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.oversample_foreground_percent = self.foreground_share

    @classmethod
    def adapt_plans(cls, plans: dict, configuration: str, channels: list[str], options: dict) -> str:
        if not configuration.startswith("3d"):
            raise InputError("--trainer cascade is for 3D volumes (it crops regions of a volume); these images "
                             "are 2D: use the default trainer.")
        return add_coord_configuration(plans, configuration)

    @classmethod
    def earlier_stages(cls, workspace, plan, processes: int) -> list[Stage]:
        """The ROI stage; first, with the preprocessed data at hand, this model's patch planned for crops."""
        from medseg_auto.plan import (add_coarse_configuration, narrow_network, network_width, plan_for_crops,
                                      preprocess_configuration, write_plans, xyz)

        configs = plan.plans["configurations"]
        base = configs[plan.configuration]["inherits_from"]
        width = network_width(plan.plans, plan.configuration)
        start = time.monotonic()
        crop = crop_size(foreground_box_sizes(workspace.preprocessed / workspace.nnunet_name
                                              / configs[base]["data_identifier"]),
                         configs[base]["patch_size"], configs[base]["median_image_size_in_voxels"])
        if crop is not None:
            plan_for_crops(workspace, plan.plans, plan.configuration, crop)
            narrow_network(plan.plans, plan.configuration, width)
            print(f"[plan] cascade: segmentation patch {xyz(plan.patch_size)} planned by nnU-Net for crops of "
                  f"{xyz(crop)} voxels (the largest foreground box with margins; whole-image patch "
                  f"{xyz(configs[base]['patch_size'])})", file=sys.stderr)
        plan.seconds["planning_crops"] = time.monotonic() - start
        roi = add_coarse_configuration(workspace, plan.plans, base, ROI_CONFIGURATION, ROI_TARGET_VOXELS)
        narrow_network(plan.plans, roi, width)  # as the main model
        write_plans(workspace, plan.plans)
        plan.seconds["preprocessing_roi"] = preprocess_configuration(workspace, plan.plans, roi, processes)
        return [Stage("roi", nnUNetTrainerCascadeROI, roi, ROI_SHARE)]

    def initialize(self):
        super().initialize()
        # at inference a structure sits off a window's centre by up to about this much (crops a bit larger
        # than a window are covered by several)
        jitter = [p // 4 for p in self.configuration_manager.patch_size]
        self.dataset_class = coordinate_dataset(self.dataset_class, jitter)

    def get_training_transforms(self, *args, **kwargs):
        pipeline = super().get_training_transforms(*args, **kwargs)
        return shield_last_channels(pipeline, COORDINATE_CHANNELS)

    def validate_held_out_cases(self, save_probabilities: bool = False) -> None:
        """The held-out cases through the cascade as exe_predict.py predicts them (``medseg_auto.predict.
        cascade``: each case's raw files, this fold's ROI model, crops with coordinates, this model, pasted
        back), scored by nnU-Net's evaluation into ``validation/summary.json`` as its own validation is. Its
        time is reserved by the whole-volume estimate, whose windows bound those of the crops."""
        from nnunetv2.configuration import default_num_processes
        from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
        from nnunetv2.paths import nnUNet_raw
        from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

        from medseg_auto.predict.cascade import Cascade
        from medseg_auto.predict.engine import ScanImage, Settings, SlidingWindow

        from medseg_auto.trainers import distributed

        if distributed.rank() != 0:  # under DDP rank 0 validates the whole cascade (not split over ranks)
            return
        if "roi" not in self.earlier_stage_folders:  # built outside medseg_auto's runner (nnUNetv2_train)
            self.print_to_log_file("No ROI model given (earlier_stage_folders['roi']): nnU-Net's whole-volume "
                                   "validation of this model alone instead of the cascade's.")
            return super().validate_held_out_cases(save_probabilities)
        self.set_deep_supervision_enabled(False)
        self.network.eval()
        settings = Settings(mirroring=self.inference_allowed_mirroring_axes is not None)
        network = getattr(self.network, "_orig_mod", self.network)  # torch.compile's wrapper, where compiled
        segmentation = SlidingWindow.from_network(network, self.plans_manager.plans, self.configuration_name,
                                                  self.dataset_json, [network.state_dict()],
                                                  self.inference_allowed_mirroring_axes, settings, self.device)
        roi = SlidingWindow.from_training_folder(Path(self.earlier_stage_folders["roi"]).parent, self.fold,
                                                 settings, self.device)
        cascade = Cascade.from_models(roi, segmentation)
        files = get_filenames_of_train_images_and_targets(os.path.join(nnUNet_raw, self.plans_manager.dataset_name),
                                                          self.dataset_json)
        reader = self.plans_manager.image_reader_writer_class()
        folder, ending = os.path.join(self.output_folder, "validation"), self.dataset_json["file_ending"]
        os.makedirs(folder, exist_ok=True)
        for key in self.do_split()[1]:
            self.print_to_log_file(f"predicting {key} (ROI -> crops -> paste back)")
            data, properties = reader.read_images(files[key]["images"])
            prediction = cascade.predict(ScanImage(np.asarray(data, np.float32), list(properties["spacing"])))
            reader.write_seg(prediction.segmentation, os.path.join(folder, key + ending), properties)
        labels = self.label_manager
        compute_metrics_on_folder(os.path.join(self.preprocessed_dataset_folder_base, "gt_segmentations"), folder,
                                  os.path.join(folder, "summary.json"), reader, ending,
                                  labels.foreground_regions if labels.has_regions else labels.foreground_labels,
                                  labels.ignore_label, chill=True, num_processes=default_num_processes)
        self.set_deep_supervision_enabled(True)
