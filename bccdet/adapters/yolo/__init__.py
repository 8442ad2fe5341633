"""ultralytics YOLOv8(-seg) <-> bccdet: offline set-up, training with a transferred backbone, prediction.

- ``detector``: offline set-up, loading, torch threads, ``YoloDetector`` (tiles, scale, edge slivers) and its constants;
- ``training``: ``train``, ``build_model`` (backbone transfer), ``BoxTargets``, ``GrayAugment``;
- ``evaluation``: ``evaluate`` with the validator that scores what ``YoloDetector`` returns, ``format_metrics``.

Every name is re-exported here (``from bccdet.adapters.yolo import YoloDetector``). ultralytics and torch are
imported inside the functions only.
"""

from .detector import (
    BORDER,
    EDGE_SLIVER,
    MAX_RBC_SIDE,
    MAX_UPSCALE,
    MIN_RBC_SIDE,
    PLATELET_AS_RBC_AREA,
    TRAINED_RBC_SIDE,
    UPSCALE_MAX_PIXELS,
    UPSCALE_RBC_SIDE,
    WBC_PER_RBC_SIDE,
    YoloDetector,
    drop_edge_slivers,
    edge_sliver_drop,
    load_yolo,
    parse_scale,
    rbc_sized_platelets,
    restore_threads,
    results_to_cells,
    setup_offline,
    tile_spans,
    torch_threads,
    trained_imgsz,
    unpad,
)
from .evaluation import evaluate, format_metrics
from .training import BoxTargets, GrayAugment, build_model, tau_fibrils_checkpoint, train

# private helpers, still reachable where bccdet/adapters/yolo.py had them
from .detector import _any_ttf, _median_side, _rbc_side  # noqa: F401
from .evaluation import _pipeline_validator  # noqa: F401
from .training import _keep_threads, _label_boxes, _train  # noqa: F401

__all__ = [
    "BORDER", "EDGE_SLIVER", "MAX_RBC_SIDE", "MAX_UPSCALE", "MIN_RBC_SIDE", "PLATELET_AS_RBC_AREA", "TRAINED_RBC_SIDE",
    "UPSCALE_MAX_PIXELS", "UPSCALE_RBC_SIDE", "WBC_PER_RBC_SIDE", "BoxTargets", "GrayAugment", "YoloDetector",
    "build_model", "drop_edge_slivers", "edge_sliver_drop", "evaluate", "format_metrics", "load_yolo", "parse_scale",
    "rbc_sized_platelets", "restore_threads", "results_to_cells", "setup_offline", "tau_fibrils_checkpoint",
    "tile_spans", "torch_threads", "train", "trained_imgsz", "unpad",
]
