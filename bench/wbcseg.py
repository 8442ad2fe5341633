"""wbc-seg (Zheng et al. 2018, Dataset 2): 100 CellaVision-style single-cell images from another lab, with
their labels, as the classifier benches read them (never used in training)."""

from __future__ import annotations

import csv
from pathlib import Path

# labels.csv "class" 1..5
NAMES = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]


def wbcseg_cells(required: bool = True) -> tuple[list[Path], list[str]] | None:
    """(image files, label names) in labels.csv order; None (or exit when ``required``) without the data."""
    import sys

    from bccdet.data import dataset

    root = dataset("wbc-seg")
    if root is None:
        if required:
            sys.exit("need the wbc-seg folder ($BCCDET_DATA or ../shared/datasets)")
        return None
    rows = list(csv.DictReader(open(root / "labels.csv")))
    return ([root / "images" / f"{int(r['image ID']):03d}.png" for r in rows],
            [NAMES[int(r["class"]) - 1] for r in rows])
