"""FiftyOne curation on FiftyOne's own MongoDB: conversions, the tagging rule, `curate` / `curate-cls` /
`curate-export`, the plugin's operators through FiftyOne's SDK, and the App answering on localhost.

Every dataset made here is named ``bccdet-test-<random>`` and deleted afterwards; no other dataset is touched.
"""

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from bccdet.vocab import LABELS
from tests.helpers import REPO, bccd_subset, run_cli

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_LOGGING_LEVEL", "WARNING")

fo = pytest.importorskip("fiftyone")


def run_curate(*args, env=None):
    """``python -m bccdet.cli ARGS`` (the main app, the curation commands among its commands)."""
    e = dict(os.environ)
    e.update(env or {})
    e.pop("BCCDET_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "bccdet.cli", *map(str, args)], cwd=REPO, env=e,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def fo_db():
    """FiftyOne's database, started by FiftyOne; this process keeps a client so it stays up between the
    subprocesses (a mongod that FiftyOne is stopping can refuse a new client for a moment)."""
    fo.list_datasets()
    return fo


@pytest.fixture
def ds_name(fo_db):
    names = []

    def make(suffix=""):
        n = f"bccdet-test-{uuid.uuid4().hex[:10]}{suffix}"
        names.append(n)
        return n

    yield make
    for n in names:
        if fo.dataset_exists(n):
            fo.delete_dataset(n)


@pytest.fixture(scope="session")
def bccd_yolo(tmp_path_factory, bccd):
    """A small real BCCD subset (6 train, 2 val, 2 test fields) converted with `convert bccd --task segment`."""

    tmp = tmp_path_factory.mktemp("fo_bccd")
    sub = bccd_subset(bccd, tmp / "bccd")
    r = run_cli("convert", "bccd", sub, "--out", tmp / "yolo", "--task", "segment")
    assert r.returncode == 0, r.stderr
    return tmp / "yolo"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- conversions (no database)
def test_cells_to_detections_round_trip():
    from bccdet.adapters.fiftyone import cells_to_detections, detections_to_cells
    from bccdet.types import Cells, SmearMeta

    meta = SmearMeta(path="x.png", width=200, height=100)
    full = np.zeros((2, 100, 200), bool)
    full[0, 10:30, 20:50] = True
    full[1, 60:90, 150:199] = True
    full[1, 60, 150] = False
    cells = Cells.from_full_masks([[20, 10, 50, 30], [150.4, 60.2, 199, 90]], ["rbc", "wbc"], full, meta=meta,
                                  score=[0.9, 0.8], label=[None, "neutrophil"], label_score=[np.nan, 0.7])
    dets = cells_to_detections(cells)
    d0, d1 = dets.detections
    assert d0.label == "rbc" and abs(d0.confidence - 0.9) < 1e-6
    np.testing.assert_allclose(d0.bounding_box, [0.1, 0.1, 0.15, 0.2], atol=1e-6)
    assert d0.mask.shape == (20, 30) and d0.mask.all()  # box-cropped, as FiftyOne expects
    x, y, w, h = d1.bounding_box
    assert d1.mask.shape == (round(h * 100), round(w * 200))  # mask grid = pixel hull of the box
    assert d1["cell_type"] == "neutrophil"
    back = detections_to_cells(dets, meta)
    assert list(back.kind) == ["rbc", "wbc"] and back.label[1] == "neutrophil"
    np.testing.assert_array_equal(back.full_masks(), full)
    np.testing.assert_allclose(back.xyxy[0], [20, 10, 50, 30], atol=1e-4)


def test_cells_from_report_matches_cells(tmp_path):
    from bccdet.adapters.fiftyone import cells_from_report
    from bccdet.report import report_dict
    from bccdet.types import Cells, SmearMeta

    meta = SmearMeta(path="a.png", width=64, height=48)
    full = np.zeros((1, 48, 64), bool)
    full[0, 5:20, 8:30] = True
    cells = Cells.from_full_masks([[8, 5, 30, 20]], ["platelet"], full, meta=meta, score=[0.66])
    back = cells_from_report(json.loads(json.dumps(report_dict(cells, {}))))
    assert back.kind[0] == "platelet" and abs(back.score[0] - 0.66) < 1e-4
    np.testing.assert_array_equal(back.full_masks(), full)
    assert back.morphology[0] is None and np.isnan(back.morphology_score[0])
    # a typed red cell keeps its morphology through report.json and through FiftyOne's detections
    from bccdet.adapters.fiftyone import cells_to_detections, detections_to_cells

    rbc = Cells.from_full_masks([[8, 5, 30, 20]], ["rbc"], full, meta=meta, morphology=["target_cell"],
                                morphology_score=[0.875])
    back = cells_from_report(json.loads(json.dumps(report_dict(rbc, {}))))
    assert back.morphology[0] == "target_cell" and abs(back.morphology_score[0] - 0.875) < 1e-4
    again = detections_to_cells(cells_to_detections(rbc), meta)
    assert again.morphology[0] == "target_cell" and abs(again.morphology_score[0] - 0.875) < 1e-6


# ---------------------------------------------------------------------- the tagging rule (synthetic, real database)
def _synthetic_dataset(name, tmp_path):
    """Two 200x100 images; labels and predictions built so that each rule fires exactly once."""
    from PIL import Image

    D = fo.Detection

    def box(x1, y1, x2, y2):
        return [x1 / 200, y1 / 100, (x2 - x1) / 200, (y2 - y1) / 100]

    ds = fo.Dataset(name)
    samples = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        Image.new("RGB", (200, 100), (230, 200, 210)).save(p)
        s = fo.Sample(filepath=str(p), tags=["train"])
        s["split"] = "train"
        s["metadata"] = fo.ImageMetadata(width=200, height=100)
        s["bccdet_embedding"] = np.random.default_rng(i).normal(size=8).astype(np.float32)
        samples.append(s)
    a, b = samples
    a["ground_truth"] = fo.Detections(detections=[
        D(label="rbc", bounding_box=box(10, 10, 40, 40)),  # matched
        D(label="rbc", bounding_box=box(150, 50, 190, 90)),  # nothing there -> possible_spurious
        D(label="platelet", bounding_box=box(60, 10, 90, 40)),  # detector: wbc at 0.9 -> possible_class
    ])
    a["predictions"] = fo.Detections(detections=[
        D(label="rbc", bounding_box=box(11, 10, 40, 41), confidence=0.9),
        D(label="wbc", bounding_box=box(60, 10, 90, 40), confidence=0.9),
        D(label="rbc", bounding_box=box(100, 60, 130, 90), confidence=0.8),  # unlabelled cell -> possible_missing
        D(label="rbc", bounding_box=box(100, 10, 130, 40), confidence=0.3),  # too unsure: not tagged
    ])
    b["ground_truth"] = fo.Detections(detections=[D(label="wbc", bounding_box=box(20, 20, 60, 60))])
    b["predictions"] = fo.Detections(detections=[D(label="wbc", bounding_box=box(20, 20, 60, 60), confidence=0.95)])
    ds.add_samples(samples)
    ds.persistent = True
    ds.info["bccdet"] = {"kind": "detection"}
    ds.save()
    return ds


def test_tagging_rule_and_ranked_csv(ds_name, tmp_path):
    from bccdet.adapters import fiftyone as bf

    ds = _synthetic_dataset(ds_name(), tmp_path)
    ev = bf.evaluate(ds)
    assert (ev["tp"], ev["fp"], ev["fn"]) == (2, 3, 2)  # class-wise: the platelet/wbc pair counts as FP + FN
    assert set(ev["per_class"]) == {"rbc", "wbc", "platelet"}
    assert ds.count_values("eval_tp") and "eval_fn" in ds.get_field_schema()
    bf.brain_detection(ds, log=lambda m: None)
    for f in ("mistakenness", "possible_missing", "possible_spurious", "hardness", "uniqueness"):
        assert f in ds.get_field_schema(), f
    assert set(ds.list_brain_runs()) >= {"mistakenness", "hardness", "uniqueness"}
    sus = bf.tag_detection_suspects(ds)
    assert sorted(s.reason for s in sus) == ["possible_class", "possible_missing", "possible_spurious"]
    by = {s.reason: s for s in sus}
    assert by["possible_missing"].box == (100.0, 60.0, 130.0, 90.0) and by["possible_missing"].field == "predictions"
    assert by["possible_spurious"].box == (150.0, 50.0, 190.0, 90.0) and by["possible_spurious"].score == 1.0
    assert by["possible_class"].kind == "platelet" and abs(by["possible_class"].score - 0.95) < 1e-6
    assert [s.score for s in sus] == sorted((s.score for s in sus), reverse=True)
    assert ds.count_label_tags() == {"possible_missing": 1, "possible_spurious": 1, "possible_class": 1}
    assert len(ds.match_tags("suspect")) == 1
    sus2 = bf.tag_detection_suspects(ds)  # idempotent: tags are rewritten, not added twice
    assert len(sus2) == 3 and ds.count_label_tags()["possible_missing"] == 1
    rows = list(csv.DictReader(open(bf.write_suspects_csv(sus, tmp_path / "s.csv"))))
    assert [r["rank"] for r in rows] == ["1", "2", "3"] and {"filepath", "x1", "reason", "score"} <= set(rows[0])

    # corrected export: a reviewer accepted the missing cell and rejected the spurious box
    ds.select_labels(ids=[by["possible_missing"].label_id]).tag_labels("accept")
    ds.select_labels(ids=[by["possible_spurious"].label_id]).tag_labels("reject")
    res = bf.export_labels(ds, tmp_path / "exp", formats=["yolo", "coco"], task="detect")
    assert res["objects"] == 4 + 0  # 3 - 1 rejected + 1 accepted, plus the other image's 1
    labs = sorted((tmp_path / "exp/labels/train").glob("*.txt"))
    assert [len(p.read_text().split("\n")) - 1 for p in labs] == [3, 1]
    coco = json.loads((tmp_path / "exp/annotations/train.json").read_text())
    assert len(coco["images"]) == 2 and len(coco["annotations"]) == 4
    with pytest.raises(bf.CurationError, match="--overwrite"):
        bf.export_labels(ds, tmp_path / "exp")


def test_never_touches_a_foreign_dataset_without_overwrite(ds_name, bccd_yolo):
    from bccdet.adapters import fiftyone as bf

    name = ds_name()
    foreign = fo.Dataset(name)
    foreign.persistent = True
    foreign.add_sample(fo.Sample(filepath="/nonexistent/user.jpg"))
    with pytest.raises(bf.CurationError, match="not made by bccdet"):
        bf.build_detection_dataset(bccd_yolo, name)
    assert len(fo.load_dataset(name)) == 1  # untouched

    own = ds_name()
    ds, s1 = bf.build_detection_dataset(bccd_yolo, own, splits=["train"], log=lambda m: None)
    assert s1.added == 6 and len(ds) == 6 and ds.count_sample_tags() == {"train": 6}
    first = ds.first()
    first.ground_truth.detections[0].tags.append("reject")  # a user's correction in the App
    first.save()
    ds, s2 = bf.build_detection_dataset(bccd_yolo, own, log=lambda m: None)  # update: val/test added, edits kept
    assert (s2.added, s2.kept, len(ds)) == (4, 6, 10)
    assert ds.count_label_tags("ground_truth") == {"reject": 1}
    ds, s3 = bf.build_detection_dataset(bccd_yolo, own, overwrite=True, log=lambda m: None)
    assert s3.added == 10 and ds.count_label_tags("ground_truth") == {}
    with pytest.raises(bf.CurationError, match="not bccdet's|not a converted"):
        bf.build_detection_dataset(bccd_yolo.parent, ds_name())


# ---------------------------------------------------------------------- CLI end to end (real model, real data)
@pytest.mark.slow
def test_curate_cli_end_to_end(ds_name, bccd_yolo, tiny_detector, tmp_path):
    name = ds_name()
    out, exp = tmp_path / "cur", tmp_path / "exp"
    r = run_curate("curate", bccd_yolo, "--name", name, "--detector", tiny_detector, "--split", "train",
                   "--split", "val", "--out", out, "--export", exp, "--export-format", "yolo", "--export-format", "coco")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "ranked list:" in r.stdout and "timings:" in r.stdout
    ds = fo.load_dataset(name)
    assert ds.persistent and len(ds) == 8 and ds.info["bccdet"]["kind"] == "detection"
    schema = ds.get_field_schema()
    for f in ("ground_truth", "predictions", "bccdet_embedding", "eval_tp", "eval_fp", "eval_fn", "mistakenness",
              "possible_missing", "possible_spurious", "hardness", "uniqueness", "n_suspect"):
        assert f in schema, f
    assert "eval" in ds.list_evaluations()
    rows = list(csv.DictReader(open(out / "suspects.csv")))
    assert len(rows) == sum(ds.values("n_suspect"))
    assert all(r["reason"] in {"possible_missing", "possible_spurious", "possible_class", "possible_loc"} for r in rows)
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["tp"] + ev["fn"] == ds.count("ground_truth.detections")
    # the export reads back with the converters' own reader and keeps every image and box
    from bccdet.convert.common import Report
    from bccdet.convert.detection import load_yolo_split, read_yolo_names

    back = load_yolo_split(exp / "images/train", exp / "labels/train", read_yolo_names(exp / "data.yaml"), "train", "x", Report("x"))
    assert len(back) == 6
    n_gt = ds.match_tags("train").count("ground_truth.detections")
    assert sum(len(s.cells) for s in back) == n_gt and all(s.cells.has_masks for s in back if len(s.cells))
    assert json.loads((exp / "annotations/val.json").read_text())["images"]

    # refuses to export over a non-empty folder (before any work); curate-export of a view
    r = run_curate("curate", bccd_yolo, "--name", name, "--detector", tiny_detector, "--out", out, "--export", exp)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "--overwrite" in r.stderr
    r = run_curate("curate-export", name, "--out", tmp_path / "exp2", "--split", "val", "--format", "coco", "--task", "detect")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "exp2/annotations/val.json").exists() and not (tmp_path / "exp2/labels").exists()
    r = run_curate("curate-export", "bccdet-test-no-such-dataset-x", "--out", tmp_path / "exp3")
    assert r.returncode == 2 and r.stderr.startswith("error:")


