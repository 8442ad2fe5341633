"""The leukocyte classifier adapter: crop geometry, backbone transfer, a 1-epoch training on synthetic
class folders, evaluation, calibration, the stage, single-cell files, the summary and its APL rule."""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from bccdet.vocab import ABNORMAL_LABELS, LABELS

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from bccdet.adapters import classifier as C  # noqa: E402
from bccdet.types import Cells, SmearMeta  # noqa: E402

BG = (225, 205, 215)
CLASSES = {  # folder name -> (disc colour, radius as a fraction of the image side)
    "neutrophil": ((200, 120, 170), 0.22),
    "lymphocyte": ((60, 40, 140), 0.15),
    "blast": ((120, 60, 160), 0.32),
}


def _disc(size, colour, frac, seed):
    import cv2

    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), BG, np.uint8)
    c = size // 2 + int(rng.integers(-2, 3))
    cv2.circle(img, (c, c), max(2, int(size * frac)), colour, -1)
    return np.clip(img.astype(int) + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)


def make_cls_set(root, n=(6, 3, 3), size=48, manifest=False, seed=0):
    """A converted classify layout: root/{train,val,test}/<label>/<file>.png (+ manifest.csv)."""
    from PIL import Image

    rows = []
    k = seed
    for split, count in zip(("train", "val", "test"), n):
        for lab, (col, frac) in CLASSES.items():
            d = root / split / lab
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                k += 1
                f = d / f"{lab}_{i}.png"
                Image.fromarray(_disc(size, col, frac, k)).save(f)
                rows.append({"split": split, "label": lab, "subclass": lab, "group": "", "source": "synthetic",
                             "file": f"{split}/{lab}/{f.name}", "original": "", "sha256": ""})
    if manifest:
        with open(root / "manifest.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return root


@pytest.fixture(scope="module")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("cls")
    a = make_cls_set(root / "a", seed=0)
    b = make_cls_set(root / "b", n=(3, 2, 2), manifest=True, seed=100)
    out = root / "run"
    ck = C.train([a, b], out, epochs=1, imgsz=32, batch=8, lr=1e-3, seed=0, freeze_epochs=0, log=lambda s: None)
    return {"ck": ck, "data": [a, b], "out": out, "root": root}


# ---------------------------------------------------------------------- crops
def test_cell_crop_near_border_keeps_cell_centred():
    import cv2

    img = np.full((120, 160, 3), BG, np.uint8)
    cv2.circle(img, (10, 12), 8, (60, 30, 120), -1)  # cell cut by the top-left corner region
    box = (2, 4, 18, 20)
    out = C.cell_crop(img, box, margin=0.5, size=48)
    assert out.shape == (48, 48, 3) and out.dtype == np.uint8
    dark = out[..., 0] < 120
    ys, xs = np.nonzero(dark)
    assert abs(xs.mean() - 23.5) < 1.5 and abs(ys.mean() - 23.5) < 1.5
    # outside the image: the median border colour
    assert tuple(out[0, 0]) == BG


def test_cell_crop_geometry_exact_without_resize():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (50, 60, 3), dtype=np.uint8)
    out = C.cell_crop(img, (20, 10, 30, 20), margin=0.5, size=20)  # side 10 * 2 = 20: no resize
    assert np.array_equal(out, img[5:25, 15:35])
    out = C.cell_crop(img, (0, 0, 10, 10), margin=0.5, size=20, fill=(1, 2, 3))  # half outside
    assert np.array_equal(out[5:, 5:], img[0:15, 0:15])
    assert (out[:5] == (1, 2, 3)).all() and (out[:, :5] == (1, 2, 3)).all()
    # non-square box: side from the longer edge, centred
    assert C.cell_crop(img, (25, 5, 35, 45), margin=0.25, size=30).shape == (30, 30, 3)


def test_single_cell_images_use_the_whole_image_as_context():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    for margin in (0.25, 0.5):
        out = C.single_cell_crop(img, margin=margin, size=90)
        assert np.array_equal(out, img[:, 15:105])


# ---------------------------------------------------------------------- backbone
def test_package_weights_load_by_position(one_thread):
    src = torch.load(C.package_weights_path(), map_location="cpu", weights_only=True)
    model = C.load_backbone(len(LABELS))
    dst = model.state_dict()
    assert len(src) == len(dst)
    pairs = list(zip(src.values(), dst.items()))
    for sv, (name, dv) in pairs[:-2]:  # every tensor but the new head was assigned
        assert torch.equal(sv.to(dv.dtype), dv), name
    assert tuple(model.get_classifier().weight.shape) == (len(LABELS), 1280)
    model.eval()
    with torch.no_grad():
        y = model(torch.zeros(2, 3, 64, 64))
    assert y.shape == (2, len(LABELS)) and torch.isfinite(y).all()


