"""One YOLOv8-seg training run on a leased GPU, on ultralytics' time budget (``time=HOURS``).

    python scripts/gpu_detector_lease.py NAME MODEL INIT IMGSZ BATCH HOURS WORKERS [KEY=VALUE ...]

Equivalent to ``cli.py train detector --data $DET_DATA/data.yaml --model MODEL --init INIT --imgsz IMGSZ
--batch BATCH --workers WORKERS --device 0 --arg time=HOURS --arg amp=True --arg cache=ram --arg val=False``
under the device image's python3, which has torch but no polars: ultralytics' results.csv reader (its one
use of polars while training) is replaced with the csv module, and its AMP check, which would download
yolo26n.pt, is skipped (the run uses AMP). ``DET_DATA`` (default ``gpu/det/data/merged-seg``) is a merged-seg
copy whose ``data.yaml`` is rewritten for that machine; ``DET_BOXES`` (optional) a set of the same images whose
labels give the box targets (``--box-labels``); runs go to ``DET_RUNS`` (default ``gpu/det/runs``).
Used by scripts/gpu_detector_lease.sh; see weights/bccdet-yolov8n-seg640.md.
"""

import csv
import importlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def read_results_csv(self) -> dict:
    """ultralytics' ``BaseTrainer.read_results_csv`` without polars."""
    try:
        with open(self.csv, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return {}
    out: dict = {}
    for r in rows:
        for k, v in r.items():
            try:
                out.setdefault(k.strip(), []).append(float(v))
            except (TypeError, ValueError):
                pass
    return out


def _value(v: str):
    if v in ("True", "False"):
        return v == "True"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def main() -> None:
    name, model, init, imgsz, batch, hours, workers, *extra = sys.argv[1:]
    try:
        if os.environ.get("NO_POLARS"):  # to try the fallback on a machine that has polars
            raise ImportError
        importlib.import_module("polars")
    except ImportError:
        sys.modules["polars"] = None  # type: ignore[assignment]
    from bccdet.adapters.yolo import setup_offline, train

    setup_offline()
    import ultralytics.engine.trainer as T

    T.BaseTrainer.read_results_csv = read_results_csv
    T.check_amp = lambda model: True

    root = Path(os.environ.get("DET_DATA", "gpu/det/data/merged-seg")).resolve()
    y = root / "data.yaml"
    y.write_text(f"path: {root}\ntask: segment\ntrain: images/train\nval: images/val\n"
                 "names:\n  0: rbc\n  1: wbc\n  2: platelet\n")
    kw = {k: _value(v) for k, v in (kv.split("=", 1) for kv in extra)}
    best = train(y, model=model, init=init, epochs=int(kw.pop("epochs", 1000)), imgsz=int(imgsz), batch=int(batch),
                 project=Path(os.environ.get("DET_RUNS", "gpu/det/runs")), name=name, device=kw.pop("device", "0"),
                 workers=int(workers), threads=int(kw.pop("threads", 4)), time=float(hours),
                 amp=kw.pop("amp", True), cache="ram", val=kw.pop("val", False),
                 box_labels=os.environ.get("DET_BOXES") or None, **kw)
    print("done", name, best)


if __name__ == "__main__":
    main()
