"""`bccdet batch`: planning and bad inputs, outputs and aggregates, exit codes, resume after kill -9,
whole-slide tiling, single-cell exports and the Ray backend (docs/batch.md)."""

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bccdet import batch as B
from bccdet.batch import engine as batch_engine  # where Batch looks _classifier_available up
from bccdet.weights import default_name
from tests.conftest import REPO

pytestmark = pytest.mark.data

FAST = ["--imgsz", "64", "--conf", "1e-4", "--no-progress"]  # the tiny detector finds ~10 cells per field this way
FAST_OPTS = {"imgsz": 64, "conf": 1e-4}


# ---------------------------------------------------------------------- helpers
def _fields(bccd: Path, d: Path, n: int, start: int = 0, size=(448, 336)) -> list[Path]:
    """``n`` distinct BCCD fields, cropped to ``size`` (still fields: longer side > 400 px), as JPGs in ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    src = sorted((bccd / "JPEGImages").glob("*.jpg"))[start:start + n]
    out = []
    for p in src:
        q = d / p.name
        Image.open(p).convert("RGB").crop((0, 0, *size)).save(q, quality=92)
        out.append(q)
    return out


def _crop(src: Path, dst: Path, side=256) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    Image.open(src).convert("RGB").crop((100, 100, 100 + side, 100 + side)).save(dst)
    return dst


def _app():
    from bccdet.cli import app

    return app


def _invoke(*args):
    from typer.testing import CliRunner

    r = CliRunner().invoke(_app(), ["batch", *map(str, args)])
    return r


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k] == b[k], f"{k} differs"


# ---------------------------------------------------------------------- planning (no model)
def test_plan_records_bad_inputs_with_reasons(bccd, tmp_path):
    inp = tmp_path / "in"
    a = _fields(bccd, inp / "A", 2)
    b = _fields(bccd, inp / "B", 1, start=2)
    shutil.copy(a[0], inp / "B" / "copy_of_a0.jpg")  # duplicate across slides
    (inp / "B" / "notes.txt").write_text("not an image\n")  # non-image file
    (inp / "B" / "empty.jpg").write_bytes(b"")  # unreadable image
    (inp / "B" / "garbage.png").write_text("this is not a png")
    (inp / "E").mkdir()  # empty folder
    _fields(bccd, inp / "M", 2, start=3)  # mixed: two fields and a single-cell crop
    _crop(a[1], inp / "M" / "crop.png")
    for i, lab in enumerate(("Lymphocyte", "Segmented neutrophils")):  # a CellaVision-style export
        _crop(bccd / "JPEGImages" / f"BloodImage_0001{i}.jpg", inp / "Patient_X" / lab / f"cell{i}.png")
    loose = _fields(bccd, inp / "loose", 2, start=5)
    lst = tmp_path / "list.csv"
    lst.write_text(f"path,slide\n{loose[0]},from_csv\n{loose[1].relative_to(tmp_path)},from_csv\n")

    opts = {"tile": 640, "overlap": 192}
    slides = B.plan_batch([str(inp / x) for x in ("A", "B", "E", "M", "Patient_X")] +
                          [str(tmp_path / "nowhere"), str(inp / "nothing*.jpg"), str(lst)], opts)
    by = {s["slide"]: s for s in slides}
    assert list(by) == ["A", "B", "E", "M", "Patient_X", "nowhere", "nothing_", "from_csv"]
    fb = {f["name"]: f for f in by["B"]["fields"]}
    assert fb["copy_of_a0"]["status"] == "skipped" and "duplicate of A/" in fb["copy_of_a0"]["error"]
    assert fb["notes"]["status"] == "skipped" and "not an image" in fb["notes"]["error"]
    assert fb["empty"]["status"] == "failed" and "empty file" in fb["empty"]["error"]
    assert fb["garbage"]["status"] == "failed" and "not a readable image" in fb["garbage"]["error"]
    assert fb[b[0].stem]["status"] == "pending"
    assert by["E"]["error"].startswith("empty folder")
    fm = {f["name"]: f for f in by["M"]["fields"]}
    assert by["M"]["kind"] == "fields" and fm["crop"]["status"] == "failed" and "mixed folder" in fm["crop"]["error"]
    assert by["Patient_X"]["kind"] == "cellavision" and len(by["Patient_X"]["fields"]) == 2
    assert {f.get("given_class") for f in by["Patient_X"]["fields"]} == {"Lymphocyte", "Segmented neutrophils"}
    assert by["nowhere"]["error"] == "no such file or folder"
    assert by["nothing_"]["error"] == f"glob {str(inp / 'nothing*.jpg')!r} matched nothing"
    assert [f["path"] for f in by["from_csv"]["fields"]] == [str(p) for p in loose]
    for s in slides:  # every field record has a sha256 when its file exists
        assert all(f["sha256"] for f in s["fields"] if f["status"] == "pending")


def test_images_option_decides_fields_or_single_cells(bccd, tmp_path):
    small = _fields(bccd, tmp_path / "small", 3, size=(360, 363))  # small smear fields (TXL-PBC has such)
    big = _fields(bccd, tmp_path / "big", 2)
    opts = {"tile": 640, "overlap": 192}
    auto = {s["slide"]: s for s in B.plan_batch([str(small[0].parent), str(big[0].parent)], opts)}
    assert auto["small"]["kind"] == "cellavision" and auto["big"]["kind"] == "fields"
    assert any("--images fields" in w["reason"] for w in auto["small"]["warnings"])  # says how to override
    assert not auto["big"]["warnings"]
    fields = {s["slide"]: s for s in B.plan_batch([str(small[0].parent)], dict(opts, images="fields"))}
    assert fields["small"]["kind"] == "fields" and all(f["status"] == "pending" for f in fields["small"]["fields"])
    assert not fields["small"]["warnings"]
    cells = {s["slide"]: s for s in B.plan_batch([str(big[0].parent)], dict(opts, images="cells"))}
    assert cells["big"]["kind"] == "cellavision" and all(f["status"] == "pending" for f in cells["big"]["fields"])
    r = _invoke(str(small[0].parent), "--out", str(tmp_path / "o"), "--images", "some")
    assert r.exit_code == 2 and "unknown --images" in r.output


def test_slide_summary_equals_summarize_on_concatenated_cells():
    from bccdet.report import summarize
    from bccdet.types import Cells, SmearMeta

    rng = np.random.default_rng(0)
    parts, counts, labels, unfam = [], {}, [], []
    for k in range(5):
        n = 60
        kind = rng.choice(["rbc", "wbc", "platelet"], n, p=[0.5, 0.4, 0.1])
        lab = [str(rng.choice(["neutrophil", "lymphocyte", "blast"])) if x == "wbc" and rng.random() < 0.9 else None for x in kind]
        xy = np.tile([0, 0, 5, 5], (n, 1)).astype(np.float32)
        unf = [lb is not None and rng.random() < 0.5 for lb in lab]  # typed cells unlike the training data
        c = Cells(xyxy=xy, kind=list(kind), label=lab, unfamiliar=unf, meta=SmearMeta(width=10, height=10))
        parts.append(c)
        counts = B._add_counts(counts, c.counts())
        labels += [lb for kd, lb in zip(c.kind, c.label) if kd == "wbc"]
        unfam += [bool(u) for kd, u in zip(c.kind, c.unfamiliar) if kd == "wbc"]
    whole = summarize(Cells.concat(parts))
    assert B.summarize_totals(counts, labels, unfam) == whole
    assert whole["unfamiliar"] > 0 and "unfamiliar_images" in {f["code"] for f in whole["flags"]}


def test_usage_errors_exit_2(tmp_path):
    r = _invoke("--out", tmp_path / "o")
    assert r.exit_code == 2 and "no inputs" in r.stderr
    r = _invoke(tmp_path, "--out", tmp_path / "o", "--backend", "spark")
    assert r.exit_code == 2 and "backend" in r.stderr
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "manifest.json").write_text(json.dumps({"format": B.FORMAT, "slides": []}))
    r = _invoke(tmp_path, "--out", tmp_path / "o", "--detector", "no-such-model")
    assert r.exit_code == 2 and "--resume" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------- end to end (tiny detector)
@pytest.mark.slow
def test_batch_outputs_aggregates_and_exit_status(bccd, tiny_detector, tmp_path, monkeypatch):
    inp = tmp_path / "in"
    a = _fields(bccd, inp / "A", 3)
    _fields(bccd, inp / "B", 2, start=3)
    shutil.copy(a[0], inp / "B" / "dup.jpg")
    (inp / "B" / "readme.txt").write_text("hello")
    data = a[1].read_bytes()
    (inp / "B" / "truncated.jpg").write_bytes(data[: len(data) // 3])  # header fine, pixels missing
    (inp / "E").mkdir()
    _fields(bccd, inp / "M", 1, start=6)
    _crop(a[2], inp / "M" / "crop.png")
    _crop(a[2], inp / "CV" / "Lymphocyte" / "c1.png")
    out = tmp_path / "out"
    # torch: the tiny detector gives every field the same noise, whose class argmax OpenVINO's bf16 flips
    # from wbc to rbc (fp32 gives torch's cells; docs/experiments.md); the shipped one keeps them (test_shipped_models)
    r = _invoke(*(inp / x for x in ("A", "B", "E", "M", "CV")), "--out", out, "--detector", tiny_detector,
                "--no-classify", "--runtime", "torch", *FAST)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    man = json.loads((out / "manifest.json").read_text())
    st = {s["slide"]: s for s in man["slides"]}
    assert {k: v["status"] for k, v in st.items()} == {"A": "done", "B": "done", "E": "failed", "M": "done", "CV": "failed"}
    fb = {f["name"]: f for f in st["B"]["fields"]}
    assert fb["truncated"]["status"] == "failed" and "truncated" in fb["truncated"]["error"]
    assert fb["dup"]["status"] == "skipped" and fb["readme"]["status"] == "skipped"
    assert "classifier" in st["CV"]["error"]
    assert all(f["sha256"] and f["output"] for f in st["A"]["fields"])
    # per-field outputs: the analyze files, no timings inside; per-slide summary sums the fields
    slide = json.loads((out / "A" / "slide.json").read_text())
    tot = {"rbc": 0, "wbc": 0, "platelet": 0}
    for f in a:
        d = out / "A" / f.stem
        assert sorted(p.name for p in d.iterdir()) == ["cells.csv", "overlay.png", "report.html", "report.json"]
        rep = json.loads((d / "report.json").read_text())
        assert "timings_ms" not in rep
        assert rep["models"]["refiner"]["name"] == default_name("sam") + "@128"  # SAM refinement on, as in analyze
        assert rep["models"]["refiner"] == man["models"]["refiner"]  # the manifest records the refiner that ran
        assert {c["mask_source"] for c in rep["cells"]} <= {"yolo", "sam"}
        tot = {k: tot[k] + rep["summary"]["counts"][k] for k in tot}
    assert slide["summary"]["counts"] == tot and tot["wbc"] > 0
    assert {f["code"] for f in slide["summary"]["flags"]} >= {"few_wbc", "not_classified"}
    # aggregates: one row per slide
    import pandas as pd

    csv_df = pd.read_csv(out / "slides.csv")
    pq = pd.read_parquet(out / "slides.parquet")
    assert list(csv_df["slide"]) == list(pq["slide"]) == ["A", "B", "E", "M", "CV"]
    assert int(pq.loc[pq.slide == "A", "wbc"].iloc[0]) == tot["wbc"]
    assert "few_wbc" in pq.loc[pq.slide == "A", "flags"].iloc[0]
    assert {"pct_neutrophil", "pct_blast", "apl_score", "n_flags"} <= set(pq.columns)
    html = (out / "summary.html").read_text()
    assert "data:image/png;base64," in html and "Flag counts" in html and "http" not in html
    from bccdet.adapters.sam import encoder_precision

    assert man["models"]["refiner"]["precision"] == encoder_precision("auto")  # one SAM precision for the batch
    # resume: nothing done is redone (only the failed truncated field is retried), same exit status; a batch
    # made before the SAM precision was recorded (no key) resumes, on fp32 as it ran
    del man["models"]["refiner"]["precision"]
    (out / "manifest.json").write_text(json.dumps(man))
    before = {p: p.stat().st_mtime_ns for p in B.complete_field_dirs(out)}
    r = _invoke("--out", out, "--resume")
    assert r.exit_code == 1, r.output
    assert "1 unit(s) to run" in r.stderr
    assert {p: p.stat().st_mtime_ns for p in B.complete_field_dirs(out)} == before
    assert json.loads((out / "manifest.json").read_text())["models"]["refiner"]["precision"] == "fp32"
    shutil.rmtree(out / "A" / a[0].stem)  # a field redone on resume runs SAM as the batch did
    r = _invoke("--out", out, "--resume")
    assert r.exit_code == 1, r.output
    assert json.loads((out / "A" / a[0].stem / "report.json").read_text())["models"]["refiner"]["precision"] == "fp32"
    # a bf16 batch resumed where bf16 is not native (emulated, slow) keeps bf16 and says so
    man = json.loads((out / "manifest.json").read_text())
    man["models"]["refiner"]["precision"] = "bf16"
    (out / "manifest.json").write_text(json.dumps(man))
    import bccdet.runtime

    monkeypatch.setattr(bccdet.runtime, "native_bf16", lambda device="cpu": False)
    r = _invoke("--out", out, "--resume")
    assert "no native bf16" in r.stderr, r.stderr
    assert json.loads((out / "manifest.json").read_text())["models"]["refiner"]["precision"] == "bf16"
    monkeypatch.undo()
    # the same OUT without --resume: refused
    r = _invoke(inp / "A", "--out", out, "--detector", tiny_detector)
    assert r.exit_code == 2 and "--resume" in r.stderr


@pytest.mark.slow
def test_kill9_then_resume_equals_uninterrupted(bccd, tiny_detector, tmp_path):
    inp = tmp_path / "in"
    _fields(bccd, inp / "S1", 4)
    _fields(bccd, inp / "S2", 4, start=4)

    def cmd(out, *extra):
        return [sys.executable, "-m", "bccdet.cli", "batch", str(inp / "S1"), str(inp / "S2"), "--out", str(out),
                "--detector", str(tiny_detector), *FAST, *extra]

    env = {k: v for k, v in os.environ.items() if k != "BCCDET_DEBUG"}
    # the uninterrupted reference (in this process: same model, same settings, one start-up fewer)
    ref = B.run_batch([inp / "S1", inp / "S2"], tmp_path / "ref", detector=str(tiny_detector), detector_options=FAST_OPTS,
                      progress=False, log=lambda m: None)
    assert not ref["failed"] and ref["fields_done"] == 8

    out = tmp_path / "killed"
    rnd = random.Random(0)
    kills = 0
    for i, threshold in enumerate((1, 4)):  # kill -9 once 1, then 4 of the 8 fields are complete
        proc = subprocess.Popen(cmd(out, *(["--resume"] if i else [])), cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if out.exists() and len(B.complete_field_dirs(out)) >= threshold:
                time.sleep(rnd.uniform(0.0, 0.4))  # somewhere in the next field
                break
            time.sleep(0.02)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        # whatever the moment: every visible output is complete, the manifest parses
        for d in B.complete_field_dirs(out):
            assert sorted(p.name for p in d.iterdir()) == ["cells.csv", "overlay.png", "report.html", "report.json"]
            json.loads((d / "report.json").read_text())
        if (out / "manifest.json").exists():
            json.loads((out / "manifest.json").read_text())
    assert kills >= 1
    fin = subprocess.run(cmd(out, "--resume"), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert fin.returncode == 0, fin.stderr[-2000:]
    assert not [p for p in out.rglob(".*") if ".partial-" in p.name or ".old-" in p.name or p.name.endswith(".tmp")]
    _assert_same(B.output_snapshot(tmp_path / "ref"), B.output_snapshot(out))


# ---------------------------------------------------------------------- whole-slide scans
def _blob_detector():
    """A YoloDetector whose per-tile prediction is a deterministic threshold + connected components (no model):
    the tiling and the centre-in-core rule are the detector's own."""
    import cv2

    from bccdet.adapters.yolo import YoloDetector
    from bccdet.types import Cells

    class Blob(YoloDetector):
        def __init__(self):
            self.tile, self.overlap, self.name, self.sha256, self.scale, self.edge_sliver = 640, 192, "blob", "", 1.0, 0.0

        def _predict(self, image, meta):
            g = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
            m = (g < 150).astype(np.uint8)
            n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
            boxes = [[x, y, x + w, y + h] for x, y, w, h, area in stats[1:] if area >= 40]
            return Cells(xyxy=np.array(boxes, np.float32).reshape(-1, 4), kind=["wbc"] * len(boxes), meta=meta)

    return Blob()


