"""SAM box prompts on wbc-seg (whole-cell masks): IoU / Dice from the true box and a jittered box, and CPU time.

    .venv/bin/python -m bench.sam [--limit N] [--modes field256,win128,win192,win256] [--threads 2]
                                  [--sam default] [--shrink 0.2]

Modes: ``field256`` (whole image encoded once) or ``win<px>[c<context>]`` (a window per cell, ``context``
box sides around the box per side; default the adapter's WINDOW_CONTEXT), ``@g`` the prompt
box grown by g box sides per side (default: the adapter's PROMPT_GROW). IoU/Dice per mode: (a) the ground-truth box (tight box of the whole-cell mask), (b) each side moved by
up to +-10% of the box size (uniform, seed 0). Timing: encoder ms and decode ms per box for 1, 10 and
50 boxes on one 640x480 BCCD field, in the same run. Prints a table and the machine.

``--sam default`` scores the refiner's registered model (our fine-tuned decoder) instead of LiteMedSAM as
shipped. ``--shrink F`` resizes every image (area interpolation) and its mask (nearest) by F first: at 0.2
a wbc-seg white cell's box is ~30 px and its window ~50 px, the size of a platelet on a BCCD field, so the
window size for small cells (``win64`` against ``win128``) can be scored against true outlines.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from bench.common import machine as describe


def score(pred_crop, off, gt):
    full = np.zeros_like(gt)
    x0, y0 = off
    h, w = pred_crop.shape
    full[y0:y0 + h, x0:x0 + w] = pred_crop
    inter = (full & gt).sum()
    union = (full | gt).sum()
    return inter / union, 2 * inter / (full.sum() + gt.sum())


def shrink_items(items, f: float):
    """Images (area) and true masks (nearest) resized by ``f``; boxes from the resized masks."""
    import cv2

    from bccdet.adapters.sam_tune import tight_box

    out = []
    for name, img, gt, _ in items:
        h, w = gt.shape
        size = (max(1, round(w * f)), max(1, round(h * f)))
        g = cv2.resize(gt.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        out.append((name, cv2.resize(img, size, interpolation=cv2.INTER_AREA), g, tight_box(g)))
    return out


def run_mode(model, items, mode, rng_seed=0):
    from bccdet.adapters.sam import largest_component
    from bccdet.adapters.sam_tune import jitter_box

    rng = np.random.default_rng(rng_seed)
    res = {"a": [], "b": []}
    t0 = time.perf_counter()
    for name, img, gt, box in items:
        jb = jitter_box(box, rng)
        kind, _, g = mode.partition("@")
        kw = {"prompt_grow": float(g)} if g else {}
        if kind.startswith("field"):
            masks, offs, _ = model.segment_field(img, np.stack([box, jb]), **kw)
        else:
            size, _, ctx = kind[3:].partition("c")
            if ctx:
                kw["context"] = float(ctx)
            masks, offs, _ = model.segment_windows(img, np.stack([box, jb]), window_size=int(size), batch=2, **kw)
        for k, m, o in (("a", masks[0], offs[0]), ("b", masks[1], offs[1])):
            res[k].append(score(largest_component(m), o, gt))
    dt = (time.perf_counter() - t0) / len(items)
    out = {}
    for k in "ab":
        a = np.array(res[k])
        out[k] = (a[:, 0].mean(), a[:, 1].mean(), a[:, 0].min())
    return out, dt * 1e3


def detector_vs_refined(items, detector: str | None, precision: str = "fp32"):
    """(c): the detector's WBC mask and the refined one, each against the true whole-cell mask."""
    from bccdet.adapters.sam import SamRefiner
    from bccdet.adapters.yolo import YoloDetector
    from bccdet.weights import resolve

    w, name, sha = resolve(detector, "detector")
    res = refine_detected(items, range(len(items)), YoloDetector(w, name=name, sha256=sha),
                          SamRefiner(kinds=("wbc",), precision=precision))
    d = np.array([v[0] for v in res.values()])
    r = np.array([v[1] for v in res.values()])
    return name, d, r, sum(v[2] == "sam" for v in res.values()), len(items) - len(res)


def refine_detected(items, idx, det, ref) -> dict:
    """{item: (IoU of the detector's mask, IoU of the refined mask, mask_source)} for the WBC detection
    that best matches the true box (items without a WBC detection are left out)."""
    from bccdet.types import SmearMeta

    out = {}
    for i in idx:
        _, img, gt, box = items[i]
        h, w = gt.shape
        cells = det(img, SmearMeta(width=w, height=h))
        wbc = np.flatnonzero(cells.kind == "wbc")
        if not len(wbc):
            continue
        one = cells[[wbc[int(np.argmax([_box_iou(cells.xyxy[k], box) for k in wbc]))]]]
        r = ref(img, one)
        out[int(i)] = (_mask_iou(one.full_mask(0, (h, w)), gt), _mask_iou(r.full_mask(0, (h, w)), gt), str(r.mask_source[0]))
    return out


