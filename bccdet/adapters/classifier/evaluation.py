"""Evaluation: metrics of predictions, a checkpoint on a split of a classify set, the confusion PNG."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ...io import InputError, read_image, write_bytes_atomic, write_text_atomic
from ...vocab import LABELS
from .crops import single_cell_box
from .data import _collect
from .stage import CellClassifier


def metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str] = LABELS,
            probs: np.ndarray | None = None) -> dict:
    """Accuracy, macro-F1 (over classes present in y_true), per-class precision / sensitivity /
    specificity / F1 / support, confusion matrix (rows = truth, columns = prediction) over the classes
    seen in truth or prediction; with ``probs`` also NLL and 15-bin ECE."""
    yt, yp = np.asarray(y_true, int), np.asarray(y_pred, int)
    n = len(yt)
    present = sorted(set(yt.tolist()) | set(yp.tolist()))
    idx = {c: i for i, c in enumerate(present)}
    cm = np.zeros((len(present), len(present)), np.int64)
    for t, p in zip(yt, yp):
        cm[idx[t], idx[p]] += 1
    per, f1s = {}, []
    for c in present:
        i = idx[c]
        tp = cm[i, i]
        fn = cm[i].sum() - tp
        fp = cm[:, i].sum() - tp
        tn = n - tp - fn - fp
        prec = tp / (tp + fp) if tp + fp else 0.0
        sens = tp / (tp + fn) if tp + fn else 0.0
        spec = tn / (tn + fp) if tn + fp else 0.0
        f1 = 2 * prec * sens / (prec + sens) if prec + sens else 0.0
        per[labels[c]] = {"precision": round(float(prec), 4), "sensitivity": round(float(sens), 4),
                          "specificity": round(float(spec), 4), "f1": round(float(f1), 4), "support": int(tp + fn)}
        if tp + fn:
            f1s.append(f1)
    out = {
        "n": int(n),
        "accuracy": round(float((yt == yp).mean()) if n else 0.0, 4),
        "macro_f1": round(float(np.mean(f1s)) if f1s else 0.0, 4),
        "per_class": per,
        "confusion": {"labels": [labels[c] for c in present], "matrix": cm.tolist()},
    }
    if probs is not None and n:
        p = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
        out["nll"] = round(float(-np.mean(np.log(p[np.arange(n), yt]))), 4)
        out["ece"] = round(_ece(p, yt), 4)
    return out


def _ece(p: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    conf, pred = p.max(1), p.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    e = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            e += m.mean() * abs((pred[m] == y[m]).mean() - conf[m].mean())
    return float(e)


def evaluate(checkpoint: str | Path, data_dir: str | Path, split: str = "test", out_dir: str | Path | None = None,
             batch_size: int = 64, max_per_class: int | None = None, device: str = "cpu", seed: int = 0,
             context: float = 1.0) -> dict:
    """Accuracy, macro-F1, per-class precision / sensitivity / specificity, confusion matrix, NLL, ECE
    on one split of a converted classify folder (or several: pass a list). With ``out_dir``: writes
    ``metrics_<split>.json`` and ``confusion_<split>.png``.

    ``context`` < 1 crops the centre ``context`` of each single-cell image first (0.78: the framing of a
    field crop at margin 0.5 for a median PBC cell), a check that the model does not depend on framing.
    """
    clf = CellClassifier(checkpoint, device=device)
    if not 0.1 <= context <= 1.0:
        raise InputError(f"context must be in 0.1..1, got {context}")

    def crop(img):
        if context >= 1.0:
            return clf.crop_single(img)
        x1, y1, x2, y2 = single_cell_box(img, clf.margin)
        cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * context / 2
        return clf.crop(img, (cx - half, cy - half, cx + half, cy + half))

    dirs = data_dir if isinstance(data_dir, (list, tuple)) else [data_dir]
    items = _collect(dirs, split, max_per_class, seed)
    if not items:
        raise InputError(f"{', '.join(map(str, dirs))}: no images in split {split!r}")
    y, crops, unreadable = [], [], 0
    t0 = time.perf_counter()
    for p, lab in items:
        try:
            crops.append(crop(read_image(p)))
            y.append(LABELS.index(lab))
        except InputError:
            unreadable += 1
    t1 = time.perf_counter()
    probs = clf.predict_crops(crops, batch_size)
    t2 = time.perf_counter()
    res = metrics(y, probs.argmax(1), probs=probs)
    res.update(checkpoint=str(checkpoint), data=[str(d) for d in dirs], split=split, context=context, unreadable=unreadable,
               temperature=clf.temperature, ms_per_crop=round((t2 - t1) / max(1, len(y)) * 1e3, 2),
               ms_per_decode=round((t1 - t0) / max(1, len(y)) * 1e3, 2))
    if out_dir is not None:
        od = Path(out_dir)
        od.mkdir(parents=True, exist_ok=True)
        write_text_atomic(od / f"metrics_{split}.json", json.dumps(res, indent=2))
        plot_confusion(res["confusion"], od / f"confusion_{split}.png", title=f"{Path(checkpoint).name} on {split}")
        res["confusion_png"] = str(od / f"confusion_{split}.png")
    return res


def plot_confusion(conf: dict, path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (counts written in the cells) as a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, cm = conf["labels"], np.asarray(conf["matrix"], np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k = len(labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 1.0 + 0.55 * k), dpi=100)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)