def test_backbone_shape_mismatch_fails_clearly(tmp_path, one_thread):
    src = torch.load(C.package_weights_path(), map_location="cpu", weights_only=True)
    k = next(iter(src))
    src[k] = torch.zeros(16, 3, 3, 3)
    bad = tmp_path / "bad.pth"
    torch.save(src, bad)
    with pytest.raises(C.ClassifierError, match="shape"):
        C.load_backbone(len(LABELS), weights=bad)


def test_augment_is_deterministic_and_in_range():
    batch = np.random.default_rng(0).integers(0, 255, (4, 40, 40, 3), dtype=np.uint8)
    a = C.augment(batch, 32, torch.Generator().manual_seed(3))
    b = C.augment(batch, 32, torch.Generator().manual_seed(3))
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b)
    assert float(a.min()) >= 0 and float(a.max()) <= 1


def test_lab_restain_sets_each_crops_colour_statistics_inside_the_recipe_ranges():
    """CIELAB as OpenCV computes it, an exact round trip, and with ``lab_p`` 1 every crop's mean L, a, b
    lands in the recipe's ranges (before the later jitters: hue, brightness), whatever the input's colour."""
    import cv2

    from bccdet.adapters.classifier.data import _lab_restain, lab_to_rgb, rgb_to_lab

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    img[0] = (30, 200, 40)  # a flat green crop, far from any smear
    x = torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255
    lab = rgb_to_lab(x)
    ref = cv2.cvtColor(img[1].astype(np.float32) / 255, cv2.COLOR_RGB2LAB)
    assert np.abs(lab[1].permute(1, 2, 0).numpy() - ref).max() < 0.5
    assert float((lab_to_rgb(lab) - x).abs().max()) < 1e-4
    rec = C.DEFAULT_RECIPE["aug"]
    yy, xx = np.mgrid[:24, :24]
    smear = np.empty((24, 24, 3), np.uint8)
    smear[:] = (232, 205, 212)  # background, a red cell and a white cell of a Giemsa-stained field
    smear[(yy - 5) ** 2 + (xx - 5) ** 2 < 20] = (205, 135, 150)
    smear[(yy - 14) ** 2 + (xx - 14) ** 2 < 40] = (120, 60, 160)
    img = np.stack([smear, (smear * [0.6, 1.1, 0.7]).clip(0, 255), smear // 2]).astype(np.uint8)  # also green, dark
    x = torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255
    out = _lab_restain(x, torch.Generator().manual_seed(0), rec, lambda t: t)
    mu = rgb_to_lab(out).mean(dim=(2, 3))
    for c, (lo, hi) in enumerate(rec["lab_mean"]):
        assert ((mu[:, c] > lo - 3) & (mu[:, c] < hi + 3)).all(), (c, mu[:, c])
    assert not torch.allclose(out, x, atol=0.05)
    assert C.augment(img, 16, torch.Generator().manual_seed(0), {"lab_p": 1.0}).shape == (3, 3, 16, 16)


# ---------------------------------------------------------------------- training / evaluation
@pytest.mark.slow
def test_train_one_epoch_writes_calibrated_checkpoint(trained):
    ck = trained["ck"]
    assert ck.exists() and ck.name == "classifier.pt"
    assert (trained["out"] / "last.pt").exists()
    d = torch.load(ck, map_location="cpu", weights_only=True)  # plain data only
    assert d["format"] == C.FORMAT and d["labels"] == list(LABELS)
    assert d["temperature"] > 0 and d["imgsz"] == 32 and d["margin"] == C.CROP_MARGIN
    assert d["mean"] == list(C.MEAN) and d["review_threshold"] == C.REVIEW_THRESHOLD
    assert all(v.dtype == torch.float16 for v in d["state_dict"].values() if v.is_floating_point())
    assert d["data"]["train"] == {"neutrophil": 9, "lymphocyte": 9, "blast": 9}
    assert d["recipe"]["epochs"] == 1 and d["calibration"]["n_val"] == 15
    assert len(json.loads((trained["out"] / "log.jsonl").read_text().splitlines()[0])) > 3


@pytest.mark.slow
def test_train_resumes_from_last_checkpoint(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained["out"], out)
    msgs = []
    ck = C.train(trained["data"], out, epochs=2, imgsz=32, batch=8, lr=1e-3, seed=0, freeze_epochs=0, log=msgs.append)
    assert any("resumed" in m and "after epoch 1" in m for m in msgs)
    d = torch.load(ck, map_location="cpu", weights_only=True)
    assert [h["epoch"] for h in d["history"]] == [1, 2]
    with pytest.raises(Exception, match="other data or settings"):
        C.train(trained["data"], out, epochs=3, imgsz=40, batch=8, lr=1e-3, seed=0, freeze_epochs=0, log=msgs.append)


@pytest.mark.slow
def test_train_init_starts_from_a_bccdet_checkpoint(trained, tmp_path):
    """--init: the network starts from the given classifier (learning rate 0 keeps it unchanged), and the
    init's sha256 is part of the recipe and of the run identity."""
    from bccdet.io import sha256_file

    ck = C.train(trained["data"], tmp_path / "run", epochs=1, imgsz=32, batch=8, lr=0.0, seed=1, freeze_epochs=0,
                 init=trained["ck"], log=lambda s: None)
    a = torch.load(trained["ck"], map_location="cpu", weights_only=True)["state_dict"]
    d = torch.load(ck, map_location="cpu", weights_only=True)
    conv = [k for k, v in a.items() if v.is_floating_point() and v.dim() == 4]
    assert conv and all(torch.equal(a[k], d["state_dict"][k]) for k in conv)
    assert d["recipe"]["init"]["sha256"] == sha256_file(trained["ck"])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(C.ClassifierError, match="not a readable classifier checkpoint"):
        C.train(trained["data"], tmp_path / "run2", epochs=1, imgsz=32, batch=8, init=bad, log=lambda s: None)


@pytest.mark.slow
def test_train_budget_stops_on_the_clock_and_saves_the_weight_average(trained, tmp_path):
    """--budget-min: a 1000-epoch cap ends when the time is spent (the schedule follows the clock and has
    reached its floor); --ema: the saved network is the running average, not the last step's weights;
    --select last keeps the last epoch even when an earlier one scored better."""
    import time

    msgs = []
    t0 = time.perf_counter()
    ck = C.train(trained["data"], tmp_path / "run", epochs=1000, imgsz=32, batch=8, lr=1e-3, seed=0,
                 freeze_epochs=0, samples_per_epoch=16, budget_s=4.0, ema=0.9, select="last", log=msgs.append)
    assert time.perf_counter() - t0 >= 4.0
    d = torch.load(ck, map_location="cpu", weights_only=True)
    hist = d["history"]
    assert 2 <= len(hist) < 1000 and hist[-1]["elapsed_s"] >= hist[0]["elapsed_s"]
    assert hist[-1]["lr_end"] < 5e-5  # annealed to near its floor (1e-5) when the time ran out
    assert hist[0]["lr_end"] > 10 * hist[-1]["lr_end"]
    assert d["recipe"]["budget_s"] == 4.0 and d["recipe"]["ema"] == 0.9 and d["recipe"]["select"] == "last"
    last = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    live, avg = last["model"], last["ema"]
    conv = [k for k, v in live.items() if v.is_floating_point() and v.dim() == 4]
    assert any(not torch.equal(live[k], avg[k]) for k in conv)  # the average differs from the live weights
    saved = d["state_dict"]
    assert all(torch.equal(saved[k], avg[k].half()) for k in conv)  # and it is what was saved
    with pytest.raises(C.InputError, match="select"):
        C.train(trained["data"], tmp_path / "bad", epochs=1, imgsz=32, batch=8, select="worst", log=msgs.append)
    with pytest.raises(C.InputError, match="ema"):
        C.train(trained["data"], tmp_path / "bad", epochs=1, imgsz=32, batch=8, ema=1.0, log=msgs.append)
    with pytest.raises(C.InputError, match="budget"):
        C.train(trained["data"], tmp_path / "bad", epochs=1, imgsz=32, batch=8, budget_s=0.0, log=msgs.append)


def test_training_set_stays_in_host_memory_on_a_small_gpu():
    """The decoded PBC + DeepAPL set at 288 + 64 px (18,662 x 352 x 352 x 3 bytes, 6.9 GB) goes onto an
    H200 (139 GB free) but not onto an 8 GB laptop GPU, where activations need the room."""
    n = 18662 * 352 * 352 * 3
    assert C.set_fits_on_gpu(n, 139 * 2**30) and not C.set_fits_on_gpu(n, 8 * 2**30)


def test_train_imagenet_weights_may_be_an_fp16_copy(tmp_path, one_thread):
    """--imagenet: an fp16 copy of the package weights (small enough to carry to a rented GPU) builds the
    same network as the package file, to fp16 precision."""
    src = torch.load(C.package_weights_path(), map_location="cpu", weights_only=True)
    half = tmp_path / "lite0-fp16.pth"
    torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in src.items()}, half)
    a = C.load_backbone(len(LABELS)).state_dict()
    b = C.load_backbone(len(LABELS), weights=half).state_dict()
    body = [k for k in a if not k.startswith("classifier") and a[k].is_floating_point()]
    assert body and all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-4) for k in body)
    bad = tmp_path / "notes.txt"
    bad.write_text("not weights")
    with pytest.raises(C.ClassifierError, match="not a readable weights file"):
        C.load_backbone(len(LABELS), weights=bad)