def _box_iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _mask_iou(a, b):
    u = (a | b).sum()
    return float((a & b).sum() / u) if u else 0.0


def timing(model, threads_note):
    from bccdet.data import dataset
    from bccdet.io import read_image

    bccd = dataset("bccd")
    if bccd is None:
        return []
    img = read_image(bccd / "JPEGImages" / "BloodImage_00007.jpg")
    rng = np.random.default_rng(1)
    rows = []
    for n in (1, 10, 50):
        xy = rng.uniform(0, [560, 400], (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(20, 80, (n, 2))], 1).astype(np.float32)
        for mode in ("field", "win128"):
            t = {}
            t0 = time.perf_counter()
            if mode == "field":
                model.segment_field(img, boxes, timings=t)
            else:
                model.segment_windows(img, boxes, window_size=128, timings=t)
            rows.append((mode, n, t["encode_ms"], t["decode_ms"] / n, (time.perf_counter() - t0) * 1e3))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--modes", default="field256@0,field256,win128@0,win128@0.05,win128,win128@0.1,win256",
                    help="field<size> | win<size>, optionally @<prompt grow> (default: the adapter's PROMPT_GROW)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precision", default="fp32", help="image encoder: fp32, bf16 or auto (bf16 where native)")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--detector", default=None, help="(c) detector vs refined masks: a detector name or .pt ('default': the registered one)")
    ap.add_argument("--sam", default=None, help="'default': the refiner's registered model; a file; unset: LiteMedSAM as shipped")
    ap.add_argument("--shrink", type=float, default=1.0, help="resize images and masks by this factor first")
    ap.add_argument("--runtimes", default="torch", help="comma list of encoder runtimes to score in one run "
                    "(torch, openvino, auto): each mode is run with each, on the same boxes")
    a = ap.parse_args()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from bccdet.adapters.sam import SamModel
    from bccdet.adapters.sam_tune import wbc_seg_items
    from bccdet.data import dataset

    root = dataset("wbc-seg")
    if root is None:
        sys.exit("wbc-seg absent: set BCCDET_DATA or put the data sets in ../shared/datasets")
    def load(runtime):
        if a.sam == "default":
            from bccdet.adapters.sam import default_refiner

            d = default_refiner()
            return SamModel(d["path"], sha256=d["sha256"], precision=a.precision, runtime=runtime)
        return SamModel(a.sam, precision=a.precision, runtime=runtime)

    models = [load(rt) for rt in a.runtimes.split(",")]
    model = models[0]
    items = wbc_seg_items(root, a.limit)
    if a.shrink != 1.0:
        items = shrink_items(items, a.shrink)
    print(describe())
    sides = [max(b[2] - b[0], b[3] - b[1]) for _, _, _, b in items]
    print(f"{model.name} on wbc-seg ({len(items)} images, whole-cell masks, shrunk x{a.shrink}: median box side "
          f"{np.median(sides):.0f} px), torch threads {torch.get_num_threads()}, encoder {model.precision}")
    print(f"{'mode':<10}{'runtime':>9}{'IoU(a)':>8}{'Dice(a)':>9}{'min(a)':>8}{'IoU(b)':>8}{'Dice(b)':>9}{'min(b)':>8}{'ms/img':>9}")
    for mode in filter(None, a.modes.split(",")):
        for m in models:
            r, ms = run_mode(m, items, mode)
            print(f"{mode:<10}{m.runtime:>9}{r['a'][0]:>8.3f}{r['a'][1]:>9.3f}{r['a'][2]:>8.3f}{r['b'][0]:>8.3f}"
                  f"{r['b'][1]:>9.3f}{r['b'][2]:>8.3f}{ms:>9.0f}")
    if a.detector:
        name, d, r, n_sam, missed = detector_vs_refined(items, None if a.detector == "default" else a.detector, a.precision)
        print(f"\n(c) detector {name}: WBC found in {len(d)}/{len(items)} images; mean IoU with the true mask: "
              f"detector {d.mean():.3f}, refined {r.mean():.3f} (SAM mask kept for {n_sam}; "
              f"refined < detector - 0.01 in {int(np.sum(r < d - 0.01))} images)")
    if not a.no_timing:
        print(f"\n{'mode':<8}{'runtime':>9}{'boxes':>6}{'encode ms':>11}{'decode ms/box':>15}{'total ms':>10}"
              "   (one 640x480 BCCD field)")
        for m in models:
            for mode, n, enc, dec, tot in timing(m, ""):
                print(f"{mode:<8}{m.runtime:>9}{n:>6}{enc:>11.0f}{dec:>15.1f}{tot:>10.0f}")


if __name__ == "__main__":
    main()
