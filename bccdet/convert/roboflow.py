"""Roboflow exports (folder or zip; YOLO, COCO or VOC flavour) and SDK downloads."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from .common import ConversionError, DetSample, Report
from .detection import load_coco_json, load_voc_dir, load_yolo_split, read_yolo_names

RF_SPLITS = {"train": "train", "valid": "val", "val": "val", "test": "test"}


def safe_extract(zip_path: Path, target: Path, max_bytes: int = 20 << 30) -> Path:
    """Extract a zip, refusing members that would escape ``target`` (zip-slip), links and zip bombs."""
    target = Path(target).resolve()
    target.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ConversionError(f"{zip_path}: not a readable zip ({e})") from None
    with zf:
        total = 0
        for info in zf.infolist():
            name = info.filename
            dest = (target / name).resolve()
            if os.path.isabs(name) or ".." in Path(name).parts or not str(dest).startswith(str(target) + os.sep) and dest != target:
                raise ConversionError(f"{zip_path}: refusing member {name!r} that escapes the target folder")
            mode = (info.external_attr >> 16) & 0o170000
            if mode == 0o120000:
                raise ConversionError(f"{zip_path}: refusing symbolic link member {name!r}")
            total += info.file_size
            if total > max_bytes:
                raise ConversionError(f"{zip_path}: uncompressed size above {max_bytes >> 30} GiB; refusing")
        zf.extractall(target)
    return target


def detect_flavour(root: Path) -> str:
    root = Path(root)
    if list(root.glob("*/_annotations.coco.json")) or (root / "_annotations.coco.json").exists():
        return "coco"
    if (root / "data.yaml").exists():
        return "yolo"
    if list(root.glob("*/*.xml")) or list(root.glob("*.xml")):
        return "voc"
    raise ConversionError(f"{root}: not a Roboflow export (no data.yaml, _annotations.coco.json or VOC XML)")


def load_roboflow(path: Path, report: Report, work: Path | None = None) -> list[DetSample]:
    """Read a Roboflow export folder or zip into samples; Roboflow's ``valid`` split becomes ``val``."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: no such file or folder")
    if path.is_file():
        work = Path(work or path.with_suffix(""))
        path = safe_extract(path, work)
        kids = [d for d in path.iterdir() if not d.name.startswith(".")]
        if len(kids) == 1 and kids[0].is_dir() and not any(k in RF_SPLITS for k in [kids[0].name]):
            path = kids[0]
    flavour = detect_flavour(path)
    source = "rf"
    samples: list[DetSample] = []
    splits = [(d, RF_SPLITS[d.name]) for d in sorted(path.iterdir()) if d.is_dir() and d.name in RF_SPLITS]
    if not splits:
        splits = [(path, "train")]
    if flavour == "yolo":
        names = read_yolo_names(path / "data.yaml")
        for d, sp in splits:
            samples += load_yolo_split(d / "images", d / "labels", names, sp, source, report)
    elif flavour == "coco":
        for d, sp in splits:
            ann = d / "_annotations.coco.json"
            if ann.exists():
                samples += load_coco_json(ann, d, sp, source, report)
    else:
        for d, sp in splits:
            samples += load_voc_dir(d, sp, source, report)
    report.notes.append(f"roboflow export read as {flavour} from {path}")
    return samples


def download_roboflow(workspace: str, project: str, version: int, dest: Path, fmt: str = "yolov8") -> Path:
    """Download a dataset version through the roboflow SDK (needs ROBOFLOW_API_KEY and network)."""
    key = os.environ.get("ROBOFLOW_API_KEY")
    if not key:
        raise ConversionError("ROBOFLOW_API_KEY is not set: export the dataset from roboflow.com and pass the zip instead")
    try:
        from roboflow import Roboflow

        rf = Roboflow(api_key=key)
        ds = rf.workspace(workspace).project(project).version(int(version)).download(fmt, location=str(dest))
    except Exception as e:  # network / auth errors from the SDK
        raise ConversionError(f"roboflow download failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return Path(getattr(ds, "location", dest))
