"""White cells as ``analyze`` finds them in other labs' smear fields: candidates for hand labelling.

    .venv/bin/python -m tools.field_wbc_candidates --out runs/field-wbc [--per-source 40]

Runs the default detector (``analyze``'s settings, no refinement, no classifier: the labeller must not
see the model's call) over fields of each source that holds no typed white cells in training:

- ``txl-raabin``: TXL-PBC's 575x575 fields (Raabin-WBC crops, phone camera on a microscope, Iran);
- ``txl-256``: TXL-PBC's 256x256 fields (the BCD set);
- ``bccd``: BCCD test fields (phone-camera microscope, China);
- ``chula``: Chula RBC-12 fields (Nikon DS-Fi2, Thailand).

Writes ``candidates.csv`` (id, source, image relative to the data root, box, detector score) and montage
PNGs of the crops ``analyze`` gives the classifier (``cell_crop`` geometry, enlarged for the eye) with the
id on each tile. The labels made from the montages are kept in ``datasets/field-wbc/labels.csv``; the
bench (``python -m bench.classifier_domains``) re-cuts each crop from the stored box, so the images stay
out of the repository.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from bccdet.data import data_root
from bench.common import TXL_FIELD_SOURCES

SOURCES = (*TXL_FIELD_SOURCES.values(), "bccd", "chula")


def fields(root: Path, source: str) -> list[Path]:
    from PIL import Image

    if source in TXL_FIELD_SOURCES.values():
        files = sorted((root / "txl-pbc" / "images").glob("*/*"))
        return [f for f in files if TXL_FIELD_SOURCES.get(Image.open(f).size) == source]
    if source == "bccd":
        ids = (root / "bccd" / "ImageSets" / "Main" / "test.txt").read_text().split()
        return [root / "bccd" / "JPEGImages" / f"{i}.jpg" for i in ids]
    return sorted((root / "chula-rbc-12" / "images").glob("*.webp"))


def montage(tiles: list[np.ndarray], names: list[str], cols: int = 5) -> np.ndarray:
    import cv2

    s = tiles[0].shape[0]
    rows = (len(tiles) + cols - 1) // cols
    out = np.full((rows * (s + 4), cols * (s + 4), 3), 255, np.uint8)
    for i, (t, n) in enumerate(zip(tiles, names)):
        r, c = divmod(i, cols)
        y, x = r * (s + 4), c * (s + 4)
        out[y:y + s, x:x + s] = t
        cv2.putText(out, n, (x + 3, y + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3)
        cv2.putText(out, n, (x + 3, y + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 0), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-source", type=int, default=40, help="fields looked at per source (evenly spaced)")
    ap.add_argument("--sources", nargs="*", default=list(SOURCES))
    ap.add_argument("--tile", type=int, default=224)
    ap.add_argument("--offset", type=int, default=0, help="start at this field (another draw of the same spacing)")
    ap.add_argument("--id-start", type=int, default=0, help="number the candidates from here (a second draw)")
    a = ap.parse_args()

    import cv2

    from bccdet import load_pipeline
    from bccdet.adapters.classifier.crops import cell_crop
    from bccdet.io import read_image

    root = data_root(required=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(refine=False, classify=False, rbc_morphology=False)
    rows = []
    for src in a.sources:
        files = fields(root, src)
        step = max(1, len(files) // a.per_source)
        tiles, names = [], []
        for f in files[a.offset::step][:a.per_source]:
            img = read_image(f)
            cells = pipe.analyze(img, path=f).cells
            for j in np.flatnonzero(cells.kind == "wbc"):
                box = [round(float(v), 1) for v in cells.xyxy[j]]
                cid = f"{src}-{a.id_start + len(names):03d}"
                rows.append({"id": cid, "source": src, "image": str(f.relative_to(root)),
                             "x1": box[0], "y1": box[1], "x2": box[2], "y2": box[3],
                             "det_score": round(float(cells.score[j]), 3)})
                tiles.append(cell_crop(img, box, size=a.tile))
                names.append(cid.rsplit("-", 1)[1])
        print(f"{src}: {len(files)} fields, {min(len(files), a.per_source)} looked at, {len(names)} white cells")
        for k in range(0, len(tiles), 20):
            png = out / f"{src}-{(a.id_start + k) // 20:02d}.png"
            cv2.imwrite(str(png), cv2.cvtColor(montage(tiles[k:k + 20], names[k:k + 20]), cv2.COLOR_RGB2BGR))
    man = out / "candidates.csv"
    new = not man.exists()
    with open(man, "a", newline="") as fh:  # a second draw adds to the first
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} candidates -> {out / 'candidates.csv'}")


if __name__ == "__main__":
    main()
