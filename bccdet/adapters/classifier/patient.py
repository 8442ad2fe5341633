"""Patient level: the summary of one patient's classified cells (counts, differential, flags) and its
``apl_score``.

``apl_score`` of a patient (:func:`summary`): by default a small learned patient model (logistic
regression on the log mean probability of each label over the patient's cells, fitted on
out-of-fold DeepAPL predictions; see :func:`fit_apl_model` and ``weights/bccdet-apl-lr.md``), else
the documented rule :func:`apl_score`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from ...io import InputError
from ...report import differential_base, unfamiliar_flag, wbc_flags
from ...vocab import LABELS, NOT_IN_DIFFERENTIAL


APL_PRESENCE_SCALE = 0.05


def apl_score(p_promyelocyte: Sequence[float], p_blast: Sequence[float], eps: float = 1e-3) -> float:
    """Patient-level score (0..1) of APL rather than another AML, from per-cell calibrated probabilities.

    Rule (documented, not learned): APL blood shows abnormal promyelocytes where other AMLs show blasts.
    With ``P`` = mean p(promyelocyte) and ``B`` = mean p(blast) over the patient's classified cells::

        share    = (P + eps) / (P + B + 2 * eps)          # promyelocytic part of the leukaemic mass
        presence = 1 - exp(-P / 0.05)                    # saturates once ~5 %+ of cells look promyelocytic
        apl_score = share * presence

    It is ~0 without promyelocyte-like cells, and is meant to rank patients for review; a learned
    patient-level model may replace it (keep the name and range).
    """
    pp = np.asarray(list(p_promyelocyte), np.float64)
    pb = np.asarray(list(p_blast), np.float64)
    if pp.size == 0:
        return 0.0
    P, B = float(pp.mean()), float(pb.mean()) if pb.size else 0.0
    share = (P + eps) / (P + B + 2 * eps)
    presence = 1.0 - math.exp(-P / APL_PRESENCE_SCALE)
    return round(float(min(1.0, max(0.0, share * presence))), 4)


APL_MODEL_FORMAT = "bccdet-apl-patient/1"
APL_FEATURE_EPS = 1e-3


def apl_features(probs: np.ndarray) -> np.ndarray:
    """Patient features: ``log(mean over cells of p(label) + 1e-3)`` for each label of ``LABELS``."""
    p = np.asarray(probs, np.float64).reshape(-1, len(LABELS))
    if not len(p):
        raise InputError("no classified cells: cannot compute patient features")
    return np.log(p.mean(0) + APL_FEATURE_EPS)


def fit_apl_model(features: np.ndarray, is_apl: Sequence[bool], c: float = 1.0, **provenance) -> dict:
    """L2 logistic regression (class-balanced, ``C=c``) of APL vs other AML on :func:`apl_features` rows;
    returns the JSON-able model that :func:`apl_score_model` applies (``provenance`` is stored with it)."""
    from sklearn.linear_model import LogisticRegression

    x, y = np.asarray(features, np.float64), np.asarray(is_apl, bool)
    if y.all() or not y.any():
        raise InputError("need patients of both diagnoses to fit the APL model")
    lr = LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(x, y)
    return {"format": APL_MODEL_FORMAT, "labels": list(LABELS), "features": "log(mean p(label) + 1e-3)",
            "eps": APL_FEATURE_EPS, "coef": [round(float(v), 6) for v in lr.coef_[0]],
            "intercept": round(float(lr.intercept_[0]), 6), "C": c, "n_patients": int(len(y)),
            "n_apl": int(y.sum()), **provenance}


def load_apl_model(path: str | Path) -> dict:
    """Read and check a patient model written by :func:`fit_apl_model` (InputError when it is not one)."""
    try:
        m = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable APL patient model ({e})") from None
    if not isinstance(m, dict) or m.get("format") != APL_MODEL_FORMAT or list(m.get("labels", [])) != list(LABELS) \
            or len(m.get("coef", [])) != len(LABELS):
        raise InputError(f"{path}: not a {APL_MODEL_FORMAT} model for the labels {list(LABELS)}")
    return m


def apl_score_features(model: dict, features: np.ndarray) -> float:
    """Probability (0..1) of APL rather than another AML from one patient's :func:`apl_features`."""
    z = float(np.dot(model["coef"], features) + model["intercept"])
    return round(1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z)))), 4)


def apl_score_model(model: dict, probs: np.ndarray) -> float:
    """Probability (0..1) of APL rather than another AML from a patient's per-cell calibrated probabilities."""
    return apl_score_features(model, apl_features(probs))


_APL_DEFAULT: dict = {}


