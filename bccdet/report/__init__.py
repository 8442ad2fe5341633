"""Counts, differential and flags -> report.json / cells.csv / overlay.png / report.html (see docs/report.md).

The modules, each importing only those above it:

    summary.py  reference intervals, thresholds and flags; summarize / summarize_counts (field and slide),
                differential_base, the red-cell morphology counts
    pages.py    the HTML pages: render_html (report.html), classify_html (the classify page), gallery crops
    writers.py  report_dict (report.json), cell_row / cells_csv, overlay, COCO / GeoJSON, write_outputs

Every name of the former single module ``report.py`` (private helpers and the bccdet names it imported
included) is re-exported here. Patching a name here reaches only code that looks it up through the package
(e.g. ``from bccdet.report import cell_row`` inside a function at call time): patch the submodule that uses
it (``writers.cell_row`` for ``cells_csv``).
"""

from __future__ import annotations

# names the single module imported, kept for code that used them from here
from ..morphology import morphology_counts, morphology_summary
from ..types import KINDS, Cells, rle_encode
from ..vocab import LABELS, NOT_IN_DIFFERENTIAL, RBC_MORPHOLOGY
from .pages import (GALLERY_MAX_REVIEW, GALLERY_PER_LABEL, PAGE_MAX_THUMBS, PATIENT_MIN_THUMBS, RBC_GALLERY_PER_TYPE,
                    _figure, _jpeg_b64, _outside_rows, _rbc_section, _ri, _thumb_b64, box_crops, classify_html,
                    rbc_gallery_crops, render_html, wbc_crops)
from .summary import (ABNORMAL_FLAGS, DISCLAIMER, GREY_MESSAGE, MIN_WBC_FOR_DIFFERENTIAL, REFERENCE_INTERVALS,
                      SMUDGE_FLAG_PERCENT, UNFAMILIAR_CALL_FRACTION, UNFAMILIAR_MIN_CELLS, abnormal_flag,
                      differential_base, rbc_morphology_counts, rbc_morphology_median_score, summarize,
                      summarize_counts, unfamiliar_flag, wbc_flags)
from .writers import (CELLS_CSV_HEADER, KIND_COLORS, _png, _rgb, cell_row, cells_csv, coco_document, geojson_document,
                      overlay, report_dict, write_outputs)

__all__ = [
    "ABNORMAL_FLAGS", "CELLS_CSV_HEADER", "DISCLAIMER", "GALLERY_MAX_REVIEW", "GALLERY_PER_LABEL", "GREY_MESSAGE",
    "KIND_COLORS", "MIN_WBC_FOR_DIFFERENTIAL", "PAGE_MAX_THUMBS", "PATIENT_MIN_THUMBS", "RBC_GALLERY_PER_TYPE",
    "REFERENCE_INTERVALS", "SMUDGE_FLAG_PERCENT", "UNFAMILIAR_CALL_FRACTION", "UNFAMILIAR_MIN_CELLS", "abnormal_flag",
    "box_crops", "cell_row", "cells_csv", "classify_html", "coco_document", "differential_base", "geojson_document",
    "overlay", "rbc_gallery_crops", "rbc_morphology_counts", "rbc_morphology_median_score", "render_html",
    "report_dict", "summarize", "summarize_counts", "unfamiliar_flag", "wbc_crops", "wbc_flags", "write_outputs",
]
