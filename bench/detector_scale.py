"""The detector on fields larger than it learnt: recall when a BCCD field is upscaled (a high-resolution camera).

    .venv/bin/python bench/detector_scale.py [--n 24] [--factors 1,2,3,4,6] [--detector NAME|FILE]

The first ``--n`` BCCD test fields are upscaled by each factor (bilinear) and their published boxes
scaled alike. For the default ``scale="auto"`` and for ``scale=1.0`` (tiling at full resolution, the
behaviour before auto): recall per kind (a published box matched by a detection of that kind at IoU
0.5), the median factor auto chose, and ms per image. Prints a table and the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

BCCD_KIND = {"RBC": "rbc", "WBC": "wbc", "Platelets": "platelet"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--factors", default="1,2,3,4,6")
    ap.add_argument("--detector", default=None)
    a = ap.parse_args()
    import cv2
    from machine import machine

    from bccdet.adapters.yolo import YoloDetector
    from bccdet.data import dataset
    from bccdet.io import read_image
    from bccdet.types import SmearMeta, box_iou
    from bccdet.weights import resolve

    b = dataset("bccd")
    if b is None:
        sys.exit("BCCD absent: set BCCDET_DATA")
    stems = (b / "ImageSets/Main/test.txt").read_text().split()[:a.n]
    w, name, sha = resolve(a.detector, "detector")
    dets = {"auto": YoloDetector(w, name=name, sha256=sha), "1.0 (tiles)": YoloDetector(w, name=name, sha256=sha, scale=1.0)}
    fields = []
    for st in stems:
        gt = [(BCCD_KIND[o.findtext("name")], [float(o.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")])
              for o in ET.parse(b / "Annotations" / f"{st}.xml").getroot().iter("object")]
        fields.append((st, read_image(b / "JPEGImages" / f"{st}.jpg"), gt))
    dets["auto"](fields[0][1], SmearMeta(width=640, height=480))  # warm-up
    rows = []
    for f in [float(x) for x in a.factors.split(",")]:
        for how, det in dets.items():
            hit = {k: [0, 0] for k in BCCD_KIND.values()}
            used, t0 = [], time.perf_counter()
            for st, img, gt in fields:
                im = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_LINEAR) if f != 1 else img
                c = det(im, SmearMeta(path=st, width=im.shape[1], height=im.shape[0]))
                used.append(c.meta.scale)
                for k, box in gt:
                    d = c.xyxy[c.kind == k]
                    hit[k][1] += 1
                    hit[k][0] += bool(len(d)) and box_iou(d, np.array([box], np.float32) * f).max() >= 0.5
            ms = (time.perf_counter() - t0) / len(fields) * 1e3
            rows.append((f, how, *(hit[k][0] / max(1, hit[k][1]) for k in ("rbc", "wbc", "platelet")), float(np.median(used)), ms))
    print(f"machine: {machine()}")
    print(f"detector {name}; first {len(fields)} BCCD test fields (640 x 480) upscaled; recall at IoU 0.5")
    print(f"{'factor':>7}  {'scale':<12}{'RBC':>6}{'WBC':>6}{'PLT':>6}{'used':>7}{'ms/img':>8}")
    for f, how, r, wb, p, used, ms in rows:
        print(f"{f:>7g}  {how:<12}{r:>6.2f}{wb:>6.2f}{p:>6.2f}{used:>7.3f}{ms:>8.0f}")


if __name__ == "__main__":
    main()
