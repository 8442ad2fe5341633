"""Call-level prior adaptation (``classify --adapt``) measured on held-out sets.

    .venv/bin/python bench/prior_adaptation.py [--weights NAME|FILE] [--threads N] [--cv runs/cv]

With ``--adapt``, ``classify`` treats one call (or each ``--patients`` group) as one patient:
:func:`bccdet.adapters.classifier.adapt_prior` re-estimates its class mix by EM (Saerens et al. 2002)
and re-weights every cell's posterior with it. This prints, per set, the cells alone and several
variants (weight bound, pseudo-cells, reference prior):

* DeepAPL validation and test patients of the shipped model's split (``data/deepapl-cls``; each patient
  one call). The variant shipped as ``--adapt`` was chosen on the validation patients;
* the out-of-fold predictions of ``bench/deepapl_cv.py`` (160 px recipe, 5 folds; each fold's val and
  test patients) when ``--cv`` holds them;
* wbc-seg (another lab, 100 normal cells, one call);
* PBC test split cut into random calls of 100 cells (seed 0). PBC has no patient ids, so these calls mix
  donors and have about the training mix: the case where adaptation has nothing to fix.

Probabilities are computed once per image with the shipped model; the adaptation costs microseconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from wbcseg import wbcseg_cells  # noqa: E402


def _probs(clf, files, batch=64):
    from bccdet.io import read_image

    out = []
    for i in range(0, len(files), batch):
        out.append(clf.predict_crops([clf.crop_single(read_image(f)) for f in files[i:i + batch]]))
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 12))


def _by_call(p, groups, prior, alpha, max_ratio=None):
    from bccdet.adapters.classifier import adapt_prior

    if alpha is None:
        return p
    q = p.copy()
    for g in np.unique(groups):
        m = groups == g
        q[m] = adapt_prior(p[m], prior, alpha, max_ratio)[0]
    return q


def _scores(q, y, groups, ib):
    """accuracy, balanced accuracy (labels with >= 5 cells), differential error, blast R@P90."""
    from deepapl import recall_at_precision

    pred = q.argmax(1)
    k = q.shape[1]
    bal = np.mean([np.mean(pred[y == c] == c) for c in range(k) if np.sum(y == c) >= 5])
    err = []
    for g in np.unique(groups):
        m = groups == g
        err.append(0.5 * np.abs(np.bincount(pred[m], minlength=k) - np.bincount(y[m], minlength=k)).sum() / m.sum())
    r90 = recall_at_precision(q[:, ib], y == ib, 0.90)[0] if np.any(y == ib) else float("nan")
    return float(np.mean(pred == y)), float(bal), float(np.mean(err)), float(r90)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cv", default=str(REPO / "runs" / "cv"), help="folder with bench/deepapl_cv.py fold*/pred.npz")
    a = ap.parse_args()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from machine import machine

    from bccdet.adapters.classifier import CellClassifier, reference_prior
    from bccdet.vocab import LABELS
    from bccdet.weights import resolve

    path, name, sha = resolve(a.weights, "classifier")
    clf = CellClassifier(path, name=name, sha256=sha)
    ck = clf.ck
    bal = float(ck.get("recipe", {}).get("balance", 0.5))
    n = np.array([float(ck.get("data", {}).get("train", {}).get(lab, 0)) for lab in LABELS])
    sampler = np.maximum(n, 1.0) ** bal
    priors = {"uniform (default)": reference_prior(ck), f"sampler n^{bal:g}": sampler / sampler.sum()}
    ib = LABELS.index("blast")
    sets = {}
    apl = REPO / "data" / "deepapl-cls"
    for split in ("val", "test"):
        files = sorted(f for f in (apl / split).glob("*/*") if f.is_file())
        if files:
            sets[f"DeepAPL {split} patients (288 px split)"] = (
                _probs(clf, files), np.array([LABELS.index(f.parent.name) for f in files]),
                np.array([f.name.split("__")[0] for f in files]))
    cv = sorted(Path(a.cv).glob("fold*/pred.npz"))
    for split in ("val", "test") if cv else ():
        zs = [(f.parent.name, np.load(f)) for f in cv]
        te = [z["split"] == split for _, z in zs]
        sets[f"DeepAPL CV {split} patients (160 px fold models)"] = (
            np.concatenate([z["probs"][t] for (_, z), t in zip(zs, te)]).astype(np.float64),
            np.array([LABELS.index(v) for (_, z), t in zip(zs, te) for v in z["label"][t]]),
            np.concatenate([np.char.add(f"{n}/", z["group"][t]) for (n, z), t in zip(zs, te)]))
    wb = wbcseg_cells(required=False)
    if wb is not None:
        sets["wbc-seg (another lab, one call)"] = (
            _probs(clf, wb[0]), np.array([LABELS.index(n) for n in wb[1]]), np.zeros(len(wb[0]), int))
    pbc = sorted(f for f in (REPO / "data" / "pbc-cls" / "test").glob("*/*") if f.is_file())
    if pbc:
        y = np.array([LABELS.index(f.parent.name) for f in pbc])
        order = np.random.default_rng(0).permutation(len(pbc))
        g = np.empty(len(pbc), int)
        g[order] = np.arange(len(pbc)) // 100
        sets["PBC test, random calls of 100"] = (_probs(clf, pbc), y, g)
    print(f"machine: {machine()}")
    print(f"model: {name} ({sha[:12]})")
    settings = [("cells alone (default)", None, None, None),
                ("EM, weights within 3x (--adapt)", priors["uniform (default)"], 0.0, 3.0),
                ("EM, weights within 2x", priors["uniform (default)"], 0.0, 2.0),
                ("EM, unbounded", priors["uniform (default)"], 0.0, None),
                ("EM, unbounded, alpha 12", priors["uniform (default)"], 12.0, None),
                (f"EM, unbounded, sampler prior n^{bal:g}", priors[f"sampler n^{bal:g}"], 0.0, None)]
    print("acc: cell accuracy; bal: mean sensitivity over labels with >= 5 cells; diff err: half L1 distance between "
          "the counted and true differentials, mean over calls; R@P90: blast recall at precision >= 0.90 (threshold "
          "on these cells)")
    for k, (p, y, g) in sets.items():
        print(f"\n{k}: {len(y)} cells, {len(np.unique(g))} call(s)")
        print("| setting | acc | bal | diff err | blast R@P90 |")
        print("|---|---|---|---|---|")
        for label, pr, al, mr in settings:
            acc, bacc, derr, r90 = _scores(_by_call(p, g, pr, al, mr), y, g, ib)
            print(f"| {label} | {acc:.4f} | {bacc:.3f} | {derr:.3f} | {'' if np.isnan(r90) else f'{r90:.3f}'} |")


if __name__ == "__main__":
    main()
