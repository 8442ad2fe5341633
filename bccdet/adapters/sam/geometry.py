"""Box, window and mask geometry of the SAM adapter (numpy; torch / cv2 imported inside the functions)."""

from __future__ import annotations

import math

import numpy as np


def bilinear_crop(img, out_size: tuple[int, int], window: tuple[int, int, int, int]):
    """``F.interpolate(img[:, None], out_size, mode="bilinear", align_corners=False)[:, 0, y0:y1, x0:x1]``
    for ``window = (y0, y1, x0, x1)``, computing only the window's pixels. ``img``: (n, h, w) tensor."""
    import torch

    h, w = img.shape[-2:]

    def axis(n_in: int, n_out: int, a: int, b: int):
        src = ((torch.arange(a, b, dtype=torch.float32, device=img.device) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
        i0 = src.floor().long().clamp(max=n_in - 1)
        return i0, (i0 + 1).clamp(max=n_in - 1), (src - i0).to(img.dtype)

    (y0, y1, x0, x1), (oh, ow) = window, out_size
    yi0, yi1, ly = axis(h, oh, y0, y1)
    xi0, xi1, lx = axis(w, ow, x0, x1)
    top, bot = img[:, yi0], img[:, yi1]
    top = top[:, :, xi0] * (1 - lx) + top[:, :, xi1] * lx
    bot = bot[:, :, xi0] * (1 - lx) + bot[:, :, xi1] * lx
    return top * (1 - ly)[:, None] + bot * ly[:, None]


def clip_boxes(boxes, W: int, H: int) -> np.ndarray:
    b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, W)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, H)
    return b


def _inside_box(mask: np.ndarray, offset, box) -> int:
    """Pixels of a mask crop (top-left at ``offset``) that fall inside ``box``."""
    x0, y0 = int(offset[0]), int(offset[1])
    bx0, by0 = max(0, int(math.floor(box[0])) - x0), max(0, int(math.floor(box[1])) - y0)
    bx1, by1 = max(0, int(math.ceil(box[2])) - x0), max(0, int(math.ceil(box[3])) - y0)
    return int(mask[by0:by1, bx0:bx1].sum())


def _box_area(box, W: int, H: int) -> float:
    b = clip_boxes(box, W, H)[0]
    return float((b[2] - b[0]) * (b[3] - b[1]))


def _grow(box, pad: float) -> np.ndarray:
    w, h = box[2] - box[0], box[3] - box[1]
    return np.asarray(box, np.float32) + np.array([-w, -h, w, h], np.float32) * pad


def _window(box, context: float, W: int, H: int) -> tuple[int, int, int, int]:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(box[2] - box[0], box[3] - box[1], 4.0) * (1 + 2 * context)
    x0, y0 = int(math.floor(cx - side / 2)), int(math.floor(cy - side / 2))
    x1, y1 = int(math.ceil(cx + side / 2)), int(math.ceil(cy + side / 2))
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected component and fill its holes (cells are simply connected blobs)."""
    import cv2

    m = np.asarray(mask, np.uint8)
    if m.size == 0 or not m.any():
        return m.astype(bool)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n > 2:
        k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        m = (lab == k).astype(np.uint8)
    cnts, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros_like(m)
    cv2.drawContours(out, cnts, -1, 1, thickness=-1)
    return out.astype(bool)


def resolve_overlaps(boxes: np.ndarray, masks: list, offsets: np.ndarray, shape: tuple[int, int]) -> list:
    """Touching cells: a pixel claimed by several masks goes to the cell whose box centre is nearest
    (in units of that box's half size), so no mask covers its neighbour."""
    H, W = shape
    n = len(masks)
    if n < 2:
        return masks
    owner = np.full((H, W), -1, np.int32)
    best = np.full((H, W), np.inf, np.float32)
    for i, (m, (x0, y0)) in enumerate(zip(masks, offsets)):
        if m is None or not m.size:
            continue
        h, w = m.shape
        b = boxes[i]
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        hw, hh = max((b[2] - b[0]) / 2, 1.0), max((b[3] - b[1]) / 2, 1.0)
        yy, xx = np.mgrid[y0:y0 + h, x0:x0 + w]
        d = np.hypot((xx + 0.5 - cx) / hw, (yy + 0.5 - cy) / hh).astype(np.float32)
        d = np.where(m, d, np.inf)
        sub_b, sub_o = best[y0:y0 + h, x0:x0 + w], owner[y0:y0 + h, x0:x0 + w]
        win = d < sub_b
        sub_b[win] = d[win]
        sub_o[win] = i
    out = []
    for i, (m, (x0, y0)) in enumerate(zip(masks, offsets)):
        if m is None or not m.size:
            out.append(m)
            continue
        h, w = m.shape
        out.append(m & (owner[y0:y0 + h, x0:x0 + w] == i))
    return out


def _object_array(items) -> np.ndarray:
    """A 1-D object array of per-cell masks (np.array would stack same-shaped masks into one 3-D array)."""
    out = np.empty(len(items), dtype=object)
    for i, m in enumerate(items):
        out[i] = m
    return out


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.logical_and(a, b).sum()
    union = np.logical_or(a, b).sum()
    return float(inter / union) if union else 0.0
