"""Where the PBC accuracy of the leukocyte classifier stops, and what does not move it (issue #5).

    .venv/bin/python bench/classifier_headroom.py [--weights NAME|FILE] [--members FILE ...] [--threads 2]

On the PBC classify set (data/pbc-cls: train / val / test, the split of the model card) prints:

1. the model's accuracy on each split, and the subtypes (file prefixes: BNE band neutrophil, MMY
   metamyelocyte, ...) behind its errors on the *training* split: a model that does not fit its own
   training images at a border cannot be rescued by a new head on the same features;
2. new heads on the model's penultimate features (L2-normalised): k-nearest neighbours and a logistic
   regression fitted on the training split, and a logistic regression fitted on val;
3. logit ensembles of the model with the other classifiers given by ``--members`` (default: the
   registered 224 / 160 px models and the 5 DeepAPL cross-validation fold models in runs/cv, which were
   all trained on the same PBC training split), averaged log-probabilities, equal weights;
4. test-time batch-norm re-estimation (AdaBN) per call: the BN statistics of every layer re-estimated on
   the call's own crops (mixed with the training statistics by alpha), on wbc-seg (another lab, one call
   of 100 cells), PBC test (random calls of 100) and the first 6 DeepAPL test patients (one call each).

Prints one table per part and the machine.
"""

from __future__ import annotations

import argparse
import copy
import csv
import sys
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from wbcseg import wbcseg_cells  # noqa: E402

DEFAULT_MEMBERS = ["bccdet-effnetl0-wbc224", "bccdet-effnetl0-wbc"] + [f"runs/cv/fold{i}/classifier.pt" for i in range(5)]


def _load(ref):
    from bccdet.adapters.classifier import CellClassifier
    from bccdet.weights import resolve

    path, name, sha = resolve(ref, "classifier")
    return CellClassifier(path, name=name, sha256=sha)


