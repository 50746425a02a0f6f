"""Training precision on a CPU: nnU-Net's float32, or bfloat16 autocast where the processor has it.

nnU-Net trains in float16 autocast on CUDA and in float32 on a CPU, where its autocast is off. Processors with
native bfloat16 (AVX-512 BF16, AMX) run convolutions under ``torch.autocast("cpu", torch.bfloat16)`` much
faster: our training step was 1.65x faster on an AMD EPYC with AVX-512 BF16, and slower on a Xeon without it
(``bench/throughput.py``). Only the training forward pass (and so its backward) is cast; the weights, the
optimizer and the loss stay float32, and validation and the exported model's inference are nnU-Net's float32.
``auto`` (the default) takes bfloat16 only where the processor has it natively and a timed step of the run's
own network and batch is faster: what is faster depends on the processor and on the network's size.
"""
from __future__ import annotations

import functools
import time

import torch
from torch import nn

from medseg_auto.errors import InputError

PRECISIONS = ("auto", "fp32", "bf16")


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


def step_seconds(network: nn.Module, shape: tuple[int, ...], bf16: bool, repeats: int = 2) -> float:
    """Seconds of one training forward and backward pass of ``network`` on a random batch of ``shape``, in
    float32 or bfloat16 autocast: the best of ``repeats`` after one warm-up (one, if it took over 5 s). Its
    gradients are dropped after."""
    x = torch.randn(shape)
    best = float("inf")
    training = network.training
    network.train()
    try:
        for i in range(repeats + 1):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = network(x)
            outputs = out if isinstance(out, (list, tuple)) else [out]
            sum(o.float().mean() for o in outputs).backward()
            if i:
                best = min(best, time.perf_counter() - start)
                if best > 5.0:  # large patches on a CPU: one timed step says enough
                    break
    finally:
        network.zero_grad(set_to_none=True)
        network.train(training)
    return best


def choose_precision(network: nn.Module, shape: tuple[int, ...], min_speedup: float = 1.1) -> tuple[str, str]:
    """``--precision auto`` on a CPU: ``bf16`` where the processor computes bfloat16 natively and a timed
    training step on the run's batch shape is at least ``min_speedup`` times faster than float32, else
    ``fp32``; with the reason, for the log. Hippocampus, 30 minutes: bfloat16 scored the same held-out Dice
    as float32 (0.8677 against 0.8669) with 1.18x the iterations (bench/RESULTS.md)."""
    if not native_bf16():
        return "fp32", "this CPU has no native bfloat16 (AVX-512 BF16 or AMX)"
    fp32, bf16 = step_seconds(network, shape, False), step_seconds(network, shape, True)
    timing = f"a training step took {bf16:.2f} s in bfloat16 against {fp32:.2f} s in float32"
    return ("bf16" if fp32 >= min_speedup * bf16 else "fp32"), timing
