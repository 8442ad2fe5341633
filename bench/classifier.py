"""Benchmark the leukocyte classifier: ms per crop at batch 1 and batch 32, in one run.

    .venv/bin/python -m bench.classifier [--checkpoint FILE] [--imgsz 160] [--n 64] [--threads N] [--device cpu]
                                         [--precisions fp32,bf16]

Without ``--checkpoint`` an untrained network of the same architecture is timed (the cost does not
depend on the weights). Crops are cut with ``cell_crop`` from a synthetic 640x480 field, the size of a
BCCD field; crop time is reported separately. Prints a table with the machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import print_machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--imgsz", type=int, default=None, help="input size when no checkpoint is given (default 160)")
    ap.add_argument("--n", type=int, default=64, help="crops per timed pass")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precisions", default="fp32", help="comma-separated: fp32, bf16, auto (each timed in this run)")
    a = ap.parse_args()

    import numpy as np
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)

    from bccdet.adapters import classifier as C

    tmp = None
    ck = a.checkpoint
    if ck is None:
        tmp = tempfile.TemporaryDirectory()
        ck = C.save_checkpoint(C.load_backbone(len(C.LABELS), pretrained=False), Path(tmp.name) / "untrained.pt",
                               imgsz=a.imgsz or C.IMGSZ)
    rng = np.random.default_rng(0)
    field = rng.integers(150, 230, (480, 640, 3), dtype=np.uint8)
    boxes = [(x, y, x + s, y + s) for x, y, s in zip(rng.uniform(0, 560, a.n), rng.uniform(0, 400, a.n), rng.uniform(60, 200, a.n))]
    rows = []
    for prec in a.precisions.split(","):
        clf = C.CellClassifier(ck, device=a.device, precision=prec)
        t0 = time.perf_counter()
        fill = C.border_color(field)
        crops = [clf.crop(field, b, fill=fill) for b in boxes]
        crop_ms = (time.perf_counter() - t0) / a.n * 1e3
        clf.predict_crops(crops[:2], batch_size=2)  # warm-up
        for bs in (1, 32):
            runs = []
            for _ in range(a.repeat):
                t = time.perf_counter()
                clf.predict_crops(crops, batch_size=bs)
                runs.append((time.perf_counter() - t) / len(crops) * 1e3)
            rows.append((clf.precision, bs, statistics.median(runs), min(runs)))

    print_machine()
    print(f"model: {Path(ck).name} ({C.ARCH}, {clf.imgsz}x{clf.imgsz}, margin {clf.margin}), device {a.device}, "
          f"{a.n} crops x {a.repeat} passes")
    print(f"{'precision':>10}{'batch':>6}{'ms/crop (median)':>18}{'ms/crop (best)':>16}{'crops/s':>10}{'x first':>9}")
    for prec, bs, med, best in rows:
        first = next(r[2] for r in rows if r[1] == bs)
        print(f"{prec:>10}{bs:>6}{med:>18.2f}{best:>16.2f}{1000 / med:>10.1f}{med / first:>9.2f}")
    print(f"cell_crop: {crop_ms:.2f} ms/crop")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