def _pyramid(bccd: Path, path: Path, w=3000, h=2000) -> np.ndarray:
    import tifffile

    files = sorted((bccd / "JPEGImages").glob("*.jpg"))
    img = np.zeros((h, w, 3), np.uint8)
    k = 0
    for y in range(0, h, 480):
        for x in range(0, w, 640):
            a = np.asarray(Image.open(files[k]).convert("RGB"))
            k += 1
            img[y:y + 480, x:x + 640] = a[: min(480, h - y), : min(640, w - x)]
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(256, 256), subifds=2, photometric="rgb", compression="zlib")
        for f in (2, 4):
            tw.write(img[::f, ::f], tile=(256, 256), subfiletype=1, photometric="rgb", compression="zlib")
    return img


def test_whole_slide_tiles_count_each_cell_once(bccd, tmp_path, monkeypatch):
    from bccdet.pipeline import Pipeline
    from bccdet.types import SmearMeta

    scan = tmp_path / "scan.tif"
    img = _pyramid(bccd, scan)
    assert B.is_wsi(scan)
    det = _blob_detector()
    monkeypatch.setattr(B.Worker, "_pipeline", lambda self: Pipeline(detector=_blob_detector()))
    dummy = tmp_path / "blob.pt"
    dummy.write_bytes(b"not a model: the pipeline is patched")
    from bccdet import report

    row_of, calls = report.cell_row, [0]

    def older_rows(*a, **k):  # every other band row as a bccdet before the `unfamiliar` column wrote it
        calls[0] += 1
        r = row_of(*a, **k)
        return r[:-1] if calls[0] % 2 else r

    monkeypatch.setattr(report, "cell_row", older_rows)
    res = B.run_batch([scan], tmp_path / "out", detector=str(dummy), progress=False, log=lambda m: None)
    assert not res["failed"] and res["slides_done"] == 1
    rows = list(csv.reader(open(tmp_path / "out/scan/cells.csv", newline="")))
    assert calls[0] > 100 and {len(r) for r in rows} == {len(report.CELLS_CSV_HEADER)}
    ref = det(img, SmearMeta(width=img.shape[1], height=img.shape[0]))  # the detector's own tiling, in memory
    slide = json.loads((tmp_path / "out/scan/slide.json").read_text())
    assert slide["summary"]["counts"]["wbc"] == len(ref) > 100
    assert slide["wsi"]["width"] == 3000 and slide["wsi"]["tiles"] == 35
    import pandas as pd

    cells = pd.read_csv(tmp_path / "out/scan/cells.csv")
    got = cells[["x1", "y1", "x2", "y2"]].to_numpy()
    assert np.allclose(got, np.round(ref.xyxy.astype(np.float64), 1), atol=0.051)
    cross = ((got[:, 0] < 640) & (got[:, 2] > 640)) | ((got[:, 1] < 448) & (got[:, 3] > 448))
    assert cross.any()  # cells straddling tile borders exist and are counted once
    assert sorted(p.name for p in (tmp_path / "out/scan").iterdir()) == ["cells.csv", "overview.jpg", "slide.json"]


