"""DeepAPL patient-level cross-validation of a classifier recipe (issue #5); `fit-apl` builds the shipped
weights/bccdet-apl-lr.json.

    .venv/bin/python -m tools.deepapl_cv folds  [--k 5] [--out data/deepapl-cv]
    .venv/bin/python -m tools.deepapl_cv train  --fold N [--out runs/cv] [-- extra `train classifier` options]
    .venv/bin/python -m tools.deepapl_cv predict --fold N [--out runs/cv]   (predict again from a trained fold)
    .venv/bin/python -m tools.deepapl_cv score  [--out runs/cv]
    .venv/bin/python -m tools.deepapl_cv fit-apl [--dest weights/bccdet-apl-lr.json] [--only-split train]

``folds`` splits every patient of ``data/deepapl-cls`` (all of its splits: the 73 Discovery patients
with signed cells) into ``k`` folds, stratified by diagnosis (APL / AML, from ``master.csv``), seed 0.
Fold ``i``: test = the patients of fold ``i``; val = every other patient of fold ``i+1`` (picks the
epoch, fits the temperature and the blast threshold); train = the rest. Each fold is written as a
manifest-only classify set (``data/deepapl-cv/fold<i>/manifest.csv``, absolute file paths), so nothing
is copied.

``train`` runs ``cli.py train classifier --data data/pbc-cls --data data/deepapl-cv/fold<i>`` with the
160 px recipe of ``runs/classifier/c160`` (10 epochs x 4,000 balanced draws, ImageNet init, one thread)
unless other options follow ``--``; then predicts the fold's val and test cells into ``pred.npz``.

``score`` pools the out-of-fold predictions: every patient is scored by the one model that never saw
it. Prints cell accuracy, blast recall / precision at argmax, blast recall at precision >= 0.90 (threshold
picked on the pooled test cells: an upper bound) and with each fold's threshold fixed on its val
patients, and the patient-level APL-vs-AML AUC of ``apl_score`` over all patients, per fold and pooled.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.common import REPO, auc, recall_at_precision, print_machine


C160 = ["--epochs", "10", "--imgsz", "160", "--batch", "32", "--freeze-epochs", "1", "--lr", "1e-3",
        "--samples-per-epoch", "4000", "--threads", "1"]


def _diagnosis() -> dict[str, str]:
    from bccdet.data import dataset

    root = dataset("deepapl")
    if root is None:
        sys.exit("need the DeepAPL folder ($BCCDET_DATA or ../shared/datasets)")
    return {r["Patient_ID"]: r["Diagnosis"] for r in csv.DictReader(open(root / "master.csv"))}


def make_folds(src: Path, out: Path, k: int, seed: int = 0) -> list[list[str]]:
    rows = list(csv.DictReader(open(src / "manifest.csv")))
    diag = _diagnosis()
    pats = sorted({r["group"] for r in rows})
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    j = 0
    for dx in ("APL", "AML"):  # deal each diagnosis round-robin after a shuffle: stratified folds
        group = [p for p in pats if diag.get(p) == dx]
        for p in (group[i] for i in rng.permutation(len(group))):
            folds[j % k].append(p)
            j += 1
    for i in range(k):
        test = set(folds[i])
        val = set(folds[(i + 1) % k][::2])
        d = out / f"fold{i}"
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "manifest.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            n = dict.fromkeys(("train", "val", "test"), 0)
            for r in rows:
                p = r["group"]
                r = dict(r, split="test" if p in test else "val" if p in val else "train",
                         file=str((src / r["file"]).resolve()))
                w.writerow(r)
                n[r["split"]] += 1
        apl = sum(diag.get(p) == "APL" for p in test)
        print(f"fold{i}: test {len(test)} patients ({apl} APL), val {len(val)}, cells {n}")
    (out / "folds.json").write_text(json.dumps({"k": k, "seed": seed, "folds": folds}, indent=1))
    return folds


def predict(ck: Path, fold_dir: Path, dest: Path) -> None:
    from bccdet.adapters.classifier import CellClassifier
    from bccdet.io import read_image

    rows = [r for r in csv.DictReader(open(fold_dir / "manifest.csv")) if r["split"] in ("val", "test")]
    clf = CellClassifier(ck)
    crops = [clf.crop_single(read_image(r["file"])) for r in rows]
    probs = clf.predict_crops(crops, 32)
    np.savez(dest, probs=probs.astype(np.float32), split=np.array([r["split"] for r in rows]),
             label=np.array([r["label"] for r in rows]), group=np.array([r["group"] for r in rows]),
             path=np.array([r["file"] for r in rows]))


def loo_scores(feats: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Leave-one-patient-out scores of the patient model (C fixed beforehand, nothing tuned on these)."""
    from bccdet.adapters.classifier import apl_score_features, fit_apl_model

    out = np.zeros(len(ys))
    for i in range(len(ys)):
        m = np.arange(len(ys)) != i
        out[i] = apl_score_features(fit_apl_model(feats[m], ys[m]), feats[i])
    return out


def patient_features(out: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(patients, features, is_apl) from the out-of-fold test cells of every fold."""
    from bccdet.adapters.classifier import apl_features

    diag = _diagnosis()
    pats, feats = [], []
    for f in sorted(out.glob("fold*/pred.npz")):
        z = np.load(f)
        te = z["split"] == "test"
        for p in sorted(set(z["group"][te])):
            pats.append(str(p))
            feats.append(apl_features(z["probs"][te & (z["group"] == p)]))
    return pats, np.array(feats), np.array([diag.get(p) == "APL" for p in pats])


def fit_apl(out: Path, dest: Path, only_split: str | None) -> None:
    """Fit the patient model on every out-of-fold patient (or those of one split of data/deepapl-cls)."""
    import datetime


    from bccdet.adapters.classifier import fit_apl_model

    pats, feats, ys = patient_features(out)
    if only_split:
        keep = {r["group"] for r in csv.DictReader(open(REPO / "data/deepapl-cls/manifest.csv")) if r["split"] == only_split}
        m = np.array([p in keep for p in pats])
        pats, feats, ys = [p for p, k in zip(pats, m) if k], feats[m], ys[m]
    loo = auc(list(loo_scores(feats, ys)), list(ys))
    folds = json.loads((Path(REPO / "data" / "deepapl-cv") / "folds.json").read_text())
    model = fit_apl_model(feats, ys, patients=pats, loo_auc=round(loo, 4),
                          fitted_on=f"out-of-fold cell probabilities of a {folds['k']}-fold patient-level CV of the 160 px "
                                    f"classifier recipe (tools/deepapl_cv.py), DeepAPL Discovery"
                                    + (f", patients of split {only_split!r} only" if only_split else ""),
                          created=datetime.date.today().isoformat())
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(model, indent=1) + "\n")
    from bccdet.vocab import LABELS

    print(f"fitted on {len(ys)} patients ({int(ys.sum())} APL); leave-one-patient-out AUC {loo:.4f}; wrote {dest}")
    print("coefficients: " + ", ".join(f"{lab} {c:+.2f}" for lab, c in sorted(zip(LABELS, model["coef"]), key=lambda t: -abs(t[1]))))


def score(out: Path) -> None:

    from bccdet.adapters.classifier import apl_score
    from bccdet.vocab import LABELS

    diag = _diagnosis()
    runs = sorted(out.glob("fold*/pred.npz"))
    if not runs:
        sys.exit(f"no {out}/fold*/pred.npz yet (run `train --fold N` first)")
    ib, ip = LABELS.index("blast"), LABELS.index("promyelocyte")
    pooled = defaultdict(list)
    print_machine()
    print(f"{'fold':<7}{'patients':>9}{'APL':>5}{'cells':>7}{'acc':>8}{'blast R':>9}{'blast P':>9}"
          f"{'R@P90':>8}{'R (val thr)':>12}{'P (val thr)':>12}{'AUC':>8}")
    for f in runs:
        z = np.load(f)
        te, va = z["split"] == "test", z["split"] == "val"
        pr, lab, grp = z["probs"], z["label"], z["group"]
        pred = np.array(LABELS)[pr.argmax(1)]
        pb = pr[:, ib]
        _, _, tv = recall_at_precision(pb[va], lab[va] == "blast", 0.90)
        hit = (pb[te] >= tv) & (lab[te] == "blast")
        pats = sorted(set(grp[te]))
        sc = [apl_score(pr[te & (grp == p), ip], pr[te & (grp == p), ib]) for p in pats]
        ys = [diag.get(p) == "APL" for p in pats]
        nb = int(np.sum(lab[te] == "blast"))
        tp = int(np.sum((pred[te] == "blast") & (lab[te] == "blast")))
        r90 = recall_at_precision(pb[te], lab[te] == "blast", 0.90)[0]
        print(f"{f.parent.name:<7}{len(pats):>9}{sum(ys):>5}{int(te.sum()):>7}{np.mean(pred[te] == lab[te]):>8.4f}"
              f"{tp / max(1, nb):>9.4f}{tp / max(1, int(np.sum(pred[te] == 'blast'))):>9.4f}{r90:>8.4f}"
              f"{hit.sum() / max(1, nb):>12.4f}{hit.sum() / max(1, int(np.sum(pb[te] >= tv))):>12.4f}"
              f"{auc(sc, ys):>8.4f}")
        pooled["pred"] += list(pred[te])
        pooled["lab"] += list(lab[te])
        pooled["pb"] += list(pb[te])
        pooled["hit"] += list(pb[te] >= tv)
        pooled["pats"] += pats
        pooled["scores"] += sc
        pooled["ys"] += ys
    pred, lab, pb, sel = (np.array(pooled[k]) for k in ("pred", "lab", "pb", "hit"))
    isb = lab == "blast"
    tp = int(np.sum((pred == "blast") & isb))
    r90, p90, _ = recall_at_precision(pb, isb, 0.90)
    print(f"{'pooled':<7}{len(pooled['pats']):>9}{sum(pooled['ys']):>5}{len(lab):>7}{np.mean(pred == lab):>8.4f}"
          f"{tp / max(1, isb.sum()):>9.4f}{tp / max(1, int(np.sum(pred == 'blast'))):>9.4f}{r90:>8.4f}"
          f"{np.sum(sel & isb) / max(1, isb.sum()):>12.4f}{np.sum(sel & isb) / max(1, sel.sum()):>12.4f}"
          f"{auc(pooled['scores'], pooled['ys']):>8.4f}")
    from collections import Counter

    miss = Counter(pred[isb & (pred != "blast")])
    false = Counter(lab[~isb & (pred == "blast")])
    print("blasts called otherwise: " + ", ".join(f"{k} {v}" for k, v in miss.most_common(5)))
    print("called blast, labelled otherwise: " + ", ".join(f"{k} {v}" for k, v in false.most_common(5)))
    print(f"{len(runs)} fold(s). R@P90: best recall with precision >= 0.90 over thresholds picked on the test cells "
          f"(upper bound); 'val thr': p_blast threshold fixed on each fold's val patients. AUC: apl_score, pooled "
          f"over patients scored by the model that never saw them.")
    # patient-level alternatives on the same out-of-fold cells (exploratory: not what apl_score does)
    _, feats, ys = patient_features(out)  # same patients and order as the pooled lists above
    print(f"patient AUC, mean p(promyelocyte) alone: {auc(list(feats[:, ip]), list(ys)):.4f}")
    print(f"patient AUC, mean p(blast) alone (lower = APL): {auc(list(-feats[:, ib]), list(ys)):.4f}")
    if ys.sum() >= 2 and (~ys).sum() >= 2:
        print(f"patient AUC, logistic regression on the 12 log mean probabilities (leave one patient out): "
              f"{auc(list(loo_scores(feats, ys)), list(ys)):.4f}")
    print(f"{'patient':<12}{'diagnosis':<10}{'apl_score':>10}")
    for p, s, y in sorted(zip(pooled["pats"], pooled["scores"], pooled["ys"]), key=lambda t: -t[1]):
        print(f"{p:<12}{'APL' if y else 'AML':<10}{s:>10.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["folds", "train", "predict", "score", "fit-apl"])
    ap.add_argument("--dest", default=str(REPO / "weights" / "bccdet-apl-lr.json"), help="fit-apl: model file to write")
    ap.add_argument("--only-split", default=None, help="fit-apl: only the patients of this split of data/deepapl-cls")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--fold", type=int)
    ap.add_argument("--src", default=str(REPO / "data" / "deepapl-cls"))
    ap.add_argument("--folds-dir", default=str(REPO / "data" / "deepapl-cv"))
    ap.add_argument("--out", default=str(REPO / "runs" / "cv"))
    ap.add_argument("--keep-cache", action="store_true", help="keep the decoded-image cache of a finished fold")
    a, extra = ap.parse_known_args()
    extra = [x for x in extra if x != "--"]
    if a.cmd == "folds":
        make_folds(Path(a.src), Path(a.folds_dir), a.k)
    elif a.cmd in ("train", "predict"):
        fd, run = Path(a.folds_dir) / f"fold{a.fold}", Path(a.out) / f"fold{a.fold}"
        if not (fd / "manifest.csv").exists():
            sys.exit(f"{fd}/manifest.csv missing: run `folds` first")
        cmd = [sys.executable, str(REPO / "cli.py"), "train", "classifier", "--data", str(REPO / "data" / "pbc-cls"),
               "--data", str(fd), "--out", str(run)] + (extra or C160)
        if a.cmd == "train":
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        predict(run / "classifier.pt", fd, run / "pred.npz")
        if not a.keep_cache:
            import shutil

            shutil.rmtree(run / "cache", ignore_errors=True)
        print(f"wrote {run / 'pred.npz'}")
    elif a.cmd == "fit-apl":
        fit_apl(Path(a.out), Path(a.dest), a.only_split)
    else:
        score(Path(a.out))


if __name__ == "__main__":
    main()
