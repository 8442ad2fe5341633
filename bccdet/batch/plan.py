"""Planning a batch (in the parent process): every INPUT (folder, glob, CSV list, image, whole-slide scan)
becomes one or more *slides*; every file is hashed (sha256) and its header read; bad files, duplicates
(same content anywhere earlier in the batch) and mixed folders are recorded with a reason; then each
slide's work units that are not done yet."""

from __future__ import annotations

import csv
import glob as _glob
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Iterable

from ..io import IMAGE_SUFFIXES, InputError, image_size, sha256_file
from ..vocab import is_class_folder
from .common import (BANDS_DIR, CROP_MAX_SIDE, RESERVED_IN_SLIDE, RESERVED_TOP, WSI_SUFFIXES, _abspath, _sanitize,
                     _short, _reason, _unique, is_wsi)


# ============================================================================ slides
def _spec(name: str, kind: str, sources: list[str], files: list | None = None, error: str | None = None,
          warnings: list | None = None, **kw) -> dict:
    return {"name": name, "kind": kind, "sources": sources, "files": files or [], "error": error,
            "warnings": warnings or [], **kw}


def _failed_spec(inp: str, reason: str) -> dict:
    return _spec(_sanitize(Path(inp).stem or Path(inp).name or "input"), "none", [str(inp)], error=reason)


def expand_slides(inputs: Iterable[str | Path]) -> list[dict]:
    """INPUTs -> slide specs (name, kind, sources, files[(path, given class)], error, warnings)."""
    out: list[dict] = []
    for inp in inputs:
        out += _expand(str(inp))
    return out


def _expand(inp: str) -> list[dict]:
    p = Path(os.path.expanduser(inp))
    if not p.exists() and any(c in inp for c in "*?["):
        hits = sorted(_glob.glob(os.path.expanduser(inp), recursive=True))
        if not hits:
            return [_failed_spec(inp, f"glob {inp!r} matched nothing")]
        out = []
        for h in hits:
            if Path(h).name.startswith("."):
                continue
            out += _expand(h)
        return out
    if not p.exists():
        return [_failed_spec(inp, "no such file or folder")]
    p = _abspath(p)
    if p.is_dir():
        return _expand_dir(p)
    suf = p.suffix.lower()
    if suf == ".csv":
        return _expand_csv(p)
    if is_wsi(p):
        return [_spec(_sanitize(p.stem), "wsi", [str(p)], files=[(p, None)])]
    if suf in IMAGE_SUFFIXES:
        return [_spec(_sanitize(p.stem), "fields", [str(p)], files=[(p, None)])]
    return [_failed_spec(str(p), f"not an image, a folder or a CSV list ({suf or 'no extension'})")]


def _expand_dir(p: Path) -> list[dict]:
    entries = sorted((e for e in p.iterdir() if not e.name.startswith(".")), key=lambda e: e.name)
    files = [e for e in entries if e.is_file()]
    dirs = [e for e in entries if e.is_dir()]
    out = []
    wsi = [f for f in files if f.suffix.lower() in WSI_SUFFIXES + (".tif", ".tiff") and is_wsi(f)]
    rest = [f for f in files if f not in wsi]
    for f in wsi:
        out.append(_spec(_sanitize(f.stem), "wsi", [str(f)], files=[(f, None)]))
    has_images = any(f.suffix.lower() in IMAGE_SUFFIXES for f in rest)
    if has_images or (rest and not dirs and not wsi):
        warn = [{"path": str(d), "reason": "sub-folder ignored: a slide's fields must be directly inside its folder"}
                for d in dirs]
        err = None if has_images else f"no images in folder ({len(rest)} other file(s))"
        out.append(_spec(_sanitize(p.name), "fields", [str(p)], files=[(f, None) for f in rest], error=err, warnings=warn))
    elif dirs and all(is_class_folder(d.name) for d in dirs):
        # A CellaVision-style export: <patient>/<cell class>/<crop>: one slide of single-cell images.
        files_cv = []
        for d in dirs:
            for f in sorted((e for e in d.iterdir() if not e.name.startswith(".")), key=lambda e: e.name):
                if f.is_file():
                    files_cv.append((f, d.name))
        if files_cv:
            out.append(_spec(_sanitize(p.name), "cellavision", [str(p)], files=files_cv))
        else:
            out.append(_failed_spec(str(p), "empty folder: no images"))
    elif dirs:
        for d in dirs:  # a folder of slide folders
            out += _expand_dir(d)
    elif not wsi:
        out.append(_spec(_sanitize(p.name), "none", [str(p)], error="empty folder: no images"))
    return out


