"""``bccdet curate``, ``curate-cls``, ``curate-export``, ``install-plugin``: curation in FiftyOne (docs/curation.md).

The workflows are :mod:`bccdet.curate` and :mod:`bccdet.adapters.fiftyone`; serving the FiftyOne App (and
stopping it) is here.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import List, Optional

import typer

from .common import device_option, friendly


CURATION_OUT = Path("curation")

# options shared by curate and curate-cls
_NAME = typer.Option(..., "--name", help="FiftyOne dataset name (persistent; updated if it exists).")
_SPLIT = typer.Option([], "--split", help="Only these splits (repeatable; default all).")
_LAUNCH = typer.Option(False, "--launch", help="Serve the FiftyOne App on the dataset when done.")
_PORT = typer.Option(5151, help="App port (--launch).")
_ADDRESS = typer.Option("127.0.0.1", help="App address (--launch).")
_VERBOSE = typer.Option(False, "--verbose", help="Show FiftyOne's progress logs.")


def _quiet(verbose: bool) -> None:
    """FiftyOne logs every brain/eval step at INFO on stdout: keep our own output readable."""
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    if not verbose:
        os.environ.setdefault("FIFTYONE_LOGGING_LEVEL", "WARNING")  # read when fiftyone is imported
        for name in ("fiftyone", "fiftyone.brain", "eta"):  # in case it already was
            logging.getLogger(name).setLevel(logging.WARNING)


def _launch(ds, port: int, address: str) -> None:
    import signal

    from ..adapters.fiftyone import launch

    def _stop(signum, frame):
        raise KeyboardInterrupt

    # Ctrl-C stops serving, and so does `kill` (SIGTERM); SIGINT is restored even when a parent
    # started us with it ignored (shells do that for background jobs)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    session = launch(ds, port=port, address=address)
    try:
        typer.echo(f"FiftyOne App: http://{address}:{port}/ (dataset {ds.name!r}); Ctrl-C to stop")
        session.wait(-1)
    except KeyboardInterrupt:
        pass
    finally:
        _close_app(session)


def _close_app(session, timeout: float = 30.0) -> None:
    """``session.close()``, bounded: FiftyOne waits without a limit for its App server process to exit
    (seen to hang after Ctrl-C on a loaded machine). After ``timeout`` s the App server (FiftyOne's
    ``--51-service server`` child and its children, never the shared database) is killed."""
    import threading

    t = threading.Thread(target=session.close, daemon=True)
    t.start()
    t.join(timeout)
    if not t.is_alive():
        return
    import psutil

    for c in psutil.Process().children(recursive=True):
        try:
            cmd = c.cmdline()
            if "--51-service" in cmd and "server" in cmd:
                for g in c.children(recursive=True):
                    g.kill()
                c.kill()
        except psutil.Error:
            pass
    t.join(10)
    typer.echo(f"note: the App server did not stop within {timeout:.0f} s and was killed", err=True)


def _top(suspects, n: int = 10) -> None:
    for i, s in enumerate(suspects[:n], 1):
        typer.echo(f"  {i:>3}. {Path(s.filepath).name}  {s.kind:<9} [{', '.join(f'{v:.0f}' for v in s.box)}]  "
                   f"{s.reason:<18} {s.score:.3f}  {s.detail}")


def _timings(t: dict) -> str:
    return ", ".join(f"{k[:-2]} {v:.1f}s" for k, v in t.items())


@friendly
def curate(
    data: Path = typer.Argument(..., help="Converted YOLO detect/segment folder (data.yaml) = ground truth."),
    name: str = _NAME,
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Folder of analyze/batch outputs (report.json files); default: run the detector."),
    detector: Optional[str] = typer.Option(None, help="Detector name or .pt (predictions and embeddings)."),
    split: List[str] = _SPLIT,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where suspects.csv and evaluation.json go (default curation/NAME)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset NAME (default: update it) and a non-empty --export folder."),
    missing_conf: float = typer.Option(0.5, help="possible_missing: minimum prediction confidence."),
    iou: float = typer.Option(0.5, help="IoU at which a prediction matches a label box."),
    conf: float = typer.Option(0.25, help="Detector confidence threshold when it runs."),
    brain: bool = typer.Option(True, "--brain/--no-brain", help="Run fiftyone.brain mistakenness, hardness, uniqueness."),
    export: Optional[Path] = typer.Option(None, "--export", help="Also export the corrected labels to this folder."),
    export_format: List[str] = typer.Option(["yolo"], "--export-format", help="yolo and/or coco (repeatable)."),
    task: str = typer.Option("segment", help="YOLO task of the export: segment or detect."),
    launch: bool = _LAUNCH,
    port: int = _PORT,
    address: str = _ADDRESS,
    device: str = device_option(),
    verbose: bool = _VERBOSE,
):
    """Build/update a FiftyOne dataset from a YOLO data set, add bccdet predictions, evaluate, run the brain, tag suspected label errors (ranked CSV)."""
    _quiet(verbose)
    from ..adapters import fiftyone as bf
    from ..curate import curate_detection
    from ..io import write_text_atomic

    if export is not None and export.exists() and any(export.iterdir()) and not overwrite:
        raise bf.CurationError(f"--export {export} exists and is not empty: choose another folder or pass --overwrite")
    rule = bf.Rule(iou=iou, missing_conf=missing_conf)
    ds, summ, suspects = curate_detection(
        data, name, predictions=predictions, detector=detector, overwrite=overwrite, splits=split or None,
        rule=rule, device=device, conf=conf, brain=brain, log=typer.echo)
    out = out or CURATION_OUT / name
    csv_path = bf.write_suspects_csv(suspects, out / "suspects.csv")
    write_text_atomic(out / "evaluation.json", json.dumps(summ.eval_report, indent=2))
    typer.echo(f"dataset {name!r}: {summ.samples} images ({summ.added} added, {summ.kept} kept), "
               f"{summ.predicted} with new predictions")
    typer.echo(bf.format_eval(summ.eval_report))
    c = summ.counts
    typer.echo("suspects: " + ", ".join(f"{k} {v}" for k, v in c.items() if v is not None and not k.startswith("brain_")))
    if brain:
        typer.echo(f"fiftyone.brain flags: possible_missing {c.get('brain_possible_missing')} (confidence > 0.95), "
                   f"possible_spurious {c.get('brain_possible_spurious')}")
    _top(suspects)
    typer.echo(f"ranked list: {csv_path} ({len(suspects)} rows)")
    typer.echo(f"timings: {_timings(summ.timings)}")
    if export is not None:
        res = bf.export_labels(ds, export, formats=export_format, task=task, corrected=True, overwrite=overwrite)
        typer.echo(f"exported {res['images']} images, {res['objects']} objects -> {res['out']}")
    if launch:
        _launch(ds, port, address)

@friendly
def curate_cls(
    data: Path = typer.Argument(..., help="Converted classify folder (SPLIT/LABEL/*, manifest.csv) or LABEL/* folders."),
    name: str = _NAME,
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="CSV of classifier probabilities (file + p_<label> columns); default: an out-of-fold probe on the embeddings."),
    detector: Optional[str] = typer.Option(None, help="Embed with this detector's backbone instead of the default leukocyte classifier (used anyway when no classifier loads)."),
    split: List[str] = _SPLIT,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where suspects.csv goes (default curation/NAME)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset NAME (default: update it)."),
    near_dup_threshold: float = typer.Option(0.05, help="Near duplicates: embedding distance at most this."),
    mislabel_threshold: float = typer.Option(0.7, help="possible_mislabel: brain mistakenness at least this."),
    launch: bool = _LAUNCH,
    port: int = _PORT,
    address: str = _ADDRESS,
    device: str = device_option(),
    verbose: bool = _VERBOSE,
):
    """Curate a single-cell classification set: label mistakenness from class probabilities, hardness, uniqueness, exact and near duplicates."""
    _quiet(verbose)
    from ..adapters import fiftyone as bf
    from ..curate import curate_classification

    ds, summ, suspects = curate_classification(
        data, name, predictions=predictions, detector=detector, overwrite=overwrite, splits=split or None,
        device=device, near_dup_threshold=near_dup_threshold, mislabel_threshold=mislabel_threshold, log=typer.echo)
    out = out or CURATION_OUT / name
    csv_path = bf.write_suspects_csv(suspects, out / "suspects.csv")
    typer.echo(f"dataset {name!r}: {summ.samples} images ({summ.added} added, {summ.kept} kept)")
    for n in summ.notes:
        typer.echo(n)
    typer.echo(f"agreement of labels with the probabilities: {summ.eval_report['accuracy']:.3f}")
    typer.echo("suspects: " + (", ".join(f"{k} {v}" for k, v in summ.counts.items()) or "none"))
    _top(suspects)
    typer.echo(f"ranked list: {csv_path} ({len(suspects)} rows)")
    typer.echo(f"timings: {_timings(summ.timings)}")
    if launch:
        _launch(ds, port, address)

@friendly
def curate_export(
    name: str = typer.Argument(..., help="A dataset built by `bccdet curate`."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (YOLO layout; COCO in OUT/annotations/)."),
    fmt: List[str] = typer.Option(["yolo"], "--format", help="yolo and/or coco (repeatable)."),
    task: str = typer.Option("segment", help="segment (polygons) or detect (boxes)."),
    saved_view: Optional[str] = typer.Option(None, "--saved-view", help="Export this saved view (made in the App)."),
    tag: List[str] = typer.Option([], "--tag", help="Only samples with any of these tags (repeatable)."),
    split: List[str] = typer.Option([], "--split", help="Only these splits (repeatable)."),
    as_is: bool = typer.Option(False, "--as-is", help="Ground truth as it is (ignore the accept/reject/exclude review tags)."),
    auto: bool = typer.Option(False, "--auto", help="Also apply the tagging rule unreviewed: drop possible_spurious, add possible_missing."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty OUT."),
):
    """Export a dataset or view, with the corrected labels, back to the YOLO layout (and COCO) for training."""
    _quiet(False)
    from ..curate import export_dataset

    res = export_dataset(name, out, formats=fmt, task=task, saved_view=saved_view, tags=tag, splits=split,
                         corrected=not as_is, auto=auto, overwrite=overwrite)
    typer.echo(f"exported {res['images']} images ({res['splits']}), {res['objects']} objects -> {res['out']}")

@friendly
def install_plugin_cmd(
    plugins_dir: Optional[Path] = typer.Option(None, help="FiftyOne plugins directory (default fo.config.plugins_dir)."),
    copy: bool = typer.Option(False, "--copy", help="Copy instead of symlinking (then bccdet must be installed)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing plugins_dir/bccdet."),
):
    """Install the bccdet FiftyOne plugin (plugins/bccdet) into FiftyOne's plugins directory."""
    from ..adapters.fiftyone import install_plugin

    dst = install_plugin(plugins_dir, copy=copy, overwrite=overwrite)
    import yaml

    ops = yaml.safe_load((Path(dst) / "fiftyone.yml").read_text()).get("operators", [])
    typer.echo(f"installed {dst}: operators " + ", ".join(f"@bccdet/bccdet/{o}" for o in ops))