# ---------------------------------------------------------------------- single-cell exports (CellaVision)
class _FakeClassifier:
    """Stands in for adapters.classifier.CellClassifier: 'promyelocyte' for reddish crops, else 'lymphocyte'."""

    threshold = 0.5
    familiarity = None
    prior = None  # adapt_rows: the uniform reference prior

    def __init__(self, checkpoint, device="cpu", name="", sha256="", threshold=None, runtime="torch", precision="fp32"):
        self.name, self.sha256 = name, sha256
        if threshold is not None:
            self.threshold = threshold

    def predict_crops_familiarity(self, crops, batch_size=32):
        return self.predict_crops(crops, batch_size), None

    def type_crops(self, crops, kinds=None, batch_size=None):
        from bccdet.adapters.classifier import assign_labels

        probs = self.predict_crops(crops)
        return (probs, *assign_labels(probs, kinds, self.threshold), None)

    def crop_single(self, image):
        return image

    def predict_crops(self, crops, batch_size=32):
        from bccdet.vocab import LABELS

        out = np.zeros((len(crops), len(LABELS)), np.float32)
        for i, c in enumerate(crops):
            lab = "promyelocyte" if c[..., 0].mean() > c[..., 2].mean() else "lymphocyte"
            out[i, LABELS.index(lab)] = 0.9
            out[i, LABELS.index("blast")] = 0.1
        return out


