"""ultralytics YOLOv8(-seg) -> bccdet Cells: offline set-up and loading, then prediction (whole, tiled or
rescaled), the edge-sliver and platelet-size rules and their constants."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from pathlib import Path

import numpy as np

from ...defaults import BORDER, EDGE_SLIVER, RUNTIME, SCALE, TILE, TILE_OVERLAP
from ...types import KINDS, Cells, SmearMeta


def load_yolo(weights: str | Path):
    """``ultralytics.YOLO`` for a detector checkpoint, or an ``InputError`` that says what the file is instead
    (our classifier checkpoint passed as ``--detector`` once gave ultralytics' advice to use its yolo26n.pt)."""
    setup_offline()
    from ultralytics import YOLO

    from ...io import InputError

    p = Path(weights)
    if p.suffix in (".pt", ".pth") and not p.is_file():
        raise InputError(f"{p}: no such detector weights file")
    try:
        m = YOLO(str(weights))
        m.names  # an exported format (or a file ultralytics cannot read) only loads here
        return m
    except Exception as e:  # noqa: BLE001 - any failure here means the file is not a detector we can run
        what = ""
        if p.is_file():
            try:
                import torch

                ck = torch.load(p, map_location="cpu", weights_only=True)
                if isinstance(ck, dict) and str(ck.get("format", "")).startswith("bccdet-classifier"):
                    what = "a bccdet classifier checkpoint (pass it as --classifier)"
                elif isinstance(ck, dict) and ("mask_decoder" in ck or any(str(k).startswith("mask_decoder.") for k in ck)):
                    what = "a SAM checkpoint (pass it as --sam)"
            except Exception:  # noqa: BLE001
                pass
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise InputError(f"{p}: not an ultralytics YOLO detector checkpoint" + (f"; it is {what}" if what else f" ({msg})")) from None


def setup_offline() -> None:
    """Keep ultralytics from touching the network: YOLO_OFFLINE, no telemetry, a local font for plots.

    Must run before ``import ultralytics`` (its settings are read at import time). torch is imported
    first, so that its CPU thread pool is sized from this process's own environment: ``import
    ultralytics`` sets ``OMP_NUM_THREADS=1`` when unset, and a torch imported after that runs every
    stage (detector, SAM, classifier) on one thread.
    """
    __import__("torch")  # before ultralytics: see above

    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", os.environ.get("YOLO_VERBOSE", "False"))
    if "YOLO_CONFIG_DIR" not in os.environ:
        from ...data import cache_dir

        os.environ["YOLO_CONFIG_DIR"] = str(cache_dir() / "yolo-config")
    font_dir = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics"
    font_dir.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        dst = font_dir / name
        if not dst.exists():
            src = _any_ttf()
            if src is not None:
                shutil.copyfile(src, dst)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def restore_threads(n: int) -> None:
    """Put torch's CPU thread count back to ``n`` after an ultralytics call.

    ultralytics' ``select_device`` (run by every ``predict`` / ``val`` set-up) sets it to ``cpu_count - 1``
    capped at 8 for CPU training: 1 thread on a 2-core machine, where the SAM and classifier stages that
    follow then ran at about half speed, and 8 in each ``batch`` worker that was given its share.
    """
    import torch

    if n and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _any_ttf() -> Path | None:
    try:
        import matplotlib

        p = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        if p.exists():
            return p
    except ImportError:
        pass
    for c in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",):
        if Path(c).exists():
            return Path(c)
    return None


def trained_imgsz(model, default: int = 416) -> int:
    """The input size a loaded ultralytics model was trained at (its checkpoint's ``imgsz``), else ``default``."""
    v = getattr(model, "overrides", {}).get("imgsz")
    if isinstance(v, (list, tuple)) and v:
        v = max(v)
    try:
        return int(v) if v else default
    except (TypeError, ValueError):
        return default


def results_to_cells(result, meta: SmearMeta, names: dict | None = None) -> Cells:
    """One ultralytics ``Results`` -> Cells (masks cropped to their boxes)."""
    import supervision as sv

    det = sv.Detections.from_ultralytics(result)
    names = names or getattr(result, "names", None) or dict(enumerate(KINDS))
    class_names = [names[i] for i in sorted(names)]
    if len(det) == 0:
        return Cells.empty(meta)
    cells = Cells.from_detections(det, meta=meta, class_names=class_names)
    if cells.has_masks:
        cells.mask_source = np.array(["yolo"] * len(cells), dtype=object)
    return cells


# Median red-cell box side (sqrt of the box area) in a 640 x 480 BCCD field: the scale the detector
# learnt, relative to a 640 px tile. Measured recall on BCCD test holds up to 2x that size (red cells to
# 172 px in a 640 px tile) and drops at 3x (RBC recall 0.85 -> 0.43); below it, see MIN_RBC_SIDE.
TRAINED_RBC_SIDE = 100.0
MAX_RBC_SIDE = 2.0 * TRAINED_RBC_SIDE
# A WBC box side over the median red-cell box side of the same BCCD field (labels of the 339 train / val /
# test fields with 5+ red cells and a WBC): median 1.87, 10-90% 1.27-2.27. Used by auto_scale when an
# overview shows fewer than 5 red cells; the detector's tolerance (0.35x-2x) covers that spread.
WBC_PER_RBC_SIDE = 1.87
# Cells too small for the detector (a low-magnification objective or camera). python -m bench.detector_scale puts
# k x k BCCD test fields into one 640 x 480 image (all 72 in turn): seen as they are, recall RBC / WBC /
# platelets was 0.74 / 0.87 / 0.52 at 3 x 3 (red cells ~34 px) and 0.03 / 0.43 / 0.07 at 4 x 4 (~25 px), against
# 0.83 / 1.00 / 0.93 for the fields themselves, while 2 x 2 (~51 px) held (0.91 / 1.00 / 0.90). Where the median
# red cell found measures under MIN_RBC_SIDE network px, `scale="auto"` upscales the image so that it measures
# UPSCALE_RBC_SIDE px in a tile and detects again, in tiles: 3 x 3 0.92 / 1.00 / 0.97, 4 x 4 0.88 / 1.00 / 0.84.
# Bringing it to 100 px instead cost 1.7x the time for the same recall (first 36 fields). The training fields'
# red cells measure 99-148 network px (BCCD 640 x 480 and TXL-PBC's sources), so none of them is upscaled.
# 45 px at first; raised to 60 (2026-12-03) for another lab's camera: Chula RBC-12's 640 x 480 fields (Nikon
# DS-Fi2, 1000x) show red cells of ~40-55 px, where the detector called many red cells platelets and missed
# others. Of the labelled red-cell points of 40 Chula fields, 0.949 fell inside a detected red cell at 45 and
# 0.969 at 60 (18 -> 28 fields upscaled; /tmp study recorded in docs/experiments.md).
MIN_RBC_SIDE = 60.0
UPSCALE_RBC_SIDE = 75.0
MAX_UPSCALE = 4.0
UPSCALE_MAX_PIXELS = 48_000_000


# EDGE_SLIVER (red cells cut by the image border left out) and BORDER (grey border around every image the
# detector sees): defined, with their measurements, in bccdet/defaults.py


def edge_sliver_drop(xyxy: np.ndarray, rbc: np.ndarray, width: float, height: float, frac: float = EDGE_SLIVER,
                     margin: float = 2.0, ref: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the red cells (``rbc``) cut by the border of a ``width`` x ``height`` field of which less
    than ``frac`` of the field's median red-cell side shows across that border. The median is taken over the
    red cells clear of the border (all red cells when fewer than 3 are) among those selected by ``ref`` (all
    when None: ``evaluate detector --edge-sliver`` passes the ones at ``analyze``'s confidence)."""
    drop = np.zeros(len(xyxy), bool)
    if frac <= 0 or not len(xyxy) or not rbc.any() or not (width and height):
        return drop
    xy = np.asarray(xyxy, float)
    bw, bh = xy[:, 2] - xy[:, 0], xy[:, 3] - xy[:, 1]
    tx = (xy[:, 0] < margin) | (xy[:, 2] > width - margin)
    ty = (xy[:, 1] < margin) | (xy[:, 3] > height - margin)
    side = np.maximum(bw, bh)
    pool = rbc if ref is None else rbc & ref
    if not pool.any():
        pool = rbc
    clear = pool & ~(tx | ty)
    refside = float(np.median(side[clear] if clear.sum() >= 3 else side[pool]))
    shown = np.where(tx & ty, np.minimum(bw, bh), np.where(tx, bw, bh))
    return rbc & (tx | ty) & (shown < frac * refside)


def drop_edge_slivers(cells: Cells, frac: float = EDGE_SLIVER, margin: float = 2.0) -> Cells:
    """``cells`` without the red cells cut by the image border of which less than ``frac`` of the field's
    median red-cell side (over cells clear of the border; all red cells when fewer than 3 are) shows across
    that border (``edge_sliver_drop``); the number left out goes to ``meta.edge_dropped``. Other kinds are
    kept: white cells at the border are labelled and wanted, and platelets are too small for the rule."""
    if frac <= 0 or not len(cells):
        return cells
    drop = edge_sliver_drop(cells.xyxy, cells.kind == "rbc", cells.meta.width, cells.meta.height, frac, margin)
    if not drop.any():
        return cells
    return cells[~drop].with_meta(edge_dropped=int(cells.meta.edge_dropped) + int(drop.sum()))


# A detection called platelet whose box is at least this share of the field's median red-cell box area is a
# red cell: a platelet is 2-3 um across against a red cell's 7-8 um (area ~0.1). On BCCD test and a third of
# TXL-PBC val no detected platelet that matched a labelled platelet reached 0.5 (99th percentile 0.46); on 40
# Chula fields (another camera) re-kinding those over 0.5 put 0.974 of the red-cell points in a red cell
# against 0.969. 0.6 leaves a margin for large platelets and clumps.
PLATELET_AS_RBC_AREA = 0.6


def rbc_sized_platelets(cells: Cells, frac: float = PLATELET_AS_RBC_AREA, min_rbc: int = 5) -> Cells:
    """``cells`` with each platelet whose box area is at least ``frac`` of the median red-cell box area
    turned into a red cell (fields with fewer than ``min_rbc`` red cells are left as they are)."""
    rbc = cells.kind == "rbc"
    if frac <= 0 or rbc.sum() < min_rbc:
        return cells
    a = (cells.xyxy[:, 2] - cells.xyxy[:, 0]) * (cells.xyxy[:, 3] - cells.xyxy[:, 1])
    flip = (cells.kind == "platelet") & (a >= frac * float(np.median(a[rbc])))
    if not flip.any():
        return cells
    out = cells[np.arange(len(cells))]
    out.kind[flip] = "rbc"
    return out


def _median_side(xyxy: np.ndarray) -> float:
    return float(np.median(np.sqrt((xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1]))))


def _rbc_side(cells: Cells, min_rbc: int) -> float | None:
    """The median red-cell box side of ``cells``; with fewer than ``min_rbc`` red cells (a thin or
    white-cell-rich field) the white cells' size stands in (``WBC_PER_RBC_SIDE``); with neither, None."""
    r = cells.xyxy[cells.kind == "rbc"]
    if len(r) >= min_rbc:
        return _median_side(r)
    wbc = cells.xyxy[cells.kind == "wbc"]
    return _median_side(wbc) / WBC_PER_RBC_SIDE if len(wbc) else None


def parse_scale(value) -> str | float:
    """A detector ``scale``: ``"auto"`` or a factor in (0, 1] (str or number); a one-line ``ValueError`` otherwise."""
    if value == "auto":
        return value
    try:
        f = float(value)
    except (TypeError, ValueError):
        f = -1.0
    if not 0 < f <= 1:
        raise ValueError(f"{value!r}: expected auto or a factor in (0, 1] (1: never resize)")
    return f


class YoloDetector:
    """YOLOv8(-seg) detector stage: RGB image -> Cells (masks, when the model has a mask head).

    Images more than 1.5x ``tile`` px on a side are cut into overlapping ``tile`` px tiles (``overlap`` px),
    the size of the training fields, so cells are seen at the scale the model learnt; a cell is kept from the tile whose core (the tile minus half the overlap on inner
    sides) holds its box centre, so cells on tile borders are counted once.

    ``scale="auto"``: such a large image may instead be one field from a high-resolution camera, whose
    cells would fill a tile. A first pass over the image shrunk to one tile measures the median red-cell
    size; where red cells would be over ``MAX_RBC_SIDE`` px at full resolution, the image is analysed
    resized to bring them to ``TRAINED_RBC_SIDE`` and the cells are mapped back to full resolution
    (``meta.scale`` records the factor). A number fixes the factor; 1 never resizes.

    ``scale="auto"`` also covers the opposite case, cells smaller than it learnt (a low-magnification
    field): where the median red cell found measures under ``MIN_RBC_SIDE`` px at the network's input, the
    image is upscaled (:meth:`upscale_factor`) and detected again in tiles; ``meta.scale`` is then over 1.
    """

    def __init__(self, weights: str | Path, name: str = "", sha256: str = "", device: str = "cpu",
                 imgsz: int | None = None, conf: float = 0.25, iou: float = 0.6, max_det: int = 1000,
                 tile: int = TILE, overlap: int = TILE_OVERLAP, scale: str | float = SCALE, edge_sliver: float = EDGE_SLIVER,
                 border: int = BORDER, runtime: str = RUNTIME, precision: str = "fp32"):
        from ...runtime import resolve_runtime, tune_malloc

        tune_malloc()
        self.model = load_yolo(weights)
        try:
            self.runtime = resolve_runtime(runtime, device) if Path(weights).suffix == ".pt" else "torch"
        except ValueError as e:
            from ...io import InputError

            raise InputError(str(e)) from None
        self.precision = precision if self.runtime == "openvino" else "fp32"
        self.name = name or Path(weights).stem
        self.sha256 = sha256
        self.tile, self.overlap = tile, overlap
        self.scale = parse_scale(scale)
        self.edge_sliver = float(edge_sliver)  # 0: keep every red cell at the border (drop_edge_slivers)
        self.border = max(0, int(border))  # grey border in network pixels (BORDER); 0: the bare image
        imgsz = int(imgsz) if imgsz else trained_imgsz(self.model)  # default: the size it was trained at
        self.kw = dict(imgsz=imgsz, conf=conf, iou=iou, max_det=max_det, device=device, verbose=False, retina_masks=True)
        names = self.model.names
        bad = [n for n in names.values() if n not in KINDS]
        if bad:
            raise ValueError(f"{weights}: model classes {list(names.values())} are not {list(KINDS)}")
        if self.runtime == "openvino":  # the same model exported; ultralytics' own pre/post-processing
            from .openvino import export_dir, pin_backend

            n = torch_threads()
            d = export_dir(weights, sha256)
            self.model = load_yolo(d)
            try:
                pin_backend(self.model, d, self.kw, self.precision, n)
            finally:
                restore_threads(n)

    def _predict(self, image: np.ndarray, meta: SmearMeta) -> Cells:
        h, w = image.shape[:2]
        kw, pad = self.kw, 0
        if self.border:
            import cv2

            # ``border`` network pixels of grey on every side, at the scale the image is seen at (the input size
            # grows by the two borders, so the cells keep their size), as ultralytics' validator does
            pad = max(1, round(self.border * max(h, w) / kw["imgsz"]))
            image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(114, 114, 114))
            kw = dict(kw, imgsz=kw["imgsz"] + 2 * self.border)
        n = torch_threads()  # the caller's count, as it is now
        try:
            r = self.model.predict(np.ascontiguousarray(image[..., ::-1]), **kw)[0]  # ultralytics wants BGR
        finally:
            restore_threads(n)
        if not pad:
            return results_to_cells(r, meta, names=self.model.names)
        cells = results_to_cells(r, SmearMeta(width=w + 2 * pad, height=h + 2 * pad), names=self.model.names)
        return unpad(cells, pad, meta)

    def _detect(self, image: np.ndarray, meta: SmearMeta) -> Cells:
        """At full resolution: the image whole, or in tiles when over 1.5 tiles on a side."""
        h, w = image.shape[:2]
        return self._predict(image, meta) if max(h, w) <= 1.5 * self.tile else self._predict_tiled(image, meta)

    def __call__(self, image: np.ndarray, meta: SmearMeta | None = None) -> Cells:
        h, w = np.asarray(image).shape[:2]
        if meta is None:
            meta = SmearMeta(width=w, height=h)
        elif (meta.width, meta.height) != (w, h):
            # the meta's size is where boxes are clipped: a meta without one (SmearMeta(path=...)) once gave no cells
            meta = dataclasses.replace(meta, width=w, height=h)
        return drop_edge_slivers(rbc_sized_platelets(self._cells(image, meta)), self.edge_sliver)

    def _cells(self, image: np.ndarray, meta: SmearMeta) -> Cells:
        c = self._cells_at_scale(image, meta)
        g = self.upscale_factor(c, image.shape[:2]) if self.scale == "auto" else 1.0
        if g <= 1.0:
            return c
        return self._at_factor(image, meta, g)

    def _at_factor(self, image: np.ndarray, meta: SmearMeta, f: float) -> Cells:
        """Cells of ``image`` resized by ``f`` (under 1: shrunk, seen whole or tiled; over 1: enlarged, tiled),
        mapped back to its own pixels; ``meta.scale`` records the factor as rounded to whole pixels."""
        import cv2

        h, w = image.shape[:2]
        resized = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))),
                             interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
        rh, rw = resized.shape[:2]
        fx = rw / w
        inner = SmearMeta(path=meta.path, width=rw, height=rh)
        found = self._predict_tiled(resized, inner) if f > 1 else self._detect(resized, inner)
        return found.rescaled(fx, dataclasses.replace(meta, scale=fx))

    def upscale_factor(self, cells: Cells, shape: tuple[int, int], min_rbc: int = 5) -> float:
        """> 1 when the cells found are too small for the detector (a low-magnification camera): the factor
        that brings the median red cell to ``UPSCALE_RBC_SIDE`` px in a tile, where the red cells of ``cells``
        measure under ``MIN_RBC_SIDE`` network px. Capped at ``MAX_UPSCALE`` and ``UPSCALE_MAX_PIXELS``.
        With fewer than ``min_rbc`` red cells the white cells' size stands in (``WBC_PER_RBC_SIDE``); with
        neither, or in an image already resized down, 1.0."""
        if cells.meta.scale != 1.0 or not len(cells):
            return 1.0
        h, w = shape
        side = _rbc_side(cells, min_rbc)
        if side is None:
            return 1.0
        # network px per image px: a field is letterboxed whole into imgsz; a larger image is seen in tiles
        net = self.kw["imgsz"] / (max(h, w) if max(h, w) <= 1.5 * self.tile else self.tile)
        if side * net >= MIN_RBC_SIDE:
            return 1.0
        g = min(UPSCALE_RBC_SIDE / max(side, 1.0), MAX_UPSCALE, math.sqrt(UPSCALE_MAX_PIXELS / (h * w)))
        return g if g * max(h, w) > 1.5 * self.tile and g > 1.05 else 1.0

    def _cells_at_scale(self, image: np.ndarray, meta: SmearMeta) -> Cells:
        h, w = image.shape[:2]
        if max(h, w) <= 1.5 * self.tile:
            return self._predict(image, meta)
        f = self.auto_scale(image) if self.scale == "auto" else self.scale
        if f >= 1.0:
            return self._predict_tiled(image, meta)
        return self._at_factor(image, meta, f)

    def auto_scale(self, image: np.ndarray, min_rbc: int = 5) -> float:
        """The factor that brings this image's red cells to the size the detector learnt, or 1.0 (no resize)
        where they are not over ``MAX_RBC_SIDE`` px. With fewer than ``min_rbc`` red cells in the one-tile
        overview the white cells' size stands in (``WBC_PER_RBC_SIDE``), unless the overview shows that many
        small objects (red cells and platelets) instead; with neither, 1.0."""
        import cv2

        h, w = image.shape[:2]
        f0 = self.tile / max(h, w)
        small = cv2.resize(image, (max(1, round(w * f0)), max(1, round(h * f0))), interpolation=cv2.INTER_AREA)
        seen = self._predict(small, SmearMeta(width=small.shape[1], height=small.shape[0]))
        side = _rbc_side(seen, min_rbc)
        if side is None:
            return 1.0
        if (seen.kind == "rbc").sum() < min_rbc:  # the white cells' size would stand in: is it believable?
            # Not when the overview shows many small objects instead (the cells are too small to be told apart
            # there: a wide field), nor when a "white cell" spans half the overview (a smear field is not one
            # cell). bench.scaling's 4000 x 3000 mosaics of 49 BCCD fields showed 1 red cell, 13 "platelets"
            # and false WBCs 280-480 px wide, which shrank them 0.06-0.10x and lost nearly every cell.
            wbc = seen.xyxy[seen.kind == "wbc"]
            if (seen.kind != "wbc").sum() >= min_rbc or _median_side(wbc) > 0.5 * min(small.shape[:2]):
                return 1.0
        side /= f0
        return TRAINED_RBC_SIDE / side if side > MAX_RBC_SIDE else 1.0

    def _predict_tiled(self, image: np.ndarray, meta: SmearMeta) -> Cells:
        h, w = image.shape[:2]
        parts = []
        for y0, y1, cy0, cy1 in tile_spans(h, self.tile, self.overlap):
            for x0, x1, cx0, cx1 in tile_spans(w, self.tile, self.overlap):
                sub = self._predict(image[y0:y1, x0:x1], SmearMeta(width=x1 - x0, height=y1 - y0))
                if not len(sub):
                    continue
                cx = (sub.xyxy[:, 0] + sub.xyxy[:, 2]) / 2 + x0
                cy = (sub.xyxy[:, 1] + sub.xyxy[:, 3]) / 2 + y0
                keep = (cx >= cx0) & (cx < cx1) & (cy >= cy0) & (cy < cy1)
                sub = sub[keep]
                sub.xyxy = sub.xyxy + np.array([x0, y0, x0, y0], np.float32)
                sub.mask_offset = sub.mask_offset + np.array([x0, y0], np.int32)
                parts.append(sub)
        return Cells.concat(parts, meta=meta)


