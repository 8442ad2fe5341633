"""Crops: one crop function for training, evaluation and ``analyze``.

Crops (:func:`cell_crop`) are THE one geometry used in training, evaluation and ``analyze``: a square
centred on the cell box, side ``max(w, h) * (1 + 2 * margin)``, padded with the image's median border
colour where it leaves the image, resized to ``imgsz``. With the default ``margin`` of 0.5 the cell
spans about half the crop side.

Single-cell images (CellaVision exports: PBC 360x363 JPG or its 256x256 WebP copy, DeepAPL 224x224)
have no box: they are treated as *context*. :func:`single_cell_box` returns the centred box whose
``cell_crop`` is exactly the largest centred square of the image, resized (so the original JPG and the
resized WebP copy give nearly the same crop). In PBC the WBC box spans a median 0.39 of the image side
(p10-p90 0.31-0.48; 501 TXL-PBC boxes on PBC images), so training zooms in at random (crop side
0.55-1.1 of the image, area-uniform) and the cell spans ~0.35-0.7 of the training crops; a field crop
at margin 0.5 shows the cell at 0.5 of the side, inside that range for every class. The price: crops
of detected cells are box-relative, so the cell's absolute size (lymphocyte < monocyte) is not a cue
at inference, and the wide zoom range keeps the model from relying on it in training. Estimating the
cell box in single-cell images (to apply the field margin literally) was measured and rejected: the
nucleus is easy to find but cell/nucleus side ratios spread 1.14-1.71 (p10-p90, wbc-seg masks), and
cytoplasm cannot be separated from touching red cells by thresholds. ``evaluate(context=0.78)``
checks the model on framings like field crops (0.39 / 0.78 = 0.5).

Platelets: with ``platelets=True`` the stage also classifies platelet boxes; their crops are
box-relative too (the platelet fills half the crop) while PBC platelet images show a small platelet in
a wide context, so platelet labels from fields are less reliable; off by default.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .common import CROP_MARGIN, IMGSZ


def border_color(image: np.ndarray) -> np.ndarray:
    """Median RGB of the image's outermost pixel rows and columns (the smear background, usually)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]], axis=0).reshape(-1, a.shape[2])
    return np.median(edge[:, :3], axis=0).astype(np.uint8)


def cell_crop(image: np.ndarray, box: Sequence[float], margin: float = CROP_MARGIN, size: int = IMGSZ,
              fill: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
    """Square crop around a cell, resized to ``size`` x ``size`` (RGB uint8).

    The square is centred on the box centre with side ``max(w, h) * (1 + 2 * margin)`` (at least 2 px);
    where it leaves the image it is padded with ``fill`` (default: :func:`border_color`, pass it when
    cutting many cells from one image). Down-scaling uses area averaging, up-scaling bilinear.
    """
    import cv2

    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    h, w = img.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    side = max(2, int(round(max(x2 - x1, y2 - y1, 1.0) * (1.0 + 2.0 * margin))))
    x0 = int(math.floor(cx - side / 2.0 + 0.5))
    y0 = int(math.floor(cy - side / 2.0 + 0.5))
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + side), min(h, y0 + side)
    if sx0 == x0 and sy0 == y0 and sx1 == x0 + side and sy1 == y0 + side:
        crop = img[y0:y0 + side, x0:x0 + side]
    else:
        col = border_color(img) if fill is None else np.asarray(fill, np.uint8).reshape(3)
        crop = np.empty((side, side, 3), np.uint8)
        crop[:] = col
        if sx1 > sx0 and sy1 > sy0:
            crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[sy0:sy1, sx0:sx1]
    if side != size:
        interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        crop = cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=interp)
    return np.ascontiguousarray(crop, dtype=np.uint8)


def single_cell_box(image: np.ndarray, margin: float = CROP_MARGIN) -> tuple[float, float, float, float]:
    """The "cell box" of a single-cell image: centred, side ``min(h, w) / (1 + 2 * margin)``.

    ``cell_crop(image, single_cell_box(image, m), m)`` is the largest centred square of the image:
    the whole image is the cell's context (module docstring).
    """
    h, w = np.asarray(image).shape[:2]
    s = min(h, w) / (1.0 + 2.0 * margin)
    cx, cy = w / 2.0, h / 2.0
    return (cx - s / 2.0, cy - s / 2.0, cx + s / 2.0, cy + s / 2.0)


def single_cell_crop(image: np.ndarray, margin: float = CROP_MARGIN, size: int = IMGSZ) -> np.ndarray:
    return cell_crop(image, single_cell_box(image, margin), margin, size)
