"""Experiment: teach the classifier that other labs' normal-blood white cells are normal (partial labels).

    .venv/bin/python bench/partial_label_finetune.py --out runs/plft [--steps 300] [--weight 1.0] [--threads 2]

The default classifier calls 39 % of the WBCs of TXL-PBC's 575 x 575 fields (normal blood, another lab)
abnormal (bench/wbc_calls_by_source.py). Those fields carry no cell type, but they are normal blood: each
white cell is one of neutrophil, lymphocyte, monocyte, eosinophil or basophil. This fine-tunes the default
checkpoint for ``--steps`` steps: each batch holds 24 labelled PBC + DeepAPL training cells (the default's
own decoded training set, ``runs/classifier/c288/cache``; class-balanced as in training, cross-entropy with
label smoothing) and 8 white cells cut from TXL-PBC **train** fields of the 575 x 575 and 640 x 480 (BCCD)
sources as ``analyze`` cuts them, with the partial-label loss ``-log sum_{normal} p`` times ``--weight``.
``--weight 0`` is the control: the same steps on the labelled cells alone. The temperature is refitted on
the default's validation cells; the checkpoint goes to OUT/classifier.pt. Evaluate it with the usual
benches (``--weights OUT/classifier.pt``): TXL-PBC val is never trained on, nor is wbc-seg.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NORMAL = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
SOURCES = ((575, 575), (640, 480))


def target_crops(size: int, margin: float) -> np.ndarray:
    """White cells of TXL-PBC train fields of the other-lab sources, cut as ``analyze`` cuts them."""
    from PIL import Image

    from bccdet.adapters.classifier import cell_crop
    from bccdet.io import read_image

    out = []
    for f in sorted((REPO / "data/txl-seg/images/train").glob("*")):
        if Image.open(f).size not in SOURCES:
            continue
        im = read_image(f)
        h, w = im.shape[:2]
        for line in Path(str(f).replace("/images/", "/labels/")).with_suffix(".txt").read_text().splitlines():
            p = line.split()
            if not p or p[0] != "1":  # txl-seg class 1: wbc
                continue
            v = np.array(list(map(float, p[1:])))
            xs, ys = v[0::2] * w, v[1::2] * h
            out.append(cell_crop(im, (xs.min(), ys.min(), xs.max(), ys.max()), margin, size))
    return np.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--weight", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    import torch
    import torch.nn.functional as F

    from bccdet.adapters import classifier as C
    from bccdet.vocab import LABELS
    from bccdet.weights import resolve

    torch.set_num_threads(a.threads)
    w, name, sha = resolve(None, "classifier")
    ck = C.load_checkpoint(w)
    rec = ck.get("recipe", {})
    imgsz, margin = int(ck["imgsz"]), float(ck["margin"])
    cache = REPO / "runs/classifier/c288/cache"
    fx = sorted(cache.glob(f"x-{imgsz + 64}-*.npy"))
    fv = sorted(cache.glob(f"x-{imgsz}-*.npy"))
    if not fx or not fv:
        sys.exit(f"{cache}: the default's decoded training / validation cache is absent (train it once: weights card)")
    xtr = np.load(fx[0], mmap_mode="r")
    ytr = np.asarray(json.loads(fx[0].with_name(fx[0].name.replace("x-", "y-").replace(".npy", ".json")).read_text())["y"])
    xva = np.load(fv[0], mmap_mode="r")
    yva = np.asarray(json.loads(fv[0].with_name(fv[0].name.replace("x-", "y-").replace(".npy", ".json")).read_text())["y"])
    xt = target_crops(imgsz + 64, margin)
    print(f"{name} ({sha[:12]}): labelled {len(ytr)} cells, target {len(xt)} white cells "
          f"(TXL-PBC train, sources {SOURCES}), weight {a.weight}, {a.steps} steps, lr {a.lr}", flush=True)

    model = C._build(ck).to(memory_format=torch.channels_last)
    model.train()
    counts = np.bincount(ytr, minlength=len(LABELS))
    w_cls = np.where(counts > 0, np.maximum(counts, 1).astype(np.float64) ** (rec.get("balance", 0.5) - 1.0), 0.0)
    sample_w = torch.as_tensor(w_cls[ytr], dtype=torch.float64)
    normal = torch.tensor([LABELS.index(k) for k in NORMAL])
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.05)
    mean_t = torch.tensor(C.MEAN).view(1, 3, 1, 1)
    std_t = torch.tensor(C.STD).view(1, 3, 1, 1)
    g = torch.Generator().manual_seed(a.seed)
    torch.manual_seed(a.seed)
    n_lab, n_tgt = (24, 8) if a.weight > 0 else (32, 0)
    t0 = time.perf_counter()
    for s in range(a.steps):
        lr = a.lr * (0.1 + 0.9 * s / 20) if s < 20 else a.lr * 0.5 * (1 + math.cos(math.pi * (s - 20) / max(1, a.steps - 20)))
        for grp in opt.param_groups:
            grp["lr"] = lr
        idx = np.sort(torch.multinomial(sample_w, n_lab, replacement=True, generator=g).numpy())
        xb = xtr[idx]
        if n_tgt:
            ti = torch.randint(len(xt), (n_tgt,), generator=g).numpy()
            xb = np.concatenate([xb, xt[ti]])
        x = ((C.augment(xb, imgsz, g, rec.get("aug")) - mean_t) / std_t).contiguous(memory_format=torch.channels_last)
        logits = model(x)
        loss = F.cross_entropy(logits[:n_lab], torch.as_tensor(ytr[idx]), label_smoothing=rec.get("label_smoothing", 0.1))
        if n_tgt:
            lp = F.log_softmax(logits[n_lab:], 1)
            loss = loss - a.weight * torch.logsumexp(lp[:, normal], 1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if s % 25 == 0 or s == a.steps - 1:
            print(f"step {s} loss {loss.item():.4f} lr {lr:.2e} {time.perf_counter() - t0:.0f} s", flush=True)
    model.eval()
    logits = C._logits(model, xva, C.MEAN, C.STD)
    temp = C.fit_temperature(logits, yva)
    acc = float((logits.argmax(1) == torch.as_tensor(yva)).float().mean())
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    new = dict(ck)
    new["state_dict"] = {k: (v.half() if torch.is_floating_point(v) else v) for k, v in model.state_dict().items()}
    new["temperature"] = float(temp)
    new["recipe"] = dict(rec, partial_label={"from": sha, "steps": a.steps, "weight": a.weight, "lr": a.lr,
                                             "sources": [list(s) for s in SOURCES], "target_cells": int(len(xt))})
    C._save_atomic(new, out / "classifier.pt")
    print(f"val accuracy {acc:.4f}, temperature {temp:.3f}, {time.perf_counter() - t0:.0f} s -> {out / 'classifier.pt'}")


if __name__ == "__main__":
    main()
