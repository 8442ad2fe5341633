"""The self-contained HTML pages: ``report.html`` of an analyzed image (overlay, counts, differential, WBC
gallery, red-cell grades and gallery; :func:`render_html`) and the ``classify`` page, one section per patient
(:func:`classify_html`); the gallery crops and inlined JPEG thumbnails."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from ..types import Cells
from ..vocab import LABELS, RBC_MORPHOLOGY
from .summary import DISCLAIMER, REFERENCE_INTERVALS


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


# ---------------------------------------------------------------------- classify: one page per call
GALLERY_PER_LABEL = 48  # thumbnails per label and patient, review cells first ...
GALLERY_MAX_REVIEW = 200  # ... and every review cell up to this many
PAGE_MAX_THUMBS = 1500  # the whole page: ~4.5 kB a thumbnail, so a page of many patients stays near 7-11 MB
PATIENT_MIN_THUMBS = 24  # ... but each patient shows at least this many


def _thumb_b64(path: str, height: int = 96) -> str | None:
    from PIL import Image

    from ..io import InputError, read_image

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
