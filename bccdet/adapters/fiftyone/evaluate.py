"""``evaluate_detections`` and the fiftyone.brain runs (mistakenness, hardness, uniqueness) on detections."""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from ...types import KINDS
from .common import EMB_FIELD, EVAL_KEY, GT_FIELD, PRED_FIELD, _fo


# ---------------------------------------------------------------------- evaluation and brain
def _delete_eval(ds, key: str) -> None:
    if key in ds.list_evaluations():
        ds.delete_evaluation(key)


def _delete_brain(ds, key: str) -> None:
    if key in ds.list_brain_runs():
        ds.delete_brain_run(key)


def evaluate(samples, pred_field: str = PRED_FIELD, gt_field: str = GT_FIELD, eval_key: str = EVAL_KEY,
             iou: float = 0.5, compute_map: bool = True) -> dict:
    """``evaluate_detections`` (class-wise, COCO style): per-sample TP/FP/FN fields and a per-class report."""
    ds = samples._dataset
    _delete_eval(ds, eval_key)
    res = samples.evaluate_detections(pred_field, gt_field=gt_field, eval_key=eval_key, iou=iou,
                                      compute_mAP=compute_map, progress=False)
    classes = [k for k in KINDS if k in set(samples.distinct(f"{gt_field}.detections.label"))
               | set(samples.distinct(f"{pred_field}.detections.label"))]
    rep = res.report(classes=classes) if classes else {}
    out = {"eval_key": eval_key, "iou": iou, "per_class": {}, "samples": len(samples)}
    for c in classes:
        r = rep.get(c, {})
        out["per_class"][c] = {k: round(float(r.get(k, 0.0)), 4) for k in ("precision", "recall", "f1-score")} | {
            "support": int(r.get("support", 0))}
    if "micro avg" in rep:
        out["micro"] = {k: round(float(v), 4) for k, v in rep["micro avg"].items()}
    if compute_map:
        try:
            out["mAP"] = round(float(res.mAP()), 4)
        except Exception:  # no predictions at all
            out["mAP"] = None
    out["tp"] = int(sum(samples.values(f"{eval_key}_tp")))
    out["fp"] = int(sum(samples.values(f"{eval_key}_fp")))
    out["fn"] = int(sum(samples.values(f"{eval_key}_fn")))
    return out


def format_eval(ev: dict) -> str:
    lines = [f"{'class':<10}{'P':>8}{'R':>8}{'F1':>8}{'support':>9}"]
    for c, r in ev.get("per_class", {}).items():
        lines.append(f"{c:<10}{r['precision']:>8.3f}{r['recall']:>8.3f}{r['f1-score']:>8.3f}{r['support']:>9}")
    if "micro" in ev:
        m = ev["micro"]
        lines.append(f"{'micro':<10}{m.get('precision', 0):>8.3f}{m.get('recall', 0):>8.3f}{m.get('f1-score', 0):>8.3f}{int(m.get('support', 0)):>9}")
    tail = f"TP {ev.get('tp')}  FP {ev.get('fp')}  FN {ev.get('fn')}  (IoU {ev.get('iou')}, eval key {ev.get('eval_key')!r})"
    if ev.get("mAP") is not None:
        tail += f"  mAP {ev['mAP']:.3f}"
    lines.append(tail)
    return "\n".join(lines)


def _summary_classification(samples, pred_field: str, out_field: str) -> None:
    """Per sample: a Classification whose logits are log([p, 1-p]) for p the mean detector confidence.

    fiftyone.brain's hardness is the entropy of softmax(logits), so the image's hardness is the binary entropy
    of the mean confidence of its predicted cells (highest when the detector hovers around 0.5).
    """
    fo = _fo()
    for s in samples.select_fields([pred_field]).iter_samples(autosave=True, batch_size=64):
        dets = s[pred_field]
        confs = [d.confidence for d in (dets.detections if dets else []) if d.confidence is not None]
        p = float(np.clip(np.mean(confs), 1e-4, 1 - 1e-4)) if confs else 0.5
        s[out_field] = fo.Classification(label="cells" if confs else "no_cells", confidence=p,
                                         logits=[math.log(p), math.log(1 - p)])


def brain_detection(samples, pred_field: str = PRED_FIELD, gt_field: str = GT_FIELD,
                    uniqueness: bool = True, log: Callable[[str], None] = print) -> dict:
    """fiftyone.brain runs: mistakenness (+ possible missing / spurious), hardness, uniqueness. Returns timings."""
    import fiftyone.brain as fob

    ds = samples._dataset
    t = {}
    t0 = time.perf_counter()
    _delete_brain(ds, "mistakenness")
    fob.compute_mistakenness(samples, pred_field, label_field=gt_field, progress=False)
    t["mistakenness_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _delete_brain(ds, "hardness")
    _summary_classification(samples, pred_field, "detector_confidence")
    fob.compute_hardness(samples, "detector_confidence", progress=False)
    t["hardness_s"] = time.perf_counter() - t0
    if uniqueness:
        t0 = time.perf_counter()
        n_emb = len(samples.exists(EMB_FIELD))
        if n_emb == len(samples) and n_emb > 1:
            _delete_brain(ds, "uniqueness")
            fob.compute_uniqueness(samples, embeddings=EMB_FIELD, progress=False)
            t["uniqueness_s"] = time.perf_counter() - t0
        else:
            log(f"note: uniqueness skipped: {len(samples) - n_emb} image(s) have no detector embedding "
                "(run the detector: omit --predictions, or pass --detector)")
    return t
