"""One image's outputs: ``report.json`` (:func:`report_dict`), ``cells.csv``, ``overlay.png``, ``report.html``
(:mod:`bccdet.report.pages`) and, on request, COCO and QuPath GeoJSON (:func:`write_outputs`)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..types import KINDS, Cells, rle_encode
from .pages import rbc_gallery_crops, render_html, wbc_crops
from .summary import summarize


def report_dict(cells: Cells, models: dict, timings: dict | None = None) -> dict[str, Any]:
    m = cells.meta
    out_cells = []
    for i in range(len(cells)):
        x1, y1, x2, y2 = (round(float(v), 2) for v in cells.xyxy[i])
        out_cells.append({
            "id": i + 1,
            "box": [x1, y1, x2, y2],
            "kind": cells.kind[i],
            "score": round(float(cells.score[i]), 4),
            "mask": rle_encode(cells.full_mask(i)) if cells.masks[i] is not None else None,
            "mask_source": cells.mask_source[i] if cells.mask_source[i] != "none" else None,
            "area_px": int(cells.masks[i].sum()) if cells.masks[i] is not None else None,
            "label": cells.label[i],
            "label_score": None if np.isnan(cells.label_score[i]) else round(float(cells.label_score[i]), 4),
            "review": bool(cells.review[i]),
            "unfamiliar": bool(cells.unfamiliar[i]) if cells.label[i] is not None else None,
            **({"morphology": cells.morphology[i],
                "morphology_score": round(float(cells.morphology_score[i]), 4)} if cells.morphology[i] is not None else {}),
        })
    rep = {
        "image": {"path": m.path, "width": m.width, "height": m.height,
                  **({"detector_scale": round(float(m.scale), 4)} if m.scale != 1.0 else {}),
                  **({"edge_slivers_dropped": int(m.edge_dropped)} if m.edge_dropped else {})},
        "models": models,
        "cells": out_cells,
        "summary": summarize(cells),
    }
    if timings:
        rep["timings_ms"] = {k: round(v, 1) for k, v in timings.items()}
    return rep


CELLS_CSV_HEADER = ["id", "kind", "score", "x1", "y1", "x2", "y2", "area_px", "mask_source", "label", "label_score",
                    "review", "unfamiliar", "morphology", "morphology_score"]


def cell_row(cells: Cells, i: int, offset: tuple[float, float] = (0.0, 0.0)) -> list:
    """Cell ``i`` as a ``cells.csv`` row without its id (``CELLS_CSV_HEADER[1:]``); ``offset`` (x, y) moves
    the box (a whole-slide tile's cells into slide coordinates)."""
    box = cells.xyxy[i] + np.array([offset[0], offset[1], offset[0], offset[1]], np.float32)
    area = int(cells.masks[i].sum()) if cells.masks[i] is not None else ""
    ls = "" if np.isnan(cells.label_score[i]) else f"{cells.label_score[i]:.4f}"
    return [cells.kind[i], f"{cells.score[i]:.4f}", *(f"{v:.1f}" for v in box), area, cells.mask_source[i],
            cells.label[i] or "", ls, int(bool(cells.review[i])),
            "" if cells.label[i] is None else int(bool(cells.unfamiliar[i])),
            cells.morphology[i] or "", "" if np.isnan(cells.morphology_score[i]) else f"{cells.morphology_score[i]:.4f}"]


def cells_csv(cells: Cells) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CELLS_CSV_HEADER)
    for i in range(len(cells)):
        w.writerow([i + 1, *cell_row(cells, i)])
    return buf.getvalue()


KIND_COLORS = {"rbc": "#e5484d", "wbc": "#3e63dd", "platelet": "#30a46c"}