def _val_reports(bccd_yolo, dest):
    """report.json files (the analyze contract) whose cells are the val labels, named as analyze names them
    when run on the original BCCD files (no ``bccd__`` prefix)."""
    from bccdet.convert.common import Report
    from bccdet.convert.detection import load_yolo_split
    from bccdet.report import report_dict

    samples = load_yolo_split(bccd_yolo / "images/val", bccd_yolo / "labels/val", ["rbc", "wbc", "platelet"], "val", "x", Report("x"))
    for s in samples:
        d = dest / s.image.stem.split("__")[-1]
        d.mkdir(parents=True)
        cells = s.cells.with_meta(path=str(dest.parent / "elsewhere" / s.image.name.split("__")[-1]))
        (d / "report.json").write_text(json.dumps(report_dict(cells, {"detector": None})))
    return dest


@pytest.mark.slow
def test_curate_from_analyze_reports(ds_name, bccd_yolo, tmp_path):
    """--predictions DIR: report.json files matched to images by name; no model needed."""
    from bccdet.adapters import fiftyone as bf
    from bccdet.curate import curate_detection

    _val_reports(bccd_yolo, tmp_path / "pred")
    name = ds_name()
    ds, summ, sus = curate_detection(bccd_yolo, name, predictions=tmp_path / "pred", detector="no-such-model",
                                        splits=["val"], log=lambda m: None)
    assert summ.predicted == 2 and summ.unmatched_reports == 0
    assert summ.eval_report["fn"] == 0 and summ.eval_report["fp"] == 0 and sus == []
    assert ds.match_tags("val").count("predictions.detections") == ds.match_tags("val").count("ground_truth.detections")
    (tmp_path / "empty").mkdir()
    with pytest.raises(bf.CurationError, match="no report.json"):
        curate_detection(bccd_yolo, name, predictions=tmp_path / "empty")


