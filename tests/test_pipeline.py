"""The pipeline's own logic with fake stages (fast tier): order, timings, skipped stages, the report."""

import json

import numpy as np
import pytest

from bccdet.io import InputError
from bccdet.pipeline import Pipeline, PipelineSpec, SmearReport
from tests.helpers import DiscDetector, LabelAll, Recorder, disc_image


def _field():
    img, discs = disc_image(200, 260, cells=((50, 60, 16), (120, 60, 15), (200, 120, 28), (60, 150, 14)))
    return img, discs


def test_stages_run_in_order_and_are_timed():
    img, discs = _field()
    ref, clf = Recorder(), LabelAll("lymphocyte", 0.9)
    pipe = Pipeline(detector=DiscDetector(), refiner=ref, classifier=clf)
    cells = pipe.run(img, "field.png")
    assert len(cells) == len(discs) and list(cells.kind).count("wbc") == 1  # the 28 px disc
    assert ref.calls == 1 and clf.seen == [1]
    assert [cells.label[i] for i in range(len(cells)) if cells.kind[i] == "wbc"] == ["lymphocyte"]
    assert all(cells.label[i] is None for i in range(len(cells)) if cells.kind[i] == "rbc")
    assert set(pipe.timings) == {"detect", "refine", "classify", "total"}
    assert pipe.timings["total"] >= pipe.timings["detect"] + pipe.timings["refine"] + pipe.timings["classify"] - 1e-6
    assert cells.meta.path == "field.png" and (cells.meta.width, cells.meta.height) == (260, 200)


def test_later_stages_skip_a_field_without_cells():
    blank = np.full((100, 120, 3), (230, 200, 210), np.uint8)
    ref, clf = Recorder(), LabelAll()
    pipe = Pipeline(detector=DiscDetector(), refiner=ref, classifier=clf)
    cells = pipe.run(blank)
    assert len(cells) == 0 and ref.calls == 0 and clf.seen == []
    assert set(pipe.timings) == {"detect", "total"}
    rep = SmearReport(image=blank, cells=cells, models=pipe.models(), timings=pipe.timings)
    assert rep.summary["counts"] == {"rbc": 0, "wbc": 0, "platelet": 0}


def test_models_record_each_stage_or_none():
    pipe = Pipeline(detector=DiscDetector(), classifier=LabelAll(name="clf-x"))
    m = pipe.models()
    assert m["detector"] == {"name": "disc-detector", "sha256": "0" * 64}
    assert m["refiner"] is None and m["rbc_morphology"] is None and m["classifier"]["name"] == "clf-x"


def test_analyze_reads_a_file_and_writes_the_report_folder(tmp_path):
    from PIL import Image

    img, _ = _field()
    f = tmp_path / "smear.png"
    Image.fromarray(img).save(f)
    pipe = Pipeline(detector=DiscDetector(), classifier=LabelAll("blast", 0.8))
    rep = pipe.analyze(f)
    assert rep.meta.path == str(f) and rep.timings["total"] > 0
    assert any(fl["code"] == "blasts_present" for fl in rep.summary["flags"])
    doc = rep.write(tmp_path / "out", formats=("geojson",))
    assert json.loads((tmp_path / "out/report.json").read_text()) == doc
    assert doc["summary"]["differential"] == {"blast": {"count": 1, "percent": 100.0}}
    assert "timings_ms" in doc and "timings_ms" not in rep.to_dict(timings=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cells.csv", "cells.geojson", "overlay.png",
                                                                     "report.html", "report.json"]
    # written again: replaced whole, nothing half-written left beside it
    rep.write(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "smear.png"]
    with pytest.raises(InputError):
        pipe.analyze(tmp_path / "missing.png")


def test_spec_round_trips_as_plain_data():
    d = {"detector": {"name": "d", "sha256": "a" * 64, "path": "/x/d.pt"}, "refiner": None,
         "classifier": {"name": "c", "sha256": "b" * 64, "path": "/x/c.pt", "review_threshold": 0.7},
         "rbc_morphology": None, "device": "cpu", "detector_options": {"tile": 640}, "runtime": "openvino"}
    spec = PipelineSpec.from_dict(d)
    assert spec.to_dict() == d
    assert spec.models() == {"detector": {"name": "d", "sha256": "a" * 64, "runtime": "openvino", "precision": "fp32"},
                             "refiner": None,
                             "classifier": {"name": "c", "sha256": "b" * 64, "runtime": "openvino", "precision": "fp32"}}
    assert spec.build_refiner() is None and spec.build_morphology() is None


def test_meta_sam_is_recorded_on_torch_under_openvino(tmp_path):
    """Only LiteMedSAM's encoder has an OpenVINO path: the spec and the manifest say what will run."""
    from bccdet.pipeline import resolve_spec

    meta = tmp_path / "sam_vit_b_01ec64.pth"
    meta.write_bytes(b"not loaded here")
    spec, _ = resolve_spec(sam=str(meta), classify=False, rbc_morphology=False, runtime="openvino")
    assert spec.runtime == "openvino" and spec.models()["detector"]["runtime"] == "openvino"
    assert spec.models()["refiner"]["runtime"] == "torch"
    spec, _ = resolve_spec(sam="litemedsam", classify=False, rbc_morphology=False, runtime="openvino")
    assert spec.models()["refiner"]["runtime"] == "openvino"
