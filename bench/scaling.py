"""Cost per field against image size and number of cells, stage by stage (CPU by default).

    .venv/bin/python -m bench.scaling [--sizes 0.3,2,5,12] [--fields 3] [--families rescaled,mosaic]
                                      [--device cpu] [--plot docs/img/scaling.png]

Views of real BCCD test fields at about 0.3, 2, 5 and 12 MP (4:3, the exact sizes are in the table):

- ``rescaled``: one 640x480 field resized up (bilinear): the same cells, more pixels per cell, what a
  high-resolution camera gives at the same magnification (the detector's ``scale="auto"`` shrinks it back);
- ``mosaic``: different fields tiled side by side at their native resolution and cropped to the size: more
  cells of the same size, a wider field of view (cells grow with pixels).

``--fields`` views per size (each from other fields), means reported. Each family x size x configuration
(``detect``: refinement, classification and red-cell morphology off; ``full``: all on, as ``analyze``)
runs in its own process (a warm-up view of that size first) so that its peak RSS is its own. Prints the
machine, a table (ms per stage, totals, full / detect-only measured in the same run, peak RSS), the
log-log growth of the total against pixels and against cells (numpy polyfit), and writes a plot.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.common import REPO, bccd_stems, need_dataset, print_machine

CONFIGS = {"detect": (False, False, False), "full": (True, True, True)}
"""config -> (SAM refinement, WBC classification, red-cell morphology); full is analyze's default."""
FIELD = (640, 480)  # a BCCD field, px
KINDS = ("rbc", "wbc", "platelet")


def view_size(mp: float) -> tuple[int, int]:
    """(w, h) of a 4:3 view of about ``mp`` megapixels, sides multiples of 16 (0.3 -> a native 640x480 field)."""
    s = math.sqrt(mp * 1e6 / (FIELD[0] * FIELD[1]))
    w = max(16, round(FIELD[0] * s / 16) * 16)
    return w, w * 3 // 4


def make_view(family: str, mp: float, i: int, stems: list[str], root: Path) -> np.ndarray:
    """The ``i``-th view of ``family`` at ``mp`` MP, from the BCCD test fields ``stems`` (used in turn)."""
    import cv2

    from bccdet.io import read_image

    w, h = view_size(mp)
    field = lambda j: read_image(root / "JPEGImages" / f"{stems[j % len(stems)]}.jpg")  # noqa: E731
    if family == "rescaled":
        img = field(i)
        return img if img.shape[1::-1] == (w, h) else cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    cols, rows = math.ceil(w / FIELD[0]), math.ceil(h / FIELD[1])
    n = cols * rows  # view i uses the n fields after view i-1's: all different within a view
    tiles = [field(i * n + j) for j in range(n)]
    grid = np.concatenate([np.concatenate(tiles[r * cols:(r + 1) * cols], axis=1) for r in range(rows)], axis=0)
    return np.ascontiguousarray(grid[:h, :w])


