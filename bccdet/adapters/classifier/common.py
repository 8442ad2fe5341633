"""Constants shared by the classifier's modules: checkpoint format, crop geometry, normalisation, review
threshold, the training recipe, and :class:`ClassifierError`."""

from __future__ import annotations

from typing import Any

from ...io import InputError
from ...vocab import ABNORMAL_LABELS


FORMAT = "bccdet-classifier/1"
ARCH = "tf_efficientnet_lite0"
IMGSZ = 160
CROP_MARGIN = 0.5
REVIEW_THRESHOLD = 0.6
# The package weights expect ImageNet normalisation: the stem BN running variance matches the conv
# output variance of natural-ish images with these values (ratio ~1.1) and not with 0.5/0.5 (ratio ~0.2).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
REVIEW_LABELS = frozenset(ABNORMAL_LABELS)
# An unfamiliar cell (unlike the training cells) gets an abnormal label only with at least this much of the
# probability, else its most probable normal type: the majority rule, not a fitted value. Measured
# (python -m bench.classifier_domains, 2026-12-04): Raabin field cells 0.438 -> 0.500, wbc-seg 0.63 -> 0.68,
# PBC test and DeepAPL blast recall unchanged (docs/models.md, "White cells of other labs").
UNFAMILIAR_ABNORMAL_MIN = 0.5

DEFAULT_RECIPE: dict[str, Any] = {
    "arch": ARCH,
    "imgsz": IMGSZ,
    "cache_pad": 64,  # training cache is decoded at imgsz + cache_pad (headroom for the zoom-in)
    "margin": CROP_MARGIN,
    "epochs": 12,
    "freeze_epochs": 1,
    "batch": 32,
    "lr": 1e-3,
    "min_lr_ratio": 0.01,
    "warmup_frac": 0.05,
    "weight_decay": 0.05,
    "label_smoothing": 0.1,
    "drop_rate": 0.2,
    "drop_path_rate": 0.1,
    "balance": 0.5,  # class sampling probability ~ n_c ** balance (0: balanced, 1: natural)
    "aug": {
        "scale": [0.3, 1.2],  # area fraction of the context (side 0.55-1.1), area-uniform
        "aspect": [0.9, 1.1],
        "shift": 0.08,  # centre jitter, fraction of the half side: imperfect detector boxes
        "rotate": True,  # any angle (cells have no orientation) + horizontal flip
        # share of crops whose CIELAB mean is redrawn and spread rescaled (RandStainNA-style; 0: off). The
        # ranges span the crops of six sources (PBC, DeepAPL, wbc-seg, BCCD, TXL-PBC's Raabin and BCD fields,
        # Chula): L 55-85 (Raabin's phone camera is darker than CellaVision's ~80), a -3..20, b -6..10
        "lab_p": 0.0, "lab_mean": [[55.0, 85.0], [-3.0, 20.0], [-6.0, 10.0]], "lab_std": [0.6, 1.4],
        "lab_ab_std": [0.6, 2.4],
        "hed_alpha": 0.08, "hed_beta": 0.03,  # stain-like jitter in optical-density (HED) space
        "hue_deg": 25.0, "saturation": [0.6, 1.3], "brightness": 0.08, "contrast": [0.75, 1.25],
        "gain": 0.08,  # per-channel colour cast (BCCD is bluish)
        "blur_p": 0.5, "blur_sigma": [0.2, 1.6],  # at imgsz 160; scaled with imgsz
        "down_p": 0.2, "down_factor": [0.4, 0.8],
        "jpeg_p": 0.2, "jpeg_quality": [40, 90],
        "noise_p": 0.3, "noise_std": 0.03,
    },
}


# Forward passes on CPU take at most this many crops: on the 2-core dev machine the 288 px model costs
# 8.3 / 8.6 / 8.9 / 15.5 ms per crop at 4 / 8 / 16 / 32 crops per pass (glibc thresholds raised,
# bccdet.runtime.tune_malloc), so bigger chunks only add memory.
CPU_MAX_BATCH = 16


class ClassifierError(InputError):
    """A classifier checkpoint or the backbone weights are unusable; the message is one line."""
