"""What every part of a batch shares: the names of OUT's files, the keys of a unit's state record, and
small helpers (time stamps, paths, unique names, one-line reasons, JSON)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Callable

from ..io import InputError
from ..io import abspath as _abspath  # noqa: F401  (the batch modules import it from here)


FORMAT = "bccdet-batch/1"
MANIFEST = "manifest.json"
STATE_DIR = ".state"
LOCK_FILE = ".lock"
BANDS_DIR = ".bands"
AGGREGATES = ("slides.csv", "slides.parquet", "summary.html")
RESERVED_TOP = {MANIFEST, STATE_DIR, LOCK_FILE, *AGGREGATES}
RESERVED_IN_SLIDE = {"slide.json", "cells.csv", "overview.jpg", BANDS_DIR}

# Whole-slide scans: read with tiffslide (Aperio SVS, Hamamatsu NDPI, Leica SCN, Ventana BIF, generic tiled
# TIFF). A .tif/.tiff is a whole-slide scan when it is pyramidal or larger than a field can be.
WSI_SUFFIXES = (".svs", ".ndpi", ".scn", ".bif", ".qptiff")
WSI_MIN_PIXELS = 50_000_000
# An image whose longer side is at most this many pixels is a single-cell crop (CellaVision / PBC /
# DeepAPL crops are 224-400 px), not a smear field (BCCD 640x480, phone / microscope fields larger).
CROP_MAX_SIDE = 400
MANIFEST_EVERY_S = 2.0
WBC_LABELS_KEY = "wbc_labels"
RBC_MORPHOLOGY_KEY = "rbc_morphology"  # a unit's red cells per morphology type (None: the stage was off)
RBC_SCORE_KEY = "rbc_morphology_score"  # a field's median morphology score (morphology.MIN_FIELD_SCORE)
WBC_UNFAMILIAR_KEY = "wbc_unfamiliar"  # per WBC, parallel to WBC_LABELS_KEY: unlike the classifier's training cells

Log = Callable[[str], None]


# ============================================================================ small helpers
def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _sanitize(name: str) -> str:
    s = re.sub(r"[^\w.\-+ ]", "_", str(name), flags=re.UNICODE).strip().lstrip(".").strip()
    return s[:120] or "slide"


def _unique(name: str, used: set[str], reserved: set[str] = frozenset()) -> str:
    """``name``, or ``name_1``, ``name_2``...: unique case-insensitively (case-insensitive file systems)."""
    cand, k = name, 1
    while cand.casefold() in used or cand in reserved:
        cand = f"{name}_{k}"
        k += 1
    used.add(cand.casefold())
    return cand


def _short(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:300] if s else type(e).__name__


def _reason(e: BaseException, path: str | Path | None = None) -> str:
    """A one-line reason; the path prefix of InputError messages is dropped (the record holds the path)."""
    msg = _short(e)
    if path is not None:
        for pre in (f"{path}: ", f"{Path(path)}: "):
            if msg.startswith(pre):
                msg = msg[len(pre):]
    if not isinstance(e, InputError):
        msg = f"{type(e).__name__}: {msg}"
    return msg


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False, sort_keys=False) + "\n"


def _load_json(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # never written non-atomically by us: someone else's file
        raise InputError(f"{p}: not a readable batch file ({_short(e)})") from None


def _version() -> str:
    from ..version import __version__

    return __version__


def is_wsi(path: str | Path) -> bool:
    """A whole-slide scan: an SVS/NDPI/... file, or a pyramidal (or very large) TIFF."""
    p = Path(path)
    suf = p.suffix.lower()
    if suf in WSI_SUFFIXES:
        return True
    if suf not in (".tif", ".tiff"):
        return False
    try:
        import tifffile

        with tifffile.TiffFile(p) as tf:
            s = tf.series[0]
            if len(getattr(s, "levels", [])) > 1:
                return True
            shape = s.shape
            hw = shape[:2] if len(shape) == 2 or shape[-1] in (1, 3, 4) else shape[-2:]
            return int(hw[0]) * int(hw[1]) > WSI_MIN_PIXELS
    except Exception:
        return False  # not readable as TIFF: let the field reader give the reason


def _add_morph(a: dict | None, b: dict | None) -> dict | None:
    if not b:
        return a
    out = dict(a or {})
    for k, v in b.items():
        out[k] = out.get(k, 0) + int(v)
    return out


def _add_counts(a: dict, b: dict) -> dict:
    from ..types import KINDS

    return {k: int(a.get(k, 0)) + int(b.get(k, 0)) for k in KINDS}