def default_apl_model() -> tuple[dict, str, str] | None:
    """(model, name, sha256) of the registered default ``apl`` model, or None (then the rule is used)."""
    if "m" not in _APL_DEFAULT:
        from ...weights import WeightsError, resolve

        try:
            path, name, sha = resolve(None, "apl")
            _APL_DEFAULT["m"] = (load_apl_model(path), name, sha)
        except (WeightsError, InputError):
            _APL_DEFAULT["m"] = None
    return _APL_DEFAULT["m"]


def resolve_apl_model(apl_model: str | Path | dict | None = "default") -> tuple[dict | None, str]:
    """(model or None, how ``apl_score`` is computed) for ``apl_model``: "default" (the registered
    patient model, else the rule), a model file or dict (:func:`load_apl_model`), or None (the rule)."""
    if isinstance(apl_model, dict):
        return apl_model, "patient model (logistic regression)"
    if apl_model == "default":
        found = default_apl_model()
        if found is not None:
            return found[0], f"patient model {found[1]} (logistic regression, sha256 {found[2][:12]})"
    elif apl_model is not None:
        return load_apl_model(apl_model), f"patient model {Path(apl_model).name} (logistic regression)"
    return None, "share * presence; bccdet.adapters.classifier.apl_score"


def summary(rows: Sequence[dict], apl_model: str | Path | dict | None = "default",
            prior_adaptation: dict | None = None) -> dict:
    """Counts, differential (% of classified cells), review count, flags and ``apl_score`` of rows
    from :func:`classify_paths` (one patient / sample), after :func:`adapt_rows` if it ran (then
    ``prior_adaptation`` is its report, copied into the summary).

    ``apl_model``: see :func:`resolve_apl_model`. The patient model scores the cells' own probabilities
    (``raw_p_<label>`` after adaptation): that is what it was fitted on. An abnormal-cell flag is
    raised when the cells alone or the adapted labels show that label."""
    ok = [r for r in rows if r.get("label")]
    failed = [r for r in rows if not r.get("label")]
    counts = Counter(r["label"] for r in ok)
    n = len(ok)
    n_leuk, outside = differential_base(counts)
    diff = {lab: round(100.0 * counts[lab] / n_leuk, 1) for lab in LABELS
            if counts.get(lab) and lab not in NOT_IN_DIFFERENTIAL}
    flags = []
    if failed:
        flags.append({"code": "unreadable", "message": f"{len(failed)} file(s) could not be read"})
    alone = Counter(r.get("label_alone", r["label"]) for r in ok)
    unf_by = Counter(r["label"] for r in ok if r.get("unfamiliar"))
    flags += wbc_flags(counts, diff, unf_by, alone=alone, then="review")
    n_review = sum(1 for r in ok if r.get("review"))
    scored = [r for r in ok if r.get("unfamiliar") is not None]
    n_unfam = sum(1 for r in scored if r["unfamiliar"])
    uf = unfamiliar_flag(n_unfam, len(scored))
    if uf is not None:
        flags.append(dict(uf, message=uf["message"] + ", and consider --adapt"))
    n_grey = sum(1 for r in ok if r.get("grey"))
    if n_grey:  # measured: PBC test cells in grey are typed right 0.78 of the time (0.986 in colour)
        flags.append({"code": "grey_images", "message": f"{n_grey} of {n} cell images have no colour (a monochrome "
                      "camera or a grey scan): the classifier was trained on stained colour images and typed a fifth "
                      "of PBC test cells wrongly in grey; their types are not reliable"})
    model, how = resolve_apl_model(apl_model)
    if model is not None and ok:
        probs = np.array([[float(_raw(r, lab)) for lab in LABELS] for r in ok])
        score = apl_score_model(model, probs)
    else:
        score = apl_score([_raw(r, "promyelocyte") for r in ok], [_raw(r, "blast") for r in ok])
    if score >= 0.5 and ok:
        flags.append({"code": "apl_suspected", "message": f"apl_score {score:.2f}: APL pattern; "
                      "APL is an emergency, confirm with PML-RARA testing"})
    return {"files": len(rows), "classified": n, "unreadable": len(failed),
            "counts": {lab: counts[lab] for lab in LABELS if counts.get(lab)}, "differential_percent": diff,
            "review": n_review, "flags": flags, "apl_score": score, "apl_rule": how,
            **({"unfamiliar": n_unfam} if scored else {}),
            **outside,
            **({"prior_adaptation": prior_adaptation} if prior_adaptation is not None else {})}


def _raw(row: dict, lab: str) -> float:
    """The cell's own probability of ``lab`` (before any call-level adaptation)."""
    v = row.get(f"raw_p_{lab}", row.get(f"p_{lab}"))
    return float(v or 0.0)
