"""Red-cell morphology without an ML framework: shape features from each red cell's mask, the crop the
morphology classifier sees, and the ICSH 2015 grades of a smear (docs/rbc.md).

* :func:`field_scale` - the field's own red-cell size (median area of its red cells), the unit of every
  size judgement: a macrocyte or microcyte is large or small *against the normal cells of the same field*
  (or against microns when ``mpp`` is known), whatever the camera's magnification.
* :func:`rbc_crops` - a square window of ``CROP_FIELD_DIAMETERS`` median red-cell diameters around each
  cell, so that cell size is visible in the crop as it is in the field, plus the cell's own mask; and per
  red cell its shape features (``FEATURES``): area relative to that unit, elongation, solidity,
  circularity, central pallor and staining density.
* :func:`icsh_grade` / :func:`morphology_summary` - ICSH grades per type (``ICSH_GRADES``) and flags.

cv2 (from opencv, which ultralytics brings) is imported inside the functions that need it.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Sequence

import numpy as np

from .types import Cells
from .vocab import RBC_MORPHOLOGY

FEATURES: tuple[str, ...] = ("log_rel_area", "log_elongation", "solidity", "circularity", "pallor", "log_rel_density")
"""Shape features of a red cell, in the order :func:`rbc_crops` returns them (docs/rbc.md)."""
CROP_FIELD_DIAMETERS = 1.5  # the crop window: this many median red-cell diameters of the field on a side
CROP_PX = 48  # ... resized to this many pixels (32 px a median red-cell diameter)
# features are measured on the cell's window shrunk to at most this many px a side (Chula's training
# windows are ~75 px, BCCD's and TXL-PBC's 120-142 px, all left as they are): a 12 MP camera's windows of
# 500+ px cost 10x more and tell the shape no better (tests/test_rbc_features.py)
FEATURE_MAX_SIDE = 192
NORMAL_RBC_DIAMETER_UM = 7.5  # adult normal red cell, microns (used only when the image's mpp is known)


def _disc_diameter(area: float) -> float:
    return 2.0 * math.sqrt(max(area, 1.0) / math.pi)


def rbc_areas(cells: Cells, idx: Sequence[int]) -> np.ndarray:
    """Pixel area of each listed cell: its mask, or the ellipse inscribed in its box when it has none."""
    out = np.empty(len(idx), np.float64)
    for j, i in enumerate(idx):
        m = cells.masks[i]
        if m is not None and m.any():
            out[j] = float(m.sum())
        else:
            x1, y1, x2, y2 = cells.xyxy[i]
            out[j] = math.pi * max(x2 - x1, 1.0) * max(y2 - y1, 1.0) / 4.0
    return out


def field_scale(areas: np.ndarray, mpp: float | None = None) -> float:
    """The area (px) of a normal red cell of this field: the median red cell, or a 7.5 um disc when the
    microns per pixel are known (the absolute size ICSH's macro-/microcytes are judged against)."""
    if mpp:
        return math.pi * (NORMAL_RBC_DIAMETER_UM / float(mpp) / 2.0) ** 2
    a = np.asarray(areas, np.float64)
    return float(np.median(a)) if len(a) else 1.0


def _grey(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image.astype(np.float32)
    return image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _full_cell_mask(cells: Cells, i: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """The cell's mask in the window (x0, y0, w, h) of the image (ellipse in its box when it has none)."""
    out = np.zeros((h, w), bool)
    m = cells.masks[i]
    if m is None or not m.any():
        import cv2

        x1, y1, x2, y2 = cells.xyxy[i]
        e = np.zeros((h, w), np.uint8)
        cv2.ellipse(e, (int(round((x1 + x2) / 2 - x0)), int(round((y1 + y2) / 2 - y0))),
                    (max(1, int((x2 - x1) / 2)), max(1, int((y2 - y1) / 2))), 0, 0, 360, 1, -1)
        return e.astype(bool)
    ox, oy = (int(v) for v in cells.mask_offset[i])
    mh, mw = m.shape
    a, b = max(ox, x0), max(oy, y0)
    c, d = min(ox + mw, x0 + w), min(oy + mh, y0 + h)
    if c > a and d > b:
        out[b - y0:d - y0, a - x0:c - x0] = m[b - oy:d - oy, a - ox:c - ox]
    return out


def _one_cell(g: np.ndarray, mask: np.ndarray, bg: float, unit_area: float, unit_density: float) -> list[float]:
    import cv2

    area = float(mask.sum())
    if area < 4:
        return [math.log(max(area, 1.0) / unit_area), 0.0, 1.0, 1.0, 0.0, 0.0]
    ys, xs = np.nonzero(mask)
    cov = np.cov(np.stack([xs, ys]).astype(np.float64)) if len(xs) > 2 else np.eye(2)
    ev = np.sort(np.linalg.eigvalsh(cov + 1e-6 * np.eye(2)))
    elong = math.sqrt(max(ev[1], 1e-6) / max(ev[0], 1e-6))
    m8 = mask.astype(np.uint8)
    contours, _ = cv2.findContours(m8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cnt = max(contours, key=cv2.contourArea) if contours else None
    if cnt is not None and len(cnt) >= 3:
        # both areas from the outline (the pixel count is larger than the area inside the pixel-centre contour)
        c_area = cv2.contourArea(cnt)
        hull = cv2.contourArea(cv2.convexHull(cnt))
        perim = cv2.arcLength(cnt, True)
        solidity = min(1.0, c_area / max(hull, 1.0))
        circ = min(1.5, 4.0 * math.pi * c_area / max(perim * perim, 1.0))
    else:
        solidity, circ = 1.0, 1.0
    dist = cv2.distanceTransform(m8, cv2.DIST_L2, 3)
    dmax = float(dist.max())
    vals = g[mask]
    dark = bg - float(vals.mean())  # how much darker than the background the cell stains
    centre = dist > 0.6 * dmax
    ring = (dist > 0) & (dist <= 0.45 * dmax)
    if centre.any() and ring.any():
        # central pallor: how much lighter the centre is than the rim, as a share of the rim's darkness
        pallor = (float(g[centre].mean()) - float(g[ring].mean())) / max(bg - float(g[ring].mean()), 1.0)
    else:
        pallor = 0.0
    return [math.log(area / unit_area), math.log(elong), solidity, circ, float(np.clip(pallor, -1.0, 1.5)),
            math.log(max(dark, 1.0) / max(unit_density, 1.0))]


def _window(img: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """The ``side`` x ``side`` window of ``img`` at (x0, y0); what lies outside the image is mirrored in."""
    import cv2

    H, W = img.shape[:2]
    a, b = min(max(x0, 0), W - 1), min(max(y0, 0), H - 1)
    c, d = max(min(x0 + side, W), a + 1), max(min(y0 + side, H), b + 1)
    part = img[b:d, a:c]
    pads = (b - y0, y0 + side - d, a - x0, x0 + side - c)  # top, bottom, left, right
    if not any(pads):
        return np.ascontiguousarray(part)
    mode = cv2.BORDER_REFLECT_101 if min(part.shape[:2]) > 1 and max(pads) < min(part.shape[:2]) else cv2.BORDER_REPLICATE
    return cv2.copyMakeBorder(np.ascontiguousarray(part), *[max(0, v) for v in pads], mode)


def rbc_crops(image: np.ndarray, cells: Cells, idx: Sequence[int] | None = None, size: int = CROP_PX,
              field_diameters: float = CROP_FIELD_DIAMETERS, median_area: float | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(crops uint8 (n, size, size, 4): RGB and the cell's mask x255, features float32 (n, len(FEATURES)),
    indices) of the red cells ``idx`` (default: every cell of kind rbc) of one field.

    The window is ``field_diameters`` median red-cell diameters of *this field* wide, centred on the cell's
    box: the same window for every cell of a field, so that a macrocyte fills more of it than a normal cell.
    ``median_area`` (px) is the field's median red cell (default: the median of every rbc of ``cells``).
    """
    import cv2

    if idx is None:
        idx = np.nonzero(cells.kind == "rbc")[0]
    idx = np.asarray(idx, int)
    n = len(idx)
    crops = np.zeros((n, size, size, 4), np.uint8)
    feats = np.zeros((n, len(FEATURES)), np.float32)
    if n == 0:
        return crops, feats, idx
    img = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    img = img[..., :3]
    H, W = img.shape[:2]
    if median_area is None:
        median_area = float(np.median(rbc_areas(cells, np.nonzero(cells.kind == "rbc")[0])))
    med = float(median_area)
    # the window follows the field's median red cell even with mpp (the crop shows cells at the field's own
    # scale); the size feature is relative to a 7.5 um disc when mpp is known
    mpp = getattr(cells.meta, "mpp", None)
    unit = field_scale(np.array([med]), mpp)
    side = max(8, int(round(field_diameters * _disc_diameter(med))))
    bg = float(np.percentile(_grey(img[:: max(1, H // 200), :: max(1, W // 200)]), 90))  # smear background is bright
    rows = []
    for j, i in enumerate(idx):
        x1, y1, x2, y2 = cells.xyxy[i]
        x0 = int(round((x1 + x2) / 2.0 - side / 2.0))
        y0 = int(round((y1 + y2) / 2.0 - side / 2.0))
        win = _window(img, x0, y0, side)  # only the window is copied, never the whole image
        m = _full_cell_mask(cells, i, x0, y0, side, side)
        m8 = m.astype(np.uint8) * 255
        if side > FEATURE_MAX_SIDE:  # shrunk once: features in its px (the unit likewise), the crop from it
            win = cv2.resize(win, (FEATURE_MAX_SIDE, FEATURE_MAX_SIDE), interpolation=cv2.INTER_AREA)
            m8 = cv2.resize(m8, (FEATURE_MAX_SIDE, FEATURE_MAX_SIDE), interpolation=cv2.INTER_AREA)
            m = m8 >= 128
        crops[j, :, :, :3] = cv2.resize(win, (size, size), interpolation=cv2.INTER_AREA)
        crops[j, :, :, 3] = cv2.resize(m8, (size, size), interpolation=cv2.INTER_AREA)
        rows.append((_grey(win), m))
    k2 = (FEATURE_MAX_SIDE / side) ** 2 if side > FEATURE_MAX_SIDE else 1.0
    darks = [bg - float(gw[m].mean()) if m.any() else 1.0 for gw, m in rows]
    unit_density = float(np.median(darks)) if darks else 1.0
    for j, (gw, m) in enumerate(rows):
        feats[j] = _one_cell(gw, m, bg, unit * k2, unit_density)
    return crops, feats, idx


# ---------------------------------------------------------------------- ICSH 2015 grading
ICSH_REFERENCE = ("Palmer L, Briggs C, McFadden S, et al. ICSH recommendations for the standardization of "
                  "nomenclature and grading of peripheral blood cell morphological features. "
                  "Int J Lab Hematol 2015;37:287-303 (Table 2)")
GRADES: tuple[str, ...] = ("0", "1+", "2+", "3+")
ICSH_GRADES: dict[str, tuple[float, float, float]] = {
    # type: (lowest percent of 1+, highest percent of 1+, highest percent of 2+); above the last is 3+.
    # ICSH's Table 2 gives integer ranges ("11-20 %", "21-50 %", "> 50 %"); a share between two of them
    # (20.4 %) takes the lower grade, a share under the 1+ range is graded 0.
    # Size and haemoglobin: 1+ 11-20 %, 2+ 21-50 %, 3+ > 50 %.
    "macrocyte": (11.0, 20.0, 50.0),
    "microcyte": (11.0, 20.0, 50.0),
    "hypochromia": (11.0, 20.0, 50.0),
    # Poikilocytes of intact cells: 1+ 5-20 %, 2+ 21-50 %, 3+ > 50 %.
    "spherocyte": (5.0, 20.0, 50.0),
    "target_cell": (5.0, 20.0, 50.0),
    "stomatocyte": (5.0, 20.0, 50.0),
    "ovalocyte": (5.0, 20.0, 50.0),
    "elliptocyte": (5.0, 20.0, 50.0),
    "teardrop": (5.0, 20.0, 50.0),  # ICSH: dacrocytes
    "burr_cell": (5.0, 20.0, 50.0),  # ICSH: echinocytes (burr cells)
    # Schistocytes (fragments): 1+ < 1 %, 2+ 1-2 %, 3+ > 2 %. 1 % is also ICSH's threshold for suspecting a
    # thrombotic microangiopathy (Zini et al., Int J Lab Hematol 2012; 2021 update).
    "schistocyte": (0.0, 1.0, 2.0),
}
FLAG_CODES: dict[str, str] = {
    "macrocyte": "macrocytes", "microcyte": "microcytes", "spherocyte": "spherocytes", "target_cell": "target_cells",
    "stomatocyte": "stomatocytes", "ovalocyte": "ovalocytes", "teardrop": "teardrop_cells", "burr_cell": "burr_cells",
    "schistocyte": "schistocytes", "hypochromia": "hypochromia", "elliptocyte": "elliptocytes",
}
FLAG_MIN_GRADE = 2  # a type is flagged from 2+ (moderate) up
ICSH_MIN_RBC = 1000  # ICSH counts schistocytes as a percentage of at least 1000 red cells


def icsh_grade(morphology: str, percent: float) -> str:
    """The ICSH grade ("0", "1+", "2+", "3+") of ``percent`` of red cells of one type; "normal" has none
    (raises KeyError). A share of 0 is always "0"."""
    if morphology not in ICSH_GRADES:
        raise KeyError(f"no ICSH grade for {morphology!r}; graded types: {sorted(ICSH_GRADES)}")
    p = float(percent)
    if not p > 0:
        return "0"
    lo1, hi1, hi2 = ICSH_GRADES[morphology]
    if morphology == "schistocyte":  # 1+ "< 1 %": any fragment below 1 %; 2+ "1-2 %" from 1 % exactly
        return "3+" if p > hi2 else "2+" if p >= hi1 else "1+"
    return "3+" if p > hi2 else "2+" if p > hi1 else "1+" if p >= lo1 else "0"


def morphology_counts(types: Sequence[str | None]) -> dict[str, int]:
    """Count of each morphology type among typed red cells (None: not typed), every type present."""
    by = Counter(t for t in types if t is not None)
    return {t: int(by.get(t, 0)) for t in RBC_MORPHOLOGY}


# A field whose typed red cells have a median morphology score under this is unlike the training fields
# (another camera, stain or focus): its grades are reported but not flagged. Chula validation fields: median
# score 0.85 at the lowest (5th percentile 0.87; test fields 0.86, one 0.78); 12 BCCD test fields (a blurry
# phone-camera microscope, where most red cells came out "spherocyte"): 0.54-0.82. Chosen on validation.
MIN_FIELD_SCORE = 0.84


def morphology_summary(counts: dict[str, int], median_score: float | None = None) -> tuple[dict[str, Any], list[dict]]:
    """(``summary.rbc_morphology``, flags) from the count of each type among the typed red cells
    (:func:`morphology_counts`): a field's, or a slide's summed over all its fields (batch).

    ``rbc_morphology`` has ``red_cells`` (the base), ``reference``, and per type of ``RBC_MORPHOLOGY``
    ``{count, percent, grade}`` (``grade`` None for normal). A type graded 2+ or more is flagged
    (``FLAG_CODES``), unless ``median_score`` (the median ``morphology_score`` of the typed cells) is under
    ``MIN_FIELD_SCORE``: then ``unfamiliar`` is true and one ``rbc_morphology_unfamiliar`` flag stands in
    for the grade flags."""
    n = int(sum(counts.get(t, 0) for t in RBC_MORPHOLOGY))
    out: dict[str, Any] = {"red_cells": n}
    flags = []
    unfamiliar = median_score is not None and n > 0 and float(median_score) < MIN_FIELD_SCORE
    for t in RBC_MORPHOLOGY:
        c = int(counts.get(t, 0))
        pct = round(100.0 * c / n, 2) if n else 0.0
        grade = None if t == "normal" else icsh_grade(t, pct)
        out[t] = {"count": c, "percent": pct, "grade": grade}
        if grade is not None and GRADES.index(grade) >= FLAG_MIN_GRADE and not unfamiliar:
            few = f"; graded on {n} red cells, ICSH counts at least {ICSH_MIN_RBC}" if n < ICSH_MIN_RBC else ""
            flags.append({"code": FLAG_CODES[t], "grade": grade, "message":
                          f"{t.replace('_', ' ')}: {pct}% of red cells, ICSH grade {grade}{few}; review the red-cell gallery"})
    out["reference"] = "ICSH 2015 (Palmer et al., Int J Lab Hematol 37:287)"
    if median_score is not None and n:
        out["median_score"] = round(float(median_score), 4)
        out["unfamiliar"] = bool(unfamiliar)
    if unfamiliar:
        flags.append({"code": "rbc_morphology_unfamiliar", "message": (
            f"the red cells look unlike the fields the morphology model was trained on (median score "
            f"{float(median_score):.2f} < {MIN_FIELD_SCORE}; one lab's camera and stain): types and grades are not "
            "reliable, so no grade is flagged; review the red-cell gallery")})
    return out, flags
