"""Call-level prior adaptation: re-estimate a call's class mix by EM and re-weight each cell's posterior."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ...vocab import LABELS
from .calibration import assign_labels
from .common import REVIEW_THRESHOLD


# ====================================================================== call-level prior adaptation
# A call (one patient's export) has its own class mix, far from the one the classifier was trained on
# (e.g. no blasts in normal blood, 30-90 % blasts in an AML). Re-estimating that mix by EM and
# re-weighting each cell's posterior with it (Saerens, Latinne & Decaestecker 2002, Neural Computation
# 14:21-41) is the standard label-shift correction. Opt-in (`classify --adapt`): measured in
# docs/experiments.md, "Call-level prior adaptation", it helps most on a lab unlike the training data and costs rare labels
# some sensitivity (docs/models.md).
PRIOR_ALPHA = 0.0  # Dirichlet pseudo-cells pulling the estimate to the reference prior (0: Saerens' ML)
PRIOR_MIN_CELLS = 20  # smaller calls are left as they are
PRIOR_MAX_RATIO = 3.0  # no label's weight moves by more than 3x either way (chosen on validation patients)


def reference_prior(ck: dict) -> np.ndarray:
    """The class prior (over LABELS) that :func:`adapt_prior` re-weights from: the checkpoint's
    ``reference_prior`` if it records one, else uniform. Uniform was measured against the training
    sampler's ``n_c ** balance`` mix for the shipped model (docs/experiments.md, "Call-level prior adaptation": the sampler's mix
    did worse on every DeepAPL set and on wbc-seg): the estimate must find a rare label (blast, variant
    lymphocyte) common in the call before it favours it."""
    pr = ck.get("reference_prior")
    if isinstance(pr, dict):
        v = np.array([float(pr.get(lab, 0.0)) for lab in LABELS])
    else:
        v = np.ones(len(LABELS))
    v = np.maximum(v, 1e-6)
    return v / v.sum()


def adapt_prior(probs: np.ndarray, prior: Sequence[float] | None = None, alpha: float = PRIOR_ALPHA,
                max_ratio: float | None = None, max_iter: int = 1000,
                tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray, int]:
    """EM estimate of the class mix of one call and the posteriors re-weighted by it.

    ``probs`` (n, k): calibrated posteriors; ``prior``: the class mix they are taken to assume
    (uniform when None; see :func:`reference_prior`).
    Iterates ``q_i ~ p_i * pi / prior`` and ``pi = (sum_i q_i + alpha * prior) / (n + alpha)``: a MAP
    estimate with ``alpha`` pseudo-cells drawn from ``prior`` (``alpha=0``: Saerens et al.'s maximum
    likelihood). The returned posteriors use the weights ``pi / prior`` clipped to
    ``[1 / max_ratio, max_ratio]`` when ``max_ratio`` is given (the estimate itself is not clipped).
    Returns ``(q, pi, iterations)``; rows of zeros stay zeros."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2:
        raise ValueError("probs must be (n, k)")
    k = p.shape[1]
    pt = np.full(k, 1.0 / k) if prior is None else np.asarray(prior, np.float64)
    pt = np.maximum(pt, 1e-12) / np.maximum(pt, 1e-12).sum()
    pi, it = pt.copy(), 0

    def reweight(pi, bound=None):
        w = pi / pt
        if bound:
            w = np.clip(w, 1.0 / bound, bound)
        q = p * w
        s = q.sum(1, keepdims=True)
        return np.divide(q, s, out=np.zeros_like(q), where=s > 0)

    live = p.sum(1) > 0
    m = int(live.sum())
    if m == 0:
        return p.copy(), pt, 0
    for it in range(1, max_iter + 1):
        new = (reweight(pi)[live].sum(0) + alpha * pt) / (m + alpha)
        done = float(np.abs(new - pi).max()) < tol
        pi = new
        if done:
            break
    return reweight(pi, max_ratio), pi, it


def adapt_rows(rows: Sequence[dict], prior: Sequence[float] | None = None, threshold: float = REVIEW_THRESHOLD,
               alpha: float = PRIOR_ALPHA, min_cells: int = PRIOR_MIN_CELLS,
               max_ratio: float | None = PRIOR_MAX_RATIO) -> dict:
    """Call-level prior adaptation of :func:`classify_paths` rows, in place; returns what was done.

    Each classified row keeps what the cell alone got (``label_alone``, ``raw_p_<label>``) and gets the
    label, score and ``p_<label>`` of the re-weighted posterior (:func:`adapt_prior`). ``review`` only
    grows: a cell stays in review if it was reviewed alone, and a cell whose label the call changed is
    reviewed too. Calls with fewer than ``min_cells`` classified cells are left unchanged."""
    ok = [r for r in rows if r.get("label")]
    info: dict[str, Any] = {"applied": False, "method": "EM re-estimate of the call's class mix (Saerens et al. 2002)",
                            "alpha": alpha, "max_ratio": max_ratio, "min_cells": min_cells, "cells": len(ok)}
    if len(ok) < min_cells:
        info["reason"] = f"{len(ok)} classified cell(s), fewer than {min_cells}"
        return info
    p = np.array([[float(r.get(f"p_{lab}") or 0.0) for lab in LABELS] for r in ok])
    q, pi, iters = adapt_prior(p, prior, alpha, max_ratio)
    labels, score, review = assign_labels(q, None, threshold, [bool(r.get("unfamiliar")) for r in ok])
    changed = 0
    for r, lab, s, rv, pr, qr in zip(ok, labels, score, review, p, q):
        alone = r["label"]
        changed += lab != alone
        r.update({"label_alone": alone, **{f"raw_p_{k}": float(v) for k, v in zip(LABELS, pr)}})
        r.update(label=lab, label_score=round(float(s), 4), review=bool(rv or r.get("review") or lab != alone),
                 **{f"p_{k}": round(float(v), 4) for k, v in zip(LABELS, qr)})
    info.update(applied=True, iterations=iters, labels_changed=changed,
                estimated_percent={lab: round(100.0 * float(v), 1) for lab, v in zip(LABELS, pi) if v >= 0.0005})
    return info
