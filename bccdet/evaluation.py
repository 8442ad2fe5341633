"""Evaluation jobs as the command line runs them: the model resolved (a registered name, a file, or the task's
default; :func:`bccdet.weights.resolve`), the adapter's evaluation run, the metrics optionally written. Each
returns the metrics with ``model`` = {name, sha256}."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .defaults import BORDER, EDGE_SLIVER
from .io import InputError


def _model(weights: str | None, task: str) -> tuple[Path, dict]:
    from .weights import resolve

    w, name, sha = resolve(weights, task)
    return w, {"name": name, "sha256": sha}


def _write(res: dict, path: Path | None, indent: int) -> None:
    if path:
        from .io import write_text_atomic

        write_text_atomic(path, json.dumps(res, indent=indent))


def evaluate_classifier(data: Sequence[Path], weights: str | None = None, *, split: str = "test",
                        out: Path | None = None, device: str = "cpu", context: float = 1.0) -> dict:
    """:func:`bccdet.adapters.classifier.evaluate` on one or more converted classify folders (``out``: its
    metrics JSON and confusion PNG)."""
    from .adapters.classifier import evaluate

    w, model = _model(weights, "classifier")
    data = list(data)
    res = evaluate(w, [str(d) for d in data] if len(data) > 1 else str(data[0]), split=split, out_dir=out,
                   device=device, context=context)
    res["model"] = model
    return res


def evaluate_detector(data: Path, weights: str | None = None, *, split: str = "test", imgsz: int | None = None,
                      batch: int = 8, device: str = "cpu", iou: float = 0.6, border: int = BORDER,
                      edge_sliver: float = EDGE_SLIVER, json_out: Path | None = None) -> dict:
    """:func:`bccdet.adapters.yolo.evaluate` (the detector as analyze runs it) on a data.yaml; ``json_out``:
    the metrics written there too."""
    if not Path(data).exists():
        raise InputError(f"{data}: no such data.yaml")
    from .adapters.yolo import evaluate

    w, model = _model(weights, "detector")
    res = evaluate(w, data, split=split, imgsz=imgsz, batch=batch, device=device, iou=iou, border=border,
                   edge_sliver=edge_sliver)
    res["model"] = model
    _write(res, json_out, 2)
    return res


def evaluate_rbc_morphology(data: Path, weights: str | None = None, *, split: str = "test",
                            out: Path | None = None, plot: Path | None = None) -> dict:
    """:func:`bccdet.adapters.morphology.evaluate_set` on a ``convert chula`` folder (``out``: metrics JSON;
    ``plot``: confusion PNG)."""
    from .adapters.morphology import evaluate_set

    w, model = _model(weights, "rbc_morphology")
    res = evaluate_set(w, data, split, plot=plot)
    _write(res, out, 1)
    res["model"] = model
    return res
