"""``bccdet batch``: the analyze pipeline over many slides (resumable, parallel, whole-slide aware, Ray).

The engine is :func:`bccdet.batch.run_batch`; see docs/batch.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..defaults import EDGE_SLIVER
from .common import EDGE_HELP, REVIEW_HELP, SCALE_HELP, _err, _review_threshold, device_option, edge_option, friendly, runtime_option, scale_option


def _detector_options(imgsz, conf, scale, edge_sliver) -> Optional[dict]:
    """The detector options a batch records: only those not at their default (older batches resume unchanged)."""
    if edge_sliver == EDGE_SLIVER:  # the default: not recorded, as --scale auto
        edge_sliver = None
    if imgsz is None and conf is None and scale in (None, "auto") and edge_sliver is None:
        return None
    opts = {}
    if imgsz is not None:
        opts["imgsz"] = imgsz
    if conf is not None:
        opts["conf"] = conf
    if scale not in (None, "auto"):
        opts["scale"] = scale
    if edge_sliver is not None:
        opts["edge_sliver"] = edge_sliver
    return opts


@friendly
def batch(
    inputs: List[str] = typer.Argument(
        None, metavar="INPUT...",
        help="Slide folders, images, whole-slide scans (SVS, NDPI, pyramidal TIFF), globs (quoted) or a CSV list."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: manifest.json, slides.csv/.parquet, summary.html, one folder per slide."),
    workers: Optional[int] = typer.Option(
        None, "--workers", "-w", min=1,
        help="Parallel workers, each loading the models once (local default 1; ray default: every CPU of the cluster)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the batch in OUT: skip what is done, redo what is partial or failed."),
    backend: str = typer.Option("local", "--backend", help="local (this machine) or ray (a Ray cluster; see docs/batch.md)."),
    detector: Optional[str] = typer.Option(
        None, help="Detector name from weights/registry.json or a .pt file (--resume: the batch's own)."),
    classifier: Optional[str] = typer.Option(
        None, help="Classifier name from weights/registry.json or a .pt file (default: the registered one)."),
    device: str = device_option(),
    classify: Optional[bool] = typer.Option(
        None, "--classify/--no-classify", help="Classify leukocytes when a classifier is registered (the default)."),
    refine: Optional[bool] = typer.Option(
        None, "--refine/--no-refine", help="Refine WBC and platelet masks with SAM, as analyze does (the default)."),
    fmt: List[str] = typer.Option([], "--format", help="Extra exports per field: coco, geojson (repeatable)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join (e.g. auto or ray://HEAD:10001); default: start a local Ray."),
    progress: Optional[bool] = typer.Option(
        None, "--progress/--no-progress", help="Progress bar with ETA (default: when stderr is a terminal)."),
    images: Optional[str] = typer.Option(
        None, "--images",
        help="What the images of a slide folder are: auto (folder layout, else size: at most 400 px = one cell), "
             "fields (smear fields, analysed) or cells (single-cell crops, classified). --resume: the batch's own."),
    adapt: Optional[bool] = typer.Option(
        None, "--adapt/--no-adapt",
        help="Single-cell slides: re-estimate each patient's class mix and relabel with it, as classify --adapt "
             "(docs/models.md). --resume: the batch's own."),
    imgsz: Optional[int] = typer.Option(None, "--imgsz", hidden=True, help="Detector inference size (advanced)."),
    conf: Optional[float] = typer.Option(None, "--conf", hidden=True, help="Detector confidence threshold (advanced)."),
    scale: Optional[str] = typer.Option(None, "--scale", callback=lambda v: scale_option(v),
                                        help=SCALE_HELP + " Default auto; --resume: the batch's own."),
    edge_sliver: Optional[float] = typer.Option(None, "--edge-sliver", callback=lambda v: edge_option(v),
                                                help=EDGE_HELP + f" Default {EDGE_SLIVER}; --resume: the batch's own."),
    review_threshold: Optional[float] = typer.Option(None, "--review-threshold", callback=lambda v: _review_threshold(v),
                                                     help=REVIEW_HELP + " --resume: the batch's own."),
    rbc_morphology: Optional[bool] = typer.Option(
        None, "--rbc-morphology/--no-rbc-morphology",
        help="Type every red cell (ICSH grades per slide, from all its fields); on by default. --resume: the batch's own."),
    runtime: Optional[str] = runtime_option(None),
):
    """Analyse many slides: one folder per slide (fields, or a CellaVision export of single cells), loose images
    and whole-slide scans; write OUT/manifest.json, OUT/<slide>/slide.json, slides.csv, slides.parquet and
    summary.html. Exit status 1 when any input failed (recorded in the manifest; the others are processed)."""
    from ..batch import IMAGE_KINDS, run_batch

    if backend not in ("local", "ray"):
        _err(f"unknown --backend {backend!r}; expected local or ray")
        raise typer.Exit(2)
    bad_fmt = sorted(set(fmt) - {"coco", "geojson"})
    if bad_fmt:
        _err(f"unknown --format {bad_fmt}; expected coco or geojson")
        raise typer.Exit(2)
    if images is not None and images not in IMAGE_KINDS:
        _err(f"unknown --images {images!r}; expected auto, fields or cells")
        raise typer.Exit(2)
    if not inputs and not resume:
        _err("no inputs given (slide folders, images, whole-slide scans, globs or a CSV list)")
        raise typer.Exit(2)
    from ..io import check_out_dir

    check_out_dir(out)
    det_opts = _detector_options(imgsz, conf, scale, edge_sliver)
    res = run_batch(list(inputs or []), out, resume=resume, workers=workers, backend=backend, detector=detector, classifier=classifier,
                    device=device, classify=classify, refine=refine, formats=tuple(fmt) or None, ray_address=ray_address,
                    detector_options=det_opts, progress=progress, images=images, adapt=adapt,
                    review_threshold=review_threshold, rbc_morphology=rbc_morphology, runtime=runtime,
                    log=lambda m: typer.echo(m, err=True))
    typer.echo(
        f"batch: {res['slides']} slide(s) ({res['slides_done']} done, {res['slides_failed']} failed, "
        f"{res['slides_skipped']} skipped), {res['fields']} image(s) ({res['fields_done']} done, "
        f"{res['fields_failed']} failed, {res['fields_skipped']} skipped) in {res['elapsed_s']:.0f} s "
        f"-> {Path(res['out']) / 'summary.html'}"
    )
    if res["failed"]:
        typer.echo(f"some inputs failed: reasons in {Path(res['out']) / 'manifest.json'}", err=True)
        raise typer.Exit(1)
