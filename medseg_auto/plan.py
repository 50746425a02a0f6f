"""Plan stage: nnU-Net's fingerprint, experiment planning and preprocessing, through its Python API.

nnU-Net decides patch size, network topology, spacing and normalisation; we pick which of its
configurations to preprocess (one, to save the user's budget), time each step for the run's clock and, on
a CPU, narrow the network (``narrow_network``).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

from medseg_auto.errors import InputError
from medseg_auto.workspace import Workspace

PLANS_IDENTIFIER = "nnUNetPlans"
CONFIGURATIONS = ("auto", "2d", "3d_fullres", "3d_lowres")
CPU_WIDTH = 0.5  # features per stage on a CPU, a share of nnU-Net's plan (bench/RESULTS.md, dice at budget)
WIDTH_KEY = "medseg_auto_width"  # in a configuration whose network was narrowed: the share and nnU-Net's widths
LOWRES_TARGET_VOXELS = 64 ** 3  # -c 3d_lowres where nnU-Net planned none: the median image at about this size
LARGE_CPU_PATCH_VOXELS = 10 ** 6  # a 3D patch above this trains at a few iterations a minute on a CPU


@dataclass
class PlanResult:
    """What planning produced: the configuration to train, its plans and the time each step took."""

    configuration: str
    plans: dict
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def patch_size(self) -> list[int]:
        return self.setting("patch_size")

    @property
    def batch_size(self) -> int:
        return self.setting("batch_size")

    def setting(self, key: str):
        """A configuration's setting, through ``inherits_from`` (a trainer's configuration extends nnU-Net's)."""
        config = self.plans["configurations"][self.configuration]
        while key not in config and "inherits_from" in config:
            config = self.plans["configurations"][config["inherits_from"]]
        return config[key]


def choose_configuration(requested: str, is_2d: bool, plans: dict) -> str:
    """``auto``: 2d for 2D data, else 3d_fullres (nnU-Net's default); an explicit choice must exist in the plans."""
    if requested == "auto":
        requested = "2d" if is_2d else "3d_fullres"
    available = list(plans["configurations"])
    if requested not in available:
        why = "the images are 2D" if is_2d else ""
        raise InputError(f"-c {requested}: nnU-Net planned no '{requested}' configuration for this dataset"
                         + (f" ({why})" if why else "") + f". Available: {', '.join(available)}.")
    return requested


# nnU-Net's own caps on its worker processes (the defaults of its plan-and-preprocess command): each worker
# holds whole cases, and full-resolution CT volumes fill a server's memory long before 64 cores are busy.
FINGERPRINT_PROCESSES = 8
PREPROCESS_PROCESSES = {"3d_fullres": 4}  # other configurations (2d, low resolution): 8


def preprocessing_processes(configuration: str | None, available: int) -> int:
    """Worker processes for the fingerprint (``configuration`` None) or one configuration's preprocessing:
    the ``available`` cores, at most nnU-Net's cap."""
    cap = FINGERPRINT_PROCESSES if configuration is None else PREPROCESS_PROCESSES.get(configuration, 8)
    return max(1, min(available, cap))


def plan_and_preprocess(workspace: Workspace, requested: str, is_2d: bool, processes: int,
                        pretrained=None, width: float = 1.0) -> PlanResult:
    """Fingerprint, plan, then preprocess only the configuration that will be trained, its network's
    features scaled by ``width``.

    With ``pretrained`` (a ``PretrainedBundle``) the bundle's plans, network included, are transferred
    instead of planned.
    Reuses finished steps of an interrupted run (the plans file and a complete preprocessed folder).
    """
    workspace.activate()  # nnU-Net reads its folders from the environment
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments

    seconds: dict[str, float] = {}
    base = workspace.preprocessed / workspace.nnunet_name
    plans_file = base / f"{PLANS_IDENTIFIER}.json"
    if not plans_file.is_file():
        _phase("fingerprint: reading every case for intensities, spacings and shapes")
        t = time.monotonic()
        with _quiet():
            extract_fingerprints([workspace.dataset_id], num_processes=preprocessing_processes(None, processes),
                                 verbose=False, show_progress_bar=sys.stderr.isatty())
        seconds["fingerprint"] = time.monotonic() - t
        t = time.monotonic()
        with _quiet():
            if pretrained is None:
                plan_experiments([workspace.dataset_id])
            else:
                from medseg_auto.pretrained import transfer_plans

                transfer_plans(workspace, pretrained, PLANS_IDENTIFIER)
        seconds["planning"] = time.monotonic() - t
    plans = json.loads(plans_file.read_text())
    if requested == "3d_lowres" and not is_2d and pretrained is None and "3d_lowres" not in plans["configurations"]:
        add_lowres_configuration(workspace, plans)
    configuration = choose_configuration(pretrained.configuration if pretrained else requested, is_2d, plans)
    if pretrained is None and narrow_network(plans, configuration, width):
        write_plans(workspace, plans)
    seconds["preprocessing"] = preprocess_configuration(workspace, plans, configuration, processes)
    return PlanResult(configuration, plans, seconds)


