"""Classifier robustness on the PBC test split: accuracy on clean images and on 0.5x / 2x scale, JPEG
quality 50 and a hue shift, in one run (the issue's rule: each within 2 points of clean).

    .venv/bin/python -m bench.classifier_robustness [--data data/pbc-cls] [--weights NAME|FILE] [--limit N]

The copy of PBC in ../shared was resized to 256 px WebP, so "original size" here is that copy; 0.5x and
2x rescale it before the classifier's own crop. Prints a table and the machine.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import REPO, print_machine


def perturb(img: np.ndarray, kind: str) -> np.ndarray:
    import cv2
    from PIL import Image

    if kind == "clean":
        return img
    if kind in ("scale0.5", "scale2"):
        f = 0.5 if kind == "scale0.5" else 2.0
        h, w = img.shape[:2]
        return cv2.resize(img, (int(w * f), int(h * f)), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)
    if kind == "jpeg50":
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=50)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    if kind == "hue15":
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(int) + 8) % 180  # OpenCV hue unit is 2 degrees: +16 degrees
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    raise ValueError(kind)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO / "data" / "pbc-cls"))
    ap.add_argument("--weights", default=None)
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args()

    from bccdet.adapters.classifier import CellClassifier, _read_split
    from bccdet.io import read_image
    from bccdet.vocab import LABELS
    from bccdet.weights import resolve

    items = _read_split(Path(a.data), "test")[: a.limit]
    if not items:
        sys.exit(f"{a.data}: no test split (run datasets/build.sh)")
    w, name, sha = resolve(a.weights, "classifier")
    clf = CellClassifier(w, name=name, sha256=sha)
    imgs = [read_image(p) for p, _ in items]
    y = np.array([LABELS.index(lab) for _, lab in items])
    print_machine()
    print(f"classifier {name} ({sha[:12]}) on PBC test ({len(items)} images)")
    print(f"{'condition':<12}{'accuracy':>10}{'vs clean':>10}{'s':>7}")
    clean = None
    for kind in ("clean", "scale0.5", "scale2", "jpeg50", "hue15"):
        t0 = time.perf_counter()
        crops = [clf.crop_single(perturb(im, kind)) for im in imgs]
        acc = float(np.mean(clf.predict_crops(crops, 64).argmax(1) == y))
        clean = acc if clean is None else clean
        print(f"{kind:<12}{acc:>10.4f}{(acc - clean) * 100:>+9.2f}p{time.perf_counter() - t0:>7.0f}")


if __name__ == "__main__":
    main()