def unpad(cells: Cells, pad: int, meta: SmearMeta) -> Cells:
    """Cells found in an image with ``pad`` px added on every side, in pixels of the image itself (``meta``):
    boxes shifted and clipped to it, mask crops cut to it; a cell wholly in the border is left out."""
    h, w = meta.height, meta.width
    xy = cells.xyxy - np.float32(pad)
    xy = np.stack([np.clip(xy[:, 0], 0, w), np.clip(xy[:, 1], 0, h), np.clip(xy[:, 2], 0, w), np.clip(xy[:, 3], 0, h)], 1)
    keep = ((xy[:, 2] - xy[:, 0]) >= 1) & ((xy[:, 3] - xy[:, 1]) >= 1)
    out = cells[np.flatnonzero(keep)]
    out.meta = meta
    out.xyxy = xy[keep].astype(np.float32)
    for i, m in enumerate(out.masks):
        if m is None:
            continue
        x0, y0 = (int(v) - pad for v in out.mask_offset[i])
        mh, mw = m.shape
        X0, Y0, X1, Y1 = max(0, x0), max(0, y0), min(w, x0 + mw), min(h, y0 + mh)
        out.masks[i] = m[Y0 - y0:Y1 - y0, X0 - x0:X1 - x0] if X1 > X0 and Y1 > Y0 else np.zeros((1, 1), bool)
        out.mask_offset[i] = (min(X0, w - 1), min(Y0, h - 1))
    return out


def tile_spans(n: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis: (start, end, core_start, core_end); cores partition [0, n)."""
    if n <= tile:
        return [(0, n, 0, n)]
    step = tile - overlap
    starts = list(range(0, max(n - tile, 0) + 1, step))
    if starts[-1] + tile < n:
        starts.append(n - tile)
    spans = []
    for i, s in enumerate(starts):
        e = min(s + tile, n)
        core0 = 0 if i == 0 else (spans[-1][3])
        core1 = n if i == len(starts) - 1 else (e + starts[i + 1]) // 2
        spans.append((s, e, core0, core1))
    return spans
