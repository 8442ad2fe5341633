"""DeepAPL held-out patients: blast recall / precision per cell and patient-level APL-vs-AML AUC of apl_score.

    .venv/bin/python -m bench.deepapl [--data data/deepapl-cls] [--weights NAME|FILE] [--splits test,val]

Reads the converted set's manifest.csv (patient in the ``group`` column) and ``master.csv`` (diagnosis)
from the DeepAPL folder in $BCCDET_DATA / ../shared/datasets. Patients of the given splits were never
trained on (``val`` did pick the epoch and fit the temperature). Prints a table and the machine.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.common import REPO, auc, recall_at_precision, print_machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO / "data" / "deepapl-cls"))
    ap.add_argument("--weights", default=None)
    ap.add_argument("--splits", default="test,val")
    ap.add_argument("--apl-model", default="default", help="patient model file for the learned apl_score "
                    "(default: the registered one; 'none': only the rule)")
    a = ap.parse_args()

    from bccdet.adapters.classifier import CellClassifier, apl_score, apl_score_model, resolve_apl_model
    from bccdet.data import dataset
    from bccdet.io import read_image
    from bccdet.vocab import LABELS
    from bccdet.weights import resolve

    data = Path(a.data)
    root = dataset("deepapl")
    if root is None or not (data / "manifest.csv").exists():
        sys.exit("need data/deepapl-cls (datasets/build.sh) and the DeepAPL folder")
    diag = {r["Patient_ID"]: r["Diagnosis"] for r in csv.DictReader(open(root / "master.csv"))}
    splits = set(a.splits.split(","))
    rows = [r for r in csv.DictReader(open(data / "manifest.csv")) if r["split"] in splits]
    w, name, sha = resolve(a.weights, "classifier")
    clf = CellClassifier(w, name=name, sha256=sha)
    crops = [clf.crop_single(read_image(data / r["file"])) for r in rows]
    probs = clf.predict_crops(crops, 64)
    pred = np.array([LABELS[i] for i in probs.argmax(1)])
    true = np.array([r["label"] for r in rows])
    tp = int(np.sum((pred == "blast") & (true == "blast")))
    recall = tp / max(1, int(np.sum(true == "blast")))
    precision = tp / max(1, int(np.sum(pred == "blast")))
    acc = float(np.mean(pred == true))
    by = defaultdict(list)
    for i, r in enumerate(rows):
        by[r["group"]].append(i)
    pats = sorted(by)
    scores = [apl_score(probs[by[p], LABELS.index("promyelocyte")], probs[by[p], LABELS.index("blast")]) for p in pats]
    ys = [diag.get(p) == "APL" for p in pats]
    print_machine()
    print(f"classifier {name} ({sha[:12]}), DeepAPL splits {sorted(splits)}: {len(rows)} cells, {len(pats)} patients "
          f"({sum(ys)} APL)")
    print(f"{'cell accuracy':<28}{acc:.4f}")
    print(f"{'blast recall':<28}{recall:.4f}  ({tp}/{int(np.sum(true == 'blast'))})")
    print(f"{'blast precision':<28}{precision:.4f}  ({tp}/{int(np.sum(pred == 'blast'))})")
    pb = probs[:, LABELS.index("blast")]
    r90, p90, t90 = recall_at_precision(pb, true == "blast", 0.90)
    print(f"{'blast recall @ prec>=0.90':<28}{r90:.4f}  (precision {p90:.4f}, p_blast >= {t90:.3f}: threshold picked on "
          f"these cells, an upper bound)")
    split = np.array([r["split"] for r in rows])
    if {"val", "test"} <= splits:
        _, _, tv = recall_at_precision(pb[split == "val"], true[split == "val"] == "blast", 0.90)
        te = split == "test"
        hit = (pb[te] >= tv) & (true[te] == "blast")
        print(f"{'  threshold from val, test':<28}recall {hit.sum() / max(1, np.sum(true[te] == 'blast')):.4f}, precision "
              f"{hit.sum() / max(1, np.sum(pb[te] >= tv)):.4f} (p_blast >= {tv:.3f} fixed on the val patients)")
    print(f"{'patient APL vs AML AUC':<28}{auc(scores, ys):.4f}  (rule: share * presence)")
    model, how = resolve_apl_model(None if a.apl_model == "none" else a.apl_model)
    learned = [apl_score_model(model, probs[by[p]]) for p in pats] if model is not None else [float("nan")] * len(pats)
    if model is not None:
        seen = set(model.get("patients", [])) & set(pats)
        print(f"{'patient APL vs AML AUC':<28}{auc(learned, ys):.4f}  ({how}"
              + (f"; WARNING: fitted with {len(seen)} of these patients" if seen else "; none of these patients in its fit") + ")")
    print(f"{'patient':<12}{'diagnosis':<10}{'cells':>6}{'rule':>8}{'model':>8}")
    for p, s, lv, y in sorted(zip(pats, scores, learned, ys), key=lambda t: -t[1]):
        print(f"{p:<12}{diag.get(p, '?'):<10}{len(by[p]):>6}{s:>8.3f}{lv:>8.3f}")


if __name__ == "__main__":
    main()