@pytest.mark.slow
def test_evaluate_metrics_in_unit_range(trained, tmp_path):
    res = C.evaluate(trained["ck"], trained["data"][0], split="test", out_dir=tmp_path)
    assert res["n"] == 9
    for key in ("accuracy", "macro_f1", "ece"):
        assert 0.0 <= res[key] <= 1.0
    assert set(res["per_class"]) <= set(LABELS)
    for m in res["per_class"].values():
        for key in ("precision", "sensitivity", "specificity", "f1"):
            assert 0.0 <= m[key] <= 1.0
    cm = np.asarray(res["confusion"]["matrix"])
    assert cm.sum() == 9 and cm.shape == (len(res["confusion"]["labels"]),) * 2
    assert (tmp_path / "confusion_test.png").stat().st_size > 1000
    assert json.loads((tmp_path / "metrics_test.json").read_text())["n"] == 9


def test_metrics_known_values():
    m = C.metrics([0, 0, 1, 1], [0, 1, 1, 1])
    assert m["accuracy"] == 0.75
    n = m["per_class"][LABELS[0]]
    assert (n["precision"], n["sensitivity"], n["specificity"]) == (1.0, 0.5, 1.0)
    l1 = m["per_class"][LABELS[1]]
    assert (l1["precision"], l1["sensitivity"], l1["specificity"]) == (round(2 / 3, 4), 1.0, 0.5)
    assert m["confusion"]["matrix"] == [[1, 1], [0, 2]]


