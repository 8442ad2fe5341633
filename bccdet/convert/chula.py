"""Chula RBC-12 (points at red-cell centres) -> a red-cell morphology training set (``convert chula``).

Chula labels each red cell with a point (``x y class`` per line of ``labels/N.txt``), not a box, and many
fields label only some of their cells. Each point is paired with the detector's red cell that contains it
(its mask, else its box; the nearest centre when several do); the crop and shape features of that cell are
what the morphology stage sees in ``analyze``. A point no red cell contains gets a box of the field's median
red-cell size centred on it (an inscribed ellipse for its mask): kept for training (``matched`` false), and
counted as a miss when a held-out split is scored.

Split by image (seeded), so no field gives cells to two splits. Output: ``OUT/{train,val,test}.npz`` with
``crops`` (n, S, S, 4) uint8 (RGB + the cell's mask), ``features`` (n, len(FEATURES)), ``y`` (index into
RBC_MORPHOLOGY), ``image``, ``xy``, ``matched``; and ``OUT/summary.json``.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Callable

import numpy as np

from ..io import InputError, read_image, write_bytes_atomic
from ..morphology import CROP_FIELD_DIAMETERS, CROP_PX, rbc_areas, rbc_crops
from ..types import Cells, SmearMeta
from ..vocab import CHULA_CLASSES, RBC_MORPHOLOGY
from .common import ConversionError

SPLITS = ("train", "val", "test")
STORE_PX = 64  # crops are stored this large, at analyze's scale (CROP_PX px for CROP_FIELD_DIAMETERS): the
# margin around analyze's window lets training shift the crop


def chula_fields(root: Path) -> list[tuple[Path, np.ndarray]]:
    """(image, points (m, 3) float: x, y, Chula class) of each labelled field, sorted by field number."""
    root = Path(root)
    if not (root / "images").is_dir() or not (root / "labels").is_dir():
        raise ConversionError(f"{root}: not a Chula RBC-12 folder (expected images/ and labels/)")
    out = []
    for lab in sorted((root / "labels").glob("*.txt"), key=lambda p: (len(p.stem), p.stem)):
        imgs = [p for p in (root / "images").glob(lab.stem + ".*")]
        if not imgs:
            continue
        rows = [ln.split() for ln in lab.read_text().splitlines() if ln.strip()]
        try:
            pts = np.array([[float(a), float(b), int(c)] for a, b, c in rows], np.float64).reshape(-1, 3)
        except ValueError:
            raise ConversionError(f"{lab}: expected 'x y class' on every line") from None
        out.append((imgs[0], pts))
    if not out:
        raise ConversionError(f"{root}: no labelled fields")
    return out


def split_fields(stems: list[str], seed: int = 0, fractions=(0.7, 0.15, 0.15)) -> dict[str, str]:
    """stem -> split, by image (seeded shuffle)."""
    s = sorted(stems)
    random.Random(seed).shuffle(s)
    n_tr = int(round(fractions[0] * len(s)))
    n_va = int(round(fractions[1] * len(s)))
    return {st: ("train" if k < n_tr else "val" if k < n_tr + n_va else "test") for k, st in enumerate(s)}


def match_points(cells: Cells, pts: np.ndarray) -> np.ndarray:
    """Index of the red cell of ``cells`` holding each point (its mask, else its box; nearest box centre
    among several), -1 for none. A cell claimed by two points goes to the nearer one."""
    rbc = np.nonzero(cells.kind == "rbc")[0]
    out = np.full(len(pts), -1, int)
    dist = np.full(len(pts), np.inf)
    if not len(rbc):
        return out
    xy = cells.xyxy[rbc]
    cx, cy = (xy[:, 0] + xy[:, 2]) / 2, (xy[:, 1] + xy[:, 3]) / 2
    for j, (x, y) in enumerate(pts[:, :2]):
        inbox = np.nonzero((xy[:, 0] <= x) & (x <= xy[:, 2]) & (xy[:, 1] <= y) & (y <= xy[:, 3]))[0]
        best, bd = -1, np.inf
        for k in inbox:
            i = rbc[k]
            m = cells.masks[i]
            if m is not None and m.any():
                ox, oy = cells.mask_offset[i]
                mx, my = int(x) - int(ox), int(y) - int(oy)
                if not (0 <= my < m.shape[0] and 0 <= mx < m.shape[1] and m[my, mx]):
                    continue
            d = math.hypot(cx[k] - x, cy[k] - y)
            if d < bd:
                best, bd = int(i), d
        out[j], dist[j] = best, bd
    for i in set(out[out >= 0].tolist()):  # one point per cell: the nearest keeps it
        js = np.nonzero(out == i)[0]
        if len(js) > 1:
            keep = js[np.argmin(dist[js])]
            out[js[js != keep]] = -1
    return out


def with_point_boxes(cells: Cells, pts: np.ndarray, owner: np.ndarray) -> tuple[Cells, np.ndarray]:
    """``cells`` plus one red cell (median red-cell box, no mask) at each point no cell holds; the cell
    index of every point."""
    miss = np.nonzero(owner < 0)[0]
    if not len(miss):
        return cells, owner
    rbc = np.nonzero(cells.kind == "rbc")[0]
    side = 2.0 * math.sqrt(float(np.median(rbc_areas(cells, rbc))) / math.pi) if len(rbc) else 40.0
    h = side / 2.0
    boxes = np.array([[x - h, y - h, x + h, y + h] for x, y in pts[miss, :2]], np.float32)
    extra = Cells(xyxy=boxes, kind=["rbc"] * len(miss), score=np.zeros(len(miss), np.float32), meta=cells.meta)
    both = Cells.concat([cells, extra], meta=cells.meta)
    owner = owner.copy()
    owner[miss] = len(cells) + np.arange(len(miss))
    return both, owner


def build(root: Path, out: Path, detect: Callable[[np.ndarray, SmearMeta], Cells], seed: int = 0,
          size: int = STORE_PX, progress: bool = True) -> dict:
    """Write the morphology set of the Chula folder ``root`` into ``out`` (see the module docstring)."""
    fields = chula_fields(root)
    split_of = split_fields([p.stem for p, _ in fields], seed)
    acc: dict[str, dict[str, list]] = {s: {k: [] for k in ("crops", "features", "y", "image", "xy", "matched")}
                                       for s in SPLITS}
    stats = {s: {"fields": 0, "points": 0, "matched": 0, "uncategorised_left_out": 0} for s in SPLITS}
    it = fields
    if progress:
        from tqdm import tqdm

        it = tqdm(fields, desc="chula", unit="field")
    for path, pts in it:
        try:
            img = read_image(path)
        except InputError as e:
            raise ConversionError(str(e)) from None
        sp = split_of[path.stem]
        keep = np.array([CHULA_CLASSES.get(int(c)) is not None for c in pts[:, 2]], bool)
        stats[sp]["uncategorised_left_out"] += int((~keep).sum())
        pts = pts[keep]
        stats[sp]["fields"] += 1
        if not len(pts):
            continue
        cells = detect(img, SmearMeta(path=str(path), width=img.shape[1], height=img.shape[0]))
        owner = match_points(cells, pts)
        stats[sp]["points"] += len(pts)
        stats[sp]["matched"] += int((owner >= 0).sum())
        matched = owner >= 0
        both, owner = with_point_boxes(cells, pts, owner)
        # the field's median red cell from the detector's own red cells, as analyze computes it
        det_rbc = np.nonzero(cells.kind == "rbc")[0]
        med = float(np.median(rbc_areas(cells, det_rbc))) if len(det_rbc) else None
        crops, feats, _ = rbc_crops(img, both, owner, size=size, median_area=med,
                                    field_diameters=CROP_FIELD_DIAMETERS * size / CROP_PX)
        a = acc[sp]
        a["crops"].append(crops)
        a["features"].append(feats)
        a["y"].append(np.array([RBC_MORPHOLOGY.index(CHULA_CLASSES[int(c)]) for c in pts[:, 2]], np.int16))
        a["image"].append(np.array([path.stem] * len(pts)))
        a["xy"].append(pts[:, :2].astype(np.float32))
        a["matched"].append(matched)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for sp in SPLITS:
        a = acc[sp]
        if not a["y"]:
            continue
        arrs = {k: np.concatenate(v) for k, v in a.items()}
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, **arrs)
        write_bytes_atomic(out / f"{sp}.npz", buf.getvalue())
        counts[sp] = {t: int((arrs["y"] == k).sum()) for k, t in enumerate(RBC_MORPHOLOGY)}
    summary = {"source": str(root), "seed": seed, "crop_px": size, "splits": stats, "counts": counts,
               "classes": list(RBC_MORPHOLOGY), "train_crop_px": CROP_PX,
               "fields_by_split": {sp: sorted((st for st, s in split_of.items() if s == sp), key=lambda v: (len(v), v))
                                   for sp in SPLITS}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
