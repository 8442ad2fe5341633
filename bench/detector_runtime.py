"""The detector under each runtime (torch, OpenVINO fp32 / bf16): the same boxes, and how much faster.

    .venv/bin/python -m bench.detector_runtime [--n 72] [--runtimes torch,openvino:fp32,openvino:bf16]

On the first ``--n`` BCCD test fields (published split), each runtime runs the default detector as ``analyze``
does (grey border, edge-sliver rule): box mAP50 over the three kinds at conf 0.001 (supervision's
MeanAveragePrecision against the published boxes), and at ``analyze``'s conf 0.25 recall per kind and the share
of torch's cells that the runtime also finds (same kind, box IoU >= 0.9). ms per field at conf 0.25, each
runtime timed over the same fields after one warm-up field. Prints a table and the machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import bccd_field, bccd_stems, count_hits, need_dataset, print_machine

KIND_ID = {"rbc": 0, "wbc": 1, "platelet": 2}


def _sv(cells=None, gt=None):
    import supervision as sv

    if gt is not None:
        xy = np.array([b for _, b in gt], np.float32).reshape(-1, 4)
        return sv.Detections(xyxy=xy, class_id=np.array([KIND_ID[k] for k, _ in gt], int))
    return sv.Detections(xyxy=cells.xyxy.astype(np.float32), confidence=np.asarray(cells.score, np.float32),
                         class_id=np.array([KIND_ID[k] for k in cells.kind], int))


def agreement(ref, other) -> tuple[int, int]:
    """(cells of ``ref`` that ``other`` also has (same kind, box IoU >= 0.9), cells of ``ref``)."""
    from bccdet.types import box_iou

    hit = 0
    for k in KIND_ID:
        a, b = ref.xyxy[ref.kind == k], other.xyxy[other.kind == k]
        if len(a) and len(b):
            hit += int((box_iou(a, b).max(1) >= 0.9).sum())
    return hit, len(ref)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=72)
    ap.add_argument("--runtimes", default="torch,openvino:fp32,openvino:bf16")
    a = ap.parse_args()
    from supervision.metrics import MeanAveragePrecision

    from bccdet.adapters.yolo import YoloDetector
    from bccdet.weights import resolve

    root = need_dataset("bccd")
    fields = [bccd_field(root, s) for s in bccd_stems(root, "test", a.n)]
    w, name, sha = resolve(None, "detector")
    print_machine()
    print(f"detector {name} on {len(fields)} BCCD test fields, as analyze runs it")
    ref = None
    print(f"{'runtime':<16}{'mAP50':>7}{'RBC rec':>9}{'WBC rec':>9}{'plt rec':>9}{'same as torch':>15}{'ms/field':>10}{'ratio':>7}")
    base_ms = None
    for spec in a.runtimes.split(","):
        runtime, _, precision = spec.partition(":")
        dets = {c: YoloDetector(w, name=name, sha256=sha, conf=c, runtime=runtime, precision=precision or "fp32")
                for c in (0.001, 0.25)}
        m = MeanAveragePrecision()
        for _, img, gt in fields:
            m.update(_sv(dets[0.001](img)), _sv(gt=gt))
        det = dets[0.25]
        det(fields[0][1])
        hit = {k: [0, 0] for k in KIND_ID}
        t0 = time.perf_counter()
        found = [det(img) for _, img, _ in fields]
        ms = (time.perf_counter() - t0) / len(fields) * 1e3
        for c, (_, _, gt) in zip(found, fields):
            count_hits(hit, c, gt)
        if ref is None:
            ref, base_ms = found, ms
        same = np.sum([agreement(r, f) for r, f in zip(ref, found)], axis=0)
        rec = [hit[k][0] / max(hit[k][1], 1) for k in KIND_ID]
        label = f"{det.runtime}:{det.precision}"
        print(f"{label:<16}{m.compute().map50:>7.3f}{rec[0]:>9.3f}{rec[1]:>9.3f}{rec[2]:>9.3f}"
              f"{same[0] / max(same[1], 1):>15.4f}{ms:>10.0f}{ms / base_ms:>7.2f}")


if __name__ == "__main__":
    main()
