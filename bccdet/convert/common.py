"""Shared machinery of the converters: samples, the conversion report, YOLO writers, hashing, leakage."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..io import InputError, atomic_dir
from ..masks import ellipse_masks  # defined in bccdet.masks (below adapters.sam, which uses it too)
from ..types import KINDS, Cells

SPLITS = ("train", "val", "test")


class ConversionError(Exception):
    """Unusable input as a whole (exit status 2); the message is one line."""


class LeakageError(ConversionError):
    """An image of a test split also appears in a train/val split."""


@dataclass
class DetSample:
    """One detection image: where it is, its cells (ground truth), its split and source."""

    image: Path
    cells: Cells
    split: str
    source: str
    name: str  # output file stem, unique within the converted set
    content_hash: str = ""


@dataclass
class ClsSample:
    image: Path
    label: str
    split: str
    source: str
    subclass: str = ""
    group: str = ""  # patient (DeepAPL) or "" when unknown
    content_hash: str = ""


@dataclass
class Report:
    """What a conversion did: counts per split and class, and every item it dropped, with the reason."""

    name: str
    images: Counter = field(default_factory=Counter)  # split -> images
    objects: dict = field(default_factory=lambda: defaultdict(Counter))  # split -> class -> count
    dropped: list = field(default_factory=list)  # (file, reason)
    notes: list = field(default_factory=list)

    def drop(self, file: str | Path, reason: str) -> None:
        self.dropped.append((str(file), reason))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "images": dict(self.images),
            "objects": {s: dict(c) for s, c in self.objects.items()},
            "dropped": [{"file": f, "reason": r} for f, r in self.dropped],
            "dropped_by_reason": dict(Counter(_reason_kind(r) for _, r in self.dropped)),
            "notes": list(self.notes),
        }

    def format(self) -> str:
        classes = sorted({c for cnt in self.objects.values() for c in cnt})
        splits = [s for s in SPLITS if s in self.images] + sorted(s for s in self.images if s not in SPLITS)
        lines = [f"== {self.name} =="]
        head = f"{'split':<8}{'images':>8}" + "".join(f"{c[:22]:>24}" for c in classes)
        lines.append(head)
        for s in splits:
            row = f"{s:<8}{self.images[s]:>8}" + "".join(f"{self.objects[s].get(c, 0):>24}" for c in classes)
            lines.append(row)
        total = f"{'total':<8}{sum(self.images.values()):>8}" + "".join(
            f"{sum(self.objects[s].get(c, 0) for s in splits):>24}" for c in classes
        )
        lines.append(total)
        lines.append(f"dropped: {len(self.dropped)}")
        for kind, n in Counter(_reason_kind(r) for _, r in self.dropped).most_common():
            lines.append(f"  {n:>5}  {kind}")
        for f, r in self.dropped[:20]:
            lines.append(f"    {f}: {r}")
        if len(self.dropped) > 20:
            lines.append(f"    ... {len(self.dropped) - 20} more in summary.json")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _reason_kind(reason: str) -> str:
    return reason.split(":")[0]


# ---------------------------------------------------------------------- hashing
def file_hash(path: str | Path) -> str:
    from ..io import sha256_file

    return sha256_file(path)


def pixel_hash(path: str | Path) -> str:
    """Hash of the decoded RGB pixels: the same picture re-encoded losslessly (JPG->PNG) hashes the same."""
    from ..io import read_image

    a = read_image(path)
    h = hashlib.sha256()
    h.update(str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def dhash(path: str | Path, size: int = 16) -> int:
    """Difference hash of the grey image (robust to resizing and re-compression)."""
    from PIL import Image

    with Image.open(path) as im:
        g = np.asarray(im.convert("L").resize((size + 1, size), Image.BILINEAR), dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).reshape(-1)
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


# ---------------------------------------------------------------------- splits
def stratified_split(
    items: Sequence, key, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0
) -> list[str]:
    """Split label for each item, stratified by ``key(item)``, deterministic for a seed."""
    by: dict = defaultdict(list)
    for i, it in enumerate(items):
        by[key(it)].append(i)
    out = [""] * len(items)
    rng = random.Random(seed)
    for k in sorted(by, key=str):
        idx = sorted(by[k], key=lambda i: str(getattr(items[i], "image", i)))
        rng.shuffle(idx)
        n = len(idx)
        n_val = int(round(n * fractions[1]))
        n_test = int(round(n * fractions[2]))
        if n >= 3:
            n_val, n_test = max(1, n_val), max(1, n_test)
        n_train = n - n_val - n_test
        for j, i in enumerate(idx):
            out[i] = "train" if j < n_train else ("val" if j < n_train + n_val else "test")
    return out


def group_split(
    groups: Sequence[str], strata: dict[str, str] | None = None, fractions=(0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, str]:
    """Assign whole groups (patients) to splits; stratified by ``strata[group]`` (e.g. diagnosis)."""
    uniq = sorted(set(groups))
    by: dict = defaultdict(list)
    for g in uniq:
        by[(strata or {}).get(g, "")].append(g)
    rng = random.Random(seed)
    out = {}
    for k in sorted(by):
        gs = by[k]
        rng.shuffle(gs)
        n = len(gs)
        n_val = max(1, int(round(n * fractions[1]))) if n >= 3 else 0
        n_test = max(1, int(round(n * fractions[2]))) if n >= 3 else 0
        n_train = n - n_val - n_test
        for j, g in enumerate(gs):
            out[g] = "train" if j < n_train else ("val" if j < n_train + n_val else "test")
    return out


# ---------------------------------------------------------------------- leakage / dedup
# Difference-hash distance (of 256 bits) at or below which two fields count as one image resized /
# re-encoded. Measured (2026-11-25): 320 resized / re-encoded copies of 80 BCCD fields (320x240 q80,
# 416x312 q90, 1280x960 q85, 640x480 q50) lie at 0-13 bits (median 2, 67 above 4); distinct fields lie at
# 21 or more (BCCD: 21 at the closest, 77 at the 1st percentile; TXL-PBC: one pair at 14, the same cell
# photographed twice, every other pair above 20); BCCD test vs our merged train/val: 77 at the closest.
NEAR_COPY_BITS = 16


def dedup_and_check_leakage(
    samples: list, report: Report, near: bool = True, max_hamming: int = NEAR_COPY_BITS, prefer: Sequence[str] = ()
) -> list:
    """Remove exact duplicates (pixel hash) across sources; fail loudly if a test image is in train/val.

    Within train/val a duplicate keeps the copy whose source comes first in ``prefer`` (then the first
    occurrence): TXL-PBC re-labelled BCCD fields with ~2x the RBC boxes, so its copy is the better one. A test image whose pixels (or, with
    ``near``, whose resized/re-encoded copy by difference hash) also appear in train/val raises
    ``LeakageError`` naming both files: the caller must remove the copy from the training source.
    """
    for s in samples:
        if not s.content_hash:
            s.content_hash = pixel_hash(s.image)
    test = [s for s in samples if s.split == "test"]
    fit = [s for s in samples if s.split != "test"]
    test_hashes = {s.content_hash: s for s in test}
    leaks = [(s, test_hashes[s.content_hash]) for s in fit if s.content_hash in test_hashes]
    if near and test and not leaks:
        th = [(dhash(s.image), s) for s in test]
        for s in fit:
            d = dhash(s.image)
            for h, t in th:
                if hamming(d, h) <= max_hamming and _same_aspect(s.image, t.image):
                    leaks.append((s, t))
                    break
    if leaks:
        a, b = leaks[0]
        raise LeakageError(
            f"leakage: {len(leaks)} train/val image(s) also in the test split, e.g. {a.image} ({a.split}) == {b.image} (test)"
        )
    rank = {src: i for i, src in enumerate(prefer)}
    fit = sorted(fit, key=lambda s: rank.get(s.source, len(rank)))  # stable: keeps input order otherwise
    seen: dict[str, object] = {}
    kept = []
    for s in fit + test:
        if s.content_hash in seen:
            first = seen[s.content_hash]
            report.drop(s.image, f"duplicate: same pixels as {first.image}")
            continue
        seen[s.content_hash] = s
        kept.append(s)
    return kept


def _same_aspect(a: Path, b: Path) -> bool:
    from ..io import image_size

    wa, ha = image_size(a)
    wb, hb = image_size(b)
    return abs(wa / ha - wb / hb) < 0.02


# ---------------------------------------------------------------------- writers
def link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def white_cells_only(cells: Cells) -> Cells:
    """``cells`` with masks from SAM kept for the white cells and the inscribed ellipse for the others
    (``--masks sam-wbc``). SAM has run on every box, so each white cell's mask was split from its neighbours'
    as with ``--masks sam``. The white-cell masks are the ones measured against true outlines (wbc-seg);
    SAM's red-cell and platelet masks on BCCD-like fields are not, and their bounding boxes stray from the
    labelled boxes (docs/sam.md)."""
    out, ell = cells[np.arange(len(cells))], ellipse_masks(cells)
    for i in np.flatnonzero(np.asarray(cells.kind) != "wbc"):
        out.masks[i], out.mask_offset[i], out.mask_source[i] = ell.masks[i], ell.mask_offset[i], ell.mask_source[i]
    return out


def _progress(items, desc):
    if desc is None:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="image")


def _sam_masks(sam, s: DetSample, cells: Cells, report: Report) -> Cells:
    """SAM masks from the boxes of one image (touching cells split); the ellipse where SAM fails."""
    from ..adapters.sam import box_to_mask_cells
    from ..io import read_image

    try:
        out = box_to_mask_cells(sam, read_image(s.image), cells)
    except InputError as e:
        report.notes.append(f"{s.image}: unreadable for SAM ({e}); ellipse masks used")
        return ellipse_masks(cells)
    n_fallback = int(np.sum(out.mask_source == "label"))
    if n_fallback:
        report.notes.append(f"{s.image}: {n_fallback}/{len(out)} SAM masks implausible; ellipse used for those")
    return out


def check_out(out: str | Path, sources: Iterable[str | Path] = ()) -> None:
    """Refuse an ``--out`` that a conversion would wrongly replace.

    The converted set replaces ``out`` as a whole when it is complete, so ``out`` must be new, empty or
    an earlier conversion (``summary.json`` with ``data.yaml`` or ``manifest.csv``), and must neither be,
    contain nor sit inside an input.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConversionError(f"--out {out} is a file; give a folder for the converted set")
    ro = out.resolve()
    for src in sources:
        rs = Path(src).resolve()
        if ro == rs or rs in ro.parents or ro in rs.parents:
            raise ConversionError(f"--out {out} overlaps the input {src}; write the converted set to a folder outside it")
    if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()) and not (
            (out / "summary.json").is_file() and ((out / "data.yaml").is_file() or (out / "manifest.csv").is_file())):
        raise ConversionError(f"--out {out} exists and is not a set converted by bccdet; it would be replaced "
                              "as a whole: choose a new or empty folder")


