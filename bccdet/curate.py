"""FiftyOne curation, one call each: the detection workflow (``curate_detection``) and the classification
workflow (``curate_classification``): build or update the dataset, predict, evaluate, rank and tag suspects.

The workflows sit above the pipeline: the detector they run is built by :mod:`bccdet.pipeline`, the same
as ``analyze``'s; the FiftyOne pieces are in :mod:`bccdet.adapters.fiftyone`."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .adapters.fiftyone.classification import embed_classification, near_duplicate_pairs, probe_probabilities, read_class_predictions
from .adapters.fiftyone.common import (CLS_TAGS, EMB_FIELD, EMBED_RUNTIME, GT_FIELD, INFO_KEY, PRED_FIELD, SAMPLE_TAG, TAG_DUP, TAG_DUP_CONFLICT,
                     TAG_MISLABEL, TAG_NEAR_DUP, CurationError, CurationSummary, Rule, Suspect, _fo)
from .adapters.fiftyone.evaluate import _delete_brain, brain_detection, evaluate
from .adapters.fiftyone.load import add_predictions_from_reports, build_classification_dataset, build_detection_dataset, read_reports
from .adapters.fiftyone.mistakes import suspect_counts, tag_detection_suspects
from .adapters.fiftyone.predict import _embed_only, predict_detections
from .io import InputError
from .pipeline import load_detector


# ---------------------------------------------------------------------- one call: the detection workflow
def curate_detection(data: Path, name: str, predictions: Path | None = None, detector: str | None = None,
                     overwrite: bool = False, splits: Sequence[str] | None = None, rule: Rule | None = None,
                     device: str = "cpu", conf: float = 0.25, brain: bool = True,
                     log: Callable[[str], None] = print) -> tuple[Any, CurationSummary, list[Suspect]]:
    t_all = time.perf_counter()
    det = None
    if predictions is None:  # fail before touching the database when there is no detector
        det = load_detector(detector, device=device, conf=conf, runtime=EMBED_RUNTIME)
    else:
        read_reports(predictions)
    t0 = time.perf_counter()
    ds, summ = build_detection_dataset(data, name, overwrite=overwrite, splits=splits, log=log)
    view = ds.match_tags(list(splits)) if splits else ds.view()
    summ.timings["build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if predictions is not None:
        m, unmatched = add_predictions_from_reports(view, predictions)
        summ.predicted, summ.unmatched_reports = m, unmatched
        if unmatched:
            log(f"note: {unmatched} report(s) in {predictions} match no image of the data set")
        if m < len(view):
            log(f"note: {len(view) - m} image(s) have no report in {predictions}: no predictions for them")
        if brain:
            try:
                det = load_detector(detector, device=device, conf=conf, runtime=EMBED_RUNTIME)
            except InputError as e:
                log(f"note: no detector for embeddings ({e}); uniqueness skipped")
            if det is not None:
                todo = view.exists(EMB_FIELD, False)
                if len(todo):
                    _embed_only(todo, det)
    else:
        summ.predicted = predict_detections(view, det)
    summ.timings["predict_s"] = time.perf_counter() - t0
    if not len(view.exists(PRED_FIELD)):
        raise CurationError("no image has predictions: nothing to compare the labels with")
    view = view.exists(PRED_FIELD)
    t0 = time.perf_counter()
    summ.eval_report = evaluate(view)
    summ.timings["evaluate_s"] = time.perf_counter() - t0
    if brain:
        summ.timings.update(brain_detection(view, log=log))
    t0 = time.perf_counter()
    suspects = tag_detection_suspects(view, rule)
    summ.timings["tag_s"] = time.perf_counter() - t0
    summ.counts = suspect_counts(suspects)
    summ.counts["brain_possible_missing"] = int(sum(v or 0 for v in view.values("possible_missing"))) if brain else None
    summ.counts["brain_possible_spurious"] = int(sum(v or 0 for v in view.values("possible_spurious"))) if brain else None
    summ.samples = len(ds)
    summ.timings["total_s"] = time.perf_counter() - t_all
    info = dict(ds.info.get(INFO_KEY, {}))
    info["last_run"] = {"counts": summ.counts, "timings": {k: round(v, 2) for k, v in summ.timings.items()},
                        "rule": rule.__dict__ if rule else Rule().__dict__}
    ds.info[INFO_KEY] = info
    ds.save()
    return ds, summ, suspects


def curate_classification(data: Path, name: str, predictions: Path | None = None, detector: str | None = None,
                          overwrite: bool = False, splits: Sequence[str] | None = None, device: str = "cpu",
                          near_dup_threshold: float = 0.05, mislabel_threshold: float = 0.7,
                          log: Callable[[str], None] = print) -> tuple[Any, CurationSummary, list[Suspect]]:
    """Classification curation: class-label mistakenness, hardness, uniqueness, exact and near duplicates.

    Tags (on samples): ``possible_mislabel`` (brain mistakenness >= ``mislabel_threshold``), ``duplicate``
    (same sha256 as another image), ``duplicate_conflict`` (same bytes, different labels), ``near_duplicate``
    (embedding distance <= ``near_dup_threshold``); every tagged image is also tagged ``suspect``.
    """
    import fiftyone.brain as fob

    fo = _fo()
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    ds, summ = build_classification_dataset(data, name, overwrite=overwrite, splits=splits, log=log)
    view = ds.match_tags(list(splits)) if splits else ds.view()
    summ.timings["build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = embed_classification(view, detector=load_detector(detector, device=device, runtime=EMBED_RUNTIME) if detector else None,
                                 device=device, log=log, load_detector=lambda: load_detector(None, device=device, runtime=EMBED_RUNTIME))
    summ.timings["embed_s"] = time.perf_counter() - t0
    summ.notes.append(f"embeddings: {model}")
    t0 = time.perf_counter()
    paths = view.values("filepath")
    labels = view.values(f"{GT_FIELD}.label")
    if predictions is not None:
        probs_by = read_class_predictions(predictions)
        classes = sorted({c for v in probs_by.values() for c in v} | set(labels))
        root = Path(ds.info[INFO_KEY].get("data", "/"))
        rows = []
        for p in paths:  # keyed by absolute path, path relative to DATA (the manifest's "file"), or file name
            rel = os.path.relpath(p, root)
            r = probs_by.get(p) or probs_by.get(rel) or probs_by.get(Path(p).name)
            rows.append([r.get(c, 0.0) for c in classes] if r else None)
        if any(r is None for r in rows):
            raise CurationError(f"{predictions}: no probabilities for {sum(r is None for r in rows)} image(s)")
        probs = np.array(rows, np.float64)
        summ.notes.append(f"probabilities: {predictions}")
    else:
        emb = np.stack(view.values(EMB_FIELD))
        classes, probs = probe_probabilities(emb, labels)
        summ.notes.append("probabilities: out-of-fold linear probe on the embeddings")
    probs = np.clip(probs / np.maximum(probs.sum(1, keepdims=True), 1e-9), 1e-6, 1.0)
    preds = [fo.Classification(label=classes[int(np.argmax(p))], confidence=float(np.max(p)),
                               logits=np.log(p).tolist()) for p in probs]
    view.set_values(PRED_FIELD, preds)
    summ.timings["predict_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for key in ("mistakenness", "hardness", "uniqueness", "near_duplicates"):
        _delete_brain(ds, key)
    fob.compute_mistakenness(view, PRED_FIELD, label_field=GT_FIELD, use_logits=True, progress=False)
    fob.compute_hardness(view, PRED_FIELD, progress=False)
    if len(view) > 1:
        fob.compute_uniqueness(view, embeddings=EMB_FIELD, progress=False)
    summ.timings["brain_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds.untag_samples(list(CLS_TAGS))
    sus: list[Suspect] = []
    ids = view.values("id")
    mist = view.values("mistakenness")
    for sid, fp, lab, pr, m in zip(ids, paths, labels, preds, mist):
        if m is not None and m >= mislabel_threshold:
            sus.append(Suspect(sid, fp, "", GT_FIELD, lab, (0, 0, 0, 0), TAG_MISLABEL, float(m),
                               f"labelled {lab}, probabilities say {pr.label} ({pr.confidence:.2f})"))
    # exact duplicates by content hash
    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(view.values("sha256")):
        by_hash.setdefault(h, []).append(i)
    for h, idx in by_hash.items():
        if len(idx) < 2:
            continue
        labs = sorted({labels[i] for i in idx})
        reason = TAG_DUP_CONFLICT if len(labs) > 1 else TAG_DUP
        for i in idx:
            others = [Path(paths[j]).name for j in idx if j != i]
            sus.append(Suspect(ids[i], paths[i], "", GT_FIELD, labels[i], (0, 0, 0, 0), reason, 1.0,
                               f"same bytes as {', '.join(others)}; labels {labs}"))
    # near duplicates by embeddings
    if len(view) > 1:
        hashes = view.values("sha256")
        for ia, ib, dist in near_duplicate_pairs(np.asarray(view.values(EMB_FIELD), np.float32), near_dup_threshold):
            if hashes[ia] == hashes[ib]:
                continue  # already an exact duplicate
            conflict = labels[ia] != labels[ib]
            for i, j in ((ia, ib), (ib, ia)):
                sus.append(Suspect(ids[i], paths[i], "", GT_FIELD, labels[i], (0, 0, 0, 0), TAG_NEAR_DUP,
                                   round(1.0 - float(dist), 4),
                                   f"distance {dist:.3f} to {Path(paths[j]).name} ({labels[j]})" + ("; labels differ" if conflict else "")))
    by_tag: dict[str, list[str]] = {}
    for s in sus:
        by_tag.setdefault(s.reason, []).append(s.sample_id)
    for tag, sids in by_tag.items():
        ds.select(sorted(set(sids))).tag_samples([tag, SAMPLE_TAG])
    summ.timings["tag_s"] = time.perf_counter() - t0
    sus.sort(key=lambda r: (-r.score, r.reason, r.filepath))
    summ.counts = suspect_counts(sus)
    acc = float(np.mean([classes[int(np.argmax(p))] == lab for p, lab in zip(probs, labels)]))
    summ.eval_report = {"accuracy": round(acc, 4), "classes": classes, "samples": len(view)}
    summ.samples = len(ds)
    summ.timings["total_s"] = time.perf_counter() - t_all
    info = dict(ds.info.get(INFO_KEY, {}))
    info["last_run"] = {"counts": summ.counts, "timings": {k: round(v, 2) for k, v in summ.timings.items()}, "notes": summ.notes}
    ds.info[INFO_KEY] = info
    ds.save()
    return ds, summ, sus


def export_dataset(name: str, out: Path, formats: Sequence[str] = ("yolo",), task: str = "segment",
                   saved_view: str | None = None, tags: Sequence[str] = (), splits: Sequence[str] = (),
                   corrected: bool = True, auto: bool = False, overwrite: bool = False) -> dict:
    """``bccdet curate-export``: dataset ``name`` (or its saved view; only samples with any of ``tags``, of
    ``splits``) with the reviewed labels back to the YOLO layout (and COCO). Returns export_labels' totals."""
    from .adapters.fiftyone import export_labels, open_dataset

    ds = open_dataset(name, "detection")
    if saved_view:
        if saved_view not in ds.list_saved_views():
            raise CurationError(f"dataset {name!r} has no saved view {saved_view!r}; saved views: {ds.list_saved_views()}")
        view = ds.load_saved_view(saved_view)
    else:
        view = ds.view()
    if tags:
        view = view.match_tags(list(tags))
    if splits:
        view = view.match_tags(list(splits))
    return export_labels(view, out, formats=formats, task=task, corrected=corrected, auto=auto, overwrite=overwrite)
