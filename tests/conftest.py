import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")


def _data_root():
    from bccdet.data import data_root

    return data_root()


@pytest.fixture(scope="session")
def data_root():
    root = _data_root()
    if root is None:
        pytest.skip("data sets absent: set BCCDET_DATA or put them in ../shared/datasets")
    return root


def dataset_dir(data_root, name: str):
    """``data_root / name``, or the test skipped with the reason."""
    p = data_root / name
    if not p.is_dir():
        pytest.skip(f"{p} absent")
    return p


@pytest.fixture(scope="session")
def bccd(data_root):
    return dataset_dir(data_root, "bccd")


def run_cli(*args, cwd=None, env=None):
    """Run ``python cli.py ARGS`` as a user would; returns CompletedProcess (text)."""
    e = dict(os.environ)
    e.update(env or {})
    e.pop("BCCDET_DEBUG", None)
    return subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *map(str, args)],
        cwd=cwd or REPO, env=e, capture_output=True, text=True, timeout=900,
    )


@pytest.fixture(scope="session")
def tiny_detector(tmp_path_factory, bccd):
    """A yolov8n-seg trained one epoch at 64 px on six BCCD fields: plumbing only, not accuracy.

    Shared by test_analyze.py and test_fiftyone.py (session scope: trained once per run).
    """
    from tests.test_train_smoke import _bccd_subset

    tmp = tmp_path_factory.mktemp("tiny")
    sub = _bccd_subset(bccd, tmp / "bccd")
    assert run_cli("convert", "bccd", sub, "--out", tmp / "yolo", "--task", "segment").returncode == 0
    r = run_cli("train", "detector", "--data", tmp / "yolo/data.yaml", "--model", "yolov8n-seg.yaml", "--init", "none",
                "--epochs", "1", "--imgsz", "64", "--batch", "4", "--workers", "0", "--project", tmp / "runs", "--name", "t")
    assert r.returncode == 0, r.stderr[-2000:]
    return tmp / "runs/t/weights/last.pt"


@pytest.fixture
def cli():
    return run_cli


def disc_image(h=120, w=160, cells=((40, 50, 15), (100, 70, 20)), seed=0):
    """A synthetic smear: pink background with darker discs; returns (rgb, list of (cx, cy, r))."""
    import cv2

    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), (230, 200, 210), np.uint8)
    for cx, cy, r in cells:
        cv2.circle(img, (cx, cy), r, (190, 90, 110), -1)
    img = np.clip(img.astype(int) + rng.integers(-5, 6, img.shape), 0, 255).astype(np.uint8)
    return img, list(cells)
