"""Box and mask mAP of the detector by the grey border put around each image and the edge-sliver rule.

    .venv/bin/python bench/detector_border.py [--detector NAME|FILE] [--borders 0,16,32] [--fracs 0,0.4]

ultralytics' validator letterboxes each image with half a stride (16 px at 640) of grey on every side,
while its predictor, which ``analyze`` used, adds none to a 640 x 480 field. This scores each combination
of border (network pixels per side, ``YoloDetector(border=)``) and edge rule (``edge_sliver``) on BCCD test
and TXL-PBC val with ``evaluate`` (``evaluate detector --border B --edge-sliver F``: conf 0.001, NMS IoU
0.6, the model's own input size) and prints box and mask mAP50 / mAP50-95, RBC box mAP50 and the red-cell
slivers left out (all / at conf >= 0.25). Prints the machine. Needs data/bccd-seg and data/txl-seg
(bash datasets/build.sh).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

SETS = (("BCCD test", "data/bccd-seg/data.yaml", "test"), ("TXL-PBC val", "data/txl-seg/data.yaml", "val"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detector", default=None)
    ap.add_argument("--borders", default="0,16,32")
    ap.add_argument("--fracs", default="0,0.4")
    a = ap.parse_args()
    from machine import machine

    from bccdet.adapters.yolo import evaluate
    from bccdet.weights import resolve

    w, name, sha = resolve(a.detector, "detector")
    print(f"machine: {machine()}")
    print(f"detector {name} ({sha[:12]}), conf 0.001, NMS IoU 0.6")
    head = (f"{'set':<13}{'border':>7}{'F':>5}{'box mAP50':>11}{'50-95':>7}{'RBC 50':>8}{'WBC 50':>8}{'PLT 50':>8}"
            f"{'mask 50':>9}{'50-95':>7}{'dropped':>9}{'conf>=.25':>10}{'ms/img':>8}")
    print(head)
    for label, data, split in SETS:
        if not (REPO / data).exists():
            print(f"{label}: {data} missing (bash datasets/build.sh), skipped")
            continue
        for b in (int(x) for x in a.borders.split(",")):
            for f in (float(x) for x in a.fracs.split(",")):
                r = evaluate(w, REPO / data, split=split, border=b, edge_sliver=f)
                bx, mk, pc = r["box"], r.get("mask", {}), r["box"]["per_class"]
                d = list(r["edge_slivers_dropped"].values())
                print(f"{label:<13}{b:>7}{f:>5.1f}{bx['mAP50']:>11.3f}{bx['mAP50-95']:>7.3f}"
                      f"{pc['rbc']['mAP50']:>8.3f}{pc['wbc']['mAP50']:>8.3f}{pc['platelet']['mAP50']:>8.3f}"
                      f"{mk.get('mAP50', float('nan')):>9.3f}{mk.get('mAP50-95', float('nan')):>7.3f}"
                      f"{d[0]:>9}{d[1]:>10}{r['speed_ms'].get('inference', 0):>8.1f}", flush=True)


if __name__ == "__main__":
    main()
