"""Summaries: a slide's ``slide.json`` from its recorded units (and a whole-slide scan's ``cells.csv`` and
``overview.jpg``) when its units are all recorded, then the batch's ``slides.csv``, ``slides.parquet`` and
``summary.html`` from every slide."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import tempfile
from pathlib import Path

from ..io import public_mode, write_bytes_atomic, write_text_atomic
from .common import (BANDS_DIR, FORMAT, RBC_MORPHOLOGY_KEY, RBC_SCORE_KEY, RESERVED_IN_SLIDE, WBC_LABELS_KEY,
                     WBC_UNFAMILIAR_KEY, Log, _add_counts, _add_morph, _json, _load_json)


# ============================================================================ slide summaries
def summarize_totals(counts: dict[str, int], wbc_labels: list, wbc_unfamiliar: list | None = None,
                     rbc_morphology: dict[str, int] | None = None, rbc_scores: list | None = None) -> dict:
    """The summary of a slide from its totals; ``rbc_morphology``: red cells per morphology type summed over
    its fields (graded once over the slide, as ICSH grades a film, not averaged over fields)."""
    import statistics

    from ..report import summarize_counts

    score = float(statistics.median(rbc_scores)) if rbc_scores else None  # the median of its fields' medians
    return summarize_counts(counts, wbc_labels, wbc_unfamiliar, rbc_morphology=rbc_morphology, rbc_score=score)


def _unfamiliar_of(u: dict) -> list:
    """A unit's per-WBC unfamiliar flags (units recorded before the flag existed: none)."""
    return list(u.get(WBC_UNFAMILIAR_KEY) or [False] * len(u[WBC_LABELS_KEY]))


def finish_slide(out: Path, s: dict, units: dict, models: dict, log: Log) -> None:
    """A slide whose units are all recorded (``units``: its state records): its status and, when done, its
    slide.json (with the batch's ``models``) and a line in ``log``."""
    name = s["slide"]
    if s["error"]:
        s["status"] = "failed"
    elif s["kind"] == "wsi" and s["fields"][0]["status"] == "skipped":
        s["status"], s["error"] = "skipped", s["fields"][0]["error"]
    elif s["kind"] == "wsi" and s["fields"][0]["status"] == "failed":
        s["status"], s["error"] = "failed", s["fields"][0]["error"]
    elif s["kind"] == "wsi":
        _finish_wsi(out, s, units, models)
    else:
        done = [f for f in s["fields"] if f["status"] == "done"]
        if not done:
            if s["fields"] and all(f["status"] == "skipped" for f in s["fields"]):
                s["status"], s["error"] = "skipped", "nothing to analyse: " + s["fields"][0]["error"]
            else:
                s["status"] = "failed"
                errs = sorted({f["error"] for f in s["fields"] if f["error"]})
                s["error"] = "no image could be analysed" + (f" ({errs[0]})" if len(errs) == 1 else "")
        else:
            _finish_fields(out, s, units, models, log)
    if s["status"] == "done":
        _say_done(out, s, log)
    elif s["status"] in ("failed", "skipped"):
        log(f"{'error' if s['status'] == 'failed' else 'warning'}: {name}: {s['error']}")


def _slide_doc(s: dict, models: dict, counts: dict, labels: list, fields: list, apl_score=None, unfamiliar=None,
               rbc_morphology=None, rbc_scores=None, **extra) -> dict:
    summary = summarize_totals(counts, labels, unfamiliar, rbc_morphology, rbc_scores)
    # a single-cell slide's patient-level flags (apl_suspected, variant lymphocytes, unreadable files)
    # belong in the slide summary that slides.csv / .parquet / summary.html read
    have = {f["code"] for f in summary["flags"]}
    for f in (extra.get("patient_summary") or {}).get("flags", []):
        if f["code"] not in have:
            summary["flags"].append(f)
            have.add(f["code"])
    return {"format": FORMAT, "slide": s["slide"], "kind": s["kind"], "source": s["source"], "sha256": s["sha256"],
            "models": models, **extra, "n_fields": len(s["fields"]),
            "n_fields_done": sum(f["status"] == "done" for f in s["fields"]),
            "fields": fields, "summary": summary, "apl_score": apl_score}