def _fake_classifier(monkeypatch, C):
    """The fake where the code under test looks CellClassifier up: bccdet.batch through the package,
    classify_paths (its isinstance check) in bccdet.adapters.classifier.stage."""
    monkeypatch.setattr(C, "CellClassifier", _FakeClassifier)
    monkeypatch.setattr(C.stage, "CellClassifier", _FakeClassifier)


def test_single_cell_export_classified_with_patient_summary(bccd, tmp_path, monkeypatch):
    C = pytest.importorskip("bccdet.adapters.classifier")
    inp = tmp_path / "in"
    src = sorted((bccd / "JPEGImages").glob("*.jpg"))
    for i in range(4):
        _crop(src[i], inp / "Patient_A" / ("Promyelocyte" if i % 2 else "Lymphocyte") / f"c{i}.png")
    (inp / "Patient_A" / "Lymphocyte" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    ck = tmp_path / "fake-classifier.pt"
    ck.write_bytes(b"fake")
    dummy = tmp_path / "det.pt"
    dummy.write_bytes(b"fake")
    # without a classifier module the slide is recorded as failed with the reason
    monkeypatch.setattr(batch_engine, "_classifier_available", lambda: False)
    res = B.run_batch([inp / "Patient_A"], tmp_path / "o1", detector=str(dummy), classifier=str(ck), progress=False,
                      log=lambda m: None)
    man = json.loads((tmp_path / "o1/manifest.json").read_text())
    assert res["failed"] and man["slides"][0]["status"] == "failed"
    assert man["slides"][0]["error"].startswith("classifier not available")
    # with one: classify_paths + its patient summary (apl_score) -> slide.json, slides.csv
    monkeypatch.setattr(batch_engine, "_classifier_available", lambda: True)
    _fake_classifier(monkeypatch, C)
    # summary() looks these up in its own module, bccdet.adapters.classifier.patient
    monkeypatch.setattr(C.patient, "apl_score_model", lambda model, probs: 0.9)  # an APL-looking patient
    monkeypatch.setattr(C.patient, "apl_score", lambda p_pro, p_blast: 0.9)
    res = B.run_batch([inp / "Patient_A"], tmp_path / "o2", detector=str(dummy), classifier=str(ck), progress=False,
                      log=lambda m: None)
    slide = json.loads((tmp_path / "o2/Patient_A/slide.json").read_text())
    assert slide["kind"] == "cellavision" and slide["summary"]["counts"]["wbc"] == 4
    assert set(slide["summary"]["differential"]) <= {"promyelocyte", "lymphocyte"}
    assert slide["patient_summary"]["apl_score"] == slide["apl_score"] is not None
    bad = [f for f in slide["fields"] if f["name"] == "bad"][0]
    assert bad["status"] == "failed" and res["fields_failed"] == 1
    import pandas as pd

    df = pd.read_csv(tmp_path / "o2/slides.csv")
    assert len(df) == 1 and df["apl_score"].iloc[0] == pytest.approx(slide["apl_score"])
    # the patient-level flags (apl_suspected above all) reach the slide summary and the table
    patient_codes = {f["code"] for f in slide["patient_summary"]["flags"]}
    assert "apl_suspected" in patient_codes and slide["apl_score"] == 0.9
    assert patient_codes <= {f["code"] for f in slide["summary"]["flags"]}
    assert "apl_suspected" in df["flags"].iloc[0].split(";")
    assert len(pd.read_csv(tmp_path / "o2/Patient_A/cells.csv")) == 4
    page = (tmp_path / "o2/Patient_A/report.html").read_text()  # the classify page: flags, differential, gallery
    assert "<h2>Patient_A</h2>" in page and page.count("<figure") == 4


# ---------------------------------------------------------------------- Ray
@pytest.mark.slow
def test_ray_backend_same_outputs_as_local(bccd, tiny_detector, tmp_path):
    ray = pytest.importorskip("ray")
    inp = tmp_path / "in"
    _fields(bccd, inp / "S", 4)
    kw = dict(detector=str(tiny_detector), detector_options=FAST_OPTS, progress=False, log=lambda m: None)
    local = B.run_batch([inp / "S"], tmp_path / "local", **kw)
    assert not local["failed"]
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"ray does not start here: {e}")
    try:
        res = B.run_batch([inp / "S"], tmp_path / "ray", backend="ray", workers=2, **kw)
    finally:
        ray.shutdown()
    assert not res["failed"] and res["fields_done"] == 4
    _assert_same(B.output_snapshot(tmp_path / "local"), B.output_snapshot(tmp_path / "ray"))


