"""Test-time augmentation for the leukocyte classifier: average the logits over flips / 90-degree turns.

    .venv/bin/python bench/classifier_tta.py [--weights NAME|FILE] [--threads 1] [--limit N]

Crops PBC test (data/pbc-cls) and the DeepAPL held-out patients (data/deepapl-cls val + test) once,
computes the logits of all 8 dihedral transforms of every crop, then scores averaged subsets: none,
hflip (2), the 4 rotations, all 8. Prints PBC accuracy / macro-F1, DeepAPL cell accuracy and blast
recall at precision >= 0.90 per variant, and the measured ms per crop per variant, and the machine.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# dihedral group D4 on an HWC crop: (k quarter turns, then horizontal flip?)
D4 = [(k, f) for f in (False, True) for k in range(4)]
VARIANTS = {"none": [(0, False)], "hflip": [(0, False), (0, True)],
            "rot4": [(k, False) for k in range(4)], "d4": D4}


def _t(c: np.ndarray, k: int, f: bool) -> np.ndarray:
    c = np.rot90(c, k, axes=(0, 1))
    return np.ascontiguousarray(c[:, ::-1] if f else c)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None, help="first N images of each set (quick look)")
    a = ap.parse_args()
    import torch
    from deepapl import recall_at_precision
    from machine import machine

    from bccdet.adapters.classifier import CellClassifier, _softmax, metrics
    from bccdet.io import read_image
    from bccdet.vocab import LABELS
    from bccdet.weights import resolve

    if a.threads:
        torch.set_num_threads(a.threads)
    w, name, sha = resolve(a.weights, "classifier")
    clf = CellClassifier(w, name=name, sha256=sha)
    sets = {}
    for key, d, splits in (("pbc", REPO / "data/pbc-cls", {"test"}), ("deepapl", REPO / "data/deepapl-cls", {"val", "test"})):
        if not (d / "manifest.csv").exists():
            sys.exit(f"need {d} (bash datasets/build.sh)")
        rows = [r for r in csv.DictReader(open(d / "manifest.csv")) if r["split"] in splits][: a.limit]
        crops = [clf.crop_single(read_image(d / r["file"])) for r in rows]
        y = np.array([LABELS.index(r["label"]) for r in rows])
        z, ms = {}, {}
        for k, f in D4:
            t0 = time.perf_counter()
            z[(k, f)] = clf.predict_logits([_t(c, k, f) for c in crops], 16)
            ms[(k, f)] = (time.perf_counter() - t0) * 1e3 / max(1, len(crops))
        sets[key] = (y, z, ms)
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}")
    print(f"classifier {name} ({sha[:12]}), {clf.imgsz} px; PBC test {len(sets['pbc'][0])} crops, DeepAPL val+test "
          f"{len(sets['deepapl'][0])} crops")
    print(f"{'variant':<8}{'views':>6}{'PBC acc':>9}{'PBC mF1':>9}{'APL acc':>9}{'blast R@P90':>13}{'ms/crop':>9}")
    ib = LABELS.index("blast")
    for v, views in VARIANTS.items():
        row = []
        for key in ("pbc", "deepapl"):
            y, z, ms = sets[key]
            p = _softmax(np.mean([z[t] for t in views], 0) / clf.temperature)
            m = metrics(y, p.argmax(1))
            row.append((m["accuracy"], m["macro_f1"], recall_at_precision(p[:, ib], y == ib, 0.90)[0]))
        cost = sum(sets["pbc"][2][t] for t in views)
        print(f"{v:<8}{len(views):>6}{row[0][0]:>9.4f}{row[0][1]:>9.4f}{row[1][0]:>9.4f}{row[1][2]:>13.4f}{cost:>9.1f}")


if __name__ == "__main__":
    main()
