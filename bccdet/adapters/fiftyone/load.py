"""Ground truth and predictions into persistent FiftyOne datasets.

``build_detection_dataset`` / ``build_classification_dataset``: a dataset from a converted YOLO detect/segment
folder or classify folder. An existing dataset is only *updated* (new images added, ground truth and tags of
the images already there kept); ``overwrite=True`` is needed to rebuild it, and a dataset that bccdet did not
create is never touched without it. ``add_predictions_from_reports``: predictions from ``analyze`` report.json files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Sequence

from ...io import image_files
from ...types import KINDS
from .cells import _image_meta, cells_from_report, cells_to_detections
from .common import GT_FIELD, INFO_KEY, PRED_FIELD, SPLITS, CurationError, CurationSummary, _fo


# ---------------------------------------------------------------------- datasets
def dataset_exists(name: str) -> bool:
    return _fo().dataset_exists(name)


def open_dataset(name: str, kind: str | None = None):
    """Load an existing bccdet dataset (``kind``: detection / classification) or raise CurationError."""
    fo = _fo()
    if not fo.dataset_exists(name):
        raise CurationError(f"no FiftyOne dataset named {name!r} (build it with `bccdet curate`)")
    ds = fo.load_dataset(name)
    info = ds.info.get(INFO_KEY)
    if kind and (not info or info.get("kind") != kind):
        raise CurationError(f"dataset {name!r} is not a bccdet {kind} dataset")
    return ds


def _prepare_dataset(name: str, kind: str, overwrite: bool, source: str):
    """Create, or reuse for an update, the persistent dataset ``name``. Refuses to touch a foreign one."""
    fo = _fo()
    if fo.dataset_exists(name):
        ds = fo.load_dataset(name)
        info = ds.info.get(INFO_KEY)
        if overwrite:
            ds.delete()
        elif not info:
            raise CurationError(
                f"FiftyOne dataset {name!r} exists and was not made by bccdet: choose another --name, "
                "or pass --overwrite to replace it")
        elif info.get("kind") != kind:
            raise CurationError(
                f"FiftyOne dataset {name!r} is a bccdet {info.get('kind')} dataset, not {kind}: "
                "choose another --name, or pass --overwrite to replace it")
        else:
            return ds, False
    ds = fo.Dataset(name)
    ds.persistent = True
    ds.info[INFO_KEY] = {"kind": kind, "source": source, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    ds.save()
    return ds, True


def _yolo_splits(data: Path, splits: Sequence[str] | None) -> tuple[list[str], list[str]]:
    from ...convert.detection import read_yolo_names

    data = Path(data)
    if not (data / "data.yaml").is_file():
        raise CurationError(f"{data}: not a converted YOLO detect/segment folder (no data.yaml)")
    names = read_yolo_names(data / "data.yaml")
    present = [sp for sp in SPLITS if (data / "images" / sp).is_dir()]
    if splits:
        bad = sorted(set(splits) - set(SPLITS))
        if bad:
            raise CurationError(f"unknown split(s) {bad}; expected train, val or test")
        missing = [sp for sp in splits if sp not in present]
        if missing:
            raise CurationError(f"{data}: no images/{missing[0]} folder")
        present = [sp for sp in SPLITS if sp in splits]
    if not present:
        raise CurationError(f"{data}: no images/<split> folders")
    return present, names


def build_detection_dataset(data: Path, name: str, overwrite: bool = False, splits: Sequence[str] | None = None,
                            log: Callable[[str], None] = print):
    """Ground truth of a converted YOLO folder -> persistent dataset ``name``. Returns (dataset, summary)."""
    from ...convert.common import Report
    from ...convert.detection import load_yolo_split

    fo = _fo()
    data = Path(data).resolve()
    present, names = _yolo_splits(data, splits)
    bad = [n for n in names if n not in KINDS]
    if bad:
        raise CurationError(f"{data}/data.yaml: classes {names} are not bccdet's {list(KINDS)}")
    ds, created = _prepare_dataset(name, "detection", overwrite, str(data))
    summ = CurationSummary(name=name)
    have = set(ds.values("filepath")) if not created else set()
    report = Report(name)
    new = []
    for sp in present:
        for s in load_yolo_split(data / "images" / sp, data / "labels" / sp, names, sp, data.name, report):
            fp = str(Path(s.image).resolve())
            if fp in have:
                summ.kept += 1
                continue
            sample = fo.Sample(filepath=fp, tags=[sp])
            sample["split"] = sp
            sample["source"] = s.image.stem.split("__")[0] if "__" in s.image.stem else data.name
            sample[GT_FIELD] = cells_to_detections(s.cells)
            sample["metadata"] = fo.ImageMetadata(width=s.cells.meta.width, height=s.cells.meta.height)
            new.append(sample)
    for d in report.dropped:
        summ.notes.append(f"skipped {d}")
    if new:
        ds.add_samples(new, progress=False)
    summ.added = len(new)
    summ.samples = len(ds)
    info = dict(ds.info.get(INFO_KEY, {}))
    info.update({"names": list(names), "data": str(data)})
    ds.info[INFO_KEY] = info
    ds.save()
    if summ.kept:
        log(f"note: {summ.kept} image(s) already in {name!r} kept their ground truth and tags (--overwrite rebuilds)")
    return ds, summ


def read_reports(pred_dir: Path) -> list[tuple[Path, dict]]:
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise CurationError(f"{pred_dir}: --predictions must be a folder of analyze/batch outputs")
    out = []
    for p in sorted(pred_dir.rglob("report.json")):
        if any(part.startswith(".") for part in p.relative_to(pred_dir).parts):
            continue  # hidden .partial folders of an interrupted run
        try:
            out.append((p, json.loads(p.read_text())))
        except (OSError, ValueError) as e:
            raise CurationError(f"{p}: unreadable report.json ({e})") from None
    if not out:
        raise CurationError(f"{pred_dir}: no report.json found (run `bccdet analyze ... --out {pred_dir}`)")
    return out


def _strip_source(stem: str) -> str:
    return stem.split("__", 1)[1] if "__" in stem else stem


def add_predictions_from_reports(ds, pred_dir: Path, field_name: str = PRED_FIELD) -> tuple[int, int]:
    """Attach report.json predictions to samples: by image path, file name, or stem (source prefix ignored).

    Returns (matched, unmatched reports).
    """
    reports = read_reports(pred_dir)
    by_path, by_name, by_stem = {}, {}, {}
    for p, rep in reports:
        ip = rep.get("image", {}).get("path", "")
        if ip:
            by_path[str(Path(ip).resolve())] = rep
            by_name.setdefault(Path(ip).name, rep)
            by_stem.setdefault(_strip_source(Path(ip).stem), rep)
        by_stem.setdefault(_strip_source(p.parent.name), rep)
    used = set()
    matched = 0
    for sample in ds.select_fields(["metadata"]).iter_samples(autosave=True, batch_size=64):
        fp = Path(sample.filepath)
        rep = by_path.get(str(fp.resolve())) or by_name.get(fp.name) or by_stem.get(_strip_source(fp.stem))
        if rep is None:
            continue
        used.add(id(rep))
        meta = _image_meta(sample)
        w, h = rep.get("image", {}).get("width"), rep.get("image", {}).get("height")
        if w and h and (int(w), int(h)) != (meta.width, meta.height):
            raise CurationError(f"{fp.name}: report.json is for a {w}x{h} image, the data set's is {meta.width}x{meta.height}")
        sample[field_name] = cells_to_detections(cells_from_report(rep, meta))
        matched += 1
    return matched, len(reports) - len({id(r) for _, r in reports if id(r) in used})


# ---------------------------------------------------------------------- classification
def _cls_items(data: Path) -> list[dict]:
    """Items of a classify folder: the converted layout (SPLIT/LABEL/file, manifest.csv) or ROOT/LABEL/file."""
    data = Path(data)
    if not data.is_dir():
        raise CurationError(f"{data}: not a folder")
    items = []
    man = data / "manifest.csv"
    if man.is_file():
        with open(man, newline="") as f:
            for r in csv.DictReader(f):
                items.append({"path": (data / r["file"]).resolve(), "label": r["label"], "split": r.get("split", ""),
                              "sha256": r.get("sha256", ""), "group": r.get("group", ""), "subclass": r.get("subclass", "")})
        return items
    split_dirs = [d for d in sorted(data.iterdir()) if d.is_dir() and d.name in SPLITS]
    roots = [(d, d.name) for d in split_dirs] if split_dirs else [(data, "")]
    for root, sp in roots:
        for lab in sorted(d for d in root.iterdir() if d.is_dir()):
            for p in image_files(lab):
                items.append({"path": p.resolve(), "label": lab.name, "split": sp, "sha256": "", "group": "", "subclass": ""})
    if not items:
        raise CurationError(f"{data}: no images in class folders (expected SPLIT/LABEL/* or LABEL/*)")
    return items


def build_classification_dataset(data: Path, name: str, overwrite: bool = False,
                                 splits: Sequence[str] | None = None, log: Callable[[str], None] = print):
    fo = _fo()
    data = Path(data).resolve()
    items = _cls_items(data)
    if splits:
        items = [it for it in items if it["split"] in splits]
        if not items:
            raise CurationError(f"{data}: no images in split(s) {list(splits)}")
    ds, created = _prepare_dataset(name, "classification", overwrite, str(data))
    have = set(ds.values("filepath")) if not created else set()
    summ = CurationSummary(name=name)
    new = []
    for it in items:
        fp = str(it["path"])
        if fp in have:
            summ.kept += 1
            continue
        s = fo.Sample(filepath=fp, tags=[it["split"]] if it["split"] else [])
        s[GT_FIELD] = fo.Classification(label=it["label"])
        s["split"] = it["split"] or None
        s["sha256"] = it["sha256"] or _sha256(it["path"])
        if it["group"]:
            s["group_id"] = it["group"]
        new.append(s)
    if new:
        ds.add_samples(new, progress=False)
    summ.added, summ.samples = len(new), len(ds)
    info = dict(ds.info.get(INFO_KEY, {}))
    info["data"] = str(data)
    ds.info[INFO_KEY] = info
    ds.save()
    if summ.kept:
        log(f"note: {summ.kept} image(s) already in {name!r} kept their labels and tags (--overwrite rebuilds)")
    return ds, summ


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
