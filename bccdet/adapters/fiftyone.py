"""FiftyOne <-> bccdet: curation of detection and classification data sets on a real FiftyOne database.

Everything FiftyOne-specific lives here (``fiftyone`` is imported inside functions only):

* ``cells_to_detections`` / ``detections_to_cells``: ``Cells`` <-> ``fo.Detections``. FiftyOne wants each
  instance mask *cropped to its box* with a relative ``bounding_box = [x, y, w, h]`` in 0..1; bccdet keeps
  masks cropped to the integer hull of the box, so the conversion pastes the crop into that hull;
* ``build_detection_dataset`` / ``build_classification_dataset``: a persistent dataset from a converted YOLO
  detect/segment folder or classify folder (ground truth). An existing dataset is only *updated* (new images
  added, ground truth and tags of the images already there kept); ``overwrite=True`` is needed to rebuild it,
  and a dataset that bccdet did not create is never touched without it;
* ``add_predictions_from_reports`` / ``predict_detections``: bccdet predictions from ``analyze`` report.json
  files, or by running the detector (the detector's backbone features become the image embeddings);
* ``evaluate``, ``brain_detection``, ``tag_detection_suspects``: ``evaluate_detections``, fiftyone.brain
  mistakenness / hardness / uniqueness, and the documented tagging rule (docs/curation.md);
* ``curate_classification``: the same for PBC-style classify folders: mistakenness of class labels from
  classifier probabilities, exact duplicates by content hash, near duplicates by embeddings;
* ``export_labels``: a view, or the corrected labels, back to our YOLO layout (and COCO).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..io import InputError, image_files, image_size
from ..types import KINDS, Cells, SmearMeta, box_iou, rle_decode

GT_FIELD = "ground_truth"
PRED_FIELD = "predictions"
EMB_FIELD = "bccdet_embedding"
EVAL_KEY = "eval"  # class-wise evaluation: per-sample eval_tp / eval_fp / eval_fn, per-class report
AGN_KEY = "eval_agnostic"  # class-agnostic matching used by the tagging rule
INFO_KEY = "bccdet"

# label tags written by the tagging rule (removed and rewritten on every run)
TAG_MISSING = "possible_missing"  # on a prediction: a cell the labels do not have
TAG_SPURIOUS = "possible_spurious"  # on a ground-truth box: no cell found there
TAG_CLASS = "possible_class"  # on a ground-truth box: the detector, confident, says another kind
TAG_LOC = "possible_loc"  # on a ground-truth box: box badly placed (low IoU with a confident prediction)
LABEL_TAGS = (TAG_MISSING, TAG_SPURIOUS, TAG_CLASS, TAG_LOC)
SAMPLE_TAG = "suspect"
# classification tags (on samples)
TAG_MISLABEL = "possible_mislabel"
TAG_DUP = "duplicate"
TAG_DUP_CONFLICT = "duplicate_conflict"
TAG_NEAR_DUP = "near_duplicate"
CLS_TAGS = (TAG_MISLABEL, TAG_DUP, TAG_DUP_CONFLICT, TAG_NEAR_DUP, SAMPLE_TAG)
# tags a reviewer sets in the App; export_labels(corrected=True) applies them
TAG_ACCEPT = "accept"  # on a prediction: add it to the labels
TAG_REJECT = "reject"  # on a ground-truth box: remove it
TAG_EXCLUDE = "exclude"  # on a sample: leave the image out of the export

SPLITS = ("train", "val", "test")


class CurationError(InputError):
    """Unusable input or a refused operation (one line, exit status 2)."""


@dataclass
class Rule:
    """The tagging rule (docs/curation.md, "Tagging rule"); thresholds are CLI options."""

    iou: float = 0.5  # a prediction and a label box match at IoU >= iou (class-agnostic)
    missing_conf: float = 0.5  # unmatched prediction at least this confident ...
    missing_max_iou: float = 0.3  # ... overlapping no label box by more than this -> possible_missing
    spurious_max_iou: float = 0.3  # unmatched label box overlapping no prediction by more than this -> possible_spurious
    class_mistakenness: float = 0.75  # matched, other kind, brain mistakenness >= this -> possible_class
    loc_mistakenness: float = 0.8  # matched, brain mistakenness_loc >= this -> possible_loc


@dataclass
class Suspect:
    sample_id: str
    filepath: str
    label_id: str
    field: str
    kind: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    reason: str
    score: float
    detail: str = ""


@dataclass
class CurationSummary:
    name: str
    samples: int = 0
    added: int = 0
    kept: int = 0
    predicted: int = 0
    unmatched_reports: int = 0
    timings: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    eval_report: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def _fo():
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    import fiftyone as fo

    return fo


# ---------------------------------------------------------------------- Cells <-> fo.Detections
def _hull(box: Sequence[float], w: int, h: int, eps: float = 1e-3) -> tuple[int, int, int, int]:
    """Integer pixel hull of a box (``eps`` absorbs the float error of relative <-> pixel round trips)."""
    x0 = max(0, min(w, int(math.floor(box[0] + eps))))
    y0 = max(0, min(h, int(math.floor(box[1] + eps))))
    x1 = max(x0, min(w, int(math.ceil(box[2] - eps))))
    y1 = max(y0, min(h, int(math.ceil(box[3] - eps))))
    return x0, y0, x1, y1


def _mask_in_hull(mask: np.ndarray, offset: Sequence[int], hull: tuple[int, int, int, int]) -> np.ndarray:
    """The part of a (crop, offset) mask inside ``hull``, as a bool array of the hull's size."""
    x0, y0, x1, y1 = hull
    out = np.zeros((y1 - y0, x1 - x0), bool)
    ox, oy = int(offset[0]), int(offset[1])
    mh, mw = mask.shape
    xs, ys = max(x0, ox), max(y0, oy)
    xe, ye = min(x1, ox + mw), min(y1, oy + mh)
    if xe > xs and ye > ys:
        out[ys - y0 : ye - y0, xs - x0 : xe - x0] = mask[ys - oy : ye - oy, xs - ox : xe - ox]
    return out


