"""LiteMedSAM's image encoder and window mask decoder compiled by OpenVINO (CPU): the encoder, the refiner's
costliest step, at about half the time of torch's bf16 autocast on a 2-core AMD EPYC (``python -m
bench.sam``; docs/sam.md); the decoder at fp32 (torch's logits within 1e-4) in about half of torch's.

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


class OpenVinoDecoder:
    """``dec(emb, boxes)`` for (B, C, h, w) window embeddings and (B, 4) boxes -> (logits (B, size, size),
    iou (B,)) float32 numpy: :func:`.model._paired_decoder` compiled at fp32 with a free batch (bf16 flipped
    0.2 % of mask pixels, docs/sam.md)."""

    def __init__(self, paired_decoder, size: int, sha256: str, threads: int | None = None):
        import torch

        from ..openvino import compile_cached

        c = 256  # LiteMedSAM's embedding channels; the grid is size / 4
        self.compiled, self.path = compile_cached(
            f"sam-decoder-{sha256[:16]}-{size}px", lambda: paired_decoder,
            (torch.zeros(2, c, size // 4, size // 4), torch.zeros(2, 4)), "fp32", threads, dynamic_batch=True)

    def __call__(self, emb, boxes) -> tuple[np.ndarray, np.ndarray]:
        from ..openvino import as_array

        r = self.compiled((as_array(emb), as_array(boxes).reshape(-1, 4)))
        return np.asarray(r[0], np.float32), np.asarray(r[1], np.float32)
