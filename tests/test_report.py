import json

import numpy as np

from bccdet.report import geojson_document, overlay, report_dict, summarize
from bccdet.types import Cells, SmearMeta


def _cells(n_wbc=0, labels=None, h=100, w=120):
    boxes = [[10, 10, 40, 40]] + [[50 + (i % 5) * 10, 50, 58 + (i % 5) * 10, 58] for i in range(n_wbc)]
    kinds = ["rbc"] + ["wbc"] * n_wbc
    masks = [np.ones((30, 30), bool)] + [np.ones((8, 8), bool)] * n_wbc
    lab = [None] + (labels or [None] * n_wbc)
    return Cells(xyxy=boxes, kind=kinds, masks=masks, label=lab,
                 label_score=[np.nan] + [0.9] * n_wbc, meta=SmearMeta(path="x.png", width=w, height=h))


def test_overlay_colours_are_rgb():
    img = np.full((100, 120, 3), 128, np.uint8)
    ov = overlay(img, _cells())
    r, g, b = ov[25, 25].astype(int)
    assert r > b + 20, (r, g, b)  # RBC mask is drawn red, not blue (supervision works in BGR)
    assert np.array_equal(ov[90, 110], img[90, 110])


def test_flags_blasts_and_out_of_range():
    labels = ["blast"] * 5 + ["neutrophil"] * 20 + ["lymphocyte"] * 75 + ["promyelocyte"] * 2
    s = summarize(_cells(len(labels), labels))
    codes = [f["code"] for f in s["flags"]]
    assert "blasts_present" in codes and "promyelocytes_present" in codes and "few_wbc" not in codes
    out = {f["message"].split()[0] for f in s["flags"] if f["code"] == "differential_out_of_range"}
    assert {"neutrophil", "lymphocyte"} <= out
    assert s["differential"]["lymphocyte"] == {"count": 75, "percent": round(7500 / 102, 1)}
    assert abs(sum(v["percent"] for v in s["differential"].values()) - 100) < 0.5


def test_abnormal_flags_say_how_many_of_those_cells_are_unfamiliar():
    """On another lab's normal blood most abnormal calls are cells unlike the training images (TXL-PBC's
    575 px fields: 33 of 40): the flag says how many, and carries the number."""
    labels = ["blast"] * 3 + ["smudge_cell"] * 4 + ["neutrophil"] * 13
    c = _cells(len(labels), labels)
    plain = {f["code"]: f for f in summarize(c)["flags"]}
    assert "unfamiliar" not in plain["blasts_present"] and "unlike" not in plain["blasts_present"]["message"]
    c.unfamiliar = np.array([False] + [True, True, False] + [True] * 4 + [False] * 13)
    flags = {f["code"]: f for f in summarize(c)["flags"]}
    assert flags["blasts_present"]["unfamiliar"] == 2 and flags["smudge_cells"]["unfamiliar"] == 4
    assert flags["blasts_present"]["message"].startswith("3 blast(s) found (15.0%) (2 of them unlike the training images")
    assert flags["blasts_present"]["message"].endswith(": review the gallery")


def test_field_slide_and_patient_summaries_share_one_flag_rule_set():
    """The same typed cells raise the same abnormal-cell flags whether they came from a field (analyze), a
    slide's totals (batch) or a patient's single-cell images (classify)."""
    from bccdet.adapters.classifier import summary as patient_summary
    from bccdet.report import ABNORMAL_FLAGS, SMUDGE_FLAG_PERCENT, summarize_counts

    labels = ["blast"] * 2 + ["variant_lymphocyte"] * 3 + ["smudge_cell"] * 12 + ["neutrophil"] * 83
    field = summarize(_cells(len(labels), labels))
    slide = summarize_counts({"rbc": 0, "wbc": len(labels), "platelet": 0}, labels)
    rows = [{"label": lab, "label_score": 0.9, "p_blast": float(lab == "blast"), "p_promyelocyte": 0.0}
            for lab in labels]
    patient = patient_summary(rows, apl_model=None)
    abnormal = {code for _, code in ABNORMAL_FLAGS} | {"smudge_cells"}

    def codes(s):
        return {f["code"]: f["message"] for f in s["flags"] if f["code"] in abnormal}

    assert codes(field) == codes(slide)
    assert set(codes(field)) == set(codes(patient)) == {"blasts_present", "variant_lymphocytes_present", "smudge_cells"}
    assert codes(field)["smudge_cells"] == f"smudge cells 12.0% of WBCs (>= {SMUDGE_FLAG_PERCENT:g}%)"
    assert codes(patient)["blasts_present"].startswith("2 blast(s) found (2.0%)")


