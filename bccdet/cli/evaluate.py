"""``bccdet evaluate classifier | detector`` (:mod:`bccdet.evaluation`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..defaults import BORDER, EDGE_SLIVER
from .common import EDGE_HELP, device_option, edge_option, friendly


@friendly
def evaluate_classifier(
    data: List[Path] = typer.Option(..., help="Converted classify folder(s)."),
    weights: Optional[str] = typer.Option(None, help="Classifier name or .pt (default: the registered default)."),
    split: str = typer.Option("test"), out: Optional[Path] = typer.Option(None, help="Folder for metrics JSON + confusion PNG."),
    context: float = typer.Option(1.0, help="<1: crop the image centre first (field-like framing check)."),
    device: str = device_option(),
):
    """Accuracy, macro-F1, per-class precision / sensitivity / specificity and a confusion matrix."""
    from ..evaluation import evaluate_classifier as evaluate

    res = evaluate(data, weights, split=split, out=out, device=device, context=context)
    typer.echo(f"{res['model']['name']}: accuracy {res['accuracy']:.4f}, macro-F1 {res['macro_f1']:.4f} on {split}")
    per = res.get("per_class", {})
    if per:
        typer.echo(f"{'label':<22}{'n':>6}{'prec':>8}{'sens':>8}{'spec':>8}")
        for lab, v in per.items():
            typer.echo(f"{lab:<22}{v.get('support', 0):>6}{v.get('precision', 0):>8.3f}{v.get('sensitivity', 0):>8.3f}{v.get('specificity', 0):>8.3f}")
    if out:
        typer.echo(f"wrote {out}")


@friendly
def evaluate_detector(
    data: Path = typer.Option(..., help="data.yaml of a converted detect/segment set."),
    weights: Optional[str] = typer.Option(None, help="Detector name or .pt (default: the registered default)."),
    split: str = typer.Option("test", help="train, val or test."),
    imgsz: Optional[int] = typer.Option(None, help="Inference size (default: the size the model was trained at)."),
    batch: int = typer.Option(8), device: str = device_option(),
    iou: float = typer.Option(0.6, help="NMS IoU threshold."),
    border: int = typer.Option(BORDER, min=0, help="Grey border around each image, in network pixels, as analyze "
                               "adds it; 0: the bare image."),
    edge_sliver: float = typer.Option(EDGE_SLIVER, "--edge-sliver", callback=lambda v: edge_option(v),
                                      help=EDGE_HELP + " As analyze."),
    out: Optional[Path] = typer.Option(None, "--json", help="Also write the metrics to this JSON file."),
):
    """Box and mask precision, recall, mAP50 and mAP50-95 (overall and per class) and ms per image, of the
    detector as analyze runs it (grey border, edge rule; conf 0.001 so the whole precision-recall curve counts)."""
    from ..adapters.yolo import format_metrics
    from ..evaluation import evaluate_detector as evaluate

    res = evaluate(data, weights, split=split, imgsz=imgsz, batch=batch, device=device, iou=iou, border=border,
                   edge_sliver=edge_sliver, json_out=out)
    typer.echo(format_metrics(res))
    if out:
        typer.echo(f"wrote {out}")
