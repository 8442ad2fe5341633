"""``Cells`` <-> ``fo.Detections``, and the Cells of an ``analyze`` report.json.

FiftyOne wants each instance mask *cropped to its box* with a relative ``bounding_box = [x, y, w, h]`` in
0..1; bccdet keeps masks cropped to the integer hull of the box, so the conversion pastes the crop into that hull.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ...io import image_size
from ...types import KINDS, Cells, SmearMeta, rle_decode
from .common import _fo


def _hull(box: Sequence[float], w: int, h: int, eps: float = 1e-3) -> tuple[int, int, int, int]:
    """Integer pixel hull of a box (``eps`` absorbs the float error of relative <-> pixel round trips)."""
    x0 = max(0, min(w, int(math.floor(box[0] + eps))))
    y0 = max(0, min(h, int(math.floor(box[1] + eps))))
    x1 = max(x0, min(w, int(math.ceil(box[2] - eps))))
    y1 = max(y0, min(h, int(math.ceil(box[3] - eps))))
    return x0, y0, x1, y1


def _mask_in_hull(mask: np.ndarray, offset: Sequence[int], hull: tuple[int, int, int, int]) -> np.ndarray:
    """The part of a (crop, offset) mask inside ``hull``, as a bool array of the hull's size."""
    x0, y0, x1, y1 = hull
    out = np.zeros((y1 - y0, x1 - x0), bool)
    ox, oy = int(offset[0]), int(offset[1])
    mh, mw = mask.shape
    xs, ys = max(x0, ox), max(y0, oy)
    xe, ye = min(x1, ox + mw), min(y1, oy + mh)
    if xe > xs and ye > ys:
        out[ys - y0 : ye - y0, xs - x0 : xe - x0] = mask[ys - oy : ye - oy, xs - ox : xe - ox]
    return out


def cells_to_detections(cells: Cells, with_masks: bool = True):
    """``Cells`` -> ``fo.Detections`` (label = kind; classifier label in ``cell_type``; masks box-cropped)."""
    fo = _fo()
    w, h = cells.meta.width, cells.meta.height
    if w <= 0 or h <= 0:
        raise ValueError("cells_to_detections needs meta.width/height")
    dets = []
    for i in range(len(cells)):
        x1, y1, x2, y2 = (float(v) for v in cells.xyxy[i])
        kw: dict[str, Any] = {}
        m = cells.masks[i]
        if with_masks and m is not None:
            hull = _hull((x1, y1, x2, y2), w, h)
            if hull[2] > hull[0] and hull[3] > hull[1]:
                x1, y1, x2, y2 = hull  # the box FiftyOne draws the mask in is the mask's own pixel grid
                kw["mask"] = _mask_in_hull(m, cells.mask_offset[i], hull)
        d = fo.Detection(
            label=str(cells.kind[i]),
            bounding_box=[x1 / w, y1 / h, (x2 - x1) / w, (y2 - y1) / h],
            confidence=float(cells.score[i]),
            **kw,
        )
        if cells.label[i] is not None:
            d["cell_type"] = str(cells.label[i])
            d["cell_type_score"] = float(cells.label_score[i])
        if cells.mask_source[i] != "none":
            d["mask_source"] = str(cells.mask_source[i])
        if bool(cells.review[i]):
            d["review"] = True
        if cells.morphology[i] is not None:  # red-cell morphology (docs/rbc.md)
            d["morphology"] = str(cells.morphology[i])
            d["morphology_score"] = float(cells.morphology_score[i])
        dets.append(d)
    return fo.Detections(detections=dets)


