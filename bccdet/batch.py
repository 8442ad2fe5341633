"""Batch slide processing: ``analyze`` at scale, resumable, parallel, whole-slide aware (docs/batch.md).

The engine behind ``bccdet batch``. Imports no ML framework at module level: the models are loaded once
per worker (in this process, in a process pool, or in Ray actors).

How it works
------------
1. **Plan** (parent process): every INPUT (folder, glob, CSV list, image, whole-slide scan) becomes one or
   more *slides*; every file is hashed (sha256) and its header read; bad files, duplicates (same content
   anywhere earlier in the batch) and mixed folders are recorded with a reason.
2. **Run**: the work units (one per field, one per row of tiles of a whole-slide scan, one per single-cell
   export) go to the workers; each unit's outputs appear atomically (``atomic_dir`` / ``write_text_atomic``),
   then the unit is recorded in ``OUT/.state/<slide>.json`` (atomic), then the progress bar moves.
3. **Summarize**: when a slide's units are all recorded, ``OUT/<slide>/slide.json`` is written (atomic) from
   the recorded counts; at the end ``slides.csv``, ``slides.parquet`` and ``summary.html``.

``OUT/manifest.json`` (one record per slide; atomic) is rewritten after planning, when a slide finishes, at
most every few seconds while fields finish, and at the end. A kill at any moment leaves every output either
complete or absent (hidden ``.*.partial-*`` leftovers are removed on the next run); ``--resume`` re-plans,
keeps every unit whose state record matches the input's content hash and whose outputs exist, and redoes
the rest. Timings are kept in the manifest only, so the outputs of an interrupted-then-resumed batch equal
those of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import glob as _glob
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .io import IMAGE_SUFFIXES, InputError, array_to_rgb8, atomic_dir, image_size, public_mode, sha256_file, write_bytes_atomic, write_text_atomic
from .defaults import TILE, TILE_OVERLAP
from .runtime import check_review_threshold
from .vocab import is_class_folder

FORMAT = "bccdet-batch/1"
MANIFEST = "manifest.json"
STATE_DIR = ".state"
LOCK_FILE = ".lock"
BANDS_DIR = ".bands"
AGGREGATES = ("slides.csv", "slides.parquet", "summary.html")
RESERVED_TOP = {MANIFEST, STATE_DIR, LOCK_FILE, *AGGREGATES}
RESERVED_IN_SLIDE = {"slide.json", "cells.csv", "overview.jpg", BANDS_DIR}

# Whole-slide scans: read with tiffslide (Aperio SVS, Hamamatsu NDPI, Leica SCN, Ventana BIF, generic tiled
# TIFF). A .tif/.tiff is a whole-slide scan when it is pyramidal or larger than a field can be.
WSI_SUFFIXES = (".svs", ".ndpi", ".scn", ".bif", ".qptiff")
WSI_MIN_PIXELS = 50_000_000
# An image whose longer side is at most this many pixels is a single-cell crop (CellaVision / PBC /
# DeepAPL crops are 224-400 px), not a smear field (BCCD 640x480, phone / microscope fields larger).
CROP_MAX_SIDE = 400
MANIFEST_EVERY_S = 2.0
WBC_LABELS_KEY = "wbc_labels"
RBC_MORPHOLOGY_KEY = "rbc_morphology"  # a unit's red cells per morphology type (None: the stage was off)
RBC_SCORE_KEY = "rbc_morphology_score"  # a field's median morphology score (morphology.MIN_FIELD_SCORE)
WBC_UNFAMILIAR_KEY = "wbc_unfamiliar"  # per WBC, parallel to WBC_LABELS_KEY: unlike the classifier's training cells

Log = Callable[[str], None]


# ============================================================================ small helpers
def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _abspath(p: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(p))))


def _sanitize(name: str) -> str:
    s = re.sub(r"[^\w.\-+ ]", "_", str(name), flags=re.UNICODE).strip().lstrip(".").strip()
    return s[:120] or "slide"


def _unique(name: str, used: set[str], reserved: set[str] = frozenset()) -> str:
    """``name``, or ``name_1``, ``name_2``...: unique case-insensitively (case-insensitive file systems)."""
    cand, k = name, 1
    while cand.casefold() in used or cand in reserved:
        cand = f"{name}_{k}"
        k += 1
    used.add(cand.casefold())
    return cand


def _short(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:300] if s else type(e).__name__


def _reason(e: BaseException, path: str | Path | None = None) -> str:
    """A one-line reason; the path prefix of InputError messages is dropped (the record holds the path)."""
    msg = _short(e)
    if path is not None:
        for pre in (f"{path}: ", f"{Path(path)}: "):
            if msg.startswith(pre):
                msg = msg[len(pre):]
    if not isinstance(e, InputError):
        msg = f"{type(e).__name__}: {msg}"
    return msg


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False, sort_keys=False) + "\n"


def is_wsi(path: str | Path) -> bool:
    """A whole-slide scan: an SVS/NDPI/... file, or a pyramidal (or very large) TIFF."""
    p = Path(path)
    suf = p.suffix.lower()
    if suf in WSI_SUFFIXES:
        return True
    if suf not in (".tif", ".tiff"):
        return False
    try:
        import tifffile

        with tifffile.TiffFile(p) as tf:
            s = tf.series[0]
            if len(getattr(s, "levels", [])) > 1:
                return True
            shape = s.shape
            hw = shape[:2] if len(shape) == 2 or shape[-1] in (1, 3, 4) else shape[-2:]
            return int(hw[0]) * int(hw[1]) > WSI_MIN_PIXELS
    except Exception:
        return False  # not readable as TIFF: let the field reader give the reason


def summarize_totals(counts: dict[str, int], wbc_labels: list, wbc_unfamiliar: list | None = None,
                     rbc_morphology: dict[str, int] | None = None, rbc_scores: list | None = None) -> dict:
    """The summary of a slide from its totals; ``rbc_morphology``: red cells per morphology type summed over
    its fields (graded once over the slide, as ICSH grades a film, not averaged over fields)."""
    import statistics

    from .report import summarize_counts

    score = float(statistics.median(rbc_scores)) if rbc_scores else None  # the median of its fields' medians
    return summarize_counts(counts, wbc_labels, wbc_unfamiliar, rbc_morphology=rbc_morphology, rbc_score=score)


def _add_morph(a: dict | None, b: dict | None) -> dict | None:
    if not b:
        return a
    out = dict(a or {})
    for k, v in b.items():
        out[k] = out.get(k, 0) + int(v)
    return out


def _unfamiliar_of(u: dict) -> list:
    """A unit's per-WBC unfamiliar flags (units recorded before the flag existed: none)."""
    return list(u.get(WBC_UNFAMILIAR_KEY) or [False] * len(u[WBC_LABELS_KEY]))


