"""The library face: bccdet.analyze / load_pipeline / classify_cells, the spec, and one pipeline builder."""

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

import bccdet
from bccdet.io import InputError, read_image
from bccdet.pipeline import PipelineSpec, SmearReport, resolve_spec

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def smear(bccd):
    return bccd / "JPEGImages/BloodImage_00007.jpg"


@pytest.mark.slow
def test_analyze_one_liner_matches_the_written_report(smear, tmp_path):
    rep = bccdet.analyze(smear)
    assert isinstance(rep, SmearReport) and isinstance(rep.cells, bccdet.Cells)
    c = rep.summary["counts"]
    assert c["rbc"] >= 10 and c["wbc"] >= 1  # BloodImage_00007: 1 WBC and a field of red cells
    assert c == rep.cells.counts()
    assert rep.meta.width == 640 and rep.meta.height == 480 and rep.meta.path == str(smear)
    assert set(rep.models) >= {"detector", "refiner", "classifier", "rbc_morphology"}
    assert rep.timings["total"] >= rep.timings["detect"] > 0
    assert rep.cells.label[list(rep.cells.kind).index("wbc")] is not None  # typed
    doc = rep.write(tmp_path / "out", formats=("coco",))
    on_disk = json.loads((tmp_path / "out/report.json").read_text())
    assert on_disk == doc and on_disk["summary"] == json.loads(json.dumps(rep.summary))
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"report.json", "report.html", "cells.csv",
                                                               "overlay.png", "coco.json"}
    # the models are kept for the next call with the same options (no reload): the same cells
    from bccdet import pipeline

    pipe = pipeline._LAST["pipe"]
    again = bccdet.analyze(smear)
    assert pipeline._LAST["pipe"] is pipe
    assert np.allclose(again.cells.xyxy, rep.cells.xyxy, atol=0.05) and list(again.cells.label) == list(rep.cells.label)


@pytest.mark.slow
def test_load_pipeline_with_stages_off_and_an_array(smear):
    pipe = bccdet.load_pipeline(refine=False, classify=False, rbc_morphology=False)
    assert pipe.refiner is None and pipe.classifier is None and pipe.morphology is None
    img = read_image(smear)
    rep = pipe.analyze(img)
    assert rep.meta.path == "" and rep.summary["counts"]["wbc"] >= 1
    assert all(lab is None for lab in rep.cells.label)
    assert any(f["code"] == "not_classified" for f in rep.summary["flags"])
    with pytest.raises(InputError, match="no such file"):
        pipe.analyze(smear.with_name("no-such.jpg"))


def test_bad_options_are_one_line_errors():
    with pytest.raises(InputError, match="expected coco or geojson"):
        SmearReport(image=np.zeros((4, 4, 3), np.uint8), cells=bccdet.Cells.empty(), models={}).write("x", formats=["svg"])
    with pytest.raises(InputError, match="edge_sliver"):
        bccdet.load_pipeline(edge_sliver=1.5)
    with pytest.raises(InputError, match="scale"):
        bccdet.load_pipeline(scale="huge")
    with pytest.raises(InputError, match="probability"):
        resolve_spec(review_threshold=2.0)


def test_spec_is_plain_picklable_data_and_records_the_models():
    spec, notes = resolve_spec(refine=True, classify=True, review_threshold=0.7, detector_options={"conf": 0.3})
    assert isinstance(notes, list)
    d = spec.to_dict()
    assert PipelineSpec.from_dict(pickle.loads(pickle.dumps(d))) == spec
    assert json.loads(json.dumps(d)) == d  # the batch manifest / Ray actors get it as JSON-able data
    assert Path(spec.detector["path"]).is_file() and len(spec.detector["sha256"]) == 64
    assert spec.classifier["review_threshold"] == 0.7 and spec.refiner["precision"] in ("fp32", "bf16")
    m = spec.models()
    assert m["detector"] == {"name": spec.detector["name"], "sha256": spec.detector["sha256"], "runtime": spec.runtime,
                             "precision": spec.detector["precision"]}
    assert m["refiner"]["runtime"] == spec.runtime
    from bccdet.runtime import resolve_precision, resolve_runtime

    # one runtime for detector and SAM, resolved for the device; torch runs the detector in fp32
    assert spec.runtime == resolve_runtime("auto", "cpu")
    assert spec.detector["precision"] == (resolve_precision("auto") if spec.runtime == "openvino" else "fp32")
    pt, _ = resolve_spec(runtime="torch")
    assert pt.runtime == "torch" and pt.models()["detector"]["precision"] == "fp32"
    with pytest.raises(InputError, match="unknown runtime"):
        resolve_spec(runtime="onnx")
    off, _ = resolve_spec(refine=False, classify=False, rbc_morphology=False)
    assert off.refiner is None and off.classifier is None and off.rbc_morphology is None


@pytest.mark.slow
def test_classify_cells_on_pbc_crops(data_root):
    from tests.helpers import dataset_dir

    pbc = dataset_dir(data_root, "pbc")
    files = [p for d in sorted(x for x in pbc.iterdir() if x.is_dir()) for p in sorted(d.iterdir())[:1]][:6]
    if not files:
        pytest.skip(f"no crops under {pbc}")
    res = bccdet.classify_cells(files)
    assert len(res["cells"]) == len(files) and res["summary"]["classified"] == len(files)
    assert all(r["label"] for r in res["cells"]) and 0.0 <= res["summary"]["apl_score"] <= 1.0
    with pytest.raises(InputError, match="no such file"):
        bccdet.classify_cells([files[0].with_name("missing.jpg")])


def test_stages_are_constructed_in_one_place():
    """The stage constructors of the analysis pipeline appear in bccdet/pipeline.py only (trainers and
    evaluators that load a checkpoint they just wrote are not pipelines)."""
    pat = re.compile(r"\b(YoloDetector|SamRefiner|CellClassifier|MorphologyStage)\(")
    users = set()
    for p in (REPO / "bccdet").rglob("*.py"):
        rel = p.relative_to(REPO).as_posix()
        if rel.startswith("bccdet/adapters/"):  # where they are defined (and their own train / evaluate)
            continue
        for line in p.read_text().splitlines():
            if pat.search(line) and not line.lstrip().startswith(("#", "class ")):
                users.add(rel)
    assert users == {"bccdet/pipeline.py"}, users
