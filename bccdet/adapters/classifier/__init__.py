"""Leukocyte classifier: one crop function, EfficientNet-Lite0 training on CPU, evaluation, the stage.

Everything heavy (torch, timm, cv2, matplotlib) is imported inside functions. The modules, each importing
only those above it:

    common.py       constants (format, crop geometry, normalisation, review threshold), DEFAULT_RECIPE,
                    ClassifierError
    crops.py        cell_crop / single_cell_crop: the one crop geometry (why it is what it is: its docstring)
    network.py      the timm backbone, checkpoints (read / check / rebuild / write), tensors in and out
    data.py         converted classify folders, the decoded-image cache, batch augmentation
    calibration.py  temperature, labels and the review rule (assign_labels), familiarity
    prior.py        call-level prior adaptation (adapt_prior, adapt_rows)
    stage.py        CellClassifier, load_classifier, embed_images, classify_paths
    patient.py      the patient summary and its apl_score (rule or learned patient model)
    evaluation.py   metrics, evaluate, plot_confusion
    training.py     train

Every function, class and constant of the former single module ``classifier.py`` (and the bccdet names
it imported) is re-exported here, so ``from bccdet.adapters.classifier import X`` keeps working. Patching
a name here (``monkeypatch.setattr(C, ...)``) reaches code that looks it up through the package, not the
submodules' own references: patch the submodule that uses it (e.g. ``patient.apl_score`` for
:func:`summary`, ``stage.CellClassifier`` for :func:`classify_paths`).
"""

from __future__ import annotations

# names the single module imported, kept for code that used them from here
from ...io import (MIN_SIDE, InputError, expand_images, image_files, is_grey, read_image, sha256_file,
                   write_bytes_atomic, write_text_atomic)
from ...report import abnormal_flag, differential_base, unfamiliar_flag
from ...types import Cells
from ...vocab import ABNORMAL_LABELS, LABELS, NOT_IN_DIFFERENTIAL, normalize_label
from .calibration import (FAMILIARITY_FORMAT, FAMILIARITY_K, FAMILIARITY_QUANTILE, _residual, _softmax,
                          assign_labels, familiarity_path, familiarity_scores, fit_familiarity, fit_temperature,
                          load_familiarity, save_familiarity)
from .common import (ARCH, CPU_MAX_BATCH, CROP_MARGIN, DEFAULT_RECIPE, FORMAT, IMGSZ, MEAN, REVIEW_LABELS,
                     REVIEW_THRESHOLD, STD, ClassifierError)
from .crops import border_color, cell_crop, single_cell_box, single_cell_crop
from .data import _JPEG_GPU, _RGB_FROM_HED, _YIQ, _collect, _decode_cache, _jpeg_gpu, _read_split, _u, augment
from .evaluation import _ece, evaluate, metrics, plot_confusion
from .network import (_build, _logits, _normalize, _save_atomic, _to_input, load_backbone, load_checkpoint,
                      package_weights_path, read_checkpoint, save_checkpoint)
from .patient import (_APL_DEFAULT, APL_FEATURE_EPS, APL_MODEL_FORMAT, APL_PRESENCE_SCALE, _raw, apl_features,
                      apl_score, apl_score_features, apl_score_model, default_apl_model, fit_apl_model,
                      load_apl_model, resolve_apl_model, summary)
from .prior import PRIOR_ALPHA, PRIOR_MAX_RATIO, PRIOR_MIN_CELLS, adapt_prior, adapt_rows, reference_prior
from .stage import MAX_CELL_ASPECT, CellClassifier, classify_paths, embed_images, load_classifier
from .training import _finalize, _param_groups, _set_stage, set_fits_on_gpu, train
