"""Conversion into YOLO layouts: real data sets (skipped when absent) and every kind of bad input."""

import csv
import json
import shutil
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bccdet.convert.common import ConversionError
from bccdet.convert.roboflow import safe_extract
from bccdet.types import Cells, SmearMeta


def _labels(root: Path, split: str) -> list[list[str]]:
    return [p.read_text().split("\n") for p in sorted((root / "labels" / split).glob("*.txt"))]


# ---------------------------------------------------------------------- real data
@pytest.mark.data
def test_convert_bccd_keeps_published_split(bccd, tmp_path, cli):
    out = tmp_path / "bccd"
    r = cli("convert", "bccd", bccd, "--out", out)
    assert r.returncode == 0, r.stderr
    summ = json.loads((out / "summary.json").read_text())
    assert summ["images"] == {"train": 205, "val": 87, "test": 72}
    # the two zero-size boxes of BCCD are reported by file, not silently dropped
    zero = [d for d in summ["dropped"] if d["reason"].startswith("zero-size box")]
    assert sorted(Path(d["file"]).name for d in zero) == ["BloodImage_00338.jpg", "BloodImage_00343.jpg"]
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == {0: "rbc", 1: "wbc", 2: "platelet"}
    test_stems = {ln.strip() for ln in (bccd / "ImageSets/Main/test.txt").read_text().split()}
    got = {p.stem.replace("bccd__", "") for p in (out / "images/test").iterdir()}
    assert got == test_stems
    # BloodImage_00000: one WBC at VOC (260,177,491,376) -> class 1, centre (375.5, 276.5)/(640,480)
    first = (out / "labels/val/bccd__BloodImage_00000.txt").read_text().split("\n")[0].split()
    assert first[0] == "1" and abs(float(first[1]) - 375.5 / 640) < 2e-3 and abs(float(first[2]) - 276.5 / 480) < 2e-3
    assert "rbc" in r.stdout and "dropped: 2" in r.stdout


@pytest.mark.slow
@pytest.mark.data
def test_convert_txl_merge_dedups_and_prefers_first_source(data_root, bccd, tmp_path, cli):
    txl = data_root / "txl-pbc"
    if not txl.is_dir():
        pytest.skip("txl-pbc absent")
    assert cli("convert", "bccd", bccd, "--out", tmp_path / "b", "--task", "segment").returncode == 0
    r = cli("convert", "txl-pbc", txl, "--out", tmp_path / "t", "--task", "segment")
    assert r.returncode == 0, r.stderr
    t = json.loads((tmp_path / "t/summary.json").read_text())
    # TXL-PBC class order WBC, RBC, Platelets is mapped to ours: RBC is by far the most frequent class 0
    assert t["objects"]["train"]["rbc"] > 5 * t["objects"]["train"]["wbc"]
    r = cli("convert", "merge", tmp_path / "t", tmp_path / "b", "--out", tmp_path / "m", "--task", "segment")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "m/summary.json").read_text())
    dups = [d for d in m["dropped"] if d["reason"].startswith("duplicate")]
    assert len(dups) > 50  # TXL-PBC re-labelled many BCCD train/val fields
    assert all(Path(d["file"]).name.startswith("bccd__") for d in dups)  # first listed source (TXL) wins
    assert m["images"]["test"] == 72
    assert sum(m["images"].values()) == t["images"]["train"] + t["images"]["val"] + 364 - len(dups)
    # segment labels are polygons
    line = _labels(tmp_path / "m", "train")[0][0].split()
    assert len(line) >= 7 and len(line) % 2 == 1


