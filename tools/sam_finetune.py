"""Fine-tuned LiteMedSAM decoder on wbc-seg, measured by k-fold cross-validation (held-out images only).

    .venv/bin/python -m tools.sam_finetune [--folds 5] [--steps 400] [--threads 1] [--baseline]
                                           [--final weights/bccdet-litemedsam-blood.pt]

Image i is in fold i % k. For each fold the decoder starts again from LiteMedSAM as shipped, is trained
(bccdet.adapters.sam_tune) on the other folds' images only, and is scored on the fold's images through
SamModel's own inference paths (segment_field at 256 px, segment_windows at 128 px), (a) from the true
box and (b) from the jittered box of bench/sam.py (same seed and order, so the baseline rows equal that
bench's). Per-image results go to runs/sam/cv.json (a fold already there is not redone: resumable).
``--baseline`` scores LiteMedSAM as shipped in the same run; ``--final`` then trains on all images and
writes the decoder checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bench.common import machine as describe

MODES = ("field", "window")


def evaluate(model, items, jboxes, idx):
    """{item index: {mode: {"a": (iou, dice), "b": (iou, dice)}}} through the real inference paths."""
    from bccdet.adapters.sam import largest_component
    from bench.sam import score

    out = {}
    for i in idx:
        _, img, gt, box = items[i]
        boxes = np.stack([box, jboxes[i]])
        r = {}
        for mode in MODES:
            if mode == "field":
                masks, offs, _ = model.segment_field(img, boxes)
            else:
                masks, offs, _ = model.segment_windows(img, boxes, window_size=128, batch=2)
            r[mode] = {k: score(largest_component(masks[j]), offs[j], gt) for j, k in enumerate("ab")}
        out[int(i)] = r
    return out


def detector_vs_refined(model, items, idx, det):
    """(c) with the SamRefiner stage running on ``model`` (the decoder being cross-validated)."""
    from bccdet.adapters.sam import SamRefiner
    from bench.sam import refine_detected

    ref = SamRefiner("litemedsam", kinds=("wbc",), precision="fp32")
    ref.model = model
    return refine_detected(items, idx, det, ref)


def table_c(name, res):
    d = np.array([v[0] for v in res.values()])
    r = np.array([v[1] for v in res.values()])
    n_sam = sum(v[2] == "sam" for v in res.values())
    return (f"{name:<22}WBC found {len(d)}; IoU detector {d.mean():.3f} -> refined {r.mean():.3f}; SAM mask kept "
            f"{n_sam}; refined worse by > 0.01 in {int(np.sum(r < d - 0.01))}")


def table(name, res):
    rows = []
    for mode in MODES:
        a = np.array([[v[mode]["a"][0], v[mode]["a"][1], v[mode]["b"][0], v[mode]["b"][1]] for v in res.values()])
        rows.append(f"{name:<22}{mode:<8}{len(a):>4}{a[:, 0].mean():>8.3f}{a[:, 1].mean():>9.3f}{a[:, 0].min():>8.3f}"
                    f"{a[:, 2].mean():>8.3f}{a[:, 3].mean():>9.3f}{a[:, 2].min():>8.3f}")
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--work", default="runs/sam")
    ap.add_argument("--baseline", action="store_true")
    ap.add_argument("--final", default=None, help="train on all images and write the decoder checkpoint here")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    from bccdet.adapters import sam_tune as T
    from bccdet.adapters.sam import SamModel
    from bccdet.data import dataset

    root = dataset("wbc-seg")
    if root is None:
        sys.exit("wbc-seg absent: set BCCDET_DATA or put the data sets in ../shared/datasets")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    items = T.wbc_seg_items(root, a.limit)
    rng = np.random.default_rng(0)  # bench/sam.py's jitter: same seed, same order
    jboxes = [T.jitter_box(it[3], rng) for it in items]
    model = SamModel(precision="fp32")  # the recorded CV figures are fp32
    from bccdet.adapters.yolo import YoloDetector
    from bccdet.weights import resolve

    dw, dname, dsha = resolve(None, "detector")
    det = YoloDetector(dw, name=dname, sha256=dsha)
    rec = dict(T.RECIPE)
    if a.steps:
        rec["steps"] = a.steps
    sets = []
    for mode, nv in (("field", rec["field_variants"]), ("window", rec["window_variants"])):
        p = work / f"examples-{mode}-{len(items)}.npz"
        if p.exists():
            sets.append(T.load_examples(p))
        else:
            ex = T.build_examples(model, items, nv, mode, seed=1 if mode == "field" else 2)
            T.save_examples(ex, p)
            sets.append(ex)
    cv_path = work / "cv.json"
    cv = json.loads(cv_path.read_text()) if cv_path.exists() else {}
    if cv.get("recipe") != rec or cv.get("n") != len(items) or cv.get("folds") != a.folds:
        cv = {"recipe": rec, "n": len(items), "folds": a.folds, "done": {}, "results": {}, "baseline": {},
              "c": {}, "c_baseline": {}}
    for f in range(a.folds):
        if str(f) in cv["done"]:
            continue
        test = [i for i in range(len(items)) if i % a.folds == f]
        train = [i for i in range(len(items)) if i % a.folds != f]
        T.reset_decoder(model)
        hist = T.finetune(model, [T.subset(s, train) for s in sets], steps=rec["steps"], recipe=rec,
                          log=lambda m, f=f: print(f"fold {f}: {m}", flush=True))
        cv["results"].update({str(k): v for k, v in evaluate(model, items, jboxes, test).items()})
        cv["c"].update({str(k): v for k, v in detector_vs_refined(model, items, test, det).items()})
        cv["done"][str(f)] = hist[-1]
        cv_path.write_text(json.dumps(cv))
        print(f"fold {f} done", flush=True)
    if a.baseline and len(cv["baseline"]) < len(items):
        T.reset_decoder(model)
        cv["baseline"] = {str(k): v for k, v in evaluate(model, items, jboxes, range(len(items))).items()}
        cv["c_baseline"] = {str(k): v for k, v in detector_vs_refined(model, items, range(len(items)), det).items()}
        cv_path.write_text(json.dumps(cv))
    print(describe())
    print(f"wbc-seg {len(items)} images, whole-cell masks; (a) true box, (b) jittered box (+-10% per side); "
          f"prompt grown by 5%; torch threads {torch.get_num_threads()}")
    print(f"{'model':<22}{'mode':<8}{'n':>4}{'IoU(a)':>8}{'Dice(a)':>9}{'min(a)':>8}{'IoU(b)':>8}{'Dice(b)':>9}{'min(b)':>8}")
    if cv["baseline"]:
        print("\n".join(table("LiteMedSAM (shipped)", cv["baseline"])))
    if len(cv["done"]) == a.folds:
        print("\n".join(table(f"fine-tuned, {a.folds}-fold CV", cv["results"])))
    print(f"\n(c) shipped detector {dname} on the same images, its WBC mask refined in window mode by:")
    if cv["c_baseline"]:
        print(table_c("LiteMedSAM (shipped)", cv["c_baseline"]))
    if len(cv["done"]) == a.folds:
        print(table_c(f"fine-tuned, {a.folds}-fold CV", cv["c"]))
    if a.final:
        T.reset_decoder(model)
        hist = T.finetune(model, sets, steps=rec["steps"], recipe=rec, log=lambda m: print(f"final: {m}", flush=True))
        cvm = {}
        if len(cv["done"]) == a.folds:
            for mode in MODES:
                arr = np.array([[v[mode]["a"][0], v[mode]["b"][0]] for v in cv["results"].values()])
                cvm[mode] = {"iou_true_box": round(float(arr[:, 0].mean()), 4), "iou_jittered_box": round(float(arr[:, 1].mean()), 4)}
        p = T.save_decoder(model, a.final, rec, {"wbc-seg": len(items), "examples": {s["size"]: len(s["emb"]) for s in sets}},
                           {"cv": cvm, "final_train": hist[-1]})
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
