"""LiteMedSAM's image encoder compiled by OpenVINO (CPU): the refiner's costliest step at about half the
time of torch's bf16 autocast on a 2-core AMD EPYC (``python -m bench.sam``; docs/sam.md).

The torch encoder is converted once per (weights, input size, OpenVINO version) and the converted model is
kept under ``$BCCDET_CACHE/openvino/`` (IR ``.xml`` + ``.bin``, ~28 MB per size), so later runs read and
compile it in well under a second. Precision follows the refiner's: ``bf16`` asks OpenVINO for bfloat16
inference (native on AVX512-BF16 / AMX CPUs), ``fp32`` for f32. ``openvino`` and ``torch`` are imported
inside the functions only."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _cache_path(sha256: str, size: int) -> Path:
    import openvino as ov

    from ...data import cache_dir

    ver = ov.__version__.split("-")[0]
    return cache_dir() / "openvino" / f"sam-encoder-{sha256[:16]}-{size}px-ov{ver}.xml"


def _convert(torch_encoder, size: int, dst: Path) -> None:
    """Convert and save atomically: the .bin first, the .xml (what readers look for) last."""
    import openvino as ov
    import torch

    dst.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(False), torch.no_grad():
        om = ov.convert_model(torch_encoder.float().eval(), example_input=torch.zeros(1, 3, size, size))
    tmp = dst.with_name(f".{dst.stem}.{os.getpid()}.xml")
    ov.save_model(om, str(tmp), compress_to_fp16=False)
    os.replace(tmp.with_suffix(".bin"), dst.with_suffix(".bin"))
    os.replace(tmp, dst)


class OpenVinoEncoder:
    """``enc(x)`` for a (B, 3, size, size) float32 array or tensor -> (B, C, h, w) float32 numpy embedding;
    one window per inference request (the converted model has a batch of 1)."""

    def __init__(self, torch_encoder, size: int, sha256: str, precision: str = "fp32", threads: int | None = None):
        import openvino as ov

        path = _cache_path(sha256, size)
        if not (path.is_file() and path.with_suffix(".bin").is_file()):
            _convert(torch_encoder, size, path)
        core = ov.Core()
        cfg = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            cfg["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", cfg)
        self.size, self.path = int(size), path

    def __call__(self, x) -> np.ndarray:
        x = np.ascontiguousarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32)
        return np.concatenate([self.compiled(x[i:i + 1])[0] for i in range(len(x))])