def _add_counts(a: dict, b: dict) -> dict:
    from .types import KINDS

    return {k: int(a.get(k, 0)) + int(b.get(k, 0)) for k in KINDS}


# ============================================================================ planning
def _spec(name: str, kind: str, sources: list[str], files: list | None = None, error: str | None = None,
          warnings: list | None = None, **kw) -> dict:
    return {"name": name, "kind": kind, "sources": sources, "files": files or [], "error": error,
            "warnings": warnings or [], **kw}


def _failed_spec(inp: str, reason: str) -> dict:
    return _spec(_sanitize(Path(inp).stem or Path(inp).name or "input"), "none", [str(inp)], error=reason)


def expand_inputs(inputs: Iterable[str | Path]) -> list[dict]:
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
    from .adapters.yolo import tile_spans

    prev_slides = list((previous or {}).get("slides", []))
    prev_by_key = {s["key"]: s for s in prev_slides}
    prev_fields = {f["path"]: f for s in prev_slides for f in s.get("fields", []) if f.get("path")}
    specs = expand_inputs(inputs)
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


# ============================================================================ workers
class Worker:
    """Loads the models once and runs work units (fields, whole-slide bands, single-cell exports)."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.pipe = None
        self.clf = None
        threads = cfg.get("torch_threads")
        if threads:
            try:
                import torch

                torch.set_num_threads(int(threads))
            except ImportError:
                pass

    def _spec(self):
        from .pipeline import PipelineSpec

        return PipelineSpec.from_dict(self.cfg["pipeline"])

    def _pipeline(self):
        if self.pipe is None:
            from .pipeline import Pipeline

            spec = self._spec()  # the stages as analyze builds them; the classifier shared with _cellavision
            self.pipe = Pipeline(detector=spec.build_detector(), refiner=spec.build_refiner(),
                                 classifier=self._classifier() if spec.classifier else None,
                                 morphology=spec.build_morphology(), spec=spec)
        return self.pipe

    def _classifier(self):
        if self.clf is None:
            self.clf = self._spec().build_classifier()
        return self.clf

    def run(self, task: dict) -> dict:
        t0 = time.perf_counter()
        try:
            kind = task["type"]
            if kind == "field":
                r = self._field(task)
            elif kind == "band":
                r = self._band(task)
            elif kind == "cellavision":
                r = self._cellavision(task)
            else:
                raise ValueError(f"unknown task type {kind}")
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # one unit failing must not stop the batch
            if os.environ.get("BCCDET_DEBUG"):
                import traceback

                traceback.print_exc()
            r = {"status": "failed", "error": _reason(e, task.get("path"))}
        r.setdefault("ms", {})["unit"] = round((time.perf_counter() - t0) * 1e3, 1)
        return r

    # ---------------------------------------------------------------- units
    def _field(self, t: dict) -> dict:
        from .report import rbc_morphology_counts, rbc_morphology_median_score

        rep = self._pipeline().analyze(t["path"])
        cells = rep.cells
        ms = {k: round(v, 1) for k, v in rep.timings.items()}
        fmts = tuple(self.cfg.get("formats", ()))
        files = None
        # no timings in a field's report.json: a resumed or repeated batch writes the same bytes
        if t["write"]:  # shared file system: write OUT/<slide>/<field>/ here
            rep.write(t["dest"], formats=fmts, timings=False)
        else:  # Ray: the outputs travel back to the driver, which writes them
            with tempfile.TemporaryDirectory(prefix="bccdet-field-") as tmp:
                rep.write(tmp, formats=fmts, timings=False, atomic=False)
                files = {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir())}
        labels = [lab for k, lab in zip(cells.kind, cells.label) if k == "wbc"]
        unf = [bool(u) for k, u in zip(cells.kind, cells.unfamiliar) if k == "wbc"]
        return {"status": "done", "counts": cells.counts(), WBC_LABELS_KEY: labels, WBC_UNFAMILIAR_KEY: unf, "ms": ms,
                "files": files, RBC_MORPHOLOGY_KEY: rbc_morphology_counts(cells),
                RBC_SCORE_KEY: rbc_morphology_median_score(cells)}

    def _band(self, t: dict) -> dict:
        """One row of tiles of a whole-slide scan, read tile by tile at level 0 (constant memory)."""
        import tiffslide

        from .adapters.yolo import tile_spans
        from .report import cell_row, rbc_morphology_counts

        pipe = self._pipeline()
        y0, y1, cy0, cy1 = t["yspan"]
        rows, counts, labels, unf, morph = [], {}, [], [], None
        with tiffslide.TiffSlide(t["path"]) as slide:
            width = slide.dimensions[0]
            for x0, x1, cx0, cx1 in tile_spans(width, self.cfg["tile"], self.cfg["overlap"]):
                arr = slide.read_region((x0, y0), 0, (x1 - x0, y1 - y0), as_array=True, padding=False)
                arr = array_to_rgb8(arr)
                cells = pipe.run(arr, t["path"])
                if not len(cells):
                    continue
                cx = (cells.xyxy[:, 0] + cells.xyxy[:, 2]) / 2 + x0
                cy = (cells.xyxy[:, 1] + cells.xyxy[:, 3]) / 2 + y0
                keep = (cx >= cx0) & (cx < cx1) & (cy >= cy0) & (cy < cy1)  # the detector's centre-in-core rule
                cells = cells[keep]
                counts = _add_counts(counts, cells.counts())
                morph = _add_morph(morph, rbc_morphology_counts(cells))
                for i in range(len(cells)):
                    rows.append(cell_row(cells, i, (x0, y0)))
                    if cells.kind[i] == "wbc":
                        labels.append(cells.label[i])
                        unf.append(bool(cells.unfamiliar[i]))
        buf = io.StringIO()
        csv.writer(buf).writerows(rows)
        text = buf.getvalue()
        files = None
        if t["write"]:
            write_text_atomic(t["dest"], text)
        else:
            files = {Path(t["dest"]).name: text.encode("utf-8")}
        return {"status": "done", "counts": _add_counts({}, counts), WBC_LABELS_KEY: labels, WBC_UNFAMILIAR_KEY: unf,
                "files": files, RBC_MORPHOLOGY_KEY: morph}

    def _cellavision(self, t: dict) -> dict:
        """A CellaVision-style export (single-cell images of one patient): the classifier's ``classify_paths``
        and its patient ``summary`` (with ``apl_score``)."""
        from .adapters.classifier import classify_paths
        from .adapters.classifier import summary as patient_summary
        from .vocab import LABELS

        clf = self._classifier()
        rows = classify_paths([f["path"] for f in t["fields"]], clf, device=self.cfg["pipeline"]["device"])
        adaptation = None
        if self.cfg.get("adapt"):  # `batch --adapt`: this patient's class mix re-estimated, as `classify --adapt`
            from .adapters.classifier import adapt_rows

            adaptation = adapt_rows(rows, clf.prior, clf.threshold)
        buf = io.StringIO()
        w = csv.writer(buf)
        pcols = [f"p_{lab}" for lab in LABELS]
        w.writerow(["name", "path", "given_class", "label", "label_score", "review", *pcols, "unfamiliar", "label_alone"])
        counts = {"rbc": 0, "wbc": 0, "platelet": 0}
        labels, unf, failed = [], [], {}
        for f, r in zip(t["fields"], rows):
            lab = r.get("label") or None
            if lab is None:
                failed[f["name"]] = _strip_path(r.get("reason") or "not classified", f["path"])
                continue
            kind = "platelet" if lab == "platelet" else "wbc"
            counts[kind] += 1
            if kind == "wbc":
                labels.append(lab)
                unf.append(bool(r.get("unfamiliar")))
            sc = r.get("label_score")
            w.writerow([f["name"], f["path"], f.get("given_class") or "", lab, "" if sc is None else f"{float(sc):.4f}",
                        int(bool(r.get("review"))), *("" if r.get(c) is None else f"{float(r[c]):.4f}" for c in pcols),
                        "" if r.get("unfamiliar") is None else int(r["unfamiliar"]), r.get("label_alone", lab)])
        text = buf.getvalue()
        ps = patient_summary(rows, prior_adaptation=adaptation)
        from .report import classify_html

        page = classify_html([(t["slide"], ps, rows)], {"name": self.cfg["pipeline"]["classifier"]["name"],
                                                        "sha256": self.cfg["pipeline"]["classifier"]["sha256"]})
        files = None
        if t["write"]:
            write_text_atomic(Path(t["dest"]).with_name("report.html"), page)
            write_text_atomic(t["dest"], text)  # cells.csv last: its presence marks the unit written
        else:
            files = {"report.html": page.encode("utf-8"), "cells.csv": text.encode("utf-8")}
        return {"status": "done", "counts": counts, WBC_LABELS_KEY: labels, WBC_UNFAMILIAR_KEY: unf, "apl_score": ps.get("apl_score"),
                "patient_summary": ps, "failed": failed, "files": files}


def _strip_path(msg: str, path: str) -> str:
    pre = f"{path}: "
    return msg[len(pre):] if msg.startswith(pre) else msg


# ---------------------------------------------------------------------------- executors
_POOL_WORKER: Worker | None = None


def _pool_init(cfg: dict) -> None:
    global _POOL_WORKER
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _POOL_WORKER = Worker(cfg)


def _pool_run(task: dict) -> dict:
    assert _POOL_WORKER is not None
    return _POOL_WORKER.run(task)


class InProcessExecutor:
    """``--workers 1``: the models are loaded once, in this process."""

    def __init__(self, cfg: dict):
        self.worker = Worker(cfg)

    def map_unordered(self, tasks: Iterable[dict]) -> Iterator[tuple[dict, dict]]:
        for t in tasks:
            yield t, self.worker.run(t)

    def close(self) -> None:
        pass


class PoolExecutor:
    """``--workers N``: N spawned processes, each loading the models once; a crashed worker (out of
    memory, segfault) fails only the units it held, and the pool is restarted."""

    def __init__(self, cfg: dict, workers: int, max_restarts: int = 3):
        self.cfg, self.n, self.restarts = cfg, workers, max_restarts
        self.pool = self._new()

    def _new(self):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(self.n, mp_context=mp.get_context("spawn"), initializer=_pool_init, initargs=(self.cfg,))

    def map_unordered(self, tasks: Iterable[dict]) -> Iterator[tuple[dict, dict]]:
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        it = iter(tasks)
        inflight: dict = {}
        broken = False

        def fill():
            nonlocal broken
            while len(inflight) < 2 * self.n and not broken:
                t = next(it, None)
                if t is None:
                    return
                try:
                    inflight[self.pool.submit(_pool_run, t)] = t
                except BrokenProcessPool:
                    broken = True
                    inflight[_failed_future("worker process died")] = t

        fill()
        while inflight:
            done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            for f in done:
                t = inflight.pop(f)
                try:
                    r = f.result()
                except BrokenProcessPool:
                    broken = True
                    r = {"status": "failed", "error": "worker process died (out of memory?); redone by --resume"}
                except Exception as e:
                    r = {"status": "failed", "error": _reason(e, t.get("path"))}
                yield t, r
            if broken and not inflight:
                if self.restarts <= 0:
                    raise RuntimeError("worker processes keep dying; giving up")
                self.restarts -= 1
                self.pool.shutdown(wait=False, cancel_futures=True)
                self.pool = self._new()
                broken = False
            fill()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _failed_future(msg: str):
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    f: Future = Future()
    f.set_exception(BrokenProcessPool(msg))
    return f


class _RayActor:
    def __init__(self, cfg: dict):
        self.w = Worker(cfg)

    def run(self, task: dict) -> dict:
        return self.w.run(task)


class RayExecutor:
    """``--backend ray``: one actor per worker, each loading the models once; outputs come back to the
    driver (so OUT need not be shared), inputs are read by path on the workers (shared storage)."""

    def __init__(self, cfg: dict, workers: int | None, address: str | None, cpus_per_worker: float = 1.0):
        try:
            import ray
        except ImportError as e:
            raise InputError(f"--backend ray needs ray (pip install 'ray[data]'): {_short(e)}") from None
        self.ray = ray
        self.started = False
        address = address or os.environ.get("RAY_ADDRESS") or None
        if not ray.is_initialized():
            kw: dict = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            if address:
                kw["address"] = address
            else:
                kw["num_cpus"] = int(workers or os.cpu_count() or 1)
            try:
                ray.init(**kw)
            except Exception as e:
                raise InputError(f"cannot start Ray ({_short(e)})") from None
            self.started = True
        gpus = 1 if str(cfg["pipeline"].get("device", "cpu")).startswith("cuda") else 0  # one GPU per actor
        res = ray.cluster_resources()
        n = workers or max(1, int(res.get("GPU", 1)) if gpus else int(res.get("CPU", 1) // cpus_per_worker))
        cfg = dict(cfg, pipeline=dict(cfg["pipeline"]))
        cfg["torch_threads"] = max(1, int(cpus_per_worker))
        spec = cfg["pipeline"]
        for key in ("detector", "classifier", "refiner", "rbc_morphology"):  # ship the weights: nodes need not
            if spec.get(key) and spec[key].get("path"):  # share a file system (a refiner without a path is
                spec[key] = dict(spec[key], bytes=Path(spec[key]["path"]).read_bytes())  # LiteMedSAM from its package)
        self.cfg_ref = ray.put(cfg)
        self.Actor = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus)(_RayActor)
        self.actors = [self.Actor.remote(self.cfg_ref) for _ in range(n)]

    def map_unordered(self, tasks: Iterable[dict]) -> Iterator[tuple[dict, dict]]:
        ray = self.ray
        from ray.exceptions import RayActorError

        it = iter(tasks)
        slots = [a for a in self.actors for _ in range(2)]  # two units queued per actor: no idle gaps
        inflight: dict = {}
        while True:
            while slots:
                t = next(it, None)
                if t is None:
                    break
                a = slots.pop()
                inflight[a.run.remote(t)] = (t, a)
            if not inflight:
                return
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                t, a = inflight.pop(ref)
                try:
                    r = ray.get(ref)
                except RayActorError as e:
                    r = {"status": "failed", "error": f"Ray worker died ({_short(e)}); redone by --resume"}
                    with contextlib.suppress(Exception):
                        ray.kill(a)
                    a = self.Actor.remote(self.cfg_ref)
                    self.actors.append(a)
                except Exception as e:
                    r = {"status": "failed", "error": _reason(e, t.get("path"))}
                slots.append(a)
                yield t, r

    def close(self) -> None:
        for a in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(a)
        if self.started:
            self.ray.shutdown()


# ============================================================================ the batch
def _load_json(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # never written non-atomically by us: someone else's file
        raise InputError(f"{p}: not a readable batch file ({_short(e)})") from None


def clean_leftovers(out: Path) -> int:
    """Remove what a killed run can leave: hidden ``.NAME.partial-*`` / ``.NAME.old-*`` folders and
    ``.NAME.*.tmp`` files (never a complete output)."""
    n = 0
    pat = re.compile(r"^\..+\.(partial-|old-).+|^\..+\.tmp$")
    dirs = [out, out / STATE_DIR]
    with contextlib.suppress(OSError):
        dirs += [d for d in out.iterdir() if d.is_dir() and not d.name.startswith(".")]
        dirs += [d / BANDS_DIR for d in list(dirs) if (d / BANDS_DIR).is_dir()]
    for d in dirs:
        if not d.is_dir():
            continue
        for e in d.iterdir():
            if pat.match(e.name):
                if e.is_dir():
                    shutil.rmtree(e, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        e.unlink()
                n += 1
    return n


@contextlib.contextmanager
def _lock(out: Path):
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock
        yield
        return
    f = open(out / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(f"{out} is in use by another bccdet batch (wait for it, or choose another --out)") from None
        yield
    finally:
        f.close()


class Batch:
    """One batch run over OUT. ``run()`` returns the totals (see ``BatchResult``)."""

    def __init__(self, out: Path, inputs: list[str], *, resume: bool = False, workers: int | None = None,
                 backend: str = "local", detector: str | None = None, classifier: str | None = None,
                 device: str = "cpu", classify: bool | None = None, refine: bool | None = None,
                 formats: tuple[str, ...] | None = None, ray_address: str | None = None, detector_options: dict | None = None,
                 progress: bool | None = None, log: Log | None = None, images: str | None = None,
                 adapt: bool | None = None, review_threshold: float | None = None, rbc_morphology: bool | None = None):
        if images is not None and images not in IMAGE_KINDS:
            raise InputError(f"unknown --images {images!r}; expected auto, fields or cells")
        if backend not in ("local", "ray"):
            raise InputError(f"unknown --backend {backend!r}; expected local or ray")
        if workers is not None and workers < 1:
            raise InputError("--workers must be at least 1")
        try:
            self.review_threshold = check_review_threshold(review_threshold)
        except ValueError as e:
            raise InputError(f"--review-threshold {e}") from None
        bad = sorted(set(formats or ()) - {"coco", "geojson"})
        if bad:
            raise InputError(f"unknown --format {bad}; expected coco or geojson")
        self.out = _abspath(out)
        self.inputs = [str(_abspath(i)) for i in inputs]
        self.resume, self.workers, self.backend = resume, workers, backend
        self.detector, self.classifier, self.device, self.classify = detector, classifier, device, classify
        self.refine = refine
        self.formats = None if formats is None else tuple(sorted(set(formats)))
        self.ray_address = ray_address
        self.detector_options = None if detector_options is None else dict(detector_options)
        self.progress = progress
        self.images = images
        self.adapt = adapt
        self.rbc_morphology = rbc_morphology
        self.sam_precision: str | None = None
        self._log = log or (lambda m: print(m, file=sys.stderr))
        self.bar = None
        self.no_classifier = ""
        self.slides: list[dict] = []
        self.states: dict[str, dict] = {}
        self._last_manifest = 0.0
        self._last_postfix = 0.0

    # ---------------------------------------------------------------- output
    def log(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            self._log(msg)

    # ---------------------------------------------------------------- set-up
    def _models(self) -> tuple[dict, dict, list[str]]:
        from .adapters.sam import encoder_precision
        from .pipeline import resolve_spec

        # one SAM precision for the whole batch, every worker and node alike: the resumed batch's, else the
        # driver's choice for --device (bf16 where native)
        spec, notes = resolve_spec(
            detector=self.detector, classify=bool(self.classify), classifier=self.classifier,
            review_threshold=self.review_threshold, refine=bool(self.refine), sam_precision=self.sam_precision,
            rbc_morphology=bool(self.rbc_morphology), device=self.device,
            # a batch started before the grey border (none recorded) keeps running without it
            detector_options={"tile": TILE, "overlap": TILE_OVERLAP, "border": 0, **self.detector_options})
        for n in notes:
            if n.startswith("WBC classification"):
                self.no_classifier = n[n.rindex("(") + 1:-1]
        if not self.classify:
            notes.append("WBC classification off (--no-classify): detect-only, labels are null")
        if not self.refine:
            notes.append("SAM refinement off (--no-refine): masks are the detector's")
        elif spec.refiner["precision"] == "bf16" and encoder_precision("auto", self.device) != "bf16":
            notes.append(f"SAM runs in bf16, as when this batch started, but {self.device} here has no native "
                         "bf16: emulated, several times slower (a new --out runs fp32)")  # only a resumed bf16 batch
        if not self.rbc_morphology:
            notes.append("red-cell morphology off (--no-rbc-morphology)")
        cfg = {"pipeline": spec.to_dict(), "tile": TILE, "overlap": TILE_OVERLAP, "formats": list(self.formats),
               "adapt": bool(self.adapt)}
        return spec.models(), cfg, notes

    def _pinned(self, prev: dict, kind: str) -> str | None:
        """The registered model a resumed batch started with (by name, same sha256) when it is no longer the
        default for ``kind``; None where it is the default or is not registered any more."""
        from .weights import WeightsError, default_name, resolve

        m = (prev.get("models") or {}).get(kind) or {}
        default = default_name(kind)
        if not m.get("name") or m["name"] == default:
            return None
        try:
            _, name, sha = resolve(m["name"], kind)
        except WeightsError:
            return None
        if sha != m.get("sha256"):
            return None
        self.log(f"note: {kind} {name}, as when this batch started (the default is now {default})")
        return name

    def _state_path(self, slide: str) -> Path:
        return self.out / STATE_DIR / f"{slide}.json"

    def _save_state(self, slide: str) -> None:
        write_text_atomic(self._state_path(slide), json.dumps(self.states[slide], ensure_ascii=False))

    def write_manifest(self, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self._last_manifest < MANIFEST_EVERY_S:
            return
        self._last_manifest = now
        doc = {"format": FORMAT, "bccdet": _version(), "updated": _now(), "inputs": self.inputs, "args": self.args,
               "models": self.models, "options": self.options, "slides": [self._public(s) for s in self.slides]}
        write_text_atomic(self.out / MANIFEST, _json(doc))

    def _public(self, s: dict) -> dict:
        """The manifest record of a slide (counts of its fields, outputs, errors)."""
        st = self.states.get(s["slide"], {}).get("units", {})
        fields = []
        for f in s["fields"]:
            g = dict(f)
            if s["kind"] == "fields" and f["status"] == "done":
                g["output"] = f"{s['slide']}/{f['name']}"
            u = st.get(f"f:{f['name']}")
            if u and u.get("ms"):
                g["ms"] = u["ms"]
            fields.append(g)
        n = {k: sum(f["status"] == k for f in s["fields"]) for k in ("done", "failed", "skipped", "pending")}
        rec = {k: s[k] for k in ("slide", "key", "kind", "source", "sha256", "status", "error")}
        rec.update(n_fields=len(s["fields"]), n_done=n["done"], n_failed=n["failed"], n_skipped=n["skipped"],
                   n_pending=n["pending"])
        outs: dict = {"dir": s["slide"]}
        if s["status"] == "done":
            outs["summary"] = f"{s['slide']}/slide.json"
            if s["kind"] in ("wsi", "cellavision"):
                outs["cells"] = f"{s['slide']}/cells.csv"
            if s["kind"] == "wsi":
                outs["overview"] = f"{s['slide']}/overview.jpg"
        rec["outputs"] = outs
        if s.get("wsi"):
            rec["wsi"] = dict(s["wsi"], bands_done=sum(1 for k, v in st.items() if k.startswith("b:") and v.get("status") == "done"))
        rec["warnings"] = s.get("warnings", [])
        rec["fields"] = fields
        return rec

    # ---------------------------------------------------------------- units
    def _units(self, s: dict) -> list[tuple[str, dict]]:
        """(unit id, task) of every unit of a slide that is not done (by content hash and outputs on disk)."""
        name = s["slide"]
        units = self.states.setdefault(name, {"slide": name, "units": {}})["units"]
        todo = []
        if s["error"] or s["status"] in ("failed", "skipped"):
            return []
        if s["kind"] == "fields":
            for f in s["fields"]:
                if f["status"] not in ("pending", "done"):
                    continue
                uid = f"f:{f['name']}"
                u = units.get(uid)
                d = self.out / name / f["name"]
                if u and u.get("status") == "done" and u.get("sha256") == f["sha256"] and (d / "report.json").is_file():
                    f["status"] = "done"
                    continue
                f["status"] = "pending"
                todo.append((uid, {"type": "field", "slide": name, "unit": uid, "path": f["path"], "name": f["name"],
                                   "sha256": f["sha256"], "dest": str(d), "write": True}))
        elif s["kind"] == "wsi":
            from .adapters.yolo import tile_spans

            f = s["fields"][0]
            if f["status"] == "skipped":
                return []
            n_x = len(tile_spans(s["wsi"]["width"], self.options["tile"], self.options["overlap"]))
            for i, span in enumerate(tile_spans(s["wsi"]["height"], self.options["tile"], self.options["overlap"])):
                uid = f"b:{i:05d}"
                bf = self.out / name / BANDS_DIR / f"band-{i:05d}.csv"
                u = units.get(uid)
                if u and u.get("status") == "done" and u.get("sha256") == f["sha256"] and bf.is_file():
                    continue
                todo.append((uid, {"type": "band", "slide": name, "unit": uid, "path": f["path"], "sha256": f["sha256"],
                                   "yspan": list(span), "dest": str(bf), "write": True, "tiles": n_x}))
        elif s["kind"] == "cellavision":
            ok = [f for f in s["fields"] if f["status"] in ("pending", "done")]
            u = units.get("cv")
            if ok:
                if u and u.get("status") == "done" and u.get("sha256") == s["sha256"] and (self.out / name / "cells.csv").is_file():
                    bad = u.get("failed") or {}
                    for f in ok:
                        f.update(status="failed", error=bad[f["name"]]) if f["name"] in bad else f.update(status="done")
                else:
                    for f in ok:
                        f["status"] = "pending"
                    todo.append(("cv", {"type": "cellavision", "slide": name, "unit": "cv", "sha256": s["sha256"],
                                        "fields": [{k: f.get(k) for k in ("name", "path", "given_class")} for f in ok],
                                        "dest": str(self.out / name / "cells.csv"), "write": True}))
        return todo

    @staticmethod
    def _weight(task: dict) -> int:
        return int(task.get("tiles", len(task.get("fields", [])) or 1))

    def _record(self, task: dict, res: dict) -> None:
        """A unit finished: write its returned files (Ray), then its state record (both atomic)."""
        s = self._by_name[task["slide"]]
        files = res.pop("files", None)
        if res["status"] == "done" and files:
            if task["type"] == "field":
                with atomic_dir(task["dest"]) as tmp:
                    for n, data in files.items():
                        (tmp / n).write_bytes(data)
            else:  # one file named as task["dest"], or several beside it (a single-cell slide's report.html)
                for n, data in files.items():
                    write_bytes_atomic(Path(task["dest"]).with_name(n), data)
        u = {"sha256": task["sha256"], "status": res["status"], "error": res.get("error"), "ms": res.get("ms")}
        if res["status"] == "done":
            u["counts"] = res["counts"]
            u[WBC_LABELS_KEY] = res[WBC_LABELS_KEY]
            if WBC_UNFAMILIAR_KEY in res:
                u[WBC_UNFAMILIAR_KEY] = res[WBC_UNFAMILIAR_KEY]
            if res.get(RBC_MORPHOLOGY_KEY):  # kept in the state: a resumed batch grades the slide from every field
                u[RBC_MORPHOLOGY_KEY] = res[RBC_MORPHOLOGY_KEY]
                if res.get(RBC_SCORE_KEY) is not None:
                    u[RBC_SCORE_KEY] = res[RBC_SCORE_KEY]
            for k in ("apl_score", "patient_summary", "failed"):
                if k in res:
                    u[k] = res[k]
        self.states[s["slide"]]["units"][task["unit"]] = u
        self._save_state(s["slide"])
        if task["type"] == "field":
            f = next(f for f in s["fields"] if f["name"] == task["name"])
            f["status"], f["error"] = res["status"], res.get("error")
            if res["status"] == "failed":
                self.log(f"error: {f['path']}: {res['error']}")
        elif res["status"] == "failed":
            if task["type"] == "cellavision":
                for f in s["fields"]:
                    if f["status"] == "pending":
                        f.update(status="failed", error=res["error"])
            else:
                s["fields"][0].update(status="failed", error=f"tile row {task['unit'][2:]}: {res['error']}")
            self.log(f"error: {s['slide']}: {res['error']}")
        elif task["type"] == "cellavision":
            bad = res.get("failed") or {}
            for f in s["fields"]:
                if f["status"] == "pending":
                    if f["name"] in bad:
                        f.update(status="failed", error=bad[f["name"]])
                        self.log(f"error: {f['path']}: {bad[f['name']]}")
                    else:
                        f["status"] = "done"

    # ---------------------------------------------------------------- slide summaries
    def _finish_slide(self, s: dict) -> None:
        name = s["slide"]
        units = self.states.get(name, {}).get("units", {})
        if s["error"]:
            s["status"] = "failed"
        elif s["kind"] == "wsi" and s["fields"][0]["status"] == "skipped":
            s["status"], s["error"] = "skipped", s["fields"][0]["error"]
        elif s["kind"] == "wsi" and s["fields"][0]["status"] == "failed":
            s["status"], s["error"] = "failed", s["fields"][0]["error"]
        elif s["kind"] == "wsi":
            self._finish_wsi(s, units)
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
                self._finish_fields(s, units)
        if s["status"] == "done":
            self._say_done(s)
        elif s["status"] in ("failed", "skipped"):
            self.log(f"{'error' if s['status'] == 'failed' else 'warning'}: {name}: {s['error']}")

    def _slide_doc(self, s: dict, counts: dict, labels: list, fields: list, apl_score=None, unfamiliar=None,
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
                "models": self.models, **extra, "n_fields": len(s["fields"]),
                "n_fields_done": sum(f["status"] == "done" for f in s["fields"]),
                "fields": fields, "summary": summary, "apl_score": apl_score}

    def _finish_fields(self, s: dict, units: dict) -> None:
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
        doc = self._slide_doc(s, counts, labels, fields, apl_score=apl, unfamiliar=unf, rbc_morphology=morph,
                              rbc_scores=mscores, **extra)
        write_text_atomic(self.out / s["slide"] / "slide.json", _json(doc))
        if s["kind"] == "fields":
            self._drop_stale_fields(s)
        s["status"], s["_summary"] = "done", doc

    def _drop_stale_fields(self, s: dict) -> None:
        """Remove field reports of this slide whose field is gone (an input deleted before --resume): the
        slide folder then holds exactly the fields its slide.json lists. Only folders holding a field
        report (report.json) are touched."""
        d = self.out / s["slide"]
        keep = {f["name"] for f in s["fields"] if f["status"] == "done"} | RESERVED_IN_SLIDE
        for sub in (d.iterdir() if d.is_dir() else []):
            if sub.is_dir() and not sub.is_symlink() and sub.name not in keep and (sub / "report.json").is_file():
                shutil.rmtree(sub, ignore_errors=True)
                self.log(f"note: {s['slide']}/{sub.name}: removed, its image is no longer among the inputs")

    def _finish_wsi(self, s: dict, units: dict) -> None:
        """Concatenate the bands into cells.csv (streaming; ids over the slide), sum counts, draw an overview."""
        from .report import CELLS_CSV_HEADER

        name = s["slide"]
        d = self.out / name
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
        doc = self._slide_doc(s, counts, labels, fields, unfamiliar=unf, rbc_morphology=morph,
                              wsi={k: s["wsi"][k] for k in ("width", "height", "levels", "mpp", "tiles", "bands")})
        write_text_atomic(d / "slide.json", _json(doc))
        s["status"], s["_summary"] = "done", doc

    def _drop_bands(self, s: dict) -> None:
        """A whole-slide scan's tile rows, once merged into cells.csv and recorded done in the manifest."""
        if s["kind"] == "wsi" and s["status"] == "done":
            shutil.rmtree(self.out / s["slide"] / BANDS_DIR, ignore_errors=True)

    def _say_done(self, s: dict) -> None:
        c = s["_summary"]["summary"]["counts"]
        nf = sum(f["status"] == "failed" for f in s["fields"])
        if s["kind"] == "wsi":
            what = f"whole-slide scan, {s['wsi']['tiles']} tiles"
        elif s["kind"] == "cellavision":
            what = f"{len(s['fields'])} single-cell images"
        else:
            what = f"{len(s['fields'])} field(s)"
        self.log(f"{s['slide']}: {what}{f' ({nf} failed)' if nf else ''}: {c['rbc']} RBC, {c['wbc']} WBC, "
                 f"{c['platelet']} platelets -> {self.out / s['slide'] / 'slide.json'}")

    # ---------------------------------------------------------------- run
    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        with _lock(self.out):
            return self._run()

    def _run(self) -> dict:
        t_start = time.perf_counter()
        prev = _load_json(self.out / MANIFEST)
        if prev is not None and prev.get("format") != FORMAT:
            raise InputError(f"{self.out / MANIFEST}: not a bccdet batch manifest ({FORMAT})")
        if prev is not None and not self.resume:
            raise InputError(f"{self.out} already holds a batch (manifest.json): pass --resume to continue it, or choose another --out")
        if not self.inputs and prev is not None:
            self.inputs = list(prev.get("inputs", []))
        elif prev is not None:  # resume with (possibly more) inputs: remember all of them
            self.inputs = list(dict.fromkeys(list(prev.get("inputs", [])) + self.inputs))
        if not self.inputs:
            raise InputError("no inputs given (folders, images, whole-slide scans, globs or a CSV list)")
        # options not given again on --resume: those of the batch being resumed
        was = (prev or {}).get("args", {})
        if self.detector is None:
            self.detector = was.get("detector")
        if self.classifier is None:
            self.classifier = was.get("classifier")
        if self.classify is None:
            self.classify = was.get("classify", True)
        # a batch started with the default models resumes with those same models when a newer bccdet has
        # other defaults (and still ships them): its fields stay comparable and nothing is redone
        if prev is not None and self.detector is None:
            self.detector = self._pinned(prev, "detector")
        if prev is not None and self.classifier is None and self.classify:
            self.classifier = self._pinned(prev, "classifier")
        if self.refine is None:
            self.refine = was.get("refine", False) if prev is not None else True  # older batches: none
        if self.formats is None:
            self.formats = tuple(was.get("formats", ()))
        if self.detector_options is None:
            self.detector_options = dict(was.get("detector_options", {}))
        if prev is None or "border" in was.get("detector_options", {}):
            from .defaults import BORDER

            # recorded, so that a batch started before the detector's grey border resumes without it (_models)
            self.detector_options.setdefault("border", BORDER)
        if self.images is None:
            self.images = was.get("images", "auto")
        if self.adapt is None:
            self.adapt = bool(was.get("adapt", False))
        if self.review_threshold is None:
            self.review_threshold = was.get("review_threshold")
        if self.rbc_morphology is None:  # on for a new batch; a batch made before the stage resumes without it
            self.rbc_morphology = bool(was.get("rbc_morphology", prev is None))
        prev_ref = ((prev or {}).get("models") or {}).get("refiner")
        if prev_ref is not None:  # batches made before the SAM precision was recorded ran fp32
            prev_ref.setdefault("precision", "fp32")
            self.sam_precision = prev_ref["precision"]
        # --images / --adapt / --review-threshold are recorded only when not the default: batches made before
        # them resume unchanged
        newer = {**({"images": self.images} if self.images != "auto" else {}), **({"adapt": True} if self.adapt else {}),
                 **({"review_threshold": self.review_threshold} if self.review_threshold is not None else {}),
                 **({"rbc_morphology": True} if self.rbc_morphology else {})}
        self.args = {"detector": self.detector, "classifier": self.classifier, "classify": self.classify,
                     "refine": self.refine, "formats": list(self.formats),
                     "detector_options": self.detector_options, **newer}
        self.models, cfg, notes = self._models()
        self.options = {"tile": cfg["tile"], "overlap": cfg["overlap"], "detector_options": self.detector_options,
                        "formats": list(self.formats), **newer}
        if prev is not None and (prev.get("models") != self.models or prev.get("options") != self.options):
            raise InputError(f"{self.out} was made with other models or options ({_diff(prev, self.models, self.options)}); "
                             "resume with the same ones, or choose another --out")
        for n in notes:
            self.log(f"note: {n}")
        n_clean = clean_leftovers(self.out)
        if n_clean:
            self.log(f"note: removed {n_clean} incomplete output(s) left by an interrupted run")
        self.slides = plan_batch(self.inputs, self.options, prev)
        self._by_name = {s["slide"]: s for s in self.slides}
        for s in self.slides:
            st = _load_json(self._state_path(s["slide"])) if (self.out / STATE_DIR).is_dir() else None
            self.states[s["slide"]] = st if st and st.get("slide") == s["slide"] else {"slide": s["slide"], "units": {}}
        # plan-time problems, one line each
        for s in self.slides:
            for wrn in s.get("warnings", []):
                self.log(f"warning: {wrn['path']}: {wrn['reason']}")
            for f in s["fields"]:
                if f["status"] == "failed":
                    self.log(f"error: {f['path']}: {f['error']}")
                elif f["status"] == "skipped":
                    self.log(f"warning: {f['path']}: {f['error']}")
        # units to run, per slide
        todo: dict[str, list] = {}
        prev_done = {s["key"]: s for s in (prev or {}).get("slides", []) if s.get("status") == "done"}
        cv_ok = _classifier_available() and cfg["pipeline"].get("classifier") is not None
        for s in self.slides:
            if s["kind"] == "cellavision" and not s["error"]:
                if not self.classify:
                    s["error"] = "single-cell images need the classifier, which is off (--no-classify)"
                elif not cv_ok:
                    s["error"] = ("classifier not available"
                                  + (f" ({self.no_classifier}; pass --classifier)" if self.no_classifier else ""))
                if s["error"]:
                    for f in s["fields"]:
                        if f["status"] == "pending":
                            f.update(status="failed", error=s["error"])
            old = prev_done.get(s["key"])
            unchanged = (not s["error"] and old and old.get("sha256") == s["sha256"]
                         and (self.out / s["slide"] / "slide.json").is_file())
            if unchanged and s["kind"] == "wsi" and s["fields"][0]["status"] == "pending":
                s["status"] = s["fields"][0]["status"] = "done"  # its tile rows were merged and removed
                todo[s["slide"]] = []
                continue
            todo[s["slide"]] = self._units(s)
            if unchanged and not todo[s["slide"]]:
                s["status"] = "done"  # done in an earlier run, unchanged
                continue
            s["status"] = "partial" if any(self.states[s["slide"]]["units"].values()) else "pending"
        total_units = sum(self._weight(t) for s in self.slides for _, t in todo[s["slide"]])
        n_fields_all = sum(len(s["fields"]) if s["kind"] != "wsi" else 1 for s in self.slides)
        already = sum(1 for s in self.slides for f in s["fields"] if f["status"] == "done")
        if prev is not None:
            self.log(f"resume: {already} of {n_fields_all} fields/scans already done, {sum(len(v) for v in todo.values())} unit(s) to run")
        self.write_manifest()
        remaining = {name: len(v) for name, v in todo.items()}
        for s in self.slides:  # nothing to run: summarize now
            if remaining[s["slide"]] == 0 and s["status"] != "done":
                self._finish_slide(s)
        self.write_manifest()
        for s in self.slides:
            self._drop_bands(s)
        tasks = [t for s in self.slides for _, t in todo[s["slide"]]]
        if self.backend == "ray":  # the driver writes what the actors return: OUT need not be shared
            tasks = [dict(t, write=False) for t in tasks]
        executor = None
        try:
            if tasks:
                executor = self._executor(cfg, len(tasks))
                self._progress(total_units)
                for task, res in executor.map_unordered(tasks):
                    self._record(task, res)
                    name = task["slide"]
                    remaining[name] -= 1
                    if remaining[name] == 0:
                        self._finish_slide(self._by_name[name])
                        self.write_manifest()
                        self._drop_bands(self._by_name[name])
                    else:
                        self._by_name[name]["status"] = "partial"
                        self.write_manifest(force=False)
                    if self.bar is not None:
                        self._postfix(name)
                        self.bar.update(self._weight(task))
        finally:  # interrupted or not: close the workers and record where the batch stands
            if self.bar is not None:
                self._postfix(None)
                self.bar.close()
                self.bar = None
            if executor is not None:
                with contextlib.suppress(Exception):
                    executor.close()
            self.write_manifest()
        write_aggregates(self.out, self.slides)
        return self._result(time.perf_counter() - t_start)

    def _executor(self, cfg: dict, n_tasks: int):
        if self.backend == "ray":
            return RayExecutor(cfg, self.workers, self.ray_address)
        n = min(self.workers or 1, n_tasks)
        cpus = os.cpu_count() or 1
        if n <= 1:
            return InProcessExecutor(dict(cfg, torch_threads=None))
        return PoolExecutor(dict(cfg, torch_threads=max(1, cpus // n)), n)

    def _progress(self, total: int) -> None:
        """The progress bar: on a terminal by default (``progress=None``), always (True) or never (False)."""
        if self.progress is False:
            return
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="field", desc="batch", file=sys.stderr, dynamic_ncols=True, mininterval=0.5,
                        smoothing=0.1, disable=None if self.progress is None else False)
        if self.bar.disable:
            self.bar = None
            return
        self._postfix(None)

    def _postfix(self, current: str | None) -> None:
        now = time.monotonic()
        if current is not None and now - self._last_postfix < 0.5:
            return  # counting is O(fields): at most twice a second
        self._last_postfix = now
        sl = [s for s in self.slides if s["status"] not in ("failed", "skipped") or s["fields"]]
        n_done_s = sum(s["status"] == "done" for s in self.slides)
        fl = [f for s in self.slides for f in s["fields"]]
        parts = [f"slides {n_done_s}/{len(sl)}", f"fields {sum(f['status'] == 'done' for f in fl)}/{len(fl)}"]
        nf = sum(f["status"] == "failed" for f in fl) + sum(s["status"] == "failed" for s in self.slides if not s["fields"])
        if nf:
            parts.append(f"failed {nf}")
        if current:
            s = self._by_name[current]
            if s["kind"] == "wsi":
                b = self.states[current]["units"]
                parts.append(f"{current}: rows {sum(1 for v in b.values() if v.get('status') == 'done')}/{s['wsi']['bands']}")
            else:
                parts.append(f"{current}: {sum(f['status'] == 'done' for f in s['fields'])}/{len(s['fields'])}")
        self.bar.set_postfix_str(", ".join(parts), refresh=False)

    def _result(self, elapsed: float) -> dict:
        fl = [f for s in self.slides for f in s["fields"]]
        r = {
            "slides": len(self.slides),
            "slides_done": sum(s["status"] == "done" for s in self.slides),
            "slides_failed": sum(s["status"] == "failed" for s in self.slides),
            "slides_skipped": sum(s["status"] == "skipped" for s in self.slides),
            "fields": len(fl),
            "fields_done": sum(f["status"] == "done" for f in fl),
            "fields_failed": sum(f["status"] == "failed" for f in fl),
            "fields_skipped": sum(f["status"] == "skipped" for f in fl),
            "elapsed_s": round(elapsed, 2),
            "out": str(self.out),
        }
        r["failed"] = bool(r["slides_failed"] or r["fields_failed"])
        return r


def _classifier_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("bccdet.adapters.classifier") is not None
    except (ImportError, ValueError):
        return False


def _diff(prev: dict, models: dict, options: dict) -> str:
    parts = []
    for k in ("detector", "classifier"):
        a, b = (prev.get("models") or {}).get(k), models.get(k)
        if a != b:
            parts.append(f"{k}: {(a or {}).get('name')} -> {(b or {}).get('name')}")
    if prev.get("options") != options:
        parts.append(f"options: {prev.get('options')} -> {options}")
    return "; ".join(parts) or "?"


def _version() -> str:
    from . import __version__

    return __version__


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
    from .types import KINDS
    from .vocab import LABELS, RBC_MORPHOLOGY

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

    from .types import KINDS
    from .vocab import LABELS, RBC_MORPHOLOGY

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

    from .report import DISCLAIMER, KIND_COLORS
    from .vocab import LABELS

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


# ============================================================================ API
def complete_field_dirs(out: Path) -> list[Path]:
    """The per-field output folders of a batch in OUT that hold their report.json (written last)."""
    out = Path(out)
    if not out.exists():
        return []
    return [f for s in out.iterdir() if s.is_dir() and not s.name.startswith(".")
            for f in s.iterdir() if f.is_dir() and not f.name.startswith(".") and (f / "report.json").exists()]


def output_snapshot(out: Path) -> dict:
    """Every output file's bytes plus the manifest without timings: two runs with equal snapshots
    produced the same outputs (used by the kill/resume test and bench/batch.py)."""
    out = Path(out)
    snap = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if p.is_dir() or rel.startswith(".state/") or rel in (".lock", "manifest.json"):
            continue
        snap[rel] = p.read_bytes()
    m = json.loads((out / "manifest.json").read_text())
    m.pop("updated")
    for s in m["slides"]:
        for f in s["fields"]:
            f.pop("ms", None)
    snap["manifest.json"] = m
    return snap


def run_batch(inputs: list[str | Path], out: str | Path, **kw) -> dict:
    """Run (or with ``resume=True`` continue) a batch; see ``Batch`` for the options. Returns the totals."""
    return Batch(Path(out), [str(i) for i in inputs], **kw).run()
