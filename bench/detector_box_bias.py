"""Do the detector's boxes sit systematically larger, smaller or shifted against BCCD's boxes? (issue #4)

    .venv/bin/python bench/detector_box_bias.py [--weights NAME|FILE] [--data data/bccd-seg] [--splits val test]

Each ground-truth box of the converted BCCD set is matched to the same-class prediction of highest IoU
(conf 0.25, NMS IoU 0.6, imgsz 416, as ``analyze``); matches above IoU 0.5 give, per class and split, the
median IoU, width and height ratio (prediction / truth) and centre offset (in box widths / heights). A
bias here would be a calibration away from a higher mAP50-95; none means the gap is scatter.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
NAMES = ("rbc", "wbc", "platelet")


def _gt(label: Path, w: int, h: int) -> list[tuple]:
    out = []
    for line in label.read_text().split("\n"):
        v = line.split()
        if len(v) >= 5:
            xy = np.array(v[1:], float).reshape(-1, 2) * [w, h]
            out.append((int(v[0]), xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()))
    return out


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    i = ix * iy
    return i / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - i + 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=None)
    ap.add_argument("--data", type=Path, default=REPO / "data/bccd-seg")
    ap.add_argument("--splits", nargs="*", default=["val", "test"])
    a = ap.parse_args()
    from machine import machine
    from ultralytics import YOLO

    from bccdet.weights import resolve

    w, name, sha = resolve(a.weights, "detector")
    model = YOLO(str(w))
    print(f"machine: {machine()}\ndetector {name} ({sha[:12]}) on {a.data}")
    print(f"{'split':<6}{'class':<10}{'matched':>8}{'IoU':>7}{'w ratio':>9}{'h ratio':>9}{'dx':>8}{'dy':>8}")
    for split in a.splits:
        stats: dict[int, list] = {c: [] for c in range(len(NAMES))}
        for f in sorted((a.data / "images" / split).iterdir()):
            r = model.predict(str(f), imgsz=416, conf=0.25, iou=0.6, max_det=1000, verbose=False)[0]
            h, wd = r.orig_shape
            pb, pc = r.boxes.xyxy.cpu().numpy(), r.boxes.cls.cpu().numpy().astype(int)
            for c, *g in _gt(a.data / "labels" / split / f"{f.stem}.txt", wd, h):
                cand = [(_iou(g, pb[j]), j) for j in np.flatnonzero(pc == c)]
                best, j = max(cand, default=(0.0, -1))
                if best > 0.5:
                    p = pb[j]
                    gw, gh = g[2] - g[0], g[3] - g[1]
                    stats[c].append((best, (p[2] - p[0]) / gw, (p[3] - p[1]) / gh,
                                     ((p[0] + p[2]) - (g[0] + g[2])) / 2 / gw, ((p[1] + p[3]) - (g[1] + g[3])) / 2 / gh))
        for c, v in stats.items():
            if v:
                m = np.median(np.array(v), 0)
                print(f"{split:<6}{NAMES[c]:<10}{len(v):>8}" + "".join(f"{x:>{wd}.3f}" for x, wd in zip(m, (7, 9, 9, 8, 8))))


if __name__ == "__main__":
    main()
