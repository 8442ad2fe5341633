"""The worker: loads the models once and runs work units (one per field, one per row of tiles of a
whole-slide scan, one per single-cell export); in this process, in a pool process or in a Ray actor."""

from __future__ import annotations

import csv
import io
import os
import tempfile
import time
from pathlib import Path

from ..io import array_to_rgb8, write_text_atomic
from .common import (RBC_MORPHOLOGY_KEY, RBC_SCORE_KEY, WBC_LABELS_KEY, WBC_UNFAMILIAR_KEY, _add_counts, _add_morph,
                     _reason)


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
        from ..pipeline import PipelineSpec

        return PipelineSpec.from_dict(self.cfg["pipeline"])

    def _pipeline(self):
        if self.pipe is None:
            from ..pipeline import Pipeline

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
        from ..report import rbc_morphology_counts, rbc_morphology_median_score

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

        from ..adapters.yolo import tile_spans
        from ..report import cell_row, rbc_morphology_counts

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
        from ..adapters.classifier import classify_paths
        from ..adapters.classifier import summary as patient_summary
        from ..vocab import LABELS

        clf = self._classifier()
        rows = classify_paths([f["path"] for f in t["fields"]], clf, device=self.cfg["pipeline"]["device"])
        adaptation = None
        if self.cfg.get("adapt"):  # `batch --adapt`: this patient's class mix re-estimated, as `classify --adapt`
            from ..adapters.classifier import adapt_rows

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
        from ..report import classify_html

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