def test_fit_temperature_is_positive_and_fixes_overconfidence():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    z = rng.normal(0, 1, (400, 3))
    z[np.arange(400), y] += 1.0
    t5, t1 = C.fit_temperature(z * 5, y), C.fit_temperature(z, y)
    assert t1 > 0 and t5 > 2.0  # over-confident logits -> T > 1
    assert t5 == pytest.approx(5 * t1, rel=0.05)


# ---------------------------------------------------------------------- single-cell files + summary
@pytest.mark.slow
def test_classify_paths_reports_unreadable_files(trained, tmp_path):
    folder = tmp_path / "cells"
    shutil.copytree(trained["data"][0] / "test" / "blast", folder)
    (folder / "broken.png").write_bytes(b"not an image at all")
    (folder / "empty.jpg").write_bytes(b"")
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(folder / "dot.png")  # not cells: no label, a reason
    Image.fromarray(np.full((40, 600, 3), 200, np.uint8)).save(folder / "strip.png")
    rows = C.classify_paths([folder], trained["ck"])
    assert len(rows) == 7
    bad = {r["file"].rsplit("/", 1)[-1]: r for r in rows if not r["label"]}
    assert set(bad) == {"broken.png", "empty.jpg", "dot.png", "strip.png"}
    assert "not a readable image" in bad["broken.png"]["reason"] and "empty" in bad["empty.jpg"]["reason"]
    assert "1x1 px, below the 16 px minimum side" in bad["dot.png"]["reason"]  # read_image refuses it first
    assert "600x40 px is not a single-cell image" in bad["strip.png"]["reason"]
    rows = [r for r in rows if r["file"].rsplit("/", 1)[-1] not in ("dot.png", "strip.png")]
    good = [r for r in rows if r["label"]]
    for r in good:
        assert r["label"] in LABELS and r["reason"] == ""
        assert sum(r[f"p_{k}"] for k in LABELS) == pytest.approx(1.0, abs=1e-3)
        assert r["label_score"] == pytest.approx(max(r[f"p_{k}"] for k in LABELS), abs=1e-4)
    s = C.summary(rows)
    assert s["files"] == 5 and s["unreadable"] == 2 and s["classified"] == 3
    leuk = sum(v for k, v in s["counts"].items() if k not in ("erythroblast", "platelet"))
    assert sum(s["counts"].values()) == 3
    assert sum(s["differential_percent"].values()) == (pytest.approx(100, abs=0.2) if leuk else 0)
    assert 0.0 <= s["apl_score"] <= 1.0 and any(f["code"] == "unreadable" for f in s["flags"])
    assert not any(f["code"] == "grey_images" for f in s["flags"])

    # a grey copy of one cell image is typed too, and the call says that its types are not reliable
    src = sorted(folder.glob("*.png"))[0]
    Image.open(src).convert("L").save(folder / "grey_copy.png")
    rows = [r for r in C.classify_paths([folder], trained["ck"]) if r["label"]]
    assert [r["grey"] for r in rows].count(True) == 1
    g = [f for f in C.summary(rows)["flags"] if f["code"] == "grey_images"]
    assert len(g) == 1 and g[0]["message"].startswith(f"1 of {len(rows)} cell images have no colour")


