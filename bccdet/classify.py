"""Classify an export of single-cell images (e.g. CellaVision) and write what ``bccdet classify`` writes.

:func:`classify_export` groups the images into patients (:func:`patient_groups`), classifies them with the
leukocyte classifier (:mod:`bccdet.adapters.classifier`) and writes into OUT:

- ``cells.csv``: path, label, score, review, reason, p_<label>..., label_alone, patient, unfamiliar;
- ``summary.json``: the patient's summary (differential, flags, apl_score), or with several patients one
  summary per patient and the totals;
- ``patients.csv`` (several patients only): one row per patient;
- ``report.html``: flags, differential and a gallery per label with the cells to review first.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from .defaults import CLASSIFIER_PRECISION, CLASSIFY_BATCH, RUNTIME
from .io import InputError

PATIENT_MODES = ("call", "path", "folder")


def _stderr(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def patient_groups(paths: Sequence[Path], mode: str) -> list[tuple[str, list[Path]]]:
    """(patient name, files) for ``classify --patients MODE``: ``call`` one patient; ``path`` one per
    PATH; ``folder`` one per first-level sub-folder of each folder PATH (images directly in it and files
    given directly form their own patient, named after the folder). A folder PATH whose sub-folders are
    all cell classes (``Lymphocyte/``, ``Blast, no lineage spec/``: one patient's export) is one patient.
    Folders are searched for images once, here (:func:`bccdet.io.expand_images`)."""
    from .io import IMAGE_SUFFIXES, expand_images, image_files
    from .vocab import is_class_folder

    paths = [Path(p) for p in paths]
    if mode == "call":
        name = paths[0].name if len(paths) == 1 else "call"
        return [(name or "call", expand_images(paths)[0])]
    groups: dict[str, list[Path]] = {}

    def add(name: str, files: list[Path]) -> None:
        key, k = name or "patient", 2
        while key in groups and mode == "path":
            key, k = f"{name}-{k}", k + 1
        groups.setdefault(key, []).extend(files)

    for p in paths:
        if mode == "path" or p.is_file():
            add(p.name if mode == "path" else p.parent.name, expand_images([p])[0])
            continue
        subdirs = [x for x in p.iterdir() if x.is_dir()]
        if subdirs and all(is_class_folder(x.name) for x in subdirs):
            groups.setdefault(p.name or "patient", []).extend(image_files(p))
            continue
        loose = [f for f in sorted(p.iterdir()) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        if loose:
            groups.setdefault(p.name or "patient", []).extend(loose)
        for d in sorted(x for x in p.iterdir() if x.is_dir()):
            files = image_files(d)
            if files:
                key = d.name if d.name not in groups else f"{p.name}/{d.name}"
                groups.setdefault(key, []).extend(files)
    return list(groups.items())


def _cells_row(r: dict, patient: str, labels) -> list:
    score = "" if r["label_score"] is None else f"{r['label_score']:.4f}"
    return [r["file"], r["label"], score, int(bool(r["review"])), r["reason"],
            *("" if r[f"p_{k}"] is None else f"{r[f'p_{k}']:.4f}" for k in labels),
            r.get("label_alone", r["label"]), patient,
            "" if r.get("unfamiliar") is None else int(r["unfamiliar"])]


def _patients_csv(summaries: dict[str, dict], labels) -> str:
    buf = io.StringIO()
    wr = csv.writer(buf)
    wr.writerow(["patient", "files", "classified", "unreadable", "review", "apl_score", "flags",
                 *(f"pct_{k}" for k in labels)])
    for pt, s in summaries.items():
        wr.writerow([pt, s["files"], s["classified"], s["unreadable"], s["review"], f"{s['apl_score']:.4f}",
                     ";".join(f["code"] for f in s["flags"]), *(s["differential_percent"].get(k, 0.0) for k in labels)])
    return buf.getvalue()


def _echo_patient(summ: dict, who: str, echo: Callable[[str], None]) -> None:
    diff = ", ".join(f"{k} {v}%" for k, v in summ["differential_percent"].items())
    echo(f"{who}{summ['classified']} cells classified ({summ['review']} to review), {summ['unreadable']} "
         f"unreadable; apl_score {summ['apl_score']:.2f}; {diff}")
    pa = summ.get("prior_adaptation") or {}
    if pa.get("applied"):
        echo(f"{who}call-level prior adaptation: {pa['labels_changed']} label(s) changed (column label_alone "
             "keeps each cell's own label)")
    for f in summ["flags"]:
        echo(f"{who}flag {f['code']}: {f['message']}")


def classify_patient(files: Sequence[Path], clf, batch_size: int = CLASSIFY_BATCH, device: str = "cpu",
                     adapt: bool = False, progress: Callable[[int], None] | None = None) -> tuple[list[dict], dict]:
    """One patient's single-cell images through a loaded classifier: (one row per image, the patient
    summary: differential, flags, apl_score); ``adapt``: the patient's class mix re-estimated first."""
    from .adapters.classifier import adapt_rows, classify_paths, summary

    rows = classify_paths(list(files), clf, batch_size=batch_size, device=device, progress=progress)
    adaptation = adapt_rows(rows, clf.prior, clf.threshold) if adapt else None
    return rows, summary(rows, prior_adaptation=adaptation)


