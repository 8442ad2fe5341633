"""Running bccdet models on FiftyOne samples: detector predictions with backbone embeddings
(``BackboneEmbedder``), and leukocyte typing (``classify_samples``)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ...types import Cells, SmearMeta
from .cells import cells_to_detections
from .common import EMB_FIELD, EMBED_RUNTIME, INFO_KEY, PRED_FIELD, _fo


# ---------------------------------------------------------------------- predictions and embeddings
class BackboneEmbedder:
    """Pooled features of the detector's last backbone layer, caught by a forward hook while it predicts.

    One detector pass gives both the predictions and a ``C``-dim image embedding (mean over tiles when the
    image is tiled). ``embed(image)`` runs the model on an image (e.g. a cell crop) only for its features.
    """

    def __init__(self, detector):
        if getattr(detector, "runtime", "torch") != EMBED_RUNTIME:
            raise ValueError(f"backbone embeddings need the detector on runtime {EMBED_RUNTIME}, "
                             f"not {detector.runtime}: load it with runtime={EMBED_RUNTIME!r}")
        self.detector = detector
        yolo = detector.model
        if getattr(yolo, "predictor", None) is None:  # the predictor deep-copies (and fuses) the network once
            yolo.predict(np.zeros((32, 32, 3), np.uint8), verbose=False, device=detector.kw.get("device", "cpu"))
        net = getattr(getattr(yolo, "predictor", None), "model", None)
        net = getattr(net, "model", None) if net is not None and hasattr(getattr(net, "model", None), "model") else yolo.model
        nb = len(net.yaml.get("backbone", [])) if isinstance(getattr(net, "yaml", None), dict) else 0
        self.layer = nb - 1 if nb else len(net.model) - 2
        feats: list[np.ndarray] = []
        self._feats = feats

        def hook(module, inputs, output):  # a plain closure: ultralytics may deep-copy the network
            t = output[0] if isinstance(output, (list, tuple)) else output
            feats.append(t.detach().float().mean(dim=(2, 3)).cpu().numpy())

        self._h = net.model[self.layer].register_forward_hook(hook)

    def reset(self) -> None:
        self._feats.clear()

    def pooled(self) -> np.ndarray | None:
        if not self._feats:
            return None
        v = np.concatenate(self._feats, 0).mean(0)
        return (v / (np.linalg.norm(v) + 1e-8)).astype(np.float32)

    def embed(self, image: np.ndarray, imgsz: int = 224) -> np.ndarray:
        self.reset()
        self.detector.model.predict(np.ascontiguousarray(image[..., ::-1]), imgsz=imgsz, verbose=False,
                                    device=self.detector.kw.get("device", "cpu"), conf=0.99, max_det=1)
        return self.pooled()

    def close(self) -> None:
        self._h.remove()


def predict_detections(samples, detector, field_name: str = PRED_FIELD, embeddings: bool = True,
                       progress: Callable[[int, int], None] | None = None) -> int:
    """Run the detector on ``samples`` (a dataset or view); store predictions and backbone embeddings."""
    from ...io import read_image

    emb = BackboneEmbedder(detector) if embeddings else None
    n = 0
    total = len(samples)
    try:
        for sample in samples.select_fields(["metadata"]).iter_samples(autosave=True, batch_size=32):
            img = read_image(sample.filepath)
            meta = SmearMeta(path=sample.filepath, width=img.shape[1], height=img.shape[0])
            if emb is not None:
                emb.reset()
            cells = detector(img, meta)
            sample[field_name] = cells_to_detections(cells)
            if emb is not None and emb.pooled() is not None:
                sample[EMB_FIELD] = emb.pooled()
            n += 1
            if progress:
                progress(n, total)
    finally:
        if emb is not None:
            emb.close()
    info = dict(samples._dataset.info.get(INFO_KEY, {}))
    info["detector"] = {"name": detector.name, "sha256": detector.sha256}
    samples._dataset.info[INFO_KEY] = info
    samples._dataset.save()
    return n


CELL_TYPE_FIELD = "bccdet_cell_type"


def load_classifier(classifier: str | None, device: str = "cpu"):
    from ..classifier import load_classifier as load

    return load(classifier, device)


def classify_samples(samples, classifier, field_name: str = CELL_TYPE_FIELD, det_field: str | None = None,
                     progress: Callable[[int, int], None] | None = None) -> int:
    """Type cells with the leukocyte classifier; returns how many cells were typed.

    Without ``det_field`` each sample is one single-cell image (a CellaVision export, PBC): it gets
    ``field_name`` = ``fo.Classification(label, confidence, logits=log p)`` plus ``review`` and
    ``unfamiliar`` (as ``classify`` reports them: an unfamiliar cell is always reviewed). With
    ``det_field`` every white-cell detection of that field (label ``wbc`` or a WBC synonym) is cropped as
    ``analyze`` does (the classifier stage itself, on those boxes) and gets the attributes ``cell_type``,
    ``cell_type_score``, ``review`` and ``unfamiliar``, the attributes ``analyze`` reports carry too.
    """
    from ...io import read_image
    from ...types import normalize_kind
    from ...vocab import LABELS

    fo = _fo()
    n, done, total = 0, 0, len(samples)
    fields = ["metadata"] + ([det_field] if det_field else [])
    for sample in samples.select_fields(fields).iter_samples(autosave=True, batch_size=32):
        img = read_image(sample.filepath)
        if det_field is None:
            p, labels, score, review, unfamiliar = classifier.type_crops([classifier.crop_single(img)])
            sample[field_name] = fo.Classification(label=labels[0], confidence=float(score[0]),
                                                   logits=np.log(np.maximum(p[0], 1e-8)).tolist())
            sample[field_name]["review"] = bool(review[0])
            sample[field_name]["unfamiliar"] = False if unfamiliar is None else bool(unfamiliar[0])  # as Cells
            n += 1
        else:
            dets = sample[det_field]
            wbc = []
            for d in (dets.detections if dets is not None else []):
                try:
                    kind = normalize_kind(d.label)
                except ValueError:
                    continue
                if kind == "wbc":
                    wbc.append(d)
            if wbc:
                h, w = img.shape[:2]
                xyxy = [(x * w, y * h, (x + bw) * w, (y + bh) * h) for x, y, bw, bh in (d.bounding_box for d in wbc)]
                typed = classifier(img, Cells(xyxy=np.array(xyxy, np.float32), kind=["wbc"] * len(wbc),
                                              meta=SmearMeta(path=sample.filepath, width=w, height=h)))
                for d, lab, sc, rv, uf in zip(wbc, typed.label, typed.label_score, typed.review, typed.unfamiliar):
                    d["cell_type"], d["cell_type_score"], d["review"] = lab, float(sc), bool(rv)
                    d["unfamiliar"] = bool(uf)
                sample[det_field] = dets
                n += len(wbc)
        done += 1
        if progress:
            progress(done, total)
    info = dict(samples._dataset.info.get(INFO_KEY, {}))
    info["classifier"] = {"name": classifier.name, "sha256": classifier.sha256, "labels": list(LABELS)}
    samples._dataset.info[INFO_KEY] = info
    samples._dataset.save()
    return n


def _embed_only(samples, detector) -> None:
    """Backbone embeddings of whole images, for data sets whose predictions came from report files."""
    from ...io import read_image

    emb = BackboneEmbedder(detector)
    try:
        for s in samples.select_fields(["metadata"]).iter_samples(autosave=True, batch_size=32):
            img = read_image(s.filepath)
            emb.reset()
            detector(img, SmearMeta(path=s.filepath, width=img.shape[1], height=img.shape[0]))
            if emb.pooled() is not None:
                s[EMB_FIELD] = emb.pooled()
    finally:
        emb.close()
