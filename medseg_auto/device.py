"""The compute device for training and prediction: CUDA when asked for or available, else every CPU core."""
from __future__ import annotations

import contextlib
import io
import os
import sys

from medseg_auto.errors import InputError


def select_device(name: str):
    """``auto`` -> CUDA when available, else CPU; CPU gets every core for torch's own threads, CUDA cuDNN's
    benchmark mode."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is visible to torch; use --device cpu or auto")
    if name == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    elif name == "cuda":  # as nnU-Net's own entry points: cuDNN picks the fastest kernels for the fixed patch
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.deterministic = False
    return torch.device(name)


def describe_device(device) -> str:
    """The device in one phrase for the log: ``CPU, 2 torch threads`` or ``CUDA GPU 0 (NVIDIA H200, 139 GiB)``."""
    import torch

    if device.type == "cuda":
        index = device.index or 0
        props = torch.cuda.get_device_properties(index)
        return f"CUDA GPU {index} ({props.name}, {props.total_memory / 2 ** 30:.0f} GiB)"
    return f"{device.type.upper()}, {torch.get_num_threads()} torch thread(s)"


# What nnU-Net prints about the device on its own: the trainer's constructor, and every predictor built off
# CUDA (it says so whatever was asked). The run says the device once instead.
NNUNET_DEVICE_REMARKS = ("Using device: ", "perform_everything_on_device=True is only supported for cuda devices")


class _DropLines(io.TextIOBase):
    """A text stream that passes everything to ``target`` but whole lines starting with ``prefixes``."""

    def __init__(self, target, prefixes: tuple[str, ...]):
        super().__init__()
        self.target, self.prefixes, self.pending = target, prefixes, ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if not line.startswith(self.prefixes):
                self.target.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()

    def fileno(self) -> int:
        return self.target.fileno()


@contextlib.contextmanager
def without_nnunet_device_remarks():
    """Standard output without nnU-Net's device remarks (``NNUNET_DEVICE_REMARKS``) for the duration."""
    target = sys.stdout
    stream = _DropLines(target, NNUNET_DEVICE_REMARKS)
    sys.stdout = stream
    try:
        yield
    finally:
        sys.stdout = target
        if stream.pending and not stream.pending.startswith(NNUNET_DEVICE_REMARKS):
            target.write(stream.pending)
