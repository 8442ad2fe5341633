"""Scoring a detector as ``YoloDetector`` runs it: ultralytics' validator with the grey border and the
edge-sliver rule, and the metrics table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .detector import (BORDER, EDGE_SLIVER, edge_sliver_drop, load_yolo, restore_threads, setup_offline,
                       torch_threads, trained_imgsz)


def _pipeline_validator(task: str, names: dict, border: int, frac: float, ref_conf: float):
    """The task's ultralytics validator made to score what ``YoloDetector`` returns: images with ``border``
    network pixels of grey on every side (``BORDER``; ultralytics' own validator pads half a stride, which
    is the same on 640 x 480 and square fields), and ``edge_sliver_drop`` (``frac`` > 0) applied to each
    image's predictions in its own pixels, with the field's median red-cell side taken over the predictions at
    ``ref_conf`` (``analyze``'s confidence) so that the low-confidence tail mAP needs does not move it."""
    import torch
    from ultralytics.utils import ops

    if task == "segment":
        from ultralytics.models.yolo.segment import SegmentationValidator as Base
    else:
        from ultralytics.models.yolo.detect import DetectionValidator as Base
    rbc_ids = [int(i) for i, n in names.items() if n == "rbc"]

    class PipelineValidator(Base):
        dropped = 0
        dropped_confident = 0

        def build_dataset(self, img_path, mode="val", batch=None):
            from ultralytics.data.base import BaseDataset

            rect = BaseDataset.set_rectangle

            def bordered(ds):  # batch shapes: ceil(side / stride + pad) strides, as YoloDetector's letterbox
                ds.pad = 2.0 * border / ds.stride
                rect(ds)

            BaseDataset.set_rectangle = bordered
            try:
                return super().build_dataset(img_path, mode, batch)
            finally:
                BaseDataset.set_rectangle = rect

        def update_metrics(self, preds, batch):
            if frac <= 0 or not rbc_ids:
                return super().update_metrics(preds, batch)
            kept = []
            for si, pred in enumerate(preds):
                n = len(pred["cls"])
                if n:
                    h0, w0 = (int(v) for v in batch["ori_shape"][si])
                    xy = ops.scale_boxes(batch["img"].shape[2:], pred["bboxes"].clone().float(), (h0, w0),
                                         ratio_pad=batch["ratio_pad"][si]).cpu().numpy()
                    conf = pred["conf"].cpu().numpy()
                    rbc = np.isin(pred["cls"].cpu().numpy().astype(int), rbc_ids)
                    drop = edge_sliver_drop(xy, rbc, w0, h0, frac, ref=conf >= ref_conf)
                    if drop.any():
                        PipelineValidator.dropped += int(drop.sum())
                        PipelineValidator.dropped_confident += int((drop & (conf >= ref_conf)).sum())
                        keep = torch.as_tensor(~drop, device=pred["cls"].device)
                        pred = {k: (v[keep] if isinstance(v, torch.Tensor) and len(v) == n else v)
                                for k, v in pred.items()}
                kept.append(pred)
            super().update_metrics(kept, batch)

    return PipelineValidator


def evaluate(weights: str | Path, data: Path, split: str = "test", imgsz: int | None = None, batch: int = 8,
             device: str = "cpu", conf: float = 0.001, iou: float = 0.6, max_det: int = 1000,
             border: int = BORDER, edge_sliver: float = EDGE_SLIVER, ref_conf: float = 0.25) -> dict:
    """Box (and mask) precision, recall, mAP50, mAP50-95 overall and per class, plus ms per image, of the
    detector as ``YoloDetector`` runs it: ``border`` px of grey around each image (network pixels; 0: the bare
    image) and red-cell slivers at the border left out (``edge_sliver``; 0 keeps them). Other than that the
    scoring is ultralytics' own (rectangular batches, conf 0.001)."""
    setup_offline()
    import tempfile

    threads = torch_threads()
    m = load_yolo(weights)
    imgsz = int(imgsz) if imgsz else trained_imgsz(m)  # default: the size it was trained at
    border, edge_sliver = max(0, int(border)), float(edge_sliver)
    validator = _pipeline_validator(m.task, m.names, border, edge_sliver, ref_conf)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            r = m.val(data=str(data), split=split, imgsz=imgsz, batch=batch, device=device, conf=conf, iou=iou,
                      max_det=max_det, plots=False, verbose=False, project=tmp, name="val", save_json=False,
                      validator=validator)
    finally:
        restore_threads(threads)
    names = r.names if hasattr(r, "names") else m.names
    out = {"weights": str(weights), "data": str(data), "split": split, "imgsz": imgsz, "iou": iou, "conf": conf,
           "border": border, "edge_sliver": edge_sliver,
           "edge_slivers_dropped": {"all": validator.dropped, f"conf>={ref_conf:g}": validator.dropped_confident},
           "speed_ms": {k: round(float(v), 2) for k, v in (r.speed or {}).items()}}
    parts = [("box", r.box)]
    if getattr(r, "seg", None) is not None:
        parts.append(("mask", r.seg))
    for key, met in parts:
        per = {}
        for j, ci in enumerate(met.ap_class_index):
            p, rc, ap50, ap = met.class_result(j)
            per[names[int(ci)]] = {"precision": round(float(p), 4), "recall": round(float(rc), 4),
                                   "mAP50": round(float(ap50), 4), "mAP50-95": round(float(ap), 4)}
        out[key] = {"precision": round(float(met.mp), 4), "recall": round(float(met.mr), 4),
                    "mAP50": round(float(met.map50), 4), "mAP50-95": round(float(met.map), 4), "per_class": per}
    return out


def format_metrics(res: dict) -> str:
    lines = [f"{'':<10}{'class':<10}{'P':>8}{'R':>8}{'mAP50':>8}{'mAP50-95':>10}"]
    for key in ("box", "mask"):
        if key not in res:
            continue
        r = res[key]
        lines.append(f"{key:<10}{'all':<10}{r['precision']:>8.3f}{r['recall']:>8.3f}{r['mAP50']:>8.3f}{r['mAP50-95']:>10.3f}")
        for c, v in r["per_class"].items():
            lines.append(f"{'':<10}{c:<10}{v['precision']:>8.3f}{v['recall']:>8.3f}{v['mAP50']:>8.3f}{v['mAP50-95']:>10.3f}")
    sp = res.get("speed_ms", {})
    if sp:
        lines.append("ms/image: " + ", ".join(f"{k} {v:.1f}" for k, v in sp.items()))
    if "border" in res:
        d = res.get("edge_slivers_dropped") or {}
        lines.append(f"as analyze runs it: grey border {res['border']} px, edge rule {res['edge_sliver']:g}"
                     + (f" ({', '.join(f'{v} {k}' for k, v in d.items())} red-cell slivers left out)" if d else ""))
    return "\n".join(lines)