def _finish_fields(out: Path, s: dict, units: dict, models: dict, log: Log) -> None:
    counts: dict = _add_counts({}, {})
    labels: list = []
    unf: list = []
    morph, mscores = None, []
    fields = []
    apl = None
    for f in s["fields"]:
        rec = {"name": f["name"], "path": f["path"], "sha256": f["sha256"], "status": f["status"], "error": f["error"]}
        if f.get("given_class"):
            rec["given_class"] = f["given_class"]
        if s["kind"] == "fields" and f["status"] == "done":
            u = units[f"f:{f['name']}"]
            counts = _add_counts(counts, u["counts"])
            labels += u[WBC_LABELS_KEY]
            unf += _unfamiliar_of(u)
            morph = _add_morph(morph, u.get(RBC_MORPHOLOGY_KEY))
            if u.get(RBC_SCORE_KEY) is not None:
                mscores.append(u[RBC_SCORE_KEY])
            rec["output"] = f["name"]
            rec["counts"] = u["counts"]
        fields.append(rec)
    extra = {}
    if s["kind"] == "cellavision":
        u = units["cv"]
        counts, labels, apl = u["counts"], u[WBC_LABELS_KEY], u.get("apl_score")
        unf = _unfamiliar_of(u)
        extra["patient_summary"] = u.get("patient_summary")
    doc = _slide_doc(s, models, counts, labels, fields, apl_score=apl, unfamiliar=unf, rbc_morphology=morph,
                     rbc_scores=mscores, **extra)
    write_text_atomic(out / s["slide"] / "slide.json", _json(doc))
    if s["kind"] == "fields":
        _drop_stale_fields(out, s, log)
    s["status"], s["_summary"] = "done", doc


def _drop_stale_fields(out: Path, s: dict, log: Log) -> None:
    """Remove field reports of this slide whose field is gone (an input deleted before --resume): the
    slide folder then holds exactly the fields its slide.json lists. Only folders holding a field
    report (report.json) are touched."""
    d = out / s["slide"]
    keep = {f["name"] for f in s["fields"] if f["status"] == "done"} | RESERVED_IN_SLIDE
    for sub in (d.iterdir() if d.is_dir() else []):
        if sub.is_dir() and not sub.is_symlink() and sub.name not in keep and (sub / "report.json").is_file():
            shutil.rmtree(sub, ignore_errors=True)
            log(f"note: {s['slide']}/{sub.name}: removed, its image is no longer among the inputs")


def _finish_wsi(out: Path, s: dict, units: dict, models: dict) -> None:
    """Concatenate the bands into cells.csv (streaming; ids over the slide), sum counts, draw an overview."""
    from ..report import CELLS_CSV_HEADER

    name = s["slide"]
    d = out / name
    counts: dict = _add_counts({}, {})
    labels: list = []
    unf: list = []
    morph = None
    wbc_boxes = []
    fd, tmp = tempfile.mkstemp(prefix=".cells.csv.", suffix=".tmp", dir=d)
    try:
        public_mode(fd)
        with os.fdopen(fd, "w", newline="") as fo:
            w = csv.writer(fo)
            w.writerow(CELLS_CSV_HEADER)
            k = 0
            for i in range(s["wsi"]["bands"]):
                u = units[f"b:{i:05d}"]
                counts = _add_counts(counts, u["counts"])
                labels += u[WBC_LABELS_KEY]
                unf += _unfamiliar_of(u)
                morph = _add_morph(morph, u.get(RBC_MORPHOLOGY_KEY))
                with open(d / BANDS_DIR / f"band-{i:05d}.csv", newline="") as fi:
                    for row in csv.reader(fi):
                        k += 1
                        # a band written by an older bccdet lacks the newer trailing columns: empty
                        w.writerow([k, *row, *[""] * (len(CELLS_CSV_HEADER) - 1 - len(row))])
                        if row[0] == "wbc" and len(wbc_boxes) < 100_000:
                            wbc_boxes.append([float(v) for v in row[2:6]])
            fo.flush()
            os.fsync(fo.fileno())
        os.replace(tmp, d / "cells.csv")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(Exception):
        write_bytes_atomic(d / "overview.jpg", _overview_jpg(s["fields"][0]["path"], wbc_boxes))
    f = s["fields"][0]
    f["status"] = "done"
    fields = [{"name": "wsi", "path": f["path"], "sha256": f["sha256"], "status": "done", "error": None}]
    doc = _slide_doc(s, models, counts, labels, fields, unfamiliar=unf, rbc_morphology=morph,
                     wsi={k: s["wsi"][k] for k in ("width", "height", "levels", "mpp", "tiles", "bands")})
    write_text_atomic(d / "slide.json", _json(doc))
    s["status"], s["_summary"] = "done", doc


def drop_bands(out: Path, s: dict) -> None:
    """A whole-slide scan's tile rows, once merged into cells.csv and recorded done in the manifest."""
    if s["kind"] == "wsi" and s["status"] == "done":
        shutil.rmtree(out / s["slide"] / BANDS_DIR, ignore_errors=True)


