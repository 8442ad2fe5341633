"""The core data type: ``Cells``, a validated column-wise table of the cells found in one smear image.

Design (see docs/formats.md):

* one row per cell; every column is a numpy array of length ``n``;
* masks are stored *cropped to the cell's integer box* (``mask_offset`` gives the top-left pixel of
  each crop in full-image coordinates), so 300 cells of a 1600x1200 field cost a few MB, not 550 MiB;
* boolean / integer indexing returns a new ``Cells``;
* conversions to and from ``supervision.Detections``, COCO annotations (RLE masks) and YOLO label
  lines live here as plain functions of numpy data: nothing heavy is imported at module level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Sequence

import numpy as np

KINDS: tuple[str, ...] = ("rbc", "wbc", "platelet")
"""Cell kinds found by the detector, in the class-index order of every YOLO data set we write."""

MASK_SOURCES: tuple[str, ...] = ("none", "yolo", "sam", "label")


class CellsError(ValueError):
    """Raised when a ``Cells`` table is built from inconsistent columns."""


@dataclass(frozen=True)
class SmearMeta:
    """What is known about the image the cells come from."""

    path: str = ""
    width: int = 0
    height: int = 0
    mpp: float | None = None  # microns per pixel, when known
    scale: float = 1.0  # the detector saw the image resized by this factor (cells much larger than it learnt)
    edge_dropped: int = 0  # red-cell slivers cut by the image border that the detector left out (EDGE_SLIVER)
    models: dict[str, Any] = field(default_factory=dict)
    grey: bool = False  # the image has no colour (three equal channels: a monochrome camera, a grey scan)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)


def _as_str_array(values: Iterable[Any] | None, n: int, default: str | None) -> np.ndarray:
    if values is None:
        return np.array([default] * n, dtype=object)
    arr = np.empty(n, dtype=object)
    vals = list(values)
    if len(vals) != n:
        raise CellsError(f"expected {n} values, got {len(vals)}")
    for i, v in enumerate(vals):
        arr[i] = None if v is None else str(v)
    return arr


@dataclass(eq=False)
class Cells:
    """Cells of one image, column-wise.

    Columns (all length ``n``):
      xyxy          float32 (n, 4) boxes in pixels of the original image
      kind          object  (n,)   one of KINDS
      score         float32 (n,)   detector confidence (1.0 for ground truth)
      masks         object  (n,)   bool arrays cropped to the integer box, or None for no mask
      mask_offset   int32   (n, 2) (x0, y0) of each mask crop in the full image
      mask_source   object  (n,)   "none" | "yolo" | "sam" | "label"
      label         object  (n,)   classifier label (vocabulary string) or None
      label_score   float32 (n,)   classifier probability, NaN when not classified
      review        bool    (n,)   cell needs a human look
      unfamiliar    bool    (n,)   typed cell unlike the classifier's training cells (its label is less reliable)
      morphology        object  (n,)   red-cell morphology type (vocab.RBC_MORPHOLOGY) or None
      morphology_score  float32 (n,)   the morphology stage's probability of that type, NaN when not typed
    """

    xyxy: np.ndarray
    kind: np.ndarray
    score: np.ndarray | None = None
    masks: np.ndarray | None = None
    mask_offset: np.ndarray | None = None
    mask_source: np.ndarray | None = None
    label: np.ndarray | None = None
    label_score: np.ndarray | None = None
    review: np.ndarray | None = None
    meta: SmearMeta = field(default_factory=SmearMeta)
    unfamiliar: np.ndarray | None = None
    morphology: np.ndarray | None = None
    morphology_score: np.ndarray | None = None

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float32)
        if xyxy.size == 0:
            xyxy = xyxy.reshape(0, 4)
        if xyxy.ndim != 2 or xyxy.shape[1] != 4:
            raise CellsError(f"xyxy must have shape (n, 4), got {xyxy.shape}")
        if not np.all(np.isfinite(xyxy)):
            raise CellsError("xyxy contains NaN or infinite values")
        if np.any(xyxy[:, 2] < xyxy[:, 0]) or np.any(xyxy[:, 3] < xyxy[:, 1]):
            raise CellsError("xyxy must satisfy x2 >= x1 and y2 >= y1")
        n = len(xyxy)
        self.xyxy = xyxy
        kind = _as_str_array(self.kind, n, None)
        bad = sorted({str(k) for k in kind if k not in KINDS})
        if bad:
            raise CellsError(f"unknown cell kind(s) {bad}; expected one of {list(KINDS)}")
        self.kind = kind
        self.score = self._col(self.score, n, 1.0, np.float32, "score")
        self.label_score = self._col(self.label_score, n, np.nan, np.float32, "label_score")
        self.review = self._col(self.review, n, False, bool, "review")
        self.unfamiliar = self._col(self.unfamiliar, n, False, bool, "unfamiliar")
        self.label = _as_str_array(self.label, n, None)
        self.morphology = _as_str_array(self.morphology, n, None)
        self.morphology_score = self._col(self.morphology_score, n, np.nan, np.float32, "morphology_score")
        if self.masks is None:
            self.masks = np.array([None] * n, dtype=object)
            self.mask_offset = np.zeros((n, 2), dtype=np.int32)
        else:
            masks = np.empty(n, dtype=object)
            vals = list(self.masks)
            if len(vals) != n:
                raise CellsError(f"masks: expected {n} entries, got {len(vals)}")
            for i, m in enumerate(vals):
                if m is not None:
                    m = np.asarray(m, dtype=bool)
                    if m.ndim != 2:
                        raise CellsError(f"mask {i} must be 2-D, got shape {m.shape}")
                masks[i] = m
            self.masks = masks
            if self.mask_offset is None:
                self.mask_offset = np.floor(xyxy[:, :2]).astype(np.int32)
            self.mask_offset = np.asarray(self.mask_offset, dtype=np.int32).reshape(n, 2)
        default_src = None
        src = _as_str_array(self.mask_source, n, default_src)
        for i in range(n):
            if src[i] is None:
                src[i] = "none" if self.masks[i] is None else "label"
        bad = sorted({s for s in src if s not in MASK_SOURCES})
        if bad:
            raise CellsError(f"unknown mask_source(s) {bad}; expected one of {list(MASK_SOURCES)}")
        self.mask_source = src

    @staticmethod
    def _col(values, n, default, dtype, name) -> np.ndarray:
        if values is None:
            return np.full(n, default, dtype=dtype)
        arr = np.asarray(values, dtype=dtype).reshape(-1)
        if len(arr) != n:
            raise CellsError(f"{name}: expected {n} values, got {len(arr)}")
        return arr

    # ------------------------------------------------------------------ table behaviour
    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: Any) -> "Cells":
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        idx = np.asarray(index)
        if idx.dtype == bool and len(idx) != len(self):
            raise IndexError(f"boolean index of length {len(idx)} for {len(self)} cells")
        return Cells(
            xyxy=self.xyxy[idx],
            kind=self.kind[idx],
            score=self.score[idx],
            masks=self.masks[idx],
            mask_offset=self.mask_offset[idx],
            mask_source=self.mask_source[idx],
            label=self.label[idx],
            label_score=self.label_score[idx],
            review=self.review[idx],
            unfamiliar=self.unfamiliar[idx],
            morphology=self.morphology[idx],
            morphology_score=self.morphology_score[idx],
            meta=self.meta,
        )

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    @classmethod
    def empty(cls, meta: SmearMeta | None = None) -> "Cells":
        return cls(xyxy=np.zeros((0, 4), np.float32), kind=[], meta=meta or SmearMeta())

    @classmethod
    def concat(cls, parts: Sequence["Cells"], meta: SmearMeta | None = None) -> "Cells":
        parts = [p for p in parts if p is not None]
        if not parts:
            return cls.empty(meta)
        return cls(
            xyxy=np.concatenate([p.xyxy for p in parts]),
            kind=np.concatenate([p.kind for p in parts]),
            score=np.concatenate([p.score for p in parts]),
            masks=np.concatenate([p.masks for p in parts]),
            mask_offset=np.concatenate([p.mask_offset for p in parts]),
            mask_source=np.concatenate([p.mask_source for p in parts]),
            label=np.concatenate([p.label for p in parts]),
            label_score=np.concatenate([p.label_score for p in parts]),
            review=np.concatenate([p.review for p in parts]),
            unfamiliar=np.concatenate([p.unfamiliar for p in parts]),
            morphology=np.concatenate([p.morphology for p in parts]),
            morphology_score=np.concatenate([p.morphology_score for p in parts]),
            meta=meta or parts[0].meta,
        )

    def rescaled(self, factor: float, meta: SmearMeta) -> "Cells":
        """These cells, found in an image resized by ``factor``, in pixels of the original image (``meta``):
        boxes divided by ``factor``, each mask crop resized to its box there."""
        import cv2

        out = self[np.arange(len(self))]
        out.meta = meta
        out.xyxy = (self.xyxy / float(factor)).astype(np.float32)
        for i, m in enumerate(self.masks):
            if m is None:
                continue
            x0, y0 = self.mask_offset[i]
            h, w = m.shape
            X0, Y0 = int(np.floor(x0 / factor)), int(np.floor(y0 / factor))
            X1, Y1 = int(np.ceil((x0 + w) / factor)), int(np.ceil((y0 + h) / factor))
            # as a 0/1 float cut at one half: an enlarged mask gets a smooth edge, not the small mask's
            # pixel steps grown outwards (uint8 interpolation then > 0)
            out.masks[i] = cv2.resize(m.astype(np.float32), (max(1, X1 - X0), max(1, Y1 - Y0)),
                                      interpolation=cv2.INTER_LINEAR if factor < 1 else cv2.INTER_AREA) >= (0.5 if factor < 1 else 1e-6) \
                if m.any() else np.zeros((max(1, Y1 - Y0), max(1, X1 - X0)), bool)
            out.mask_offset[i] = (X0, Y0)
        return out

    def with_meta(self, **kwargs: Any) -> "Cells":
        out = self[np.arange(len(self))]
        out.meta = replace(self.meta, **kwargs)
        return out

    @property
    def has_masks(self) -> bool:
        return any(m is not None for m in self.masks)

    def counts(self) -> dict[str, int]:
        return {k: int(np.sum(self.kind == k)) for k in KINDS}

    # ------------------------------------------------------------------ masks
    def full_mask(self, i: int, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Mask of cell ``i`` pasted into a full-image bool array of ``shape`` (h, w)."""
        h, w = shape or self.meta.shape
        if h <= 0 or w <= 0:
            raise CellsError("image shape unknown: pass shape=(h, w) or set meta.width/height")
        out = np.zeros((h, w), dtype=bool)
        m = self.masks[i]
        if m is None:
            return out
        x0, y0 = (int(v) for v in self.mask_offset[i])
        mh, mw = m.shape
        ys, xs = max(0, y0), max(0, x0)
        ye, xe = min(h, y0 + mh), min(w, x0 + mw)
        if ye > ys and xe > xs:
            out[ys:ye, xs:xe] = m[ys - y0 : ye - y0, xs - x0 : xe - x0]
        return out

    def full_masks(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        h, w = shape or self.meta.shape
        return np.stack([self.full_mask(i, (h, w)) for i in range(len(self))]) if len(self) else np.zeros((0, h, w), bool)

    @staticmethod
    def crop_mask(full: np.ndarray, box: Sequence[float]) -> tuple[np.ndarray, tuple[int, int]]:
        """Crop a full-image mask to the integer hull of ``box``; returns (crop, (x0, y0))."""
        x0, y0, x1, y1 = int_hull(box, full.shape[1], full.shape[0])
        return full[y0:y1, x0:x1].copy(), (x0, y0)

    @classmethod
    def from_full_masks(cls, xyxy, kind, full_masks, **kw) -> "Cells":
        crops, offs = [], []
        for box, m in zip(np.asarray(xyxy, np.float32).reshape(-1, 4), full_masks):
            c, o = cls.crop_mask(np.asarray(m, bool), box)
            crops.append(c)
            offs.append(o)
        return cls(xyxy=xyxy, kind=kind, masks=crops or None, mask_offset=np.array(offs, np.int32).reshape(-1, 2), **kw)

    # ------------------------------------------------------------------ supervision
    def to_detections(self):
        """As ``supervision.Detections`` (class_id = index in KINDS; extra columns in ``data``)."""
        import supervision as sv

        mask = self.full_masks() if self.has_masks else None
        return sv.Detections(
            xyxy=self.xyxy.astype(np.float32).reshape(-1, 4),
            mask=mask,
            confidence=self.score.astype(np.float32),
            class_id=np.array([KINDS.index(k) for k in self.kind], dtype=int),
            data={
                "class_name": np.array(list(self.kind), dtype=str),
                "kind": np.array(list(self.kind), dtype=str),
                "label": np.array(["" if v is None else v for v in self.label], dtype=str),
                "label_score": self.label_score.copy(),
                "mask_source": np.array(list(self.mask_source), dtype=str),
                "review": self.review.copy(),
                "unfamiliar": self.unfamiliar.copy(),
                "morphology": np.array(["" if v is None else v for v in self.morphology], dtype=str),
                "morphology_score": self.morphology_score.copy(),
            },
        )

    @classmethod
    def from_detections(cls, det, meta: SmearMeta | None = None, class_names: Sequence[str] = KINDS) -> "Cells":
        """From ``supervision.Detections``; kinds come from ``data['kind']`` or ``class_id`` -> class_names."""
        n = len(det)
        data = getattr(det, "data", {}) or {}
        if "kind" in data:
            kind = [str(k) for k in data["kind"]]
        elif det.class_id is not None:
            kind = [normalize_kind(class_names[int(c)]) for c in det.class_id]
        else:
            raise CellsError("detections have neither data['kind'] nor class_id")
        meta = meta or SmearMeta()
        if det.mask is not None and (meta.width == 0 or meta.height == 0):
            meta = replace(meta, height=int(det.mask.shape[1]), width=int(det.mask.shape[2]))
        label = None
        if "label" in data:
            label = [str(v) or None for v in data["label"]]
        kw = dict(
            score=det.confidence if det.confidence is not None else None,
            label=label,
            label_score=data.get("label_score"),
            review=data.get("review"),
            unfamiliar=data.get("unfamiliar"),
            morphology=[str(v) or None for v in data["morphology"]] if "morphology" in data else None,
            morphology_score=data.get("morphology_score"),
            mask_source=[str(v) for v in data["mask_source"]] if "mask_source" in data else None,
            meta=meta,
        )
        if det.mask is not None and n:
            return cls.from_full_masks(det.xyxy, kind, det.mask, **kw)
        return cls(xyxy=det.xyxy, kind=kind, **kw)

    # ------------------------------------------------------------------ COCO
    def to_coco(self, image_id: int = 1, first_id: int = 1, category_ids: dict[str, int] | None = None) -> list[dict]:
        """COCO annotations; masks as compressed RLE in full-image coordinates."""
        cats = category_ids or {k: i + 1 for i, k in enumerate(KINDS)}
        anns = []
        for i in range(len(self)):
            x1, y1, x2, y2 = (float(v) for v in self.xyxy[i])
            ann = {
                "id": first_id + i,
                "image_id": image_id,
                "category_id": cats[self.kind[i]],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": 0,
                "score": float(self.score[i]),
            }
            if self.masks[i] is not None:
                rle = rle_encode(self.full_mask(i))
                ann["segmentation"] = rle
                ann["area"] = float(rle_area(rle))
            if self.label[i] is not None:
                ann["label"] = self.label[i]
                ann["label_score"] = float(self.label_score[i])
            anns.append(ann)
        return anns

    @classmethod
    def from_coco(cls, anns: Sequence[dict], meta: SmearMeta, categories: dict[int, str] | None = None) -> "Cells":
        """From COCO annotations of one image (``categories`` maps category_id -> name)."""
        cats = categories or {i + 1: k for i, k in enumerate(KINDS)}
        xyxy, kind, score, masks = [], [], [], []
        any_mask = False
        for a in anns:
            x, y, w, h = (float(v) for v in a["bbox"])
            xyxy.append([x, y, x + w, y + h])
            kind.append(normalize_kind(cats[int(a["category_id"])]))
            score.append(float(a.get("score", 1.0)))
            seg = a.get("segmentation")
            if seg:
                any_mask = True
                masks.append(segmentation_to_mask(seg, meta.height, meta.width))
            else:
                masks.append(None)
        xyxy = np.array(xyxy, np.float32).reshape(-1, 4)
        if not any_mask:
            return cls(xyxy=xyxy, kind=kind, score=score, meta=meta)
        crops, offs = [], []
        for box, m in zip(xyxy, masks):
            if m is None:
                crops.append(None)
                offs.append((int(box[0]), int(box[1])))
            else:
                c, o = cls.crop_mask(m, box)
                crops.append(c)
                offs.append(o)
        return cls(xyxy=xyxy, kind=kind, score=score, masks=crops, mask_offset=offs, meta=meta)

    # ------------------------------------------------------------------ YOLO
    def to_yolo(self, segments: bool = False, class_names: Sequence[str] = KINDS) -> list[str]:
        """YOLO label lines: ``cls cx cy w h`` (normalised) or ``cls x1 y1 x2 y2 ...`` polygons."""
        w, h = self.meta.width, self.meta.height
        if w <= 0 or h <= 0:
            raise CellsError("image size unknown: set meta.width/height before writing YOLO labels")
        lines = []
        for i in range(len(self)):
            c = list(class_names).index(self.kind[i])
            if segments:
                poly = mask_to_polygon(self.masks[i], self.mask_offset[i]) if self.masks[i] is not None else None
                if poly is None:  # no mask: the box as a 4-point polygon
                    x1, y1, x2, y2 = self.xyxy[i]
                    poly = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32)
                pts = np.clip(poly / np.array([w, h], np.float32), 0, 1)
                lines.append(f"{c} " + " ".join(f"{v:.6f}" for v in pts.reshape(-1)))
            else:
                x1, y1, x2, y2 = self.xyxy[i]
                lines.append(
                    f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
                )
        return lines

    @classmethod
    def from_yolo(cls, lines: Iterable[str], meta: SmearMeta, class_names: Sequence[str] = KINDS) -> "Cells":
        """Parse YOLO detect (5 numbers) or segment (odd count >= 7) label lines."""
        w, h = meta.width, meta.height
        if w <= 0 or h <= 0:
            raise CellsError("image size unknown: set meta.width/height to read YOLO labels")
        xyxy, kind, masks, offs = [], [], [], []
        seg = False
        for ln, line in enumerate(lines, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                vals = [float(v) for v in parts]
            except ValueError as e:
                raise CellsError(f"line {ln}: not numbers ({e})") from None
            ci = int(vals[0])
            if ci != vals[0] or not 0 <= ci < len(class_names):
                raise CellsError(f"line {ln}: class {parts[0]} outside 0..{len(class_names) - 1}")
            kind.append(normalize_kind(class_names[ci]))
            if len(vals) == 5:
                cx, cy, bw, bh = vals[1:]
                box = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
                xyxy.append(box)
                masks.append(None)
                offs.append((0, 0))
            elif len(vals) >= 7 and len(vals) % 2 == 1:
                seg = True
                pts = np.array(vals[1:], np.float32).reshape(-1, 2) * np.array([w, h], np.float32)
                box = [pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()]
                xyxy.append(box)
                m, o = polygon_to_mask(pts, box)
                masks.append(m)
                offs.append(o)
            else:
                raise CellsError(f"line {ln}: expected 5 numbers or a polygon, got {len(vals)} numbers")
        xyxy_a = np.array(xyxy, np.float32).reshape(-1, 4)
        if seg:
            return cls(xyxy=xyxy_a, kind=kind, masks=masks, mask_offset=offs, meta=meta)
        return cls(xyxy=xyxy_a, kind=kind, meta=meta)


_KIND_ALIASES = {
    "rbc": "rbc", "red": "rbc", "redbloodcell": "rbc", "redbloodcells": "rbc", "erythrocyte": "rbc",
    "wbc": "wbc", "white": "wbc", "whitebloodcell": "wbc", "whitebloodcells": "wbc", "leukocyte": "wbc",
    "leucocyte": "wbc", "platelet": "platelet", "platelets": "platelet", "plt": "platelet",
    "thrombocyte": "platelet", "thrombocytes": "platelet",
}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (n, 4) with every box in ``b`` (m, 4), xyxy -> (n, m)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)), np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    aa = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    ab = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(aa[:, None] + ab[None, :] - inter, 1e-9)


