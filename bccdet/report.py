"""Counts, differential and flags -> report.json / cells.csv / overlay.png / report.html (see docs/report.md)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .morphology import morphology_counts, morphology_summary
from .types import KINDS, Cells, rle_encode
from .vocab import LABELS, NOT_IN_DIFFERENTIAL, RBC_MORPHOLOGY

# Adult reference intervals of the WBC differential, percent (typical laboratory ranges; docs/report.md).
REFERENCE_INTERVALS = {
    "neutrophil": (40.0, 75.0),
    "lymphocyte": (20.0, 45.0),
    "monocyte": (2.0, 10.0),
    "eosinophil": (0.0, 6.0),
    "basophil": (0.0, 2.0),
}
MIN_WBC_FOR_DIFFERENTIAL = 100  # a manual differential counts 100 leukocytes
SMUDGE_FLAG_PERCENT = 10.0
# `unfamiliar_images`: this share of the typed cells lie outside the classifier's training data
# (bench/classifier_familiarity.py: PBC test 1.5 %, held-out DeepAPL patients <= 30 %, another lab 48 %,
# BCCD phone-camera WBCs 87 %). A call of single cells needs 10 of them; an analyzed image flags its own WBCs.
UNFAMILIAR_CALL_FRACTION = 0.35
UNFAMILIAR_MIN_CELLS = 10


def unfamiliar_flag(n_unfamiliar: int, n_scored: int, min_cells: int = UNFAMILIAR_MIN_CELLS) -> dict | None:
    """The ``unfamiliar_images`` flag, or None."""
    if n_scored < max(1, min_cells) or n_unfamiliar < UNFAMILIAR_CALL_FRACTION * n_scored:
        return None
    return {"code": "unfamiliar_images", "message": (
        f"{n_unfamiliar} of {n_scored} typed cells ({100.0 * n_unfamiliar / n_scored:.0f}%) look unlike the CellaVision "
        "images the classifier was trained on (another lab, camera or stain?): expect less reliable labels (measured: "
        "0.63 accuracy on another lab's normal cells against 0.99 on PBC); review them")}


def abnormal_flag(code: str, what: str, n_unfamiliar: int, then: str = "") -> dict:
    """An abnormal-cell flag; when some of those cells are unfamiliar (unlike the classifier's training
    images), the message says how many and the flag carries ``unfamiliar``. On normal blood from another
    lab (TXL-PBC's 575 x 575 fields) 33 of the 40 abnormal calls were unfamiliar; on held-out DeepAPL
    patients 7 % of all cells are (weights/bccdet-effnetl0-wbc288.md)."""
    msg = what
    if n_unfamiliar:
        msg += f" ({n_unfamiliar} of them unlike the training images: less reliable)"
    f = {"code": code, "message": msg + (f": {then}" if then else "")}
    if n_unfamiliar:
        f["unfamiliar"] = int(n_unfamiliar)
    return f


# The one rule set of abnormal-cell flags, for a field, a slide (batch) and a patient (classify): each
# label below raises its flag when any cell is typed so; smudge cells from SMUDGE_FLAG_PERCENT of the WBCs.
ABNORMAL_FLAGS = (("blast", "blasts_present"), ("promyelocyte", "promyelocytes_present"),
                  ("variant_lymphocyte", "variant_lymphocytes_present"))


def wbc_flags(counts: dict[str, int], percent: dict[str, float], unfamiliar_by: dict[str, int],
              alone: dict[str, int] | None = None, then: str = "review the gallery") -> list[dict]:
    """Abnormal-cell flags (:data:`ABNORMAL_FLAGS`, smudge cells) from the typed cells' ``counts`` per label,
    their ``percent`` of the differential, how many of each were ``unfamiliar`` and, after a call-level
    prior adaptation (classify --adapt), the counts of each cell taken ``alone``: a flag is raised when
    either shows the label."""
    flags = []
    alone = alone or {}
    for lab, code in ABNORMAL_FLAGS:
        n, n_alone = counts.get(lab, 0), alone.get(lab, counts.get(lab, 0))
        if n or n_alone:
            msg = f"{n} {lab.replace('_', ' ')}(s) found ({percent.get(lab, 0.0)}%)"
            if n_alone != n:
                msg += f", {n_alone} when each cell is taken alone"
            flags.append(abnormal_flag(code, msg, unfamiliar_by.get(lab, 0), then))
    if percent.get("smudge_cell", 0.0) >= SMUDGE_FLAG_PERCENT:
        flags.append(abnormal_flag("smudge_cells", f"smudge cells {percent['smudge_cell']}% of WBCs "
                                   f"(>= {SMUDGE_FLAG_PERCENT:g}%)", unfamiliar_by.get("smudge_cell", 0)))
    return flags


DISCLAIMER = "Research use only: flags point a trained reader at cells to review; they are not a diagnosis."


def differential_base(counts: dict[str, int]) -> tuple[int, dict]:
    """(leukocytes: the differential's base, the summary keys for typed cells outside it) of label counts.

    Erythroblasts and platelets are left out of the differential, as in a manual count: they are listed
    in ``not_in_differential`` and erythroblasts also given per 100 WBC (``nrbc_per_100_wbc``); both keys
    are present only when they apply. Used by ``analyze`` (:func:`summarize`) and ``classify`` summaries.
    """
    n_leuk = sum(v for lab, v in counts.items() if lab not in NOT_IN_DIFFERENTIAL)
    other = {lab: counts[lab] for lab in NOT_IN_DIFFERENTIAL if counts.get(lab)}
    extra: dict[str, Any] = {}
    if other:
        extra["not_in_differential"] = other
        if other.get("erythroblast") and n_leuk:
            extra["nrbc_per_100_wbc"] = round(100.0 * other["erythroblast"] / n_leuk, 1)
    return n_leuk, extra


# Measured 2026-11-26 (stop 20): the default detector on the first 24 BCCD test fields turned grey found
# 0.35 of the WBCs and 0.18 of the platelets (1.00 / 0.93 in colour; bench/detector_robustness.py), and
# the default classifier typed 0.78 of 288 PBC test cells right in grey (0.986 in colour).
GREY_MESSAGE = ("the image has no colour (a monochrome camera or a grey scan): the models were trained on stained "
                "colour images; in grey they missed most white cells and platelets of BCCD fields and typed a fifth "
                "of PBC cells wrongly. Counts and types are not reliable: use a colour image")


def summarize(cells: Cells) -> dict[str, Any]:
    """The report.json ``summary`` of a field's cells (:func:`summarize_counts` of its totals)."""
    wbc = [i for i, k in enumerate(cells.kind) if k == "wbc"]
    return summarize_counts(cells.counts(), [cells.label[i] for i in wbc], [bool(cells.unfamiliar[i]) for i in wbc],
                            grey=bool(getattr(getattr(cells, "meta", None), "grey", False)),
                            rbc_morphology=rbc_morphology_counts(cells), rbc_score=rbc_morphology_median_score(cells))


def summarize_counts(counts: dict[str, int], wbc_labels: list, wbc_unfamiliar: list | None = None, grey: bool = False,
                     rbc_morphology: dict[str, int] | None = None, rbc_score: float | None = None) -> dict[str, Any]:
    """The one summary of a field or a whole slide, from totals: cells per kind, each WBC's label (None:
    not typed) and unfamiliar flag, red cells per morphology type and their median score. A slide's summary
    (batch) is exactly that of all its fields' cells together, in memory proportional to its WBCs."""
    counts = dict(counts)
    unfamiliar = list(wbc_unfamiliar) if wbc_unfamiliar else [False] * len(wbc_labels)
    typed = [lab for lab in wbc_labels if lab is not None]
    by_label = Counter(typed)
    n_lab, outside = differential_base(by_label)
    diff = {lab: {"count": by_label[lab], "percent": round(100.0 * by_label[lab] / n_lab, 1)}
            for lab in LABELS if by_label.get(lab) and lab not in NOT_IN_DIFFERENTIAL}
    flags = []
    n_wbc = counts["wbc"]
    if n_wbc < MIN_WBC_FOR_DIFFERENTIAL:
        flags.append({"code": "few_wbc", "message": f"only {n_wbc} WBC found (< {MIN_WBC_FOR_DIFFERENTIAL}): the differential is not reliable; analyse more fields"})
    if grey:
        flags.append({"code": "grey_image", "message": GREY_MESSAGE})
    if n_lab == 0 and n_wbc:
        flags.append({"code": "not_classified", "message": "WBCs were not classified (classifier off or unavailable): no differential"})
    unf_by = Counter(lab for lab, u in zip(wbc_labels, unfamiliar) if lab is not None and u)
    flags += wbc_flags(by_label, {lab: d["percent"] for lab, d in diff.items()}, unf_by)
    if n_lab >= MIN_WBC_FOR_DIFFERENTIAL:
        for lab, (lo, hi) in REFERENCE_INTERVALS.items():
            p = diff.get(lab, {"percent": 0.0})["percent"]
            if not lo <= p <= hi:
                flags.append({"code": "differential_out_of_range", "message": f"{lab} {p}% outside the adult reference interval {lo:g}-{hi:g}%"})
    n_unf = sum(unf_by.values())
    f = unfamiliar_flag(n_unf, len(typed), min_cells=1)
    if f is not None:
        flags.append(f)
    out = {"counts": counts, "differential": diff, "flags": flags, "disclaimer": DISCLAIMER}
    if rbc_morphology and sum(rbc_morphology.values()):
        out["rbc_morphology"], mflags = morphology_summary(dict(rbc_morphology), rbc_score)
        flags.extend(mflags)
    if n_unf:
        out["unfamiliar"] = n_unf
    out.update(outside)  # WBC detections typed erythroblast / platelet: outside the differential
    return out


def rbc_morphology_counts(cells) -> dict[str, int] | None:
    """Per type the red cells of ``cells`` typed so, or None when none was typed (the stage was off)."""
    col = getattr(cells, "morphology", None)
    if col is None:
        return None
    typed = [m for k, m in zip(cells.kind, col) if k == "rbc" and m is not None]
    return morphology_counts(typed) if typed else None


def rbc_morphology_median_score(cells) -> float | None:
    """Median ``morphology_score`` of the typed red cells, or None."""
    col = getattr(cells, "morphology_score", None)
    if col is None:
        return None
    s = [float(v) for k, m, v in zip(cells.kind, cells.morphology, col) if k == "rbc" and m is not None and v == v]
    return float(np.median(s)) if s else None


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


def _jpeg_b64(arr: np.ndarray) -> str:
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(arr).save(b, format="JPEG", quality=88)
    return base64.b64encode(b.getvalue()).decode("ascii")


def box_crops(image: np.ndarray, cells: Cells, idx, margin: float) -> list[tuple[int, np.ndarray]]:
    """(cell index, view of the image around its box grown by ``margin`` of its size, clipped to the image)
    for each cell of ``idx`` whose crop is not empty: the gallery thumbnails of the report page."""
    h, w = image.shape[:2]
    out = []
    for i in idx:
        x1, y1, x2, y2 = cells.xyxy[i]
        mx, my = (x2 - x1) * margin, (y2 - y1) * margin
        a, b = int(max(0, x1 - mx)), int(max(0, y1 - my))
        c, d = int(min(w, x2 + mx)), int(min(h, y2 + my))
        if c > a and d > b:
            out.append((int(i), image[b:d, a:c]))
    return out


def wbc_crops(image: np.ndarray, cells: Cells, margin: float = 0.25) -> list[tuple[int, np.ndarray]]:
    return box_crops(image, cells, np.nonzero(cells.kind == "wbc")[0], margin)


RBC_GALLERY_PER_TYPE = 24  # red-cell thumbnails per morphology type on the report page (lowest scores first)


def rbc_gallery_crops(image: np.ndarray, cells: Cells, per_type: int = RBC_GALLERY_PER_TYPE,
                      margin: float = 0.15) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Morphology type -> [(cell index, crop)] of the typed red cells, at most ``per_type`` a type (the
    least certain first: the ones a reader should check)."""
    by: dict[str, list[int]] = {}
    for i in np.nonzero(cells.kind == "rbc")[0]:
        if cells.morphology[i] is not None:
            by.setdefault(cells.morphology[i], []).append(int(i))
    out = {}
    for t, idx in by.items():
        out[t] = box_crops(image, cells, sorted(idx, key=lambda i: float(cells.morphology_score[i]))[:per_type], margin)
    return out


def _rbc_section(s: dict, gallery: dict[str, list[tuple[int, np.ndarray]]], cells: Cells) -> str:
    """The red-cell morphology grade table and gallery of the report page ('' when the stage was off)."""
    m = s.get("rbc_morphology")
    if not m:
        return ""
    e = html.escape
    rows = []
    for t in RBC_MORPHOLOGY:
        r = m[t]
        g = r["grade"]
        cls = " class='flagged'" if g in ("2+", "3+") else ""
        rows.append(f"<tr{cls}><td>{e(t.replace('_', ' '))}</td><td>{r['count']}</td><td>{r['percent']}%</td>"
                    f"<td>{'&mdash;' if g is None else e(g)}</td></tr>")
    gal = []
    for t in [x for x in RBC_MORPHOLOGY if x != "normal"] + ["normal"]:
        items = gallery.get(t)
        if not items:
            continue
        figs = "".join(_figure(_jpeg_b64(c), f"red cell {i + 1}", f"#{i + 1} {float(cells.morphology_score[i]):.2f}", False)
                       for i, c in items)
        more = m[t]["count"] - len(items)
        note = f"<p class='note'>{more} more not shown (cells.csv lists all)</p>" if more > 0 else ""
        gal.append(f"<h3>{e(t.replace('_', ' '))} ({m[t]['count']})</h3><div class='gallery rbc'>{figs}</div>{note}")
    warn = ("<p><b>These red cells look unlike the training fields</b> (median score "
            f"{m.get('median_score', 0):.2f}): types and grades are not reliable.</p>") if m.get("unfamiliar") else ""
    return (f"<h2>Red-cell morphology</h2>{warn}<p class='note'>{m['red_cells']} red cells typed; grades as "
            f"{e(m['reference'])}: 0, 1+ (few), 2+ (moderate), 3+ (many); 2+ and above are flagged.</p>"
            f"<table class='grades'><tr><th>type</th><th>cells</th><th>percent of red cells</th><th>ICSH grade</th></tr>"
            f"{''.join(rows)}</table><h2>Red-cell gallery</h2>{''.join(gal)}")


def _outside_rows(s: dict) -> str:
    """Differential-table rows for typed cells outside the differential (erythroblasts per 100 WBC, platelets)."""
    out = []
    for lab, n in (s.get("not_in_differential") or {}).items():
        note = (f"{s['nrbc_per_100_wbc']} per 100 WBC" if lab == "erythroblast" and "nrbc_per_100_wbc" in s
                else "not counted in the differential")
        out.append(f"<tr><td>{html.escape(lab)}</td><td>{n}</td><td>{note}</td><td></td></tr>")
    return "".join(out)


def render_html(rep: dict, overlay_png: bytes, crops: list[tuple[int, np.ndarray]], cells: Cells,
                rbc_gallery: dict[str, list[tuple[int, np.ndarray]]] | None = None) -> str:
    """A self-contained page (images inlined): overlay, counts, differential, WBC gallery, flags; red-cell
    morphology grades and gallery when the cells were typed."""
    e = html.escape
    s = rep["summary"]
    rows = "".join(f"<tr><td>{e(k)}</td><td>{v}</td></tr>" for k, v in s["counts"].items())
    drows = "".join(
        f"<tr><td>{e(k)}</td><td>{v['count']}</td><td>{v['percent']}%</td><td>{_ri(k)}</td></tr>" for k, v in s["differential"].items()
    ) or "<tr><td colspan=4>no classified WBCs</td></tr>"
    drows += _outside_rows(s)
    flags = "".join(f"<li><b>{e(f['code'])}</b>: {e(f['message'])}</li>" for f in s["flags"]) or "<li>none</li>"
    groups: dict[str, list] = {}
    for i, crop in crops:
        groups.setdefault(cells.label[i] or "unclassified", []).append((bool(cells.review[i]), i, crop))
    gal = []
    for lab in sorted(groups):
        items = sorted(groups[lab], key=lambda t: (not t[0], t[1]))  # review ones first
        figs = "".join(_figure(_jpeg_b64(c), f"cell {i + 1}", f"#{i + 1}{' review' if r else ''}", r) for r, i, c in items)
        gal.append(f"<h3>{e(lab)} ({len(items)})</h3><div class='gallery'>{figs}</div>")
    models = "".join(f"<li>{e(k)}: {e(str(v.get('name')))} <code>{e(str(v.get('sha256', ''))[:12])}</code></li>" for k, v in rep["models"].items() if isinstance(v, dict))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bccdet report: {e(Path(rep['image']['path']).name)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}}
table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}
.gallery{{display:flex;flex-wrap:wrap;gap:.5em}}figure{{margin:0;text-align:center;font-size:.8em}}
figure img{{height:96px;border:2px solid #ddd}}figure.review img{{border-color:#e5484d}}
.overlay{{max-width:100%;border:1px solid #ccc}}.note{{color:#666;font-size:.9em}}
.gallery.rbc figure img{{height:64px}}tr.flagged td{{background:#fde8e8;font-weight:600}}
</style></head><body>
<h1>bccdet report</h1>
<p>{e(rep['image']['path'])} &middot; {rep['image']['width']}&times;{rep['image']['height']} px</p>
<p class="note">{e(s['disclaimer'])}</p>
<h2>Flags</h2><ul>{flags}</ul>
<h2>Counts</h2><table><tr><th>kind</th><th>cells</th></tr>{rows}</table>
<h2>WBC differential</h2><table><tr><th>label</th><th>count</th><th>percent</th><th>adult reference</th></tr>{drows}</table>
<h2>Overlay</h2><img class="overlay" src="data:image/png;base64,{base64.b64encode(overlay_png).decode('ascii')}" alt="overlay">
<h2>WBC gallery</h2>{''.join(gal) or '<p>no WBC found</p>'}
{_rbc_section(s, rbc_gallery or {}, cells)}
<h2>Models</h2><ul>{models}</ul>
</body></html>
"""


def _figure(jpeg_b64: str, alt: str, caption: str, review: bool) -> str:
    """One gallery thumbnail (``alt`` and ``caption`` already HTML); review cells get the red border."""
    return (f"<figure class='{'review' if review else ''}'><img src='data:image/jpeg;base64,{jpeg_b64}' alt='{alt}'>"
            f"<figcaption>{caption}</figcaption></figure>")


def _ri(label: str) -> str:
    r = REFERENCE_INTERVALS.get(label)
    return f"{r[0]:g}-{r[1]:g}%" if r else ""


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
    from .types import mask_to_polygon

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


# ---------------------------------------------------------------------- classify: one page per call
GALLERY_PER_LABEL = 48  # thumbnails per label and patient, review cells first ...
GALLERY_MAX_REVIEW = 200  # ... and every review cell up to this many
PAGE_MAX_THUMBS = 1500  # the whole page: ~4.5 kB a thumbnail, so a page of many patients stays near 7-11 MB
PATIENT_MIN_THUMBS = 24  # ... but each patient shows at least this many


def _thumb_b64(path: str, height: int = 96) -> str | None:
    from PIL import Image

    from .io import InputError, read_image

    try:
        img = Image.fromarray(read_image(path))
    except (InputError, OSError, ValueError):
        return None
    img.thumbnail((height * 2, height))
    return _jpeg_b64(np.asarray(img))


def classify_html(patients: list[tuple[str, dict, list[dict]]], model: dict,
                  per_label: int = GALLERY_PER_LABEL) -> str:
    """A self-contained page for ``classify``: per patient the flags, the differential (with adult
    reference intervals), unreadable files, and a gallery per label (review cells first, red border, up to
    ``GALLERY_MAX_REVIEW``; then others up to ``per_label``; a caption gives file name, score and, after
    ``--adapt``, the label the cell had alone)."""
    e = html.escape
    parts = []
    budget = max(PATIENT_MIN_THUMBS, PAGE_MAX_THUMBS // max(1, len(patients)))  # thumbnails per patient
    for patient, s, rows in patients:
        flags = "".join(f"<li><b>{e(f['code'])}</b>: {e(f['message'])}</li>" for f in s["flags"]) or "<li>none</li>"
        drows = "".join(f"<tr><td>{e(k)}</td><td>{s['counts'].get(k, 0)}</td><td>{v}%</td><td>{_ri(k)}</td></tr>"
                        for k, v in s["differential_percent"].items()) or "<tr><td colspan=4>no classified cells</td></tr>"
        drows += _outside_rows(s)
        bad = [r for r in rows if not r.get("label")]
        badl = "".join(f"<li>{e(Path(r['file']).name)}: {e(r.get('reason') or '')}</li>" for r in bad)
        groups: dict[str, list[dict]] = {}
        for r in rows:
            if r.get("label"):
                groups.setdefault(r["label"], []).append(r)
        gal = []
        present = [x for x in LABELS if x in groups]
        per_lab = max(4, budget // max(1, len(present)))  # thumbnails per label for this patient
        for lab in present:
            items = sorted(groups[lab], key=lambda r: (not r.get("review"), float(r.get("label_score") or 0.0)))
            shown = [r for r in items if r.get("review")][:min(GALLERY_MAX_REVIEW, per_lab)]
            shown += [r for r in items if not r.get("review")][:max(0, min(per_label, per_lab) - len(shown))]
            figs = []
            for r in shown:
                b64 = _thumb_b64(r["file"])
                if b64 is None:
                    continue
                alone = r.get("label_alone")
                cap = f"{e(Path(r['file']).name)} {float(r.get('label_score') or 0):.2f}"
                if alone and alone != r["label"]:
                    cap += f"<br>alone: {e(alone)}"
                figs.append(_figure(b64, e(Path(r["file"]).name), cap, bool(r.get("review"))))
            more = len(items) - len(shown)
            note = f"<p class='note'>{more} more not shown (cells.csv lists all)</p>" if more > 0 else ""
            gal.append(f"<h3>{e(lab)} ({len(items)}, {sum(1 for r in items if r.get('review'))} to review)</h3>"
                       f"<div class='gallery'>{''.join(figs)}</div>{note}")
        ap = s.get("apl_score")
        parts.append(f"""<section><h2>{e(patient)}</h2>
<p>{s['classified']} cells classified, {s['review']} to review{f", {s['unfamiliar']} unlike the training images" if s.get('unfamiliar') else ''}, {s['unreadable']} unreadable; apl_score
{'' if ap is None else f'{ap:.2f}'} <span class="note">({e(str(s.get('apl_rule', '')))})</span></p>
<h3>Flags</h3><ul>{flags}</ul>
<h3>Differential</h3><table><tr><th>label</th><th>cells</th><th>percent</th><th>adult reference</th></tr>{drows}</table>
{f'<h3>Unreadable files</h3><ul>{badl}</ul>' if bad else ''}
<h3>Gallery</h3>{''.join(gal) or '<p>no classified cells</p>'}</section>""")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bccdet classify</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}}
table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}
.gallery{{display:flex;flex-wrap:wrap;gap:.5em}}figure{{margin:0;text-align:center;font-size:.75em;max-width:120px;overflow-wrap:anywhere}}
figure img{{height:96px;border:2px solid #ddd}}figure.review img{{border-color:#e5484d}}
.note{{color:#666;font-size:.9em}}section{{border-top:2px solid #ccc;margin-top:1.5em}}
</style></head><body>
<h1>bccdet classify</h1>
<p class="note">{e(DISCLAIMER)} Classifier: {e(str(model.get('name')))} <code>{e(str(model.get('sha256', ''))[:12])}</code>.
Red borders: cells to review (low confidence, an abnormal label, or a cell unlike the training images).</p>
{''.join(parts)}
</body></html>
"""