MASK_SOURCES = ("ellipse", "box", "sam", "sam-wbc")


def write_yolo_detection(
    samples: Iterable[DetSample], out: Path, report: Report, task: str = "detect", masks: str = "ellipse",
    names: Sequence[str] = KINDS, extra_yaml: dict | None = None,
) -> Path:
    """Write ``out/images/<split>/``, ``out/labels/<split>/``, ``out/data.yaml`` and ``out/summary.json``."""
    if task not in ("detect", "segment"):
        raise ConversionError(f"unknown task {task!r}; expected detect or segment")
    if task == "segment" and masks not in MASK_SOURCES:
        raise ConversionError(f"unknown mask source {masks!r}; expected {', '.join(MASK_SOURCES)}")
    samples = list(samples)
    sam = None
    if task == "segment" and masks in ("sam", "sam-wbc") and any(not s.cells.has_masks and len(s.cells) for s in samples):
        from ..adapters.sam import SamModel

        sam = SamModel(precision="fp32")  # training labels must not depend on the machine's bf16
    with atomic_dir(out) as tmp:
        for s in _progress(samples, "masks from boxes (SAM)" if sam is not None else None):
            cells = s.cells
            if task == "segment" and not cells.has_masks and len(cells):
                if masks == "ellipse":
                    cells = ellipse_masks(cells)
                elif masks in ("sam", "sam-wbc"):
                    cells = _sam_masks(sam, s, cells, report)
                    if masks == "sam-wbc":
                        cells = white_cells_only(cells)
                # masks == "box": to_yolo(segments=True) writes the box as a polygon
            dst = tmp / "images" / s.split / f"{s.name}{s.image.suffix.lower()}"
            link_or_copy(s.image, dst)
            lab = tmp / "labels" / s.split / f"{s.name}.txt"
            lab.parent.mkdir(parents=True, exist_ok=True)
            lines = cells.to_yolo(segments=(task == "segment"), class_names=names)
            lab.write_text("\n".join(lines) + ("\n" if lines else ""))
            report.images[s.split] += 1
            for k in cells.kind:
                report.objects[s.split][k] += 1
        splits = [sp for sp in SPLITS if report.images.get(sp)]
        data = {"path": str(Path(out).resolve()), "task": task}
        for sp in splits:
            data[sp] = f"images/{sp}"
        if "val" not in data and "test" in data:
            data["val"] = "images/test"
        data["names"] = {i: n for i, n in enumerate(names)}
        data.update(extra_yaml or {})
        (tmp / "data.yaml").write_text(_yaml(data))
        (tmp / "summary.json").write_text(json.dumps(report.to_dict(), indent=2))
    return Path(out)