def test_few_wbc_and_unclassified_flags():
    s = summarize(_cells(3))
    codes = {f["code"] for f in s["flags"]}
    assert codes == {"few_wbc", "not_classified"} and s["differential"] == {}


def test_report_dict_json_and_geojson():
    c = _cells(2, ["neutrophil", "monocyte"])
    rep = report_dict(c, {"detector": {"name": "t", "sha256": "0" * 64}})
    json.dumps(rep)
    assert rep["cells"][0]["mask"]["size"] == [100, 120] and rep["cells"][1]["label"] == "neutrophil"
    gj = geojson_document(c)
    ring = gj["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and gj["features"][1]["properties"]["classification"]["name"] == "neutrophil"


def test_erythroblasts_and_platelets_stay_out_of_the_differential():
    labels = ["neutrophil"] * 60 + ["lymphocyte"] * 40 + ["erythroblast"] * 5 + ["platelet"] * 3
    s = summarize(_cells(len(labels), labels))
    assert set(s["differential"]) == {"neutrophil", "lymphocyte"}
    assert s["differential"]["neutrophil"]["percent"] == 60.0  # of the 100 leukocytes, not of 108 typed cells
    assert s["not_in_differential"] == {"erythroblast": 5, "platelet": 3} and s["nrbc_per_100_wbc"] == 5.0
    plain = summarize(_cells(2, ["neutrophil", "monocyte"]))
    assert "not_in_differential" not in plain and "nrbc_per_100_wbc" not in plain


def test_classify_page_keeps_a_thumbnail_budget_over_many_patients(tmp_path):
    from PIL import Image

    from bccdet import report as R
    from bccdet.vocab import LABELS

    png = tmp_path / "cell.png"
    Image.fromarray(np.full((64, 64, 3), 150, np.uint8)).save(png)

    def patient(i):
        rows = [{"file": str(png), "label": lab, "label_score": 0.9, "review": j % 3 == 0, "reason": "",
                 **{f"p_{k}": float(k == lab) for k in LABELS}}
                for lab in ("neutrophil", "lymphocyte", "monocyte") for j in range(60)]
        s = {"flags": [], "differential_percent": {}, "counts": {}, "classified": len(rows), "review": 60,
             "unreadable": 0, "apl_score": 0.1}
        return (f"P{i}", s, rows)

    one = R.classify_html([patient(0)], {"name": "m", "sha256": "0" * 64})
    assert one.count("<figure") == 3 * R.GALLERY_PER_LABEL  # one patient: the usual gallery, every label
    many = R.classify_html([patient(i) for i in range(100)], {"name": "m", "sha256": "0" * 64})
    n = many.count("<figure")
    assert n <= 100 * R.PATIENT_MIN_THUMBS and n < 100 * 3 * R.GALLERY_PER_LABEL / 5, n  # bounded, not 100x one page
    assert many.count("more not shown") == 300  # and it says so, per label


def test_unfamiliar_typed_cells_are_counted_and_flagged():
    labels = ["neutrophil"] * 4
    c = _cells(4, labels)
    assert "unfamiliar" not in summarize(c) and "unfamiliar_images" not in {f["code"] for f in summarize(c)["flags"]}
    c.unfamiliar[1:3] = True  # 2 of 4 typed WBCs (50 % >= 35 %)
    s = summarize(c)
    assert s["unfamiliar"] == 2 and "unfamiliar_images" in {f["code"] for f in s["flags"]}
    c.unfamiliar[:] = False
    c.unfamiliar[1] = True  # 1 of 4 (25 %): counted, not flagged (cell 0 is the RBC)
    s = summarize(c)
    assert s["unfamiliar"] == 1 and "unfamiliar_images" not in {f["code"] for f in s["flags"]}
    rep = report_dict(c, {"detector": {"name": "t", "sha256": "0" * 64}})
    assert [x["unfamiliar"] for x in rep["cells"]] == [None, True, False, False, False]  # None: not typed (the RBC)
    from bccdet.report import cells_csv

    rows = [ln.split(",") for ln in cells_csv(c).strip().splitlines()]
    k = rows[0].index("unfamiliar")
    assert [r[k] for r in rows[1:]] == ["", "1", "0", "0", "0"]


def test_typed_red_cells_reach_report_csv_summary_and_page():
    """Each typed red cell carries its morphology; the summary grades the field (ICSH) and flags a 2+ type; the
    page has the grade table and a red-cell gallery; an untyped field has neither."""
    from bccdet.report import cells_csv, rbc_gallery_crops, render_html

    n = 40
    boxes = [[(i % 8) * 14, (i // 8) * 14, (i % 8) * 14 + 12, (i // 8) * 14 + 12] for i in range(n)]
    types = ["normal"] * 30 + ["schistocyte"] * 2 + ["spherocyte"] * 8  # 5 % and 20 %: 3+ and 1+
    c = Cells(xyxy=boxes, kind=["rbc"] * n, masks=[np.ones((12, 12), bool)] * n, morphology=types,
              morphology_score=[0.9] * 30 + [0.55, 0.7] + [0.8] * 8, meta=SmearMeta(path="f.png", width=120, height=100))
    assert summarize(c[np.arange(0)]).get("rbc_morphology") is None
    rep = report_dict(c, {"detector": {"name": "t", "sha256": "0" * 64}})
    json.dumps(rep)
    assert rep["cells"][30]["morphology"] == "schistocyte" and rep["cells"][30]["morphology_score"] == 0.55
    m = rep["summary"]["rbc_morphology"]
    assert m["red_cells"] == 40 and m["schistocyte"] == {"count": 2, "percent": 5.0, "grade": "3+"}
    assert m["spherocyte"]["grade"] == "1+" and m["normal"]["grade"] is None
    codes = [f["code"] for f in rep["summary"]["flags"]]
    assert "schistocytes" in codes and "spherocytes" not in codes
    rows = [ln.split(",") for ln in cells_csv(c).strip().splitlines()]
    k = rows[0].index("morphology")
    assert rows[0][k + 1] == "morphology_score" and rows[31][k] == "schistocyte" and rows[31][k + 1] == "0.5500"
    img = np.full((100, 120, 3), 200, np.uint8)
    gal = rbc_gallery_crops(img, c, per_type=5)
    assert len(gal["normal"]) == 5 and [i for i, _ in gal["schistocyte"]] == [30, 31]  # least certain first
    page = render_html(rep, b"", [], c, gal)
    assert "Red-cell morphology" in page and "<td>schistocyte</td><td>2</td><td>5.0%</td><td>3+</td>" in page
    assert page.count("alt='red cell") == 5 + 2 + 5 and "25 more not shown" in page
    plain = report_dict(Cells(xyxy=boxes, kind=["rbc"] * n, meta=c.meta), {})
    assert "rbc_morphology" not in plain["summary"] and "morphology" not in plain["cells"][0]
    assert "Red-cell morphology" not in render_html(plain, b"", [], c[np.arange(0)])