def _say_done(out: Path, s: dict, log: Log) -> None:
    c = s["_summary"]["summary"]["counts"]
    nf = sum(f["status"] == "failed" for f in s["fields"])
    if s["kind"] == "wsi":
        what = f"whole-slide scan, {s['wsi']['tiles']} tiles"
    elif s["kind"] == "cellavision":
        what = f"{len(s['fields'])} single-cell images"
    else:
        what = f"{len(s['fields'])} field(s)"
    log(f"{s['slide']}: {what}{f' ({nf} failed)' if nf else ''}: {c['rbc']} RBC, {c['wbc']} WBC, "
        f"{c['platelet']} platelets -> {out / s['slide'] / 'slide.json'}")


def _overview_jpg(path: str, wbc_boxes: list, size: int = 1024) -> bytes:
    """A thumbnail of the scan with the WBCs outlined (the level closest to ``size`` px, never level 0)."""
    import tiffslide
    from PIL import ImageDraw

    with tiffslide.TiffSlide(path) as s:
        th = s.get_thumbnail((size, size)).convert("RGB")
        W, H = s.dimensions
    sx, sy = th.width / W, th.height / H
    dr = ImageDraw.Draw(th)
    for x1, y1, x2, y2 in wbc_boxes:
        dr.rectangle([x1 * sx - 2, y1 * sy - 2, x2 * sx + 2, y2 * sy + 2], outline=(62, 99, 221), width=2)
    b = io.BytesIO()
    th.save(b, format="JPEG", quality=85)
    return b.getvalue()


# ============================================================================ aggregates
def slide_rows(out: Path, slides: list[dict]) -> list[dict]:
    """One row per slide: counts, differential percent per label, flags, apl_score."""
    from ..types import KINDS
    from ..vocab import LABELS, RBC_MORPHOLOGY

    rows = []
    for s in slides:
        doc = s.get("_summary")
        if doc is None and s.get("status") == "done":
            doc = _load_json(out / s["slide"] / "slide.json")
        summ = (doc or {}).get("summary") or {}
        counts = summ.get("counts") or {}
        diff = summ.get("differential") or {}
        flags = [f["code"] for f in summ.get("flags", [])]
        fl = s.get("fields", [])
        row = {"slide": s["slide"], "kind": s["kind"], "status": s["status"],
               "n_fields": len(fl) if s["kind"] != "wsi" else 0,
               "n_fields_done": sum(f["status"] == "done" for f in fl) if s["kind"] != "wsi" else 0,
               "n_fields_failed": sum(f["status"] == "failed" for f in fl) if s["kind"] != "wsi" else 0,
               "n_fields_skipped": sum(f["status"] == "skipped" for f in fl) if s["kind"] != "wsi" else 0}
        for k in KINDS:
            row[k] = counts.get(k) if doc else None
        row["wbc_classified"] = sum(v["count"] for v in diff.values()) if doc else None
        for lab in LABELS:
            row[f"pct_{lab}"] = diff.get(lab, {}).get("percent", 0.0) if diff else None
        row["flags"] = ";".join(flags) if doc else None
        row["n_flags"] = len(flags) if doc else None
        row["apl_score"] = (doc or {}).get("apl_score")
        morph = summ.get("rbc_morphology") or {}  # graded once per slide from all its fields' red cells
        row["rbc_typed"] = morph.get("red_cells") if doc else None
        for t in RBC_MORPHOLOGY[1:]:
            row[f"rbc_grade_{t}"] = (morph.get(t) or {}).get("grade") if morph else None
        row["error"] = s.get("error")
        row["summary"] = f"{s['slide']}/slide.json" if doc else None
        rows.append(row)
    return rows


def write_aggregates(out: Path, slides: list[dict]) -> None:
    import pandas as pd

    from ..types import KINDS
    from ..vocab import LABELS, RBC_MORPHOLOGY

    rows = slide_rows(out, slides)
    grades = [f"rbc_grade_{t}" for t in RBC_MORPHOLOGY[1:]]
    cols = (["slide", "kind", "status", "n_fields", "n_fields_done", "n_fields_failed", "n_fields_skipped", *KINDS,
             "wbc_classified"] + [f"pct_{lab}" for lab in LABELS] + ["flags", "n_flags", "apl_score", "rbc_typed",
                                                                      *grades, "error", "summary"])
    df = pd.DataFrame(rows, columns=cols)
    for c in ["n_fields", "n_fields_done", "n_fields_failed", "n_fields_skipped", *KINDS, "wbc_classified", "n_flags",
              "rbc_typed"]:
        df[c] = df[c].astype("Int64")
    for c in [f"pct_{lab}" for lab in LABELS] + ["apl_score"]:
        df[c] = df[c].astype("Float64")
    for c in ["slide", "kind", "status", "flags", "error", "summary", *grades]:
        df[c] = df[c].astype("string")
    write_text_atomic(out / "slides.csv", df.to_csv(index=False, lineterminator="\n"))
    fd, tmp = tempfile.mkstemp(prefix=".slides.parquet.", suffix=".tmp", dir=out)
    public_mode(fd)
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, out / "slides.parquet")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    write_text_atomic(out / "summary.html", summary_html(df))


