"""``bccdet analyze`` as a library call: many smear images -> one report folder each under OUT."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable

from .io import InputError, check_out_dir, expand_images, read_image
from .pipeline import check_formats, load_pipeline


def replaceable(d: Path, image: Path) -> bool:
    """May the report of ``image`` replace folder ``d``? Only when ``d`` is absent or an earlier report of the
    same image file (re-running updates it); a report of another image or any other folder is kept."""
    if not d.exists():
        return True
    try:
        prev = json.loads((d / "report.json").read_text())["image"]["path"]
        return Path(prev).resolve() == Path(image).resolve()
    except Exception:
        return False


def _stdout(msg: str) -> None:
    print(msg)


def _stderr(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def summary_line(rep: dict, total_ms: float, dest: Path) -> str:
    c = rep["summary"]["counts"]
    sc = rep["image"].get("detector_scale")
    size = ""
    if sc:
        size = f"(large cells: detected at {sc:.2f}x) " if sc < 1 else f"(small cells: detected upscaled {sc:.2f}x) "
    return (f"{c['rbc']} RBC, {c['wbc']} WBC, {c['platelet']} platelets {size}({total_ms:.0f} ms) -> "
            f"{dest}/report.html")


def analyze_images(paths, out: str | Path, formats=(), *, echo: Callable[[str], None] = _stdout,
                   error: Callable[[str], None] = _stderr, **pipeline_options) -> dict:
    """Analyse each image (folders: the images inside, recursively, leaving out OUT) into OUT/<stem>/.

    Bad input that stops the whole run (unknown format, an unusable OUT, no images at all) is an
    :class:`InputError`; an image that cannot be read or analysed is one ``error`` line and counted in
    ``failed``, and the others go on. ``pipeline_options`` are :func:`bccdet.load_pipeline`'s. Returns
    ``{"done": [report folders], "failed": n}``.
    """
    formats = check_formats(formats)
    out = Path(out)
    check_out_dir(out)
    files, empty = expand_images(paths, exclude=out)
    if not files:  # nothing to do: the last reason is the run's error
        for d in empty[:-1]:
            error(f"{d}: no image files in this folder")
        raise InputError(f"{empty[-1]}: no image files in this folder" if empty else "no image files given")
    for d in empty:
        error(f"{d}: no image files in this folder")
    pipe = load_pipeline(on_note=lambda n: print(f"note: {n}", file=sys.stderr), **pipeline_options)
    failed, done, used = len(empty), [], set()
    for i, p in enumerate(files, 1):
        at = f"[{i}/{len(files)}] " if len(files) > 1 else ""  # where a run of many images is
        try:
            img = read_image(p)
        except InputError as e:
            error(f"{at}{e}")
            failed += 1
            continue
        stem = Path(p).stem
        k = 1
        while stem in used or not replaceable(out / stem, p):  # two images with the same name, or a folder
            stem = f"{Path(p).stem}_{k}"                         # this image's report may not replace
            k += 1
        used.add(stem)
        try:
            rep = pipe.analyze(img, path=p)
            doc = rep.write(out / stem, formats=formats)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as e:  # one image failing must not stop the others
            if os.environ.get("BCCDET_DEBUG"):
                raise
            error(f"{at}{p}: analysis failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            failed += 1
            continue
        done.append(out / stem)
        echo(f"{at}{p}: {summary_line(doc, rep.timings['total'], out / stem)}")
    return {"done": done, "failed": failed}
