"""Fine-tune LiteMedSAM's mask decoder on blood-cell masks (image encoder frozen, embeddings cached).

LiteMedSAM as shipped is a general medical model: on CellaVision WBCs it stops short of the pale
cytoplasm edge and follows a box that cuts the cell. Only the mask decoder (4.1 M parameters) is
trained here; the TinyViT encoder stays as shipped, so its embeddings are computed once per augmented
image and reused for every step. Each step draws a fresh prompt per example: the true box with each
side moved by up to ``jitter`` of its size (the detector's boxes are never exact), then grown by the
adapter's ``PROMPT_GROW`` like at inference. Both prompt modes of :class:`SamModel` are trained: the
whole image at 256 px (``field``) and a window of ``1 + 2 * WINDOW_CONTEXT`` box sides at 128 px
(``window``), so one decoder serves the refiner and the labeller.

Loss: binary cross-entropy + soft Dice on the 4x-upsampled low-resolution logits (the input
resolution), over the valid (unpadded) part of the input; plus MSE between the decoder's IoU head and
the IoU it really reached, so SAM's score (used by :class:`RefinePolicy`) stays meaningful.

The result is a small checkpoint (format ``bccdet-sam-decoder/1``: the fp16 decoder state dict, the
sha256 of the LiteMedSAM weights it belongs with, recipe and data): :class:`SamModel` loads it on top of
the packaged LiteMedSAM.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..io import InputError
from .sam import DECODER_FORMAT, PROMPT_GROW, WINDOW_CONTEXT, _grow, _window, largest_component

RECIPE = {"steps": 400, "batch": 8, "lr": 1e-4, "weight_decay": 0.01, "jitter": 0.12, "exact_prob": 0.2,
          "field_variants": 2, "window_variants": 6, "window_size": 128, "context": WINDOW_CONTEXT,
          "prompt_grow": PROMPT_GROW, "iou_loss_weight": 1.0, "window_share": 0.5}


# ---------------------------------------------------------------------- data
def wbc_seg_items(root: str | Path, limit: int | None = None) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """wbc-seg (Zheng et al. 2018, dataset 2) -> [(name, RGB image, whole-cell mask, tight box)].

    Whole cell = cytoplasm (128) + nucleus (255), largest component, holes filled; the stray low greys
    of a few masks are ignored.
    """
    from PIL import Image

    root = Path(root)
    paths = sorted((root / "images").glob("*.png"))[:limit]
    if not paths:
        raise InputError(f"{root}: no images/*.png (expected the wbc-seg layout: images/NNN.png, masks/NNN.png)")
    items = []
    for p in paths:
        img = np.asarray(Image.open(p).convert("RGB"))
        m = np.asarray(Image.open(root / "masks" / p.name).convert("L"))
        cell = largest_component(m >= 64)
        items.append((p.name, img, cell, tight_box(cell)))
    return items


def tight_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def jitter_box(box, rng, frac: float = 0.10) -> np.ndarray:
    """Each side moved by up to +-``frac`` of the box size (uniform); at least 2 px wide and high."""
    w, h = box[2] - box[0], box[3] - box[1]
    b = np.asarray(box, np.float32) + rng.uniform(-frac, frac, 4) * np.array([w, h, w, h])
    return np.array([min(b[0], b[2] - 2), min(b[1], b[3] - 2), b[2], b[3]], np.float32)


def _dihedral(a: np.ndarray, k: int) -> np.ndarray:
    a = np.rot90(a, k % 4)
    return np.ascontiguousarray(a[:, ::-1] if k >= 4 else a)


def _colour(img: np.ndarray, rng) -> np.ndarray:
    """Stain / camera variation: hue shift, saturation, brightness, contrast, gamma."""
    import cv2

    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-8, 8)) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.7, 1.3), 0, 255)
    out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32) / 255.0
    out = np.clip((out - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.08, 0.08), 0, 1) ** rng.uniform(0.8, 1.25)
    return (out * 255).round().astype(np.uint8)


def build_examples(model, items, variants: int, mode: str, seed: int = 0, window_size: int = 128,
                   context: float = WINDOW_CONTEXT, batch: int = 8, log: Callable[[str], None] = print) -> dict:
    """Encode augmented copies of every item once. Variant 0 is the image as given (field) or the
    window around the true box (window); the rest are dihedral + colour augmented, and windows are cut
    around a jittered box (the detector's box decides the window at inference).

    Returns arrays: ``emb`` (n, C, g, g) fp16, ``gt`` (n, S, S) bool, ``box`` (n, 4) tight box in input
    px, ``valid`` (n, 2) unpadded height/width, ``item`` (n,) index into ``items``.
    """
    import cv2
    import torch

    rng = np.random.default_rng(seed)
    size = model.input_size if mode == "field" else int(window_size)
    embs, gts, boxes, valid, owner = [], [], [], [], []
    pend: list = []
    t0 = time.perf_counter()

    def flush():
        if not pend:
            return
        x, scales = model._prep([p[0] for p in pend], size)
        with torch.inference_mode():
            e = model.encoder(size)(x)
        for (crop, m, b, i), (s, nh, nw), ei in zip(pend, scales, e):
            g = np.zeros((size, size), bool)
            g[:nh, :nw] = cv2.resize(m.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST) > 0
            embs.append(ei.half().cpu().numpy())
            gts.append(g)
            boxes.append(b * s)
            valid.append((nh, nw))
            owner.append(i)
        pend.clear()

    for i, (_, img, mask, box) in enumerate(items):
        for v in range(variants):
            if v == 0:
                im, m = img, mask
            else:
                k = int(rng.integers(8))
                im, m = _colour(_dihedral(img, k), rng), _dihedral(mask, k)
            b = tight_box(m)
            if mode == "field":
                pend.append((im, m, b, i))
            else:
                H, W = m.shape
                wb = b if v == 0 else jitter_box(b, rng, 0.12)
                x0, y0, x1, y1 = _window(wb, context, W, H)  # as SamModel.segment_windows cuts it
                pend.append((im[y0:y1, x0:x1], m[y0:y1, x0:x1], b - np.array([x0, y0, x0, y0], np.float32), i))
            if len(pend) >= batch:
                flush()
    flush()
    log(f"encoded {len(embs)} {mode} inputs at {size} px in {time.perf_counter() - t0:.0f} s")
    return {"emb": np.stack(embs), "gt": np.stack(gts), "box": np.stack(boxes).astype(np.float32),
            "valid": np.asarray(valid, np.int32), "item": np.asarray(owner, np.int32), "size": size}


def save_examples(ex: dict, path: str | Path) -> None:
    np.savez(path, **ex)


def load_examples(path: str | Path) -> dict:
    z = np.load(path)
    return {k: (int(z[k]) if k == "size" else z[k]) for k in z.files}


def subset(ex: dict, items: Sequence[int]) -> dict:
    keep = np.isin(ex["item"], np.asarray(items))
    return {k: (v if k == "size" else v[keep]) for k, v in ex.items()}


# ---------------------------------------------------------------------- training
def finetune(model, sets: Sequence[dict], steps: int = RECIPE["steps"], batch: int = RECIPE["batch"],
             lr: float = RECIPE["lr"], seed: int = 0, recipe: dict | None = None,
             log: Callable[[str], None] = print) -> list[dict]:
    """Train ``model.net.mask_decoder`` in place on cached examples (``sets``: one dict per mode, from
    :func:`build_examples`); each step takes ``batch`` examples of one set, one fresh prompt each."""
    import torch
    import torch.nn.functional as F

    rec = dict(RECIPE, **(recipe or {}))
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    dec = model.net.mask_decoder
    for p in model.net.parameters():
        p.requires_grad_(False)
    for p in dec.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW([p for p in dec.parameters()], lr=lr, weight_decay=rec["weight_decay"])
    warm = max(1, steps // 20)
    share = [rec["window_share"] if s["size"] != model.input_size else 1 - rec["window_share"] for s in sets]
    share = np.asarray(share, np.float64) / np.sum(share)
    dec.train()
    hist, t0, run = [], time.perf_counter(), []
    for step in range(steps):
        f = lr * (step + 1) / warm if step < warm else lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))
        for grp in opt.param_groups:
            grp["lr"] = f
        ex = sets[int(rng.choice(len(sets), p=share))]
        size = ex["size"]
        idx = rng.choice(len(ex["emb"]), size=min(batch, len(ex["emb"])), replace=False)
        loss = 0.0
        ious = []
        for i in idx:
            box = ex["box"][i]
            pb = box if rng.random() < rec["exact_prob"] else jitter_box(box, rng, rng.uniform(0, rec["jitter"]))
            prompt = _grow(pb, rec["prompt_grow"])[None]
            emb = torch.from_numpy(ex["emb"][i][None].astype(np.float32)).to(model.device)
            logits, iou_pred = model._decode(emb, prompt, size)  # the inference path, with gradients
            nh, nw = ex["valid"][i]
            lg = logits[0, :nh, :nw]
            gt = torch.from_numpy(ex["gt"][i][:nh, :nw].astype(np.float32)).to(model.device)
            bce = F.binary_cross_entropy_with_logits(lg, gt)
            pr = torch.sigmoid(lg)
            dice = 1 - (2 * (pr * gt).sum() + 1) / (pr.sum() + gt.sum() + 1)
            with torch.no_grad():
                hard = (lg > 0).float()
                inter, union = (hard * gt).sum(), ((hard + gt) > 0).float().sum()
                true_iou = inter / union.clamp(min=1)
            loss = loss + bce + dice + rec["iou_loss_weight"] * F.mse_loss(iou_pred[0], true_iou)
            ious.append(float(true_iou))
        loss = loss / len(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run.append((float(loss.detach()), float(np.mean(ious))))
        if (step + 1) % 25 == 0 or step + 1 == steps:
            l, u = np.mean(run, 0)
            row = {"step": step + 1, "loss": round(float(l), 4), "train_iou": round(float(u), 4),
                   "s": round(time.perf_counter() - t0, 1)}
            hist.append(row)
            log(json.dumps(row))
            run = []
    dec.eval()
    for p in dec.parameters():
        p.requires_grad_(False)
    return hist


def reset_decoder(model) -> None:
    """Put the packaged LiteMedSAM decoder back (between cross-validation folds)."""
    import torch

    from .sam import litemedsam_checkpoint

    st = torch.load(litemedsam_checkpoint()[0], map_location="cpu", weights_only=True)
    st = st.get("model", st)
    model.net.mask_decoder.load_state_dict({k[len("mask_decoder."):]: v for k, v in st.items()
                                            if k.startswith("mask_decoder.")}, strict=True)


def save_decoder(model, path: str | Path, recipe: dict, data: dict, metrics: dict | None = None) -> Path:
    import torch

    from .sam import litemedsam_checkpoint

    sd = {k: v.detach().half() for k, v in model.net.mask_decoder.state_dict().items()}
    ck = {"format": DECODER_FORMAT, "base": "litemedsam", "base_sha256": litemedsam_checkpoint()[1], "mask_decoder": sd,
          "recipe": recipe, "data": data, "metrics": metrics or {}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(ck, tmp)
    tmp.replace(path)
    return path