@pytest.mark.slow
@pytest.mark.data
def test_merge_fails_loudly_on_test_leakage(bccd, tmp_path, cli):
    assert cli("convert", "bccd", bccd, "--out", tmp_path / "b").returncode == 0
    # a second source whose train split holds a re-encoded copy of a BCCD *test* image
    src = tmp_path / "other"
    (src / "images/train").mkdir(parents=True)
    (src / "labels/train").mkdir(parents=True)
    Image.open(bccd / "JPEGImages/BloodImage_00007.jpg").save(src / "images/train/copy.png")
    (src / "labels/train/copy.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (src / "data.yaml").write_text("names: [rbc, wbc, platelet]\n")
    r = cli("convert", "merge", src, tmp_path / "b", "--out", tmp_path / "m")
    assert r.returncode == 2
    assert "leakage" in r.stderr and "copy.png" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "m").exists()
    # resized and re-encoded copies (half size at JPEG quality 80 sat 5 bits away: missed at the old 4-bit limit)
    (src / "images/train/copy.png").unlink()
    (src / "labels/train/copy.txt").unlink()
    for i, name in enumerate(("BloodImage_00011", "BloodImage_00007", "BloodImage_00021")):
        Image.open(bccd / f"JPEGImages/{name}.jpg").convert("RGB").resize((320, 240)).save(
            src / f"images/train/small{i}.jpg", quality=80)
        (src / f"labels/train/small{i}.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    r = cli("convert", "merge", src, tmp_path / "b", "--out", tmp_path / "m")
    assert r.returncode == 2 and "3 train/val image(s) also in the test split" in r.stderr, r.stderr


@pytest.mark.slow
@pytest.mark.data
def test_convert_pbc_dedup_and_stratified(data_root, tmp_path, cli):
    pbc = data_root / "pbc"
    if not pbc.is_dir():
        pytest.skip("pbc absent")
    out = tmp_path / "pbc"
    r = cli("convert", "pbc", pbc, "--out", out, "--seed", "0")
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    reasons = Counter(d["reason"].split(":")[0] for d in s["dropped"])
    # the cross-class pair (eosinophil/EO_225902 == neutrophil/BNE_191112) is dropped on both sides
    conflict = sorted(Path(d["file"]).stem for d in s["dropped"] if "conflicting" in d["reason"])
    assert conflict == ["BNE_191112", "EO_225902"]
    assert reasons["duplicate"] >= 15
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    hashes = [r["sha256"] for r in rows]
    assert len(hashes) == len(set(hashes))  # no byte-identical file left, so none across splits
    per = defaultdict(Counter)
    for r in rows:
        per[r["label"]][r["split"]] += 1
    assert set(per) == {"neutrophil", "eosinophil", "basophil", "lymphocyte", "monocyte",
                        "immature_granulocyte", "erythroblast", "platelet"}
    for lab, c in per.items():
        n = sum(c.values())
        assert abs(c["test"] / n - 0.15) < 0.01 and abs(c["val"] / n - 0.15) < 0.01, (lab, c)
    subs = Counter(r["subclass"] for r in rows if r["label"] == "immature_granulocyte")
    assert {"promyelocyte", "myelocyte", "metamyelocyte"} <= set(subs)
    # deterministic for a seed
    r2 = cli("convert", "pbc", pbc, "--out", tmp_path / "pbc2", "--seed", "0")
    assert r2.returncode == 0, r2.stderr
    assert (tmp_path / "pbc2/manifest.csv").read_text() == (out / "manifest.csv").read_text()


@pytest.mark.data
def test_convert_deepapl_split_by_patient(data_root, tmp_path, cli):
    d = data_root / "deepapl"
    if not d.is_dir():
        pytest.skip("deepapl absent")
    out = tmp_path / "apl"
    r = cli("convert", "deepapl", d, "--out", out)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    split_of = defaultdict(set)
    for row in rows:
        split_of[row["group"]].add(row["split"])
    assert all(len(v) == 1 for v in split_of.values())  # no patient in two splits
    assert len(split_of) > 60
    labels = {row["label"] for row in rows}
    assert {"blast", "promyelocyte", "smudge_cell", "variant_lymphocyte", "neutrophil"} <= labels
    subs = {(row["subclass"], row["label"]) for row in rows}
    assert ("band_neutrophil", "neutrophil") in subs and ("giant_thrombocyte", "platelet") in subs
    # every split has APL and non-APL patients
    master = {row["Patient_ID"]: row["Diagnosis"] for row in csv.DictReader(open(d / "master.csv"))}
    for sp in ("train", "val", "test"):
        diags = {master[p] for p, s in split_of.items() if sp in s}
        assert diags == {"APL", "AML"}, (sp, diags)
    s = json.loads((out / "summary.json").read_text())
    assert any("not a single-cell class" in x["reason"] for x in s["dropped"])  # thrombocyte aggregation


# ---------------------------------------------------------------------- bad input (synthetic)
def _voc(path: Path, fname: str, boxes, w=64, h=48):
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d in boxes
    )
    path.write_text(f"<annotation><filename>{fname}</filename><size><width>{w}</width><height>{h}</height>"
                    f"<depth>3</depth></size>{objs}</annotation>")


