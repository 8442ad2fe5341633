"""The leukocyte classifier compiled by OpenVINO (CPU, ``--runtime openvino``): logits and the
penultimate features (not normalised) from one network, converted once per (weights, input size) and cached
(:mod:`bccdet.adapters.openvino`). Label parity with torch: ``python -m bench.classifier_runtime``."""

from __future__ import annotations

import numpy as np


def _logits_and_features(model):
    import torch

    class LogitsAndFeatures(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            f = self.m.forward_head(self.m.forward_features(x), pre_logits=True)
            return self.m.get_classifier()(f), f

    return LogitsAndFeatures(model).eval()


class OpenVinoClassifier:
    """``net(x)`` for a (B, 3, S, S) tensor or array -> (logits (B, K), features (B, D)) float32 numpy."""

    def __init__(self, model, imgsz: int, sha256: str, precision: str = "fp32", threads: int | None = None):
        import torch

        from ..openvino import compile_cached

        self.compiled, self.path = compile_cached(f"classifier-{sha256[:16]}-{imgsz}px",
                                                  lambda: _logits_and_features(model),
                                                  torch.zeros(1, 3, imgsz, imgsz), precision, threads,
                                                  dynamic_batch=True)

    def __call__(self, x) -> tuple[np.ndarray, np.ndarray]:
        from ..openvino import as_array

        r = self.compiled(as_array(x))
        return np.asarray(r[0], np.float32), np.asarray(r[1], np.float32)

