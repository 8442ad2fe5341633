"""Helpers shared by the tests: paths, the CLI as a user runs it, small real data sets, fake stages.

The fake stages implement the stage protocols (bccdet/stages.py) with plain numpy, so the pipeline's own
logic (order, timings, skipped stages, the report) is tested in the fast tier without loading a model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def dataset_dir(data_root, name: str) -> Path:
    """``data_root / name``, or the test skipped with the reason."""
    p = data_root / name
    if not p.is_dir():
        pytest.skip(f"{p} absent")
    return p


def run_cli(*args, cwd=None, env=None):
    """Run ``python cli.py ARGS`` as a user would; returns CompletedProcess (text)."""
    e = dict(os.environ)
    e.update(env or {})
    e.pop("BCCDET_DEBUG", None)
    return subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *map(str, args)],
        cwd=cwd or REPO, env=e, capture_output=True, text=True, timeout=900,
    )


def bccd_subset(bccd: Path, root: Path, n=(6, 2, 2)) -> Path:
    """The first ``n`` (train, val, test) fields of BCCD's published split, copied as a BCCD folder."""
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    for split, k in zip(("train", "val", "test"), n):
        stems = (bccd / f"ImageSets/Main/{split}.txt").read_text().split()[:k]
        for s in stems:
            shutil.copy(bccd / "Annotations" / f"{s}.xml", root / "Annotations")
            shutil.copy(bccd / "JPEGImages" / f"{s}.jpg", root / "JPEGImages")
        (root / f"ImageSets/Main/{split}.txt").write_text("\n".join(stems) + "\n")
    return root


def disc_image(h=120, w=160, cells=((40, 50, 15), (100, 70, 20)), seed=0):
    """A synthetic smear: pink background with darker discs; returns (rgb, list of (cx, cy, r))."""
    import cv2

    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), (230, 200, 210), np.uint8)
    for cx, cy, r in cells:
        cv2.circle(img, (cx, cy), r, (190, 90, 110), -1)
    img = np.clip(img.astype(int) + rng.integers(-5, 6, img.shape), 0, 255).astype(np.uint8)
    return img, list(cells)


# ---------------------------------------------------------------------- fake stages
class DiscDetector:
    """Finds the dark discs of a :func:`disc_image` (threshold + connected components): the larger ones are
    WBCs, the others RBCs; masks cropped to each box, as the real detector gives them."""

    name, sha256 = "disc-detector", "0" * 64

    def __init__(self, wbc_min_area: int = 900):
        self.wbc_min_area = wbc_min_area
        self.calls = 0

    def __call__(self, image, meta):
        import cv2

        from bccdet.types import Cells

        self.calls += 1
        dark = (image[..., 1] < 150).astype(np.uint8)
        n, lab, stats, _ = cv2.connectedComponentsWithStats(dark)
        boxes, kinds, masks, offs = [], [], [], []
        for i in range(1, n):
            x, y, w, h, area = stats[i]
            boxes.append([x, y, x + w, y + h])
            kinds.append("wbc" if area >= self.wbc_min_area else "rbc")
            masks.append(lab[y:y + h, x:x + w] == i)
            offs.append([x, y])
        if not boxes:
            return Cells.empty(meta)
        m = np.empty(len(masks), object)
        m[:] = masks
        return Cells(xyxy=np.array(boxes, np.float32), kind=np.array(kinds), score=np.full(len(boxes), 0.9, np.float32),
                     masks=m, mask_offset=np.array(offs, np.int32), mask_source=np.array(["yolo"] * len(boxes)),
                     meta=meta)


class LabelAll:
    """A classifier stage that types every WBC ``label`` with ``score`` (and records what it saw)."""

    sha256 = "1" * 64

    def __init__(self, label: str = "neutrophil", score: float = 0.95, name: str = "label-all"):
        self.label, self.score, self.name = label, score, name
        self.seen: list[int] = []

    def __call__(self, image, cells):
        out = cells[np.arange(len(cells))]
        wbc = out.kind == "wbc"
        self.seen.append(int(wbc.sum()))
        labels = list(out.label)
        for i in np.flatnonzero(wbc):
            labels[i] = self.label
        out.label = np.array(labels, object)
        out.label_score = np.where(wbc, self.score, out.label_score).astype(np.float32)
        return out


class Recorder:
    """A refiner stage that changes nothing and records that it ran."""

    name, sha256 = "recorder", "2" * 64

    def __init__(self):
        self.calls = 0

    def __call__(self, image, cells):
        self.calls += 1
        return cells