def cells_to_detections(cells: Cells, with_masks: bool = True):
    """``Cells`` -> ``fo.Detections`` (label = kind; classifier label in ``cell_type``; masks box-cropped)."""
    fo = _fo()
    w, h = cells.meta.width, cells.meta.height
    if w <= 0 or h <= 0:
        raise ValueError("cells_to_detections needs meta.width/height")
    dets = []
    for i in range(len(cells)):
        x1, y1, x2, y2 = (float(v) for v in cells.xyxy[i])
        kw: dict[str, Any] = {}
        m = cells.masks[i]
        if with_masks and m is not None:
            hull = _hull((x1, y1, x2, y2), w, h)
            if hull[2] > hull[0] and hull[3] > hull[1]:
                x1, y1, x2, y2 = hull  # the box FiftyOne draws the mask in is the mask's own pixel grid
                kw["mask"] = _mask_in_hull(m, cells.mask_offset[i], hull)
        d = fo.Detection(
            label=str(cells.kind[i]),
            bounding_box=[x1 / w, y1 / h, (x2 - x1) / w, (y2 - y1) / h],
            confidence=float(cells.score[i]),
            **kw,
        )
        if cells.label[i] is not None:
            d["cell_type"] = str(cells.label[i])
            d["cell_type_score"] = float(cells.label_score[i])
        if cells.mask_source[i] != "none":
            d["mask_source"] = str(cells.mask_source[i])
        if bool(cells.review[i]):
            d["review"] = True
        if cells.morphology[i] is not None:  # red-cell morphology (docs/rbc.md)
            d["morphology"] = str(cells.morphology[i])
            d["morphology_score"] = float(cells.morphology_score[i])
        dets.append(d)
    return fo.Detections(detections=dets)


