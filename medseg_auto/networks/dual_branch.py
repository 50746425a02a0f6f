"""DualBranchUNet: nnU-Net's plain U-Net with two encoders for two groups of input channels, fused deeper.

Multi-modal MRI carries different information per sequence (T1c shows enhancement, FLAIR oedema). Each
group of channels gets its own encoder for the first ``fuse_stage`` resolution stages; at each of those
stages the two branches' features are concatenated and merged by a 1x1(x1) convolution into the skip the
decoder reads, and the last merge feeds the shared deeper stages. One decoder, nnU-Net's.

Everything else follows the plans it is given, exactly as ``PlainConvUNet`` does (stages, features,
kernel sizes, strides, convolutions per stage, norm, nonlinearity, deep supervision), so nnU-Net builds it
from a plans file (``network_arch_class_name``) at training and at inference. Branch width: each branch
has ``branch_width`` x the plain network's features per stage. New plans get ``BRANCH_WIDTH`` = 0.5: the
branches keep nnU-Net's channel counts multiples of 8 (16 -> 8, 32 -> 16), which the CPU's convolution
kernels (oneDNN) need to run at full speed, and two half-width branches cost half of one plain stage, so
the 1x1 fusions and the unchanged deeper stages leave the network 1-2% below the plain U-Net's
parameters. A branch width of 1/sqrt(2) matches the plain compute more closely but gives odd channel counts
(11, 23) that made the training step 1.3x slower on a CPU (bench/efficiency.py --interleave).
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Sequence

import torch
from dynamic_network_architectures.building_blocks.helper import maybe_convert_scalar_to_list
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

BRANCH_WIDTH = 0.5  # what add_configuration writes into new plans
LEGACY_BRANCH_WIDTH = 1 / math.sqrt(2)  # plans written before the width was stored in them
CLASS_NAME = f"{__name__}.DualBranchUNet"  # what a plans file names to build this network


def default_fuse_stage(n_stages: int) -> int:
    """Fuse half way down: the branches keep the high-resolution stages, where the modalities differ most."""
    return max(1, n_stages // 2)


def split_by_order(n_channels: int) -> list[list[int]]:
    """The default grouping: the first half of the channels, then the rest."""
    half = (n_channels + 1) // 2
    return [list(range(half)), list(range(half, n_channels))]


def check_branches(branches: Sequence[Sequence[int]], n_channels: int) -> list[list[int]]:
    """Two non-empty groups that together hold every input channel once; ValueError otherwise."""
    groups = [list(map(int, g)) for g in branches]
    if n_channels < 2:
        raise ValueError(f"a dual-branch network needs at least 2 input channels, the data has {n_channels}")
    if len(groups) != 2 or not all(groups):
        raise ValueError(f"branches must be two non-empty channel groups, got {groups}")
    flat = sorted(c for g in groups for c in g)
    if flat != list(range(n_channels)):
        raise ValueError(f"branches {groups} must hold each of the {n_channels} input channels exactly once")
    return groups


class DualBranchUNet(nn.Module):
    """``PlainConvUNet``'s arguments, plus ``branches`` (two lists of input channel indices), ``fuse_stage``
    (stages encoded per branch) and ``branch_width`` (a branch's share of the plain features per stage; the
    plans name it, and plans that predate it were trained at ``LEGACY_BRANCH_WIDTH``)."""

    def __init__(self, input_channels: int, n_stages: int, features_per_stage, conv_op, kernel_sizes, strides,
                 n_conv_per_stage, num_classes: int, n_conv_per_stage_decoder, conv_bias: bool = False,
                 norm_op=None, norm_op_kwargs: dict | None = None, dropout_op=None,
                 dropout_op_kwargs: dict | None = None, nonlin=None, nonlin_kwargs: dict | None = None,
                 deep_supervision: bool = False, nonlin_first: bool = False,
                 branches: Sequence[Sequence[int]] | None = None, fuse_stage: int | None = None,
                 branch_width: float = LEGACY_BRANCH_WIDTH):
        super().__init__()
        per_stage = lambda v: list(v) if isinstance(v, (list, tuple)) else [v] * n_stages  # noqa: E731
        features, kernels, strides, convs = (per_stage(v) for v in
                                             (features_per_stage, kernel_sizes, strides, n_conv_per_stage))
        fuse_stage = default_fuse_stage(n_stages) if fuse_stage is None else int(fuse_stage)
        if not 1 <= fuse_stage < n_stages:
            raise ValueError(f"fuse_stage must be between 1 and {n_stages - 1} (the plans have {n_stages} "
                             f"stages and the deepest one is shared), got {fuse_stage}")
        self.branches = check_branches(branches or split_by_order(input_channels), input_channels)
        self.fuse_stage = fuse_stage
        norm = dict(norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, dropout_op=dropout_op,
                    dropout_op_kwargs=dropout_op_kwargs, nonlin=nonlin, nonlin_kwargs=nonlin_kwargs)
        narrow = [max(1, round(f * branch_width)) for f in features[:fuse_stage]]
        self.encoders = nn.ModuleList(
            PlainConvEncoder(len(group), fuse_stage, narrow, conv_op, kernels[:fuse_stage], strides[:fuse_stage],
                             convs[:fuse_stage], conv_bias, **norm, return_skips=True, nonlin_first=nonlin_first)
            for group in self.branches)
        self.fusions = nn.ModuleList(
            ConvDropoutNormReLU(conv_op, 2 * n, f, 1, 1, conv_bias, **norm, nonlin_first=nonlin_first)
            for n, f in zip(narrow, features[:fuse_stage]))
        self.shared = PlainConvEncoder(features[fuse_stage - 1], n_stages - fuse_stage, features[fuse_stage:],
                                       conv_op, kernels[fuse_stage:], strides[fuse_stage:], convs[fuse_stage:],
                                       conv_bias, **norm, return_skips=True, nonlin_first=nonlin_first)
        # the decoder reads the stage layout of the whole (plain) encoder; it holds no encoder weights
        layout = SimpleNamespace(output_channels=features, kernel_sizes=kernels, conv_op=conv_op,
                                 strides=[maybe_convert_scalar_to_list(conv_op, s) for s in strides],
                                 conv_bias=conv_bias, **norm)
        self.decoder = UNetDecoder(layout, num_classes, n_conv_per_stage_decoder, deep_supervision,
                                   nonlin_first=nonlin_first)
        for i, group in enumerate(self.branches):
            self.register_buffer(f"channels_{i}", torch.tensor(group, dtype=torch.long), persistent=False)

    def encode_branch(self, x: torch.Tensor, i: int) -> list[torch.Tensor]:
        """Branch ``i``'s skips (one per branch stage) from its own channels of ``x``."""
        return self.encoders[i](x.index_select(1, getattr(self, f"channels_{i}")))

    def forward(self, x: torch.Tensor):
        a, b = (self.encode_branch(x, i) for i in range(2))
        skips = [fuse(torch.cat(pair, 1)) for fuse, pair in zip(self.fusions, zip(a, b))]
        return self.decoder(skips + self.shared(skips[-1]))

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """nnU-Net's weight initialisation for its plain U-Net (He, leaky ReLU slope 0.01)."""
        InitWeights_He(1e-2)(module)
