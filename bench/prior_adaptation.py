"""Call-level prior adaptation (``classify --adapt``, the default) measured on held-out sets.

    .venv/bin/python bench/prior_adaptation.py [--weights NAME|FILE] [--threads N] [--cv runs/cv]

``classify`` treats one call as one patient: :func:`bccdet.adapters.classifier.adapt_prior` re-estimates
the call's class mix by EM (Saerens et al. 2002) and re-weights every cell's posterior with it. This
prints, without and with that step, for several reference priors and ``alpha`` (pseudo-cells):

* DeepAPL held-out patients (``data/deepapl-cls`` val + test; each patient is one call): cell
  accuracy, blast recall / precision of the argmax, blast recall at precision >= 0.90 (threshold
  on these cells: upper bound);
* the same on the out-of-fold predictions of ``bench/deepapl_cv.py`` (73 patients, 160 px recipe;
  test split of each fold) when ``--cv`` holds them;
* wbc-seg (another lab, 100 normal cells, one call): accuracy and lymphocyte sensitivity;
* PBC test split cut into random calls of 100 cells (seed 0): accuracy. PBC has no patient ids, so
  these calls mix donors and have about the training mix: the case where adaptation has nothing to fix.

Probabilities are computed once per image with the shipped model; the adaptation itself costs
microseconds per cell.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def _probs(clf, files, batch=64):
    from bccdet.io import read_image

    out = []
    for i in range(0, len(files), batch):
        out.append(clf.predict_crops([clf.crop_single(read_image(f)) for f in files[i:i + batch]]))
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 12))


def _by_call(p, groups, prior, alpha):
    from bccdet.adapters.classifier import adapt_prior

    if alpha is None:
        return p
    q = p.copy()
    for g in np.unique(groups):
        m = groups == g
        q[m] = adapt_prior(p[m], prior, alpha)[0]
    return q


def _blast(q, y, ib):
    from deepapl import recall_at_precision

    pred = q.argmax(1)
    tp = np.sum((pred == ib) & (y == ib))
    return (tp / max(1, np.sum(y == ib)), tp / max(1, np.sum(pred == ib)),
            recall_at_precision(q[:, ib], y == ib, 0.90)[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cv", default=str(REPO / "runs" / "cv"), help="folder with bench/deepapl_cv.py fold*/pred.npz")
    ap.add_argument("--alphas", default="0,12", help="pseudo-cell counts to compare (comma-separated)")
    a = ap.parse_args()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from machine import machine

    from bccdet.adapters.classifier import CellClassifier, reference_prior
    from bccdet.data import dataset
    from bccdet.vocab import LABELS
    from bccdet.weights import resolve

    path, name, sha = resolve(a.weights, "classifier")
    clf = CellClassifier(path, name=name, sha256=sha)
    ck = clf.ck
    bal = float(ck.get("recipe", {}).get("balance", 0.5))
    n = np.array([float(ck.get("data", {}).get("train", {}).get(lab, 0)) for lab in LABELS])
    sampler = np.maximum(n, 1.0) ** bal
    priors = {"uniform (default)": reference_prior(ck), f"sampler n^{bal:g}": sampler / sampler.sum()}
    ib, ily = LABELS.index("blast"), LABELS.index("lymphocyte")
    sets = {}
    apl = REPO / "data" / "deepapl-cls"
    files = sorted(f for s in ("val", "test") for f in (apl / s).glob("*/*") if f.is_file())
    if files:
        sets["apl"] = (_probs(clf, files), np.array([LABELS.index(f.parent.name) for f in files]),
                       np.array([f.name.split("__")[0] for f in files]))
    cv = sorted(Path(a.cv).glob("fold*/pred.npz"))
    if cv:
        zs = [np.load(f) for f in cv]
        te = [z["split"] == "test" for z in zs]
        sets["cv"] = (np.concatenate([z["probs"][t] for z, t in zip(zs, te)]).astype(np.float64),
                      np.array([LABELS.index(v) for z, t in zip(zs, te) for v in z["label"][t]]),
                      np.concatenate([z["group"][t] for z, t in zip(zs, te)]))
    root = dataset("wbc-seg")
    if root is not None:
        names = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]
        rows = list(csv.DictReader(open(root / "labels.csv")))
        wf = [root / "images" / f"{int(r['image ID']):03d}.png" for r in rows]
        sets["wbc"] = (_probs(clf, wf), np.array([LABELS.index(names[int(r["class"]) - 1]) for r in rows]),
                       np.zeros(len(rows), int))
    pbc = sorted(f for f in (REPO / "data" / "pbc-cls" / "test").glob("*/*") if f.is_file())
    if pbc:
        y = np.array([LABELS.index(f.parent.name) for f in pbc])
        order = np.random.default_rng(0).permutation(len(pbc))
        g = np.empty(len(pbc), int)
        g[order] = np.arange(len(pbc)) // 100
        sets["pbc"] = (_probs(clf, pbc), y, g)
    print(f"machine: {machine()}")
    print(f"model: {name} ({sha[:12]})")
    for k, (p, y, g) in sets.items():
        print(f"  {k}: {len(y)} cells, {len(np.unique(g))} call(s)")
    head = ["reference prior", "alpha"]
    if "apl" in sets:
        head += ["DeepAPL held-out acc", "blast R", "blast P", "R@P90"]
    if "cv" in sets:
        head += ["CV out-of-fold acc", "R@P90"]
    if "wbc" in sets:
        head += ["wbc-seg acc", "lymph sens"]
    if "pbc" in sets:
        head += ["PBC test (calls of 100) acc"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    alphas = [None] + [float(x) for x in a.alphas.split(",") if x.strip()]
    for pn, pr in priors.items():
        for al in alphas:
            if al is None and pn != next(iter(priors)):
                continue
            cells = ["none (cells alone)" if al is None else pn, "" if al is None else f"{al:g}"]
            for k, (p, y, g) in sets.items():
                q = _by_call(p, g, pr, al)
                acc = float(np.mean(q.argmax(1) == y))
                if k in ("apl", "cv"):
                    r, pp, r90 = _blast(q, y, ib)
                    cells += [f"{acc:.4f}", f"{r:.3f}", f"{pp:.3f}", f"{r90:.3f}"] if k == "apl" else [f"{acc:.4f}", f"{r90:.3f}"]
                elif k == "wbc":
                    cells += [f"{acc:.2f}", f"{np.mean(q.argmax(1)[y == ily] == ily):.2f}"]
                else:
                    cells += [f"{acc:.4f}"]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
