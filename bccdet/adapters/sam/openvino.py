"""LiteMedSAM's image encoder compiled by OpenVINO (CPU): the refiner's costliest step at about half the
time of torch's bf16 autocast on a 2-core AMD EPYC (``python -m bench.sam``; docs/sam.md).

Converted once per (weights, input size, OpenVINO version) and cached (:mod:`bccdet.adapters.openvino`,
~28 MB per size). Precision follows the refiner's."""

from __future__ import annotations

import numpy as np


class OpenVinoEncoder:
    """``enc(x)`` for a (B, 3, size, size) float32 array or tensor -> (B, C, h, w) float32 numpy embedding;
    one window per inference request (the converted model has a batch of 1)."""

    def __init__(self, torch_encoder, size: int, sha256: str, precision: str = "fp32", threads: int | None = None):
        import torch

        from ..openvino import compile_cached

        self.compiled, self.path = compile_cached(f"sam-encoder-{sha256[:16]}-{size}px", lambda: torch_encoder,
                                                  torch.zeros(1, 3, size, size), precision, threads)
        self.size = int(size)

    def __call__(self, x) -> np.ndarray:
        from ..openvino import as_array

        x = as_array(x)
        return np.concatenate([self.compiled(x[i:i + 1])[0] for i in range(len(x))])