def _plot_png(fig) -> str:
    import base64

    b = io.BytesIO()
    fig.savefig(b, format="png", dpi=96, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(b.getvalue()).decode("ascii")


def summary_html(df) -> str:
    """A self-contained page: the differential across slides, counts, flag counts and the slide table."""
    import html as _html

    from ..report import DISCLAIMER, KIND_COLORS
    from ..vocab import LABELS

    e = _html.escape
    done = df[df["status"] == "done"]
    plots = []
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        if len(done):
            names = list(done["slide"])
            h = min(40.0, 1.2 + 0.28 * len(names))
            labs = [lab for lab in LABELS if done[f"pct_{lab}"].fillna(0).sum() > 0]
            if labs:
                fig, ax = plt.subplots(figsize=(9, h))
                left = [0.0] * len(names)
                cmap = plt.get_cmap("tab20")
                for i, lab in enumerate(labs):
                    v = list(done[f"pct_{lab}"].fillna(0).astype(float))
                    ax.barh(names, v, left=left, label=lab, color=cmap(i))
                    left = [a + b for a, b in zip(left, v)]
                ax.set_xlabel("% of classified WBCs")
                ax.set_xlim(0, 100)
                ax.invert_yaxis()
                ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
                ax.set_title("WBC differential across slides")
                plots.append(("Differential across slides", _plot_png(fig)))
            else:
                plots.append(("Differential across slides", None))
            fig, axes = plt.subplots(1, 3, figsize=(11, h), sharey=True)
            for ax, k in zip(axes, ("rbc", "wbc", "platelet")):
                ax.barh(names, list(done[k].fillna(0).astype(int)), color=KIND_COLORS[k])
                ax.set_title(k)
            axes[0].invert_yaxis()
            fig.suptitle("Cells found per slide")
            plots.append(("Counts per slide", _plot_png(fig)))
            codes: dict[str, int] = {}
            for f in done["flags"].fillna(""):
                for c in filter(None, str(f).split(";")):
                    codes[c] = codes.get(c, 0) + 1
            if codes:
                fig, ax = plt.subplots(figsize=(7, 0.8 + 0.4 * len(codes)))
                ks = sorted(codes, key=lambda c: (-codes[c], c))
                ax.barh(ks, [codes[k] for k in ks], color="#e5484d")
                ax.invert_yaxis()
                ax.set_xlabel("slides")
                ax.set_title("Flags across slides")
                plots.append(("Flag counts", _plot_png(fig)))
    except ImportError:
        plots.append(("Plots", None))
    body = []
    for title, png in plots:
        body.append(f"<h2>{e(title)}</h2>")
        body.append(f"<img src='data:image/png;base64,{png}' alt='{e(title)}'>" if png else
                    "<p class='note'>no classified WBCs (detect-only or classifier unavailable): no differential</p>"
                    if title.startswith("Differential") else "<p class='note'>matplotlib unavailable: no plots</p>")
    cols = ["slide", "kind", "status", "n_fields_done", "n_fields_failed", "rbc", "wbc", "platelet", "wbc_classified",
            "flags", "apl_score", "error"]
    head = "".join(f"<th>{e(c)}</th>" for c in cols)
    trs = []
    for _, r in df.iterrows():
        tds = []
        for c in cols:
            v = r[c]
            v = "" if v is None or (not isinstance(v, str) and _isna(v)) else v
            if c == "slide" and r["status"] == "done":
                tds.append(f"<td><a href='{e(str(v))}/slide.json'>{e(str(v))}</a></td>")
            else:
                tds.append(f"<td>{e(str(v))}</td>")
        trs.append(f"<tr class='{e(str(r['status']))}'>{''.join(tds)}</tr>")
    n = len(df)
    nd = int((df["status"] == "done").sum())
    nf = int((df["status"] == "failed").sum())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bccdet batch summary</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1300px}}
table{{border-collapse:collapse;margin:.5em 0;font-size:.9em}}td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:left}}
tr.failed td{{background:#fdecec}}tr.skipped td{{background:#f4f4f4}}img{{max-width:100%}}.note{{color:#666;font-size:.9em}}
</style></head><body>
<h1>bccdet batch summary</h1>
<p>{n} slide(s): {nd} done, {nf} failed, {n - nd - nf} skipped or pending. Per-slide detail in <code>slides.csv</code> /
<code>slides.parquet</code> and each <code>SLIDE/slide.json</code>; every input's status in <code>manifest.json</code>.</p>
<p class="note">{e(DISCLAIMER)}</p>
{''.join(body)}
<h2>Slides</h2><table><tr>{head}</tr>{''.join(trs)}</table>
</body></html>
"""


def _isna(v) -> bool:
    try:
        import pandas as pd

        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False