def overlay(image: np.ndarray, cells: Cells) -> np.ndarray:
    """Masks, boxes and labels drawn with supervision's annotators (RGB in, RGB out).

    supervision's annotators draw on OpenCV's BGR order: the scene is flipped to BGR and back.
    """
    import supervision as sv

    scene = np.ascontiguousarray(image[..., ::-1])
    if not len(cells):
        return image.copy()
    det = cells.to_detections()
    palette = sv.ColorPalette.from_hex([KIND_COLORS[k] for k in KINDS])
    k = 1.0 / min(1.0, max(float(cells.meta.scale), 1e-3))  # lines and text grow with cells the detector shrank
    if det.mask is not None:
        scene = sv.MaskAnnotator(color=palette, opacity=0.35).annotate(scene, det)
    scene = sv.BoxAnnotator(color=palette, thickness=max(1, round(k))).annotate(scene, det)
    wbc = det[det.data["kind"] == "wbc"]
    if len(wbc):
        labels = [f"{lab or 'wbc'} {s:.2f}" if lab else f"wbc {c:.2f}" for lab, s, c in
                  zip(wbc.data["label"], np.nan_to_num(wbc.data["label_score"]), wbc.confidence)]
        scene = sv.LabelAnnotator(color=palette, text_scale=0.4 * k, text_thickness=max(1, round(k)),
                                  text_padding=round(2 * k)).annotate(scene, wbc, labels=labels)
    return np.ascontiguousarray(scene[..., ::-1])


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    b = io.BytesIO()
    # zlib level 3: a 640x480 overlay in ~25 ms and ~310 kB; optimize=True took ~460 ms for 268 kB,
    # longer than the whole detect + SAM + classify pipeline of that field
    Image.fromarray(arr).save(b, format="PNG", compress_level=3)
    return b.getvalue()


def write_outputs(folder: Path, image: np.ndarray, cells: Cells, models: dict, timings: dict | None = None,
                  formats: tuple[str, ...] = ()) -> dict:
    """Write every output of one image into ``folder`` (the caller makes it atomic)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rep = report_dict(cells, models, timings)
    (folder / "report.json").write_text(json.dumps(rep, indent=1))
    (folder / "cells.csv").write_text(cells_csv(cells))
    ov = _png(overlay(image, cells))
    (folder / "overlay.png").write_bytes(ov)
    page = render_html(rep, ov, wbc_crops(image, cells), cells, rbc_gallery_crops(image, cells))
    (folder / "report.html").write_text(page, encoding="utf-8")
    if "coco" in formats:
        (folder / "coco.json").write_text(json.dumps(coco_document(cells)))
    if "geojson" in formats:
        (folder / "cells.geojson").write_text(json.dumps(geojson_document(cells)))
    return rep


def coco_document(cells: Cells) -> dict:
    m = cells.meta
    return {
        "images": [{"id": 1, "file_name": Path(m.path).name, "width": m.width, "height": m.height}],
        "categories": [{"id": i + 1, "name": k, "supercategory": "cell"} for i, k in enumerate(KINDS)],
        "annotations": cells.to_coco(image_id=1),
    }


def geojson_document(cells: Cells) -> dict:
    """QuPath-readable GeoJSON: one detection Feature per cell (polygon outline; box when no mask)."""
    from ..types import mask_to_polygon

    feats = []
    for i in range(len(cells)):
        poly = mask_to_polygon(cells.masks[i], cells.mask_offset[i]) if cells.masks[i] is not None else None
        if poly is None:
            x1, y1, x2, y2 = (float(v) for v in cells.xyxy[i])
            poly = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
        ring = [[round(float(x), 2), round(float(y), 2)] for x, y in poly]
        ring.append(ring[0])
        name = cells.label[i] or cells.kind[i]
        feats.append({
            "type": "Feature",
            "id": str(i + 1),
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "detection",
                "classification": {"name": name, "color": _rgb(KIND_COLORS[cells.kind[i]])},
                "kind": cells.kind[i], "score": float(cells.score[i]),
                "label": cells.label[i], "review": bool(cells.review[i]),
            },
        })
    return {"type": "FeatureCollection", "features": feats}


def _rgb(hexcol: str) -> list[int]:
    return [int(hexcol[i : i + 2], 16) for i in (1, 3, 5)]
