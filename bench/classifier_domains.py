"""The leukocyte classifier, domain by domain: CellaVision sets and white cells cut from other labs' fields.

    .venv/bin/python -m bench.classifier_domains [--weights NAME|FILE ...] [--runtime torch]

Domains (none of the field cells was used in training or model selection):

- ``field-wbc`` (``datasets/field-wbc/labels.csv``): white cells that ``analyze``'s detector found in fields
  of sources with no typed white cells in training: TXL-PBC's Raabin-WBC fields (575x575, phone camera),
  TXL-PBC's BCD fields (256x256), BCCD test fields (phone-camera microscope) and Chula RBC-12 fields (Nikon,
  another lab); labelled by eye from the crops (how: ``datasets/field-wbc/README.md``). Each crop is cut
  from the stored detector box with the classifier's own crop geometry and typed by the stage ``analyze``
  runs (``CellClassifier.type_crops`` on the crops ``__call__`` cuts: labels, review, unfamiliar). Rows labelled ``not_wbc`` (detector
  false positives) score how many the stage sends to review.
- ``wbc-seg``: 100 CellaVision images of another lab (Zheng et al. 2018), 5 normal types.
- ``pbc-test`` / ``deepapl-val+test``: the converted sets' held-out splits when ``data/pbc-cls`` /
  ``data/deepapl-cls`` exist (``bash datasets/build.sh``); skipped otherwise.

Per domain: n, accuracy of the 12-label call (what ``analyze`` / ``classify`` report), accuracy with the
call restricted to the 5 normal types (field and wbc-seg cells are normal blood), accuracy on the cells
labelled with certainty, share flagged ``unfamiliar`` and accuracy of flagged vs unflagged cells, and
per-type sensitivity. Prints the machine.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from bench.common import NORMAL5, REPO, field_wbc_rows, normal5_probs, print_machine, wbcseg_cells


def type_field_cells(clf, rows: list[dict], root: Path) -> list[dict]:
    """Each row's cell typed as ``analyze``'s stage types it (``CellClassifier.__call__``: the crop with the
    field's border colour, then ``type_crops``), all crops in one batched call."""
    from bccdet.adapters.classifier.crops import border_color
    from bccdet.io import read_image

    by_img = defaultdict(list)
    for r in rows:
        by_img[r["image"]].append(r)
    crops, order = [], []
    for img_rel, rs in by_img.items():
        img = read_image(root / img_rel)
        fill = border_color(img)
        for r in rs:
            crops.append(clf.crop(img, [float(r[k]) for k in ("x1", "y1", "x2", "y2")], fill=fill))
            order.append(r)
    probs, labels, _, review, unf = clf.type_crops(crops, ["wbc"] * len(crops))
    unf = [False] * len(crops) if unf is None else unf
    return [dict(r, pred=str(lab), review=bool(rv), unfamiliar=bool(u), probs=p)
            for r, lab, rv, u, p in zip(order, labels, review, unf, probs)]


def type_images(clf, files: list[Path]) -> list[tuple[str, bool, np.ndarray]]:
    from bccdet.io import read_image

    out = []
    for k in range(0, len(files), 32):
        crops = [clf.crop_single(read_image(f)) for f in files[k:k + 32]]
        probs, labels, _, review, unf = clf.type_crops(crops, None)
        unf = [False] * len(crops) if unf is None else unf
        out += [(str(lab), bool(u), p) for lab, u, p in zip(labels, unf, probs)]
    return out


def row_of(name: str, truth: list[str], pred: list[str], probs: np.ndarray, unfamiliar: list[bool],
           sure: list[bool], labels: list[str]) -> dict:
    t, p, u, s = np.array(truth), np.array(pred), np.array(unfamiliar, bool), np.array(sure, bool)
    p5 = np.array([NORMAL5[i] for i in normal5_probs(probs, labels).argmax(1)])
    ok, ok5 = t == p, t == p5

    def acc(m, v=ok):
        return float(v[m].mean()) if m.any() else float("nan")

    all_ = np.ones(len(t), bool)
    sens = {c: acc(t == c) for c in NORMAL5 if (t == c).any()}
    conf = Counter(f"{a}->{b}" for a, b in zip(t, p) if a != b).most_common(3)
    return dict(domain=name, n=len(t), acc=acc(all_), acc5=acc(all_, ok5), acc_sure=acc(s), n_sure=int(s.sum()),
                unfamiliar=float(u.mean()), acc_unf=acc(u), acc_fam=acc(~u), sens=sens, conf=conf)


def print_table(model: str, rows: list[dict]) -> None:
    print(f"\n{model}")
    print(f"{'domain':<20}{'n':>5}{'acc':>7}{'acc5':>7}{'sure':>7}{'n sure':>7}{'unfam':>7}{'acc unf':>8}{'acc fam':>8}  "
          + "".join(f"{c[:5]:>6}" for c in NORMAL5) + "  top confusions")
    for r in rows:
        print(f"{r['domain']:<20}{r['n']:>5}{r['acc']:>7.3f}{r['acc5']:>7.3f}{r['acc_sure']:>7.3f}{r['n_sure']:>7}"
              f"{r['unfamiliar']:>7.2f}{r['acc_unf']:>8.3f}{r['acc_fam']:>8.3f}  "
              + "".join(f"{r['sens'].get(c, float('nan')):>6.2f}" for c in NORMAL5) + "  "
              + ", ".join(f"{k} {v}" for k, v in r["conf"]))


def converted_split(folder: Path, splits: tuple[str, ...]) -> tuple[list[Path], list[str]] | None:
    from bccdet.adapters.classifier.data import _read_split

    if not folder.is_dir():
        return None
    items = [it for s in splits for it in _read_split(folder, s)]
    return [p for p, _ in items], [lab for _, lab in items]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", nargs="*", default=[None], help="registered names or checkpoint files (default: the shipped default)")
    ap.add_argument("--runtime", default="torch")
    ap.add_argument("--no-converted", action="store_true", help="skip PBC test / DeepAPL (slow: ~3,500 images)")
    a = ap.parse_args()

    from bccdet.adapters.classifier import load_classifier
    from bccdet.data import data_root

    root = data_root(required=True)
    print_machine()
    rows = field_wbc_rows()
    for w in a.weights:
        clf = load_classifier(w, runtime=a.runtime)
        labels = list(clf.labels)
        table = []
        typed = type_field_cells(clf, rows, root)
        for src in sorted({r["source"] for r in typed}) + ["txl-raabin+txl-256"]:
            pick = [r for r in typed if (r["source"] in src.split("+")) and r["label"] in NORMAL5]
            if pick:
                table.append(row_of(f"field {src}", [r["label"] for r in pick], [r["pred"] for r in pick],
                                    np.stack([r["probs"] for r in pick]), [r["unfamiliar"] for r in pick],
                                    [r["certainty"] == "sure" for r in pick], labels))
        fp = [r for r in typed if r["label"] == "not_wbc"]
        files, names = wbcseg_cells(required=False) or ([], [])
        if files:
            res = type_images(clf, files)
            table.append(row_of("wbc-seg", names, [x[0] for x in res], np.stack([x[2] for x in res]),
                                [x[1] for x in res], [True] * len(names), labels))
        for name, folder, splits in (("pbc-test", "pbc-cls", ("test",)), ("deepapl-val+test", "deepapl-cls", ("val", "test"))):
            got = None if a.no_converted else converted_split(REPO / "data" / folder, splits)
            if not got:
                continue
            res = type_images(clf, got[0])
            t, p = np.array(got[1]), np.array([x[0] for x in res])
            u = np.array([x[1] for x in res])
            print(f"{name}: n {len(t)}, accuracy (12 labels) {np.mean(t == p):.4f}, unfamiliar {u.mean():.3f}, "
                  f"accuracy flagged / not {np.mean((t == p)[u]) if u.any() else float('nan'):.3f} / "
                  f"{np.mean((t == p)[~u]):.3f}")
        print_table(f"{w or 'default'} ({clf.name}, runtime {a.runtime})", table)
        if fp:
            print(f"detector false positives (not_wbc, {len(fp)}): sent to review {np.mean([r['review'] for r in fp]):.2f}, "
                  f"unfamiliar {np.mean([r['unfamiliar'] for r in fp]):.2f}; called "
                  + ", ".join(f"{k} {v}" for k, v in Counter(r["pred"] for r in fp).most_common(4)))


if __name__ == "__main__":
    main()
