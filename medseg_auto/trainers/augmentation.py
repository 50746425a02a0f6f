"""How much of nnU-Net's data augmentation a budgeted run uses.

nnU-Net's training pipeline is tuned for 1000 epochs; a run of a few thousand iterations underfits (its
training loss, on augmented patches, stays about its validation loss). ``light`` keeps the geometric and
intensity-scale transforms (rotation, scaling, brightness, contrast, gamma, mirroring) and leaves out the
three that simulate a worse scanner (Gaussian noise, blur, low resolution). The choice is about Dice,
not speed: on hippocampus patches either pipeline costs about 13 ms of one core per sample.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI reads AUGMENTATIONS without importing torch
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms

AUGMENTATIONS = ("nnunet", "light")


def is_degradation(step) -> bool:
    """Whether a pipeline step is nnU-Net's random noise, blur or low-resolution simulation."""
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
    from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    degradations = (GaussianNoiseTransform, GaussianBlurTransform, SimulateLowResolutionTransform)
    return isinstance(step, RandomTransform) and isinstance(step.transform, degradations)


def select_augmentation(pipeline: ComposeTransforms, augmentation: str) -> ComposeTransforms:
    """nnU-Net's training ``pipeline`` as is (``nnunet``) or without its degradations (``light``)."""
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms

    if augmentation == "nnunet":
        return pipeline
    if augmentation == "light":
        return ComposeTransforms([t for t in pipeline.transforms if not is_degradation(t)])
    raise ValueError(f"unknown augmentation '{augmentation}': use one of {', '.join(AUGMENTATIONS)}")
