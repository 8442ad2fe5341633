"""The leukocyte label vocabulary and the maps from each source's class names onto it.

See docs/data.md ("Class map") for the reasoning behind each entry.
"""

from __future__ import annotations

PBC_LABELS: tuple[str, ...] = (
    "neutrophil", "eosinophil", "basophil", "lymphocyte", "monocyte",
    "immature_granulocyte", "erythroblast", "platelet",
)
ABNORMAL_LABELS: tuple[str, ...] = ("blast", "promyelocyte", "smudge_cell", "variant_lymphocyte")
LABELS: tuple[str, ...] = PBC_LABELS + ABNORMAL_LABELS
"""Every label the classifier can output, in a fixed order (column order of p_<label> outputs)."""
NOT_IN_DIFFERENTIAL: tuple[str, ...] = ("erythroblast", "platelet")
"""Typed cells left out of the WBC differential, as in a manual count: nucleated red cells are reported per
100 WBC (``nrbc_per_100_wbc``), platelets are not leukocytes."""

# PBC folder -> label; file-name prefix -> subclass
PBC_FOLDERS = {
    "neutrophil": "neutrophil", "eosinophil": "eosinophil", "basophil": "basophil",
    "lymphocyte": "lymphocyte", "monocyte": "monocyte", "ig": "immature_granulocyte",
    "erythroblast": "erythroblast", "platelet": "platelet",
}
PBC_SUBCLASS_PREFIX = {
    "SNE": "segmented_neutrophil", "BNE": "band_neutrophil", "NEUTROPHIL": "neutrophil",
    "PMY": "promyelocyte", "MY": "myelocyte", "MMY": "metamyelocyte", "IG": "immature_granulocyte",
    "EO": "eosinophil", "BA": "basophil", "LY": "lymphocyte", "MO": "monocyte",
    "ERB": "erythroblast", "PLATELET": "platelet", "PLT": "platelet",
}

# DeepAPL / CellaVision class -> (label, subclass); None = not a single-cell class we train on
CELLAVISION = {
    "blast, no lineage spec": ("blast", "blast"),
    "promyelocyte": ("promyelocyte", "promyelocyte"),
    "smudge cells": ("smudge_cell", "smudge_cell"),
    "lymphocyte, variant": ("variant_lymphocyte", "variant_lymphocyte"),
    "segmented neutrophils": ("neutrophil", "segmented_neutrophil"),
    "band neutrophils": ("neutrophil", "band_neutrophil"),
    "myelocyte": ("immature_granulocyte", "myelocyte"),
    "metamyelocyte": ("immature_granulocyte", "metamyelocyte"),
    "giant thrombocyte": ("platelet", "giant_thrombocyte"),
    "eosinophils": ("eosinophil", "eosinophil"),
    "basophil": ("basophil", "basophil"),
    "lymphocyte": ("lymphocyte", "lymphocyte"),
    "monocyte": ("monocyte", "monocyte"),
    "erythroblast": ("erythroblast", "erythroblast"),
    # WHO counts promonocytes as blast equivalents in AML: flag them with the blasts.
    "promonocyte": ("blast", "promonocyte"),
    # Plasma cells and prolymphocytes are abnormal lymphoid cells in blood: reviewed with variant lymphocytes.
    "plasma cells": ("variant_lymphocyte", "plasma_cell"),
    "prolymphocyte": ("variant_lymphocyte", "prolymphocyte"),
    # Not single cells / not cells: left out of training, reported in the summary.
    "thrombocyte aggregation": None,
    "artifact-like": None,
    "artifacts": None,
    "unidentified": None,
}


def cellavision_label(name: str) -> tuple[str, str] | None:
    """(label, subclass) for a CellaVision class folder name; raises KeyError for unknown names."""
    key = " ".join(name.strip().lower().split())
    return CELLAVISION[key]


def pbc_subclass(label_folder: str, stem: str) -> str:
    prefix = stem.split("_")[0].upper()
    return PBC_SUBCLASS_PREFIX.get(prefix, PBC_FOLDERS.get(label_folder.lower(), label_folder))


def normalize_label(name: str) -> str:
    """Map a free-form class folder name (Kaggle, lab exports) onto LABELS; KeyError if impossible."""
    key = "_".join(name.strip().lower().replace("-", " ").split())
    if key in LABELS:
        return key
    aliases = {
        "neutrophils": "neutrophil", "eosinophils": "eosinophil", "basophils": "basophil",
        "lymphocytes": "lymphocyte", "monocytes": "monocyte", "ig": "immature_granulocyte",
        "immature_granulocytes": "immature_granulocyte", "erythroblasts": "erythroblast",
        "nrbc": "erythroblast", "platelets": "platelet", "thrombocyte": "platelet", "thrombocytes": "platelet",
        "blasts": "blast", "promyelocytes": "promyelocyte", "smudge": "smudge_cell", "smudge_cells": "smudge_cell",
        "variant_lymphocytes": "variant_lymphocyte", "atypical_lymphocyte": "variant_lymphocyte",
        "reactive_lymphocyte": "variant_lymphocyte",
    }
    if key in aliases:
        return aliases[key]
    try:
        got = cellavision_label(name)
    except KeyError:
        got = None
    if got:
        return got[0]
    raise KeyError(name)


def is_class_folder(name: str) -> bool:
    """Whether a folder name is a cell class (a CellaVision class or any name :func:`normalize_label` maps):
    the sub-folders of one patient's single-cell export."""
    if " ".join(name.strip().lower().split()) in CELLAVISION:
        return True
    try:
        normalize_label(name)
        return True
    except KeyError:
        return False

# ---------------------------------------------------------------------- red-cell morphology (Chula RBC-12)
RBC_MORPHOLOGY: tuple[str, ...] = (
    "normal", "macrocyte", "microcyte", "spherocyte", "target_cell", "stomatocyte", "ovalocyte",
    "teardrop", "burr_cell", "schistocyte", "hypochromia", "elliptocyte",
)
"""Every red-cell morphology type the RBC stage can output, in a fixed order (the classifier's output order)."""
CHULA_CLASSES: dict[int, str | None] = {
    0: "normal", 1: "macrocyte", 2: "microcyte", 3: "spherocyte", 4: "target_cell", 5: "stomatocyte",
    6: "ovalocyte", 7: "teardrop", 8: "burr_cell", 9: "schistocyte", 10: None, 11: "hypochromia", 12: "elliptocyte",
}
"""Chula RBC-12 label index -> RBC_MORPHOLOGY string; 10 (uncategorised) is left out (None)."""
