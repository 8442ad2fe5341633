"""What the classifier calls the white cells of fields from other labs and cameras (no type labels needed).

    .venv/bin/python bench/wbc_calls_by_source.py [--detector NAME|FILE] [--classifier NAME|FILE]

`analyze`'s detector + classifier (no SAM: it changes masks, not labels) over TXL-PBC val and BCCD test,
grouped by image size, which tells TXL-PBC's sources apart (575 x 575: normal blood from another lab;
360 x 363: PBC, the classifier's training lab; 640 x 480: BCCD; 256 x 256: a fourth source). Per group:
WBCs found, share unfamiliar, share called abnormal (blast, promyelocyte, smudge cell, variant lymphocyte),
how many of those abnormal calls are unfamiliar, and the label counts. The fields are normal blood, so
abnormal calls are false alarms. Prints the machine. Needs data/txl-seg and data/bccd-seg.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

ABNORMAL = ("blast", "promyelocyte", "smudge_cell", "variant_lymphocyte")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detector", default=None)
    ap.add_argument("--classifier", default=None)
    a = ap.parse_args()
    from machine import machine

    from bccdet.adapters.classifier import CellClassifier
    from bccdet.adapters.yolo import YoloDetector
    from bccdet.io import read_image
    from bccdet.pipeline import Pipeline
    from bccdet.weights import resolve

    w, dn, dsha = resolve(a.detector, "detector")
    cw, cn, csha = resolve(a.classifier, "classifier")
    pipe = Pipeline(detector=YoloDetector(w, name=dn, sha256=dsha))
    pipe.classifier = CellClassifier(cw, name=cn, sha256=csha)
    print(f"machine: {machine()}")
    print(f"detector {dn} ({dsha[:12]}), classifier {cn} ({csha[:12]})")
    print(f"{'set':<14}{'image size':<12}{'WBC':>6}{'unfamiliar':>12}{'abnormal':>10}{'abnormal & unfamiliar':>23}  labels")
    for title, root in (("TXL-PBC val", "data/txl-seg/images/val"), ("BCCD test", "data/bccd-seg/images/test")):
        files = sorted((REPO / root).glob("*"))
        if not files:
            print(f"{title}: {root} absent (bash datasets/build.sh)")
            continue
        by: dict[str, Counter] = defaultdict(Counter)
        for f in files:
            im = read_image(f)
            c = pipe.run(im, f)
            for i in np.flatnonzero(c.kind == "wbc"):
                by[f"{im.shape[1]}x{im.shape[0]}"][(c.label[i], bool(c.unfamiliar[i]))] += 1
        for size, cnt in sorted(by.items(), key=lambda kv: -sum(kv[1].values())):
            n = sum(cnt.values())
            labels = Counter()
            for (lab, _), k in cnt.items():
                labels[lab] += k
            unf = sum(k for (_, u), k in cnt.items() if u)
            ab = sum(labels[x] for x in ABNORMAL)
            abu = sum(k for (lab, u), k in cnt.items() if u and lab in ABNORMAL)
            print(f"{title:<14}{size:<12}{n:>6}{unf / n:>12.2f}{ab / n:>10.2f}{abu:>13} of {ab:<7}  "
                  + ", ".join(f"{k} {v}" for k, v in labels.most_common()))


if __name__ == "__main__":
    main()
