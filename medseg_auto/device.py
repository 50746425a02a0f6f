"""The compute device for training and prediction: CUDA when asked for or available, else every CPU core."""
from __future__ import annotations

import contextlib
import io
import os
import sys

from medseg_auto.errors import InputError


def select_device(name: str):
    """``auto`` -> CUDA when available, else CPU, with the device's profile (``apply_device_profile``)."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is visible to torch; use --device cpu or auto")
    device = torch.device(name)
    apply_device_profile(device)
    return device


def apply_device_profile(device, threads: int | None = None) -> None:
    """This process's torch settings for training on ``device``, as nnU-Net's own entry point sets them: on a
    CPU every core (or ``threads``, a fold process's share) for torch; on CUDA one torch thread (nnU-Net's
    augmentation workers feed the GPU) and cuDNN's benchmark mode (the fastest kernels for the fixed patch)."""
    import torch

    if device.type == "cpu":
        torch.set_num_threads(threads or os.cpu_count() or 1)
    elif device.type == "cuda":
        torch.set_num_threads(1)
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.deterministic = False


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
NNUNET_DEVICE_REMARKS = ("Using device: ", "perform_everything_on_device=True is only supported for cuda devices",
                         "I am local rank ")


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


# torch.compile: nnU-Net 2.8 compiles the network on CUDA unless nnUNet_compile says no (never on a CPU or MPS;
# nnUNetTrainer._do_i_compile). Compilation is paid at the first training step and again at the first
# validation step of every session, and it pays back only over enough steps: the first steps take minutes
# (Nerogar/OneTrainer#1114: "up to minutes", then 25-35% faster steps; pytorch/pytorch#97783: the first epoch
# very slow under torch.compile; kohya-ss/musubi-tuner#722: about 10% faster steps after a long first epoch).
# For nnU-Net's 3D U-Net its users report about 1-2 minutes of compilation (we found no issue thread with a
# figure for nnU-Net itself: measure it, the trainer records it as ``warmup_seconds`` in medseg_clock.json).
# At 2 to 3 minutes of compilation (training and validation graphs) and 10-20% faster steps a fold breaks even
# after 15-30 minutes; below 20 minutes compiling costs more of the budget than it wins.
COMPILE_MIN_FOLD_SECONDS = 20 * 60
COMPILE_CHOICES = ("auto", "on", "off")


def compile_policy(device_type: str, fold_seconds: float, asked: str = "auto") -> tuple[bool, str]:
    """Whether nnU-Net should compile the network (torch.compile) for a fold with ``fold_seconds`` of training
    ahead (a resumed fold: what is left; it compiles again), and why: never off CUDA (nnU-Net does not compile
    there), ``on``/``off`` as asked on CUDA, and ``auto`` only when the fold is long enough for the compilation
    to pay back (``COMPILE_MIN_FOLD_SECONDS``)."""
    if asked not in COMPILE_CHOICES:
        raise InputError(f"compile '{asked}': use one of {', '.join(COMPILE_CHOICES)}")
    if device_type != "cuda":
        return False, f"nnU-Net compiles only on CUDA, not on {device_type.upper()}"
    if os.name == "nt":
        return False, "torch.compile needs Triton, which Windows lacks (nnU-Net does not compile there)"
    if asked != "auto":
        return asked == "on", f"--compile {asked}"
    if fold_seconds >= COMPILE_MIN_FOLD_SECONDS:
        return True, (f"the fold has {fold_seconds / 60:.0f} min: compilation (a minute or two) pays back "
                      f"from {COMPILE_MIN_FOLD_SECONDS // 60} min")
    return False, (f"the fold has {fold_seconds / 60:.0f} min, under the {COMPILE_MIN_FOLD_SECONDS // 60} min "
                   "it takes for compilation (a minute or two) to pay back")


COMPILE_SET_BY_US = "MEDSEG_AUTO_NNUNET_COMPILE"  # the nnUNet_compile value apply_compile_policy set last


def apply_compile_policy(device_type: str, fold_seconds: float, asked: str = "auto") -> tuple[bool, str]:
    """``compile_policy``, applied for the trainers this process (and the processes it starts) builds next:
    sets ``nnUNet_compile``, which nnU-Net reads when it initialises a trainer. Under ``auto`` a
    ``nnUNet_compile`` the user set is kept, as if asked; one this function set for an earlier fold is not."""
    user = os.environ.get("nnUNet_compile")
    if asked == "auto" and user is not None and user != os.environ.get(COMPILE_SET_BY_US):
        compiled, why = compile_policy(device_type, fold_seconds,
                                       "on" if user.lower() in ("true", "1", "t") else "off")
        why = f"nnUNet_compile={user} in the environment" if device_type == "cuda" else why
    else:
        compiled, why = compile_policy(device_type, fold_seconds, asked)
    os.environ["nnUNet_compile"] = os.environ[COMPILE_SET_BY_US] = "true" if compiled else "false"
    return compiled, why
