"""The one place a smear pipeline is built and run: detect -> refine -> classify WBCs -> type red cells.

- :func:`resolve_spec` turns the user's choices (model names or files, stages on or off, device) into a
  :class:`PipelineSpec`: plain, picklable data (names, sha256s, file paths, options), no model loaded. The
  batch driver ships it to its workers (local processes or Ray actors); ``analyze``, ``curate`` and the
  FiftyOne plugin build from it too.
- :meth:`PipelineSpec.build` loads the models into a :class:`Pipeline` (the heavy imports happen there).
- :meth:`Pipeline.analyze` runs one image into a :class:`SmearReport` (``.cells``, ``.summary``, ``.models``,
  ``.timings``, ``.meta``; ``.write(out_dir)`` writes report.json / .html, cells.csv, overlay.png, ...).

This module imports no ML framework at import time (``import bccdet`` stays light).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .defaults import CLASSIFIER_PRECISION, EDGE_SLIVER, RUNTIME, SCALE
from .io import InputError, abspath, is_grey
from .stages import Classifier, Detector, Refiner
from .types import Cells, SmearMeta

log = logging.getLogger("bccdet")

FORMATS = ("coco", "geojson")  # extra exports beside report.json / .html, cells.csv and overlay.png


def check_formats(formats) -> tuple[str, ...]:
    """``--format`` values: each of :data:`FORMATS`; an :class:`InputError` (one line) otherwise."""
    bad = sorted(set(formats or ()) - set(FORMATS))
    if bad:
        raise InputError(f"unknown --format {bad}; expected {' or '.join(FORMATS)}")
    return tuple(sorted(set(formats or ())))


# ============================================================================ spec
def _ref(path: str | Path, name: str, sha: str) -> dict:
    return {"name": name, "sha256": sha, "path": str(abspath(path))}


def materialize(model: dict) -> str:
    """The weights file of ``model`` (a spec entry): its path, or (Ray on another node) a local copy of the
    bytes the driver shipped with it."""
    from .io import write_bytes_atomic

    p = model.get("path")
    if p and Path(p).is_file():
        return p
    data = model.get("bytes")
    if data is None:
        raise FileNotFoundError(f"{p}: weights file not found on this node")
    d = Path(tempfile.gettempdir()) / "bccdet-weights"
    d.mkdir(parents=True, exist_ok=True)
    dst = d / f"{model['sha256'][:16]}-{Path(p or 'model.pt').name}"
    if not dst.exists():
        write_bytes_atomic(dst, data)
    return str(dst)


@dataclass
class PipelineSpec:
    """What to build, as plain data: each stage a ``{"name", "sha256", "path"}`` entry (None: stage off).

    ``refiner["path"]`` None is LiteMedSAM as its package ships it; ``refiner["precision"]`` pins the
    encoder's precision for every worker alike. ``classifier["review_threshold"]`` overrides the
    classifier's own. ``detector_options`` go to the detector (scale, edge_sliver, tile, overlap, border,
    conf, ...). ``runtime`` (``torch`` or ``openvino``, resolved once so every worker runs the same) runs the
    detector and the SAM image encoder."""

    detector: dict
    refiner: dict | None = None
    classifier: dict | None = None
    rbc_morphology: dict | None = None
    device: str = "cpu"
    detector_options: dict = field(default_factory=dict)
    runtime: str = "torch"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PipelineSpec:
        return cls(**{k: d[k] for k in ("detector", "refiner", "classifier", "rbc_morphology", "device",
                                        "detector_options", "runtime") if k in d})

    def models(self) -> dict:
        """The models as a batch manifest records them (without loading any)."""
        r = self.refiner
        d = self.detector
        return {"detector": {"name": d["name"], "sha256": d["sha256"], "runtime": self.runtime,
                             "precision": d.get("precision", "fp32")},
                "refiner": None if r is None else {"name": r["name"], "sha256": r["sha256"], "precision": r["precision"],
                                                   "runtime": r.get("runtime", self.runtime)},
                "classifier": None if self.classifier is None else {
                    "name": self.classifier["name"], "sha256": self.classifier["sha256"], "runtime": self.runtime,
                    "precision": self.classifier.get("precision", "fp32")},
                **({"rbc_morphology": {"name": self.rbc_morphology["name"], "sha256": self.rbc_morphology["sha256"],
                                       "runtime": self.runtime}}
                   if self.rbc_morphology else {})}

    # ---------------------------------------------------------------- stage constructors (the only ones)
    def build_detector(self):
        from .adapters.yolo import YoloDetector

        d = self.detector
        return YoloDetector(materialize(d), name=d["name"], sha256=d["sha256"], device=self.device,
                            runtime=self.runtime, precision=d.get("precision", "fp32"), **self.detector_options)

    def build_refiner(self):
        if self.refiner is None:
            return None
        from .adapters.sam import LITEMEDSAM, SamRefiner

        r = self.refiner
        if r.get("path"):
            return SamRefiner(materialize(r), sha256=r.get("sha256"), device=self.device, precision=r["precision"],
                              runtime=r.get("runtime", self.runtime))
        return SamRefiner(LITEMEDSAM, device=self.device, precision=r["precision"], runtime=r.get("runtime", self.runtime))

    def build_classifier(self):
        if self.classifier is None:
            return None
        from .adapters.classifier import CellClassifier

        c = self.classifier
        return CellClassifier(materialize(c), device=self.device, name=c["name"], sha256=c["sha256"],
                              threshold=c.get("review_threshold"), runtime=self.runtime,
                              precision=c.get("precision", "fp32"))

    def build_morphology(self):
        if self.rbc_morphology is None:
            return None
        from .adapters.morphology import MorphologyStage

        m = self.rbc_morphology
        return MorphologyStage(materialize(m), device=self.device, name=m["name"], sha256=m["sha256"],
                               runtime=self.runtime)

    def build(self) -> Pipeline:
        """Load every stage: the heavy imports (torch, ultralytics, timm) happen here."""
        return Pipeline(detector=self.build_detector(), refiner=self.build_refiner(),
                        classifier=self.build_classifier(), morphology=self.build_morphology(), spec=self)


def _why(e: Exception) -> str:
    return str(e).splitlines()[0].split(":")[0] if str(e) else type(e).__name__


def resolve_spec(*, detector: str | None = None, refine: bool = True, sam: str | None = None,
                 sam_precision: str | None = None, classify: bool = True, classifier: str | None = None,
                 review_threshold: float | None = None, rbc_morphology: bool = True, device: str = "cpu",
                 detector_options: dict | None = None, runtime: str = RUNTIME,
                 detector_precision: str | None = None,
                 classifier_precision: str | None = None) -> tuple[PipelineSpec, list[str]]:
    """The user's choices -> a :class:`PipelineSpec` plus notes (one line each: a stage left out because its
    default model is not shipped; stages turned off by the caller get none).

    A model asked for by name or file must resolve (:class:`bccdet.weights.WeightsError`, one line); a
    default that is not shipped turns its stage off with a note (the detector has no such fallback).
    ``sam``: a registered ``sam`` name, ``"litemedsam"`` (as shipped) or a checkpoint file; None the registry's
    default. ``sam_precision`` pins SAM's encoder (a resumed batch); None picks for ``device``. ``runtime``
    (:data:`bccdet.runtime.RUNTIMES`) is resolved here for ``device``; under OpenVINO the detector runs at
    ``detector_precision`` (None: bf16 where native, as SAM's encoder; on BCCD test box mAP50 0.909 against
    torch's 0.908, ``python -m bench.detector_runtime``), under torch at fp32; the classifier at
    ``classifier_precision`` (None: :data:`bccdet.defaults.CLASSIFIER_PRECISION`) on either runtime.
    """
    from .runtime import check_device, check_review_threshold, resolve_precision, resolve_runtime
    from .weights import WeightsError, resolve

    try:
        device = check_device(device)
        review_threshold = check_review_threshold(review_threshold)
        runtime = resolve_runtime(runtime, device)
        det_precision = resolve_precision(detector_precision or "auto", device) if runtime == "openvino" else "fp32"
        clf_precision = resolve_precision(classifier_precision or CLASSIFIER_PRECISION, device)
    except ValueError as e:
        raise InputError(str(e)) from None
    notes: list[str] = []
    w, name, sha = resolve(detector, "detector")
    det = dict(_ref(w, name, sha), precision=det_precision)
    clf = None
    if classify:
        try:
            cw, cname, csha = resolve(classifier, "classifier")
        except WeightsError as e:
            if classifier is not None:  # asked for by name or file: must resolve
                raise
            notes.append(f"WBC classification: detect-only, labels are null ({_why(e)})")
        else:
            clf = dict(_ref(cw, cname, csha), precision=clf_precision)
            if review_threshold is not None:
                clf["review_threshold"] = review_threshold
    ref = _refiner_entry(sam, device, sam_precision, runtime) if refine else None
    morph = None
    if rbc_morphology:
        try:
            mw, mname, msha = resolve(None, "rbc_morphology")
            morph = _ref(mw, mname, msha)
        except WeightsError as e:
            notes.append(f"red-cell morphology skipped ({_why(e)})")
    spec = PipelineSpec(detector=det, refiner=ref, classifier=clf, rbc_morphology=morph, device=device,
                        detector_options=dict(detector_options or {}), runtime=runtime)
    return spec, notes


def _refiner_entry(sam: str | None, device: str, precision: str | None, runtime: str) -> dict:
    from .adapters.sam import encoder_precision, refiner_entry, sam_runtime

    entry = refiner_entry(sam)
    if entry["path"]:
        entry["path"] = str(abspath(entry["path"]))
    # the refiner's own runtime: Meta's SAM stays torch whatever --runtime says
    return dict(entry, precision=precision or encoder_precision("auto", device),
                runtime=sam_runtime(entry["path"], runtime))


# ============================================================================ pipeline
@dataclass
class Pipeline:
    """The built stages. ``run(image)`` -> :class:`Cells`; ``analyze(path or image)`` -> :class:`SmearReport`."""

    detector: Detector
    refiner: Refiner | None = None
    classifier: Classifier | None = None
    morphology: Classifier | None = None  # red-cell morphology (adapters.morphology.MorphologyStage)
    timings: dict = field(default_factory=dict)
    spec: PipelineSpec | None = None
    notes: list = field(default_factory=list)

    def models(self) -> dict:
        out = {}
        for key, st in (("detector", self.detector), ("refiner", self.refiner), ("classifier", self.classifier),
                        ("rbc_morphology", self.morphology)):
            out[key] = None if st is None else {"name": st.name, "sha256": st.sha256}
            if getattr(st, "precision", None):  # numbers as computed: SAM's encoder runs bf16 where native
                out[key]["precision"] = st.precision
            if getattr(st, "runtime", None):  # torch or openvino
                out[key]["runtime"] = st.runtime
            if key == "classifier" and getattr(st, "threshold", None) is not None:
                out[key]["review_threshold"] = float(st.threshold)
        return out

    def run(self, image: np.ndarray, path: str | Path = "") -> Cells:
        h, w = image.shape[:2]
        meta = SmearMeta(path=str(path), width=w, height=h, grey=is_grey(image))
        self.timings = {}
        t0 = time.perf_counter()
        cells = self.detector(image, meta)
        t1 = time.perf_counter()
        self.timings["detect"] = (t1 - t0) * 1e3
        if self.refiner is not None and len(cells):
            cells = self.refiner(image, cells)
            t2 = time.perf_counter()
            self.timings["refine"] = (t2 - t1) * 1e3
            t1 = t2
        if self.classifier is not None and len(cells):
            cells = self.classifier(image, cells)
            t2 = time.perf_counter()
            self.timings["classify"] = (t2 - t1) * 1e3
            t1 = t2
        if self.morphology is not None and len(cells):
            cells = self.morphology(image, cells)
            self.timings["rbc_morphology"] = (time.perf_counter() - t1) * 1e3
        self.timings["total"] = (time.perf_counter() - t0) * 1e3
        return cells

    def analyze(self, image: str | Path | np.ndarray, path: str | Path | None = None) -> SmearReport:
        """One smear field (a file, or an RGB uint8 array) -> its :class:`SmearReport`. A file that cannot be
        read is an :class:`bccdet.io.InputError` (one line)."""
        from .io import read_image

        if isinstance(image, (str, Path)):
            path = image if path is None else path
            image = read_image(image)
        cells = self.run(np.asarray(image), "" if path is None else path)
        return SmearReport(image=image, cells=cells, models=self.models(), timings=dict(self.timings))


# ============================================================================ report
@dataclass
class SmearReport:
    """What ``analyze`` found in one field: ``cells`` (a :class:`Cells`), ``summary`` (counts, WBC differential,
    red-cell grades, flags: the report.json ``summary``), ``models``, ``timings`` (ms per stage), ``meta``."""

    image: np.ndarray = field(repr=False)
    cells: Cells
    models: dict
    timings: dict = field(default_factory=dict)
    _summary: dict | None = field(default=None, init=False, repr=False)

    @property
    def meta(self) -> SmearMeta:
        return self.cells.meta

    @property
    def summary(self) -> dict[str, Any]:
        if self._summary is None:
            from .report import summarize

            self._summary = summarize(self.cells)
        return self._summary

    def to_dict(self, timings: bool = True) -> dict[str, Any]:
        """The report.json document."""
        from .report import report_dict

        return report_dict(self.cells, self.models, self.timings if timings else None)

    def write(self, out_dir: str | Path, formats=(), timings: bool = True, atomic: bool = True) -> dict[str, Any]:
        """Write report.json, report.html, cells.csv, overlay.png (+ coco.json / cells.geojson for ``formats``)
        into ``out_dir``, built under a temporary name and moved into place when complete (``atomic``).
        Returns the report.json document."""
        from .io import atomic_dir
        from .report import write_outputs

        formats = check_formats(formats)
        t = self.timings if timings else None
        if not atomic:
            return write_outputs(Path(out_dir), self.image, self.cells, self.models, t, formats=formats)
        with atomic_dir(out_dir) as tmp:
            return write_outputs(tmp, self.image, self.cells, self.models, t, formats=formats)


# ============================================================================ library face
def load_pipeline(detector: str | None = None, refine: bool = True, classify: bool = True, device: str = "cpu", *,
                  sam: str | None = None, classifier: str | None = None, review_threshold: float | None = None,
                  rbc_morphology: bool = True, scale: str | float = SCALE, edge_sliver: float = EDGE_SLIVER,
                  runtime: str = RUNTIME, on_note=None, **detector_options) -> Pipeline:
    """Resolve and load a pipeline (the same one ``bccdet analyze`` runs). A stage left out because its model
    is not shipped is noted in ``pipe.notes`` and passed to ``on_note`` (default: a warning on the ``bccdet``
    logger)."""
    from .adapters.yolo import parse_scale

    try:
        scale = parse_scale(scale)
    except ValueError as e:
        raise InputError(f"scale {e}") from None
    from .runtime import check_edge_sliver

    try:
        check_edge_sliver(edge_sliver)
    except ValueError as e:
        raise InputError(f"edge_sliver {e}") from None
    spec, notes = resolve_spec(detector=detector, refine=refine, sam=sam, classify=classify, classifier=classifier,
                               review_threshold=review_threshold, rbc_morphology=rbc_morphology, device=device,
                               detector_options={"scale": scale, "edge_sliver": edge_sliver, **detector_options},
                               runtime=runtime)
    for n in notes:
        (on_note or log.warning)(n)
    pipe = spec.build()
    pipe.notes = notes
    return pipe


def load_detector(detector: str | None = None, device: str = "cpu", conf: float = 0.25, runtime: str = RUNTIME,
                  **detector_options):
    """The detector stage alone (a registered name or a .pt file; None: the default), as the pipeline builds
    it: for curation, the FiftyOne plugin and data conversion. Backbone embeddings need ``runtime="torch"``
    (:data:`bccdet.adapters.fiftyone.EMBED_RUNTIME`)."""
    spec, _ = resolve_spec(detector=detector, refine=False, classify=False, rbc_morphology=False, device=device,
                           detector_options={"conf": conf, **detector_options}, runtime=runtime)
    return spec.build_detector()


_LAST: dict = {}


def analyze(path: str | Path | np.ndarray, **options) -> SmearReport:
    """``bccdet.analyze("smear.jpg")``: one field -> :class:`SmearReport`, with the default models (or
    ``options`` as :func:`load_pipeline` takes them). The loaded pipeline is kept for the next call with the
    same options."""
    key = repr(sorted(options.items()))
    if _LAST.get("key") != key:
        _LAST.clear()
        _LAST.update(key=key, pipe=load_pipeline(**options))
    return _LAST["pipe"].analyze(path)