def write_classify(samples: Iterable[ClsSample], out: Path, report: Report) -> Path:
    """Write ``out/<split>/<label>/<file>`` (the ultralytics / torchvision ImageFolder layout) + manifest."""
    import csv
    import io

    samples = list(samples)
    with atomic_dir(out) as tmp:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["split", "label", "subclass", "group", "source", "file", "original", "sha256"])
        used: set = set()
        for s in sorted(samples, key=lambda s: (s.split, s.label, str(s.image))):
            stem = s.image.stem if not s.group else f"{s.group}__{s.image.stem}"
            name = f"{stem}{s.image.suffix.lower()}"
            k = 1
            while (s.split, s.label, name) in used:
                name = f"{stem}_{k}{s.image.suffix.lower()}"
                k += 1
            used.add((s.split, s.label, name))
            dst = tmp / s.split / s.label / name
            link_or_copy(s.image, dst)
            w.writerow([s.split, s.label, s.subclass, s.group, s.source, f"{s.split}/{s.label}/{name}", str(s.image), s.content_hash])
            report.images[s.split] += 1
            report.objects[s.split][s.label] += 1
        present = {sp: set(report.objects[sp]) for sp in SPLITS if report.images.get(sp)}
        all_labels = set().union(*present.values()) if present else set()
        for sp, labs in present.items():
            missing = sorted(all_labels - labs)
            if missing:
                report.notes.append(f"split {sp} has no images of {missing}")
        (tmp / "manifest.csv").write_text(buf.getvalue())
        (tmp / "summary.json").write_text(json.dumps(report.to_dict(), indent=2))
    return Path(out)


