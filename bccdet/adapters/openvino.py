"""A torch network compiled by OpenVINO (CPU), converted once and cached: the shared path behind
``--runtime openvino`` for SAM's image encoder (:mod:`.sam.openvino`) and the leukocyte classifier.

The torch module is converted once per cache key (the caller's: weights sha256, input size) and OpenVINO
version, and the converted model is kept under ``$BCCDET_CACHE/openvino/`` (IR ``.xml`` + ``.bin``), so
later runs read and compile it in well under a second. ``bf16`` asks OpenVINO for bfloat16 inference
(native on AVX512-BF16 / AMX CPUs), ``fp32`` for f32. ``openvino`` and ``torch`` are imported inside the
functions only. (The detector goes through ultralytics' own OpenVINO export instead: :mod:`.yolo.openvino`.)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def cache_path(key: str) -> Path:
    """Where the IR for ``key`` (e.g. ``sam-encoder-<sha16>-128px``) is kept for this OpenVINO version."""
    import openvino as ov

    from ..data import cache_dir

    ver = ov.__version__.split("-")[0]
    return cache_dir() / "openvino" / f"{key}-ov{ver}.xml"


def convert(module, example, dst: Path, dynamic_batch: bool = False) -> None:
    """Convert ``module`` (traced with ``example``: a tensor, or a tuple of them for several inputs) and save
    it atomically: the .bin first, the .xml (what readers look for) last. ``dynamic_batch``: the first
    dimension of every input is left free."""
    import openvino as ov
    import torch

    dst.parent.mkdir(parents=True, exist_ok=True)
    inputs = example if isinstance(example, tuple) else (example,)
    kw = {"input": [(-1, *t.shape[1:]) for t in inputs]} if dynamic_batch else {}
    with torch.inference_mode(False), torch.no_grad():
        om = ov.convert_model(module.float().eval(), example_input=example, **kw)
    tmp = dst.with_name(f".{dst.stem}.{os.getpid()}.xml")
    ov.save_model(om, str(tmp), compress_to_fp16=False)
    os.replace(tmp.with_suffix(".bin"), dst.with_suffix(".bin"))
    os.replace(tmp, dst)


def compile_cached(key: str, make_module, example, precision: str = "fp32", threads: int | None = None,
                   dynamic_batch: bool = False):
    """The OpenVINO compiled model for ``key``: converted from ``make_module()`` on the first call (then read
    from the cache), compiled for latency at ``precision`` on ``threads`` threads (None: OpenVINO's own)."""
    import openvino as ov

    path = cache_path(key)
    if not (path.is_file() and path.with_suffix(".bin").is_file()):
        convert(make_module(), example, path, dynamic_batch=dynamic_batch)
    core = ov.Core()
    cfg = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    return core.compile_model(core.read_model(str(path)), "CPU", cfg), path


def as_array(x) -> np.ndarray:
    """A contiguous float32 numpy array of a tensor or array."""
    return np.ascontiguousarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32)


def compiled_precision(compiled) -> str:
    """``fp32`` or ``bf16``: what an OpenVINO compiled model runs at."""
    t = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    return "bf16" if "bf16" in t or "bfloat16" in t else "fp32"
