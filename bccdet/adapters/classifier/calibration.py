"""From logits to calls: temperature scaling, labels and the review rule, and familiarity (is this cell
like the training data?)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ...io import write_bytes_atomic
from ...vocab import LABELS
from .common import REVIEW_LABELS, REVIEW_THRESHOLD, UNFAMILIAR_ABNORMAL_MIN


def fit_temperature(logits, y, max_iter: int = 100) -> float:
    """Temperature T > 0 minimising the NLL of softmax(logits / T) (LBFGS on log T)."""
    import torch
    import torch.nn.functional as F

    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    t = torch.as_tensor(np.asarray(y), dtype=torch.long)
    if len(t) == 0:
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), t)
        loss.backward()
        return loss

    opt.step(closure)
    temp = float(log_t.detach().exp())
    if not math.isfinite(temp) or temp <= 0:
        return 1.0
    return float(min(max(temp, 0.05), 20.0))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def assign_labels(probs: np.ndarray, kinds: Sequence[str] | None = None,
                  threshold: float = REVIEW_THRESHOLD,
                  unfamiliar: Sequence[bool] | np.ndarray | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(label, its probability, review) per row of calibrated ``probs`` (columns = LABELS).

    The label is the most probable one, except on an ``unfamiliar`` cell whose most probable label is
    abnormal with less than ``UNFAMILIAR_ABNORMAL_MIN`` (0.5) of the probability: that cell gets its most
    probable normal type instead (and is reviewed, as every unfamiliar cell is). Other labs' normal cells
    are the ones called smudge cell or variant lymphocyte by a narrow margin (python -m
    bench.classifier_domains; docs/models.md).

    Review when the label's probability is below ``threshold``, when the label is abnormal
    (blast, promyelocyte, smudge_cell, variant_lymphocyte: always reviewed), or when the label
    contradicts the detector's kind (a ``wbc`` labelled platelet, a ``platelet`` labelled otherwise).
    """
    p = np.asarray(probs, np.float64).reshape(-1, len(LABELS))
    top = p.argmax(1)
    if unfamiliar is not None and len(p):
        weak = np.asarray(unfamiliar, bool) & np.isin(top, _ABNORMAL_COLS) & (p.max(1) < UNFAMILIAR_ABNORMAL_MIN)
        top[weak] = _NORMAL_COLS[p[weak][:, _NORMAL_COLS].argmax(1)]
    labels = [LABELS[i] for i in top]
    score = p[np.arange(len(p)), top].astype(np.float32)
    review = (score < threshold) | np.array([lab in REVIEW_LABELS for lab in labels], bool)
    if kinds is not None:
        for i, (k, lab) in enumerate(zip(kinds, labels)):
            if (k == "wbc" and lab == "platelet") or (k == "platelet" and lab != "platelet"):
                review[i] = True
    return labels, score, review


_ABNORMAL_COLS = np.array([LABELS.index(lab) for lab in sorted(REVIEW_LABELS)])
_NORMAL_COLS = np.array([i for i, lab in enumerate(LABELS) if lab not in REVIEW_LABELS])


# ====================================================================== familiarity (is this cell like the training data?)
# A cell is "unfamiliar" when its penultimate features lie far outside the subspace the training cells
# span: the residual energy after projecting onto the top-k principal components of the training
# features, in units of the training cells' mean residual. Chosen in python -m tools.classifier_familiarity
# (2026-11-25) against PCA-Mahalanobis, their sum and k-NN distance: cells of another lab (wbc-seg) vs
# PBC test AUROC 0.93, BCCD phone-camera WBC crops 0.99. The threshold is the 95th percentile of the
# validation cells (PBC + DeepAPL val). A call is flagged (bccdet.report.unfamiliar_flag) when at least 35 % of its
# cells are unfamiliar: PBC test 1.5 %, held-out DeepAPL patients at most 30 %, wbc-seg 48 %, BCCD 87 %.
FAMILIARITY_FORMAT = "bccdet-familiarity/1"
FAMILIARITY_K = 64
FAMILIARITY_QUANTILE = 95.0


def familiarity_path(checkpoint: str | Path) -> Path:
    """Where a classifier's familiarity file sits: beside it, ``NAME.familiarity.npz``."""
    p = Path(checkpoint)
    return p.with_name(p.stem + ".familiarity.npz")


def fit_familiarity(train_emb: np.ndarray, val_emb: np.ndarray, k: int = FAMILIARITY_K,
                    quantile: float = FAMILIARITY_QUANTILE) -> dict:
    """The subspace of the training features (mean, top-``k`` principal directions), their mean
    residual energy and the ``quantile`` of the validation cells' scores as the threshold."""
    x = np.asarray(train_emb, np.float64)
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    model = {"mean": mean.astype(np.float32), "components": vt[:k].astype(np.float32), "resid_scale": 1.0,
             "threshold": np.inf}
    model["resid_scale"] = float(np.mean(_residual(model, x)))
    model["threshold"] = float(np.percentile(familiarity_scores(model, val_emb), quantile))
    return model


def _residual(model: dict, emb: np.ndarray) -> np.ndarray:
    d = np.asarray(emb, np.float64) - model["mean"]
    v = np.asarray(model["components"], np.float64)
    r = d - (d @ v.T) @ v
    return (r * r).sum(1)


def familiarity_scores(model: dict, emb: np.ndarray) -> np.ndarray:
    """Unfamiliarity per cell: 1 = a typical training cell; above ``model['threshold']``: unfamiliar."""
    if emb is None or len(emb) == 0:
        return np.zeros(0, np.float64)
    return _residual(model, emb) / model["resid_scale"]


def save_familiarity(model: dict, path: str | Path, classifier_sha256: str, **provenance) -> Path:
    """Write the familiarity file (numbers only: loads with ``allow_pickle=False``)."""
    import io as _io
    import json

    buf = _io.BytesIO()
    np.savez_compressed(buf, mean=model["mean"].astype(np.float16), components=model["components"].astype(np.float16),
                        resid_scale=np.float64(model["resid_scale"]), threshold=np.float64(model["threshold"]),
                        meta=np.frombuffer(json.dumps({"format": FAMILIARITY_FORMAT, "classifier_sha256": classifier_sha256,
                                                       **provenance}).encode(), np.uint8))
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)


def load_familiarity(path: str | Path, classifier_sha256: str | None = None) -> dict | None:
    """The familiarity model, or None when the file is absent or made for another classifier."""
    import json

    p = Path(path)
    if not p.is_file():
        return None
    try:
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            model = {"mean": z["mean"].astype(np.float32), "components": z["components"].astype(np.float32),
                     "resid_scale": float(z["resid_scale"]), "threshold": float(z["threshold"]), "meta": meta}
    except Exception:
        return None
    if meta.get("format") != FAMILIARITY_FORMAT or (classifier_sha256 and meta.get("classifier_sha256") != classifier_sha256):
        return None
    return model
