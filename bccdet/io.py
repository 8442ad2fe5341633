"""Safe image reading (clear one-line errors) and atomic output writing."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# A 3 x 3 px image once gave a report of 1 WBC and 2 RBC: the detector upscales small images to its input size.
# 16 px still admits 28 px BloodMNIST-style single-cell thumbnails.
MIN_SIDE = 16
MAX_PIXELS = 120_000_000  # ~11k x 11k; larger inputs are refused with a clear message


class InputError(Exception):
    """Bad user input: the message is one line meant for the user (no traceback)."""


def is_image_path(p: str | Path) -> bool:
    return Path(p).suffix.lower() in IMAGE_SUFFIXES


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


@contextlib.contextmanager
def _pillow_open(p: Path):
    """``Image.open`` as Pillow ships it, without its DecompressionBombWarning (our size limit says it in one
    line). ultralytics replaces ``Image.open`` with a wrapper that, on a file Pillow cannot identify, tries
    to install a HEIF plug-in and then reports *that* failure; Pillow's own opener gives the true reason."""
    from PIL import Image

    patches = sys.modules.get("ultralytics.utils.patches")
    open_image = getattr(patches, "_image_open", None) or Image.open
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with open_image(p) as im:
            yield im


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header only, EXIF orientation applied; raises InputError."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    _check_file(p)
    try:
        with _pillow_open(p) as im:
            w, h = im.size
            try:
                orient = im.getexif().get(0x0112, 1)
            except Exception:
                orient = 1
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"{p}: not a readable image ({_short(e)})") from None
    except Image.DecompressionBombError:
        raise InputError(f"{p}: image is above {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} MP; " + TOO_BIG_ADVICE) from None
    return (h, w) if orient in (5, 6, 7, 8) else (w, h)


def _check_file(p: Path) -> None:
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected an image file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: empty file (0 bytes)")


