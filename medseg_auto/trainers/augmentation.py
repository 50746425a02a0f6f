"""How much of nnU-Net's data augmentation a budgeted run uses.

nnU-Net's training pipeline is tuned for 1000 epochs; a run of a few thousand iterations underfits (its
training loss, on augmented patches, stays about its validation loss). ``light`` keeps the geometric and
intensity-scale transforms (rotation, scaling, brightness, contrast, gamma, mirroring) and leaves out the
three that simulate a worse scanner (Gaussian noise, blur, low resolution). ``strong`` is nnU-Net's own
heavier variant, ``nnUNetTrainerDA5`` (its pipeline and its wider scaling range): more kinds of intensity,
noise and local transforms, for models that must generalise from few cases. The choice is about Dice, not
speed: on hippocampus patches ``nnunet`` and ``light`` cost about 13 ms of one core per sample and
``strong`` about 2.3 times as much, which one augmentation worker still delivers faster than a step.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from medseg_auto.errors import InputError

if TYPE_CHECKING:  # the CLI reads AUGMENTATIONS without importing torch
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms

AUGMENTATIONS = ("nnunet", "light", "strong")
DESCRIPTIONS = {  # for the model card
    "nnunet": "nnU-Net's data augmentation",
    "light": "nnU-Net's data augmentation without its noise, blur and low-resolution transforms",
    "strong": "nnU-Net's heavier augmentation of nnUNetTrainerDA5",
}


def check_augmentation(augmentation: str, trainer: str) -> None:
    """Refuse an augmentation the trainer cannot take (``InputError``), before anything runs."""
    if augmentation not in AUGMENTATIONS:
        raise InputError(f"--augmentation {augmentation}: use one of {', '.join(AUGMENTATIONS)}")
    if augmentation == "strong" and trainer == "cascade":
        raise InputError("--augmentation strong with --trainer cascade: its rotations and local intensity transforms "
                         "would scramble the cascade's coordinate channels; use --augmentation nnunet or light")


def pipeline_source(augmentation: str) -> type:
    """The nnU-Net trainer whose augmentation (pipeline and initial patch size) ``augmentation`` starts from."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerDA5 import nnUNetTrainerDA5

    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation '{augmentation}': use one of {', '.join(AUGMENTATIONS)}")
    return nnUNetTrainerDA5 if augmentation == "strong" else nnUNetTrainer


def is_degradation(step) -> bool:
    """Whether a pipeline step is nnU-Net's random noise, blur or low-resolution simulation."""
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
    from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    degradations = (GaussianNoiseTransform, GaussianBlurTransform, SimulateLowResolutionTransform)
    return isinstance(step, RandomTransform) and isinstance(step.transform, degradations)


def select_augmentation(pipeline: ComposeTransforms, augmentation: str) -> ComposeTransforms:
    """The training ``pipeline`` of ``pipeline_source(augmentation)`` as is (``nnunet``, ``strong``) or without
    its degradations (``light``)."""
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms

    if augmentation in ("nnunet", "strong"):
        return pipeline
    if augmentation == "light":
        return ComposeTransforms([t for t in pipeline.transforms if not is_degradation(t)])
    raise ValueError(f"unknown augmentation '{augmentation}': use one of {', '.join(AUGMENTATIONS)}")