def test_summary_keeps_erythroblasts_and_platelets_out_of_the_differential():
    def row(lab):
        return {"file": f"{lab}.png", "label": lab, "label_score": 0.9, "review": False, "reason": "",
                **{f"p_{k}": float(k == lab) for k in LABELS}}

    rows = [row("neutrophil")] * 30 + [row("lymphocyte")] * 10 + [row("erythroblast")] * 4 + [row("platelet")] * 6
    s = C.summary(rows, apl_model=None)
    assert s["counts"] == {"neutrophil": 30, "lymphocyte": 10, "erythroblast": 4, "platelet": 6}
    assert s["differential_percent"] == {"neutrophil": 75.0, "lymphocyte": 25.0}
    assert s["not_in_differential"] == {"erythroblast": 4, "platelet": 6} and s["nrbc_per_100_wbc"] == 10.0


def test_apl_score_rule():
    assert C.apl_score([], []) == 0.0
    assert C.apl_score([0.0] * 50, [0.0] * 50) < 0.05  # no leukaemic-looking cells
    assert C.apl_score([0.0] * 50, [0.9] * 50) < 0.05  # blasts only: other AML
    assert C.apl_score([0.8] * 50, [0.05] * 50) > 0.9  # promyelocyte-predominant
    mixed = C.apl_score([0.3] * 50, [0.3] * 50)
    assert 0.3 < mixed < 0.7


def _patient(rng, n, p_blast, p_pro):
    """Per-cell probability rows of one patient: a share of blast-like and promyelocyte-like cells."""
    rows = np.full((n, len(LABELS)), 0.01)
    k = rng.random(n)
    rows[k < p_blast, LABELS.index("blast")] = 0.9
    rows[(k >= p_blast) & (k < p_blast + p_pro), LABELS.index("promyelocyte")] = 0.9
    rows[k >= p_blast + p_pro, LABELS.index("lymphocyte")] = 0.9
    return rows / rows.sum(1, keepdims=True)


def test_apl_patient_model_fits_scores_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    apl = [_patient(rng, 60, 0.1, rng.uniform(0.3, 0.6)) for _ in range(8)]
    aml = [_patient(rng, 60, rng.uniform(0.3, 0.6), 0.02) for _ in range(12)]
    feats = np.array([C.apl_features(p) for p in apl + aml])
    m = C.fit_apl_model(feats, [True] * 8 + [False] * 12, note="synthetic")
    assert m["format"] == C.APL_MODEL_FORMAT and m["n_apl"] == 8 and m["note"] == "synthetic"
    assert m["coef"][LABELS.index("promyelocyte")] > 0 > m["coef"][LABELS.index("blast")]
    f = tmp_path / "apl.json"
    f.write_text(json.dumps(m))
    m2 = C.load_apl_model(f)
    new_apl, new_aml = _patient(rng, 80, 0.05, 0.5), _patient(rng, 80, 0.5, 0.0)
    s_apl, s_aml = C.apl_score_model(m2, new_apl), C.apl_score_model(m2, new_aml)
    assert 0.5 < s_apl <= 1.0 and 0.0 <= s_aml < 0.5
    rows = [{"label": LABELS[int(np.argmax(r))], **{f"p_{k}": float(v) for k, v in zip(LABELS, r)}} for r in new_apl]
    summ = C.summary(rows, apl_model=m2)
    assert summ["apl_score"] == s_apl and "logistic" in summ["apl_rule"]
    assert any(fl["code"] == "apl_suspected" for fl in summ["flags"])
    rule = C.summary(rows, apl_model=None)
    assert rule["apl_rule"].startswith("share * presence")
    assert C.summary(rows, apl_model=f)["apl_score"] == s_apl
    with pytest.raises(C.InputError, match="both diagnoses"):
        C.fit_apl_model(feats[:8], [True] * 8)


