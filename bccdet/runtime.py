"""Process-level tuning for CPU inference (no heavy imports here).

glibc serves every allocation above ``M_MMAP_THRESHOLD`` (a few MB at most by default) with a fresh
``mmap`` and gives it back with ``munmap`` when freed. A CNN forward pass on a batch of crops allocates
and frees activation buffers of tens of MB per layer, so each layer pays page faults for memory it just
returned: measured on the 2-core dev machine, the 288 px classifier ran at 25 ms per crop at batch 32 and
8.8 ms with the thresholds below (``python -m bench.classifier``). Raising the mmap and trim thresholds keeps
those buffers in the heap and reuses them; the cost is that freed memory stays mapped to the process.
Measured with ``python -m bench.pipeline`` (72 BCCD fields, full pipeline, same machine and session): 775 ms
per field and 2.16 GB peak RSS, against 1021 ms and 1.58 GB with ``BCCDET_NO_MALLOPT=1`` (the opt-out for
memory-tight machines). A 128 MB limit kept the RSS and lost half the speed-up, so 512 MB it is.
"""
from __future__ import annotations

import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_DONE = False


def tune_malloc(limit: int = 512 << 20) -> bool:
    """Raise glibc's mmap / trim thresholds to ``limit`` bytes once per process. False where not glibc,
    or when ``BCCDET_NO_MALLOPT`` is set."""
    global _DONE
    if _DONE:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("BCCDET_NO_MALLOPT"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, int(limit)) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, int(limit)) == 1
    except (OSError, AttributeError):
        return False
    _DONE = bool(ok)
    return _DONE


def check_device(device: str | None) -> str:
    """``--device`` as given when this machine can run it: ``cpu``, ``cuda`` or ``cuda:N``; else a one-line
    ``ValueError`` (an unknown name, or CUDA asked for where torch sees no GPU)."""
    import re

    d = (device or "cpu").strip()
    if d.lower() == "cpu":
        return "cpu"
    if not re.fullmatch(r"cuda(:\d+)?", d.lower()):
        raise ValueError(f"unknown device {device!r}; expected cpu, cuda or cuda:N")
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        raise ValueError(f"{device}: no CUDA GPU is visible here (torch.cuda.is_available() is False); use --device cpu")
    if ":" in d and int(d.split(":")[1]) >= n:
        raise ValueError(f"{device}: only {n} CUDA GPU(s) visible (cuda:0..cuda:{n - 1})")
    return d.lower()


PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: str = "cpu") -> bool:
    """Whether ``device`` (``cpu``, ``cuda``, ``cuda:N``) runs bfloat16 matrix products natively: AVX512-BF16
    or AMX on CPU, compute capability 8.0 or later for that GPU (older GPUs only emulate bf16)."""
    import torch

    d = torch.device(device)
    if d.type == "cuda":
        if not torch.cuda.is_available():
            return False
        idx = d.index if d.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_capability(idx)[0] >= 8
    if d.type != "cpu":
        return False
    try:  # the CPU has it, and oneDNN may use it (ONEDNN_MAX_CPU_ISA can forbid it)
        return bool((torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_edge_sliver(value: float | None) -> float | None:
    """An edge-sliver share (``--edge-sliver``: in [0, 1), 0 keeps every red cell at the border) or None;
    else a one-line ``ValueError``."""
    if value is not None and not 0 <= value < 1:
        raise ValueError(f"{value}: expected a share in [0, 1) (0 keeps every red cell at the border)")
    return value


def check_review_threshold(value: float | None) -> float | None:
    """A review threshold (a probability in [0, 1]) or None (the classifier's own); else a one-line ``ValueError``."""
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"{value}: expected a probability in [0, 1]")
    return None if value is None else float(value)


def check_precision(precision: str) -> str:
    """``precision`` when it is one of :data:`PRECISIONS`, else a one-line ``ValueError``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    return precision


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """``fp32`` or ``bf16``: ``auto`` is bf16 where it is native (:func:`native_bf16`), else fp32 (emulated
    bf16 is slower than fp32). A one-line ``ValueError`` for anything else (:func:`check_precision`)."""
    if check_precision(precision) == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(precision: str, device_type: str = "cpu"):
    """The torch autocast context for a resolved ``precision`` (a no-op context for fp32)."""
    import contextlib

    if precision != "bf16":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type, dtype=torch.bfloat16)


RUNTIMES = ("auto", "torch", "openvino")
"""Inference runtimes for a model's heavy network (``--runtime``): ``openvino`` compiles it with OpenVINO
(CPU only, bf16 where the CPU has it natively); ``auto`` is openvino on a CPU where the package is
installed, else torch."""


def check_runtime(runtime: str | None) -> str | None:
    """``runtime`` when it is one of :data:`RUNTIMES` (or None: the caller's default), else a one-line
    ``ValueError``."""
    if runtime is not None and runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
    return runtime


def resolve_runtime(runtime: str, device: str = "cpu") -> str:
    """``torch`` or ``openvino`` for ``runtime`` (one of :data:`RUNTIMES`) on ``device``; a one-line
    ``ValueError`` for an unknown runtime or openvino asked for where it cannot run."""
    import importlib.util

    check_runtime(runtime)
    on_cpu = str(device).lower().startswith("cpu")
    have = importlib.util.find_spec("openvino") is not None
    if runtime == "auto":
        return "openvino" if on_cpu and have else "torch"
    if runtime == "openvino" and not on_cpu:
        raise ValueError(f"runtime openvino runs on the CPU only, not {device}; use --runtime torch")
    if runtime == "openvino" and not have:
        raise ValueError("runtime openvino: the openvino package is not installed (pip install openvino)")
    return runtime
