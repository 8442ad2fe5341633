"""A field's or a slide's ``summary``: counts, the WBC differential against adult reference intervals, the
flags (one rule set for field, slide and patient) and the red-cell morphology counts."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from ..morphology import morphology_counts, morphology_summary
from ..types import Cells
from ..vocab import LABELS, NOT_IN_DIFFERENTIAL

# Adult reference intervals of the WBC differential, percent (typical laboratory ranges; docs/report.md).
REFERENCE_INTERVALS = {
    "neutrophil": (40.0, 75.0),
    "lymphocyte": (20.0, 45.0),
    "monocyte": (2.0, 10.0),
    "eosinophil": (0.0, 6.0),
    "basophil": (0.0, 2.0),
}
MIN_WBC_FOR_DIFFERENTIAL = 100  # a manual differential counts 100 leukocytes
SMUDGE_FLAG_PERCENT = 10.0
# `unfamiliar_images`: this share of the typed cells lie outside the classifier's training data
# (python -m tools.classifier_familiarity: PBC test 1.5 %, held-out DeepAPL patients <= 30 %, another lab 48 %,
# BCCD phone-camera WBCs 87 %). A call of single cells needs 10 of them; an analyzed image flags its own WBCs.
UNFAMILIAR_CALL_FRACTION = 0.35
UNFAMILIAR_MIN_CELLS = 10


def unfamiliar_flag(n_unfamiliar: int, n_scored: int, min_cells: int = UNFAMILIAR_MIN_CELLS) -> dict | None:
    """The ``unfamiliar_images`` flag, or None."""
    if n_scored < max(1, min_cells) or n_unfamiliar < UNFAMILIAR_CALL_FRACTION * n_scored:
        return None
    return {"code": "unfamiliar_images", "message": (
        f"{n_unfamiliar} of {n_scored} typed cells ({100.0 * n_unfamiliar / n_scored:.0f}%) look unlike the CellaVision "
        "images the classifier was trained on (another lab, camera or stain?): expect less reliable labels (measured: "
        "0.50-0.90 accuracy on white cells of other labs' fields and 0.68 on another lab's CellaVision cells, against "
        "0.99 on PBC; docs/models.md); review them")}


def abnormal_flag(code: str, what: str, n_unfamiliar: int, then: str = "") -> dict:
    """An abnormal-cell flag; when some of those cells are unfamiliar (unlike the classifier's training
    images), the message says how many and the flag carries ``unfamiliar``. On normal blood from another
    lab (TXL-PBC's 575 x 575 fields) 33 of the 40 abnormal calls were unfamiliar; on held-out DeepAPL
    patients 7 % of all cells are (weights/bccdet-effnetl0-wbc288.md)."""
    msg = what
    if n_unfamiliar:
        msg += f" ({n_unfamiliar} of them unlike the training images: less reliable)"
    f = {"code": code, "message": msg + (f": {then}" if then else "")}
    if n_unfamiliar:
        f["unfamiliar"] = int(n_unfamiliar)
    return f


# The one rule set of abnormal-cell flags, for a field, a slide (batch) and a patient (classify): each
# label below raises its flag when any cell is typed so; smudge cells from SMUDGE_FLAG_PERCENT of the WBCs.
ABNORMAL_FLAGS = (("blast", "blasts_present"), ("promyelocyte", "promyelocytes_present"),
                  ("variant_lymphocyte", "variant_lymphocytes_present"))


def wbc_flags(counts: dict[str, int], percent: dict[str, float], unfamiliar_by: dict[str, int],
              alone: dict[str, int] | None = None, then: str = "review the gallery") -> list[dict]:
    """Abnormal-cell flags (:data:`ABNORMAL_FLAGS`, smudge cells) from the typed cells' ``counts`` per label,
    their ``percent`` of the differential, how many of each were ``unfamiliar`` and, after a call-level
    prior adaptation (classify --adapt), the counts of each cell taken ``alone``: a flag is raised when
    either shows the label."""
    flags = []
    alone = alone or {}
    for lab, code in ABNORMAL_FLAGS:
        n, n_alone = counts.get(lab, 0), alone.get(lab, counts.get(lab, 0))
        if n or n_alone:
            msg = f"{n} {lab.replace('_', ' ')}(s) found ({percent.get(lab, 0.0)}%)"
            if n_alone != n:
                msg += f", {n_alone} when each cell is taken alone"
            flags.append(abnormal_flag(code, msg, unfamiliar_by.get(lab, 0), then))
    if percent.get("smudge_cell", 0.0) >= SMUDGE_FLAG_PERCENT:
        flags.append(abnormal_flag("smudge_cells", f"smudge cells {percent['smudge_cell']}% of WBCs "
                                   f"(>= {SMUDGE_FLAG_PERCENT:g}%)", unfamiliar_by.get("smudge_cell", 0)))
    return flags


DISCLAIMER = "Research use only: flags point a trained reader at cells to review; they are not a diagnosis."


def differential_base(counts: dict[str, int]) -> tuple[int, dict]:
    """(leukocytes: the differential's base, the summary keys for typed cells outside it) of label counts.

    Erythroblasts and platelets are left out of the differential, as in a manual count: they are listed
    in ``not_in_differential`` and erythroblasts also given per 100 WBC (``nrbc_per_100_wbc``); both keys
    are present only when they apply. Used by ``analyze`` (:func:`summarize`) and ``classify`` summaries.
    """
    n_leuk = sum(v for lab, v in counts.items() if lab not in NOT_IN_DIFFERENTIAL)
    other = {lab: counts[lab] for lab in NOT_IN_DIFFERENTIAL if counts.get(lab)}
    extra: dict[str, Any] = {}
    if other:
        extra["not_in_differential"] = other
        if other.get("erythroblast") and n_leuk:
            extra["nrbc_per_100_wbc"] = round(100.0 * other["erythroblast"] / n_leuk, 1)
    return n_leuk, extra


# Measured 2026-11-26 (stop 20): the default detector on the first 24 BCCD test fields turned grey found
# 0.35 of the WBCs and 0.18 of the platelets (1.00 / 0.93 in colour; python -m bench.detector_robustness), and
# the default classifier typed 0.78 of 288 PBC test cells right in grey (0.986 in colour).
GREY_MESSAGE = ("the image has no colour (a monochrome camera or a grey scan): the models were trained on stained "
                "colour images; in grey they missed most white cells and platelets of BCCD fields and typed a fifth "
                "of PBC cells wrongly. Counts and types are not reliable: use a colour image")


def summarize(cells: Cells) -> dict[str, Any]:
    """The report.json ``summary`` of a field's cells (:func:`summarize_counts` of its totals)."""
    wbc = [i for i, k in enumerate(cells.kind) if k == "wbc"]
    return summarize_counts(cells.counts(), [cells.label[i] for i in wbc], [bool(cells.unfamiliar[i]) for i in wbc],
                            grey=bool(getattr(getattr(cells, "meta", None), "grey", False)),
                            rbc_morphology=rbc_morphology_counts(cells), rbc_score=rbc_morphology_median_score(cells))


def summarize_counts(counts: dict[str, int], wbc_labels: list, wbc_unfamiliar: list | None = None, grey: bool = False,
                     rbc_morphology: dict[str, int] | None = None, rbc_score: float | None = None) -> dict[str, Any]:
    """The one summary of a field or a whole slide, from totals: cells per kind, each WBC's label (None:
    not typed) and unfamiliar flag, red cells per morphology type and their median score. A slide's summary
    (batch) is exactly that of all its fields' cells together, in memory proportional to its WBCs."""
    counts = dict(counts)
    unfamiliar = list(wbc_unfamiliar) if wbc_unfamiliar else [False] * len(wbc_labels)
    typed = [lab for lab in wbc_labels if lab is not None]
    by_label = Counter(typed)
    n_lab, outside = differential_base(by_label)
    diff = {lab: {"count": by_label[lab], "percent": round(100.0 * by_label[lab] / n_lab, 1)}
            for lab in LABELS if by_label.get(lab) and lab not in NOT_IN_DIFFERENTIAL}
    flags = []
    n_wbc = counts["wbc"]
    if n_wbc < MIN_WBC_FOR_DIFFERENTIAL:
        flags.append({"code": "few_wbc", "message": f"only {n_wbc} WBC found (< {MIN_WBC_FOR_DIFFERENTIAL}): the differential is not reliable; analyse more fields"})
    if grey:
        flags.append({"code": "grey_image", "message": GREY_MESSAGE})
    if n_lab == 0 and n_wbc:
        flags.append({"code": "not_classified", "message": "WBCs were not classified (classifier off or unavailable): no differential"})
    unf_by = Counter(lab for lab, u in zip(wbc_labels, unfamiliar) if lab is not None and u)
    flags += wbc_flags(by_label, {lab: d["percent"] for lab, d in diff.items()}, unf_by)
    if n_lab >= MIN_WBC_FOR_DIFFERENTIAL:
        for lab, (lo, hi) in REFERENCE_INTERVALS.items():
            p = diff.get(lab, {"percent": 0.0})["percent"]
            if not lo <= p <= hi:
                flags.append({"code": "differential_out_of_range", "message": f"{lab} {p}% outside the adult reference interval {lo:g}-{hi:g}%"})
    n_unf = sum(unf_by.values())
    f = unfamiliar_flag(n_unf, len(typed), min_cells=1)
    if f is not None:
        flags.append(f)
    out = {"counts": counts, "differential": diff, "flags": flags, "disclaimer": DISCLAIMER}
    if rbc_morphology and sum(rbc_morphology.values()):
        out["rbc_morphology"], mflags = morphology_summary(dict(rbc_morphology), rbc_score)
        flags.extend(mflags)
    if n_unf:
        out["unfamiliar"] = n_unf
    out.update(outside)  # WBC detections typed erythroblast / platelet: outside the differential
    return out


def rbc_morphology_counts(cells) -> dict[str, int] | None:
    """Per type the red cells of ``cells`` typed so, or None when none was typed (the stage was off)."""
    col = getattr(cells, "morphology", None)
    if col is None:
        return None
    typed = [m for k, m in zip(cells.kind, col) if k == "rbc" and m is not None]
    return morphology_counts(typed) if typed else None


def rbc_morphology_median_score(cells) -> float | None:
    """Median ``morphology_score`` of the typed red cells, or None."""
    col = getattr(cells, "morphology_score", None)
    if col is None:
        return None
    s = [float(v) for k, m, v in zip(cells.kind, cells.morphology, col) if k == "rbc" and m is not None and v == v]
    return float(np.median(s)) if s else None