def _yaml(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------------- box checks
def clean_boxes(
    xyxy: np.ndarray, kinds: Sequence[str], width: int, height: int, file: str | Path, report: Report,
    min_size: float = 2.0,
) -> tuple[np.ndarray, list[str]]:
    """Clip boxes to the image; drop (and report) zero-size boxes, boxes wholly outside it, and exact duplicates
    (a box of the same kind with the same corners as one already kept: TXL-PBC lists some cells twice, one field
    17 of its 32 boxes).

    ``min_size`` is in pixels: VOC's inclusive corners make a zero-size box (xmin == xmax) 1 px wide.
    """
    xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
    keep_b, keep_k, seen = [], [], set()
    for box, k in zip(xyxy, kinds):
        x1, y1, x2, y2 = (float(v) for v in box)
        if x2 - x1 < min_size or y2 - y1 < min_size:
            report.drop(file, f"zero-size box: {k} [{x1:.0f},{y1:.0f},{x2:.0f},{y2:.0f}]")
            continue
        cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
        cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
        if cx2 - cx1 < min_size or cy2 - cy1 < min_size:
            report.drop(file, f"box outside image: {k} [{x1:.0f},{y1:.0f},{x2:.0f},{y2:.0f}] in {width}x{height}")
            continue
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2) and max(abs(cx1 - x1), abs(cy1 - y1), abs(cx2 - x2), abs(cy2 - y2)) > 1.0:
            report.notes.append(f"{file}: {k} box clipped to the image")
        key = (k, cx1, cy1, cx2, cy2)
        if key in seen:
            report.drop(file, f"duplicate box: {k} [{x1:.0f},{y1:.0f},{x2:.0f},{y2:.0f}]")
            continue
        seen.add(key)
        keep_b.append([cx1, cy1, cx2, cy2])
        keep_k.append(k)
    return np.array(keep_b, np.float32).reshape(-1, 4), keep_k