def _expand_csv(p: Path) -> list[dict]:
    """A CSV list: a ``path`` column (relative paths are relative to the CSV) and an optional ``slide``
    column grouping rows into one slide; without a header, one path per row."""
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        return [_failed_spec(str(p), f"unreadable CSV list ({_short(e)})")]
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if not rows:
        return [_failed_spec(str(p), "empty CSV list")]
    header = [c.strip().lower() for c in rows[0]]
    if "path" in header:
        pi, si = header.index("path"), (header.index("slide") if "slide" in header else None)
        rows = rows[1:]
    else:
        pi, si = 0, None
    out: list[dict] = []
    groups: dict[str, dict] = {}
    for line, r in enumerate(rows, 2 if "path" in header else 1):
        raw = r[pi].strip() if len(r) > pi else ""
        if not raw:
            continue
        q = Path(os.path.expanduser(raw))
        q = q if q.is_absolute() else p.parent / q
        slide = r[si].strip() if si is not None and len(r) > si else ""
        if not slide and not q.exists() and not any(c in raw for c in "*?["):
            out.append(_failed_spec(raw, f"{p.name} line {line}: {raw}: no such file or folder"))
            continue
        if slide:
            if slide not in groups:
                groups[slide] = _spec(_sanitize(slide), "fields", [f"{p}#{slide}"])
                out.append(groups[slide])
            groups[slide]["files"].append((_abspath(q), None))
        else:
            out += _expand(str(q))
    return out


def _field_records(spec: dict, prev: dict[str, dict]) -> list[dict]:
    """Hash and size every file of a fields / single-cell slide; bad files get a status and a reason."""
    recs = []
    for path, given in spec["files"]:
        path = _abspath(path)
        rec = {"name": None, "path": str(path), "sha256": None, "size": None, "mtime_ns": None,
               "status": "pending", "error": None, "output": None}
        if given:
            rec["given_class"] = given
        recs.append(rec)
        try:
            st = path.stat()
        except OSError:
            rec.update(status="failed", error="no such file")
            continue
        if path.is_dir():
            rec.update(status="skipped", error="a folder, not an image")
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            rec.update(status="skipped", error=f"not an image file ({path.suffix or 'no extension'})")
            continue
        rec["size"], rec["mtime_ns"] = st.st_size, st.st_mtime_ns
        old = prev.get(str(path))
        try:
            if old and old.get("sha256") and old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
                rec["sha256"] = old["sha256"]
            else:
                rec["sha256"] = sha256_file(path)
            w, h = image_size(path)
        except InputError as e:
            rec.update(status="failed", error=_reason(e, path))
            continue
        except OSError as e:
            rec.update(status="failed", error=f"unreadable ({_short(e)})")
            continue
        except Exception as e:  # a decoder plug-in failing another way (ultralytics patches PIL.Image.open)
            rec.update(status="failed", error=f"not a readable image ({type(e).__name__}: {_short(e)})")
            continue
        rec["width"], rec["height"] = w, h
    return recs


IMAGE_KINDS = ("auto", "fields", "cells")