def test_apl_patient_model_bad_files_are_clear_errors(tmp_path):
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(C.InputError, match="not a readable"):
        C.load_apl_model(tmp_path / "junk.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": C.APL_MODEL_FORMAT, "labels": ["a"], "coef": [1]}))
    with pytest.raises(C.InputError, match="not a bccdet-apl-patient/1 model"):
        C.load_apl_model(tmp_path / "other.json")
    with pytest.raises(C.InputError, match="no classified cells"):
        C.apl_features(np.zeros((0, len(LABELS))))


# ---------------------------------------------------------------------- the stage
def _field():
    import cv2

    img = np.full((120, 160, 3), BG, np.uint8)
    cv2.circle(img, (40, 40), 14, (120, 60, 160), -1)
    cv2.circle(img, (110, 70), 12, (200, 120, 170), -1)
    cv2.circle(img, (140, 20), 4, (100, 60, 150), -1)
    boxes = [[26, 26, 54, 54], [98, 58, 122, 82], [136, 16, 144, 24], [0, 100, 20, 120]]
    kinds = ["wbc", "rbc", "platelet", "wbc"]
    return img, Cells(xyxy=boxes, kind=kinds, meta=SmearMeta(width=160, height=120))


@pytest.mark.slow
def test_stage_labels_only_wbc(trained):
    img, cells = _field()
    clf = C.CellClassifier(trained["ck"])
    assert clf.name == "classifier" and len(clf.sha256) == 64
    out = clf(img, cells)
    assert len(out) == 4 and cells.label[0] is None  # input untouched
    for i in (0, 3):
        assert out.label[i] in LABELS and 0 < out.label_score[i] <= 1
    for i in (1, 2):
        assert out.label[i] is None and np.isnan(out.label_score[i]) and not out.review[i]
    probs = clf.predict_crops([clf.crop(img, b) for b in cells.xyxy[:2]], batch_size=1)
    assert probs.shape == (2, len(LABELS)) and np.allclose(probs.sum(1), 1, atol=1e-5)
    out_p = C.CellClassifier(trained["ck"], platelets=True)(img, cells)
    assert out_p.label[2] in LABELS and out_p.label[1] is None


def test_abnormal_labels_and_low_confidence_go_to_review(trained, monkeypatch):
    rows = [{"blast": 0.99, "monocyte": 0.01}, {"neutrophil": 0.95, "monocyte": 0.05},
            {"neutrophil": 0.4, "monocyte": 0.3, "lymphocyte": 0.3}]

    def fake(self, crops, batch_size=32):
        p = np.zeros((len(crops), len(LABELS)), np.float32)
        for j in range(len(crops)):
            for lab, v in rows[j].items():
                p[j, LABELS.index(lab)] = v
        return p

    monkeypatch.setattr(C.CellClassifier, "predict_crops_familiarity", lambda self, crops, batch_size=32: (fake(self, crops), None))
    img = np.full((100, 100, 3), BG, np.uint8)
    cells = Cells(xyxy=[[10, 10, 30, 30], [40, 40, 60, 60], [70, 70, 90, 90], [5, 60, 15, 70]],
                  kind=["wbc", "wbc", "wbc", "rbc"])
    out = C.CellClassifier(trained["ck"])(img, cells)
    assert list(out.label) == ["blast", "neutrophil", "neutrophil", None]
    assert list(out.review) == [True, False, True, False]  # abnormal, confident, 0.4 < 0.6
    for lab in ABNORMAL_LABELS:
        p = np.zeros((1, len(LABELS)))
        p[0, LABELS.index(lab)] = 1.0
        assert C.assign_labels(p, ["wbc"])[2][0]
    p = np.zeros((1, len(LABELS)))
    p[0, LABELS.index("platelet")] = 1.0
    assert C.assign_labels(p, ["wbc"])[2][0] and not C.assign_labels(p, ["platelet"])[2][0]


def test_bad_checkpoint_is_a_clear_error(tmp_path):
    f = tmp_path / "x.pt"
    f.write_bytes(b"garbage")
    with pytest.raises(C.ClassifierError, match="not a readable classifier checkpoint"):
        C.CellClassifier(f)
    with pytest.raises(C.ClassifierError, match="no such"):
        C.CellClassifier(tmp_path / "missing.pt")


# ---------------------------------------------------------------------- call-level prior adaptation
def _shifted_call(rng, prior, n):
    """Cells of three classes seen through a calibrated 1-D classifier trained under a uniform prior:
    class c emits x ~ N(c, 0.6); the posterior under the uniform prior is the normalised likelihood."""
    y = rng.choice(len(prior), size=n, p=prior)
    x = rng.normal(y.astype(float), 0.6)
    lik = np.exp(-0.5 * ((x[:, None] - np.arange(len(prior))[None]) / 0.6) ** 2)
    return lik / lik.sum(1, keepdims=True), y


