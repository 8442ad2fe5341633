"""FiftyOne <-> bccdet: curation of detection and classification data sets on a real FiftyOne database.

Everything FiftyOne-specific lives in this package (``fiftyone`` is imported inside functions only, through
``common._fo``; ``import bccdet`` never imports it):

* ``cells``: ``cells_to_detections`` / ``detections_to_cells``: ``Cells`` <-> ``fo.Detections``. FiftyOne wants
  each instance mask *cropped to its box* with a relative ``bounding_box = [x, y, w, h]`` in 0..1; bccdet keeps
  masks cropped to the integer hull of the box, so the conversion pastes the crop into that hull;
* ``load``: ``build_detection_dataset`` / ``build_classification_dataset``: a persistent dataset from a converted
  YOLO detect/segment folder or classify folder (ground truth). An existing dataset is only *updated* (new images
  added, ground truth and tags of the images already there kept); ``overwrite=True`` is needed to rebuild it,
  and a dataset that bccdet did not create is never touched without it; ``add_predictions_from_reports``:
  bccdet predictions from ``analyze`` report.json files;
* ``predict``: ``predict_detections`` runs the detector (the detector's backbone features become the image
  embeddings); ``classify_samples`` types cells with the leukocyte classifier;
* ``evaluate``: ``evaluate`` (``evaluate_detections``), ``brain_detection`` (fiftyone.brain mistakenness /
  hardness / uniqueness); ``mistakes``: ``tag_detection_suspects``, the documented tagging rule (docs/curation.md);
* ``classification``: for PBC-style classify folders: mistakenness of class labels from classifier
  probabilities, exact duplicates by content hash, near duplicates by embeddings;
* ``export``: ``export_labels``: a view, or the corrected labels, back to our YOLO layout (and COCO);
* ``plugin``: the App (``launch``, ``wait_http``) and ``install_plugin`` for plugins/bccdet.

The two end-to-end workflows (``curate_detection``, ``curate_classification``) and ``load_detector`` sit a
layer up, in :mod:`bccdet.curate`: they build the detector with the pipeline builder (:mod:`bccdet.pipeline`),
which adapters never import.
"""

from __future__ import annotations

from ...io import InputError, image_files, image_size
from ...types import KINDS, Cells, SmearMeta, box_iou, rle_decode
from .cells import cells_from_report, cells_to_detections, detections_to_cells
from .classification import embed_classification, near_duplicate_pairs, probe_probabilities, read_class_predictions
from .common import (AGN_KEY, CLS_TAGS, EMB_FIELD, EMBED_RUNTIME, EVAL_KEY, GT_FIELD, INFO_KEY, LABEL_TAGS, PRED_FIELD,
                     SAMPLE_TAG, SPLITS, TAG_ACCEPT, TAG_CLASS, TAG_DUP, TAG_DUP_CONFLICT, TAG_EXCLUDE, TAG_LOC,
                     TAG_MISLABEL, TAG_MISSING, TAG_NEAR_DUP, TAG_REJECT, TAG_SPURIOUS, CurationError,
                     CurationSummary, Rule, Suspect)
from .evaluate import brain_detection, evaluate, format_eval
from .export import corrected_cells, export_labels
from .load import (add_predictions_from_reports, build_classification_dataset, build_detection_dataset,
                   dataset_exists, open_dataset, read_reports)
from .mistakes import suspect_counts, tag_detection_suspects, write_suspects_csv
from .plugin import install_plugin, launch, plugin_source, wait_http
from .predict import (CELL_TYPE_FIELD, BackboneEmbedder, classify_samples, load_classifier, predict_detections)

# private helpers, re-exported for code that used them from the single module
from .cells import _hull, _image_meta, _mask_in_hull  # noqa: F401
from .classification import _classifier_or_none  # noqa: F401
from .common import _fo  # noqa: F401
from .evaluate import _delete_brain, _delete_eval, _summary_classification  # noqa: F401
from .load import _cls_items, _prepare_dataset, _sha256, _strip_source, _yolo_splits  # noqa: F401
from .mistakes import _xyxy  # noqa: F401
from .predict import _embed_only  # noqa: F401

__all__ = [
    # re-exported from bccdet.io / bccdet.types, as the single module had them
    "InputError", "image_files", "image_size", "KINDS", "Cells", "SmearMeta", "box_iou", "rle_decode",
    # common
    "AGN_KEY", "CLS_TAGS", "EMB_FIELD", "EMBED_RUNTIME", "EVAL_KEY", "GT_FIELD", "INFO_KEY", "LABEL_TAGS", "PRED_FIELD",
    "SAMPLE_TAG", "SPLITS", "TAG_ACCEPT", "TAG_CLASS", "TAG_DUP", "TAG_DUP_CONFLICT", "TAG_EXCLUDE", "TAG_LOC",
    "TAG_MISLABEL", "TAG_MISSING", "TAG_NEAR_DUP", "TAG_REJECT", "TAG_SPURIOUS", "CurationError",
    "CurationSummary", "Rule", "Suspect",
    # cells
    "cells_from_report", "cells_to_detections", "detections_to_cells",
    # load
    "add_predictions_from_reports", "build_classification_dataset", "build_detection_dataset", "dataset_exists",
    "open_dataset", "read_reports",
    # predict
    "CELL_TYPE_FIELD", "BackboneEmbedder", "classify_samples", "load_classifier", "predict_detections",
    # evaluate, mistakes
    "brain_detection", "evaluate", "format_eval", "suspect_counts", "tag_detection_suspects", "write_suspects_csv",
    # classification
    "embed_classification", "near_duplicate_pairs", "probe_probabilities", "read_class_predictions",
    # export, plugin
    "corrected_cells", "export_labels", "install_plugin", "launch", "plugin_source", "wait_http",
]