def detections_to_cells(dets, meta: SmearMeta, kinds: Sequence[str] = KINDS) -> Cells:
    """``fo.Detections`` (or None) -> ``Cells``; labels outside ``kinds`` raise; masks resized to the box hull."""
    import cv2

    from ..types import normalize_kind

    w, h = meta.width, meta.height
    if dets is None or not len(dets.detections):
        return Cells.empty(meta)
    xyxy, kind, score, masks, offs, label, lscore, src, review = [], [], [], [], [], [], [], [], []
    morph, mscore = [], []
    any_mask = False
    for d in dets.detections:
        x, y, bw, bh = d.bounding_box
        box = [x * w, y * h, (x + bw) * w, (y + bh) * h]
        box = [min(max(box[0], 0.0), w), min(max(box[1], 0.0), h), min(max(box[2], 0.0), w), min(max(box[3], 0.0), h)]
        xyxy.append(box)
        kind.append(normalize_kind(d.label))
        score.append(1.0 if d.confidence is None else float(d.confidence))
        m = d.mask
        if m is not None:
            any_mask = True
            x0, y0, x1, y1 = _hull(box, w, h)
            m = np.asarray(m)
            if m.ndim == 3:
                m = m[..., 0]
            if (abs(m.shape[0] - (y1 - y0)) > 1 or abs(m.shape[1] - (x1 - x0)) > 1) and y1 > y0 and x1 > x0:
                # a mask on another grid (another tool's export): resample it onto the box's pixels
                m = cv2.resize(m.astype(np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
            masks.append(m.astype(bool))
            offs.append((x0, y0))
        else:
            masks.append(None)
            offs.append((0, 0))
        ct = d.get_field("cell_type") if d.has_field("cell_type") else None
        label.append(ct)
        cs = d.get_field("cell_type_score") if d.has_field("cell_type_score") else None
        lscore.append(np.nan if cs is None else float(cs))
        ms = d.get_field("mask_source") if d.has_field("mask_source") else None
        src.append(ms if ms is not None else ("label" if m is not None else "none"))
        review.append(bool(d.get_field("review")) if d.has_field("review") else False)
        morph.append(d.get_field("morphology") if d.has_field("morphology") else None)
        mv = d.get_field("morphology_score") if d.has_field("morphology_score") else None
        mscore.append(np.nan if mv is None else float(mv))
    return Cells(
        xyxy=np.array(xyxy, np.float32).reshape(-1, 4), kind=kind, score=score,
        masks=masks if any_mask else None, mask_offset=np.array(offs, np.int32).reshape(-1, 2) if any_mask else None,
        mask_source=src, label=label, label_score=lscore, review=review, meta=meta,
        morphology=morph, morphology_score=mscore,
    )


def cells_from_report(rep: dict, meta: SmearMeta | None = None) -> Cells:
    """Cells of one ``analyze`` report.json (docs/report.md)."""
    im = rep.get("image", {})
    meta = meta or SmearMeta(path=im.get("path", ""), width=int(im.get("width", 0)), height=int(im.get("height", 0)))
    rows = rep.get("cells", [])
    if not rows:
        return Cells.empty(meta)
    xyxy = np.array([c["box"] for c in rows], np.float32).reshape(-1, 4)
    masks, offs, any_mask = [], [], False
    for c, box in zip(rows, xyxy):
        if c.get("mask"):
            full = rle_decode(c["mask"])
            m, o = Cells.crop_mask(full, box)
            masks.append(m)
            offs.append(o)
            any_mask = True
        else:
            masks.append(None)
            offs.append((0, 0))
    return Cells(
        xyxy=xyxy, kind=[c["kind"] for c in rows], score=[c.get("score", 1.0) for c in rows],
        masks=masks if any_mask else None, mask_offset=offs if any_mask else None,
        mask_source=[c.get("mask_source") or ("none" if c.get("mask") is None else "yolo") for c in rows],
        label=[c.get("label") for c in rows],
        label_score=[np.nan if c.get("label_score") is None else c["label_score"] for c in rows],
        review=[bool(c.get("review", False)) for c in rows], meta=meta,
        morphology=[c.get("morphology") for c in rows],
        morphology_score=[np.nan if c.get("morphology_score") is None else c["morphology_score"] for c in rows],
    )


# ---------------------------------------------------------------------- datasets
def dataset_exists(name: str) -> bool:
    return _fo().dataset_exists(name)


def open_dataset(name: str, kind: str | None = None):
    """Load an existing bccdet dataset (``kind``: detection / classification) or raise CurationError."""
    fo = _fo()
    if not fo.dataset_exists(name):
        raise CurationError(f"no FiftyOne dataset named {name!r} (build it with `bccdet curate`)")
    ds = fo.load_dataset(name)
    info = ds.info.get(INFO_KEY)
    if kind and (not info or info.get("kind") != kind):
        raise CurationError(f"dataset {name!r} is not a bccdet {kind} dataset")
    return ds


def _prepare_dataset(name: str, kind: str, overwrite: bool, source: str):
    """Create, or reuse for an update, the persistent dataset ``name``. Refuses to touch a foreign one."""
    fo = _fo()
    if fo.dataset_exists(name):
        ds = fo.load_dataset(name)
        info = ds.info.get(INFO_KEY)
        if overwrite:
            ds.delete()
        elif not info:
            raise CurationError(
                f"FiftyOne dataset {name!r} exists and was not made by bccdet: choose another --name, "
                "or pass --overwrite to replace it")
        elif info.get("kind") != kind:
            raise CurationError(
                f"FiftyOne dataset {name!r} is a bccdet {info.get('kind')} dataset, not {kind}: "
                "choose another --name, or pass --overwrite to replace it")
        else:
            return ds, False
    ds = fo.Dataset(name)
    ds.persistent = True
    ds.info[INFO_KEY] = {"kind": kind, "source": source, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    ds.save()
    return ds, True


def _yolo_splits(data: Path, splits: Sequence[str] | None) -> tuple[list[str], list[str]]:
    from ..convert.detection import read_yolo_names

    data = Path(data)
    if not (data / "data.yaml").is_file():
        raise CurationError(f"{data}: not a converted YOLO detect/segment folder (no data.yaml)")
    names = read_yolo_names(data / "data.yaml")
    present = [sp for sp in SPLITS if (data / "images" / sp).is_dir()]
    if splits:
        bad = sorted(set(splits) - set(SPLITS))
        if bad:
            raise CurationError(f"unknown split(s) {bad}; expected train, val or test")
        missing = [sp for sp in splits if sp not in present]
        if missing:
            raise CurationError(f"{data}: no images/{missing[0]} folder")
        present = [sp for sp in SPLITS if sp in splits]
    if not present:
        raise CurationError(f"{data}: no images/<split> folders")
    return present, names


def build_detection_dataset(data: Path, name: str, overwrite: bool = False, splits: Sequence[str] | None = None,
                            log: Callable[[str], None] = print):
    """Ground truth of a converted YOLO folder -> persistent dataset ``name``. Returns (dataset, summary)."""
    from ..convert.common import Report
    from ..convert.detection import load_yolo_split

    fo = _fo()
    data = Path(data).resolve()
    present, names = _yolo_splits(data, splits)
    bad = [n for n in names if n not in KINDS]
    if bad:
        raise CurationError(f"{data}/data.yaml: classes {names} are not bccdet's {list(KINDS)}")
    ds, created = _prepare_dataset(name, "detection", overwrite, str(data))
    summ = CurationSummary(name=name)
    have = set(ds.values("filepath")) if not created else set()
    report = Report(name)
    new = []
    for sp in present:
        for s in load_yolo_split(data / "images" / sp, data / "labels" / sp, names, sp, data.name, report):
            fp = str(Path(s.image).resolve())
            if fp in have:
                summ.kept += 1
                continue
            sample = fo.Sample(filepath=fp, tags=[sp])
            sample["split"] = sp
            sample["source"] = s.image.stem.split("__")[0] if "__" in s.image.stem else data.name
            sample[GT_FIELD] = cells_to_detections(s.cells)
            sample["metadata"] = fo.ImageMetadata(width=s.cells.meta.width, height=s.cells.meta.height)
            new.append(sample)
    for d in report.dropped:
        summ.notes.append(f"skipped {d}")
    if new:
        ds.add_samples(new, progress=False)
    summ.added = len(new)
    summ.samples = len(ds)
    info = dict(ds.info.get(INFO_KEY, {}))
    info.update({"names": list(names), "data": str(data)})
    ds.info[INFO_KEY] = info
    ds.save()
    if summ.kept:
        log(f"note: {summ.kept} image(s) already in {name!r} kept their ground truth and tags (--overwrite rebuilds)")
    return ds, summ


def _image_meta(sample) -> SmearMeta:
    md = sample.metadata
    if md is None or not md.width:
        w, h = image_size(sample.filepath)
    else:
        w, h = int(md.width), int(md.height)
    return SmearMeta(path=sample.filepath, width=w, height=h)


# ---------------------------------------------------------------------- predictions and embeddings
class BackboneEmbedder:
    """Pooled features of the detector's last backbone layer, caught by a forward hook while it predicts.

    One detector pass gives both the predictions and a ``C``-dim image embedding (mean over tiles when the
    image is tiled). ``embed(image)`` runs the model on an image (e.g. a cell crop) only for its features.
    """

    def __init__(self, detector):
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


def load_detector(detector: str | None, device: str = "cpu", conf: float = 0.25):
    from ..weights import resolve
    from .yolo import YoloDetector

    weights, name, sha = resolve(detector, "detector")
    return YoloDetector(weights, name=name, sha256=sha, device=device, conf=conf)


def predict_detections(samples, detector, field_name: str = PRED_FIELD, embeddings: bool = True,
                       progress: Callable[[int, int], None] | None = None) -> int:
    """Run the detector on ``samples`` (a dataset or view); store predictions and backbone embeddings."""
    from ..io import read_image

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
    from .classifier import load_classifier as load

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
    from ..io import read_image
    from ..types import normalize_kind
    from ..vocab import LABELS

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


def read_reports(pred_dir: Path) -> list[tuple[Path, dict]]:
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise CurationError(f"{pred_dir}: --predictions must be a folder of analyze/batch outputs")
    out = []
    for p in sorted(pred_dir.rglob("report.json")):
        if any(part.startswith(".") for part in p.relative_to(pred_dir).parts):
            continue  # hidden .partial folders of an interrupted run
        try:
            out.append((p, json.loads(p.read_text())))
        except (OSError, ValueError) as e:
            raise CurationError(f"{p}: unreadable report.json ({e})") from None
    if not out:
        raise CurationError(f"{pred_dir}: no report.json found (run `bccdet analyze ... --out {pred_dir}`)")
    return out


def _strip_source(stem: str) -> str:
    return stem.split("__", 1)[1] if "__" in stem else stem


def add_predictions_from_reports(ds, pred_dir: Path, field_name: str = PRED_FIELD) -> tuple[int, int]:
    """Attach report.json predictions to samples: by image path, file name, or stem (source prefix ignored).

    Returns (matched, unmatched reports).
    """
    reports = read_reports(pred_dir)
    by_path, by_name, by_stem = {}, {}, {}
    for p, rep in reports:
        ip = rep.get("image", {}).get("path", "")
        if ip:
            by_path[str(Path(ip).resolve())] = rep
            by_name.setdefault(Path(ip).name, rep)
            by_stem.setdefault(_strip_source(Path(ip).stem), rep)
        by_stem.setdefault(_strip_source(p.parent.name), rep)
    used = set()
    matched = 0
    for sample in ds.select_fields(["metadata"]).iter_samples(autosave=True, batch_size=64):
        fp = Path(sample.filepath)
        rep = by_path.get(str(fp.resolve())) or by_name.get(fp.name) or by_stem.get(_strip_source(fp.stem))
        if rep is None:
            continue
        used.add(id(rep))
        meta = _image_meta(sample)
        w, h = rep.get("image", {}).get("width"), rep.get("image", {}).get("height")
        if w and h and (int(w), int(h)) != (meta.width, meta.height):
            raise CurationError(f"{fp.name}: report.json is for a {w}x{h} image, the data set's is {meta.width}x{meta.height}")
        sample[field_name] = cells_to_detections(cells_from_report(rep, meta))
        matched += 1
    return matched, len(reports) - len({id(r) for _, r in reports if id(r) in used})


# ---------------------------------------------------------------------- evaluation and brain
def _delete_eval(ds, key: str) -> None:
    if key in ds.list_evaluations():
        ds.delete_evaluation(key)


def _delete_brain(ds, key: str) -> None:
    if key in ds.list_brain_runs():
        ds.delete_brain_run(key)


def evaluate(samples, pred_field: str = PRED_FIELD, gt_field: str = GT_FIELD, eval_key: str = EVAL_KEY,
             iou: float = 0.5, compute_map: bool = True) -> dict:
    """``evaluate_detections`` (class-wise, COCO style): per-sample TP/FP/FN fields and a per-class report."""
    ds = samples._dataset
    _delete_eval(ds, eval_key)
    res = samples.evaluate_detections(pred_field, gt_field=gt_field, eval_key=eval_key, iou=iou,
                                      compute_mAP=compute_map, progress=False)
    classes = [k for k in KINDS if k in set(samples.distinct(f"{gt_field}.detections.label"))
               | set(samples.distinct(f"{pred_field}.detections.label"))]
    rep = res.report(classes=classes) if classes else {}
    out = {"eval_key": eval_key, "iou": iou, "per_class": {}, "samples": len(samples)}
    for c in classes:
        r = rep.get(c, {})
        out["per_class"][c] = {k: round(float(r.get(k, 0.0)), 4) for k in ("precision", "recall", "f1-score")} | {
            "support": int(r.get("support", 0))}
    if "micro avg" in rep:
        out["micro"] = {k: round(float(v), 4) for k, v in rep["micro avg"].items()}
    if compute_map:
        try:
            out["mAP"] = round(float(res.mAP()), 4)
        except Exception:  # no predictions at all
            out["mAP"] = None
    out["tp"] = int(sum(samples.values(f"{eval_key}_tp")))
    out["fp"] = int(sum(samples.values(f"{eval_key}_fp")))
    out["fn"] = int(sum(samples.values(f"{eval_key}_fn")))
    return out


def format_eval(ev: dict) -> str:
    lines = [f"{'class':<10}{'P':>8}{'R':>8}{'F1':>8}{'support':>9}"]
    for c, r in ev.get("per_class", {}).items():
        lines.append(f"{c:<10}{r['precision']:>8.3f}{r['recall']:>8.3f}{r['f1-score']:>8.3f}{r['support']:>9}")
    if "micro" in ev:
        m = ev["micro"]
        lines.append(f"{'micro':<10}{m.get('precision', 0):>8.3f}{m.get('recall', 0):>8.3f}{m.get('f1-score', 0):>8.3f}{int(m.get('support', 0)):>9}")
    tail = f"TP {ev.get('tp')}  FP {ev.get('fp')}  FN {ev.get('fn')}  (IoU {ev.get('iou')}, eval key {ev.get('eval_key')!r})"
    if ev.get("mAP") is not None:
        tail += f"  mAP {ev['mAP']:.3f}"
    lines.append(tail)
    return "\n".join(lines)


def _summary_classification(samples, pred_field: str, out_field: str) -> None:
    """Per sample: a Classification whose logits are log([p, 1-p]) for p the mean detector confidence.

    fiftyone.brain's hardness is the entropy of softmax(logits), so the image's hardness is the binary entropy
    of the mean confidence of its predicted cells (highest when the detector hovers around 0.5).
    """
    fo = _fo()
    for s in samples.select_fields([pred_field]).iter_samples(autosave=True, batch_size=64):
        dets = s[pred_field]
        confs = [d.confidence for d in (dets.detections if dets else []) if d.confidence is not None]
        p = float(np.clip(np.mean(confs), 1e-4, 1 - 1e-4)) if confs else 0.5
        s[out_field] = fo.Classification(label="cells" if confs else "no_cells", confidence=p,
                                         logits=[math.log(p), math.log(1 - p)])


def brain_detection(samples, pred_field: str = PRED_FIELD, gt_field: str = GT_FIELD,
                    uniqueness: bool = True, log: Callable[[str], None] = print) -> dict:
    """fiftyone.brain runs: mistakenness (+ possible missing / spurious), hardness, uniqueness. Returns timings."""
    import fiftyone.brain as fob

    ds = samples._dataset
    t = {}
    t0 = time.perf_counter()
    _delete_brain(ds, "mistakenness")
    fob.compute_mistakenness(samples, pred_field, label_field=gt_field, progress=False)
    t["mistakenness_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _delete_brain(ds, "hardness")
    _summary_classification(samples, pred_field, "detector_confidence")
    fob.compute_hardness(samples, "detector_confidence", progress=False)
    t["hardness_s"] = time.perf_counter() - t0
    if uniqueness:
        t0 = time.perf_counter()
        n_emb = len(samples.exists(EMB_FIELD))
        if n_emb == len(samples) and n_emb > 1:
            _delete_brain(ds, "uniqueness")
            fob.compute_uniqueness(samples, embeddings=EMB_FIELD, progress=False)
            t["uniqueness_s"] = time.perf_counter() - t0
        else:
            log(f"note: uniqueness skipped: {len(samples) - n_emb} image(s) have no detector embedding "
                "(run the detector: omit --predictions, or pass --detector)")
    return t


def _xyxy(dets, w: int, h: int) -> np.ndarray:
    if not dets:
        return np.zeros((0, 4), np.float32)
    return np.array([[x * w, y * h, (x + bw) * w, (y + bh) * h] for x, y, bw, bh in
                     (d.bounding_box for d in dets)], np.float32).reshape(-1, 4)


def tag_detection_suspects(samples, rule: Rule | None = None, pred_field: str = PRED_FIELD,
                           gt_field: str = GT_FIELD) -> list[Suspect]:
    """Apply the tagging rule (docs/curation.md); tag labels and samples; return suspects ranked by score.

    Matching is fiftyone's class-agnostic ``evaluate_detections`` at IoU ``rule.iou`` (eval key
    ``eval_agnostic``); class and box mistakes use the brain's ``mistakenness`` / ``mistakenness_loc``
    written on matched ground-truth boxes by ``brain_detection`` (skipped when those fields are absent).
    """
    rule = rule or Rule()
    ds = samples._dataset
    for f in (gt_field, pred_field):
        ds.untag_labels(list(LABEL_TAGS), label_fields=[f])
    ds.untag_samples(SAMPLE_TAG)
    _delete_eval(ds, AGN_KEY)
    samples.evaluate_detections(pred_field, gt_field=gt_field, eval_key=AGN_KEY, iou=rule.iou, classwise=False,
                                progress=False)
    out: list[Suspect] = []
    suspect_ids = []
    for s in samples.select_fields([gt_field, pred_field, "metadata"]).iter_samples(autosave=True, batch_size=32):
        meta = _image_meta(s)
        w, h = meta.width, meta.height
        gts = s[gt_field].detections if s[gt_field] else []
        prs = s[pred_field].detections if s[pred_field] else []
        gb, pb = _xyxy(gts, w, h), _xyxy(prs, w, h)
        iou = box_iou(pb, gb)  # preds x gts
        conf = np.array([d.confidence or 0.0 for d in prs], np.float32)
        n0 = len(out)

        def add(det, fld, box, reason, score, detail=""):
            det.tags = sorted(set(det.tags or []) | {reason})
            out.append(Suspect(s.id, s.filepath, det.id, fld, det.label, tuple(round(float(v), 1) for v in box),
                               reason, round(float(score), 4), detail))

        # with classwise=False a cross-class match is recorded as fp/fn *with* the partner's id: "unmatched"
        # means no partner id at all
        for j, d in enumerate(prs):
            if d[f"{AGN_KEY}_id"]:
                continue
            best = float(iou[j].max()) if iou.shape[1] else 0.0
            if conf[j] >= rule.missing_conf and best < rule.missing_max_iou:
                add(d, pred_field, pb[j], TAG_MISSING, conf[j], f"conf {conf[j]:.2f}, max IoU with labels {best:.2f}")
        for k, d in enumerate(gts):
            if not d[f"{AGN_KEY}_id"]:
                overlap = iou[:, k] * conf if len(prs) else np.zeros(0)
                best = float(iou[:, k].max()) if len(prs) else 0.0
                if best < rule.spurious_max_iou:
                    score = 1.0 - (float(overlap.max()) if len(overlap) else 0.0)
                    add(d, gt_field, gb[k], TAG_SPURIOUS, score, f"max IoU with predictions {best:.2f}")
                else:  # a confident prediction overlaps it, but below the match IoU: the box is misplaced
                    j = int(np.argmax(iou[:, k]))
                    if conf[j] >= rule.missing_conf:
                        add(d, gt_field, gb[k], TAG_LOC, (conf[j] + 1.0) / 2.0,
                            f"IoU {best:.2f} with a {conf[j]:.2f} {prs[j].label} prediction")
                continue
            mk = d["mistakenness"] if d.has_field("mistakenness") else None
            ml = d["mistakenness_loc"] if d.has_field("mistakenness_loc") else None
            pid = d[f"{AGN_KEY}_id"]
            pred = next((p for p in prs if p.id == pid), None)
            if mk is not None and pred is not None and pred.label != d.label and mk >= rule.class_mistakenness:
                add(d, gt_field, gb[k], TAG_CLASS, mk, f"labelled {d.label}, detector says {pred.label} ({pred.confidence:.2f})")
            elif ml is not None and ml >= rule.loc_mistakenness:
                add(d, gt_field, gb[k], TAG_LOC, ml, f"IoU {d[f'{AGN_KEY}_iou']:.2f} with a {pred.confidence:.2f} prediction" if pred else "")
        s["n_suspect"] = len(out) - n0
        if len(out) > n0:
            suspect_ids.append(s.id)
    if suspect_ids:
        ds.select(suspect_ids).tag_samples(SAMPLE_TAG)
    out.sort(key=lambda r: (-r.score, r.reason, r.filepath, r.box))
    return out


def suspect_counts(suspects: Iterable[Suspect]) -> dict:
    c: dict[str, int] = {}
    for s in suspects:
        c[s.reason] = c.get(s.reason, 0) + 1
    return c


def write_suspects_csv(suspects: Sequence[Suspect], path: Path) -> Path:
    from ..io import write_text_atomic
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["rank", "sample_id", "filepath", "label_id", "field", "kind", "x1", "y1", "x2", "y2", "reason", "score", "detail"])
    for i, s in enumerate(suspects, 1):
        w.writerow([i, s.sample_id, s.filepath, s.label_id, s.field, s.kind, *s.box, s.reason, f"{s.score:.4f}", s.detail])
    write_text_atomic(path, buf.getvalue())
    return Path(path)


# ---------------------------------------------------------------------- one call: the detection workflow
def curate_detection(data: Path, name: str, predictions: Path | None = None, detector: str | None = None,
                     overwrite: bool = False, splits: Sequence[str] | None = None, rule: Rule | None = None,
                     device: str = "cpu", conf: float = 0.25, brain: bool = True,
                     log: Callable[[str], None] = print) -> tuple[Any, CurationSummary, list[Suspect]]:
    t_all = time.perf_counter()
    det = None
    if predictions is None:  # fail before touching the database when there is no detector
        det = load_detector(detector, device=device, conf=conf)
    else:
        read_reports(predictions)
    t0 = time.perf_counter()
    ds, summ = build_detection_dataset(data, name, overwrite=overwrite, splits=splits, log=log)
    view = ds.match_tags(list(splits)) if splits else ds.view()
    summ.timings["build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if predictions is not None:
        m, unmatched = add_predictions_from_reports(view, predictions)
        summ.predicted, summ.unmatched_reports = m, unmatched
        if unmatched:
            log(f"note: {unmatched} report(s) in {predictions} match no image of the data set")
        if m < len(view):
            log(f"note: {len(view) - m} image(s) have no report in {predictions}: no predictions for them")
        if brain:
            try:
                det = load_detector(detector, device=device, conf=conf)
            except InputError as e:
                log(f"note: no detector for embeddings ({e}); uniqueness skipped")
            if det is not None:
                todo = view.exists(EMB_FIELD, False)
                if len(todo):
                    _embed_only(todo, det)
    else:
        summ.predicted = predict_detections(view, det)
    summ.timings["predict_s"] = time.perf_counter() - t0
    if not len(view.exists(PRED_FIELD)):
        raise CurationError("no image has predictions: nothing to compare the labels with")
    view = view.exists(PRED_FIELD)
    t0 = time.perf_counter()
    summ.eval_report = evaluate(view)
    summ.timings["evaluate_s"] = time.perf_counter() - t0
    if brain:
        summ.timings.update(brain_detection(view, log=log))
    t0 = time.perf_counter()
    suspects = tag_detection_suspects(view, rule)
    summ.timings["tag_s"] = time.perf_counter() - t0
    summ.counts = suspect_counts(suspects)
    summ.counts["brain_possible_missing"] = int(sum(v or 0 for v in view.values("possible_missing"))) if brain else None
    summ.counts["brain_possible_spurious"] = int(sum(v or 0 for v in view.values("possible_spurious"))) if brain else None
    summ.samples = len(ds)
    summ.timings["total_s"] = time.perf_counter() - t_all
    info = dict(ds.info.get(INFO_KEY, {}))
    info["last_run"] = {"counts": summ.counts, "timings": {k: round(v, 2) for k, v in summ.timings.items()},
                        "rule": rule.__dict__ if rule else Rule().__dict__}
    ds.info[INFO_KEY] = info
    ds.save()
    return ds, summ, suspects


def _embed_only(samples, detector) -> None:
    """Backbone embeddings of whole images, for data sets whose predictions came from report files."""
    from ..io import read_image

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


# ---------------------------------------------------------------------- export
def corrected_cells(sample, gt_field: str = GT_FIELD, pred_field: str = PRED_FIELD, auto: bool = False) -> Cells:
    """Ground truth after review: boxes tagged ``reject`` removed, predictions tagged ``accept`` added.

    ``auto`` also applies the tagging rule blindly (removes ``possible_spurious`` boxes, adds
    ``possible_missing`` predictions) -- for experiments only; a person should look first.
    """
    fo = _fo()
    meta = _image_meta(sample)
    drop = {TAG_REJECT} | ({TAG_SPURIOUS} if auto else set())
    take = {TAG_ACCEPT} | ({TAG_MISSING} if auto else set())
    gts = [d for d in (sample[gt_field].detections if sample[gt_field] else []) if not drop & set(d.tags or [])]
    preds = []
    if sample.has_field(pred_field) and sample[pred_field] is not None:
        preds = [d for d in sample[pred_field].detections if take & set(d.tags or []) and not drop & set(d.tags or [])]
    cells = detections_to_cells(fo.Detections(detections=gts + preds), meta)
    cells.score = np.ones(len(cells), np.float32)
    return cells


def export_labels(samples, out: Path, formats: Sequence[str] = ("yolo",), task: str = "segment",
                  corrected: bool = True, auto: bool = False, overwrite: bool = False,
                  gt_field: str = GT_FIELD, pred_field: str = PRED_FIELD) -> dict:
    """Write a view's labels (as-is, or corrected by the review tags) in our YOLO layout, plus COCO JSON.

    Layout: ``OUT/images/<split>/``, ``OUT/labels/<split>/``, ``OUT/data.yaml``, ``OUT/summary.json`` (the
    same as ``bccdet convert``), and with ``coco``: ``OUT/annotations/<split>.json`` (file names relative to
    ``OUT/images/<split>/``, masks as RLE). Samples tagged ``exclude`` are left out.
    """
    from ..convert.common import DetSample, Report, write_yolo_detection

    formats = [f.lower() for f in formats]
    bad = sorted(set(formats) - {"yolo", "coco"})
    if bad or not formats:
        raise CurationError(f"unknown export format(s) {bad}; expected yolo and/or coco")
    if task not in ("detect", "segment"):
        raise CurationError(f"unknown task {task!r}; expected detect or segment")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CurationError(f"{out} exists and is not empty: choose another --out or pass --overwrite")
    view = samples.match_tags(TAG_EXCLUDE, bool=False) if corrected else samples
    samples_out = []
    used = set()
    for s in view.iter_samples():
        meta = _image_meta(s)
        if corrected:
            cells = corrected_cells(s, gt_field, pred_field, auto=auto)
        else:
            cells = detections_to_cells(s[gt_field], meta)
        split = s["split"] if s.has_field("split") and s["split"] in SPLITS else next(
            (t for t in s.tags if t in SPLITS), "train")
        stem = Path(s.filepath).stem
        k, base = 1, stem
        while (split, stem) in used:
            stem = f"{base}_{k}"
            k += 1
        used.add((split, stem))
        samples_out.append(DetSample(image=Path(s.filepath), cells=cells, split=split, source="fiftyone", name=stem))
    if not samples_out:
        raise CurationError("nothing to export: the view is empty")
    report = Report(samples._dataset.name)
    write_yolo_detection(samples_out, out, report, task=task, masks="ellipse")
    if "coco" in formats:
        (out / "annotations").mkdir(exist_ok=True)
        for sp in SPLITS:
            part = [s for s in samples_out if s.split == sp]
            if not part:
                continue
            doc = {"images": [], "annotations": [],
                   "categories": [{"id": i + 1, "name": k, "supercategory": "cell"} for i, k in enumerate(KINDS)]}
            nid = 1
            for i, s in enumerate(part, 1):
                m = s.cells.meta
                doc["images"].append({"id": i, "file_name": f"{s.name}{s.image.suffix.lower()}", "width": m.width, "height": m.height})
                anns = s.cells.to_coco(image_id=i, first_id=nid)
                nid += len(anns)
                doc["annotations"] += anns
            (out / "annotations" / f"{sp}.json").write_text(json.dumps(doc))
    if "yolo" not in formats:
        import shutil

        shutil.rmtree(out / "labels", ignore_errors=True)
        (out / "data.yaml").unlink(missing_ok=True)
    n_obj = sum(len(s.cells) for s in samples_out)
    return {"out": str(out), "images": len(samples_out), "objects": n_obj,
            "splits": {sp: sum(1 for s in samples_out if s.split == sp) for sp in SPLITS if any(s.split == sp for s in samples_out)}}


# ---------------------------------------------------------------------- classification
def _cls_items(data: Path) -> list[dict]:
    """Items of a classify folder: the converted layout (SPLIT/LABEL/file, manifest.csv) or ROOT/LABEL/file."""
    data = Path(data)
    if not data.is_dir():
        raise CurationError(f"{data}: not a folder")
    items = []
    man = data / "manifest.csv"
    if man.is_file():
        with open(man, newline="") as f:
            for r in csv.DictReader(f):
                items.append({"path": (data / r["file"]).resolve(), "label": r["label"], "split": r.get("split", ""),
                              "sha256": r.get("sha256", ""), "group": r.get("group", ""), "subclass": r.get("subclass", "")})
        return items
    split_dirs = [d for d in sorted(data.iterdir()) if d.is_dir() and d.name in SPLITS]
    roots = [(d, d.name) for d in split_dirs] if split_dirs else [(data, "")]
    for root, sp in roots:
        for lab in sorted(d for d in root.iterdir() if d.is_dir()):
            for p in image_files(lab):
                items.append({"path": p.resolve(), "label": lab.name, "split": sp, "sha256": "", "group": "", "subclass": ""})
    if not items:
        raise CurationError(f"{data}: no images in class folders (expected SPLIT/LABEL/* or LABEL/*)")
    return items


def build_classification_dataset(data: Path, name: str, overwrite: bool = False,
                                 splits: Sequence[str] | None = None, log: Callable[[str], None] = print):
    fo = _fo()
    data = Path(data).resolve()
    items = _cls_items(data)
    if splits:
        items = [it for it in items if it["split"] in splits]
        if not items:
            raise CurationError(f"{data}: no images in split(s) {list(splits)}")
    ds, created = _prepare_dataset(name, "classification", overwrite, str(data))
    have = set(ds.values("filepath")) if not created else set()
    summ = CurationSummary(name=name)
    new = []
    for it in items:
        fp = str(it["path"])
        if fp in have:
            summ.kept += 1
            continue
        s = fo.Sample(filepath=fp, tags=[it["split"]] if it["split"] else [])
        s[GT_FIELD] = fo.Classification(label=it["label"])
        s["split"] = it["split"] or None
        s["sha256"] = it["sha256"] or _sha256(it["path"])
        if it["group"]:
            s["group_id"] = it["group"]
        new.append(s)
    if new:
        ds.add_samples(new, progress=False)
    summ.added, summ.samples = len(new), len(ds)
    info = dict(ds.info.get(INFO_KEY, {}))
    info["data"] = str(data)
    ds.info[INFO_KEY] = info
    ds.save()
    if summ.kept:
        log(f"note: {summ.kept} image(s) already in {name!r} kept their labels and tags (--overwrite rebuilds)")
    return ds, summ


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _classifier_or_none(device: str, log: Callable[[str], None]):
    """The registry's default leukocyte classifier, or None (with a note) when it cannot be loaded."""
    try:
        return load_classifier(None, device)
    except (ImportError, InputError, RuntimeError, OSError) as e:
        log(f"note: no usable classifier for embeddings ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
            "using the detector backbone")
        return None


def embed_classification(samples, detector: str | None = None, device: str = "cpu", imgsz: int = 224,
                         log: Callable[[str], None] = print) -> str:
    """Embeddings of single-cell images: the leukocyte classifier's penultimate features (the default:
    a probe on them finds flipped labels far better, bench/curation_cls.py), or the detector backbone's
    when ``detector`` is given or no classifier loads. Returns the model used."""
    from ..io import read_image

    todo = samples.exists(EMB_FIELD, False)
    if not len(todo):
        return "cached (field bccdet_embedding; --overwrite recomputes)"
    clf = None if detector else _classifier_or_none(device, log)
    if clf is not None:
        from .classifier import embed_images

        vecs = embed_images(todo.values("filepath"), clf)
        todo.set_values(EMB_FIELD, [np.asarray(v, np.float32) for v in vecs])
        return f"classifier ({clf.name})"
    det = load_detector(detector, device=device)
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


def curate_classification(data: Path, name: str, predictions: Path | None = None, detector: str | None = None,
                          overwrite: bool = False, splits: Sequence[str] | None = None, device: str = "cpu",
                          near_dup_threshold: float = 0.05, mislabel_threshold: float = 0.7,
                          log: Callable[[str], None] = print) -> tuple[Any, CurationSummary, list[Suspect]]:
    """Classification curation: class-label mistakenness, hardness, uniqueness, exact and near duplicates.

    Tags (on samples): ``possible_mislabel`` (brain mistakenness >= ``mislabel_threshold``), ``duplicate``
    (same sha256 as another image), ``duplicate_conflict`` (same bytes, different labels), ``near_duplicate``
    (embedding distance <= ``near_dup_threshold``); every tagged image is also tagged ``suspect``.
    """
    import fiftyone.brain as fob

    fo = _fo()
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    ds, summ = build_classification_dataset(data, name, overwrite=overwrite, splits=splits, log=log)
    view = ds.match_tags(list(splits)) if splits else ds.view()
    summ.timings["build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = embed_classification(view, detector=detector, device=device, log=log)
    summ.timings["embed_s"] = time.perf_counter() - t0
    summ.notes.append(f"embeddings: {model}")
    t0 = time.perf_counter()
    paths = view.values("filepath")
    labels = view.values(f"{GT_FIELD}.label")
    if predictions is not None:
        probs_by = read_class_predictions(predictions)
        classes = sorted({c for v in probs_by.values() for c in v} | set(labels))
        root = Path(ds.info[INFO_KEY].get("data", "/"))
        rows = []
        for p in paths:  # keyed by absolute path, path relative to DATA (the manifest's "file"), or file name
            rel = os.path.relpath(p, root)
            r = probs_by.get(p) or probs_by.get(rel) or probs_by.get(Path(p).name)
            rows.append([r.get(c, 0.0) for c in classes] if r else None)
        if any(r is None for r in rows):
            raise CurationError(f"{predictions}: no probabilities for {sum(r is None for r in rows)} image(s)")
        probs = np.array(rows, np.float64)
        summ.notes.append(f"probabilities: {predictions}")
    else:
        emb = np.stack(view.values(EMB_FIELD))
        classes, probs = probe_probabilities(emb, labels)
        summ.notes.append("probabilities: out-of-fold linear probe on the embeddings")
    probs = np.clip(probs / np.maximum(probs.sum(1, keepdims=True), 1e-9), 1e-6, 1.0)
    preds = [fo.Classification(label=classes[int(np.argmax(p))], confidence=float(np.max(p)),
                               logits=np.log(p).tolist()) for p in probs]
    view.set_values(PRED_FIELD, preds)
    summ.timings["predict_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for key in ("mistakenness", "hardness", "uniqueness", "near_duplicates"):
        _delete_brain(ds, key)
    fob.compute_mistakenness(view, PRED_FIELD, label_field=GT_FIELD, use_logits=True, progress=False)
    fob.compute_hardness(view, PRED_FIELD, progress=False)
    if len(view) > 1:
        fob.compute_uniqueness(view, embeddings=EMB_FIELD, progress=False)
    summ.timings["brain_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds.untag_samples(list(CLS_TAGS))
    sus: list[Suspect] = []
    ids = view.values("id")
    mist = view.values("mistakenness")
    for sid, fp, lab, pr, m in zip(ids, paths, labels, preds, mist):
        if m is not None and m >= mislabel_threshold:
            sus.append(Suspect(sid, fp, "", GT_FIELD, lab, (0, 0, 0, 0), TAG_MISLABEL, float(m),
                               f"labelled {lab}, probabilities say {pr.label} ({pr.confidence:.2f})"))
    # exact duplicates by content hash
    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(view.values("sha256")):
        by_hash.setdefault(h, []).append(i)
    for h, idx in by_hash.items():
        if len(idx) < 2:
            continue
        labs = sorted({labels[i] for i in idx})
        reason = TAG_DUP_CONFLICT if len(labs) > 1 else TAG_DUP
        for i in idx:
            others = [Path(paths[j]).name for j in idx if j != i]
            sus.append(Suspect(ids[i], paths[i], "", GT_FIELD, labels[i], (0, 0, 0, 0), reason, 1.0,
                               f"same bytes as {', '.join(others)}; labels {labs}"))
    # near duplicates by embeddings
    if len(view) > 1:
        hashes = view.values("sha256")
        for ia, ib, dist in near_duplicate_pairs(np.asarray(view.values(EMB_FIELD), np.float32), near_dup_threshold):
            if hashes[ia] == hashes[ib]:
                continue  # already an exact duplicate
            conflict = labels[ia] != labels[ib]
            for i, j in ((ia, ib), (ib, ia)):
                sus.append(Suspect(ids[i], paths[i], "", GT_FIELD, labels[i], (0, 0, 0, 0), TAG_NEAR_DUP,
                                   round(1.0 - float(dist), 4),
                                   f"distance {dist:.3f} to {Path(paths[j]).name} ({labels[j]})" + ("; labels differ" if conflict else "")))
    by_tag: dict[str, list[str]] = {}
    for s in sus:
        by_tag.setdefault(s.reason, []).append(s.sample_id)
    for tag, sids in by_tag.items():
        ds.select(sorted(set(sids))).tag_samples([tag, SAMPLE_TAG])
    summ.timings["tag_s"] = time.perf_counter() - t0
    sus.sort(key=lambda r: (-r.score, r.reason, r.filepath))
    summ.counts = suspect_counts(sus)
    acc = float(np.mean([classes[int(np.argmax(p))] == lab for p, lab in zip(probs, labels)]))
    summ.eval_report = {"accuracy": round(acc, 4), "classes": classes, "samples": len(view)}
    summ.samples = len(ds)
    summ.timings["total_s"] = time.perf_counter() - t_all
    info = dict(ds.info.get(INFO_KEY, {}))
    info["last_run"] = {"counts": summ.counts, "timings": {k: round(v, 2) for k, v in summ.timings.items()}, "notes": summ.notes}
    ds.info[INFO_KEY] = info
    ds.save()
    return ds, summ, sus


# ---------------------------------------------------------------------- App
def launch(dataset, port: int = 5151, address: str = "127.0.0.1", remote: bool = True):
    """Serve the FiftyOne App for ``dataset`` on http://ADDRESS:PORT/ (returns the Session)."""
    fo = _fo()
    return fo.launch_app(dataset, port=port, address=address, remote=remote, auto=False)


def wait_http(url: str, timeout: float = 60.0) -> int:
    """GET ``url`` until it answers (returns the HTTP status) or ``timeout`` seconds pass (raises)."""
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    last: Exception | None = None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except (urllib.error.URLError, OSError) as e:
            last = e
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s ({last})")


# ---------------------------------------------------------------------- plugin install
def plugin_source() -> Path:
    from ..data import REPO

    return REPO / "plugins" / "bccdet"


def install_plugin(plugins_dir: Path | None = None, copy: bool = False, overwrite: bool = False) -> Path:
    """Symlink (or copy) plugins/bccdet into FiftyOne's plugins directory; returns the installed path."""
    import shutil

    src = plugin_source()
    if not (src / "fiftyone.yml").is_file():
        raise CurationError(f"{src}: plugin sources missing")
    if plugins_dir is None:
        plugins_dir = Path(_fo().config.plugins_dir)
    dst = Path(plugins_dir) / "bccdet"
    if dst.exists() or dst.is_symlink():
        if dst.is_symlink() and dst.resolve() == src.resolve() and not copy:
            return dst
        if not overwrite:
            raise CurationError(f"{dst} exists: pass --overwrite to replace it")
        if dst.is_symlink() or dst.is_file():
            dst.unlink()
        else:
            shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        dst.symlink_to(src.resolve(), target_is_directory=True)
    return dst