# ---------------------------------------------------------------------- classification (PBC)
@pytest.fixture(scope="session")
def pbc_cls(tmp_path_factory, data_root):
    """Seven images of each PBC class converted with `convert pbc`, plus one file that also sits in a second
    class (the known PBC problem) added to the converted manifest."""
    pbc = data_root / "pbc"
    if not pbc.is_dir():
        pytest.skip("pbc absent")
    tmp = tmp_path_factory.mktemp("fo_pbc")
    sub = tmp / "pbc"
    for d in sorted(p for p in pbc.iterdir() if p.is_dir())[:4]:
        (sub / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:7]:
            shutil.copy(f, sub / d.name)
    out = tmp / "cls"
    r = run_cli("convert", "pbc", sub, "--out", out)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    a = rows[0]
    other = next(r["label"] for r in rows if r["label"] != a["label"])
    dst = Path(a["split"]) / other / ("dup_" + Path(a["file"]).name)
    (out / dst).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / a["file"], out / dst)
    with open(out / "manifest.csv", "a", newline="") as f:
        csv.writer(f).writerow([a["split"], other, other, "", "pbc", str(dst), a["original"], a["sha256"]])
    return out


@pytest.mark.slow
def test_curate_cls_cli(ds_name, pbc_cls, tiny_detector, tmp_path):
    name = ds_name()
    r = run_curate("curate-cls", pbc_cls, "--name", name, "--detector", tiny_detector, "--out", tmp_path / "c")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    ds = fo.load_dataset(name)
    assert ds.info["bccdet"]["kind"] == "classification" and len(ds) == 29
    for f in ("ground_truth", "predictions", "mistakenness", "hardness", "uniqueness", "bccdet_embedding", "sha256"):
        assert f in ds.get_field_schema(), f
    assert all(p is not None and len(p.logits) == 4 for p in ds.values("predictions"))
    conflict = ds.match_tags("duplicate_conflict")
    assert len(conflict) == 2 and len(set(conflict.values("ground_truth.label"))) == 2
    rows = list(csv.DictReader(open(tmp_path / "c/suspects.csv")))
    assert sum(r["reason"] == "duplicate_conflict" for r in rows) == 2
    assert "embeddings: detector backbone" in r.stdout
    # classifier probabilities from a CSV (file as in the manifest + p_<label>): one confident disagreement
    man = list(csv.DictReader(open(pbc_cls / "manifest.csv")))
    labels = sorted({m["label"] for m in man})
    with open(tmp_path / "probs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file"] + [f"p_{lab}" for lab in labels])
        for i, m in enumerate(man):
            want = m["label"] if i != 3 else next(lab for lab in labels if lab != m["label"])
            w.writerow([m["file"]] + [0.97 if lab == want else 0.01 for lab in labels])
    r = run_curate("curate-cls", pbc_cls, "--name", name, "--predictions", tmp_path / "probs.csv", "--out", tmp_path / "c2")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "kept their labels" in r.stdout
    mis = fo.load_dataset(name).match_tags("possible_mislabel")
    assert mis.values("filepath") == [str((pbc_cls / man[3]["file"]).resolve())]
    # refuses a detection dataset's name without --overwrite
    det = ds_name()
    d = fo.Dataset(det)
    d.persistent = True
    d.info["bccdet"] = {"kind": "detection"}
    d.save()
    r = run_curate("curate-cls", pbc_cls, "--name", det, "--detector", tiny_detector)
    assert r.returncode == 2 and "not classification" in r.stderr


