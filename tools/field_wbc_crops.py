"""Unlabelled white cells of other labs' fields, cut as ``analyze`` cuts them, for self-training.

    .venv/bin/python -m tools.field_wbc_crops --out data/field-wbc-crops [--classifier NAME|FILE] [--min-score 0.8]

Runs the default detector (``analyze``'s settings, no refinement) over every field of TXL-PBC's non-CellaVision
sources (Raabin-WBC 575x575, BCD 256x256; train and val) and BCCD's train and val splits, **leaving out
every field that holds a row of** ``datasets/field-wbc/labels.csv`` (the hand-typed test set) and BCCD test.
Each white cell's crop (the classifier's crop geometry: the box doubled, squared, 352 px) is written as
a PNG; then ``--classifier`` (default: the shipped one) pseudo-labels it with the most probable of the five
normal types (these fields are normal blood) and keeps it when that type's probability, renormalised over
the five, is at least ``--min-score``. Writes a manifest-only classify set (``manifest.csv``: file, label,
split, source; split ``train`` for every kept crop) that ``train classifier --data`` reads beside PBC and
DeepAPL. A crop fills the image as a CellaVision export does, so the single-cell crop of the file is the
field crop.
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

from bccdet.data import data_root
from bench.common import NORMAL5, TXL_FIELD_SOURCES, field_wbc_rows, normal5_probs


def sources(root: Path) -> list[tuple[str, Path]]:
    from PIL import Image

    held = {r["image"] for r in field_wbc_rows()}
    out = []
    for f in sorted((root / "txl-pbc" / "images").glob("*/*")):
        size = Image.open(f).size
        src = TXL_FIELD_SOURCES.get(size)
        if src and str(f.relative_to(root)) not in held:
            out.append((src, f))
    main = root / "bccd" / "ImageSets" / "Main"
    for split in ("train", "val"):
        for i in (main / f"{split}.txt").read_text().split():
            f = root / "bccd" / "JPEGImages" / f"{i}.jpg"
            if str(f.relative_to(root)) not in held:
                out.append(("bccd", f))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--classifier", default=None)
    ap.add_argument("--min-score", type=float, default=0.8)
    ap.add_argument("--size", type=int, default=352)
    ap.add_argument("--repeat", type=int, default=1, help="list each crop this many times (more draws beside PBC's 13,000)")
    a = ap.parse_args()

    import cv2
    from tqdm import tqdm

    from bccdet import load_pipeline
    from bccdet.adapters.classifier import load_classifier
    from bccdet.adapters.classifier.crops import cell_crop
    from bccdet.io import read_image

    root = data_root(required=True)
    out = Path(a.out).resolve()
    (out / "crops").mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(refine=False, classify=False, rbc_morphology=False)
    clf = load_classifier(a.classifier)
    rows, seen = [], Counter()
    for src, f in tqdm(sources(root), desc="fields", unit="field"):
        img = read_image(f)
        cells = pipe.analyze(img, path=f).cells
        boxes = cells.xyxy[cells.kind == "wbc"]
        if not len(boxes):
            continue
        crops = [cell_crop(img, b, size=a.size) for b in boxes]
        probs = normal5_probs(clf.predict_crops([clf.crop_single(c) for c in crops]), clf.labels)
        for j, (c, p) in enumerate(zip(crops, probs)):
            seen[src] += 1
            if p.max() < a.min_score:
                continue
            name = f"crops/{src}-{f.stem}-{j}.png"
            cv2.imwrite(str(out / name), cv2.cvtColor(c, cv2.COLOR_RGB2BGR))
            rows.append({"file": str(out / name), "label": NORMAL5[int(p.argmax())], "split": "train", "source": src})
    with open(out / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "label", "split", "source"])
        w.writeheader()
        w.writerows([r for r in rows for _ in range(a.repeat)])
    kept = Counter(r["source"] for r in rows)
    print("white cells found / kept: " + ", ".join(f"{s} {seen[s]} / {kept[s]}" for s in seen))
    print("pseudo-labels: " + ", ".join(f"{k} {v}" for k, v in Counter(r["label"] for r in rows).most_common()))
    print(f"{len(rows)} crops -> {out / 'manifest.csv'}")


if __name__ == "__main__":
    main()
