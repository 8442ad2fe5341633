"""Mask priors made from boxes alone (below both ``convert`` and ``adapters``, which use them)."""

from __future__ import annotations

import numpy as np

from .types import Cells


def ellipse_masks(cells: Cells) -> Cells:
    """Give each box-only cell the ellipse inscribed in its box (a quick box -> mask prior)."""
    import cv2

    crops, offs = [], []
    for box in cells.xyxy:
        c, o = Cells.crop_mask(np.zeros((cells.meta.height, cells.meta.width), bool), box)
        m = np.zeros(c.shape, np.uint8)
        if m.size:
            hh, ww = m.shape
            # RotatedRect form: centre and full axes in float pixels
            cv2.ellipse(m, (((ww - 1) / 2.0, (hh - 1) / 2.0), (float(ww), float(hh)), 0.0), 1, -1)
        crops.append(m.astype(bool))
        offs.append(o)
    return Cells(
        xyxy=cells.xyxy, kind=cells.kind, score=cells.score, masks=crops, mask_offset=offs,
        mask_source=["label"] * len(cells), meta=cells.meta,
    )
