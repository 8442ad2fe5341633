"""The detector on cells larger or smaller than it learnt: recall when BCCD fields are resized.

    .venv/bin/python -m bench.detector_scale [--n 24] [--factors 0.25,0.33,0.5,1,2,3,4,6] [--detector NAME|FILE]

Factors over 1 (a high-resolution camera): the first ``--n`` BCCD test fields are upscaled (bilinear).
Factors under 1 (a low-magnification objective or camera): k x k BCCD test fields (k = round(1 / factor),
all 72 used in turn) are put side by side and the mosaic shrunk to 640 x 480 (area), so each image is a
field-sized image whose cells are k times smaller. Published boxes are mapped alike. For the default
``scale="auto"`` and for ``scale=1.0`` (no resizing: tiles at full resolution, and small cells seen as
they are, the behaviour before auto): recall per kind (a published box matched by a detection of that
kind at IoU 0.5), the median factor auto used, and ms per image. Prints a table and the machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import BCCD_KIND, bccd_field, count_hits, need_dataset, bccd_stems, print_machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--factors", default="0.25,0.33,0.5,1,2,3,4,6")
    ap.add_argument("--detector", default=None)
    a = ap.parse_args()
    import cv2

    from bccdet.adapters.yolo import YoloDetector
    from bccdet.types import SmearMeta
    from bccdet.weights import resolve

    b = need_dataset("bccd")
    all_stems = bccd_stems(b, "test")
    stems = all_stems[:a.n]
    w, name, sha = resolve(a.detector, "detector")
    dets = {"auto": YoloDetector(w, name=name, sha256=sha), "1.0 (tiles)": YoloDetector(w, name=name, sha256=sha, scale=1.0)}
    fields = [bccd_field(b, st) for st in stems]
    everything = None

    def images(f: float):
        """(name, image, [(kind, box in that image)]) for one factor."""
        nonlocal everything
        if f >= 1:
            for st, img, gt in fields:
                im = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_LINEAR) if f != 1 else img
                yield st, im, [(k, np.array(bx, np.float32) * f) for k, bx in gt]
            return
        everything = everything or [bccd_field(b, st) for st in all_stems]
        k = max(2, round(1 / f))
        H, W = everything[0][1].shape[:2]
        for m in range(0, len(everything) - k * k + 1, k * k):
            mos, gts = np.zeros((H * k, W * k, 3), np.uint8), []
            for j, (_, img, gt) in enumerate(everything[m:m + k * k]):
                r, c = divmod(j, k)
                mos[r * H:(r + 1) * H, c * W:(c + 1) * W] = img
                gts += [(kind, (np.array(bx, np.float32) + [c * W, r * H, c * W, r * H]) / k) for kind, bx in gt]
            yield f"mosaic{m}", cv2.resize(mos, (W, H), interpolation=cv2.INTER_AREA), gts

    dets["auto"](fields[0][1], SmearMeta(width=640, height=480))  # warm-up
    rows = []
    for f in [float(x) for x in a.factors.split(",")]:
        for how, det in dets.items():
            hit = {k: [0, 0] for k in BCCD_KIND.values()}
            used, t0, n = [], time.perf_counter(), 0
            for st, im, gt in images(f):
                c = det(im, SmearMeta(path=st, width=im.shape[1], height=im.shape[0]))
                used.append(c.meta.scale)
                n += 1
                count_hits(hit, c, gt)
            ms = (time.perf_counter() - t0) / n * 1e3
            rows.append((f, how, n, *(hit[k][0] / max(1, hit[k][1]) for k in ("rbc", "wbc", "platelet")), float(np.median(used)), ms))
    print_machine()
    print(f"detector {name}; BCCD test fields (640 x 480): upscaled (first {len(fields)}), or k x k shrunk into one; "
          "recall at IoU 0.5")
    print(f"{'factor':>7}  {'scale':<12}{'images':>7}{'RBC':>6}{'WBC':>6}{'PLT':>6}{'used':>7}{'ms/img':>8}")
    for f, how, n, r, wb, p, used, ms in rows:
        print(f"{f:>7g}  {how:<12}{n:>7}{r:>6.2f}{wb:>6.2f}{p:>6.2f}{used:>7.3f}{ms:>8.0f}")


if __name__ == "__main__":
    main()