def _short(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__


TOO_BIG_ADVICE = ("split it into fields, or save it as a tiled TIFF (e.g. `vips tiffsave IN OUT.tif --tile --pyramid`) "
                  "and run `bccdet batch OUT.tif`, which tiles whole-slide scans")


def _check_min_side(p: Path, w: int, h: int) -> None:
    if min(w, h) < MIN_SIDE:
        raise InputError(f"{p}: image is {w}x{h} px, below the {MIN_SIDE} px minimum side; too small to show a blood cell")


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image as an RGB uint8 array (h, w, 3).

    EXIF orientation is applied; grayscale, palette, RGBA (composited on white) and 16-bit images are
    converted. Missing, empty, truncated and non-image files raise ``InputError`` with a one-line reason,
    as do images with a side under ``MIN_SIDE`` px (the models would upscale them and find cells in noise).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    _check_file(p)
    if p.suffix.lower() in (".tif", ".tiff"):
        arr = _read_tiff(p, max_pixels)
        if arr is not None:
            _check_min_side(p, arr.shape[1], arr.shape[0])
            return arr
    try:
        with _pillow_open(p) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise InputError(
                    f"{p}: image is {w}x{h} ({w * h / 1e6:.0f} MP), above the {max_pixels / 1e6:.0f} MP limit; "
                    + TOO_BIG_ADVICE
                )
            _check_min_side(p, w, h)
            im.load()
            im = ImageOps.exif_transpose(im)
            arr = _to_rgb8(im)
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise InputError(f"{p}: not a readable image ({_short(e)})") from None
    except Image.DecompressionBombError:
        raise InputError(f"{p}: image is above the {max_pixels / 1e6:.0f} MP limit; " + TOO_BIG_ADVICE) from None
    except Exception as e:  # any other failure inside a decoder plug-in: the file is unreadable to us
        raise InputError(f"{p}: not a readable image ({type(e).__name__}: {_short(e)})") from None
    return arr


def _read_tiff(p: Path, max_pixels: int) -> np.ndarray | None:
    """16-bit / float TIFFs via tifffile (Pillow truncates 16-bit RGB TIFF); None -> let Pillow try."""
    try:
        import tifffile
    except ImportError:
        return None
    try:
        with tifffile.TiffFile(p) as tf:
            page = tf.pages[0]
            shape = page.shape
            if len(shape) >= 2:
                hw = shape[:2] if len(shape) == 2 or shape[-1] in (1, 3, 4) else shape[-2:]
                if int(hw[0]) * int(hw[1]) > max_pixels:
                    raise InputError(
                        f"{p}: image is {hw[1]}x{hw[0]}, above the {max_pixels / 1e6:.0f} MP limit; " + TOO_BIG_ADVICE
                    )
            if page.dtype is None or page.dtype.itemsize == 1:
                return None  # 8-bit: Pillow handles it (and EXIF orientation)
            a = page.asarray()
    except InputError:
        raise
    except Exception:
        return None
    if a.ndim == 3 and a.shape[0] in (3, 4) and a.shape[-1] not in (3, 4):
        a = np.moveaxis(a, 0, -1)
    if np.issubdtype(page.dtype, np.integer):
        a = a.astype(np.float64) / _int_full_scale(a, np.iinfo(page.dtype).bits)
    else:
        a = a.astype(np.float64)
        if a.size and a.max() > 1.0:
            a = a / a.max()
    a = np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    elif a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        alpha = a[..., 3:4].astype(np.float64) / 255.0
        a = (a[..., :3] * alpha + 255.0 * (1 - alpha) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(a[..., :3])


def _int_full_scale(a: np.ndarray, nbits: int) -> float:
    """The white level of integer image data: cameras store 10-, 12- or 14-bit data in 16-bit files, so
    the smallest of 8/10/12/14/16 bits that holds the data's maximum (scaling a 12-bit image by 65535
    would make it nearly black and find no cells)."""
    hi = float(a.max()) if a.size else 0.0
    for b in (8, 10, 12, 14):
        if b < nbits and hi <= 2 ** b - 1:
            return float(2 ** b - 1)
    return float(2 ** nbits - 1)


def is_grey(image: np.ndarray, tol: int = 2) -> bool:
    """True when an RGB image has no colour: every pixel's channels within ``tol`` of each other (a grey
    image read as RGB, a monochrome camera). Checked on every 4th pixel of every 4th row."""
    a = np.asarray(image)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 1):
        return True
    s = a[::4, ::4, :3].astype(np.int16)
    return bool(np.abs(s[..., 0] - s[..., 1]).max() <= tol and np.abs(s[..., 1] - s[..., 2]).max() <= tol)


def array_to_rgb8(a) -> np.ndarray:
    """An image array (gray, (h, w, 1), RGB, RGBA, 16-bit, float in 0..1) -> contiguous RGB uint8;
    alpha is composited on white, as :func:`read_image` does."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"expected an (h, w[, c]) image, got shape {a.shape}")
    if a.dtype != np.uint8:
        scale = _int_full_scale(a, np.iinfo(a.dtype).bits) if np.issubdtype(a.dtype, np.integer) else 1.0
        a = np.clip(a.astype(np.float64) / scale * 255 + 0.5, 0, 255).astype(np.uint8)
    if a.shape[2] in (2, 4):
        alpha = a[..., -1:].astype(np.float64) / 255.0
        a = (a[..., :-1] * alpha + 255.0 * (1 - alpha) + 0.5).astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


def _to_rgb8(im) -> np.ndarray:
    from PIL import Image

    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = a.max() if a.size else 0
        scale = _int_full_scale(a, 16) if mode.startswith("I;16") or (mode == "I" and hi <= 65535) else (
            float(hi) if hi > 255 else 255.0)
        if mode == "F" and hi <= 1.0:
            scale = 1.0
        a = np.clip(a / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(arr)


# ---------------------------------------------------------------------- atomic writing
def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def check_out_dir(out: str | Path) -> Path:
    """Make sure ``--out`` is a folder we can write to, before any work: one-line ``InputError`` if not."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"--out {out}: cannot write there ({e.strerror or _short(e)})") from None
    return out


def image_files(root: str | Path) -> list[Path]:
    """Image files under ``root`` (by suffix), sorted, following symlinked folders (labs link data in;
    ``Path.rglob`` before Python 3.13 does not) without looping on a link cycle; hidden names skipped."""
    root = Path(root)
    out: list[Path] = []
    seen: set[str] = set()
    for d, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(d)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        out += [Path(d) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(out)


def abspath(p: str | Path) -> Path:
    """``p`` made absolute (``~`` expanded, ``..`` resolved, symlinks kept)."""
    return Path(os.path.abspath(os.path.expanduser(str(p))))


def expand_images(paths, exclude: str | Path | None = None) -> tuple[list[Path], list[Path]]:
    """The one input expander: files given, and the images inside folders given (:func:`image_files`), in
    the order given; images under ``exclude`` (an output folder of an earlier run) left out. Returns the files
    and the folders that held no image."""
    ex = Path(exclude).resolve() if exclude is not None else None
    files: list[Path] = []
    empty: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            files.append(p)
            continue
        found = [f for f in image_files(p) if ex is None or ex not in f.resolve().parents]
        if not found:
            empty.append(p)
        files += found
    return files, empty


def _read_umask() -> int:
    m = os.umask(0o022)  # once, at import (single-threaded): os.umask can only be read by setting it
    os.umask(m)
    return m


_UMASK = _read_umask()


def public_mode(path_or_fd: str | Path | int, directory: bool = False) -> None:
    """Give a temporary file (0600) or folder (0700) the mode a plain ``open`` / ``mkdir`` would have
    (0666 / 0777 less the umask), so that outputs written atomically are readable like any other file."""
    mode = (0o777 if directory else 0o666) & ~_UMASK
    if isinstance(path_or_fd, int):
        os.fchmod(path_or_fd, mode)
    else:
        os.chmod(path_or_fd, mode)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        public_mode(fd)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name and move it into place only when complete.

    An interrupted run leaves at most a hidden ``.NAME.partial-*`` folder, never a half-written ``NAME``.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        public_mode(tmp, directory=True)
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