def test_a_csv_list_names_itself_and_the_line_of_a_missing_path(tmp_path):
    lst = tmp_path / "slides.csv"
    lst.write_text("path\n/nowhere/a.jpg\n")
    (spec,) = B.expand_slides([str(lst)])
    assert spec["error"] == "slides.csv line 2: /nowhere/a.jpg: no such file or folder"


def test_batch_adapt_reestimates_each_single_cell_patient_and_is_kept_on_resume(bccd, tmp_path, monkeypatch):
    C = pytest.importorskip("bccdet.adapters.classifier")
    src = sorted((bccd / "JPEGImages").glob("*.jpg"))
    inp = tmp_path / "in"
    for i in range(24):  # adaptation needs 20+ cells
        _crop(src[i % len(src)], inp / "Patient_B" / "Lymphocyte" / f"c{i}.png", side=200 + i)
    ck, dummy = tmp_path / "clf.pt", tmp_path / "det.pt"
    ck.write_bytes(b"fake")
    dummy.write_bytes(b"fake")
    monkeypatch.setattr(batch_engine, "_classifier_available", lambda: True)
    _fake_classifier(monkeypatch, C)
    out = tmp_path / "o"
    B.run_batch([inp / "Patient_B"], out, detector=str(dummy), classifier=str(ck), progress=False, adapt=True,
                log=lambda m: None)
    man = json.loads((out / "manifest.json").read_text())
    assert man["options"]["adapt"] is True
    slide = json.loads((out / "Patient_B/slide.json").read_text())
    assert slide["patient_summary"]["prior_adaptation"]["applied"]
    import pandas as pd

    cells = pd.read_csv(out / "Patient_B/cells.csv")
    assert len(cells) == 24 and "label_alone" in cells and "unfamiliar" in cells
    # resumed without the option: the batch's own (--adapt) is kept, not silently dropped
    res = B.run_batch([], out, resume=True, detector=str(dummy), classifier=str(ck), progress=False, log=lambda m: None)
    assert not res["failed"] and json.loads((out / "manifest.json").read_text())["options"]["adapt"] is True