def detections_to_cells(dets, meta: SmearMeta, kinds: Sequence[str] = KINDS) -> Cells:
    """``fo.Detections`` (or None) -> ``Cells``; labels outside ``kinds`` raise; masks resized to the box hull."""
    import cv2

    from ...types import normalize_kind

    w, h = meta.width, meta.height
    if dets is None or not len(dets.detections):
        return Cells.empty(meta)
    xyxy, kind, score, masks, offs, label, lscore, src, review = [], [], [], [], [], [], [], [], []
    morph, mscore = [], []
    any_mask = False
    for d in dets.detections:
        x, y, bw, bh = d.bounding_box
        box = [x * w, y * h, (x + bw) * w, (y + bh) * h]
        box = [min(max(box[0], 0.0), w), min(max(box[1], 0.0), h), min(max(box[2], 0.0), w), min(max(box[3], 0.0), h)]
        xyxy.append(box)
        kind.append(normalize_kind(d.label))
        score.append(1.0 if d.confidence is None else float(d.confidence))
        m = d.mask
        if m is not None:
            any_mask = True
            x0, y0, x1, y1 = _hull(box, w, h)
            m = np.asarray(m)
            if m.ndim == 3:
                m = m[..., 0]
            if (abs(m.shape[0] - (y1 - y0)) > 1 or abs(m.shape[1] - (x1 - x0)) > 1) and y1 > y0 and x1 > x0:
                # a mask on another grid (another tool's export): resample it onto the box's pixels
                m = cv2.resize(m.astype(np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
            masks.append(m.astype(bool))
            offs.append((x0, y0))
        else:
            masks.append(None)
            offs.append((0, 0))
        ct = d.get_field("cell_type") if d.has_field("cell_type") else None
        label.append(ct)
        cs = d.get_field("cell_type_score") if d.has_field("cell_type_score") else None
        lscore.append(np.nan if cs is None else float(cs))
        ms = d.get_field("mask_source") if d.has_field("mask_source") else None
        src.append(ms if ms is not None else ("label" if m is not None else "none"))
        review.append(bool(d.get_field("review")) if d.has_field("review") else False)
        morph.append(d.get_field("morphology") if d.has_field("morphology") else None)
        mv = d.get_field("morphology_score") if d.has_field("morphology_score") else None
        mscore.append(np.nan if mv is None else float(mv))
    return Cells(
        xyxy=np.array(xyxy, np.float32).reshape(-1, 4), kind=kind, score=score,
        masks=masks if any_mask else None, mask_offset=np.array(offs, np.int32).reshape(-1, 2) if any_mask else None,
        mask_source=src, label=label, label_score=lscore, review=review, meta=meta,
        morphology=morph, morphology_score=mscore,
    )


def cells_from_report(rep: dict, meta: SmearMeta | None = None) -> Cells:
    """Cells of one ``analyze`` report.json (docs/report.md)."""
    im = rep.get("image", {})
    meta = meta or SmearMeta(path=im.get("path", ""), width=int(im.get("width", 0)), height=int(im.get("height", 0)))
    rows = rep.get("cells", [])
    if not rows:
        return Cells.empty(meta)
    xyxy = np.array([c["box"] for c in rows], np.float32).reshape(-1, 4)
    masks, offs, any_mask = [], [], False
    for c, box in zip(rows, xyxy):
        if c.get("mask"):
            full = rle_decode(c["mask"])
            m, o = Cells.crop_mask(full, box)
            masks.append(m)
            offs.append(o)
            any_mask = True
        else:
            masks.append(None)
            offs.append((0, 0))
    return Cells(
        xyxy=xyxy, kind=[c["kind"] for c in rows], score=[c.get("score", 1.0) for c in rows],
        masks=masks if any_mask else None, mask_offset=offs if any_mask else None,
        mask_source=[c.get("mask_source") or ("none" if c.get("mask") is None else "yolo") for c in rows],
        label=[c.get("label") for c in rows],
        label_score=[np.nan if c.get("label_score") is None else c["label_score"] for c in rows],
        review=[bool(c.get("review", False)) for c in rows], meta=meta,
        morphology=[c.get("morphology") for c in rows],
        morphology_score=[np.nan if c.get("morphology_score") is None else c["morphology_score"] for c in rows],
    )


def _image_meta(sample) -> SmearMeta:
    md = sample.metadata
    if md is None or not md.width:
        w, h = image_size(sample.filepath)
    else:
        w, h = int(md.width), int(md.height)
    return SmearMeta(path=sample.filepath, width=w, height=h)
