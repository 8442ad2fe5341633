"""Options and resume rules: what a batch runs with.

A new batch runs with the options given and the defaults; ``--resume`` continues the batch in OUT with
every option not given again as that batch had it, and with the models it started with (pinned by name
and sha256 when the defaults have changed since), and refuses other models or options. The functions take
the ``Batch`` (engine.py) whose attributes they settle."""

from __future__ import annotations

from pathlib import Path

from ..defaults import RUNTIME, TILE, TILE_OVERLAP
from ..io import InputError
from .common import FORMAT, MANIFEST, _load_json


def previous_manifest(out: Path, resume: bool) -> dict | None:
    """The manifest of the batch already in OUT (None: a new batch); refused when it is not a batch's or when
    it is there without ``resume``."""
    prev = _load_json(out / MANIFEST)
    if prev is not None and prev.get("format") != FORMAT:
        raise InputError(f"{out / MANIFEST}: not a bccdet batch manifest ({FORMAT})")
    if prev is not None and not resume:
        raise InputError(f"{out} already holds a batch (manifest.json): pass --resume to continue it, or choose another --out")
    return prev


def resolve_options(b, prev: dict | None) -> tuple[dict, list[str]]:
    """Settle what Batch ``b`` runs with: its inputs (with those of the batch resumed), every option not given
    again on ``--resume`` as the batch resumed had it, its models (pinned to those the batch started with),
    ``b.args`` / ``b.models`` / ``b.options`` as the manifest records them; a resume with other models or
    options is refused. Returns the workers' config and the notes to log."""
    if not b.inputs and prev is not None:
        b.inputs = list(prev.get("inputs", []))
    elif prev is not None:  # resume with (possibly more) inputs: remember all of them
        b.inputs = list(dict.fromkeys(list(prev.get("inputs", [])) + b.inputs))
    if not b.inputs:
        raise InputError("no inputs given (folders, images, whole-slide scans, globs or a CSV list)")
    # options not given again on --resume: those of the batch being resumed
    was = (prev or {}).get("args", {})
    if b.detector is None:
        b.detector = was.get("detector")
    if b.classifier is None:
        b.classifier = was.get("classifier")
    if b.classify is None:
        b.classify = was.get("classify", True)
    # a batch started with the default models resumes with those same models when a newer bccdet has
    # other defaults (and still ships them): its fields stay comparable and nothing is redone
    if prev is not None and b.detector is None:
        b.detector = _pinned(b, prev, "detector")
    if prev is not None and b.classifier is None and b.classify:
        b.classifier = _pinned(b, prev, "classifier")
    if b.refine is None:
        b.refine = was.get("refine", False) if prev is not None else True  # older batches: none
    if b.formats is None:
        b.formats = tuple(was.get("formats", ()))
    if b.detector_options is None:
        b.detector_options = dict(was.get("detector_options", {}))
    if prev is None or "border" in was.get("detector_options", {}):
        from ..defaults import BORDER

        # recorded, so that a batch started before the detector's grey border resumes without it (_models)
        b.detector_options.setdefault("border", BORDER)
    if b.images is None:
        b.images = was.get("images", "auto")
    if b.adapt is None:
        b.adapt = bool(was.get("adapt", False))
    if b.review_threshold is None:
        b.review_threshold = was.get("review_threshold")
    if b.rbc_morphology is None:  # on for a new batch; a batch made before the stage resumes without it
        b.rbc_morphology = bool(was.get("rbc_morphology", prev is None))
    prev_det = ((prev or {}).get("models") or {}).get("detector")
    if prev_det is not None:  # batches made before the runtime was recorded ran torch, fp32
        prev_det.setdefault("runtime", "torch")
        prev_det.setdefault("precision", "fp32")
        if b.runtime in (None, "auto", prev_det["runtime"]):  # another --runtime than the batch's: the models differ
            b.runtime, b.detector_precision = prev_det["runtime"], prev_det["precision"]
    prev_clf = ((prev or {}).get("models") or {}).get("classifier")
    if prev_clf is not None:  # batches made before the classifier's runtime was recorded ran it torch, fp32
        prev_clf.setdefault("runtime", prev_det["runtime"] if prev_det else "torch")
        prev_clf.setdefault("precision", "fp32")
        b.classifier_precision = prev_clf["precision"]
    prev_morph = ((prev or {}).get("models") or {}).get("rbc_morphology")
    if prev_morph is not None:  # likewise for the red-cell morphology stage (one runtime for every stage)
        prev_morph.setdefault("runtime", prev_det["runtime"] if prev_det else "torch")
    prev_ref = ((prev or {}).get("models") or {}).get("refiner")
    if prev_ref is not None:  # batches made before the SAM precision was recorded ran fp32
        prev_ref.setdefault("precision", "fp32")
        prev_ref.setdefault("runtime", prev_det["runtime"] if prev_det else "torch")  # one runtime for both
        b.sam_precision = prev_ref["precision"]
    # --images / --adapt / --review-threshold are recorded only when not the default: batches made before
    # them resume unchanged
    newer = {**({"images": b.images} if b.images != "auto" else {}), **({"adapt": True} if b.adapt else {}),
             **({"review_threshold": b.review_threshold} if b.review_threshold is not None else {}),
             **({"rbc_morphology": True} if b.rbc_morphology else {})}
    b.args = {"detector": b.detector, "classifier": b.classifier, "classify": b.classify,
              "refine": b.refine, "formats": list(b.formats),
              "detector_options": b.detector_options, **newer}
    b.models, cfg, notes = _models(b)
    b.options = {"tile": cfg["tile"], "overlap": cfg["overlap"], "detector_options": b.detector_options,
                 "formats": list(b.formats), **newer}
    if prev is not None and (prev.get("models") != b.models or prev.get("options") != b.options):
        raise InputError(f"{b.out} was made with other models or options ({_diff(prev, b.models, b.options)}); "
                         "resume with the same ones, or choose another --out")
    return cfg, notes