def preprocess_configuration(workspace: Workspace, plans: dict, configuration: str, processes: int) -> float:
    """nnU-Net's preprocessing of one configuration of ``plans`` (written to the plans file first, since
    nnU-Net reads it from there) with up to ``processes`` workers; skipped when already done. Returns the
    seconds it took."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess

    base = workspace.preprocessed / workspace.nnunet_name
    done_marker = base / f".preprocessed_{configuration}"
    if done_marker.is_file():
        return 0.0
    write_plans(workspace, plans)
    cfg = plans["configurations"][configuration]
    _phase(f"preprocessing for {configuration}: patch {xyz(cfg['patch_size'], 'd')} voxels, "
           f"spacing {xyz(cfg['spacing'], '.3g')} mm (x, y, z)")
    t = time.monotonic()
    with _quiet():
        preprocess([workspace.dataset_id], plans_identifier=PLANS_IDENTIFIER, configurations=[configuration],
                   num_processes=[preprocessing_processes(configuration, processes)], verbose=False,
                   show_progress_bar=sys.stderr.isatty())
    done_marker.touch()
    return time.monotonic() - t


def add_coarse_configuration(workspace: Workspace, plans: dict, base: str, name: str, target_voxels: int,
                             min_factor: float = 2.0) -> str:
    """A low-resolution configuration planned by nnU-Net's experiment planner (patch, network, batch) for
    ``base``'s data resampled so the median image has about ``target_voxels`` voxels (coarser by at least
    ``min_factor`` per axis). Uses nnU-Net's own ``3d_lowres`` when it planned one. Added to ``plans`` in
    place; returns the configuration's name."""
    if "3d_lowres" in plans["configurations"]:
        return "3d_lowres"
    if name in plans["configurations"]:
        return name
    import numpy as np

    cfg = plans["configurations"][base]
    median = np.array(cfg["median_image_size_in_voxels"], float)
    factor = max(min_factor, float(np.prod(median) / target_voxels) ** (1 / len(median)))
    coarse = _nnunet_plan(workspace, [s * factor for s in cfg["spacing"]],
                          [max(1, round(n / factor)) for n in median], name)
    coarse["batch_dice"] = False  # as nnU-Net plans its 3d_lowres
    plans["configurations"][name] = coarse
    return name


def plan_for_crops(workspace: Workspace, plans: dict, configuration: str, crop_size: Sequence[int]) -> None:
    """Give ``configuration`` (one that inherits a full-resolution configuration's data) the patch, network
    topology and batch that nnU-Net's planner plans for images of ``crop_size`` voxels at the same spacing.
    A model that only ever segments crops around a structure needs windows the size of those crops: whole-
    image windows would make each crop cost several of them. In place; the network class is kept."""
    config = plans["configurations"][configuration]
    base = plans["configurations"][config["inherits_from"]]
    planned = _nnunet_plan(workspace, base["spacing"], crop_size, configuration)
    architecture = planned["architecture"]
    architecture["network_class_name"] = config.get("architecture", base["architecture"])["network_class_name"]
    config.update(patch_size=planned["patch_size"], batch_size=planned["batch_size"], architecture=architecture)
    config.pop(WIDTH_KEY, None)  # the planner's widths: narrow them again


def _nnunet_plan(workspace: Workspace, spacing: Sequence[float], median_size: Sequence[int], name: str) -> dict:
    """nnU-Net's experiment planner's configuration for this dataset's images at ``spacing``, of median size
    ``median_size`` voxels (nnU-Net's axis order): its patch, network and batch for them, JSON-ready."""
    import numpy as np
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export

    workspace.activate()
    median = np.array(median_size, float)
    with _quiet():
        planner = ExperimentPlanner(workspace.dataset_id, plans_name=PLANS_IDENTIFIER)
        planned = planner.get_plans_for_configuration(
            np.array(spacing, float), median, planner.generate_data_identifier(name),
            float(np.prod(median)) * planner.dataset_json["numTraining"], {})
    recursive_fix_for_json_export(planned)  # numpy numbers -> JSON's
    return planned