def int_hull(box: Sequence[float], w: int, h: int) -> tuple[int, int, int, int]:
    """The integer pixel hull (x0, y0, x1, y1) of a float box, clipped to a w x h image."""
    x0 = max(0, min(w, int(math.floor(box[0]))))
    y0 = max(0, min(h, int(math.floor(box[1]))))
    return x0, y0, max(x0, min(w, int(math.ceil(box[2])))), max(y0, min(h, int(math.ceil(box[3]))))


def normalize_kind(name: str) -> str:
    """Map a source class name ("RBC", "Platelets", "WBC", ...) onto KINDS; raise on unknown names."""
    key = "".join(ch for ch in str(name).lower() if ch.isalnum())
    if key not in _KIND_ALIASES:
        raise CellsError(f"unknown cell class {name!r}; expected one of {list(KINDS)} or an alias")
    return _KIND_ALIASES[key]


# ---------------------------------------------------------------------- mask helpers
def rle_encode(mask: np.ndarray) -> dict:
    """COCO compressed RLE ``{"size": [h, w], "counts": str}`` of a full-image bool mask."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_decode(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        h, w = rle["size"]
        rle = mask_utils.frPyObjects(rle, h, w)
    elif isinstance(counts, str):
        rle = {"size": rle["size"], "counts": counts.encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def rle_area(rle: dict) -> int:
    from pycocotools import mask as mask_utils

    return int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))


def segmentation_to_mask(seg: Any, h: int, w: int) -> np.ndarray:
    """COCO segmentation (RLE dict or polygon list) -> full-image bool mask."""
    if isinstance(seg, dict):
        return rle_decode(seg)
    from pycocotools import mask as mask_utils

    rles = mask_utils.frPyObjects(seg, h, w)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def polygon_to_mask(pts: np.ndarray, box: Sequence[float]) -> tuple[np.ndarray, tuple[int, int]]:
    """Rasterise a polygon (pixel coordinates) into a mask cropped to ``box``'s integer hull."""
    import cv2

    x0, y0 = int(math.floor(box[0])), int(math.floor(box[1]))
    x1, y1 = int(math.ceil(box[2])), int(math.ceil(box[3]))
    m = np.zeros((max(1, y1 - y0), max(1, x1 - x0)), np.uint8)
    p = np.round(np.asarray(pts, np.float32) - np.array([x0, y0], np.float32)).astype(np.int32)
    cv2.fillPoly(m, [p], 1)
    return m.astype(bool), (x0, y0)


def mask_to_polygon(mask: np.ndarray, offset: Sequence[int] = (0, 0), epsilon: float = 0.7) -> np.ndarray | None:
    """Largest outer contour of a mask as an (k, 2) float polygon in full-image pixels.

    The contour is simplified (Douglas-Peucker, ``epsilon`` px) so that label files stay small.
    """
    import cv2

    m = np.ascontiguousarray(np.asarray(mask, np.uint8))
    if m.size == 0 or not m.any():
        return None
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    c = max(contours, key=cv2.contourArea)
    c = cv2.approxPolyDP(c, epsilon, True).reshape(-1, 2).astype(np.float32)
    if len(c) < 3:
        return None
    return c + np.asarray(offset, np.float32)
