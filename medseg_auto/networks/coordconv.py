"""CoordConv for the cascade: three input channels giving each voxel's position in the *whole* volume.

The cascade segments crops, and a crop alone does not know where it sits (left or right hemisphere, top
or bottom of the scan). Each voxel's normalised position in the original, uncropped volume, in [-1, 1] per
axis, is appended to the image channels, at training (per patch) and at inference (per crop), computed by
the same :class:`CoordinateFrame` from nnU-Net's preprocessing properties, so both agree to the voxel.

``CoordConvUNet`` is nnU-Net's plain U-Net taking the image channels plus those three; nnU-Net builds it
from a plans file (``network_class_name``) given the image channel count, like any plans network.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from dynamic_network_architectures.architectures.unet import PlainConvUNet

COORDINATE_CHANNELS = 3
CLASS_NAME = f"{__name__}.CoordConvUNet"  # what a plans file names to build this network


class CoordConvUNet(PlainConvUNet):
    """PlainConvUNet whose input is ``input_channels`` image channels followed by 3 coordinate channels."""

    def __init__(self, input_channels: int, *args, **kwargs):
        super().__init__(input_channels + COORDINATE_CHANNELS, *args, **kwargs)


@dataclass(frozen=True)
class CoordinateFrame:
    """Maps a voxel index ``i`` of nnU-Net's preprocessed array, per spatial axis, to its normalised
    position ``scale * i + offset`` in the original volume: -1 at the first voxel's outer edge, +1 at
    the last one's."""

    scale: tuple[float, ...]
    offset: tuple[float, ...]

    @classmethod
    def from_properties(cls, properties: dict, preprocessed_shape: Sequence[int]) -> "CoordinateFrame":
        """From nnU-Net's preprocessing properties: the volume before cropping to its non-zero region, the
        crop, and the shape the crop was resampled to (``preprocessed_shape``)."""
        whole = properties["shape_before_cropping"]
        cropped = properties["shape_after_cropping_and_before_resampling"]
        crop_start = [lo for lo, _ in properties["bbox_used_for_cropping"]]
        scale, offset = [], []
        for n, c, start, p in zip(whole, cropped, crop_start, preprocessed_shape):
            step = c / p  # original voxels per preprocessed voxel
            scale.append(2.0 * step / n)
            offset.append(2.0 * (start + 0.5 * step) / n - 1.0)
        return cls(tuple(scale), tuple(offset))

    def grid(self, box: Sequence[tuple[int, int]]) -> np.ndarray:
        """The coordinate channels ``(3, *box size)`` of a box ``((start, stop), ...)`` of the preprocessed
        array (a box reaching outside the array extrapolates, as padding does)."""
        axes = [np.arange(lo, hi, dtype=np.float32) * s + o for (lo, hi), s, o in zip(box, self.scale, self.offset)]
        return np.stack(np.meshgrid(*axes, indexing="ij")).astype(np.float32)


def with_coordinates(data: np.ndarray, frame: CoordinateFrame,
                     box: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
    """Image channels ``(c, *spatial)`` (a crop ``box`` of the preprocessed array, or all of it) followed by
    their coordinate channels."""
    box = box if box is not None else [(0, n) for n in data.shape[1:]]
    return np.concatenate([np.asarray(data, np.float32), frame.grid(box)])