def run_one(family: str, mp: float, config: str, n: int, device: str) -> dict:
    from bccdet.pipeline import resolve_spec

    root = need_dataset("bccd")
    stems = bccd_stems(root, "test")
    refine, classify, morph = CONFIGS[config]
    spec, _ = resolve_spec(refine=refine, classify=classify, rbc_morphology=morph, device=device)
    pipe = spec.build()
    pipe.run(make_view(family, mp, n, stems, root))  # warm-up: a view of this size not timed below
    rows, counts, scales = [], [], []
    for i in range(n):
        img = make_view(family, mp, i, stems, root)  # one view in memory at a time
        cells = pipe.run(img)
        rows.append(dict(pipe.timings))
        counts.append({k: int((cells.kind == k).sum()) for k in KINDS})
        scales.append(float(cells.meta.scale))
        del img, cells
    w, h = view_size(mp)
    stages = sorted({k for r in rows for k in r})
    return {"family": family, "mp": mp, "w": w, "h": h, "config": config, "n": n,
            "ms": {s: statistics.mean(r.get(s, 0.0) for r in rows) for s in stages},
            "cells": {k: statistics.mean(c[k] for c in counts) for k in KINDS},
            "scale": statistics.mean(scales),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def slope(x, y) -> float | None:
    """Log-log slope of ``y`` against ``x`` (None where ``x`` spans under 1.5x: the rescaled views' cells)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if (x <= 0).any() or (y <= 0).any() or x.max() < 1.5 * x.min():
        return None
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def growth(s: float | None) -> str:
    if s is None:
        return " (n/a: about constant)"
    word = ("about flat" if abs(s) < 0.15 else "falling" if s < 0 else "sublinear" if s < 0.85
            else "about linear" if s <= 1.15 else "superlinear")
    return f"^{s:.2f} ({word})"


def plot(res: dict, families: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    style = {"rescaled": "o--", "mosaic": "s-"}  # line style: family; colour: configuration or stage
    colour = dict(zip([*CONFIGS, "refine", "classify", "rbc_morphology"], [f"C{i}" for i in range(5)]))
    for fam in families:
        for cfg in CONFIGS:
            rs = sorted((r for (f, _, c), r in res.items() if f == fam and c == cfg), key=lambda r: r["mp"])
            if not rs:
                continue
            mp, tot = [r["w"] * r["h"] / 1e6 for r in rs], [r["ms"]["total"] for r in rs]
            axes[0].plot(mp, tot, style[fam], color=colour[cfg], label=f"{fam}, {cfg}")
            axes[1].plot([sum(r["cells"].values()) for r in rs], tot, style[fam], color=colour[cfg],
                         label=f"{fam}, {cfg}")
            if cfg == "full":
                for st in ("detect", "refine", "classify", "rbc_morphology"):
                    axes[2].plot(mp, [max(r["ms"].get(st, 0.0), 0.1) for r in rs], style[fam], color=colour[st],
                                 label=f"{fam}, {st} stage")
    for ax, xl, t in zip(axes, ("megapixels", "cells per view", "megapixels"),
                         ("total ms per view", "total ms per view", "full: ms per stage")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.set_title(t)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="0.3,2,5,12", help="megapixels, comma-separated")
    ap.add_argument("--fields", type=int, default=3, help="views per size (means reported)")
    ap.add_argument("--families", default="rescaled,mosaic")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--plot", default=str(REPO / "docs/img/scaling.png"))
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # family:mp:config, in a worker
    a = ap.parse_args()
    if a.one:
        fam, mp, cfg = a.one.split(":")
        print(json.dumps(run_one(fam, float(mp), cfg, a.fields, a.device)))
        return

    need_dataset("bccd")
    families = [f for f in a.families.split(",") if f]
    bad = sorted(set(families) - {"rescaled", "mosaic"})
    if bad:
        sys.exit(f"unknown families {bad}: expected rescaled, mosaic")
    sizes = [float(s) for s in a.sizes.split(",") if s]
    res = {}
    for fam in families:
        for mp in sizes:
            for cfg in CONFIGS:
                cmd = [sys.executable, "-m", "bench.scaling", "--one", f"{fam}:{mp}:{cfg}", "--fields", str(a.fields),
                       "--device", a.device]
                r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
                if r.returncode != 0:
                    print(f"{fam} {mp} MP {cfg}: skipped ({(r.stderr.strip().splitlines() or ['failed'])[-1][:120]})")
                    continue
                res[fam, mp, cfg] = json.loads(r.stdout.strip().splitlines()[-1])
    print_machine()
    from bccdet.weights import resolve

    _, dname, dsha = resolve(None, "detector")
    print(f"views: BCCD test fields, {a.fields} per size and family (means), device {a.device}, "
          f"detector {dname} ({(dsha or '')[:12]}), scale auto")
    print(f"{'family':<9}{'MP':>6}{'WxH':>11}{'rbc/wbc/plt':>14}{'scale':>6}{'detect':>8}{'refine':>8}{'classify':>9}"
          f"{'rbc':>7}{'full':>8}{'det-only':>9}{'x det':>7}{'RSS full':>9}{'RSS det':>8}")
    for fam in families:
        for mp in sizes:
            f, d = res.get((fam, mp, "full")), res.get((fam, mp, "detect"))
            r = f or d
            if r is None:
                continue
            ms = f["ms"] if f else {}
            c = r["cells"]
            ratio = f"{f['ms']['total'] / d['ms']['total']:.2f}" if f and d else "-"
            rss = lambda x: f"{x['peak_rss_mb']:.0f}M" if x else "-"  # noqa: E731
            tot = lambda x: f"{x['ms']['total']:.0f}" if x else "-"  # noqa: E731
            wh, kinds = f"{r['w']}x{r['h']}", f"{c['rbc']:.0f}/{c['wbc']:.0f}/{c['platelet']:.0f}"
            print(f"{fam:<9}{r['w'] * r['h'] / 1e6:>6.2f}{wh:>11}{kinds:>14}{r['scale']:>6.2f}"
                  f"{ms.get('detect', 0):>8.0f}{ms.get('refine', 0):>8.0f}{ms.get('classify', 0):>9.0f}"
                  f"{ms.get('rbc_morphology', 0):>7.0f}{tot(f):>8}{tot(d):>9}{ratio:>7}{rss(f):>9}{rss(d):>8}")
    print("(ms per view; scale: the detector's auto factor; x det: full / detect-only total, same run)")
    for fam in families:
        for cfg in CONFIGS:
            rs = [r for (f, _, c), r in res.items() if f == fam and c == cfg]
            if len(rs) < 2:
                continue
            tot = [r["ms"]["total"] for r in rs]
            px = slope([r["w"] * r["h"] for r in rs], tot)
            cl = slope([sum(r["cells"].values()) for r in rs], tot)
            print(f"growth, {fam} {cfg}: total ms ~ pixels{growth(px)}, ~ cells{growth(cl)}"
                  f" over {min(r['mp'] for r in rs):g}-{max(r['mp'] for r in rs):g} MP")
    if res:
        plot(res, families, Path(a.plot))


if __name__ == "__main__":
    main()