@pytest.mark.slow
def test_curate_cls_embeds_with_the_classifier_and_ranks_the_wrong_copy_first(ds_name, pbc_cls, tmp_path):
    """Without --detector, curate-cls embeds with the shipped leukocyte classifier: the copy of a PBC image
    filed under a second class (the fixture's injected label error) is the most mistaken sample."""
    name = ds_name()
    r = run_curate("curate-cls", pbc_cls, "--name", name, "--out", tmp_path / "c")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "embeddings: classifier (bccdet-effnetl0-" in r.stdout
    ds = fo.load_dataset(name)
    assert len(ds.first()["bccdet_embedding"]) == 1280
    top = ds.sort_by("mistakenness", reverse=True).first()
    assert Path(top.filepath).name.startswith("dup_"), (top.filepath, top["mistakenness"])
    assert "possible_mislabel" in top.tags


# ---------------------------------------------------------------------- plugin operators through the SDK
@pytest.mark.slow
def test_plugin_operators(ds_name, bccd_yolo, pbc_cls, tiny_detector, tmp_path, monkeypatch):
    import fiftyone.operators as foo

    from bccdet.adapters import fiftyone as bf

    plugins = tmp_path / "plugins"
    r = run_curate("install-plugin", "--plugins-dir", plugins)
    assert r.returncode == 0, r.stderr
    assert (plugins / "bccdet/fiftyone.yml").is_file()
    monkeypatch.setattr(fo.config, "plugins_dir", str(plugins))
    uris = {o.uri for o in foo.list_operators(builtin=False)}
    assert {"@bccdet/bccdet/run_detector", "@bccdet/bccdet/classify_cells", "@bccdet/bccdet/find_label_mistakes",
            "@bccdet/bccdet/export_yolo"} <= uris
    said = set(r.stdout.split("operators ", 1)[1].strip().split(", "))
    assert said == {u for u in uris if u.startswith("@bccdet/")}  # the install message names every operator

    ds, _ = bf.build_detection_dataset(bccd_yolo, ds_name(), splits=["train"], log=lambda m: None)
    sel = ds.take(2, seed=0).values("id")
    res = foo.execute_operator("@bccdet/bccdet/run_detector", ctx={
        "dataset": ds.name, "selected": sel, "params": {"detector": str(tiny_detector), "view_target": "SELECTED_SAMPLES"}})
    assert res.result["predicted"] == 2
    assert sorted(ds.exists("predictions").values("id")) == sorted(sel)
    res = foo.execute_operator("@bccdet/bccdet/find_label_mistakes", ctx={
        "dataset": ds.name, "params": {"csv": str(tmp_path / "s.csv"), "brain": False}})
    assert set(res.result) >= {"suspects", "possible_missing", "possible_spurious", "tp", "fp", "fn"}
    assert len(list(csv.DictReader(open(tmp_path / "s.csv")))) == res.result["suspects"]
    assert "eval" in ds.list_evaluations() and ds.count("predictions.detections") == res.result["tp"] + res.result["fp"]
    res = foo.execute_operator("@bccdet/bccdet/export_yolo", ctx={
        "dataset": ds.name, "params": {"out": str(tmp_path / "y"), "task": "detect"}})
    assert res.result["images"] == 6 and (tmp_path / "y/data.yaml").exists()
    # the shipped classifier on the ground-truth WBC boxes of the selected fields ...
    res = foo.execute_operator("@bccdet/bccdet/classify_cells", ctx={
        "dataset": ds.name, "selected": sel, "params": {"det_field": "ground_truth", "view_target": "SELECTED_SAMPLES"}})
    wbc = [d for s in ds.select(sel) for d in s.ground_truth.detections if d.label == "wbc"]
    assert res.result["typed"] == len(wbc) >= 2
    assert all(d["cell_type"] in LABELS and 0 < d["cell_type_score"] <= 1 for d in wbc)
    # phone-camera BCCD white cells are mostly unlike the CellaVision training cells: flagged and reviewed
    assert any(d["unfamiliar"] for d in wbc) and all(d["review"] for d in wbc if d["unfamiliar"])
    assert ds.info["bccdet"]["classifier"]["name"] == res.result["classifier"]
    # ... and on single-cell images: real PBC cells (4 classes x 7), typed as their folders say
    cls, _ = bf.build_classification_dataset(pbc_cls, ds_name(), log=lambda m: None)
    res = foo.execute_operator("@bccdet/bccdet/classify_cells", ctx={"dataset": cls.name, "params": {}})
    assert res.result["typed"] == len(cls) == 29
    pred, gt = cls.values("bccdet_cell_type.label"), cls.values("ground_truth.label")
    assert np.mean([p == g for p, g in zip(pred, gt)]) >= 0.85, list(zip(pred, gt))
    assert set(cls.values("bccdet_cell_type.unfamiliar")) <= {True, False}
    # single cells take the same review rule as `classify`: every unfamiliar cell is reviewed
    from bccdet.adapters.classifier import load_classifier

    strict = load_classifier()
    strict.familiarity = dict(strict.familiarity, threshold=-1.0)  # every cell unfamiliar
    assert bf.classify_samples(cls, strict, field_name="strict") == 29
    assert all(cls.values("strict.unfamiliar")) and all(cls.values("strict.review"))
    with pytest.raises(Exception, match="no field 'nope'"):
        foo.execute_operator("@bccdet/bccdet/classify_cells", ctx={"dataset": cls.name, "params": {"det_field": "nope"}})