def _logp(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=None)
    ap.add_argument("--members", nargs="*", default=DEFAULT_MEMBERS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-adabn", action="store_true")
    a = ap.parse_args()
    import torch
    from machine import machine
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    from bccdet.adapters.classifier import _to_input
    from bccdet.io import read_image
    from bccdet.vocab import LABELS

    torch.set_num_threads(a.threads)
    d = REPO / "data/pbc-cls"
    if not (d / "manifest.csv").exists():
        sys.exit(f"need {d} (bash datasets/build.sh)")
    rows = list(csv.DictReader(open(d / "manifest.csv")))
    y = np.array([LABELS.index(r["label"]) for r in rows])
    sp = np.array([r["split"] for r in rows])
    sub = np.array([Path(r["file"]).name.split("_")[0] for r in rows])
    imgs = [read_image(d / r["file"]) for r in rows]
    clf = _load(a.weights)
    crops = [clf.crop_single(im) for im in imgs]
    z = clf.predict_logits(crops) / clf.temperature
    emb = clf.embed(crops)
    m = {s: sp == s for s in ("train", "val", "test")}
    acc = lambda pred, s: float((pred == y[m[s]]).mean())  # noqa: E731
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}")
    print(f"model {clf.name} ({clf.sha256[:12]}), {clf.imgsz} px; PBC " + ", ".join(f"{s} {int(v.sum())}" for s, v in m.items()))

    print("\n1. accuracy per split")
    pred = z.argmax(1)
    for s in m:
        print(f"  {s:<6}{acc(pred[m[s]], s):.4f}  errors {int((pred[m[s]] != y[m[s]]).sum())}")
    err = m["train"] & (pred != y)
    top = Counter((sub[i], LABELS[pred[i]]) for i in np.where(err)[0]).most_common(6)
    print("  training-split errors (subtype -> called): " + ", ".join(f"{s}->{c} {n}" for (s, c), n in top))

    print("\n2. new heads on the penultimate features (test accuracy)")
    tr, va, te = m["train"], m["val"], m["test"]
    print(f"  {'model head (as shipped)':<34}{acc(pred[te], 'test'):.4f}")
    for k in (5, 15, 40):
        knn = KNeighborsClassifier(k, metric="cosine").fit(emb[tr], y[tr])
        print(f"  {f'kNN k={k} (train split)':<34}{acc(knn.predict(emb[te]), 'test'):.4f}")
    for c in (0.1, 1.0):
        lr = LogisticRegression(C=c, max_iter=3000).fit(emb[tr], y[tr])
        print(f"  {f'logistic C={c} (train split)':<34}{acc(lr.predict(emb[te]), 'test'):.4f}")
        lr = LogisticRegression(C=c, max_iter=3000).fit(emb[va], y[va])
        print(f"  {f'logistic C={c} (val split)':<34}{acc(lr.predict(emb[te]), 'test'):.4f}")

    print("\n3. logit ensembles (mean log-probability; test accuracy / errors)")
    idx = np.where(te)[0]
    lp = {clf.name: _logp(z[idx])}
    for ref in a.members:
        try:
            c = _load(ref if ref.endswith(".pt") else ref)
        except Exception as e:  # a missing fold model: say so and go on
            print(f"  skip {ref}: {e}")
            continue
        key = ref if ref.endswith(".pt") else c.name
        lp[key] = _logp(c.predict_logits([c.crop_single(imgs[i]) for i in idx]) / c.temperature)
        print(f"  {key:<44} alone {float((lp[key].argmax(1) == y[idx]).mean()):.4f}")
    names = list(lp)
    combos = {"model alone": names[:1], "model + next member": names[:2], "all members": names,
              "all but the model": names[1:]}
    for label, ks in combos.items():
        if ks:
            p = np.mean([lp[k] for k in ks], 0).argmax(1)
            print(f"  {label:<44} {float((p == y[idx]).mean()):.4f}  errors {int((p != y[idx]).sum())}  ({len(ks)} models)")

    if a.skip_adabn:
        return
    print("\n4. AdaBN per call (accuracy; alpha 0 = as shipped)")
    model = clf.model
    base = copy.deepcopy(model.state_dict())
    bns = [b for b in model.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)]

    def adapt(cs, alpha):
        model.load_state_dict(base)
        if alpha == 0:
            return
        src = [(b.running_mean.clone(), b.running_var.clone()) for b in bns]
        for b in bns:
            b.reset_running_stats()
            b.momentum = None
            b.train()
        with torch.no_grad():
            x = _to_input(np.stack(cs), clf.mean, clf.std).to(memory_format=torch.channels_last)
            for i in range(0, len(x), 64):
                model(x[i:i + 64])
        for b, (mu, var) in zip(bns, src):
            b.running_mean.mul_(alpha).add_((1 - alpha) * mu)
            b.running_var.mul_(alpha).add_((1 - alpha) * var)
            b.eval()

    calls = {}
    wb = wbcseg_cells(required=False)
    if wb is not None:
        calls["wbc-seg (1 call)"] = [([clf.crop_single(read_image(f)) for f in wb[0]], np.array([LABELS.index(n) for n in wb[1]]))]
    pick = np.random.default_rng(0).permutation(idx)[:600]
    calls["PBC test (6 calls of 100)"] = [([crops[i] for i in pick[j:j + 100]], y[pick[j:j + 100]]) for j in range(0, 600, 100)]
    dr = [r for r in csv.DictReader(open(REPO / "data/deepapl-cls/manifest.csv")) if r["split"] == "test"] \
        if (REPO / "data/deepapl-cls/manifest.csv").exists() else []
    if dr:
        calls["DeepAPL test (6 patients)"] = [
            ([clf.crop_single(read_image(REPO / "data/deepapl-cls" / r["file"])) for r in dr if r["group"] == p],
             np.array([LABELS.index(r["label"]) for r in dr if r["group"] == p]))
            for p in sorted({r["group"] for r in dr})[:6]]
    print(f"  {'alpha':<7}" + "".join(f"{k:>28}" for k in calls))
    for alpha in (0.0, 0.5, 1.0):
        out = []
        for cs in calls.values():
            accs = []
            for c, yy in cs:
                adapt(c, alpha)
                accs.append(float((clf.predict_logits(c).argmax(1) == yy).mean()))
            out.append(np.mean(accs))
        print(f"  {alpha:<7}" + "".join(f"{v:>28.4f}" for v in out))
    model.load_state_dict(base)


if __name__ == "__main__":
    main()
