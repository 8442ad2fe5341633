"""`bccdet train classifier`, `evaluate classifier` and `classify` end to end on a synthetic cell set."""

import csv
import json

import pytest

from bccdet.vocab import LABELS
from tests.test_classifier import make_cls_set

pytestmark = pytest.mark.slow


def test_train_evaluate_classify_cli(tmp_path, cli):
    data = make_cls_set(tmp_path / "cls")
    run = tmp_path / "run"
    r = cli("train", "classifier", "--data", data, "--out", run, "--epochs", "1", "--imgsz", "32", "--batch", "8",
            "--freeze-epochs", "0", "--threads", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    ck = run / "classifier.pt"
    assert ck.exists()
    r = cli("evaluate", "classifier", "--data", data, "--weights", ck, "--out", tmp_path / "ev")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "macro-F1" in r.stdout and (tmp_path / "ev/confusion_test.png").exists()

    cells = tmp_path / "export/patient_1"
    cells.mkdir(parents=True)
    for p in list((data / "test").rglob("*.png"))[:5]:
        (cells / p.name).write_bytes(p.read_bytes())
    (cells / "broken.jpg").write_text("not an image")
    out = tmp_path / "out"
    r = cli("classify", tmp_path / "export", "--out", out, "--classifier", ck)
    assert r.returncode == 1  # one unreadable file; the rest classified
    assert "broken.jpg" in r.stderr and "Traceback" not in r.stderr
    rows = list(csv.DictReader(open(out / "cells.csv")))
    assert list(rows[0])[:4] == ["path", "label", "score", "review"]
    assert [f"p_{k}" for k in LABELS] == [c for c in rows[0] if c.startswith("p_")]
    assert len(rows) == 6
    bad = [r for r in rows if r["path"].endswith("broken.jpg")][0]
    assert bad["label"] == "" and bad["reason"]
    good = [r for r in rows if r["label"]]
    assert len(good) == 5 and all(r["label"] in LABELS for r in good)
    for r in good:
        assert abs(sum(float(r[f"p_{k}"]) for k in LABELS) - 1) < 0.01
    s = json.loads((out / "summary.json").read_text())
    assert s["classified"] == 5 and 0.0 <= s["apl_score"] <= 1.0
    assert abs(sum(s["differential_percent"].values()) - 100) < 0.5


def test_classify_empty_folder_is_a_clear_error(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    r = cli("classify", tmp_path / "empty", "--out", tmp_path / "o")
    assert r.returncode == 2 and "no image files" in r.stderr and "Traceback" not in r.stderr
