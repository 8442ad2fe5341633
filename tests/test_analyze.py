"""`bccdet analyze`: bad input (one line each, others still processed, exit codes) and the report files."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bccdet.types import rle_decode

pytestmark = pytest.mark.slow


@pytest.fixture
def smear(bccd):
    return bccd / "JPEGImages/BloodImage_00007.jpg"


def _bad_inputs(d: Path, smear: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    cases = {}
    cases["missing"] = d / "missing.jpg"
    cases["directory"] = d / "adir"
    cases["directory"].mkdir()
    cases["empty"] = d / "empty.jpg"
    cases["empty"].write_bytes(b"")
    data = smear.read_bytes()
    cases["truncated"] = d / "truncated.jpg"
    cases["truncated"].write_bytes(data[: len(data) // 4])
    cases["text"] = d / "notes.jpg"
    cases["text"].write_text("this is not an image\n")
    cases["huge"] = d / "huge.png"
    Image.new("L", (20000, 20000)).save(cases["huge"])
    cases["tiny"] = d / "tiny.png"  # upscaled to the detector's input, noise once gave 1 WBC and 2 RBC
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (3, 3, 3), dtype=np.uint8)).save(cases["tiny"])
    return cases


def _good_variants(d: Path, smear: Path) -> dict[str, Path]:
    import tifffile

    d.mkdir(parents=True, exist_ok=True)
    rgb = np.asarray(Image.open(smear).convert("RGB"))
    out = {}
    out["gray"] = d / "gray.png"
    Image.fromarray(rgb).convert("L").save(out["gray"])
    out["rgba"] = d / "rgba.png"
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), "RGBA").save(out["rgba"])
    out["png16"] = d / "sixteen.png"
    import cv2

    cv2.imwrite(str(out["png16"]), (rgb[..., ::-1].astype(np.uint16) * 257))
    out["tif16"] = d / "sixteen.tif"
    tifffile.imwrite(out["tif16"], rgb.astype(np.uint16) * 257)
    out["exif"] = d / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(out["exif"], exif=exif.tobytes(), quality=95)
    out["unicode"] = d / "frottis_sanguin_échantillon_血液.jpg"
    shutil.copy(smear, out["unicode"])
    return out


def test_bad_inputs_one_line_each_and_others_processed(tiny_detector, smear, tmp_path, cli):
    bad = _bad_inputs(tmp_path / "in", smear)
    args = ["analyze", smear, *bad.values(), "--detector", tiny_detector, "--out", tmp_path / "out", "--no-refine", "--no-classify"]
    r = cli(*args)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == len(bad), r.stderr
    for key, p in bad.items():
        assert sum(str(p) in ln for ln in errors) == 1, (key, r.stderr)
    assert any("above the" in ln and "huge.png" in ln for ln in errors)
    assert any("below the 16 px minimum" in ln and "tiny.png" in ln for ln in errors)
    assert (tmp_path / "out/BloodImage_00007/report.json").exists()  # the good image was still processed
    n = len(bad)  # a run of several images says where it is: [i/n] on every line (the empty folder has none)
    assert r.stdout.splitlines()[0].startswith(f"[1/{n}] ")
    assert all(f"/{n}] " in ln for ln in errors if "adir" not in ln)
    assert any(ln == f"error: {bad['directory']}: no image files in this folder" for ln in errors)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["BloodImage_00007"]


def test_odd_but_valid_images_all_succeed(tiny_detector, smear, tmp_path, cli):
    good = _good_variants(tmp_path / "in", smear)
    r = cli("analyze", *good.values(), "--detector", tiny_detector, "--out", tmp_path / "out", "--no-refine", "--no-classify")
    assert r.returncode == 0, r.stderr
    for key, p in good.items():
        rep = json.loads((tmp_path / "out" / p.stem / "report.json").read_text())
        want = (640, 480) if key != "exif" else (480, 640)  # EXIF orientation 6: shown rotated
        assert (rep["image"]["width"], rep["image"]["height"]) == want, key
        codes = [f["code"] for f in rep["summary"]["flags"]]
        assert ("grey_image" in codes) == (key == "gray"), (key, codes)  # a grey image is read, and said to be


def test_a_folder_is_its_images_and_an_earlier_report_inside_it_is_not(tiny_detector, smear, tmp_path, cli):
    """analyze DIR: the images inside (recursively); the reports of a run whose --out lies inside DIR are
    not taken for smears on the next run; an empty folder is a one-line error."""
    d = tmp_path / "smears"
    (d / "slide2").mkdir(parents=True)
    shutil.copy(smear, d / "a.jpg")
    shutil.copy(smear, d / "slide2" / "b.jpg")
    out = d / "out"
    for _ in range(2):
        r = cli("analyze", d, "--detector", tiny_detector, "--out", out, "--no-refine", "--no-classify")
        assert r.returncode == 0, r.stderr
        assert [ln.split("] ")[0] for ln in r.stdout.splitlines()] == ["[1/2", "[2/2"]  # not the overlay PNGs
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]
    (tmp_path / "none").mkdir()
    r = cli("analyze", tmp_path / "none", "--out", tmp_path / "o2")
    assert r.returncode == 2 and r.stderr.strip() == f"error: {tmp_path / 'none'}: no image files in this folder"


def test_usage_errors_exit_2(tmp_path, cli):
    r = cli("analyze", "--out", tmp_path / "o")
    assert r.returncode == 2 and r.stderr.startswith("error:")
    r = cli("analyze", "x.jpg", "--format", "pdf")
    assert r.returncode == 2 and "format" in r.stderr
    r = cli("analyze", "x.jpg", "--detector", "no-such-model")
    assert r.returncode == 2 and "unknown detector model" in r.stderr and "Traceback" not in r.stderr
    for bad in ("2", "0", "big"):
        r = cli("analyze", "x.jpg", "--scale", bad)
        assert r.returncode == 2 and "factor in (0, 1]" in r.stderr and "Traceback" not in r.stderr, bad
    # usage errors too are one line (not click's framed box), naming where to look
    for args in (["x.jpg", "--scale", "2"], ["x.jpg", "--no-such-option"], ["x.jpg", "--review-threshold", "7"]):
        r = cli("analyze", *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        assert lines[0].endswith("(see: cli.py analyze --help)") and "\u256d" not in r.stderr


def test_report_files_and_contract(tiny_detector, smear, tmp_path, cli):
    r = cli("analyze", smear, "--detector", tiny_detector, "--out", tmp_path / "out", "--format", "coco",
            "--format", "geojson", "--no-refine", "--no-classify")
    assert r.returncode == 0, r.stderr
    d = tmp_path / "out/BloodImage_00007"
    assert sorted(p.name for p in d.iterdir()) == ["cells.csv", "cells.geojson", "coco.json", "overlay.png", "report.html", "report.json"]
    rep = json.loads((d / "report.json").read_text())
    assert set(rep) >= {"image", "models", "cells", "summary"}
    assert rep["models"]["detector"]["sha256"] and rep["models"]["classifier"] is None
    assert set(rep["summary"]["counts"]) == {"rbc", "wbc", "platelet"}
    codes = {f["code"] for f in rep["summary"]["flags"]}
    assert "few_wbc" in codes  # one field never holds 100 WBCs
    for c in rep["cells"]:
        assert set(c) >= {"id", "box", "kind", "score", "mask", "mask_source", "label", "label_score", "review"}
        x1, y1, x2, y2 = c["box"]
        assert 0 <= x1 <= x2 <= 640 and 0 <= y1 <= y2 <= 480
        if c["mask"] is not None:
            m = rle_decode(c["mask"])
            assert m.shape == (480, 640) and c["mask_source"] == "yolo"
    rows = (d / "cells.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(rep["cells"])
    html = (d / "report.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    gj = json.loads((d / "cells.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == len(rep["cells"])
    coco = json.loads((d / "coco.json").read_text())
    assert len(coco["annotations"]) == len(rep["cells"])


def test_interrupted_run_leaves_no_half_report(tiny_detector, smear, tmp_path):
    """Kill analyze while it writes: the report folder is either complete or absent."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import REPO

    imgs = []
    for i in range(6):
        p = tmp_path / f"f{i}.jpg"
        shutil.copy(smear, p)
        imgs.append(p)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "analyze", *imgs, "--detector", tiny_detector,
                             "--out", out, "--no-refine", "--no-classify"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and any(p.name.startswith("f") for p in out.iterdir())):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for d in out.iterdir():
        if d.name.startswith("."):
            continue  # a hidden .partial folder may remain; it is never mistaken for a report
        assert sorted(p.name for p in d.iterdir()) == ["cells.csv", "overlay.png", "report.html", "report.json"]
        json.loads((d / "report.json").read_text())


def test_analyze_replaces_only_its_own_earlier_report(tmp_path):
    import json

    from bccdet.analysis import replaceable as _replaceable

    a, b = tmp_path / "pa" / "field1.jpg", tmp_path / "pb" / "field1.jpg"
    out = tmp_path / "out"
    assert _replaceable(out / "field1", a)  # nothing there yet
    (out / "field1").mkdir(parents=True)
    (out / "field1" / "report.json").write_text(json.dumps({"image": {"path": str(a)}}))
    assert _replaceable(out / "field1", a)  # re-running the same image updates its report
    assert not _replaceable(out / "field1", b)  # another patient's field1.jpg goes to field1_1
    (out / "notes").mkdir()
    (out / "notes" / "notes.txt").write_text("precious")
    assert not _replaceable(out / "notes", tmp_path / "notes.png")  # a folder we did not write is never replaced


def test_edge_sliver_option_is_checked(cli, tmp_path):
    """(Its default is defaults.EDGE_SLIVER, written once: tests/test_imports.py::test_each_default_is_written_once.)"""
    r = cli("analyze", "--sample", "--out", tmp_path, "--edge-sliver", "1")
    assert r.returncode == 2 and "expected a share in [0, 1)" in r.stderr and "Traceback" not in r.stderr