def _decide_kind(spec: dict, recs: list[dict], images: str = "auto", warnings: list | None = None) -> str:
    """fields or cellavision; the minority of a mixed folder is recorded as failed with a reason.

    ``images`` (``batch --images``): ``fields`` or ``cells`` decide for every folder; ``auto`` takes the
    folder layout (<patient>/<cell class>/<crop>) or else the image size (longer side <= CROP_MAX_SIDE:
    a single-cell crop), and says so in ``warnings`` when the size decided, because small smear fields
    (TXL-PBC has 256-363 px ones) look like crops by size alone.
    """
    ok = [r for r in recs if r["status"] == "pending"]
    if images == "fields":
        return "fields"
    if images == "cells":
        return "cellavision"
    crop = [r for r in ok if max(r["width"], r["height"]) <= CROP_MAX_SIDE]
    field = [r for r in ok if max(r["width"], r["height"]) > CROP_MAX_SIDE]
    if spec["kind"] == "cellavision":
        kind = "cellavision"
    else:
        kind = "cellavision" if len(crop) > len(field) else "fields"
        if kind == "cellavision" and warnings is not None:
            warnings.append({"path": spec["sources"][0] if spec["sources"] else spec["name"],
                             "reason": (f"{len(crop)} image(s) of at most {CROP_MAX_SIDE} px: read as single-cell images "
                                        "(one cell each, classified); pass --images fields if they are smear fields")})
    if kind == "cellavision":
        for r in field:
            r.update(status="failed", error=(f"mixed folder: a smear field ({r['width']}x{r['height']}) among {len(crop)} "
                                             "single-cell images: not analysed; pass --images fields if all are smear fields, or "
                                             "put fields and single-cell crops in separate folders"))
    else:
        for r in crop:
            r.update(status="failed", error=(f"mixed folder: a single-cell crop ({r['width']}x{r['height']}) among {len(field)} "
                                             "smear fields: not analysed; pass --images fields if it is a small field, or "
                                             "put fields and single-cell crops in separate folders"))
    return kind


def _wsi_info(path: Path) -> dict:
    import tiffslide

    with tiffslide.TiffSlide(str(path)) as s:
        w, h = s.dimensions
        props = s.properties
        mpp = props.get("tiffslide.mpp-x")
        return {"width": int(w), "height": int(h), "levels": int(s.level_count),
                "mpp": float(mpp) if mpp else None, "vendor": props.get("tiffslide.vendor")}


def plan_batch(inputs: list[str], options: dict, previous: dict | None = None) -> list[dict]:
    """The slide records of a batch (not yet run), merged with the ``previous`` manifest's records."""
    from ..adapters.yolo import tile_spans

    prev_slides = list((previous or {}).get("slides", []))
    prev_by_key = {s["key"]: s for s in prev_slides}
    prev_fields = {f["path"]: f for s in prev_slides for f in s.get("fields", []) if f.get("path")}
    specs = expand_slides(inputs)
    new: dict[str, dict] = {}
    for sp in specs:
        key = _key(sp)
        if key in new:
            continue  # the same input given twice: one slide
        rec = {"slide": None, "key": key, "kind": sp["kind"], "source": sp["sources"], "sha256": None,
               "status": "pending", "error": sp["error"], "warnings": list(sp["warnings"]), "fields": [],
               "_name": sp["name"]}
        if sp["kind"] == "wsi":
            path = Path(sp["files"][0][0])
            st = path.stat()
            old = prev_fields.get(str(path))
            same = old and old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns
            f = {"name": "wsi", "path": str(path), "sha256": old["sha256"] if same else None, "size": st.st_size,
                 "mtime_ns": st.st_mtime_ns, "status": "pending", "error": None, "output": None}
            try:
                f["sha256"] = f["sha256"] or sha256_file(path)
                info = _wsi_info(path)
                ts, ov = options["tile"], options["overlap"]
                info["bands"] = len(tile_spans(info["height"], ts, ov))
                info["tiles"] = info["bands"] * len(tile_spans(info["width"], ts, ov))
                rec["wsi"] = info
            except Exception as e:
                rec["error"] = f"not a readable whole-slide scan ({_short(e)})"
                f.update(status="failed", error=rec["error"])
            rec["fields"] = [f]
            rec["sha256"] = f["sha256"]
        elif sp["kind"] in ("fields", "cellavision"):
            recs = _field_records(sp, prev_fields)
            rec["kind"] = _decide_kind(sp, recs, options.get("images", "auto"), rec["warnings"])
            rec["fields"] = recs
        new[key] = rec
    # merge: previous slides keep their place and name; new ones follow in input order
    merged = [new.pop(s["key"]) if s["key"] in new else s for s in prev_slides] + list(new.values())
    used: set[str] = set()
    for s in merged:
        if s["key"] in prev_by_key:
            s["slide"] = prev_by_key[s["key"]]["slide"]
            used.add(s["slide"].casefold())
    for s in merged:
        if s["slide"] is None:
            s["slide"] = _unique(s["_name"], used, RESERVED_TOP)
        s.pop("_name", None)
    # field names (assigned over every file of the slide in plan order: stable) and content duplicates
    seen: dict[str, str] = {}
    for s in merged:
        if s["kind"] in ("fields", "cellavision"):
            names: set[str] = set()
            for f in s["fields"]:
                f["name"] = _unique(_sanitize(Path(f["path"]).stem), names, RESERVED_IN_SLIDE)
        for f in s["fields"]:
            if f["status"] not in ("pending", "done") or not f.get("sha256"):
                continue
            where = s["slide"] if s["kind"] == "wsi" else f"{s['slide']}/{f['name']}"
            if f["sha256"] in seen:
                f.update(status="skipped", error=f"duplicate of {seen[f['sha256']]} (same content)")
            else:
                seen[f["sha256"]] = where
        if s["kind"] in ("fields", "cellavision"):
            h = hashlib.sha256(json.dumps([s["kind"]] + [[f["name"], f["sha256"], f["status"]] for f in s["fields"]]).encode())
            s["sha256"] = h.hexdigest()
    return merged


