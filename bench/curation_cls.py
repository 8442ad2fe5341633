"""Which embedding finds flipped labels in single-cell images (``curate-cls``'s linear probe)?

    .venv/bin/python bench/curation_cls.py [--per-class 50] [--flips 20] [--seed 0] [--threads 1]

Takes ``--per-class`` images of each class from the PBC **test** split (``data/pbc-cls``, never trained
on), flips ``--flips`` labels to another class at random, embeds every image with (a) the shipped
leukocyte classifier (penultimate features, the ``curate-cls`` default) and (b) the shipped detector's
backbone (``--detector``), and runs the same out-of-fold logistic-regression probe
(``bccdet.adapters.fiftyone.probe_probabilities``). Mistakenness = 1 - p(given label). Prints AUROC for
telling flipped from clean labels, precision among the top ``--flips``, the probe's accuracy against
the true labels, embedding ms per image, and the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--flips", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from machine import machine
    from sklearn.metrics import roc_auc_score

    from bccdet.adapters.classifier import CellClassifier, embed_images
    from bccdet.adapters.fiftyone import BackboneEmbedder, load_detector, probe_probabilities
    from bccdet.io import read_image
    from bccdet.weights import resolve

    test = REPO / "data" / "pbc-cls" / "test"
    if not test.is_dir():
        sys.exit(f"need {test} (bash datasets/build.sh)")
    rng = np.random.default_rng(a.seed)
    files, y = [], []
    for d in sorted(p for p in test.iterdir() if p.is_dir()):
        fs = sorted(d.iterdir())
        files += [fs[i] for i in rng.permutation(len(fs))[:a.per_class]]
        y += [d.name] * min(a.per_class, len(fs))
    y = np.array(y)
    classes = sorted(set(y))
    flipped = np.zeros(len(y), bool)
    flipped[rng.permutation(len(y))[:a.flips]] = True
    given = np.array([rng.choice([c for c in classes if c != t]) if f else t for t, f in zip(y, flipped)])
    w, name, sha = resolve(None, "classifier")
    clf = CellClassifier(w, name=name, sha256=sha)
    t = time.perf_counter()
    e_cls = np.stack(embed_images(files, clf))
    ms_cls = (time.perf_counter() - t) / len(files) * 1000
    det = load_detector(None)
    t = time.perf_counter()
    emb = BackboneEmbedder(det)
    e_det = np.stack([emb.embed(read_image(f), imgsz=224) for f in files])
    emb.close()
    ms_det = (time.perf_counter() - t) / len(files) * 1000
    print(f"machine: {machine()}")
    print(f"PBC test: {len(y)} images ({a.per_class} per class), {a.flips} labels flipped (seed {a.seed})")
    print("| embedding | dim | flipped-label AUROC | precision in top {0} | probe accuracy (true labels) | ms per image |".format(a.flips))
    print("|---|---|---|---|---|---|")
    for label, e, ms in ((f"classifier {name} (default)", e_cls, ms_cls), (f"detector backbone {det.name}", e_det, ms_det)):
        cl, p = probe_probabilities(e, list(given), seed=a.seed)
        mist = 1.0 - p[np.arange(len(y)), [cl.index(g) for g in given]]
        top = np.argsort(-mist)[:a.flips]
        acc = np.mean(np.array(cl)[p.argmax(1)] == y)
        print(f"| {label} | {e.shape[1]} | {roc_auc_score(flipped, mist):.3f} | {flipped[top].mean():.2f} | {acc:.3f} | {ms:.0f} |")


if __name__ == "__main__":
    main()
