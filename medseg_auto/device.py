"""The compute device for training and prediction: CUDA when asked for or available, else every CPU core."""
from __future__ import annotations

import os

from medseg_auto.errors import InputError


def select_device(name: str):
    """``auto`` -> CUDA when available, else CPU; CPU gets every core for torch's own threads."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is visible to torch; use --device cpu or auto")
    if name == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    return torch.device(name)
