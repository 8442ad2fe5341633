"""Defaults shared by the library, the CLI and the adapters, each defined once (imports nothing).

The CLI's options show these values; the adapters use them as keyword defaults. Changing one here changes
it everywhere (and the figures measured with it: see docs/models.md).
"""

# detector (adapters.yolo)
SCALE = "auto"        # resize a high-resolution camera's field to the trained cell size; upscale a low-magnification one

# A red cell cut by the image border is left out when what shows of it, across that border, is under this
# share of the field's median red-cell side. Neither BCCD nor TXL-PBC labels such slivers; counting them
# inflated red-cell counts by a quarter (TXL-PBC val at conf 0.25: +3.3 per field on 13.3). Chosen on TXL-PBC
# val (merged val split; docs/experiments.md, "Red-cell slivers at the image border"): 0.4 leaves out 606 of the 835 border false
# positives and 10 of 1,521 border cells that were labelled. Those figures are for the bare image; with BORDER
# (below) the detector itself reports few slivers, and the rule takes the count error from +0.15 to +0.07 per field.
EDGE_SLIVER = 0.4

# Grey (114, as ultralytics' letterbox) border, in network pixels, put around every image the detector sees:
# ultralytics' validator adds half a stride on each side, and the models score better with it than on the bare
# image as ultralytics' predictor gives it (no border on a 640 x 480 field): BCCD test box mAP50 0.907 vs
# 0.895 and TXL-PBC val 0.978 vs 0.969 (docs/experiments.md, "A grey border around every image"). Without it the detector also
# reports slivers of red cells cut by the image border that no label set has.
BORDER = 16
TILE = 640            # tile side for images larger than the detector's input (batch, whole-slide bands)
TILE_OVERLAP = 192    # overlap between tiles

# inference runtime of the networks (bccdet.runtime.RUNTIMES): detector, SAM image encoder, WBC classifier.
# "auto" is OpenVINO on a CPU where the package is installed (same boxes, masks and labels in about half of
# torch's time: docs/sam.md, python -m bench.detector_runtime / bench.classifier_runtime), else torch
RUNTIME = "auto"

# classifier (adapters.classifier)
CLASSIFY_BATCH = 32   # crops per forward pass
# fp32 on either runtime: OpenVINO bf16 is 1.6x faster per crop but kept 99.91 % of torch's labels on PBC
# test (accuracy 0.9883 against 0.9891; python -m bench.classifier_runtime); the model card's figures hold
CLASSIFIER_PRECISION = "fp32"
