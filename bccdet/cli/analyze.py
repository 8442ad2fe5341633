"""``bccdet analyze``: the whole pipeline on smear images (:func:`bccdet.analysis.analyze_images`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..defaults import EDGE_SLIVER, RUNTIME, SCALE
from .common import (CLASSIFIER_HELP, EDGE_HELP, REVIEW_HELP, SCALE_HELP, _err, _review_threshold, device_option,
                     edge_option, friendly, runtime_option, scale_option)


@friendly
def analyze(
    images: List[Path] = typer.Argument(None, help="Smear images (JPG, PNG, TIFF, ...) or folders of them (searched recursively)."),
    out: Path = typer.Option(Path("bccdet-out"), "--out", "-o", help="Output folder; one sub-folder per image."),
    sample: bool = typer.Option(False, "--sample", help="Analyse the sample smear (first BCCD test image)."),
    detector: Optional[str] = typer.Option(None, help="Detector name from weights/registry.json or a .pt file."),
    device: str = device_option(),
    refine: bool = typer.Option(True, "--refine/--no-refine", help="Refine WBC and platelet masks with SAM (LiteMedSAM)."),
    classify: bool = typer.Option(True, "--classify/--no-classify", help="Classify leukocytes."),
    fmt: List[str] = typer.Option([], "--format", help="Extra exports: coco, geojson (repeatable)."),
    classifier: Optional[str] = typer.Option(None, help=CLASSIFIER_HELP),
    sam: Optional[str] = typer.Option(None, help="SAM model: a registered name (default: the registry's sam default, else LiteMedSAM), 'litemedsam' for LiteMedSAM as shipped, or a checkpoint file (our decoder fine-tune .pt, Meta's vit_b/l/h .pth)."),
    scale: str = typer.Option(SCALE, "--scale", callback=lambda v: scale_option(v), help=SCALE_HELP),
    edge_sliver: float = typer.Option(EDGE_SLIVER, "--edge-sliver", callback=lambda v: edge_option(v), help=EDGE_HELP),
    review_threshold: Optional[float] = typer.Option(None, "--review-threshold", callback=_review_threshold,
                                                     help=REVIEW_HELP),
    rbc_morphology: bool = typer.Option(True, "--rbc-morphology/--no-rbc-morphology",
                                        help="Type every red cell's morphology and grade the field as ICSH does (docs/rbc.md)."),
    runtime: str = runtime_option(RUNTIME),
):
    """Detect, segment and type every cell of each smear image; write OUT/<image stem>/report.{json,html}, cells.csv, overlay.png."""
    from ..analysis import analyze_images

    paths = list(images or [])
    if sample:
        from ..data import sample_image

        paths.insert(0, sample_image())
    if not paths:
        _err("no images given (pass image files, or --sample)")
        raise typer.Exit(2)
    res = analyze_images(paths, out, formats=fmt, detector=detector, device=device, refine=refine, sam=sam,
                         classify=classify, classifier=classifier, review_threshold=review_threshold,
                         rbc_morphology=rbc_morphology, scale=scale, edge_sliver=edge_sliver, runtime=runtime,
                         echo=typer.echo, error=_err)
    if not res["done"] and not res["failed"]:
        raise typer.Exit(2)
    if res["failed"]:
        raise typer.Exit(1)
