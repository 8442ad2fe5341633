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
    assert {r["patient"] for r in rows} == {"export"} and s["patient"] == "export"
    page = (out / "report.html").read_text()
    assert page.count("<figure") == 5 and "broken.jpg" in page and "Unreadable files" in page
    assert "<section><h2>export</h2>" in page and "data:image/jpeg;base64," in page
    assert not (out / "patients.csv").exists()

    # a folder of patient exports: one summary per patient (each PATH's sub-folders, CellaVision class folders inside)
    root = tmp_path / "exports"
    test_imgs = sorted((data / "test").rglob("*.png"))
    for i, pat in enumerate(("Patient_A", "Patient_B")):
        for j, p in enumerate(test_imgs[i * 3:i * 3 + 3]):
            d = root / pat / ("Lymphocyte" if j % 2 else "Blast, no lineage spec")
            d.mkdir(parents=True, exist_ok=True)
            (d / p.name).write_bytes(p.read_bytes())
    r = cli("classify", root, "--patients", "folder", "--out", tmp_path / "o2", "--classifier", ck)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Patient_A: 3 cells classified" in r.stdout and "Patient_B: 3 cells classified" in r.stdout
    rows = list(csv.DictReader(open(tmp_path / "o2/cells.csv")))
    assert sorted((r["patient"], r["path"].split("/")[-3]) for r in rows) == sorted(
        [("Patient_A", "Patient_A")] * 3 + [("Patient_B", "Patient_B")] * 3)
    pts = list(csv.DictReader(open(tmp_path / "o2/patients.csv")))
    assert [p["patient"] for p in pts] == ["Patient_A", "Patient_B"] and all(p["classified"] == "3" for p in pts)
    s2 = json.loads((tmp_path / "o2/summary.json").read_text())
    assert set(s2["patients"]) == {"Patient_A", "Patient_B"} and s2["classified"] == 6
    assert all(0.0 <= v["apl_score"] <= 1.0 for v in s2["patients"].values())
    page = (tmp_path / "o2/report.html").read_text()
    assert "<h2>Patient_A</h2>" in page and "<h2>Patient_B</h2>" in page and page.count("<figure") == 6
    # one patient's export (class sub-folders) given with --patients folder stays one patient
    r = cli("classify", root / "Patient_A", "--patients", "folder", "--out", tmp_path / "o5", "--classifier", ck)
    assert r.returncode == 0 and not (tmp_path / "o5/patients.csv").exists()
    assert json.loads((tmp_path / "o5/summary.json").read_text())["patient"] == "Patient_A"
    # each PATH one patient
    r = cli("classify", root / "Patient_A", root / "Patient_B", "--patients", "path", "--out", tmp_path / "o3", "--classifier", ck)
    assert r.returncode == 0 and len(list(csv.DictReader(open(tmp_path / "o3/patients.csv")))) == 2
    r = cli("classify", root, "--patients", "slide", "--out", tmp_path / "o4", "--classifier", ck)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --patients") and "Traceback" not in r.stderr
    r = cli("classify", root, "--precision", "fp8", "--out", tmp_path / "o6", "--classifier", ck)
    assert r.returncode == 2 and "fp8" in r.stderr and "Traceback" not in r.stderr
    r = cli("classify", root, "--precision", "bf16", "--out", tmp_path / "o7", "--classifier", ck)
    assert r.returncode == 0 and json.loads((tmp_path / "o7/summary.json").read_text())["model"]["precision"] == "bf16"
    # --review-threshold: 1.0 sends every typed cell to review, and the summary records the threshold used
    r = cli("classify", root, "--review-threshold", "1.0", "--out", tmp_path / "o8", "--classifier", ck)
    assert r.returncode == 0, r.stderr[-2000:]
    s8 = json.loads((tmp_path / "o8/summary.json").read_text())
    assert s8["model"]["review_threshold"] == 1.0 and s8["review"] == s8["classified"] == 6
    assert json.loads((tmp_path / "o7/summary.json").read_text())["model"]["review_threshold"] == 0.6
    r = cli("classify", root, "--review-threshold", "1.5", "--out", tmp_path / "o9", "--classifier", ck)
    assert r.returncode == 2 and "1.5" in r.stderr and "Traceback" not in r.stderr


def test_classify_empty_folder_is_a_clear_error(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    r = cli("classify", tmp_path / "empty", "--out", tmp_path / "o")
    assert r.returncode == 2 and "no image files" in r.stderr and "Traceback" not in r.stderr


def test_train_classifier_on_a_manifest_only_set(tmp_path, cli):
    """A re-split that is only a manifest.csv (absolute file paths into another set; how
    python -m tools.deepapl_cv writes its patient folds) trains like a folder set; a folder with neither
    train/ nor manifest.csv is a one-line error."""
    src = make_cls_set(tmp_path / "src", manifest=True)
    rows = list(csv.DictReader(open(src / "manifest.csv")))
    fold = tmp_path / "fold"
    fold.mkdir()
    with open(fold / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:  # swap train and test: proves the manifest, not the folders, decides the split
            split = {"train": "test", "test": "train"}.get(r["split"], r["split"])
            w.writerow(dict(r, split=split, file=str((src / r["file"]).resolve())))
    run = tmp_path / "run"
    r = cli("train", "classifier", "--data", fold, "--out", run, "--epochs", "1", "--imgsz", "32", "--batch", "8",
            "--freeze-epochs", "0", "--threads", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    import torch

    ck = torch.load(run / "classifier.pt", weights_only=True)
    assert sum(ck["data"]["train"].values()) == 9  # the 3 x 3 images of src's test split
    (tmp_path / "nothing").mkdir()
    r = cli("train", "classifier", "--data", tmp_path / "nothing", "--out", tmp_path / "r2")
    assert r.returncode != 0 and "no train/ and no manifest.csv" in r.stderr and "Traceback" not in r.stderr
