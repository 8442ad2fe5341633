"""``bccdet convert ...``: data sets into the YOLO detect / segment / classify layouts (:mod:`bccdet.conversion`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import friendly

_OUT = typer.Option(..., "--out", "-o", help="Output folder (replaced atomically when complete).")
_TASK = typer.Option("detect", help="detect (boxes) or segment (polygons).")
_MASKS = typer.Option("ellipse", help="For segment: masks from boxes: ellipse (inscribed), box, sam (LiteMedSAM box "
                      "prompts; 1-3 s per image on a 2-core CPU), or sam-wbc (SAM's masks for white cells only, ellipses for the rest).")
_SEED = typer.Option(0, help="Seed of the random split (deterministic).")


@friendly
def convert_bccd(root: Path = typer.Argument(..., help="BCCD folder (Annotations/, JPEGImages/, ImageSets/)."),
                 out: Path = _OUT, task: str = _TASK, masks: str = _MASKS):
    """BCCD Pascal VOC -> YOLO, keeping the published train/val/test split (205/87/72)."""
    from ..conversion import convert_detection

    convert_detection("bccd", root, out, task=task, masks=masks, echo=typer.echo)


@friendly
def convert_txl(root: Path = typer.Argument(..., help="TXL-PBC folder (data.yaml, images/, labels/)."),
                out: Path = _OUT, task: str = _TASK, masks: str = _MASKS):
    """TXL-PBC YOLO boxes -> our class order (rbc, wbc, platelet)."""
    from ..conversion import convert_detection

    convert_detection("txl-pbc", root, out, task=task, masks=masks, echo=typer.echo)


@friendly
def convert_roboflow(
    src: Optional[Path] = typer.Argument(None, help="Roboflow export: folder or zip (YOLO, COCO or VOC)."),
    out: Path = _OUT, task: str = _TASK, masks: str = _MASKS,
    download: Optional[str] = typer.Option(None, help="WORKSPACE/PROJECT/VERSION to download (needs ROBOFLOW_API_KEY)."),
):
    """A Roboflow export (or SDK download) -> YOLO."""
    from ..conversion import convert_roboflow as convert

    convert(src, out, download=download, task=task, masks=masks, echo=typer.echo)


@friendly
def convert_merge(
    sources: List[Path] = typer.Argument(..., help="Converted YOLO detect/segment folders; on duplicates the first listed wins."),
    out: Path = _OUT, task: str = _TASK, masks: str = _MASKS,
):
    """Merge converted detection sets: de-duplicate by pixel hash and fail on test leakage."""
    from ..conversion import merge_detection

    merge_detection(sources, out, task=task, masks=masks, echo=typer.echo)


@friendly
def convert_fix(
    src: Path = typer.Argument(..., help="Converted YOLO detect/segment folder."),
    corrections: Path = typer.Option(..., help="CSV of reviewed edits: split,image,action,kind,x1,y1,x2,y2,reason "
                                                "(action add | relabel | delete; box in pixels)."),
    out: Path = _OUT, task: str = typer.Option("segment", help="detect or segment (added boxes get ellipse masks)."),
):
    """Apply a reviewed corrections list (e.g. from `curate`'s suspects) to a converted set."""
    from ..conversion import fix_detection

    fix_detection(src, corrections, out, task=task, echo=typer.echo)


@friendly
def convert_pbc(root: Path = typer.Argument(..., help="PBC class folders (JPG original or WebP copy)."),
                out: Path = _OUT, seed: int = _SEED):
    """PBC -> classify layout: duplicates removed, stratified 70/15/15 split."""
    from ..conversion import convert_classify

    convert_classify("pbc", root, out, seed=seed, echo=typer.echo)


@friendly
def convert_deepapl(root: Path = typer.Argument(..., help="DeepAPL folder (master.csv, Patient_*/<class>/)."),
                    out: Path = _OUT, seed: int = _SEED):
    """DeepAPL -> classify layout split by patient (stratified by APL/AML), classes mapped to our vocabulary."""
    from ..conversion import convert_classify

    convert_classify("deepapl", root, out, seed=seed, echo=typer.echo)


@friendly
def convert_folder(root: Path = typer.Argument(..., help="ROOT/<class>/* or ROOT/{train,val,test}/<class>/*."),
                   out: Path = _OUT, seed: int = _SEED,
                   keep_names: bool = typer.Option(False, help="Keep folder names instead of mapping to our labels.")):
    """Generic class folders (e.g. the Kaggle blood-cell images) -> classify layout."""
    from ..conversion import convert_classify

    convert_classify("folder", root, out, seed=seed, keep_names=keep_names, echo=typer.echo)