# ---------------------------------------------------------------------- the App
@pytest.mark.slow
def test_app_answers_on_localhost(ds_name, tmp_path):
    from bccdet.adapters import fiftyone as bf

    ds = _synthetic_dataset(ds_name(), tmp_path)
    port = _free_port()
    session = bf.launch(ds, port=port)
    try:
        assert bf.wait_http(f"http://127.0.0.1:{port}/", timeout=90) == 200
    finally:
        session.close()


@pytest.mark.slow
def test_curate_launch_serves_the_app(ds_name, bccd_yolo, tmp_path):
    """`curate ... --launch`: the App answers on localhost until the command is interrupted."""
    import signal
    import time
    import urllib.request

    from bccdet.adapters import fiftyone as bf

    _val_reports(bccd_yolo, tmp_path / "pred")
    port = _free_port()
    e = dict(os.environ)
    e.pop("BCCDET_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "bccdet.cli", "curate", str(bccd_yolo), "--name", ds_name(),
                             "--split", "val", "--predictions", str(tmp_path / "pred"), "--no-brain", "--out",
                             str(tmp_path / "o"), "--launch", "--port", str(port)],
                            cwd=REPO, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            # started as a shell starts a background job: SIGINT ignored; --launch must still stop
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 180
        while not any("FiftyOne App: http://127.0.0.1" in ln for ln in lines):  # printed once the App is up
            assert proc.poll() is None and time.time() < deadline, "".join(lines)
            time.sleep(0.5)
        assert bf.wait_http(f"http://127.0.0.1:{port}/", timeout=30) == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert b"<html" in r.read().lower()
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the documented way to stop serving
        try:
            proc.wait(timeout=90)  # bccdet.cli.curate._close_app kills a stuck App server after 30 s
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 0 and "Traceback" not in out, out
    deadline = time.time() + 30  # the App server goes away with the command
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            time.sleep(1)
        except OSError:
            break
    else:
        pytest.fail("the App still answers after the command ended")


