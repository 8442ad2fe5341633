"""Detection sources (boxes, sometimes polygons) -> ``DetSample`` lists.

Per-file parsing uses supervision's format readers (``detections_from_xml_obj``,
``yolo_annotations_to_detections``, ``coco_annotations_to_detections``) so that a bad file is reported
by name and reason and the rest of the set still converts.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import IMAGE_SUFFIXES, InputError, image_size
from ..types import Cells, CellsError, SmearMeta, normalize_kind
from .common import SPLITS, ConversionError, DetSample, Report, clean_boxes

BCCD_SPLIT_SIZES = {"train": 205, "val": 87, "test": 72}


def _safe_name(source: str, stem: str) -> str:
    return f"{source}__{re.sub(r'[^A-Za-z0-9._-]+', '_', stem)}"


def _kinds(names: Sequence[str], file, report: Report) -> tuple[list[int], list[str]]:
    keep, kinds = [], []
    for i, n in enumerate(names):
        try:
            kinds.append(normalize_kind(n))
            keep.append(i)
        except CellsError:
            report.drop(file, f"unknown class: {n!r}")
    return keep, kinds


def _make_sample(image: Path, xyxy, names, split, source, report, masks=None) -> DetSample | None:
    try:
        w, h = image_size(image)
    except InputError as e:
        report.drop(image, f"unreadable image: {e}")
        return None
    keep, kinds = _kinds(names, image, report)
    xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)[keep]
    meta = SmearMeta(path=str(image), width=w, height=h)
    boxes, kinds2 = clean_boxes(xyxy, kinds, w, h, image, report)
    cells = Cells(xyxy=boxes, kind=kinds2, meta=meta)
    if masks is not None and len(boxes) == len(keep) and len(keep):
        full = np.asarray(masks)[keep]
        cells = Cells.from_full_masks(boxes, kinds2, full, meta=meta, mask_source=["label"] * len(boxes))
    return DetSample(image=image, cells=cells, split=split, source=source, name=_safe_name(source, image.stem))


# ---------------------------------------------------------------------- Pascal VOC
def read_voc_file(xml: Path, image_dir: Path, split: str, source: str, report: Report) -> DetSample | None:
    from xml.etree import ElementTree as ET

    from supervision.dataset.formats.pascal_voc import detections_from_xml_obj

    try:
        root = ET.parse(xml).getroot()
    except (ET.ParseError, OSError) as e:
        report.drop(xml, f"malformed XML: {e}")
        return None
    fname = root.findtext("filename") or f"{xml.stem}.jpg"
    image = image_dir / Path(fname).name
    if not image.exists():
        cands = [p for p in image_dir.glob(f"{xml.stem}.*") if p.suffix.lower() in IMAGE_SUFFIXES]
        if not cands:
            report.drop(xml, "label without image: no image " + str(image))
            return None
        image = cands[0]
    try:
        w, h = image_size(image)
    except InputError as e:
        report.drop(image, f"unreadable image: {e}")
        return None
    names = [o.findtext("name", "").strip() for o in root.iter("object")]
    classes = sorted(set(names))
    try:
        det, cls = detections_from_xml_obj(root, classes=classes, resolution_wh=(w, h))
    except (ValueError, TypeError, AttributeError) as e:
        report.drop(xml, f"malformed XML: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        return None
    box_names = [cls[int(c)] for c in det.class_id] if len(det) else []
    return _make_sample(image, det.xyxy, box_names, split, source, report)


def load_bccd(root: Path, report: Report) -> list[DetSample]:
    """BCCD (Shenggan) VOC layout with its published ImageSets split (train/val/test = 205/87/72)."""
    root = Path(root)
    ann, img, sets = root / "Annotations", root / "JPEGImages", root / "ImageSets" / "Main"
    for p in (ann, img):
        if not p.is_dir():
            raise ConversionError(f"{root}: not a BCCD folder (missing {p.name}/)")
    split_of: dict[str, str] = {}
    for sp in ("train", "val", "test"):
        f = sets / f"{sp}.txt"
        if not f.exists():
            raise ConversionError(f"{root}: missing split file {f}")
        for line in f.read_text().split():
            split_of[line.strip()] = sp
    samples = []
    xmls = sorted(ann.glob("*.xml"))
    if not xmls:
        raise ConversionError(f"{ann}: no XML annotations")
    for xml in xmls:
        sp = split_of.get(xml.stem)
        if sp is None:
            report.drop(xml, "not in any published split (ImageSets/Main)")
            continue
        s = read_voc_file(xml, img, sp, "bccd", report)
        if s is not None:
            samples.append(s)
    labelled = {x.stem for x in xmls}
    for im in sorted(img.iterdir()):
        if im.suffix.lower() in IMAGE_SUFFIXES and im.stem not in labelled:
            report.drop(im, "image without label file")
    return samples


def load_voc_dir(root: Path, split: str, source: str, report: Report) -> list[DetSample]:
    """Any VOC folder: XML and images side by side (Roboflow) or Annotations/ + JPEGImages/."""
    root = Path(root)
    ann = root / "Annotations" if (root / "Annotations").is_dir() else root
    img = root / "JPEGImages" if (root / "JPEGImages").is_dir() else root
    out = []
    for xml in sorted(ann.glob("*.xml")):
        s = read_voc_file(xml, img, split, source, report)
        if s is not None:
            out.append(s)
    return out


# ---------------------------------------------------------------------- YOLO
def read_yolo_names(data_yaml: Path) -> list[str]:
    import yaml

    try:
        d = yaml.safe_load(Path(data_yaml).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConversionError(f"{data_yaml}: unreadable data.yaml ({str(e).splitlines()[0]})") from None
    names = (d or {}).get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names, key=int)]
    if not names:
        raise ConversionError(f"{data_yaml}: no class names")
    return [str(n) for n in names]


def load_yolo_split(
    images: Path, labels: Path, names: Sequence[str], split: str, source: str, report: Report
) -> list[DetSample]:
    """One YOLO split: ``images/`` + ``labels/`` with the same stems."""
    from supervision.dataset.formats.yolo import yolo_annotations_to_detections

    out = []
    imgs = {p.stem: p for p in sorted(Path(images).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES} if Path(images).is_dir() else {}
    labs = {p.stem: p for p in sorted(Path(labels).glob("*.txt"))} if Path(labels).is_dir() else {}
    for stem in sorted(set(labs) - set(imgs)):
        report.drop(labs[stem], "label without image")
    for stem, image in imgs.items():
        lab = labs.get(stem)
        if lab is None:
            report.drop(image, "image without label file")
            continue
        lines = [ln for ln in lab.read_text(errors="replace").splitlines() if ln.strip()]
        if not lines:
            report.notes.append(f"{lab}: empty label file (image kept as a background image)")
        try:
            w, h = image_size(image)
        except InputError as e:
            report.drop(image, f"unreadable image: {e}")
            continue
        try:
            with_masks = any(len(ln.split()) >= 7 for ln in lines)
            det = yolo_annotations_to_detections(lines, resolution_wh=(w, h), with_masks=with_masks)
        except (ValueError, IndexError) as e:
            report.drop(lab, f"malformed label file: {str(e).splitlines()[0]}")
            continue
        bad = [int(c) for c in det.class_id if not 0 <= int(c) < len(names)]
        if bad:
            report.drop(lab, f"malformed label file: class id {bad[0]} outside 0..{len(names) - 1}")
            continue
        box_names = [names[int(c)] for c in det.class_id]
        s = _make_sample(image, det.xyxy, box_names, split, source, report, masks=det.mask)
        if s is not None:
            out.append(s)
    return out


def load_txl_pbc(root: Path, report: Report) -> list[DetSample]:
    """TXL-PBC: YOLO boxes, classes ``0 WBC, 1 RBC, 2 Platelets``, images/{train,val}."""
    root = Path(root)
    names = read_yolo_names(root / "data.yaml")
    samples = []
    found = False
    for sp in ("train", "val", "test"):
        if (root / "images" / sp).is_dir():
            found = True
            samples += load_yolo_split(root / "images" / sp, root / "labels" / sp, names, sp, "txl", report)
    if not found:
        raise ConversionError(f"{root}: no images/train or images/val folder")
    return samples


# ---------------------------------------------------------------------- COCO
def load_coco_json(ann_file: Path, image_dir: Path, split: str, source: str, report: Report) -> list[DetSample]:
    from supervision.dataset.formats.coco import coco_annotations_to_detections

    try:
        d = json.loads(Path(ann_file).read_text())
        cats = {int(c["id"]): str(c["name"]) for c in d["categories"]}
        images = d["images"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConversionError(f"{ann_file}: not a COCO annotation file ({e})") from None
    by_img = defaultdict(list)
    for a in d.get("annotations", []):
        by_img[a.get("image_id")].append(a)
    out = []
    for im in images:
        image = Path(image_dir) / im["file_name"]
        if not image.exists():
            report.drop(image, "label without image")
            continue
        anns = by_img.get(im["id"], [])
        try:
            w, h = image_size(image)
            det = coco_annotations_to_detections(anns, resolution_wh=(w, h), with_masks=any(a.get("segmentation") for a in anns))
        except InputError as e:
            report.drop(image, f"unreadable image: {e}")
            continue
        except (ValueError, KeyError, TypeError) as e:
            report.drop(ann_file, f"malformed annotation for {im['file_name']}: {e}")
            continue
        names = [cats.get(int(c), str(c)) for c in det.class_id]
        s = _make_sample(image, det.xyxy, names, split, source, report, masks=det.mask)
        if s is not None:
            out.append(s)
    return out


def load_converted(src: Path, report: Report) -> list[DetSample]:
    """Every split of a converted YOLO folder (``data.yaml``, ``images/<split>``, ``labels/<split>``)."""
    src = Path(src)
    if not (src / "data.yaml").exists():
        raise ConversionError(f"{src}: not a converted YOLO folder (no data.yaml)")
    names = read_yolo_names(src / "data.yaml")
    samples = []
    for sp in SPLITS:
        if (src / "images" / sp).is_dir():
            got = load_yolo_split(src / "images" / sp, src / "labels" / sp, names, sp, src.name, report)
            for s in got:
                s.name = s.image.stem  # already prefixed by its source at conversion
            samples += got
    return samples
