"""Training data: converted classify folders (splits, per-class caps), the decoded-image cache, and batch
augmentation on torch tensors (CPU or GPU)."""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ...io import InputError, image_files, read_image, write_text_atomic
from ...vocab import LABELS, normalize_label
from .common import DEFAULT_RECIPE
from .crops import single_cell_crop


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


_RGB2XYZ = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
                     [0.019334, 0.119193, 0.950227]], np.float32)
_WHITE = np.array([0.950456, 1.0, 1.088754], np.float32)


def rgb_to_lab(x):
    """sRGB in [0, 1], (n, 3, h, w) -> CIELAB (L 0-100, a and b about -128..127), D65, as OpenCV's float LAB."""
    import torch

    lin = torch.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
    xyz = torch.einsum("ij,njhw->nihw", torch.from_numpy(_RGB2XYZ).to(x), lin)
    xyz = xyz / torch.from_numpy(_WHITE).to(x).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-8) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


def lab_to_rgb(lab):
    """Inverse of :func:`rgb_to_lab` (clipped to [0, 1])."""
    import torch

    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], 1)
    xyz = torch.where(f > 0.206893, f ** 3, (f - 16 / 116) / 7.787) * torch.from_numpy(_WHITE).to(lab).view(1, 3, 1, 1)
    lin = torch.einsum("ij,njhw->nihw", torch.from_numpy(np.linalg.inv(_RGB2XYZ).astype(np.float32)).to(lab), xyz)
    lin = lin.clamp(0, 1)
    return torch.where(lin > 0.0031308, 1.055 * lin.clamp(min=1e-8) ** (1 / 2.4) - 0.055, 12.92 * lin).clamp(0, 1)


def _lab_restain(x, g, a: dict, d):
    """Each crop's per-channel CIELAB mean set to a value drawn from ``lab_mean`` (L, a, b ranges) and its
    spread scaled by a log-uniform draw from ``lab_std`` (L) / ``lab_ab_std`` (a, b): Reinhard's transfer to
    a random target, as RandStainNA (Shen et al., MICCAI 2022) does, with ranges wider than one lab's."""
    import torch

    n = x.shape[0]
    lab = rgb_to_lab(x)
    mu = lab.mean(dim=(2, 3), keepdim=True)
    target = torch.stack([_u(g, n, *r) for r in a["lab_mean"]], 1).view(n, 3, 1, 1)
    ls, lab_s = [math.log(v) for v in a["lab_std"]], [math.log(v) for v in a["lab_ab_std"]]
    scale = torch.exp(torch.stack([_u(g, n, *ls), _u(g, n, *lab_s), _u(g, n, *lab_s)], 1)).view(n, 3, 1, 1)
    return lab_to_rgb((lab - mu) * d(scale) + d(target))


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
    # -- RandStainNA-style: redraw the crop's CIELAB mean and spread (another camera's exposure and stain)
    pick = d(torch.rand(n, generator=g) < a["lab_p"])
    if pick.any():
        x[pick] = _lab_restain(x[pick], g, a, d)
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
