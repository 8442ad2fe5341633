"""Does a cell look like the classifier's training data? Choose and fit the familiarity score (issue #5).

    .venv/bin/python -m tools.classifier_familiarity [--weights NAME|FILE] [--cache runs/familiarity-emb.npz]
                                                     [--threads 2] [--write]

Embeds (penultimate features of the classifier, L2-normalised) the PBC and DeepAPL classify sets
(data/pbc-cls, data/deepapl-cls: train / val / test), wbc-seg (another lab's CellaVision images, never
trained on) and the WBCs of BCCD test (phone-camera smear fields, cropped from the published boxes as
``analyze`` crops them). ``--cache`` keeps the embeddings (about 15 minutes on 2 CPU threads to make).

Prints, for each candidate score fitted on the training cells with the threshold at the 95th
percentile of the validation cells: AUROC of PBC test against wbc-seg, BCCD and DeepAPL test, and the
share of each set called unfamiliar. Then, for the chosen score (residual energy outside the top-64
principal components): the accuracy of unfamiliar and other cells, the share of unfamiliar cells per
held-out DeepAPL patient, and (``--write``) writes ``weights/<classifier>.familiarity.npz``, which
``CellClassifier`` loads when its sha256 matches.
"""

from __future__ import annotations

import argparse
import csv
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from bench.common import REPO, wbcseg_cells, print_machine


