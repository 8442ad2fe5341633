"""The batch run (``Batch``, ``run_batch``): set-up, resume, the run loop, progress and the state records.

A kill at any moment leaves every output either complete or absent: each unit's outputs appear
atomically, then its record in ``OUT/.state/<slide>.json``, then the progress bar moves; hidden
``.*.partial-*`` leftovers are removed on the next run (``clean_leftovers``)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from ..io import InputError, atomic_dir, write_bytes_atomic, write_text_atomic
from ..runtime import check_review_threshold
from .aggregate import drop_bands, finish_slide, write_aggregates
from .common import (BANDS_DIR, FORMAT, LOCK_FILE, MANIFEST, MANIFEST_EVERY_S, RBC_MORPHOLOGY_KEY, RBC_SCORE_KEY,
                     STATE_DIR, WBC_LABELS_KEY, WBC_UNFAMILIAR_KEY, Log, _abspath, _json, _load_json, _now, _version)
from .executors import InProcessExecutor, PoolExecutor, RayExecutor
from .plan import IMAGE_KINDS, plan_batch, slide_units
from .resume import previous_manifest, resolve_options


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
    """One batch run over OUT. ``run()`` returns the totals (see ``BatchResult``).

    Here: the run (plan, units to run, the workers, each result recorded), the manifest, the state records
    and the progress bar. What it runs with is settled by resume.py, the slides and their units planned by
    plan.py, each slide summarized by aggregate.py."""

    def __init__(self, out: Path, inputs: list[str], *, resume: bool = False, workers: int | None = None,
                 backend: str = "local", detector: str | None = None, classifier: str | None = None,
                 device: str = "cpu", classify: bool | None = None, refine: bool | None = None,
                 formats: tuple[str, ...] | None = None, ray_address: str | None = None, detector_options: dict | None = None,
                 progress: bool | None = None, log: Log | None = None, images: str | None = None,
                 adapt: bool | None = None, review_threshold: float | None = None, rbc_morphology: bool | None = None,
                 runtime: str | None = None):
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
        self.runtime = runtime  # detector and SAM encoder runtime (None: defaults.RUNTIME, or a resumed batch's own)
        self.detector_precision: str | None = None
        self.classifier_precision: str | None = None
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

    # ---------------------------------------------------------------- state, manifest
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
        """(unit id, task) of every unit of a slide that is not done (plan.slide_units), its state started."""
        name = s["slide"]
        units = self.states.setdefault(name, {"slide": name, "units": {}})["units"]
        return slide_units(self.out, s, units, self.options)

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
        finish_slide(self.out, s, self.states.get(s["slide"], {}).get("units", {}), self.models, self.log)

    # ---------------------------------------------------------------- run
    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        with _lock(self.out):
            return self._run()

    def _run(self) -> dict:
        t_start = time.perf_counter()
        prev = previous_manifest(self.out, self.resume)
        cfg, notes = resolve_options(self, prev)
        for n in notes:
            self.log(f"note: {n}")
        n_clean = clean_leftovers(self.out)
        if n_clean:
            self.log(f"note: removed {n_clean} incomplete output(s) left by an interrupted run")
        self._plan(prev)
        todo = self._todo(prev, cfg)
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
            drop_bands(self.out, s)
        tasks = [t for s in self.slides for _, t in todo[s["slide"]]]
        if self.backend == "ray":  # the driver writes what the actors return: OUT need not be shared
            tasks = [dict(t, write=False) for t in tasks]
        self._execute(cfg, tasks, remaining, total_units)
        write_aggregates(self.out, self.slides)
        return self._result(time.perf_counter() - t_start)

    def _plan(self, prev: dict | None) -> None:
        """The slides (merged with the resumed batch's), their state records, the plan-time problems logged."""
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

    def _todo(self, prev: dict | None, cfg: dict) -> dict[str, list]:
        """Slide -> its units to run; a slide done in an earlier run and unchanged is done, a single-cell
        slide without a classifier failed."""
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
        return todo

    def _execute(self, cfg: dict, tasks: list[dict], remaining: dict[str, int], total_units: int) -> None:
        """Run the tasks on the workers, recording each result and summarizing each slide as its last unit
        ends; the manifest is written and the workers closed however it ends."""
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
                        drop_bands(self.out, self._by_name[name])
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
    produced the same outputs (used by the kill/resume test and python -m bench.batch)."""
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
