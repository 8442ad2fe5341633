import json

import pytest

from bccdet import weights as W
from bccdet.io import sha256_file


@pytest.fixture
def fake_registry(tmp_path, monkeypatch):
    wdir = tmp_path / "weights"
    wdir.mkdir()
    f = wdir / "det.pt"
    f.write_bytes(b"not really a model")
    reg = {"models": [{"name": "bccdet-det-test", "task": "detector", "file": "det.pt", "sha256": sha256_file(f), "default": True}]}
    (wdir / "registry.json").write_text(json.dumps(reg))
    monkeypatch.setattr(W, "WEIGHTS_DIR", wdir)
    monkeypatch.setattr(W, "REGISTRY_FILE", wdir / "registry.json")
    monkeypatch.setenv("BCCDET_CACHE", str(tmp_path / "cache"))
    return wdir


def test_resolve_default_name_and_path(fake_registry):
    p, name, sha = W.resolve(None, "detector")
    assert p == fake_registry / "det.pt" and name == "bccdet-det-test" and sha == sha256_file(p)
    assert W.resolve("bccdet-det-test", "detector")[0] == p
    assert W.resolve(str(p), "detector")[1] == "det"


def test_unknown_name_hints_close_match(fake_registry):
    with pytest.raises(W.WeightsError, match="did you mean 'bccdet-det-test'"):
        W.resolve("bccdet-det-tst", "detector")


def test_sha_mismatch_and_missing(fake_registry):
    (fake_registry / "det.pt").write_bytes(b"tampered")
    with pytest.raises(W.WeightsError, match="does not match"):
        W.resolve(None, "detector")
    (fake_registry / "det.pt").unlink()
    with pytest.raises(W.WeightsError, match="missing"):
        W.resolve(None, "detector")


def test_no_default_for_task(fake_registry):
    with pytest.raises(W.WeightsError, match="no classifier weights"):
        W.resolve(None, "classifier")


def test_shipped_registry_files_match():
    """Every model registered in the repo is committed and matches its sha256."""
    for m in W.registry().values():
        p = W.WEIGHTS_DIR / m.file
        assert p.is_file(), f"{m.name}: {p} missing"
        assert sha256_file(p) == m.sha256, f"{m.name}: sha256 mismatch"
        assert (W.WEIGHTS_DIR / m.card).is_file(), f"{m.name}: model card {m.card} missing"


def test_resolve_names_the_file_and_the_task():
    from bccdet.weights import WeightsError, registry, resolve

    with pytest.raises(WeightsError, match="no such weights file"):
        resolve("/nowhere/mistyped.pt", "detector")
    clf = next(n for n, m in registry().items() if m.task == "classifier")
    with pytest.raises(WeightsError, match="is a registered classifier model, not a detector"):
        resolve(clf, "detector")
    with pytest.raises(WeightsError) as e:
        resolve("no-such-model", "detector")
    assert clf not in str(e.value)  # the known list names only models of the asked task


def test_device_option_is_checked_before_any_work():
    from bccdet.runtime import check_device

    assert check_device("cpu") == "cpu" and check_device(None) == "cpu"
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        check_device("gpu")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is visible"):
            check_device("cuda")


def test_a_file_that_is_not_a_detector_says_what_it_is(tmp_path):
    """Our classifier or SAM checkpoint passed as --detector once gave ultralytics' advice to use yolo26n.pt."""
    from bccdet.adapters.yolo import YoloDetector
    from bccdet.io import InputError

    wdir = W.WEIGHTS_DIR
    for f, what in (("bccdet-effnetl0-wbc.pt", "classifier checkpoint (pass it as --classifier)"),
                    ("bccdet-litemedsam-blood.pt", "SAM checkpoint (pass it as --sam)")):
        with pytest.raises(InputError, match=r"not an ultralytics YOLO detector checkpoint; it is a .*" + what.replace("(", r"\(").replace(")", r"\)")):
            YoloDetector(wdir / f)
    (tmp_path / "notes.md").write_text("# not a model\n")
    with pytest.raises(InputError, match="not an ultralytics YOLO detector checkpoint"):
        YoloDetector(tmp_path / "notes.md")
    with pytest.raises(InputError, match="no such detector weights file"):
        YoloDetector(tmp_path / "missing.pt")
    from bccdet.adapters.sam import SamModel

    with pytest.raises(InputError, match="not a litemedsam checkpoint"):  # a YOLO .pt as --sam: was an UnpicklingError
        SamModel(wdir / "bccdet-yolov8n-seg.pt")
