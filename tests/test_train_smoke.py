"""The converted layouts really train with ultralytics (one epoch, tiny image size, small real subsets)."""

import csv
import shutil
from pathlib import Path

import pytest

from tests.helpers import bccd_subset
from tests.helpers import bccd_subset as _bccd_subset  # noqa: F401  (tests/test_sam.py imports it from here)

pytestmark = [pytest.mark.data, pytest.mark.slow]


@pytest.mark.parametrize("task,model", [("detect", "yolov8n.yaml"), ("segment", "yolov8n-seg.yaml")])
def test_converted_bccd_trains_one_epoch(bccd, tmp_path, cli, task, model):
    sub = bccd_subset(bccd, tmp_path / "bccd")
    out = tmp_path / "yolo"
    r = cli("convert", "bccd", sub, "--out", out, "--task", task)
    assert r.returncode == 0, r.stderr
    r = cli("train", "detector", "--data", out / "data.yaml", "--model", model, "--init", "none", "--epochs", "1",
            "--imgsz", "64", "--batch", "4", "--workers", "0", "--project", tmp_path / "runs", "--name", task)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    wdir = tmp_path / "runs" / task / "weights"
    assert (wdir / "last.pt").exists()
    rows = list(csv.DictReader(open(tmp_path / "runs" / task / "results.csv")))
    assert len(rows) == 1
    keys = {k.strip() for k in rows[0]}
    assert "metrics/mAP50(B)" in keys
    if task == "segment":
        assert "metrics/mAP50(M)" in keys and float(rows[0]["train/seg_loss"]) > 0


def test_converted_pbc_trains_one_epoch_classify(data_root, tmp_path, cli):
    pbc = data_root / "pbc"
    if not pbc.is_dir():
        pytest.skip("pbc absent")
    sub = tmp_path / "pbc"
    for d in sorted(p for p in pbc.iterdir() if p.is_dir()):
        (sub / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:7]:
            shutil.copy(f, sub / d.name)
    out = tmp_path / "cls"
    r = cli("convert", "pbc", sub, "--out", out)
    assert r.returncode == 0, r.stderr
    for sp in ("train", "val", "test"):
        assert len([p for p in (out / sp).iterdir() if p.is_dir()]) == 8

    from bccdet.adapters.yolo import setup_offline

    setup_offline()
    from ultralytics import YOLO

    m = YOLO("yolov8n-cls.yaml")
    m.train(data=str(out), epochs=1, imgsz=32, batch=8, workers=0, device="cpu", project=str(tmp_path / "runs"),
            name="cls", exist_ok=True, plots=False, amp=False, verbose=False)
    rows = list(csv.DictReader(open(tmp_path / "runs/cls/results.csv")))
    assert len(rows) == 1 and "metrics/accuracy_top1" in {k.strip() for k in rows[0]}
    assert (tmp_path / "runs/cls/weights/last.pt").exists()


def test_train_detector_refuses_a_bad_data_yaml_before_making_a_run_folder(tmp_path, cli):
    (tmp_path / "notes.jpg").write_text("not a data.yaml\n")
    (tmp_path / "d.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: {0: rbc}\n")
    for data, why in ((tmp_path / "notes.jpg", "not a YOLO data.yaml"), (tmp_path / "d.yaml", "do not exist"),
                      (tmp_path / "none.yaml", "no such data.yaml")):
        r = cli("train", "detector", "--data", data, "--project", tmp_path / "runs", "--epochs", "1")
        assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists()  # nothing left behind for a later run to trip over


def test_detector_trains_on_the_threads_asked(bccd, tmp_path, cli, monkeypatch):
    """ultralytics' trainer sets torch to cpu_count - 1 threads (1 on 2 cores); `train detector` holds
    the count it was given (default: torch's own) through every training batch."""
    import torch

    from bccdet.adapters import yolo
    from bccdet.adapters.yolo import training  # train() looks build_model up in its own module

    sub = bccd_subset(bccd, tmp_path / "bccd", n=(4, 2, 0))
    r = cli("convert", "bccd", sub, "--out", tmp_path / "y", "--task", "detect")
    assert r.returncode == 0, r.stderr
    seen, build = [], yolo.build_model

    def recording(*a, **k):
        m = build(*a, **k)
        m.add_callback("on_train_batch_end", lambda trainer: seen.append(torch.get_num_threads()))
        return m

    monkeypatch.setattr(training, "build_model", recording)
    before = torch.get_num_threads()
    try:
        yolo.train(tmp_path / "y/data.yaml", model="yolov8n.yaml", init="none", epochs=1, imgsz=64, batch=2, workers=0,
                   project=tmp_path / "runs", name="t", threads=3, val=False)
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {3}
