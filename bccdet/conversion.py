"""The ``bccdet convert`` jobs, one function each: check OUT, load, de-duplicate, write, report.

The loaders and writers are in :mod:`bccdet.convert`; these put them together in the order every job
needs (OUT checked against its sources before anything is read; the report printed even when every item
was dropped) and return the :class:`~bccdet.convert.common.Report`. ``echo`` gets the report and the
closing line.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Sequence

from .convert.common import ConversionError, Report

DETECTION_SETS = ("bccd", "txl-pbc")
CLASSIFY_SETS = ("pbc", "deepapl", "folder")


def _finish(report: Report, out: Path, samples, writer, echo: Callable[[str], None], **kw) -> Report:
    if not samples:
        echo(report.format())
        raise ConversionError("nothing to convert: every item was dropped (see the list above)")
    writer(samples, out, report, **kw)
    echo(report.format())
    echo(f"wrote {out} ({sum(report.images.values())} images); summary in {out / 'summary.json'}")
    return report


def _detection(loader, root: Path, out: Path, task: str, masks: str, name: str, echo, prefer=()) -> Report:
    from .convert.common import check_out, dedup_and_check_leakage, write_yolo_detection

    check_out(out, [root])
    report = Report(name)
    samples = loader(root, report)
    samples = dedup_and_check_leakage(samples, report, prefer=prefer)
    return _finish(report, out, samples, write_yolo_detection, echo, task=task, masks=masks)


def convert_detection(kind: str, root: Path, out: Path, *, task: str = "detect", masks: str = "ellipse",
                      echo: Callable[[str], None] = print) -> Report:
    """A published detection set (``kind``: bccd, txl-pbc) at ``root`` -> YOLO detect / segment at ``out``."""
    from .convert import detection

    loaders = {"bccd": detection.load_bccd, "txl-pbc": detection.load_txl_pbc}
    if kind not in loaders:
        raise ConversionError(f"unknown detection set {kind!r}; expected one of {', '.join(DETECTION_SETS)}")
    return _detection(loaders[kind], Path(root), Path(out), task, masks, kind, echo)


def convert_roboflow(src: Path | None, out: Path, *, download: str | None = None, task: str = "detect",
                     masks: str = "ellipse", echo: Callable[[str], None] = print) -> Report:
    """A Roboflow export (folder or zip; or ``download`` = WORKSPACE/PROJECT/VERSION through the SDK, next to
    ``out``) -> YOLO detect / segment at ``out``."""
    from .convert.roboflow import download_roboflow, load_roboflow

    out = Path(out)
    if download:
        parts = download.split("/")
        if len(parts) != 3:
            raise ConversionError("--download expects WORKSPACE/PROJECT/VERSION")
        src = download_roboflow(parts[0], parts[1], int(parts[2]), out.with_name(out.name + "-download"))
    if src is None:
        raise ConversionError("give an export folder/zip or --download WORKSPACE/PROJECT/VERSION")
    out.parent.mkdir(parents=True, exist_ok=True)  # _detection checks OUT against the export first
    # a zip is unpacked into a fresh hidden folder beside OUT (same file system: the set hard-links its
    # images), removed when the set is written: nothing of an earlier export can leak into this one
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.extract-", dir=out.parent) as work:
        return _detection(lambda r, rep: load_roboflow(r, rep, work=Path(work)), Path(src), out, task, masks,
                          "roboflow", echo)


def merge_detection(sources: Sequence[Path], out: Path, *, task: str = "detect", masks: str = "ellipse",
                    echo: Callable[[str], None] = print) -> Report:
    """Converted detection sets -> one, de-duplicated by pixel hash (the first listed wins), failing on test leakage."""
    from .convert.common import check_out, dedup_and_check_leakage, write_yolo_detection
    from .convert.detection import load_converted

    sources, out = [Path(s) for s in sources], Path(out)
    check_out(out, sources)
    report = Report("merged")
    samples = [s for src in sources for s in load_converted(src, report)]
    samples = dedup_and_check_leakage(samples, report, prefer=[s.name for s in sources])
    return _finish(report, out, samples, write_yolo_detection, echo, task=task, masks=masks)


def fix_detection(src: Path, corrections: Path, out: Path, *, task: str = "segment",
                  echo: Callable[[str], None] = print) -> Report:
    """A converted set with a reviewed corrections CSV applied (added boxes get ellipse masks)."""
    from .convert.common import check_out, write_yolo_detection
    from .convert.corrections import apply_corrections, read_corrections
    from .convert.detection import load_converted

    src, out = Path(src), Path(out)
    check_out(out, [src])
    rows = read_corrections(corrections)
    report = Report(f"{src.name}-fixed")
    samples = apply_corrections(load_converted(src, report), rows, report)
    return _finish(report, out, samples, write_yolo_detection, echo, task=task, masks="ellipse")


def convert_classify(kind: str, root: Path, out: Path, *, seed: int = 0, keep_names: bool = False,
                     echo: Callable[[str], None] = print) -> Report:
    """Single-cell images (``kind``: pbc, deepapl, or folder: generic class folders, the set named after
    ``root``; ``keep_names`` keeps its folder names as labels) -> the classify layout at ``out``."""
    from .convert import classify
    from .convert.common import check_out, write_classify

    root, out = Path(root), Path(out)
    loaders = {"pbc": classify.load_pbc, "deepapl": classify.load_deepapl, "folder": classify.load_folder}
    if kind not in loaders:
        raise ConversionError(f"unknown classify set {kind!r}; expected one of {', '.join(CLASSIFY_SETS)}")
    kw = {"keep_names": keep_names} if kind == "folder" else {}
    check_out(out, [root])
    report = Report(root.name if kind == "folder" else kind)
    samples = loaders[kind](root, report, seed=seed, **kw)
    return _finish(report, out, samples, write_classify, echo)


def convert_chula(root: Path, out: Path, *, detector: str | None = None, device: str = "cpu", seed: int = 0) -> dict:
    """Chula RBC-12 points -> the red-cell morphology set at ``out``, the points paired with the red cells of
    ``detector`` (default: the registered one), split by image (:func:`bccdet.convert.chula.build`; its summary)."""
    from .convert.chula import build
    from .pipeline import load_detector

    return build(Path(root), Path(out), load_detector(detector, device=device), seed=seed)