def _fake_bccd(root: Path):
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    img = np.full((48, 64, 3), 200, np.uint8)
    stems = [f"BloodImage_{i:05d}" for i in range(7)]
    for i, s in enumerate(stems[:5]):
        img[:4, :4] = 40 * i  # distinct pictures (identical ones would be de-duplicated)
        Image.fromarray(img).save(root / "JPEGImages" / f"{s}.jpg")
    _voc(root / "Annotations/BloodImage_00000.xml", "BloodImage_00000.jpg", [("RBC", 5, 5, 20, 20), ("WBC", 30, 10, 50, 40)])
    (root / "Annotations/BloodImage_00001.xml").write_text("<annotation><object>")  # malformed
    _voc(root / "Annotations/BloodImage_00002.xml", "BloodImage_00002.jpg",
         [("RBC", 10, 10, 10, 10), ("Platelets", 100, 100, 120, 120), ("RBC", 50, 30, 90, 60), ("Alien", 1, 1, 9, 9)])
    _voc(root / "Annotations/BloodImage_00005.xml", "BloodImage_00005.jpg", [("RBC", 5, 5, 20, 20)])  # no image
    (root / "JPEGImages/BloodImage_00003.jpg").write_text("not a jpeg")
    _voc(root / "Annotations/BloodImage_00003.xml", "BloodImage_00003.jpg", [("RBC", 5, 5, 20, 20)])
    # 00004.jpg has no annotation
    sets = root / "ImageSets/Main"
    (sets / "train.txt").write_text("\n".join(stems[:4]) + "\n")
    (sets / "val.txt").write_text(stems[5] + "\n")
    (sets / "test.txt").write_text(stems[6] + "\n")
    return root


