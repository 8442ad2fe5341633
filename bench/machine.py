"""Describe the machine a benchmark ran on (printed with every table)."""

from __future__ import annotations

import os
import platform


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        th = f"torch {torch.__version__} threads={torch.get_num_threads()}"
        if torch.cuda.is_available():
            th += f" cuda={torch.cuda.get_device_name(0)}"
    except ImportError:
        th = "torch absent"
    mem = ""
    try:
        kb = int(next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1])
        mem = f"{kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    return f"{cpu} | {os.cpu_count()} cores | {mem} | {platform.python_implementation()} {platform.python_version()} | {th}"