def test_batch_review_threshold_reaches_the_classifier_and_is_kept_on_resume(bccd, tmp_path, monkeypatch):
    C = pytest.importorskip("bccdet.adapters.classifier")
    src = sorted((bccd / "JPEGImages").glob("*.jpg"))
    inp = tmp_path / "in"
    for i in range(4):
        _crop(src[i], inp / "Patient_C" / "Lymphocyte" / f"c{i}.png")
    ck, dummy = tmp_path / "clf.pt", tmp_path / "det.pt"
    ck.write_bytes(b"fake")
    dummy.write_bytes(b"fake")
    monkeypatch.setattr(batch_engine, "_classifier_available", lambda: True)
    _fake_classifier(monkeypatch, C)
    import pandas as pd

    def reviewed(out):  # typed cells marked review that are not abnormal (the fake's top score is 0.9)
        c = pd.read_csv(out / "Patient_C/cells.csv")
        return int(c.loc[c["label"] == "lymphocyte", "review"].sum()), int((c["label"] == "lymphocyte").sum())

    base = tmp_path / "base"
    B.run_batch([inp / "Patient_C"], base, detector=str(dummy), classifier=str(ck), progress=False, log=lambda m: None)
    n_rev, n_lym = reviewed(base)
    assert n_lym > 0 and n_rev == 0  # 0.9 is above the classifier's own threshold
    assert "review_threshold" not in json.loads((base / "manifest.json").read_text())["options"]
    out = tmp_path / "o"
    B.run_batch([inp / "Patient_C"], out, detector=str(dummy), classifier=str(ck), progress=False,
                review_threshold=0.95, log=lambda m: None)
    assert reviewed(out) == (n_lym, n_lym)  # 0.9 < 0.95: every lymphocyte goes to review
    assert json.loads((out / "manifest.json").read_text())["options"]["review_threshold"] == 0.95
    res = B.run_batch([], out, resume=True, detector=str(dummy), classifier=str(ck), progress=False, log=lambda m: None)
    assert not res["failed"] and json.loads((out / "manifest.json").read_text())["options"]["review_threshold"] == 0.95
    from bccdet.io import InputError

    with pytest.raises(InputError, match="review-threshold"):
        B.run_batch([inp / "Patient_C"], tmp_path / "bad", detector=str(dummy), review_threshold=2.0, log=lambda m: None)


