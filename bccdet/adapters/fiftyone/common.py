"""Names shared by the FiftyOne adapter modules: field names, tags, the tagging rule, result types, and
the lazy ``fiftyone`` import (``_fo``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ...io import InputError

GT_FIELD = "ground_truth"
PRED_FIELD = "predictions"
EMB_FIELD = "bccdet_embedding"
EMBED_RUNTIME = "torch"  # backbone embeddings are a forward hook on the detector's torch network
EVAL_KEY = "eval"  # class-wise evaluation: per-sample eval_tp / eval_fp / eval_fn, per-class report
AGN_KEY = "eval_agnostic"  # class-agnostic matching used by the tagging rule
INFO_KEY = "bccdet"

# label tags written by the tagging rule (removed and rewritten on every run)
TAG_MISSING = "possible_missing"  # on a prediction: a cell the labels do not have
TAG_SPURIOUS = "possible_spurious"  # on a ground-truth box: no cell found there
TAG_CLASS = "possible_class"  # on a ground-truth box: the detector, confident, says another kind
TAG_LOC = "possible_loc"  # on a ground-truth box: box badly placed (low IoU with a confident prediction)
LABEL_TAGS = (TAG_MISSING, TAG_SPURIOUS, TAG_CLASS, TAG_LOC)
SAMPLE_TAG = "suspect"
# classification tags (on samples)
TAG_MISLABEL = "possible_mislabel"
TAG_DUP = "duplicate"
TAG_DUP_CONFLICT = "duplicate_conflict"
TAG_NEAR_DUP = "near_duplicate"
CLS_TAGS = (TAG_MISLABEL, TAG_DUP, TAG_DUP_CONFLICT, TAG_NEAR_DUP, SAMPLE_TAG)
# tags a reviewer sets in the App; export_labels(corrected=True) applies them
TAG_ACCEPT = "accept"  # on a prediction: add it to the labels
TAG_REJECT = "reject"  # on a ground-truth box: remove it
TAG_EXCLUDE = "exclude"  # on a sample: leave the image out of the export

SPLITS = ("train", "val", "test")


class CurationError(InputError):
    """Unusable input or a refused operation (one line, exit status 2)."""


@dataclass
class Rule:
    """The tagging rule (docs/curation.md, "Tagging rule"); thresholds are CLI options."""

    iou: float = 0.5  # a prediction and a label box match at IoU >= iou (class-agnostic)
    missing_conf: float = 0.5  # unmatched prediction at least this confident ...
    missing_max_iou: float = 0.3  # ... overlapping no label box by more than this -> possible_missing
    spurious_max_iou: float = 0.3  # unmatched label box overlapping no prediction by more than this -> possible_spurious
    class_mistakenness: float = 0.75  # matched, other kind, brain mistakenness >= this -> possible_class
    loc_mistakenness: float = 0.8  # matched, brain mistakenness_loc >= this -> possible_loc


@dataclass
class Suspect:
    sample_id: str
    filepath: str
    label_id: str
    field: str
    kind: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    reason: str
    score: float
    detail: str = ""


@dataclass
class CurationSummary:
    name: str
    samples: int = 0
    added: int = 0
    kept: int = 0
    predicted: int = 0
    unmatched_reports: int = 0
    timings: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    eval_report: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def _fo():
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    import fiftyone as fo

    return fo
