"""nnU-Net trainer subclasses, each a small change of behaviour in the style of nnU-Net's own variants.

Imported lazily (nnU-Net and torch take seconds to import): ``trainer_class("default")``.
"""
from __future__ import annotations

import importlib

_TRAINERS = {"default": "medseg_auto.trainers.time_budget:nnUNetTrainerTimeBudget",
             "dualbranch": "medseg_auto.trainers.dual_branch:nnUNetTrainerDualBranch",
             "cascade": "medseg_auto.trainers.cascade:nnUNetTrainerCascadeCoord"}
TRAINER_NAMES = tuple(_TRAINERS)


def trainer_class(name: str) -> type:
    """The trainer class selected with ``--trainer NAME``."""
    module, cls = _TRAINERS[name].split(":")
    return getattr(importlib.import_module(module), cls)