@pytest.mark.slow
def test_resume_after_an_image_is_deleted_drops_its_report(bccd, tiny_detector, tmp_path):
    a = _fields(bccd, tmp_path / "in" / "A", 2)
    out = tmp_path / "out"
    r = _invoke(a[0].parent, "--out", out, "--detector", tiny_detector, "--no-classify", *FAST)
    assert r.exit_code == 0, r.output
    assert (out / "A" / a[1].stem / "report.json").is_file()
    (out / "A" / "notes").mkdir()  # not a field report: never touched
    a[1].unlink()
    r = _invoke("--out", out, "--resume", *FAST)
    assert r.exit_code == 0, r.output
    slide = json.loads((out / "A" / "slide.json").read_text())
    assert [f["name"] for f in slide["fields"]] == [a[0].stem]
    assert not (out / "A" / a[1].stem).exists() and (out / "A" / a[0].stem / "report.json").is_file()
    assert (out / "A" / "notes").is_dir()


@pytest.mark.slow
def test_batch_scale_option_reaches_the_detector_and_the_manifest(bccd, tiny_detector, tmp_path):
    """`batch --scale F` is recorded in the manifest's detector options (only when not auto) and the
    detector of every worker uses it: a 1920 x 1440 field analysed at 0.25x says so in its report."""
    src = sorted((bccd / "JPEGImages").glob("*.jpg"))[0]
    (tmp_path / "in" / "S").mkdir(parents=True)
    Image.open(src).convert("RGB").resize((1920, 1440)).save(tmp_path / "in" / "S" / "big.jpg", quality=92)
    out = tmp_path / "out"
    r = _invoke(tmp_path / "in" / "S", "--out", out, "--detector", tiny_detector, "--scale", "0.25", "--no-refine",
                "--no-classify", *FAST)
    assert r.exit_code == 0, r.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["options"]["detector_options"]["scale"] == 0.25
    rep = json.loads((out / "S" / "big" / "report.json").read_text())
    assert rep["image"]["detector_scale"] == 0.25 and rep["image"]["width"] == 1920
    r = _invoke(tmp_path / "in" / "S", "--out", tmp_path / "o2", "--scale", "3")
    assert r.exit_code == 2 and "factor in (0, 1]" in r.output


