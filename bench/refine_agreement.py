"""How far SAM refinement moves the default detector's own masks, per cell kind, on real fields.

    .venv/bin/python bench/refine_agreement.py [--detector NAME|FILE] [--n N] [--kinds wbc,platelet]

The default detector (trained on SAM masks of every cell since stop 19) and the default refiner over BCCD
test and TXL-PBC val, as `analyze` runs them. For every refined cell: the IoU between the detector's own
mask and SAM's (before the refine policy), whether the policy kept SAM's, and the refiner's time per
field. Where the two agree closely, refining that kind buys little for its cost. Prints the machine.
Needs data/bccd-seg and data/txl-seg (bash datasets/build.sh).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

SETS = (("BCCD test", "data/bccd-seg/images/test"), ("TXL-PBC val", "data/txl-seg/images/val"))


def _q(v: list[float], p: float) -> float:
    return float(np.percentile(v, p)) if v else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detector", default=None)
    ap.add_argument("--n", type=int, default=0, help="fields per set (0: all)")
    ap.add_argument("--kinds", default="wbc,platelet")
    a = ap.parse_args()
    from machine import machine

    from bccdet.adapters.sam import SamRefiner, largest_component, mask_iou
    from bccdet.adapters.yolo import YoloDetector
    from bccdet.io import read_image
    from bccdet.types import SmearMeta
    from bccdet.weights import resolve

    kinds = tuple(k for k in a.kinds.split(",") if k)
    w, name, sha = resolve(a.detector, "detector")
    det, ref = YoloDetector(w, name=name, sha256=sha), SamRefiner(kinds=kinds)
    print(f"machine: {machine()}")
    print(f"detector {name} ({sha[:12]}), refiner {getattr(ref, 'name', 'default')}, kinds {kinds}")
    print(f"{'set':<13}{'fields':>7}{'kind':>10}{'cells':>7}{'IoU mean':>10}{'p10':>7}{'median':>8}"
          f"{'<0.8':>7}{'SAM kept':>10}{'refine ms/field':>17}")
    for label, folder in SETS:
        files = sorted((REPO / folder).glob("*"))
        if a.n:
            files = files[:a.n]
        if not files:
            print(f"{label}: {folder} missing (bash datasets/build.sh), skipped")
            continue
        ious: dict[str, list[float]] = {k: [] for k in kinds}
        kept = {k: 0 for k in kinds}
        secs = []
        for f in files:
            img = read_image(f)
            H, W = img.shape[:2]
            cells = det(img, SmearMeta(path=str(f), width=W, height=H))
            idx = np.flatnonzero(np.isin(cells.kind, kinds))
            t = time.perf_counter()
            out = ref(img, cells)
            secs.append(time.perf_counter() - t)
            if not len(idx):
                continue
            # SAM's own mask for each cell, before the policy (the refiner keeps it only when accepted)
            masks, offs, _ = ref.model.segment_windows(img, cells.xyxy[idx], ref.window_size, ref.context)
            for k, i in enumerate(idx):
                sam = largest_component(masks[k])
                own = cells.full_mask(i, (H, W))[offs[k][1]:offs[k][1] + sam.shape[0], offs[k][0]:offs[k][0] + sam.shape[1]]
                ious[cells.kind[i]].append(mask_iou(sam, own))
                kept[cells.kind[i]] += out.mask_source[i] == "sam"
        ms = 1e3 * statistics.mean(secs)
        for k in kinds:
            v = ious[k]
            low = sum(x < 0.8 for x in v)
            print(f"{label:<13}{len(files):>7}{k:>10}{len(v):>7}{statistics.mean(v) if v else float('nan'):>10.3f}"
                  f"{_q(v, 10):>7.3f}{_q(v, 50):>8.3f}{low:>7}{kept[k]:>10}{ms:>17.0f}", flush=True)


if __name__ == "__main__":
    main()
