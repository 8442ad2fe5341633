"""``bccdet classify``: single-cell images -> cells.csv, summary.json, report.html (:func:`bccdet.classify.classify_export`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..defaults import CLASSIFIER_PRECISION, CLASSIFY_BATCH, RUNTIME
from .common import CLASSIFIER_HELP, REVIEW_HELP, _err, _precision, _review_threshold, device_option, friendly, runtime_option


@friendly
def classify(
    paths: List[Path] = typer.Argument(..., help="Single-cell images or folders (searched recursively), e.g. a CellaVision export."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: cells.csv, summary.json, report.html."),
    classifier: Optional[str] = typer.Option(None, help=CLASSIFIER_HELP),
    device: str = device_option(),
    batch: int = typer.Option(CLASSIFY_BATCH, help="Crops per forward pass."),
    patients: str = typer.Option("call", "--patients",
                                 help="Who is one patient: 'call' (everything given), 'path' (each PATH), 'folder' (each "
                                      "sub-folder of a PATH, e.g. a folder of CellaVision exports). Several patients: "
                                      "OUT/patients.csv and one summary per patient."),
    adapt: bool = typer.Option(False, "--adapt/--no-adapt",
                               help="Re-estimate each patient's class mix (EM) and relabel the cells with it (patients "
                                    "of 20+ cells). Helps most on cells from a lab unlike the training data; rare labels "
                                    "lose some sensitivity. See docs/models.md."),
    precision: str = typer.Option(CLASSIFIER_PRECISION, callback=lambda v: _precision(v),
                                  help="fp32 (as measured in the model card), bf16 (1.4-1.7x faster where the CPU has "
                                       "bfloat16; PBC test 0.9883 against 0.9891) or auto (bf16 where native)."),
    review_threshold: Optional[float] = typer.Option(None, "--review-threshold", callback=_review_threshold,
                                                     help=REVIEW_HELP),
    runtime: str = runtime_option(RUNTIME),
):
    """Classify single-cell images; writes OUT/cells.csv (path,label,score,review,p_<label>...), OUT/summary.json and
    OUT/report.html (flags, differential, a gallery per label with the cells to review first)."""
    from ..classify import classify_export

    res = classify_export(paths, out, classifier=classifier, device=device, batch=batch, patients=patients,
                          adapt=adapt, precision=precision, review_threshold=review_threshold,
                          runtime=runtime, echo=typer.echo, error=_err)
    if res["unreadable"]:
        raise typer.Exit(1)
