"""Single-cell (classify folder) curation helpers: embeddings, class probabilities (a CSV, or an out-of-fold
probe on the embeddings) and near-duplicate pairs."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ...io import InputError
from .common import EMB_FIELD, CurationError
from .predict import BackboneEmbedder, load_classifier


def _classifier_or_none(device: str, log: Callable[[str], None]):
    """The registry's default leukocyte classifier, or None (with a note) when it cannot be loaded."""
    try:
        return load_classifier(None, device)
    except (ImportError, InputError, RuntimeError, OSError) as e:
        log(f"note: no usable classifier for embeddings ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
            "using the detector backbone")
        return None


def embed_classification(samples, detector=None, device: str = "cpu", imgsz: int = 224,
                         log: Callable[[str], None] = print, load_detector: Callable[[], Any] | None = None) -> str:
    """Embeddings of single-cell images: the leukocyte classifier's penultimate features (the default:
    a probe on them finds flipped labels far better, docs/experiments.md), or the backbone's of
    ``detector`` (a built detector stage) when it is given, or of ``load_detector()`` when no classifier
    loads. Returns the model used."""
    from ...io import read_image

    todo = samples.exists(EMB_FIELD, False)
    if not len(todo):
        return "cached (field bccdet_embedding; --overwrite recomputes)"
    clf = None if detector else _classifier_or_none(device, log)
    if clf is not None:
        from ..classifier import embed_images

        vecs = embed_images(todo.values("filepath"), clf)
        todo.set_values(EMB_FIELD, [np.asarray(v, np.float32) for v in vecs])
        return f"classifier ({clf.name})"
    det = detector if detector is not None else load_detector()
    emb = BackboneEmbedder(det)
    try:
        for s in todo.select_fields([]).iter_samples(autosave=True, batch_size=64):
            s[EMB_FIELD] = emb.embed(read_image(s.filepath), imgsz=imgsz)
    finally:
        emb.close()
    return f"detector backbone ({det.name})"


def read_class_predictions(path: Path) -> dict[str, dict[str, float]]:
    """A CSV of classifier probabilities: a ``file`` (or ``filepath``) column and ``p_<label>`` columns."""
    path = Path(path)
    if not path.is_file():
        raise CurationError(f"{path}: no such predictions CSV")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise CurationError(f"{path}: empty predictions CSV")
    key = "filepath" if "filepath" in rows[0] else "file" if "file" in rows[0] else None
    pcols = [c for c in rows[0] if c.startswith("p_")]
    if key is None or not pcols:
        raise CurationError(f"{path}: expected a file (or filepath) column and p_<label> probability columns")
    out = {}
    for r in rows:
        out[r[key]] = {c[2:]: float(r[c]) for c in pcols if r[c] not in ("", None)}
    return out


def probe_probabilities(emb: np.ndarray, labels: Sequence[str], seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Out-of-fold class probabilities of a logistic-regression probe on embeddings (5-fold, or fewer).

    Each image's probabilities come from a probe that never saw it: a cheap stand-in for the classifier's
    probabilities when there is none (confident learning style).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(labels)
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise CurationError("class-label mistakenness needs at least two classes")
    _, counts = np.unique(y, return_counts=True)
    k = int(max(2, min(5, counts.min())))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
    probs = cross_val_predict(clf, emb, y, cv=StratifiedKFold(k, shuffle=True, random_state=seed), method="predict_proba")
    return classes, probs


def near_duplicate_pairs(emb: np.ndarray, threshold: float, chunk: int = 2048) -> list[tuple[int, int, float]]:
    """Pairs (i, j, d), i < j, whose cosine distance d = 1 - cos is at most ``threshold``, each image with its
    nearest other image. The distance reported is the one the threshold was applied to (fiftyone.brain's
    ``neighbors_map`` pairs a duplicate with its nearest *kept* image, at another distance)."""
    e = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    pairs: dict[tuple[int, int], float] = {}
    for a in range(0, len(e), chunk):
        sim = e[a:a + chunk] @ e.T
        rows = np.arange(sim.shape[0])
        sim[rows, a + rows] = -np.inf  # not itself
        nn = sim.argmax(1)
        d = 1.0 - sim[rows, nn]
        for r in np.nonzero(d <= threshold)[0]:
            i, j = sorted((a + int(r), int(nn[r])))
            pairs[(i, j)] = max(0.0, float(d[r]))
    return [(i, j, d) for (i, j), d in sorted(pairs.items())]
