"""The refiner stage (:class:`SamRefiner`, its :class:`RefinePolicy` and default model) and box -> mask
labelling of data sets (:func:`box_to_mask_cells`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ...defaults import RUNTIME
from ...masks import ellipse_masks
from ...types import Cells
from .geometry import _box_area, _inside_box, _object_array, largest_component, mask_iou, resolve_overlaps
from .model import LITEMEDSAM, WINDOW_CONTEXT, SamModel, litemedsam_checkpoint


@dataclass(frozen=True)
class RefinePolicy:
    """When a SAM mask may replace the detector's (all must hold); otherwise the detector's mask stays.

    fill: SAM mask area inside the box / box area within [min_fill, max_fill] (an ellipse fills 0.785
    of its box; a mask filling the whole box is SAM giving up, not a round cell);
    spill: share of the SAM mask outside the box <= max_spill (boxes are a little off, not far off);
    agree: IoU with the detector's mask >= min_iou_with_detector (when the detector gave a mask);
    score: SAM's own predicted IoU >= min_sam_score.
    The SAM mask is cut to the box (the detector's box is the cell's extent) and reduced to its largest
    component with holes filled before these checks.
    """

    min_fill: float = 0.45
    max_fill: float = 0.95
    max_spill: float = 0.25
    min_iou_with_detector: float = 0.5
    min_sam_score: float = 0.5


def refiner_entry(checkpoint: str | None = None, window_size: int = 128) -> dict:
    """What ``SamRefiner(checkpoint)`` loads, without loading it: ``{"path": file or None (LiteMedSAM from its
    package), "name": as SamRefiner names it, "sha256"}``. ``checkpoint``: None (the registry's default ``sam``
    model, our fine-tuned decoder, if one is registered, else LiteMedSAM as shipped), ``"litemedsam"``, a
    checkpoint file, or a registered ``sam`` name. A registered file that is missing or altered is an error,
    not a fallback."""
    from ...io import sha256_file
    from ...weights import default_name, resolve

    if checkpoint == LITEMEDSAM or (checkpoint is None and default_name("sam") is None):
        return {"path": None, "name": refiner_name(LITEMEDSAM, window_size), "sha256": litemedsam_checkpoint()[1]}
    if checkpoint is not None and Path(checkpoint).is_file():
        p, sha = Path(checkpoint), sha256_file(checkpoint)
    else:
        p, _, sha = resolve(checkpoint, "sam")
    # SamModel names a fine-tuned decoder by its file stem
    return {"path": str(p), "name": refiner_name(p.stem, window_size), "sha256": sha}


def default_refiner(window_size: int = 128) -> dict:
    """What ``SamRefiner()`` loads with no checkpoint (:func:`refiner_entry` of None)."""
    return refiner_entry(None, window_size)


def refiner_name(model_name: str, window_size: int) -> str:
    return model_name + (f"@{window_size}" if window_size != 256 else "")


class SamRefiner:
    """Refiner stage: improves the masks of the cells of ``kinds`` (default WBCs and platelets) with SAM.

    Cells are prompted in windows (:meth:`SamModel.segment_windows`). Only a field-sized image (longest
    side at most ``field_max_side``) with more than ``max_windows`` such cells is encoded once as a whole
    (:meth:`SamModel.segment_field`, the image shrunk to 256 px), as the cheaper pass for crowded fields.
    Measured (2-core CPU, bf16 encoder): on the 17 BCCD fields with more than 4 WBCs and platelets,
    windows had 100 of 100 masks accepted at 436 ms per field, the field pass 78 at 477 ms; on a 2560 x
    1920 mosaic of 16 fields (39 cells) the field pass had 18 accepted, windows 39.
    """

    def __init__(self, checkpoint: str | Path | None = None, model_type: str | None = None, device: str = "cpu",
                 kinds: Sequence[str] = ("wbc", "platelet"), window_size: int = 128, context: float = WINDOW_CONTEXT,
                 policy: RefinePolicy = RefinePolicy(), threads: int | None = None, max_windows: int = 16,
                 sha256: str | None = None, precision: str = "auto", field_max_side: int = 1024,
                 runtime: str = RUNTIME):
        self.max_windows, self.field_max_side = int(max_windows), int(field_max_side)
        if checkpoint is None and model_type is None:  # our registered default (a fine-tuned decoder), if any
            d = default_refiner(window_size)
            checkpoint, sha256 = (d["path"], d["sha256"]) if d["path"] else (LITEMEDSAM, None)
        self.model = SamModel(checkpoint, model_type=model_type, device=device, threads=threads, sha256=sha256,
                              precision=precision, runtime=runtime)
        self.precision, self.runtime = self.model.precision, self.model.runtime
        self.name = refiner_name(self.model.name, window_size)
        self.sha256 = self.model.sha256
        self.kinds = tuple(kinds)
        self.window_size, self.context, self.policy = int(window_size), float(context), policy
        self.timings: dict = {}
        self.stats: dict = {}

    def __call__(self, image: np.ndarray, cells: Cells) -> Cells:
        self.timings, self.stats = {}, {"refined": 0, "kept_detector": 0}
        if not len(cells):
            return cells
        idx = np.flatnonzero(np.isin(cells.kind, self.kinds))
        if not len(idx):
            return cells
        H, W = np.asarray(image).shape[:2]
        if len(idx) <= self.max_windows or max(H, W) > self.field_max_side:
            self.stats["mode"] = "windows"
            masks, offs, ious = self.model.segment_windows(image, cells.xyxy[idx], self.window_size, self.context,
                                                           timings=self.timings)
        else:  # a crowded field: one encoder pass over the whole field is cheaper than a window each
            self.stats["mode"] = "field"
            masks, offs, ious = self.model.segment_field(image, cells.xyxy[idx], timings=self.timings)
        out = cells[np.arange(len(cells))]
        new_masks, new_offs, new_src = list(out.masks), out.mask_offset.copy(), out.mask_source.copy()
        for k, i in enumerate(idx):
            sam = largest_component(masks[k])
            det = None
            if cells.masks[i] is not None:
                det = cells.full_mask(i, (H, W))[offs[k][1]:offs[k][1] + sam.shape[0], offs[k][0]:offs[k][0] + sam.shape[1]]
            inside = _inside_box(sam, offs[k], cells.xyxy[i])
            if self.accept(sam, det, float(ious[k]), _box_area(cells.xyxy[i], W, H), inside):
                new_masks[i], new_offs[i], new_src[i] = sam, offs[k], "sam"
                self.stats["refined"] += 1
            else:
                self.stats["kept_detector"] += 1
        out.masks = _object_array(new_masks)
        out.mask_offset, out.mask_source = new_offs, new_src
        return out

    def accept(self, sam: np.ndarray, det: np.ndarray | None, sam_score: float, box_area: float,
               inside: int | None = None) -> bool:
        """``inside``: pixels of ``sam`` inside the cell's box (default: all of them)."""
        p = self.policy
        area = int(sam.sum())
        if sam.size == 0 or box_area <= 0 or area == 0:
            return False
        inside = area if inside is None else int(inside)
        fill, spill = inside / box_area, 1.0 - inside / area
        if not (p.min_fill <= fill <= p.max_fill) or spill > p.max_spill or sam_score < p.min_sam_score:
            return False
        if det is not None and det.any() and mask_iou(sam, det) < p.min_iou_with_detector:
            return False
        return True