def test_bad_input_is_reported_by_file_and_reason(tmp_path, cli):
    root = _fake_bccd(tmp_path / "bccd")
    r = cli("convert", "bccd", root, "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    s = json.loads((tmp_path / "o/summary.json").read_text())
    got = {(Path(d["file"]).name, d["reason"].split(":")[0]) for d in s["dropped"]}
    assert ("BloodImage_00001.xml", "malformed XML") in got
    assert ("BloodImage_00005.xml", "label without image") in got
    assert ("BloodImage_00003.jpg", "unreadable image") in got
    assert ("BloodImage_00004.jpg", "image without label file") in got
    assert ("BloodImage_00002.jpg", "zero-size box") in got
    assert ("BloodImage_00002.jpg", "box outside image") in got
    assert ("BloodImage_00002.jpg", "unknown class") in got
    # the partly-outside RBC (50,30)-(90,60) on a 64x48 image is kept, clipped
    lines = (tmp_path / "o/labels/train/bccd__BloodImage_00002.txt").read_text().split()
    cells = Cells.from_yolo([" ".join(lines)], SmearMeta(width=64, height=48))
    assert len(cells) == 1 and cells.xyxy[0, 2] <= 64 and cells.xyxy[0, 3] <= 48
    assert s["images"] == {"train": 2}
    assert "dropped: 7" in r.stdout


def test_unusable_input_exit_2(tmp_path, cli):
    src = tmp_path / "src"
    src.mkdir()
    r = cli("convert", "bccd", src, "--out", tmp_path / "o")
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("convert", "pbc", tmp_path / "missing", "--out", tmp_path / "o")
    assert r.returncode == 2 and "not a folder" in r.stderr
    r = cli("convert", "merge", src, "--out", tmp_path / "o")
    assert r.returncode == 2 and "data.yaml" in r.stderr


def test_yolo_empty_and_bad_label_files(tmp_path, cli):
    src = tmp_path / "txl"
    for sp in ("train", "val"):
        (src / "images" / sp).mkdir(parents=True)
        (src / "labels" / sp).mkdir(parents=True)
    (src / "data.yaml").write_text("names: ['WBC', 'RBC', 'Platelets']\n")
    img = np.full((40, 40, 3), 210, np.uint8)
    for i, n in enumerate(("a", "b", "c", "d", "v")):
        img[0, :5] = 30 * i  # distinct pictures
        Image.fromarray(img).save(src / "images" / ("val" if n == "v" else "train") / f"{n}.png")
    (src / "labels/train/a.txt").write_text("0 0.5 0.5 0.4 0.4\n1 0.2 0.2 0.2 0.2\n")
    (src / "labels/train/b.txt").write_text("")  # empty: kept as background, noted
    (src / "labels/train/c.txt").write_text("9 0.5 0.5 0.1 0.1\n")  # class outside names
    (src / "labels/train/orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # label without image
    (src / "labels/val/v.txt").write_text("2 0.5 0.5 0.1 0.1\n")
    r = cli("convert", "txl-pbc", src, "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "o/summary.json").read_text())
    got = {(Path(d["file"]).name, d["reason"].split(":")[0]) for d in s["dropped"]}
    assert ("c.txt", "malformed label file") in got
    assert ("orphan.txt", "label without image") in got
    assert ("d.png", "image without label file") in got
    assert any("empty label file" in n for n in s["notes"])
    a = (tmp_path / "o/labels/train/txl__a.txt").read_text().split("\n")
    assert a[0].startswith("1 ") and a[1].startswith("0 ")  # WBC->1, RBC->0 in our order
    assert (tmp_path / "o/labels/val/txl__v.txt").read_text().startswith("2 ")


def _rf_yolo_export(root: Path):
    (root / "train/images").mkdir(parents=True)
    (root / "train/labels").mkdir(parents=True)
    (root / "valid/images").mkdir(parents=True)
    (root / "valid/labels").mkdir(parents=True)
    img = np.full((32, 32, 3), 220, np.uint8)
    img[8:20, 8:20] = 90
    Image.fromarray(img).save(root / "train/images/x_jpg.rf.123.jpg")
    (root / "train/labels/x_jpg.rf.123.txt").write_text("1 0.4 0.4 0.4 0.4\n")
    img2 = img.copy()
    img2[0:5, 25:30] = 10
    Image.fromarray(img2).save(root / "valid/images/y.jpg")
    (root / "valid/labels/y.txt").write_text("0 0.4 0.4 0.4 0.4\n")
    (root / "data.yaml").write_text("nc: 3\nnames: ['Platelets', 'RBC', 'WBC']\n")


def test_roboflow_zip_yolo_and_coco(tmp_path, cli):
    exp = tmp_path / "exp"
    _rf_yolo_export(exp)
    z = tmp_path / "export.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in exp.rglob("*"):
            if p.is_file():
                zf.write(p, p.relative_to(exp))
    r = cli("convert", "roboflow", z, "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "o/summary.json").read_text())
    assert s["images"] == {"train": 1, "val": 1}  # Roboflow's "valid" -> val
    assert (tmp_path / "o/labels/train").glob("*.txt")
    line = next((tmp_path / "o/labels/train").glob("*.txt")).read_text().split()
    assert line[0] == "0"  # Roboflow class 1 'RBC' -> our rbc (0)

    coco = tmp_path / "coco"
    (coco / "train").mkdir(parents=True)
    shutil.copy(exp / "train/images/x_jpg.rf.123.jpg", coco / "train/a.jpg")
    (coco / "train/_annotations.coco.json").write_text(json.dumps({
        "images": [{"id": 0, "file_name": "a.jpg", "width": 32, "height": 32}],
        "categories": [{"id": 0, "name": "cells"}, {"id": 1, "name": "Platelets"}, {"id": 2, "name": "RBC"}, {"id": 3, "name": "WBC"}],
        "annotations": [{"id": 1, "image_id": 0, "category_id": 3, "bbox": [8, 8, 12, 12], "area": 144, "iscrowd": 0}],
    }))
    r = cli("convert", "roboflow", coco, "--out", tmp_path / "o2")
    assert r.returncode == 0, r.stderr
    line = next((tmp_path / "o2/labels/train").glob("*.txt")).read_text().split()
    assert line[0] == "1" and abs(float(line[1]) - 14 / 32) < 1e-3


def test_roboflow_zip_leaves_nothing_for_the_next_export(tmp_path, cli):
    exp = tmp_path / "exp"
    _rf_yolo_export(exp)
    zips = []
    for name, keep in (("two.zip", None), ("one.zip", "train")):
        z = tmp_path / name
        with zipfile.ZipFile(z, "w") as zf:
            for p in exp.rglob("*"):
                if p.is_file() and (keep is None or p.relative_to(exp).parts[0] in (keep, "data.yaml")):
                    zf.write(p, p.relative_to(exp))
        zips.append(z)
    out = tmp_path / "o"
    assert cli("convert", "roboflow", zips[0], "--out", out).returncode == 0
    r = cli("convert", "roboflow", zips[1], "--out", out)  # the same OUT again, a smaller export
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "summary.json").read_text())["images"] == {"train": 1}  # not 2: no stale files
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".") or "extract" in p.name) == []


