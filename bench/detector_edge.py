"""Red-cell slivers at the image border: what the edge rule (``YoloDetector(edge_sliver=F)``) leaves out.

    .venv/bin/python bench/detector_edge.py [--detector NAME|FILE] [--fracs 0,0.2,0.3,0.4,0.5] [--border 16]

On TXL-PBC val (the merged val split, where the default was chosen) and BCCD test, the detector as
``analyze`` runs it (conf 0.25, its own input size, tiles / auto scale) finds the red cells; each threshold
F then leaves out the border cells of which less than F x the field's median red-cell side shows. Per
set and F: red cells matched to a labelled box (IoU >= 0.5, greedy by score) and not, among them those at
the border, and the per-field count error (mean and mean absolute) against the labels. Prints a table and
the machine. Needs data/txl-seg and data/bccd-seg (bash datasets/build.sh).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

SETS = (("TXL-PBC val", "data/txl-seg", "val"), ("BCCD test", "data/bccd-seg", "test"))


def labelled_rbc(img: Path, w: int, h: int) -> np.ndarray:
    """Boxes of the class-0 (rbc) rows of a YOLO label file (boxes or polygons), in pixels."""
    lab = Path(str(img).replace("/images/", "/labels/")).with_suffix(".txt")
    out = []
    for line in lab.read_text().splitlines():
        p = line.split()
        if not p or p[0] != "0":
            continue
        v = np.array(list(map(float, p[1:])))
        if len(v) == 4:
            cx, cy, bw, bh = v
            out.append([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
        else:
            xs, ys = v[0::2] * w, v[1::2] * h
            out.append([xs.min(), ys.min(), xs.max(), ys.max()])
    return np.array(out, np.float32).reshape(-1, 4)


def matched(pred: np.ndarray, score: np.ndarray, gt: np.ndarray, thr: float = 0.5) -> np.ndarray:
    from bccdet.types import box_iou

    ok = np.zeros(len(pred), bool)
    if not len(pred) or not len(gt):
        return ok
    iou = box_iou(pred, gt)
    used: set[int] = set()
    for i in np.argsort(-score):
        j = int(iou[i].argmax())
        if iou[i, j] >= thr and j not in used:
            ok[i] = True
            used.add(j)
    return ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detector", default=None)
    ap.add_argument("--fracs", default="0,0.2,0.3,0.4,0.5")
    ap.add_argument("--border", type=int, default=None, help="grey border in network px (default: BORDER)")
    a = ap.parse_args()
    from machine import machine

    from bccdet.adapters.yolo import YoloDetector, drop_edge_slivers
    from bccdet.io import read_image
    from bccdet.types import SmearMeta
    from bccdet.weights import resolve

    w, name, sha = resolve(a.detector, "detector")
    kw = {} if a.border is None else {"border": a.border}
    det = YoloDetector(w, name=name, sha256=sha, edge_sliver=0, **kw)
    fracs = [float(f) for f in a.fracs.split(",")]
    print(f"machine: {machine()}")
    print(f"detector {name} ({sha[:12]}), conf {det.kw['conf']}, imgsz {det.kw['imgsz']}, border {det.border}; "
          "red cells, IoU 0.5")
    print(f"{'set':<13}{'F':>5}{'fields':>8}{'labelled':>10}{'matched':>9}{'unmatched':>11}{'at border: matched':>20}"
          f"{'unmatched':>11}{'count bias':>12}{'count MAE':>11}")
    for title, root, split in SETS:
        files = sorted((REPO / root / "images" / split).glob("*"))
        if not files:
            print(f"{title}: {root} absent (bash datasets/build.sh)")
            continue
        found = []
        for f in files:
            im = read_image(f)
            h, wd = im.shape[:2]
            found.append((det(im, SmearMeta(path=f.name, width=wd, height=h)), labelled_rbc(f, wd, h)))
        for frac in fracs:
            tot = dict(gt=0, tp=0, fp=0, btp=0, bfp=0)
            err = []
            for cells, gt in found:
                c = drop_edge_slivers(cells, frac)
                r = c[c.kind == "rbc"]
                ok = matched(r.xyxy, r.score, gt)
                xy, (h, wd) = r.xyxy, (c.meta.height, c.meta.width)
                border = (xy[:, 0] < 2) | (xy[:, 1] < 2) | (xy[:, 2] > wd - 2) | (xy[:, 3] > h - 2)
                tot["gt"] += len(gt)
                tot["tp"] += int(ok.sum())
                tot["fp"] += int((~ok).sum())
                tot["btp"] += int((ok & border).sum())
                tot["bfp"] += int((~ok & border).sum())
                err.append(len(r) - len(gt))
            e = np.array(err)
            print(f"{title:<13}{frac:>5.2f}{len(found):>8}{tot['gt']:>10}{tot['tp']:>9}{tot['fp']:>11}{tot['btp']:>20}"
                  f"{tot['bfp']:>11}{e.mean():>+12.2f}{np.abs(e).mean():>11.2f}")


if __name__ == "__main__":
    main()
