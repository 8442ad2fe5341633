"""A view, or the labels corrected by the review tags, back to our YOLO layout (and COCO)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ...types import KINDS, Cells
from .cells import _image_meta, detections_to_cells
from .common import (GT_FIELD, PRED_FIELD, SPLITS, TAG_ACCEPT, TAG_EXCLUDE, TAG_MISSING, TAG_REJECT, TAG_SPURIOUS,
                     CurationError, _fo)


# ---------------------------------------------------------------------- export
def corrected_cells(sample, gt_field: str = GT_FIELD, pred_field: str = PRED_FIELD, auto: bool = False) -> Cells:
    """Ground truth after review: boxes tagged ``reject`` removed, predictions tagged ``accept`` added.

    ``auto`` also applies the tagging rule blindly (removes ``possible_spurious`` boxes, adds
    ``possible_missing`` predictions) -- for experiments only; a person should look first.
    """
    fo = _fo()
    meta = _image_meta(sample)
    drop = {TAG_REJECT} | ({TAG_SPURIOUS} if auto else set())
    take = {TAG_ACCEPT} | ({TAG_MISSING} if auto else set())
    gts = [d for d in (sample[gt_field].detections if sample[gt_field] else []) if not drop & set(d.tags or [])]
    preds = []
    if sample.has_field(pred_field) and sample[pred_field] is not None:
        preds = [d for d in sample[pred_field].detections if take & set(d.tags or []) and not drop & set(d.tags or [])]
    cells = detections_to_cells(fo.Detections(detections=gts + preds), meta)
    cells.score = np.ones(len(cells), np.float32)
    return cells


def export_labels(samples, out: Path, formats: Sequence[str] = ("yolo",), task: str = "segment",
                  corrected: bool = True, auto: bool = False, overwrite: bool = False,
                  gt_field: str = GT_FIELD, pred_field: str = PRED_FIELD) -> dict:
    """Write a view's labels (as-is, or corrected by the review tags) in our YOLO layout, plus COCO JSON.

    Layout: ``OUT/images/<split>/``, ``OUT/labels/<split>/``, ``OUT/data.yaml``, ``OUT/summary.json`` (the
    same as ``bccdet convert``), and with ``coco``: ``OUT/annotations/<split>.json`` (file names relative to
    ``OUT/images/<split>/``, masks as RLE). Samples tagged ``exclude`` are left out.
    """
    from ...convert.common import DetSample, Report, write_yolo_detection

    formats = [f.lower() for f in formats]
    bad = sorted(set(formats) - {"yolo", "coco"})
    if bad or not formats:
        raise CurationError(f"unknown export format(s) {bad}; expected yolo and/or coco")
    if task not in ("detect", "segment"):
        raise CurationError(f"unknown task {task!r}; expected detect or segment")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CurationError(f"{out} exists and is not empty: choose another --out or pass --overwrite")
    view = samples.match_tags(TAG_EXCLUDE, bool=False) if corrected else samples
    samples_out = []
    used = set()
    for s in view.iter_samples():
        meta = _image_meta(s)
        if corrected:
            cells = corrected_cells(s, gt_field, pred_field, auto=auto)
        else:
            cells = detections_to_cells(s[gt_field], meta)
        split = s["split"] if s.has_field("split") and s["split"] in SPLITS else next(
            (t for t in s.tags if t in SPLITS), "train")
        stem = Path(s.filepath).stem
        k, base = 1, stem
        while (split, stem) in used:
            stem = f"{base}_{k}"
            k += 1
        used.add((split, stem))
        samples_out.append(DetSample(image=Path(s.filepath), cells=cells, split=split, source="fiftyone", name=stem))
    if not samples_out:
        raise CurationError("nothing to export: the view is empty")
    report = Report(samples._dataset.name)
    write_yolo_detection(samples_out, out, report, task=task, masks="ellipse")
    if "coco" in formats:
        (out / "annotations").mkdir(exist_ok=True)
        for sp in SPLITS:
            part = [s for s in samples_out if s.split == sp]
            if not part:
                continue
            doc = {"images": [], "annotations": [],
                   "categories": [{"id": i + 1, "name": k, "supercategory": "cell"} for i, k in enumerate(KINDS)]}
            nid = 1
            for i, s in enumerate(part, 1):
                m = s.cells.meta
                doc["images"].append({"id": i, "file_name": f"{s.name}{s.image.suffix.lower()}", "width": m.width, "height": m.height})
                anns = s.cells.to_coco(image_id=i, first_id=nid)
                nid += len(anns)
                doc["annotations"] += anns
            (out / "annotations" / f"{sp}.json").write_text(json.dumps(doc))
    if "yolo" not in formats:
        import shutil

        shutil.rmtree(out / "labels", ignore_errors=True)
        (out / "data.yaml").unlink(missing_ok=True)
    n_obj = sum(len(s.cells) for s in samples_out)
    return {"out": str(out), "images": len(samples_out), "objects": n_obj,
            "splits": {sp: sum(1 for s in samples_out if s.split == sp) for sp in SPLITS if any(s.split == sp for s in samples_out)}}
