"""The leukocyte classifier on a lab it never saw: wbc-seg (Zheng et al. 2018, Dataset 2).

    .venv/bin/python -m bench.classifier_external [--weights NAME|FILE ...]

100 single-cell CellaVision images (300x300) from another lab than PBC / DeepAPL, 5 normal classes
(labels.csv: neutrophil, lymphocyte, monocyte, eosinophil, basophil). None of it was used in training
or model selection. Crops as ``classify`` does (largest centred square) and prints, per model: accuracy
of the plain 12-label argmax (what ``classify`` reports), accuracy with the argmax restricted to the 5
classes present (the differential a normal-blood user would read), per-class sensitivity, the most
common confusions, and the machine. ``acc (12, vl=ly)`` counts a ``variant_lymphocyte`` call on a
cell labelled lymphocyte as right: that set's 5-class scheme has no variant class.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from bench.common import WBCSEG_NAMES as NAMES, wbcseg_cells, print_machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", nargs="*", default=[None])
    a = ap.parse_args()

    from bccdet.adapters.classifier import CellClassifier
    from bccdet.io import read_image
    from bccdet.vocab import LABELS
    from bccdet.weights import resolve

    files, names = wbcseg_cells()
    y = np.array(names)
    imgs = [read_image(f) for f in files]
    print_machine()
    print(f"wbc-seg: {len(y)} images; " + ", ".join(f"{k} {v}" for k, v in Counter(y).items()))
    print(f"{'model':<28}{'acc (12)':>9}{'acc (12, vl=ly)':>16}{'acc (5)':>9}" + "".join(f"{n[:5]:>7}" for n in NAMES) + "   top confusions (12 labels)")
    keep = [LABELS.index(n) for n in NAMES]
    for w in a.weights:
        path, name, sha = resolve(w, "classifier")
        clf = CellClassifier(path, name=name, sha256=sha)
        p = clf.predict_crops([clf.crop_single(im) for im in imgs])
        pred = np.array(LABELS)[p.argmax(1)]
        vl = np.where(pred == "variant_lymphocyte", "lymphocyte", pred)
        pred5 = np.array(NAMES)[p[:, keep].argmax(1)]
        sens = [np.mean(pred[y == n] == n) for n in NAMES]
        conf = Counter(f"{t}->{q}" for t, q in zip(y, pred) if t != q).most_common(4)
        print(f"{name:<28}{np.mean(pred == y):>9.2f}{np.mean(vl == y):>16.2f}{np.mean(pred5 == y):>9.2f}" + "".join(f"{s:>7.2f}" for s in sens)
              + "   " + ", ".join(f"{k} {v}" for k, v in conf))


if __name__ == "__main__":
    main()