def test_adapt_prior_recovers_a_label_shift_and_types_more_cells_right():
    rng = np.random.default_rng(0)
    true = np.array([0.75, 0.2, 0.05])
    p, y = _shifted_call(rng, true, 10000)
    q, pi, it = C.adapt_prior(p)
    assert np.abs(pi - true).max() < 0.04, pi  # the mix is found (the posteriors alone say ~1/3 each)
    assert np.abs(p.mean(0) - true).max() > 0.1
    assert (q.argmax(1) == y).mean() > (p.argmax(1) == y).mean() + 0.03
    np.testing.assert_allclose(q.sum(1), 1.0)
    assert 1 < it < 1000
    # a call that already has the reference mix is left nearly as it is
    p_u, _ = _shifted_call(rng, np.ones(3) / 3, 10000)
    q_u, pi_u, _ = C.adapt_prior(p_u)
    assert np.abs(pi_u - 1 / 3).max() < 0.04 and np.mean(q_u.argmax(1) == p_u.argmax(1)) > 0.95
    # pseudo-cells pull a small call towards the reference prior; an all-zero row stays zero
    small, _ = _shifted_call(rng, true, 20)
    pi_0 = C.adapt_prior(small)[1]
    pi_big = C.adapt_prior(small, alpha=1000.0)[1]
    assert np.abs(pi_big - 1 / 3).max() < np.abs(pi_0 - 1 / 3).max()
    z = np.vstack([small, np.zeros(3)])
    assert C.adapt_prior(z)[0][-1].sum() == 0.0
    # a weight bound: no label's weight moves more than max_ratio either way (so at most max_ratio**2 between labels)
    qb, pib, _ = C.adapt_prior(p, max_ratio=1.5)
    np.testing.assert_allclose(pib, pi)  # the estimate itself is not bounded
    w = (qb / p)[0]
    assert w.max() / w.min() == pytest.approx(1.5 ** 2, rel=1e-6)  # 0.75 * 3 and 0.05 * 3 hit the bound
    assert (qb.argmax(1) == y).mean() > (p.argmax(1) == y).mean()


def test_an_unfamiliar_cell_gets_an_abnormal_label_only_by_a_majority():
    """Other labs' normal cells are called smudge cell / variant lymphocyte by a narrow margin: on an
    unfamiliar cell such a call gives way to the most probable normal type (still reviewed); a familiar
    cell, or an abnormal label with half the probability or more, keeps its call."""
    ism, ily, ibl, ine = (LABELS.index(k) for k in ("smudge_cell", "lymphocyte", "blast", "neutrophil"))
    p = np.full((4, len(LABELS)), 0.0)
    p[:, ism], p[:, ily], p[:, ine] = 0.45, 0.30, 0.25  # smudge cell by a narrow margin
    p[2] = 0.0
    p[2, ibl], p[2, ine] = 0.55, 0.45  # blast by a majority
    p[3] = 0.0
    p[3, ine], p[3, ily] = 0.9, 0.1
    labels, score, review = C.assign_labels(p, ["wbc"] * 4, 0.6, unfamiliar=[True, False, True, True])
    assert labels == ["lymphocyte", "smudge_cell", "blast", "neutrophil"]
    assert score[0] == pytest.approx(0.30) and review[:3].all() and not review[3]
    assert C.assign_labels(p)[0][0] == "smudge_cell"  # no familiarity known: the plain call


def _rows(p):
    labels, score, review = C.assign_labels(p)
    return [{"file": f"c{i}.png", "label": lab, "label_score": round(float(s), 4), "review": bool(rv), "reason": "",
             **{f"p_{k}": round(float(v), 4) for k, v in zip(LABELS, pr)}}
            for i, (lab, s, rv, pr) in enumerate(zip(labels, score, review, p))]