def add_lowres_configuration(workspace: Workspace, plans: dict) -> None:
    """``-c 3d_lowres`` where nnU-Net planned none (it plans one only when 3d_fullres's patch covers too little
    of the image): nnU-Net's planner plans it at a coarser spacing, the median image at about
    ``LOWRES_TARGET_VOXELS``. On a CPU this is what makes large volumes (BraTS: 240x240x155) trainable in a
    budget of an hour; nnU-Net exports the predictions at the images' own spacing."""
    add_coarse_configuration(workspace, plans, "3d_fullres", "3d_lowres", LOWRES_TARGET_VOXELS)
    write_plans(workspace, plans)
    low, full = (plans["configurations"][c] for c in ("3d_lowres", "3d_fullres"))
    _phase(f"nnU-Net planned no 3d_lowres for this dataset (3d_fullres's patch covers enough of it): planned one "
           f"at spacing {xyz(low['spacing'], '.3g')} mm (3d_fullres: {xyz(full['spacing'], '.3g')} mm), patch "
           f"{xyz(low['patch_size'], 'd')}")


def lowres_hint(device_type: str, requested: str, patch_size: list[int]) -> str | None:
    """A note for a CPU run that let nnU-Net choose a large 3D patch (BraTS: 160x160x96, an epoch of one
    iteration took about 40 s on 2 cores, bench/RESULTS.md): ``-c 3d_lowres`` trains at a coarser spacing."""
    voxels = int(math.prod(patch_size))
    if device_type != "cpu" or requested != "auto" or len(patch_size) != 3 or voxels <= LARGE_CPU_PATCH_VOXELS:
        return None
    return (f"Note: on a CPU a 3D patch of {voxels / 1e6:.1f} M voxels ({xyz(patch_size, 'd')}) trains at a few "
            f"iterations a minute. For a budget of minutes, -c 3d_lowres trains at a coarser spacing (nnU-Net's "
            f"planner; predictions are still written at the images' own resolution).")


def narrow_network(plans: dict, configuration: str, width: float) -> bool:
    """Scale the features per stage of ``configuration``'s network by ``width`` (in place, at least 8 each);
    returns whether the plans changed.

    nnU-Net sizes its networks for a GPU. On a CPU a budgeted run is limited by iterations, not capacity:
    half the features run a hippocampus training iteration about 2.7x faster (bench/RESULTS.md). nnU-Net's
    widths are kept under ``WIDTH_KEY``: the edit stays visible in the bundle's plans, and plans kept from an
    earlier run are scaled from nnU-Net's widths again, not twice.

    Kept rather than an ``ExperimentPlanner`` subclass with half of ``UNet_base_num_features``: that plans the
    same patch, batch and features on hippocampus, but spends the memory saved on larger patches for large
    images (BraTS: 128x192x192 against 96x160x160, checked with nnU-Net 2.8.1), which a CPU pays in time.
    """
    if not 0.0 < width <= 1.0:
        raise InputError(f"--width {width:g}: use a share of nnU-Net's planned features in (0, 1]")
    config = plans["configurations"][configuration]
    done = config.get(WIDTH_KEY, {"width": 1.0})  # plans kept from an earlier run may be narrowed already
    if width == done["width"]:
        return False
    source = config
    while "architecture" not in source:  # an inheriting configuration: narrow a copy of its parent's network
        source = plans["configurations"][source["inherits_from"]]
    arch = json.loads(json.dumps(source["architecture"]))
    planned = done.get("planned_features_per_stage") or list(arch["arch_kwargs"]["features_per_stage"])
    arch["arch_kwargs"]["features_per_stage"] = [max(8, int(round(f * width))) for f in planned]
    config["architecture"] = arch
    config[WIDTH_KEY] = {"width": width, "planned_features_per_stage": planned}
    if width == 1.0:
        del config[WIDTH_KEY]
    return True


def network_width(plans: dict, configuration: str) -> float:
    """The share of nnU-Net's planned features that ``configuration``'s network has (1: nnU-Net's own)."""
    config = plans["configurations"][configuration]
    while WIDTH_KEY not in config and "inherits_from" in config:
        config = plans["configurations"][config["inherits_from"]]
    return config.get(WIDTH_KEY, {}).get("width", 1.0)


def write_plans(workspace: Workspace, plans: dict) -> None:
    """Write ``plans`` to the plans file nnU-Net reads (when they differ), so a resumed run finds them."""
    plans_file = workspace.preprocessed / workspace.nnunet_name / f"{PLANS_IDENTIFIER}.json"
    if json.loads(plans_file.read_text()) != plans:
        plans_file.write_text(json.dumps(plans, indent=2))


def xyz(values, spec: str = "d") -> str:
    """nnU-Net's (z, y, x) order as the x, y, z text we print (``spec``: how each number is formatted)."""
    return "x".join(format(v, spec) for v in values[::-1])


def _phase(text: str) -> None:
    print(f"[plan] {text}", file=sys.stderr, flush=True)



@contextlib.contextmanager
def _quiet():
    """nnU-Net prints its banners, dataset names and the whole plan to stdout; we print our own summary.
    Its progress bars go to stderr and stay."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield
