"""Candidate classifiers side by side, and their logit ensembles, chosen on validation (issue #5).

    .venv/bin/python bench/classifier_ensemble.py --model NAME=FILE ... [--threads 2] [--max-size 3]

For every model: temperature-scaled log-probabilities on the PBC val and test splits (data/pbc-cls,
original images) and on the DeepAPL held-out patients (data/deepapl-cls val + test), cached in
runs/ensemble/<name>-<set>.npz (keyed by the checkpoint's sha256). Prints, per model and per ensemble
(mean log-probability, equal weights, every subset up to --max-size): PBC val / test accuracy and
macro-F1, DeepAPL cell accuracy and blast recall at precision >= 0.90 (PR curve on the held-out
cells). Ensembles are ranked by PBC *val* accuracy: test is read, never chosen on. Then, for the first
model, what each review threshold sends to review and which errors it catches; and how many PBC
test images k or more of the models get wrong (the errors all share bound what averaging can do).
Prints the machine.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from deepapl import recall_at_precision  # noqa: E402

SETS = {"pbc-val": ("data/pbc-cls", ["val"]), "pbc-test": ("data/pbc-cls", ["test"]),
        "apl-heldout": ("data/deepapl-cls", ["val", "test"])}


def logprobs(name: str, path: str, set_name: str, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    from bccdet.adapters.classifier import CellClassifier, _collect
    from bccdet.io import read_image, sha256_file
    from bccdet.vocab import LABELS

    sha = sha256_file(path)[:16]
    f = cache / f"{name}-{set_name}-{sha}.npz"
    if f.exists():
        z = np.load(f)
        return z["lp"], z["y"]
    data, splits = SETS[set_name]
    items = [it for sp in splits for it in _collect([REPO / data], sp, None, 0)]
    clf = CellClassifier(path)
    crops = [clf.crop_single(read_image(p)) for p, _ in items]
    z = clf.predict_logits(crops) / clf.temperature
    lp = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)
    y = np.array([LABELS.index(lab) for _, lab in items])
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(f, lp=lp.astype(np.float32), y=y)
    return lp, y


def macro_f1(y, p, k) -> float:
    f = []
    for c in range(k):
        tp = np.sum((p == c) & (y == c))
        n_true, n_pred = np.sum(y == c), np.sum(p == c)
        if n_true == 0:
            continue
        f.append(2 * tp / max(1, n_true + n_pred))
    return float(np.mean(f))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="NAME=FILE (repeat)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-size", type=int, default=3)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    from bccdet.vocab import LABELS
    from machine import machine

    models = dict(m.split("=", 1) for m in a.model)
    cache = REPO / "runs" / "ensemble"
    lp = {(n, s): logprobs(n, p, s, cache) for n, p in models.items() for s in SETS}
    blast = LABELS.index("blast")
    rows = []
    for k in range(1, a.max_size + 1):
        for combo in itertools.combinations(models, k):
            r = {"models": "+".join(combo)}
            for s in SETS:
                y = lp[(combo[0], s)][1]
                m = np.mean([lp[(n, s)][0] for n in combo], axis=0)
                pred = m.argmax(1)
                r[s + "-acc"] = float(np.mean(pred == y))
                if s.startswith("pbc"):
                    r[s + "-f1"] = macro_f1(y, pred, 8)
                else:
                    r["blast-r@p90"] = recall_at_precision(np.exp(m[:, blast]), y == blast, 0.90)[0]
            rows.append(r)
    rows.sort(key=lambda r: (-r["pbc-val-acc"], -r["pbc-val-f1"]))
    print(f"{'models':40s} {'val acc':>8s} {'val F1':>7s} {'test acc':>8s} {'test F1':>7s} {'APL acc':>8s} {'blast R@P.9':>11s}")
    for r in rows:
        print(f"{r['models']:40s} {r['pbc-val-acc']:8.4f} {r['pbc-val-f1']:7.4f} {r['pbc-test-acc']:8.4f} "
              f"{r['pbc-test-f1']:7.4f} {r['apl-heldout-acc']:8.4f} {r['blast-r@p90']:11.3f}")
    # the review flag as a safety net: what each threshold sends to review, for the first model alone
    first = next(iter(models))
    print(f"\n{first}: --review-threshold (top probability below it -> review; abnormal labels are reviewed anyway)")
    print(f"{'threshold':>9s} {'PBC test: reviewed':>19s} {'errors caught':>13s} {'acc of the rest':>15s} "
          f"{'DeepAPL: reviewed':>18s} {'errors caught':>13s}")
    for t in (0.5, 0.6, 0.7, 0.8, 0.9):
        cols = []
        for s_ in ("pbc-test", "apl-heldout"):
            lp_, y_ = lp[(first, s_)]
            p_ = np.exp(lp_)
            err, rv = p_.argmax(1) != y_, p_.max(1) < t
            cols.append((rv.mean(), int((err & rv).sum()), int(err.sum()), float((~err & ~rv).sum() / max(1, (~rv).sum()))))
        (a1, c1, e1, r1), (a2, c2, e2, _) = cols
        print(f"{t:9.1f} {a1:18.1%} {c1:6d} of {e1:<4d} {r1:15.4f} {a2:17.1%} {c2:6d} of {e2:<4d}")
    # errors shared by every model: a floor no average of these models can go below
    y = lp[(next(iter(models)), "pbc-test")][1]
    wrong = np.array([lp[(n, "pbc-test")][0].argmax(1) != y for n in models]).sum(0)
    print("PBC test images misclassified by at least k of the", len(models), "models: "
          + ", ".join(f"k={k}: {int((wrong >= k).sum())}" for k in range(1, len(models) + 1)))
    print(machine())


if __name__ == "__main__":
    main()
