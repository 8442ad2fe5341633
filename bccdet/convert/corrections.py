"""Apply a reviewed list of label corrections to a converted YOLO detect / segment set.

The list is a CSV with one edit per row::

    split,image,action,kind,x1,y1,x2,y2,reason
    test,BloodImage_00171,add,wbc,149,0,381,212,"neutrophil at the top edge has no box"
    test,BloodImage_00135,relabel,wbc,41,344,184,479,"WBC labelled platelet"
    test,BloodImage_00007,delete,,253,426,339,479,"box on background"

``image`` is matched against the file stem with or without the source prefix (``bccd__``); the box
is in pixels. ``add`` appends a box (segment sets get the ellipse inscribed in it as its mask),
``relabel`` gives the labelled box that best overlaps the given one (IoU >= ``min_iou``) the new
kind, ``delete`` removes it. Every edit must apply: an image or box that is not found is an error,
so a list written for one version of a data set cannot silently do nothing on another.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..io import IMAGE_SUFFIXES, InputError
from ..types import KINDS, Cells, box_iou
from .common import DetSample, Report, ellipse_masks

ACTIONS = ("add", "relabel", "delete")
FIELDS = ("split", "image", "action", "kind", "x1", "y1", "x2", "y2", "reason")


class CorrectionError(InputError):
    pass


def read_corrections(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise CorrectionError(f"{path}: no such corrections file")
    rows = []
    with path.open(newline="") as f:
        rd = csv.DictReader(line for line in f if line.strip() and not line.lstrip().startswith("#"))
        missing = [c for c in FIELDS if c not in (rd.fieldnames or [])]
        if missing:
            raise CorrectionError(f"{path}: missing columns {', '.join(missing)} (expected {','.join(FIELDS)})")
        for i, r in enumerate(rd, start=2):
            act = (r["action"] or "").strip()
            kind = (r["kind"] or "").strip()
            if act not in ACTIONS:
                raise CorrectionError(f"{path}:{i}: action {act!r} is not one of {', '.join(ACTIONS)}")
            if act != "delete" and kind not in KINDS:
                raise CorrectionError(f"{path}:{i}: kind {kind!r} is not one of {', '.join(KINDS)}")
            try:
                box = [float(r[k]) for k in ("x1", "y1", "x2", "y2")]
            except (TypeError, ValueError):
                raise CorrectionError(f"{path}:{i}: box must be four numbers x1,y1,x2,y2") from None
            if box[2] <= box[0] or box[3] <= box[1]:
                raise CorrectionError(f"{path}:{i}: empty box {box}")
            rows.append(dict(line=i, split=r["split"].strip(), image=r["image"].strip(), action=act, kind=kind,
                             box=np.asarray(box, np.float32), reason=(r["reason"] or "").strip()))
    return rows


def _stem_matches(stem: str, name: str) -> bool:
    """``name`` as written in the corrections file: a stem or a file name (``bccd__X.jpg``), with or
    without the source prefix."""
    name = name.strip()
    if Path(name).suffix.lower() in IMAGE_SUFFIXES:
        name = Path(name).stem
    return stem == name or stem.split("__", 1)[-1] == name


def apply_corrections(samples: list[DetSample], rows: list[dict], report: Report, min_iou: float = 0.7) -> list[DetSample]:
    """Apply ``rows`` (from :func:`read_corrections`) to ``samples`` in place; notes each edit in ``report``."""
    for r in rows:
        hits = [s for s in samples if s.split == r["split"] and _stem_matches(s.name, r["image"])]
        if not hits:
            raise CorrectionError(f"line {r['line']}: no image {r['image']!r} in split {r['split']!r}")
        s = hits[0]
        cells = s.cells
        if r["action"] == "add":
            new = Cells(xyxy=r["box"][None], kind=[r["kind"]], meta=cells.meta)
            if cells.has_masks:
                new = ellipse_masks(new)
            s.cells = Cells.concat([cells, new], meta=cells.meta)
            what = f"added {r['kind']} {r['box'].round().tolist()}"
        else:
            iou = box_iou(r["box"][None], cells.xyxy)[0]
            j = int(np.argmax(iou)) if len(iou) else -1
            if j < 0 or iou[j] < min_iou:
                raise CorrectionError(f"line {r['line']}: no labelled box in {s.name} overlaps {r['box'].round().tolist()} "
                                      f"with IoU >= {min_iou} (best {float(iou[j]) if j >= 0 else 0:.2f})")
            if r["action"] == "relabel":
                old = cells.kind[j]
                cells.kind[j] = r["kind"]
                what = f"relabelled {old} -> {r['kind']} {cells.xyxy[j].round().tolist()}"
            else:
                keep = np.ones(len(cells), bool)
                keep[j] = False
                what = f"deleted {cells.kind[j]} {cells.xyxy[j].round().tolist()}"
                s.cells = cells[keep]
        report.notes.append(f"{s.split}/{s.name}: {what} ({r['reason'] or 'no reason given'})")
    return samples
