"""Shared by the benchmarks: one line naming the machine a table was measured on.

The processor matters as much as the core count here: the same 2-core, 30-minute training did 2685 iterations
on one CPU and 5524 on another, so a figure without its processor cannot be compared with the next one.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

# vector extensions that change oneDNN's convolution speed (float32 width, bfloat16, AMX tiles)
_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_name() -> str:
    """The processor's model name and its relevant vector extensions, e.g. 'AMD EPYC (avx2, avx512f)'."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    found = [f for f in _FLAGS if f in flags]
    return f"{model} ({', '.join(found)})" if found else model


def describe(device: str = "cpu") -> str:
    """'machine: 2 CPU cores, AMD EPYC (...), torch 2.x, device cpu': the first line of every table."""
    import torch

    return f"machine: {os.cpu_count()} CPU cores, {cpu_name()}, torch {torch.__version__}, device {device}"
