"""What the command modules share: the error wrapper, option callbacks and help texts.

Imports nothing from the other ``bccdet.cli`` modules (they import from here) and nothing heavy: option
callbacks import the library checks they need when they run.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import typer

from ..convert.common import ConversionError
from ..io import InputError


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


def _checked(check, value):
    """``check(value)``, its one-line ``ValueError`` turned into typer's usage error (exit 2)."""
    try:
        return check(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def _device_option(value: str) -> str:
    from ..runtime import check_device

    return _checked(check_device, value)


def device_option(help: str = "cpu, cuda or cuda:N.") -> str:
    """The ``--device`` option of every command: checked when parsed (exit 2 with one reason)."""
    return typer.Option("cpu", "--device", help=help, callback=_device_option)


def _runtime_option(value: Optional[str]):
    from ..runtime import check_runtime

    return _checked(check_runtime, value)


def runtime_option(default: Optional[str]):
    """``--runtime`` (:data:`bccdet.runtime.RUNTIMES`) for the networks: detector, SAM's encoder, classifier."""
    return typer.Option(default, "--runtime", callback=_runtime_option,
                        help="Inference runtime of the networks (detector, SAM's encoder, WBC classifier): auto "
                             "(OpenVINO on a CPU where installed, else torch), torch or openvino.")


def scale_option(value: Optional[str]):
    """``--scale``: auto, or a factor in (0, 1] (:func:`bccdet.adapters.yolo.parse_scale`); a usage error otherwise."""
    if value is None:
        return value
    from ..adapters.yolo import parse_scale

    return _checked(parse_scale, value)


def edge_option(value: Optional[float]):
    """``--edge-sliver``: a share in [0, 1); a usage error otherwise."""
    from ..runtime import check_edge_sliver

    try:
        return check_edge_sliver(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def _review_threshold(value: Optional[float]) -> Optional[float]:
    from ..runtime import check_review_threshold

    return _checked(check_review_threshold, value)


def _precision(value: str) -> str:
    from ..runtime import check_precision

    return _checked(check_precision, value)


EDGE_HELP = ("Leave out red cells cut by the image border of which less than this share of the field's median "
             "red-cell side shows (neither BCCD nor TXL-PBC labels such slivers); 0 keeps them all.")

SCALE_HELP = ("Detector scale: auto (an image over 960 px whose red cells measure over 200 px, a high-resolution "
              "camera's field, is analysed resized to the trained cell size; an image whose red cells come out under "
              "60 px at the detector's input, a low-magnification field, is analysed again upscaled, in tiles), or a "
              "fixed factor in (0, 1] for images over 960 px (1: never resize; smaller images are always seen whole at "
              "the detector's input size).")

REVIEW_HELP = ("Mark a typed cell for review when its calibrated top probability is below this (default: the "
               "classifier's own, 0.6). Higher: more cells to look at, fewer unseen errors; PBC test at 0.6 / 0.7 / "
               "0.8: 0.7% / 1.4% / 2.3% of cells to review, 5 / 10 / 14 of the 25 errors among them (docs/models.md).")

CLASSIFIER_HELP = "Classifier name from weights/registry.json or a .pt file."