def test_convert_never_replaces_a_folder_it_did_not_write(tmp_path, cli):
    src = tmp_path / "src"
    _rf_yolo_export(src)
    mine = tmp_path / "research"
    mine.mkdir()
    (mine / "thesis.docx").write_text("years of work")
    r = cli("convert", "roboflow", src, "--out", mine)
    assert r.returncode == 2 and "not a set converted by bccdet" in r.stderr
    assert (mine / "thesis.docx").read_text() == "years of work"
    for out in (src, src / "converted"):  # the input itself, or a folder inside it
        r = cli("convert", "roboflow", src, "--out", out)
        assert r.returncode == 2 and "overlaps the input" in r.stderr, r.stderr
    assert (src / "data.yaml").exists() and not (src / "converted").exists()
    f = tmp_path / "afile"
    f.write_text("x")
    r = cli("convert", "roboflow", src, "--out", f)
    assert r.returncode == 2 and "is a file" in r.stderr and f.read_text() == "x"
    out = tmp_path / "o"  # an earlier conversion is replaced, as documented
    assert cli("convert", "roboflow", src, "--out", out).returncode == 0
    assert cli("convert", "roboflow", src, "--out", out).returncode == 0


def test_zip_slip_refused(tmp_path):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../../escape.txt", "pwned")
    with pytest.raises(ConversionError, match="escapes the target"):
        safe_extract(z, tmp_path / "t")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path.parent / "escape.txt").exists()
    z2 = tmp_path / "abs.zip"
    with zipfile.ZipFile(z2, "w") as zf:
        zf.writestr("/etc/evil.txt", "x")
    with pytest.raises(ConversionError):
        safe_extract(z2, tmp_path / "t2")