def test_close_app_kills_a_stuck_app_server():
    """FiftyOne's Session.close waits without limit for its App server child; _close_app bounds that and
    kills only the `--51-service server` child."""
    import time

    from bccdet.cli.curate import _close_app

    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "--51-service", "server"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "--51-service", "db"])
    try:
        class StuckSession:
            def close(self):
                server.wait()  # what fiftyone's ServerService.stop does

        t0 = time.time()
        _close_app(StuckSession(), timeout=1.0)
        assert time.time() - t0 < 15
        assert server.poll() is not None  # killed
        assert other.poll() is None  # the database service is left alone
    finally:
        for p in (server, other):
            p.kill()
            p.wait()


def test_near_duplicate_pairs_report_the_distance_the_threshold_saw():
    from bccdet.adapters.fiftyone import near_duplicate_pairs

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 64)).astype(np.float32)
    emb[7] = emb[3] + 0.05 * rng.normal(size=64)  # a near copy of image 3
    emb[20] = -emb[11]  # opposite: far apart
    got = near_duplicate_pairs(emb, 0.05)
    assert [(i, j) for i, j, _ in got] == [(3, 7)]
    u, v = emb[3] / np.linalg.norm(emb[3]), emb[7] / np.linalg.norm(emb[7])
    assert got[0][2] == pytest.approx(1 - float(u @ v), abs=1e-5) and got[0][2] <= 0.05
    assert near_duplicate_pairs(emb, 0.05, chunk=8) == got  # chunking changes nothing
