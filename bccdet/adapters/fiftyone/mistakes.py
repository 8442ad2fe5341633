"""Label-error ranking on detections: the tagging rule (docs/curation.md, "Tagging rule") and the suspects CSV."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ...types import box_iou
from .cells import _image_meta
from .common import (AGN_KEY, GT_FIELD, LABEL_TAGS, PRED_FIELD, SAMPLE_TAG, TAG_CLASS, TAG_LOC, TAG_MISSING,
                     TAG_SPURIOUS, Rule, Suspect)
from .evaluate import _delete_eval


def _xyxy(dets, w: int, h: int) -> np.ndarray:
    if not dets:
        return np.zeros((0, 4), np.float32)
    return np.array([[x * w, y * h, (x + bw) * w, (y + bh) * h] for x, y, bw, bh in
                     (d.bounding_box for d in dets)], np.float32).reshape(-1, 4)


def tag_detection_suspects(samples, rule: Rule | None = None, pred_field: str = PRED_FIELD,
                           gt_field: str = GT_FIELD) -> list[Suspect]:
    """Apply the tagging rule (docs/curation.md); tag labels and samples; return suspects ranked by score.

    Matching is fiftyone's class-agnostic ``evaluate_detections`` at IoU ``rule.iou`` (eval key
    ``eval_agnostic``); class and box mistakes use the brain's ``mistakenness`` / ``mistakenness_loc``
    written on matched ground-truth boxes by ``brain_detection`` (skipped when those fields are absent).
    """
    rule = rule or Rule()
    ds = samples._dataset
    for f in (gt_field, pred_field):
        ds.untag_labels(list(LABEL_TAGS), label_fields=[f])
    ds.untag_samples(SAMPLE_TAG)
    _delete_eval(ds, AGN_KEY)
    samples.evaluate_detections(pred_field, gt_field=gt_field, eval_key=AGN_KEY, iou=rule.iou, classwise=False,
                                progress=False)
    out: list[Suspect] = []
    suspect_ids = []
    for s in samples.select_fields([gt_field, pred_field, "metadata"]).iter_samples(autosave=True, batch_size=32):
        meta = _image_meta(s)
        w, h = meta.width, meta.height
        gts = s[gt_field].detections if s[gt_field] else []
        prs = s[pred_field].detections if s[pred_field] else []
        gb, pb = _xyxy(gts, w, h), _xyxy(prs, w, h)
        iou = box_iou(pb, gb)  # preds x gts
        conf = np.array([d.confidence or 0.0 for d in prs], np.float32)
        n0 = len(out)

        def add(det, fld, box, reason, score, detail=""):
            det.tags = sorted(set(det.tags or []) | {reason})
            out.append(Suspect(s.id, s.filepath, det.id, fld, det.label, tuple(round(float(v), 1) for v in box),
                               reason, round(float(score), 4), detail))

        # with classwise=False a cross-class match is recorded as fp/fn *with* the partner's id: "unmatched"
        # means no partner id at all
        for j, d in enumerate(prs):
            if d[f"{AGN_KEY}_id"]:
                continue
            best = float(iou[j].max()) if iou.shape[1] else 0.0
            if conf[j] >= rule.missing_conf and best < rule.missing_max_iou:
                add(d, pred_field, pb[j], TAG_MISSING, conf[j], f"conf {conf[j]:.2f}, max IoU with labels {best:.2f}")
        for k, d in enumerate(gts):
            if not d[f"{AGN_KEY}_id"]:
                overlap = iou[:, k] * conf if len(prs) else np.zeros(0)
                best = float(iou[:, k].max()) if len(prs) else 0.0
                if best < rule.spurious_max_iou:
                    score = 1.0 - (float(overlap.max()) if len(overlap) else 0.0)
                    add(d, gt_field, gb[k], TAG_SPURIOUS, score, f"max IoU with predictions {best:.2f}")
                else:  # a confident prediction overlaps it, but below the match IoU: the box is misplaced
                    j = int(np.argmax(iou[:, k]))
                    if conf[j] >= rule.missing_conf:
                        add(d, gt_field, gb[k], TAG_LOC, (conf[j] + 1.0) / 2.0,
                            f"IoU {best:.2f} with a {conf[j]:.2f} {prs[j].label} prediction")
                continue
            mk = d["mistakenness"] if d.has_field("mistakenness") else None
            ml = d["mistakenness_loc"] if d.has_field("mistakenness_loc") else None
            pid = d[f"{AGN_KEY}_id"]
            pred = next((p for p in prs if p.id == pid), None)
            if mk is not None and pred is not None and pred.label != d.label and mk >= rule.class_mistakenness:
                add(d, gt_field, gb[k], TAG_CLASS, mk, f"labelled {d.label}, detector says {pred.label} ({pred.confidence:.2f})")
            elif ml is not None and ml >= rule.loc_mistakenness:
                add(d, gt_field, gb[k], TAG_LOC, ml, f"IoU {d[f'{AGN_KEY}_iou']:.2f} with a {pred.confidence:.2f} prediction" if pred else "")
        s["n_suspect"] = len(out) - n0
        if len(out) > n0:
            suspect_ids.append(s.id)
    if suspect_ids:
        ds.select(suspect_ids).tag_samples(SAMPLE_TAG)
    out.sort(key=lambda r: (-r.score, r.reason, r.filepath, r.box))
    return out


def suspect_counts(suspects: Iterable[Suspect]) -> dict:
    c: dict[str, int] = {}
    for s in suspects:
        c[s.reason] = c.get(s.reason, 0) + 1
    return c


def write_suspects_csv(suspects: Sequence[Suspect], path: Path) -> Path:
    from ...io import write_text_atomic
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "sample_id", "filepath", "label_id", "field", "kind", "x1", "y1", "x2", "y2", "reason", "score", "detail"])
    for i, s in enumerate(suspects, 1):
        w.writerow([i, s.sample_id, s.filepath, s.label_id, s.field, s.kind, *s.box, s.reason, f"{s.score:.4f}", s.detail])
    write_text_atomic(path, buf.getvalue())
    return Path(path)
