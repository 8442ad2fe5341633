"""The same BCCD fields scored against two label sets: BCCD's own boxes and TXL-PBC's re-labelling.

    .venv/bin/python bench/detector_label_sets.py [--detector NAME|FILE ...] [--work runs/bccd-txl-pairs]

TXL-PBC re-labelled 116 BCCD train / val fields; `datasets/build.sh` finds them by pixel hash and keeps
TXL-PBC's copy in data/merged-seg (summary.json, "dropped"). The fields whose TXL-PBC copy sits in the val
split were never trained on. This builds two YOLO sets of those same images, one with BCCD's labels and
one with TXL-PBC's, evaluates each detector on both (`evaluate detector`, its own input size, conf 0.001,
NMS IoU 0.6) and prints box mAP50 / mAP50-95 and RBC precision for each, with the label counts of all
116 re-labelled fields and the machine. Needs data/merged-seg (bash datasets/build.sh).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

KIND = {"0": "rbc", "1": "wbc", "2": "platelet"}


def _labels(img: Path) -> Path:
    return Path(str(img).replace("/images/", "/labels/")).with_suffix(".txt")


def _count(lab: Path) -> Counter:
    return Counter(KIND.get(line.split()[0], "?") for line in lab.read_text().splitlines() if line.strip())


def pairs(merged: Path) -> list[tuple[Path, Path, str]]:
    """(BCCD image, TXL-PBC copy, TXL-PBC split) for every BCCD field dropped as a TXL-PBC duplicate."""
    summ = json.loads((merged / "summary.json").read_text())
    out = []
    for d in summ.get("dropped", []):
        if not d["reason"].startswith("duplicate: same pixels as "):
            continue
        b, t = REPO / d["file"], REPO / d["reason"].split("same pixels as ", 1)[1]
        if "bccd" in b.name and "txl" in t.name and b.exists() and t.exists():
            out.append((b, t, t.parent.name))
    return out


def build(ps: list[tuple[Path, Path, str]], work: Path) -> dict[str, Path]:
    sets = {}
    for name, pick in (("BCCD labels", 0), ("TXL-PBC labels", 1)):
        root = work / ("bccd-labels" if pick == 0 else "txl-labels")
        shutil.rmtree(root, ignore_errors=True)
        (root / "images/val").mkdir(parents=True)
        (root / "labels/val").mkdir(parents=True)
        for b, t, _ in ps:
            shutil.copy(b, root / "images/val" / b.name)
            shutil.copy(_labels((b, t)[pick]), root / "labels/val" / f"{b.stem}.txt")
        (root / "data.yaml").write_text(f"path: {root.resolve()}\ntask: segment\ntrain: images/val\nval: images/val\n"
                                        "names:\n  0: rbc\n  1: wbc\n  2: platelet\n")
        sets[name] = root / "data.yaml"
    return sets


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detector", nargs="*", default=[None])
    ap.add_argument("--merged", default="data/merged-seg")
    ap.add_argument("--work", default="runs/bccd-txl-pairs")
    a = ap.parse_args()
    from machine import machine

    from bccdet.adapters.yolo import evaluate
    from bccdet.weights import resolve

    merged = REPO / a.merged
    if not (merged / "summary.json").is_file():
        sys.exit(f"{merged}/summary.json absent: run bash datasets/build.sh")
    ps = pairs(merged)
    cb, ct = Counter(), Counter()
    for b, t, _ in ps:
        cb += _count(_labels(b))
        ct += _count(_labels(t))
    held = [p for p in ps if p[2] == "val"]
    print(f"machine: {machine()}")
    print(f"{len(ps)} BCCD fields re-labelled by TXL-PBC; boxes BCCD -> TXL-PBC: "
          + ", ".join(f"{k} {cb[k]} -> {ct[k]}" for k in ("rbc", "wbc", "platelet")))
    print(f"{len(held)} of them have their TXL-PBC copy in val (never trained on): evaluated below")
    sets = build(held, REPO / a.work)
    print(f"{'detector':<26}{'labels':<16}{'mAP50':>8}{'mAP50-95':>10}{'RBC P':>8}{'RBC R':>8}{'RBC mAP50':>11}{'WBC mAP50':>11}{'PLT mAP50':>11}")
    for det in a.detector:
        w, name, _ = resolve(det, "detector")
        for lab, y in sets.items():
            r = evaluate(w, y, split="val")
            b, pc = r["box"], r["box"]["per_class"]
            print(f"{name:<26}{lab:<16}{b['mAP50']:>8.3f}{b['mAP50-95']:>10.3f}{pc['rbc']['precision']:>8.3f}"
                  f"{pc['rbc']['recall']:>8.3f}{pc['rbc']['mAP50']:>11.3f}{pc['wbc']['mAP50']:>11.3f}{pc['platelet']['mAP50']:>11.3f}")


if __name__ == "__main__":
    main()