@pytest.mark.slow
def test_resume_keeps_the_models_a_batch_started_with_when_the_default_changed(bccd, tmp_path):
    """A batch started with the default detector of an older bccdet (here: the manifest of a batch run with
    `bccdet-yolov8n-seg`, the default before 2026-11-26) resumes with that same registered model, with a
    note, instead of refusing because the default has changed; its new fields are analysed with it."""
    from bccdet.weights import resolve

    a = _fields(bccd, tmp_path / "in" / "A", 2)
    a[1].rename(tmp_path / a[1].name)
    out = tmp_path / "out"
    r = _invoke(a[0].parent, "--out", out, "--no-refine", "--no-classify", "--no-progress")
    assert r.exit_code == 0, r.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["models"]["detector"]["name"] == default_name("detector") != "bccdet-yolov8n-seg"
    _, old, sha = resolve("bccdet-yolov8n-seg", "detector")
    man["models"]["detector"] = {"name": old, "sha256": sha}  # as an older bccdet wrote it: no runtimes either
    for m in man["models"].values():
        if m:
            m.pop("runtime", None)
    (out / "manifest.json").write_text(json.dumps(man))
    (tmp_path / a[1].name).rename(a[1])
    r = _invoke("--out", out, "--resume", "--no-progress")
    assert r.exit_code == 0, r.output
    assert f"detector {old}, as when this batch started" in r.output
    assert json.loads((out / "manifest.json").read_text())["models"]["detector"]["name"] == old
    rep = json.loads((out / "A" / a[1].stem / "report.json").read_text())
    assert rep["models"]["detector"]["name"] == old


@pytest.mark.slow
def test_batch_edge_sliver_is_recorded_only_when_not_the_default(bccd, tiny_detector, tmp_path):
    a = _fields(bccd, tmp_path / "in" / "A", 1)
    for val, want in (("0.3", {"edge_sliver": 0.3}), ("0.4", {})):
        out = tmp_path / f"out{val}"
        r = _invoke(a[0].parent, "--out", out, "--detector", tiny_detector, "--no-classify", "--no-refine",
                    "--edge-sliver", val, "--no-progress")
        assert r.exit_code == 0, r.output
        opts = json.loads((out / "manifest.json").read_text())["options"]["detector_options"]
        assert {k: v for k, v in opts.items() if k == "edge_sliver"} == want


@pytest.mark.slow
def test_a_batch_started_before_the_grey_border_resumes_without_it(bccd, tmp_path):
    """New batches record the detector's grey border (``BORDER``) in the manifest; a batch whose manifest has
    none (started by an older bccdet) resumes without it, so its new fields are detected as its old ones
    were. BCCD test fields 00007 and 00011; the default detector counts 17 red cells on 00011 with the border
    and 20 on the bare image (the previous default: 18 and 20)."""
    import shutil

    from bccdet.adapters.yolo import BORDER, YoloDetector
    from bccdet.io import read_image
    from bccdet.types import SmearMeta
    from bccdet.weights import resolve

    w, name, sha = resolve(None, "detector")
    detectors = {b: YoloDetector(w, name=name, sha256=sha, border=b) for b in (BORDER, 0)}

    def direct(path, border):  # the detector alone, as analyze runs it, with and without the border
        img = read_image(path)
        cells = detectors[border](img, SmearMeta(width=img.shape[1], height=img.shape[0]))
        return int((cells.kind == "rbc").sum())

    f2_border, f2_bare = (direct(bccd / "JPEGImages" / "BloodImage_00011.jpg", b) for b in (BORDER, 0))
    assert f2_border != f2_bare  # the field tells the two apart

    src = bccd / "JPEGImages" / "BloodImage_00007.jpg"
    (tmp_path / "in" / "A").mkdir(parents=True)
    shutil.copy(src, tmp_path / "in" / "A" / "f1.jpg")
    out = tmp_path / "out"
    r = _invoke(tmp_path / "in" / "A", "--out", out, "--no-refine", "--no-classify", "--no-progress")
    assert r.exit_code == 0, r.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["options"]["detector_options"] == {"border": BORDER} == man["args"]["detector_options"]
    rbc = lambda stem: json.loads((out / "A" / stem / "report.json").read_text())["summary"]["counts"]["rbc"]  # noqa: E731
    f1 = direct(src, BORDER)
    assert rbc("f1") == f1
    for k in ("options", "args"):  # as an older bccdet wrote it
        man[k]["detector_options"] = {}
    (out / "manifest.json").write_text(json.dumps(man))
    shutil.copy(bccd / "JPEGImages" / "BloodImage_00011.jpg", tmp_path / "in" / "A" / "f2.jpg")
    r = _invoke(tmp_path / "in" / "A", "--out", out, "--resume", "--no-progress")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "manifest.json").read_text())["options"]["detector_options"] == {}
    assert rbc("f2") == f2_bare and rbc("f1") == f1