def box_to_mask_cells(model: SamModel, image: np.ndarray, cells: Cells, mode: str = "field") -> Cells:
    """Box-only cells -> cells with SAM masks (labelling data sets); touching cells do not overlap.

    A mask that fails the fill or spill check (SAM found nothing sensible in the box) falls back to the ellipse
    inscribed in the box, and its ``mask_source`` says ``label``.
    """
    if not len(cells):
        return cells
    H, W = np.asarray(image).shape[:2]
    if mode == "field":
        masks, offs, _ = model.segment_field(image, cells.xyxy)
    else:
        masks, offs, _ = model.segment_windows(image, cells.xyxy)
    masks = [largest_component(m) for m in masks]
    masks = resolve_overlaps(cells.xyxy, masks, offs, (H, W))
    ell = ellipse_masks(cells)
    src = []
    for i, m in enumerate(masks):
        inside = _inside_box(m, offs[i], cells.xyxy[i])
        fill = inside / max(_box_area(cells.xyxy[i], W, H), 1.0)
        if not (0.4 <= fill <= 0.95) or m.sum() - inside > 0.25 * max(m.sum(), 1):
            masks[i], offs[i] = ell.masks[i], ell.mask_offset[i]
            src.append("label")
        else:
            src.append("sam")
    out = cells[np.arange(len(cells))]
    out.masks = _object_array(masks)
    out.mask_offset = np.asarray(offs, np.int32).reshape(-1, 2)
    out.mask_source = np.array(src, dtype=object)
    return out