def _key(spec: dict) -> str:
    return f"{'wsi' if spec['kind'] == 'wsi' else 'dir'}|{'|'.join(spec['sources'])}"


# ============================================================================ units
def slide_units(out: Path, s: dict, units: dict, options: dict) -> list[tuple[str, dict]]:
    """(unit id, task) of every unit of a slide that is not done (by content hash and outputs on disk);
    ``units``: the slide's state records (the fields found done are marked so in ``s``)."""
    name = s["slide"]
    todo = []
    if s["error"] or s["status"] in ("failed", "skipped"):
        return []
    if s["kind"] == "fields":
        for f in s["fields"]:
            if f["status"] not in ("pending", "done"):
                continue
            uid = f"f:{f['name']}"
            u = units.get(uid)
            d = out / name / f["name"]
            if u and u.get("status") == "done" and u.get("sha256") == f["sha256"] and (d / "report.json").is_file():
                f["status"] = "done"
                continue
            f["status"] = "pending"
            todo.append((uid, {"type": "field", "slide": name, "unit": uid, "path": f["path"], "name": f["name"],
                               "sha256": f["sha256"], "dest": str(d), "write": True}))
    elif s["kind"] == "wsi":
        from ..adapters.yolo import tile_spans

        f = s["fields"][0]
        if f["status"] == "skipped":
            return []
        n_x = len(tile_spans(s["wsi"]["width"], options["tile"], options["overlap"]))
        for i, span in enumerate(tile_spans(s["wsi"]["height"], options["tile"], options["overlap"])):
            uid = f"b:{i:05d}"
            bf = out / name / BANDS_DIR / f"band-{i:05d}.csv"
            u = units.get(uid)
            if u and u.get("status") == "done" and u.get("sha256") == f["sha256"] and bf.is_file():
                continue
            todo.append((uid, {"type": "band", "slide": name, "unit": uid, "path": f["path"], "sha256": f["sha256"],
                               "yspan": list(span), "dest": str(bf), "write": True, "tiles": n_x}))
    elif s["kind"] == "cellavision":
        ok = [f for f in s["fields"] if f["status"] in ("pending", "done")]
        u = units.get("cv")
        if ok:
            if u and u.get("status") == "done" and u.get("sha256") == s["sha256"] and (out / name / "cells.csv").is_file():
                bad = u.get("failed") or {}
                for f in ok:
                    f.update(status="failed", error=bad[f["name"]]) if f["name"] in bad else f.update(status="done")
            else:
                for f in ok:
                    f["status"] = "pending"
                todo.append(("cv", {"type": "cellavision", "slide": name, "unit": "cv", "sha256": s["sha256"],
                                    "fields": [{k: f.get(k) for k in ("name", "path", "given_class")} for f in ok],
                                    "dest": str(out / name / "cells.csv"), "write": True}))
    return todo
