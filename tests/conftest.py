"""Fixtures; the helpers they use (and that tests import) are in tests/helpers.py."""

import os

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")

import pytest  # noqa: E402

from tests.helpers import REPO, bccd_subset, dataset_dir, run_cli  # noqa: E402,F401  (REPO: older imports)


def _data_root():
    from bccdet.data import data_root

    return data_root()


@pytest.fixture(scope="session")
def data_root():
    root = _data_root()
    if root is None:
        pytest.skip("data sets absent: set BCCDET_DATA or put them in ../shared/datasets")
    return root


@pytest.fixture(scope="session")
def bccd(data_root):
    return dataset_dir(data_root, "bccd")


@pytest.fixture(scope="session")
def tiny_detector(tmp_path_factory, bccd):
    """A yolov8n-seg trained one epoch at 64 px on six BCCD fields: plumbing only, not accuracy.

    Shared by test_analyze.py and test_fiftyone.py (session scope: trained once per run).
    """
    tmp = tmp_path_factory.mktemp("tiny")
    sub = bccd_subset(bccd, tmp / "bccd")
    assert run_cli("convert", "bccd", sub, "--out", tmp / "yolo", "--task", "segment").returncode == 0
    r = run_cli("train", "detector", "--data", tmp / "yolo/data.yaml", "--model", "yolov8n-seg.yaml", "--init", "none",
                "--epochs", "1", "--imgsz", "64", "--batch", "4", "--workers", "0", "--project", tmp / "runs", "--name", "t")
    assert r.returncode == 0, r.stderr[-2000:]
    return tmp / "runs/t/weights/last.pt"


@pytest.fixture
def cli():
    return run_cli
