"""The classifier stage (:class:`CellClassifier`), loading a registered classifier, embeddings, and the
classification of single-cell image files (:func:`classify_paths`)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ...io import MIN_SIDE, InputError, expand_images, is_grey, read_image, sha256_file
from ...types import Cells
from ...vocab import LABELS
from .calibration import _softmax, assign_labels, familiarity_path, familiarity_scores, load_familiarity
from .common import CPU_MAX_BATCH, REVIEW_THRESHOLD
from .crops import border_color, cell_crop, single_cell_crop
from .network import _build, _to_input, load_checkpoint
from .prior import reference_prior


class CellClassifier:
    """Classifier stage: labels the ``wbc`` cells (and ``platelet`` cells with ``platelets=True``).

    ``label_score`` is the calibrated top probability; see :func:`assign_labels` for ``review``.
    """

    def __init__(self, checkpoint: str | Path, device: str = "cpu", name: str = "", sha256: str = "",
                 threshold: float | None = None, platelets: bool = False, batch_size: int = 32,
                 precision: str = "fp32", runtime: str = "torch"):
        import torch

        from ...runtime import resolve_precision, resolve_runtime, tune_malloc

        tune_malloc()
        self.path = Path(checkpoint)
        ck = load_checkpoint(self.path)
        self.ck = ck
        self.device = torch.device(device)
        try:
            self.precision = resolve_precision(precision, str(self.device))
            self.runtime = resolve_runtime(runtime, str(self.device))
        except ValueError as e:
            raise InputError(str(e)) from None
        self.model = _build(ck).to(self.device, memory_format=torch.channels_last)
        self.labels = list(ck["labels"])
        self.columns = [LABELS.index(lab) for lab in self.labels]
        self.imgsz, self.margin = int(ck["imgsz"]), float(ck["margin"])
        self.mean, self.std = tuple(ck["mean"]), tuple(ck["std"])
        self.temperature = float(ck.get("temperature", 1.0))
        self.threshold = float(ck.get("review_threshold", REVIEW_THRESHOLD) if threshold is None else threshold)
        self.platelets = platelets
        self.batch_size = batch_size
        self.prior = reference_prior(ck)  # what adapt_rows re-weights from
        self.name = name or self.path.stem
        self.sha256 = sha256 or sha256_file(self.path)
        self.familiarity = load_familiarity(familiarity_path(self.path), self.sha256)
        self._ov = None
        if self.runtime == "openvino":  # logits and penultimate features from one compiled network
            from .openvino import OpenVinoClassifier

            self._ov = OpenVinoClassifier(self.model, self.imgsz, self.sha256, self.precision, torch.get_num_threads())

    def crop(self, image: np.ndarray, box: Sequence[float], fill=None) -> np.ndarray:
        return cell_crop(image, box, self.margin, self.imgsz, fill=fill)

    def crop_single(self, image: np.ndarray) -> np.ndarray:
        return single_cell_crop(image, self.margin, self.imgsz)

    def predict_logits(self, crops: Sequence[np.ndarray], batch_size: int | None = None) -> np.ndarray:
        return self._forward(crops, batch_size)[0]

    def _forward(self, crops: Sequence[np.ndarray], batch_size: int | None = None,
                 embed: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits, L2-normalised penultimate features or None) of RGB uint8 crops, in one pass."""
        import torch

        from ...runtime import autocast

        bs = self._chunk(batch_size)
        outs, feats = [], []
        with torch.inference_mode(), autocast(self.precision, self.device.type):
            for i in range(0, len(crops), bs):
                chunk = [np.asarray(c, np.uint8)[..., :3] for c in crops[i:i + bs]]
                if any(c.shape[:2] != (self.imgsz, self.imgsz) for c in chunk):
                    chunk = [c if c.shape[:2] == (self.imgsz, self.imgsz) else
                             cell_crop(c, (0, 0, c.shape[1], c.shape[0]), 0.0, self.imgsz) for c in chunk]
                if self._ov is not None:  # numpy in and out: no torch op between OpenVINO's calls
                    x = (np.stack(chunk).astype(np.float32) * np.float32(1 / 255.0) - np.asarray(self.mean, np.float32)) \
                        / np.asarray(self.std, np.float32)
                    z, f = self._ov(x.transpose(0, 3, 1, 2))
                    outs.append(z)
                    if embed:
                        feats.append(f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-8))
                    continue
                x = _to_input(np.stack(chunk), self.mean, self.std).to(self.device, memory_format=torch.channels_last)
                if not embed:
                    outs.append(self.model(x).float().cpu().numpy())
                    continue
                f = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
                outs.append(self.model.get_classifier()(f).float().cpu().numpy())
                f = f.float().cpu().numpy()
                feats.append(f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-8))
        if not outs:
            return np.zeros((0, len(self.labels)), np.float32), (np.zeros((0, 0), np.float32) if embed else None)
        return np.concatenate(outs), (np.concatenate(feats) if embed else None)

    def _chunk(self, batch_size: int | None) -> int:
        """Crops per forward pass: at most CPU_MAX_BATCH on CPU."""
        bs = int(batch_size or self.batch_size)
        return min(bs, CPU_MAX_BATCH) if self.device.type == "cpu" else bs

    def embed(self, crops: Sequence[np.ndarray], batch_size: int | None = None) -> np.ndarray:
        """Penultimate features (n, 1280 for EfficientNet-Lite0), L2-normalised, of RGB uint8 crops."""
        return self._forward(crops, batch_size, embed=True)[1]

    def predict_crops(self, crops: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Calibrated probabilities (n, len(LABELS)) of RGB uint8 crops (made by :func:`cell_crop`)."""
        return self.predict_crops_familiarity(crops, batch_size)[0]

    def predict_crops_familiarity(self, crops: Sequence[np.ndarray],
                                  batch_size: int = 32) -> tuple[np.ndarray, np.ndarray | None]:
        """(calibrated probabilities, unfamiliarity score per crop or None): the score (see
        :func:`familiarity_scores`) needs this classifier's familiarity file; one forward pass for both."""
        z, emb = self._forward(crops, batch_size, embed=self.familiarity is not None)
        out = np.zeros((len(z), len(LABELS)), np.float32)
        if len(z):
            out[:, self.columns] = _softmax(z / self.temperature)
        fam = None if self.familiarity is None else familiarity_scores(self.familiarity, emb)
        return out, fam

    def type_crops(self, crops: Sequence[np.ndarray], kinds: Sequence[str] | None = None,
                   batch_size: int | None = None):
        """(probabilities, labels, scores, review, unfamiliar or None) of crops: :func:`assign_labels` on the
        calibrated probabilities, and every unfamiliar crop (this classifier's familiarity file) reviewed."""
        probs, fam = self.predict_crops_familiarity(crops, batch_size or self.batch_size)
        unfamiliar = None if fam is None else fam > self.familiarity["threshold"]
        labels, score, review = assign_labels(probs, kinds, self.threshold, unfamiliar)
        if unfamiliar is not None:  # a cell unlike any the classifier was trained on: its label is less reliable
            review = review | unfamiliar
        return probs, labels, score, review, unfamiliar

    def __call__(self, image: np.ndarray, cells: Cells) -> Cells:
        out = cells[np.arange(len(cells))]
        wanted = ("wbc", "platelet") if self.platelets else ("wbc",)
        idx = np.flatnonzero(np.isin(out.kind.astype(str), wanted))
        if len(idx) == 0:
            return out
        fill = border_color(image)
        crops = [cell_crop(image, out.xyxy[i], self.margin, self.imgsz, fill=fill) for i in idx]
        _, labels, score, review, unfamiliar = self.type_crops(crops, [out.kind[i] for i in idx])
        if unfamiliar is not None:
            out.unfamiliar[idx] = unfamiliar
        for j, i in enumerate(idx):
            out.label[i] = labels[j]
        out.label_score[idx] = score
        out.review[idx] = review
        return out


def load_classifier(classifier: str | Path | None = None, device: str = "cpu", precision: str = "fp32",
                    threshold: float | None = None, runtime: str = "torch") -> CellClassifier:
    """A registered classifier by name, a checkpoint file, or (None) the registry's default; ``threshold``
    overrides the checkpoint's review threshold."""
    from ...weights import resolve

    w, name, sha = resolve(None if classifier is None else str(classifier), "classifier")
    return CellClassifier(w, device=device, name=name, sha256=sha, precision=precision, threshold=threshold,
                          runtime=runtime)


def embed_images(paths: Sequence[str | Path], checkpoint: str | Path | CellClassifier | None = None,
                 device: str = "cpu") -> list[np.ndarray]:
    """Classifier embeddings of single-cell image files (crops as ``classify`` makes them); an unreadable
    file gets a zero vector. ``checkpoint``: a CellClassifier, a file, or None for the registry default.
    Used by ``curate-cls``: a linear probe on these finds flipped labels far better than on the
    detector backbone's features (docs/experiments.md, "Which embedding finds flipped labels")."""
    clf = checkpoint if isinstance(checkpoint, CellClassifier) else load_classifier(checkpoint, device)
    out: list[np.ndarray | None] = []
    crops, where = [], []
    for i, p in enumerate(paths):
        try:
            crops.append(clf.crop_single(read_image(p)))
            where.append(i)
        except InputError:
            pass
        out.append(None)
    emb = clf.embed(crops)
    dim = emb.shape[1] if len(emb) else 1280
    for i, v in zip(where, emb):
        out[i] = v
    return [np.zeros(dim, np.float32) if v is None else v.astype(np.float32) for v in out]


# ====================================================================== single-cell files
# single-cell exports are square-ish crops of 200-400 px; elongated files are not cells (far smaller ones,
# under io.MIN_SIDE px a side, read_image already refuses)
MAX_CELL_ASPECT = 3.0


def classify_paths(paths: Iterable[str | Path], checkpoint: str | Path | CellClassifier, batch_size: int = 32,
                   device: str = "cpu", progress: Callable[[int], None] | None = None) -> list[dict]:
    """Classify single-cell image files (folders are searched for images).

    One row per file: ``file, label, label_score, review, reason, p_<label>...``. A file that cannot be
    read gets ``label == ""``, ``reason`` = the one-line error and empty probabilities. ``progress(n)`` is
    called as files are done (``n`` more each time).
    """
    clf = checkpoint if isinstance(checkpoint, CellClassifier) else CellClassifier(checkpoint, device=device)
    files = expand_images(paths)[0]
    rows: list[dict] = []
    pending: list[tuple[int, np.ndarray]] = []

    def flush():
        if not pending:
            return
        probs, labels, score, review, unfamiliar = clf.type_crops([c for _, c in pending], None, batch_size)
        if unfamiliar is None:
            unfamiliar = [None] * len(pending)
        for (r, _), lab, s, rv, pr, uf in zip(pending, labels, score, review, probs, unfamiliar):
            rows[r].update(label=lab, label_score=round(float(s), 4), review=bool(rv),
                           unfamiliar=None if uf is None else bool(uf),
                           **{f"p_{k}": round(float(v), 4) for k, v in zip(LABELS, pr)})
        if progress:
            progress(len(pending))
        pending.clear()

    for f in files:
        row = {"file": str(f), "label": "", "label_score": None, "review": False, "reason": "", "unfamiliar": None,
               "grey": None, **{f"p_{k}": None for k in LABELS}}
        rows.append(row)
        try:
            img = read_image(f)
            row["grey"] = is_grey(img)
            h, w = img.shape[:2]
            if max(h, w) > MAX_CELL_ASPECT * min(h, w):
                raise InputError(f"{f}: {w}x{h} px is not a single-cell image (expected a roughly square crop "
                                 f"of one cell, at least {MIN_SIDE} px a side)")
        except InputError as e:
            row.update(reason=str(e), review=True)
            if progress:
                progress(1)
            continue
        pending.append((len(rows) - 1, clf.crop_single(img)))
        if len(pending) >= batch_size:
            flush()
    flush()
    return rows