def test_adapt_rows_relabels_a_normal_call_and_keeps_what_each_cell_said():
    """A normal-blood call of neutrophils and lymphocytes where some lymphocytes look a little like
    variant lymphocytes or blasts taken alone: adapting to the call's mix types them as lymphocytes,
    keeps the cell's own label, reviews every changed cell, and the flags still report the lone calls."""
    rng = np.random.default_rng(1)
    ine, ily, ivl, ibl = (LABELS.index(k) for k in ("neutrophil", "lymphocyte", "variant_lymphocyte", "blast"))
    p = np.full((60, len(LABELS)), 0.01)
    p[:40, ine] = 0.9
    p[40:, ily] = 0.6
    p[52:, ily], p[52:56, ivl], p[56:, ibl] = 0.3, 0.45, 0.45  # 8 ambiguous lymphocytes
    p += rng.uniform(0, 0.005, p.shape)
    p /= p.sum(1, keepdims=True)
    rows = _rows(p)
    before = [dict(r) for r in rows]
    info = C.adapt_rows(rows, None, C.REVIEW_THRESHOLD)
    assert info["applied"] and info["labels_changed"] == 8 and info["cells"] == 60
    assert info["estimated_percent"]["neutrophil"] > 60 and info["estimated_percent"].get("blast", 0) < 5
    for r, b in zip(rows, before):
        assert r["label_alone"] == b["label"] and r["raw_p_blast"] == pytest.approx(b["p_blast"])
        assert r["review"] >= b["review"]
        if r["label"] != b["label"]:
            assert r["review"] and r["label"] == "lymphocyte"
        assert r["label_score"] == pytest.approx(max(r[f"p_{k}"] for k in LABELS), abs=1e-4)
    s = C.summary(rows, prior_adaptation=info)
    assert s["counts"] == {"neutrophil": 40, "lymphocyte": 20} and s["prior_adaptation"] is info
    flags = {f["code"]: f["message"] for f in s["flags"]}
    assert "4 when each cell is taken alone" in flags["blasts_present"]
    for r in before[:2] + before[56:58]:  # two neutrophils and two of the blasts are unlike the training cells
        r["unfamiliar"] = True
    f = {f["code"]: f for f in C.summary(before)["flags"]}["blasts_present"]
    assert f["unfamiliar"] == 2 and "(2 of them unlike the training images: less reliable): review" in f["message"]
    assert C.summary(rows)["apl_score"] == C.summary(before)["apl_score"]  # scored on the cells' own probabilities
    # too small a call is left alone
    few = _rows(p[50:60])
    info = C.adapt_rows(few, None, C.REVIEW_THRESHOLD)
    assert not info["applied"] and "fewer than 20" in info["reason"] and "label_alone" not in few[0]


def test_familiarity_flags_cells_unlike_the_training_data(trained, tmp_path):
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(32, 4)))[0].T  # training features live in a 4-d subspace
    train = rng.normal(size=(400, 4)) @ basis + 0.01 * rng.normal(size=(400, 32))
    val = rng.normal(size=(100, 4)) @ basis + 0.01 * rng.normal(size=(100, 32))
    model = C.fit_familiarity(train, val, k=4, quantile=95)
    like = rng.normal(size=(200, 4)) @ basis + 0.01 * rng.normal(size=(200, 32))
    unlike = like + 0.2 * rng.normal(size=(200, 32))  # off the subspace: another lab, camera or stain
    assert (C.familiarity_scores(model, like) > model["threshold"]).mean() < 0.15
    assert (C.familiarity_scores(model, unlike) > model["threshold"]).mean() > 0.95
    # saved beside a checkpoint, loaded only by the classifier it was made for
    ck = trained["ck"]
    from bccdet.io import sha256_file

    dest = C.familiarity_path(ck)
    C.save_familiarity(model, dest, sha256_file(ck))
    try:
        back = C.load_familiarity(dest, sha256_file(ck))
        assert back is not None and back["threshold"] == pytest.approx(model["threshold"])
        assert C.load_familiarity(dest, "0" * 64) is None
        assert np.allclose(C.familiarity_scores(back, unlike), C.familiarity_scores(model, unlike), rtol=0.02)
    finally:
        dest.unlink()


def test_summary_flags_a_call_of_unfamiliar_cells():
    def row(lab, unfamiliar):
        return {"file": "x.png", "label": lab, "label_score": 0.9, "review": unfamiliar, "reason": "",
                "unfamiliar": unfamiliar, **{f"p_{k}": float(k == lab) for k in LABELS}}

    few = [row("neutrophil", i < 3) for i in range(30)]  # 10 %: a usual call
    many = [row("neutrophil", i < 15) for i in range(30)]  # 50 %: another lab
    assert "unfamiliar_images" not in {f["code"] for f in C.summary(few, apl_model=None)["flags"]}
    s = C.summary(many, apl_model=None)
    assert "unfamiliar_images" in {f["code"] for f in s["flags"]} and s["unfamiliar"] == 15
    unscored = [dict(r, unfamiliar=None) for r in many]  # a classifier without a familiarity file
    assert "unfamiliar" not in C.summary(unscored, apl_model=None)
