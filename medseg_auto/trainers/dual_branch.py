"""nnUNetTrainerDualBranch: the time-budget trainer on a ``DualBranchUNet`` (``medseg_auto.networks``).

The network is a plans edit, not a new training loop: ``add_configuration`` adds a configuration that
inherits nnU-Net's planned one (same patch, spacing, preprocessed data) and names the dual-branch network
with its channel groups. nnU-Net then builds it from the plans at training, in its validation and in any
predictor, so a bundle predicts with no extra code; this trainer only refuses plans without it.
"""
from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from medseg_auto.errors import InputError
from medseg_auto.ingest.channels import same_channel
from medseg_auto.networks.dual_branch import BRANCH_WIDTH, CLASS_NAME, default_fuse_stage, split_by_order
from medseg_auto.trainers.time_budget import nnUNetTrainerTimeBudget

SUFFIX = "_dualbranch"


def parse_branches(text: str | None, channels: list[str]) -> list[list[int]]:
    """``"T1c|FLAIR"`` or ``"T1,T1c|T2,FLAIR"`` -> channel indices per group, by the dataset's channel names
    (aliases such as t1ce = T1c allowed; a number is the channel's position from 0). None: split by order."""
    listing = ", ".join(f"{i}={c}" for i, c in enumerate(channels))
    if len(channels) < 2:
        raise InputError(f"--trainer dualbranch needs at least two image channels (one per branch); this dataset "
                         f"has {len(channels)} ({listing}). Use the default trainer.")
    if not text:
        return split_by_order(len(channels))
    groups = [[t.strip() for t in g.split(",") if t.strip()] for g in text.split("|")]
    if len(groups) != 2 or not all(groups):
        raise InputError(f"--branches '{text}': give two groups of channel names separated by '|', e.g. "
                         f"\"{channels[0]}|{','.join(channels[1:])}\" (channels: {listing})")
    indices: list[list[int]] = []
    for group in groups:
        indices.append([])
        for name in group:
            hits = [i for i, c in enumerate(channels) if same_channel(name, c)]
            if not hits and name.isdigit() and int(name) < len(channels):
                hits = [int(name)]
            if not hits:
                raise InputError(f"--branches '{text}': no channel '{name}' in this dataset (channels: {listing})")
            indices[-1].append(hits[0])
    flat = [i for g in indices for i in g]
    twice = sorted({channels[i] for i in flat if flat.count(i) > 1})
    missing = [channels[i] for i in range(len(channels)) if i not in flat]
    if twice or missing:
        why = (f"{', '.join(twice)} in both groups" if twice else "") + ("; " if twice and missing else "") + \
              (f"{', '.join(missing)} in neither group" if missing else "")
        raise InputError(f"--branches '{text}': each channel must be in exactly one group ({why}; channels: "
                         f"{listing})")
    return indices


def add_configuration(plans: dict, configuration: str, branches: list[list[int]], fuse_stage: int | None) -> str:
    """Add ``<configuration>_dualbranch`` to ``plans`` (in place) and return its name."""
    base = plans["configurations"][configuration]
    arch = base["architecture"]
    kwargs = arch["arch_kwargs"]
    n_stages = kwargs["n_stages"]
    fuse = default_fuse_stage(n_stages) if fuse_stage is None else fuse_stage
    if not 1 <= fuse < n_stages:
        raise ValueError(f"--fuse-stage {fuse}: nnU-Net planned {n_stages} stages for {configuration}; "
                         f"choose 1 to {n_stages - 1} (the deepest stage is always shared)")
    name = configuration + SUFFIX
    plans["configurations"][name] = {
        "inherits_from": configuration,
        "architecture": {"network_class_name": CLASS_NAME,
                         "arch_kwargs": kwargs | {"branches": branches, "fuse_stage": fuse,
                                                  "branch_width": BRANCH_WIDTH},
                         "_kw_requires_import": arch["_kw_requires_import"]},
    }
    return name


class nnUNetTrainerDualBranch(nnUNetTrainerTimeBudget):
    @classmethod
    def check_options(cls, channels: list[str], options: dict) -> None:
        parse_branches(options.get("branches"), channels)

    @classmethod
    def adapt_plans(cls, plans: dict, configuration: str, channels: list[str], options: dict) -> str:
        branches = parse_branches(options.get("branches"), channels)
        try:
            return add_configuration(plans, configuration, branches, options.get("fuse_stage"))
        except ValueError as e:
            raise InputError(str(e)) from None

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        if configuration_manager.network_arch_class_name != CLASS_NAME:
            raise RuntimeError(f"nnUNetTrainerDualBranch needs a '{SUFFIX}' configuration (see "
                               f"medseg_auto.trainers.dual_branch.add_configuration), got "
                               f"{configuration_manager.network_arch_class_name}")
        return nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_output_channels, enable_deep_supervision)
