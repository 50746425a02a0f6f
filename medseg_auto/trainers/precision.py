"""Training precision on a CPU: nnU-Net's float32, or bfloat16 autocast where the processor has it.

nnU-Net trains in float16 autocast on CUDA and in float32 on a CPU, where its autocast is off. Processors with
native bfloat16 (AVX-512 BF16, AMX) run convolutions under ``torch.autocast("cpu", torch.bfloat16)`` much
faster: our training step was 1.65x faster on an AMD EPYC with AVX-512 BF16, and slower on a Xeon without it
(``bench/throughput.py``). Only the training forward pass (and so its backward) is cast; the weights, the
optimizer and the loss stay float32, and validation and the exported model's inference are nnU-Net's float32.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from medseg_auto.errors import InputError

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> None:
    """Refuse an unknown precision before any work (the CLI's choices do this for its users)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision '{precision}': use one of {', '.join(PRECISIONS)}")


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's check: AVX-512 BF16 or AMX); without it bfloat16
    autocast is emulated and slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def train_in_bf16(network: nn.Module) -> None:
    """Run ``network``'s forward under CPU bfloat16 autocast while it is in training mode, its outputs (one
    tensor or nnU-Net's deep-supervision list) cast back to float32 for the loss; in eval mode it is
    unchanged. Only the instance's forward is wrapped: the weights and their ``state_dict`` keep float32."""
    forward = network.forward

    @functools.wraps(forward)
    def forward_bf16(*args, **kwargs):
        if not network.training:
            return forward(*args, **kwargs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = forward(*args, **kwargs)
        return [o.float() for o in out] if isinstance(out, (list, tuple)) else out.float()

    network.forward = forward_bf16