def test_folder_classes_mapped(tmp_path, cli):
    root = tmp_path / "kaggle"
    img = np.full((24, 24, 3), 180, np.uint8)
    for k, (cls, n) in enumerate((("NEUTROPHIL", 10), ("EOSINOPHIL", 10), ("LYMPHOCYTE", 10), ("ALIEN", 2))):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            img[0, 0, 0] = i + 20 * k  # distinct bytes per file
            Image.fromarray(img).save(root / cls / f"{i}.png")
    r = cli("convert", "folder", root, "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "o/train").iterdir()) == ["eosinophil", "lymphocyte", "neutrophil"]
    s = json.loads((tmp_path / "o/summary.json").read_text())
    assert sum(1 for d in s["dropped"] if "unknown class folder" in d["reason"]) == 2
    assert s["images"] == {"train": 18, "val": 6, "test": 6}  # 10 per class: 6/2/2


# ---------------------------------------------------------------------- corrections
def _yolo_set(root: Path) -> Path:
    for sp in ("train", "test"):
        (root / "images" / sp).mkdir(parents=True)
        (root / "labels" / sp).mkdir(parents=True)
    (root / "data.yaml").write_text("names: {0: rbc, 1: wbc, 2: platelet}\n")
    img = np.full((100, 200, 3), 215, np.uint8)
    Image.fromarray(img).save(root / "images/test/src__f1.png")
    img[0, :3] = 0
    Image.fromarray(img).save(root / "images/train/src__f2.png")
    # f1: an RBC box (20,10)-(60,50) and a "platelet" box (100,20)-(160,80)
    (root / "labels/test/src__f1.txt").write_text("0 0.2 0.3 0.2 0.4\n2 0.65 0.5 0.3 0.6\n")
    (root / "labels/train/src__f2.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    return root


def test_convert_fix_applies_every_edit(tmp_path, cli):
    src = _yolo_set(tmp_path / "s")
    corr = tmp_path / "c.csv"
    corr.write_text(
        "# reviewed\nsplit,image,action,kind,x1,y1,x2,y2,reason\n"
        "test,f1,relabel,wbc,102,18,158,82,platelet is a WBC\n"
        "test,src__f1.jpg,add,rbc,150,5,190,45,missing RBC\n"  # a file name (as in suspects.csv) works too
        "test,f1,delete,,20,10,60,50,not a cell\n"
    )
    r = cli("convert", "fix", src, "--corrections", corr, "--out", tmp_path / "o", "--task", "detect")
    assert r.returncode == 0, r.stderr
    lines = [ln.split() for ln in (tmp_path / "o/labels/test/src__f1.txt").read_text().split("\n") if ln.strip()]
    assert [ln[0] for ln in lines] == ["1", "0"]  # relabelled platelet -> wbc, RBC deleted, new RBC appended
    np.testing.assert_allclose([float(v) for v in lines[1][1:]], [0.85, 0.25, 0.2, 0.4], atol=1e-4)
    assert (tmp_path / "o/labels/train/src__f2.txt").read_text().startswith("0 0.5")  # untouched
    notes = json.loads((tmp_path / "o/summary.json").read_text())["notes"]
    assert sum("relabelled platelet -> wbc" in n or "added rbc" in n or "deleted rbc" in n for n in notes) == 3
    # segment output: the added box gets a polygon (ellipse), the others keep theirs
    r = cli("convert", "fix", src, "--corrections", corr, "--out", tmp_path / "seg")
    assert r.returncode == 0, r.stderr
    seg = [ln.split() for ln in (tmp_path / "seg/labels/test/src__f1.txt").read_text().split("\n") if ln.strip()]
    assert len(seg) == 2 and all(len(ln) > 10 for ln in seg)


def test_convert_fix_refuses_edits_that_do_not_apply(tmp_path, cli):
    src = _yolo_set(tmp_path / "s")
    bad = {
        "no image": "test,nope,add,wbc,1,1,9,9,x\n",
        "no labelled box": "test,f1,delete,,0,60,10,70,x\n",  # nothing overlaps
        "not one of": "test,f1,move,wbc,1,1,9,9,x\n",
        "kind": "test,f1,add,neutrophil,1,1,9,9,x\n",
        "empty box": "test,f1,add,wbc,9,9,1,1,x\n",
    }
    for msg, row in bad.items():
        corr = tmp_path / "c.csv"
        corr.write_text("split,image,action,kind,x1,y1,x2,y2,reason\n" + row)
        r = cli("convert", "fix", src, "--corrections", corr, "--out", tmp_path / "o")
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (msg, r.stderr)
        assert not (tmp_path / "o").exists()


@pytest.mark.data
def test_bccd_test_corrections_name_real_label_misses(bccd):
    """The shipped BCCD test corrections: each image is in the published test split, and each added
    WBC is in an image whose VOC file has no WBC at all (the relabelled box is labelled Platelets)."""
    from bccdet.convert.corrections import read_corrections

    rows = read_corrections(Path(__file__).resolve().parent.parent / "datasets/bccd-test-corrections.csv")
    test = set((bccd / "ImageSets/Main/test.txt").read_text().split())
    assert len(rows) == 4
    for r in rows:
        assert r["split"] == "test" and r["image"] in test
        xml = (bccd / "Annotations" / f"{r['image']}.xml").read_text()
        assert "<name>WBC</name>" not in xml, r["image"]
        if r["action"] == "relabel":
            assert "<name>Platelets</name>" in xml


def test_duplicate_boxes_are_dropped_and_reported(data_root, tmp_path, cli):
    """TXL-PBC lists some cells twice (one training field: 17 of its 32 boxes); convert keeps each box once and
    says so in the summary, so that a box-per-cell mask set (--masks sam) holds one mask per cell."""
    stem = "c255521a08b75da09373db44e7f099c5"
    txl = data_root / "txl-pbc"
    if not (txl / "labels/train" / f"{stem}.txt").is_file():
        pytest.skip("txl-pbc (with its field c255521a...) absent")
    src = tmp_path / "txl"
    for sub in ("images/train", "labels/train"):
        (src / sub).mkdir(parents=True)
    shutil.copy(txl / "data.yaml", src)
    shutil.copy(next((txl / "images/train").glob(f"{stem}.*")), src / "images/train")
    lines = (txl / "labels/train" / f"{stem}.txt").read_text().split("\n")
    (src / "labels/train" / f"{stem}.txt").write_text("\n".join(lines))
    src_rows = [ln for ln in lines if ln.strip()]
    unique = len(set(tuple(ln.split()) for ln in src_rows))
    assert len(src_rows) == 32 and unique == 15
    r = cli("convert", "txl-pbc", src, "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    out = (tmp_path / f"o/labels/train/txl__{stem}.txt").read_text().split("\n")
    out = [ln for ln in out if ln.strip()]
    assert len(out) == unique == len(set(out))
    s = json.loads((tmp_path / "o/summary.json").read_text())
    assert sum(d["reason"].startswith("duplicate box") for d in s["dropped"]) == 32 - unique
