"""How often `analyze`'s SAM refinement keeps SAM's mask for white cells and platelets on real fields.

    .venv/bin/python bench/refine_acceptance.py [--detector NAME|FILE]

The default detector and refiner over BCCD test and TXL-PBC val (as `analyze` runs them); per set and kind,
the cells whose final mask is SAM's (``mask_source == "sam"``) and those left with the detector's own mask
(SAM's refused by the policy, docs/sam.md). Where SAM's mask is always kept, the detector's own white-cell
and platelet masks only matter with ``--no-refine``. Prints the machine. Needs data/bccd-seg and
data/txl-seg (bash datasets/build.sh).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

SETS = (("BCCD test", "data/bccd-seg/images/test"), ("TXL-PBC val", "data/txl-seg/images/val"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detector", default=None)
    a = ap.parse_args()
    from machine import machine

    from bccdet.adapters.sam import SamRefiner
    from bccdet.adapters.yolo import YoloDetector
    from bccdet.io import read_image
    from bccdet.types import SmearMeta
    from bccdet.weights import resolve

    w, name, sha = resolve(a.detector, "detector")
    det, ref = YoloDetector(w, name=name, sha256=sha), SamRefiner()
    print(f"machine: {machine()}")
    print(f"detector {name} ({sha[:12]}), refiner {getattr(ref, 'name', 'default')}")
    print(f"{'set':<13}{'fields':>7}{'kind':>10}{'SAM kept':>10}{'own mask':>10}")
    for label, folder in SETS:
        files = sorted((REPO / folder).glob("*"))
        if not files:
            print(f"{label}: {folder} missing (bash datasets/build.sh), skipped")
            continue
        n = Counter()
        for f in files:
            img = read_image(f)
            cells = ref(img, det(img, SmearMeta(path=str(f), width=img.shape[1], height=img.shape[0])))
            n.update((k, str(m)) for k, m in zip(cells.kind, cells.mask_source) if k != "rbc")
        for kind in ("wbc", "platelet"):
            kept = n[(kind, "sam")]
            own = sum(v for (k, m), v in n.items() if k == kind and m != "sam")
            print(f"{label:<13}{len(files):>7}{kind:>10}{kept:>10}{own:>10}", flush=True)


if __name__ == "__main__":
    main()