def classify_cells(paths, classifier: str | None = None, device: str = "cpu", *, batch_size: int = CLASSIFY_BATCH,
                   precision: str = CLASSIFIER_PRECISION, review_threshold: float | None = None, adapt: bool = False,
                   runtime: str = RUNTIME) -> dict:
    """``bccdet.classify_cells(paths)``: single-cell images (files or folders, e.g. a CellaVision export) of
    one patient -> ``{"cells": one row per image (file, label, label_score, review, p_<label>, unfamiliar,
    reason), "summary": the patient summary (differential, flags, apl_score), "model": ...}``, as
    ``bccdet classify`` computes them (without writing anything)."""
    from .adapters.classifier import load_classifier
    from .io import expand_images

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise InputError(f"{missing[0]}: no such file or folder")
    files, _ = expand_images(paths)
    if not files:
        raise InputError(f"no image files in {', '.join(map(str, paths))}")
    clf = load_classifier(classifier, device, precision=precision, threshold=review_threshold, runtime=runtime)
    rows, summ = classify_patient(files, clf, batch_size=batch_size, device=device, adapt=adapt)
    return {"cells": rows, "summary": summ,
            "model": {"name": clf.name, "sha256": clf.sha256, "precision": clf.precision, "runtime": clf.runtime,
                      "review_threshold": clf.threshold}}


def classify_export(paths: Sequence[Path], out: Path, classifier: str | None = None, device: str = "cpu",
                    batch: int = CLASSIFY_BATCH, patients: str = "call", adapt: bool = False, precision: str = CLASSIFIER_PRECISION,
                    review_threshold: float | None = None, progress: bool = True, runtime: str = RUNTIME,
                    echo: Callable[[str], None] = print, error: Callable[[str], None] = _stderr) -> dict:
    """Classify the single-cell images in ``paths`` (files or folders, searched recursively) and write
    OUT/cells.csv, summary.json, report.html (and patients.csv for several patients; see the module docstring).

    ``patients``: who is one patient (:func:`patient_groups`); ``adapt``: re-estimate each patient's class mix
    and relabel with it; ``precision`` / ``review_threshold``: as :func:`bccdet.adapters.classifier.load_classifier`.
    ``echo`` gets one line per patient (and its flags) and the closing line, ``error`` each unreadable image's
    reason; ``progress``: a progress bar on stderr where it is a terminal. Unusable input raises
    :class:`~bccdet.io.InputError`. Returns {"summary": summary.json's document, "patients", "files",
    "classified", "unreadable", "written": the files written}."""
    from .io import check_out_dir, write_text_atomic
    from .vocab import LABELS

    paths, out = [Path(p) for p in paths], Path(out)
    if patients not in PATIENT_MODES:
        raise InputError(f"--patients {patients!r}: choose call, path or folder")
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise InputError(f"{missing[0]}: no such file or folder")
    check_out_dir(out)
    groups = patient_groups(paths, patients)
    n_img = sum(len(files) for _, files in groups)
    if n_img == 0:
        raise InputError(f"no image files in {', '.join(map(str, paths))}")
    from tqdm import tqdm

    from .adapters.classifier import load_classifier

    clf = load_classifier(classifier, device, precision=precision, threshold=review_threshold, runtime=runtime)
    buf = io.StringIO()
    wr = csv.writer(buf)
    wr.writerow(["path", "label", "score", "review", "reason", *(f"p_{k}" for k in LABELS), "label_alone", "patient",
                 "unfamiliar"])
    summaries: dict[str, dict] = {}
    pages = []
    bar = tqdm(total=n_img, unit="cell", desc="classify", file=sys.stderr, disable=None if progress else True,
               mininterval=0.5)
    try:
        for patient, files in groups:
            rows, summ = classify_patient(files, clf, batch_size=batch, device=device, adapt=adapt,
                                          progress=bar.update)
            pages.append((patient, rows))
            for r in rows:
                wr.writerow(_cells_row(r, patient, LABELS))
                if r["reason"]:
                    error(r["reason"])
            summ["patient"] = patient
            summaries[patient] = summ
            _echo_patient(summ, f"{patient}: " if len(groups) > 1 else "", echo)
    finally:
        bar.close()
    unreadable = sum(s["unreadable"] for s in summaries.values())
    model = {"name": clf.name, "sha256": clf.sha256, "precision": clf.precision, "runtime": clf.runtime,
             "review_threshold": clf.threshold}
    written = [out / "cells.csv", out / "summary.json", out / "report.html"]
    if len(groups) == 1:
        doc = dict(next(iter(summaries.values())), model=model)
    else:
        doc = {"patients": summaries, "grouping": patients, "model": model,
               "files": sum(s["files"] for s in summaries.values()),
               "classified": sum(s["classified"] for s in summaries.values()), "unreadable": unreadable}
        write_text_atomic(out / "patients.csv", _patients_csv(summaries, LABELS))
        written.append(out / "patients.csv")
    from .report import classify_html

    write_text_atomic(out / "cells.csv", buf.getvalue())
    write_text_atomic(out / "summary.json", json.dumps(doc, indent=2))
    write_text_atomic(out / "report.html", classify_html([(pt, summaries[pt], rows) for pt, rows in pages], model))
    extra = f", {out / 'patients.csv'} ({len(groups)} patients)" if len(groups) > 1 else ""
    echo(f"wrote {out / 'cells.csv'}, {out / 'summary.json'} and {out / 'report.html'}{extra}")
    return {"summary": doc, "patients": len(groups), "files": sum(s["files"] for s in summaries.values()),
            "classified": sum(s["classified"] for s in summaries.values()), "unreadable": unreadable,
            "written": written}
