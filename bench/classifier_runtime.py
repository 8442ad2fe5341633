"""The leukocyte classifier under each runtime (torch, OpenVINO fp32 / bf16): the same labels, and how much faster.

    .venv/bin/python -m bench.classifier_runtime [--n 0] [--runtimes torch,openvino:fp32,openvino:bf16]

On PBC's test split (``convert pbc``'s: duplicates removed, stratified 70/15/15, seed 0; ``--n`` > 0 takes
the first n), the default classifier types every single-cell image as ``classify`` does. Per runtime:
accuracy against PBC's labels, the share of crops whose label equals torch's (issue #25: >= 99.5 %), the
largest probability difference, the unfamiliar flags that differ, and ms per crop at batch 1 and 32
(after a warm-up pass; the same crops for every runtime). Prints a table and the machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import need_dataset, print_machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=0, help="first n test crops (0: all)")
    ap.add_argument("--runtimes", default="torch,openvino:fp32,openvino:bf16")
    ap.add_argument("--timed", type=int, default=64, help="crops timed at each batch size")
    a = ap.parse_args()

    from bccdet.adapters.classifier import CellClassifier
    from bccdet.convert.classify import load_pbc
    from bccdet.convert.common import Report
    from bccdet.io import read_image
    from bccdet.vocab import LABELS
    from bccdet.weights import resolve

    root = need_dataset("pbc")
    test = [s for s in load_pbc(root, Report("pbc")) if s.split == "test"]
    if a.n:
        test = test[:a.n]
    w, name, sha = resolve(None, "classifier")
    ref = None
    rows = []
    for spec in a.runtimes.split(","):
        rt, _, prec = spec.partition(":")
        clf = CellClassifier(w, name=name, sha256=sha, runtime=rt, precision=prec or "fp32")
        crops = [clf.crop_single(read_image(s.image)) for s in test]
        t0 = time.perf_counter()
        probs, labels, _, _, unf = clf.type_crops(crops, ["wbc"] * len(crops))
        total_ms = (time.perf_counter() - t0) * 1e3
        truth = np.array([s.label for s in test])
        acc = float(np.mean(np.asarray(labels) == truth))
        ms = {}
        for bs in (1, 32):
            clf.predict_crops(crops[:bs], batch_size=bs)
            t = time.perf_counter()
            clf.predict_crops(crops[:a.timed], batch_size=bs)
            ms[bs] = (time.perf_counter() - t) / min(a.timed, len(crops)) * 1e3
        if ref is None:
            ref = (np.asarray(labels), probs, unf)
        same = float(np.mean(np.asarray(labels) == ref[0]))
        dp = float(np.abs(probs - ref[1]).max())
        dunf = 0 if unf is None or ref[2] is None else int((unf != ref[2]).sum())
        rows.append((f"{rt} {clf.precision}", acc, same, dp, dunf, ms[1], ms[32], total_ms))
        del clf
    print_machine()
    print(f"classifier {name} ({sha[:12]}) on {len(test)} PBC test crops ({len(LABELS)} labels)")
    print(f"{'runtime':<16}{'accuracy':>9}{'= torch':>9}{'max dp':>8}{'unfam. diff':>12}{'ms b=1':>8}{'ms b=32':>8}"
          f"{'x torch b=1':>12}")
    for r in rows:
        print(f"{r[0]:<16}{r[1]:>9.4f}{r[2]:>9.4f}{r[3]:>8.4f}{r[4]:>12d}{r[5]:>8.1f}{r[6]:>8.1f}{r[5] / rows[0][5]:>12.2f}")


if __name__ == "__main__":
    main()
