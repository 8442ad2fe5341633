"""Helpers shared by the benchmarks (and the artifact builders in ``tools/``).

Nothing here imports torch or the models at import time: ``python -m bench.X --help`` stays fast.
"""

from __future__ import annotations

import csv
import os
import platform
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np

REPO = Path(__file__).resolve().parent.parent
"""The repository root (benchmarks read data/, runs/ and weights/ under it)."""


# --- the machine record ------------------------------------------------------------------------------------

def machine() -> str:
    """One line describing the machine a benchmark ran on (printed with every table)."""
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        th = f"torch {torch.__version__} threads={torch.get_num_threads()}"
        if torch.cuda.is_available():
            th += f" cuda={torch.cuda.get_device_name(0)}"
    except ImportError:
        th = "torch absent"
    mem = ""
    try:
        kb = int(next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1])
        mem = f"{kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    return f"{cpu} | {os.cpu_count()} cores | {mem} | {platform.python_implementation()} {platform.python_version()} | {th}"


def print_machine() -> None:
    print(f"machine: {machine()}")


# --- data -------------------------------------------------------------------------------------------------

def need_dataset(name: str) -> Path:
    """The raw dataset folder ``name`` ($BCCDET_DATA or ../shared/datasets, ``bccdet.data.dataset``); exit without it."""
    from bccdet.data import dataset

    root = dataset(name)
    if root is None:
        sys.exit(f"{name} absent: set BCCDET_DATA (or put it in ../shared/datasets)")
    return root


BCCD_KIND = {"RBC": "rbc", "WBC": "wbc", "Platelets": "platelet"}


def bccd_stems(root: Path, split: str = "test", n: int | None = None) -> list[str]:
    """The first ``n`` field stems of a BCCD split (ImageSets/Main/<split>.txt), in the published order."""
    return (root / "ImageSets/Main" / f"{split}.txt").read_text().split()[:n]


def bccd_field(root: Path, stem: str):
    """(stem, RGB image, [(kind, published box xyxy)]) of one BCCD field, its boxes as published (not cleaned)."""
    from bccdet.io import read_image

    gt = [(BCCD_KIND[o.findtext("name")], [float(o.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")])
          for o in ET.parse(root / "Annotations" / f"{stem}.xml").getroot().iter("object")]
    return stem, read_image(root / "JPEGImages" / f"{stem}.jpg"), gt


def count_hits(hit: dict, cells, gt) -> None:
    """Add to ``hit[kind] = [found, all]`` the boxes of ``gt`` matched by a detection of their kind at IoU 0.5."""
    from bccdet.types import box_iou

    for k, box in gt:
        d = cells.xyxy[cells.kind == k]
        hit[k][1] += 1
        hit[k][0] += bool(len(d)) and box_iou(d, np.asarray(box, np.float32)[None]).max() >= 0.5


# wbc-seg (Zheng et al. 2018, Dataset 2): 100 CellaVision-style single-cell images from another lab, with
# their labels, as the classifier benches read them (never used in training). labels.csv "class" 1..5:
NORMAL5 = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
"""The five white-cell types of normal blood (wbc-seg's classes 1..5, in its order)."""
WBCSEG_NAMES = list(NORMAL5)
FIELD_WBC_LABELS = REPO / "datasets" / "field-wbc" / "labels.csv"
"""Hand-typed white cells of other labs' fields (datasets/field-wbc/README.md)."""
TXL_FIELD_SOURCES = {(575, 575): "txl-raabin", (256, 256): "txl-256"}
"""TXL-PBC's non-CellaVision, non-BCCD sources, told apart by image size (Raabin-WBC, BCD)."""


def field_wbc_rows(path: Path = FIELD_WBC_LABELS) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def normal5_probs(probs: np.ndarray, labels) -> np.ndarray:
    """Probabilities of the five normal types (``NORMAL5`` order), renormalised to sum to 1 per row."""
    p = np.asarray(probs)[:, [list(labels).index(n) for n in NORMAL5]]
    return p / p.sum(1, keepdims=True)


def wbcseg_cells(required: bool = True) -> tuple[list[Path], list[str]] | None:
    """wbc-seg's (image files, label names) in labels.csv order; None (or exit when ``required``) without the data."""
    from bccdet.data import dataset

    root = dataset("wbc-seg")
    if root is None:
        if required:
            sys.exit("need the wbc-seg folder ($BCCDET_DATA or ../shared/datasets)")
        return None
    rows = list(csv.DictReader(open(root / "labels.csv")))
    return ([root / "images" / f"{int(r['image ID']):03d}.png" for r in rows],
            [WBCSEG_NAMES[int(r["class"]) - 1] for r in rows])


# --- metrics ----------------------------------------------------------------------------------------------

def auc(scores, labels) -> float:
    """Mann-Whitney AUC (ties count half)."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def recall_at_precision(score, is_pos, min_precision: float) -> tuple[float, float, float]:
    """Best recall over thresholds on ``score`` whose precision >= ``min_precision``: (recall, precision, threshold)."""
    order = np.argsort(-score, kind="stable")
    y = np.asarray(is_pos, bool)[order]
    tp = np.cumsum(y)
    prec = tp / np.arange(1, len(y) + 1)
    rec = tp / max(1, int(y.sum()))
    ok = np.flatnonzero(prec >= min_precision)
    if not len(ok):
        return 0.0, float("nan"), float("nan")
    k = ok[np.argmax(rec[ok])]
    return float(rec[k]), float(prec[k]), float(score[order][k])