def _models(b) -> tuple[dict, dict, list[str]]:
    """The models of batch ``b`` resolved (``.models()`` for the manifest), the workers' config, the notes."""
    from ..adapters.sam import encoder_precision
    from ..pipeline import resolve_spec

    # one SAM precision for the whole batch, every worker and node alike: the resumed batch's, else the
    # driver's choice for --device (bf16 where native)
    spec, notes = resolve_spec(
        detector=b.detector, classify=bool(b.classify), classifier=b.classifier,
        review_threshold=b.review_threshold, refine=bool(b.refine), sam_precision=b.sam_precision,
        rbc_morphology=bool(b.rbc_morphology), device=b.device, runtime=b.runtime or RUNTIME,
        detector_precision=b.detector_precision, classifier_precision=b.classifier_precision,
        # a batch started before the grey border (none recorded) keeps running without it
        detector_options={"tile": TILE, "overlap": TILE_OVERLAP, "border": 0, **b.detector_options})
    for n in notes:
        if n.startswith("WBC classification"):
            b.no_classifier = n[n.rindex("(") + 1:-1]
    if not b.classify:
        notes.append("WBC classification off (--no-classify): detect-only, labels are null")
    if not b.refine:
        notes.append("SAM refinement off (--no-refine): masks are the detector's")
    elif spec.refiner["precision"] == "bf16" and encoder_precision("auto", b.device) != "bf16":
        notes.append(f"SAM runs in bf16, as when this batch started, but {b.device} here has no native "
                     "bf16: emulated, several times slower (a new --out runs fp32)")  # only a resumed bf16 batch
    if not b.rbc_morphology:
        notes.append("red-cell morphology off (--no-rbc-morphology)")
    cfg = {"pipeline": spec.to_dict(), "tile": TILE, "overlap": TILE_OVERLAP, "formats": list(b.formats),
           "adapt": bool(b.adapt)}
    return spec.models(), cfg, notes


def _pinned(b, prev: dict, kind: str) -> str | None:
    """The registered model a resumed batch started with (by name, same sha256) when it is no longer the
    default for ``kind``; None where it is the default or is not registered any more."""
    from ..weights import WeightsError, default_name, resolve

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
    b.log(f"note: {kind} {name}, as when this batch started (the default is now {default})")
    return name


def _diff(prev: dict, models: dict, options: dict) -> str:
    parts = []
    def what(m):
        return None if not m else f"{m.get('name')}" + (f" on {m['runtime']}" if m.get("runtime") else "")

    pm = prev.get("models") or {}
    for k in sorted(set(pm) | set(models)):
        a, b = pm.get(k), models.get(k)
        if a != b:
            parts.append(f"{k}: {what(a)} -> {what(b)}")
    if prev.get("options") != options:
        parts.append(f"options: {prev.get('options')} -> {options}")
    return "; ".join(parts) or "?"