def _embed_all(clf, threads: int) -> dict:
    import torch

    from bccdet.data import dataset
    from bccdet.io import read_image
    from bccdet.vocab import LABELS

    torch.set_num_threads(threads)
    out: dict = {}

    def run(crops):
        z, e = clf._forward(crops, 16, embed=True)
        return e, z

    for key, d in (("pbc", REPO / "data/pbc-cls"), ("apl", REPO / "data/deepapl-cls")):
        if not (d / "manifest.csv").exists():
            sys.exit(f"need {d} (bash datasets/build.sh)")
        rows = list(csv.DictReader(open(d / "manifest.csv")))
        E, Z = [], []
        for i in range(0, len(rows), 512):
            e, z = run([clf.crop_single(read_image(d / r["file"])) for r in rows[i:i + 512]])
            E.append(e)
            Z.append(z)
            print(f"  {key}: {min(i + 512, len(rows))}/{len(rows)}", file=sys.stderr, flush=True)
        out[f"{key}_E"], out[f"{key}_Z"] = np.concatenate(E), np.concatenate(Z)
        out[f"{key}_split"] = np.array([r["split"] for r in rows])
        out[f"{key}_y"] = np.array([LABELS.index(r["label"]) for r in rows])
        out[f"{key}_group"] = np.array([r["group"] for r in rows])
    files, names = wbcseg_cells()
    out["wbc_E"], out["wbc_Z"] = run([clf.crop_single(read_image(f)) for f in files])
    out["wbc_y"] = np.array([LABELS.index(n) for n in names])
    bccd = dataset("bccd")
    if bccd is None:
        sys.exit("need bccd ($BCCDET_DATA or ../shared/datasets)")
    crops = []
    for i in open(bccd / "ImageSets/Main/test.txt").read().split():
        img = read_image(bccd / "JPEGImages" / f"{i}.jpg")
        for o in ET.parse(bccd / "Annotations" / f"{i}.xml").findall("object"):
            if o.find("name").text == "WBC":
                b = o.find("bndbox")
                box = [float(b.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
                if box[2] > box[0] and box[3] > box[1]:
                    crops.append(clf.crop(img, box))
    out["bccd_E"], out["bccd_Z"] = run(crops)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=None)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="write weights/<classifier>.familiarity.npz")
    a = ap.parse_args()
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import NearestNeighbors

    from bccdet.adapters import classifier as C
    from bccdet.report import UNFAMILIAR_CALL_FRACTION
    from bccdet.weights import resolve

    path, name, sha = resolve(a.weights, "classifier")
    clf = C.CellClassifier(path, name=name, sha256=sha)
    if a.cache and a.cache.exists():
        d = dict(np.load(a.cache, allow_pickle=False))
        if str(d.get("sha256", "")) != sha:
            sys.exit(f"{a.cache} was made with another classifier; delete it")
    else:
        d = _embed_all(clf, a.threads)
        d["sha256"] = np.array(sha)
        if a.cache:
            a.cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(a.cache, **d)
    print_machine()
    print(f"classifier {name} ({sha[:12]})")
    tr = np.concatenate([d["pbc_E"][d["pbc_split"] == "train"], d["apl_E"][d["apl_split"] == "train"]])
    va = np.concatenate([d["pbc_E"][d["pbc_split"] == "val"], d["apl_E"][d["apl_split"] == "val"]])
    sets = {"PBC test": (d["pbc_E"][d["pbc_split"] == "test"], d["pbc_Z"][d["pbc_split"] == "test"], d["pbc_y"][d["pbc_split"] == "test"]),
            "DeepAPL test": (d["apl_E"][d["apl_split"] == "test"], d["apl_Z"][d["apl_split"] == "test"], d["apl_y"][d["apl_split"] == "test"]),
            "wbc-seg": (d["wbc_E"], d["wbc_Z"], d["wbc_y"]), "BCCD WBC": (d["bccd_E"], d["bccd_Z"], None)}
    print(f"training cells {len(tr)}, validation cells {len(va)}; " + ", ".join(f"{k} {len(v[0])}" for k, v in sets.items()))

    mu = tr.mean(0)
    _, _, vt = np.linalg.svd(tr - mu, full_matrices=False)
    cands = {}
    for k in (16, 64, 128):
        v = vt[:k]
        var = ((tr - mu) @ v.T).var(0)
        rv = C._residual({"mean": mu, "components": v}, tr).mean()
        cands[f"Mahalanobis, top {k} PCs"] = lambda x, v=v, var=var: ((((x - mu) @ v.T) ** 2) / var).mean(1)
        cands[f"residual outside top {k} PCs"] = lambda x, v=v, rv=rv: C._residual({"mean": mu, "components": v}, x) / rv
    bank = tr[np.random.default_rng(0).choice(len(tr), 5000, replace=False)]
    nn = NearestNeighbors(n_neighbors=5, metric="cosine").fit(bank)
    cands["5-NN cosine distance (5,000 training cells)"] = lambda x: nn.kneighbors(x)[0].mean(1)
    print(f"\n{'score (fitted on training cells; threshold = val 95th percentile)':<66}{'AUROC wbc-seg':>14}{'BCCD':>7}{'DeepAPL':>9}"
          + "".join(f"{'unfam. ' + k:>20}" for k in sets))
    ref = sets["PBC test"][0]
    for cname, f in cands.items():
        thr = np.percentile(f(va), 95)
        s0 = f(ref)
        aucs = [roc_auc_score(np.r_[np.zeros(len(s0)), np.ones(len(sets[k][0]))], np.r_[s0, f(sets[k][0])])
                for k in ("wbc-seg", "BCCD WBC", "DeepAPL test")]
        print(f"{cname:<66}" + "".join(f"{x:>{w}.3f}" for x, w in zip(aucs, (14, 7, 9)))
              + "".join(f"{(f(v[0]) > thr).mean():>20.3f}" for v in sets.values()))

    model = C.fit_familiarity(tr, va)
    print(f"\nchosen: residual outside the top {C.FAMILIARITY_K} PCs, threshold {model['threshold']:.3f} "
          f"(val {C.FAMILIARITY_QUANTILE:.0f}th percentile)")
    for k, (e, z, y) in sets.items():
        u = C.familiarity_scores(model, e) > model["threshold"]
        line = f"  {k:<14} unfamiliar {u.mean():.3f}"
        if y is not None:
            ok = z.argmax(1) == y
            line += (f"; accuracy of unfamiliar cells {ok[u].mean() if u.any() else float('nan'):.3f}, of the others "
                     f"{ok[~u].mean():.3f}; errors among the unfamiliar {int((~ok & u).sum())}/{int((~ok).sum())}")
        print(line)
    held = d["apl_split"] != "train"
    sc = C.familiarity_scores(model, d["apl_E"]) > model["threshold"]
    fr = sorted((float(sc[held & (d["apl_group"] == p)].mean()), str(p)) for p in set(d["apl_group"][held]))
    print(f"  held-out DeepAPL patients ({len(fr)}): unfamiliar share median {np.median([x for x, _ in fr]):.3f}, "
          f"highest " + ", ".join(f"{p} {x:.2f}" for x, p in fr[-3:]) + f"; call flag at >= {UNFAMILIAR_CALL_FRACTION:.2f}")
    if a.write:
        dest = C.familiarity_path(path)
        C.save_familiarity(model, dest, sha, classifier=name, k=C.FAMILIARITY_K, quantile=C.FAMILIARITY_QUANTILE,
                           train_cells=int(len(tr)), val_cells=int(len(va)),
                           fitted_on="PBC + DeepAPL training split (data/pbc-cls, data/deepapl-cls)")
        print(f"wrote {dest}")


if __name__ == "__main__":
    main()
