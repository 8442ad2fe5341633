"""Benchmark the analyze pipeline on the BCCD test fields (CPU by default).

    .venv/bin/python -m bench.pipeline [--n 72] [--detector NAME|FILE] [--device cpu] [--border 16] [--fields bccd|chula]
                                       [--runtimes auto|torch,openvino]

Each configuration (detect only; + SAM refinement; + classification; + red-cell morphology; all, as
`analyze` runs by default) runs in its own process so
that its peak RSS is its own. Prints ms per field per stage, the whole, peak RSS, and the ratio of
each configuration to detect-only measured in the same run. ``--runtimes torch,openvino`` runs every
configuration under each runtime (detector and SAM encoder), the ratio to the same runtime's detect-only.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, bccd_stems, need_dataset, print_machine

CONFIGS = {"detect": (False, False, False), "detect+refine": (True, False, False), "detect+classify": (False, True, False),
           "detect+rbc": (False, False, True), "full": (True, True, False), "full+rbc": (True, True, True)}
"""config -> (SAM refinement, WBC classification, red-cell morphology); full+rbc is analyze's default."""


def _fields(n: int, source: str = "bccd") -> list[Path]:
    if source == "chula":  # another lab's camera, ~100-150 red cells a field (docs/rbc.md)
        c = need_dataset("chula-rbc-12")
        return sorted((c / "images").glob("*.webp"), key=lambda p: int(p.stem))[:n]
    b = need_dataset("bccd")
    return [b / "JPEGImages" / f"{s}.jpg" for s in bccd_stems(b, "test", n)]


def run_one(config: str, n: int, detector: str | None, device: str, border: int | None = None,
            source: str = "bccd", runtime: str = "auto") -> dict:
    from bccdet.io import read_image
    from bccdet.pipeline import resolve_spec

    refine, classify, morph = CONFIGS[config]
    kw = {} if border is None else {"border": border}
    # the pipeline as analyze builds it (bccdet.pipeline), with the configuration's stages
    spec, _ = resolve_spec(detector=detector, refine=refine, classify=classify, rbc_morphology=morph, device=device,
                           detector_options=kw, runtime=runtime)
    pipe = spec.build()
    fields = _fields(n, source)
    pipe.run(read_image(fields[0]), fields[0])  # warm-up
    rows, n_rbc = [], 0
    t0 = time.perf_counter()
    for f in fields:
        img = read_image(f)
        cells = pipe.run(img, f)
        n_rbc += int((cells.kind == "rbc").sum())
        rows.append(dict(pipe.timings))
    wall = time.perf_counter() - t0
    stages = sorted({k for r in rows for k in r})
    return {
        "config": config, "n": len(fields), "rbc_per_field": n_rbc / max(1, len(fields)),
        "ms": {s: statistics.mean(r.get(s, 0.0) for r in rows) for s in stages},
        "wall_ms_per_field": wall / len(fields) * 1e3,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": _threads(),
        "sam_precision": getattr(pipe.refiner, "precision", None),
        "runtime": f"{spec.runtime}:{spec.detector['precision']}",
    }


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=72)
    ap.add_argument("--detector", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--configs", default="detect,detect+refine,detect+classify,detect+rbc,full,full+rbc")
    ap.add_argument("--border", type=int, default=None, help="detector grey border, network px (default BORDER)")
    ap.add_argument("--fields", default="bccd", choices=("bccd", "chula"), help="BCCD test fields or Chula RBC-12 fields")
    ap.add_argument("--runtimes", default="auto", help="comma list: auto, torch, openvino")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one, a.n, a.detector, a.device, a.border, a.fields, a.runtimes)))
        return

    results = []
    for rt, cfg in ((rt, cfg) for rt in a.runtimes.split(",") for cfg in a.configs.split(",")):
        cmd = [sys.executable, "-m", "bench.pipeline", "--one", cfg, "--n", str(a.n), "--device", a.device, "--fields", a.fields,
               "--runtimes", rt]
        if a.detector:
            cmd += ["--detector", a.detector]
        if a.border is not None:
            cmd += ["--border", str(a.border)]
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{cfg}: skipped ({(r.stderr.strip().splitlines() or ['failed'])[-1][:120]})")
            continue
        results.append(json.loads(r.stdout.strip().splitlines()[-1]))
    print_machine()
    prec = sorted({r["sam_precision"] for r in results if r.get("sam_precision")})
    from bccdet.weights import resolve

    _, dname, dsha = resolve(a.detector, "detector")
    from bccdet.adapters.yolo import BORDER

    print(f"detector: {dname} ({(dsha or '')[:12]}), grey border {BORDER if a.border is None else a.border} px")
    what = "BCCD test" if a.fields == "bccd" else "Chula RBC-12 (another lab)"
    rbc = max((r.get("rbc_per_field", 0) for r in results), default=0)
    print(f"fields: {what}, {a.n} x 640x480 ({rbc:.0f} red cells a field), device {a.device}; "
          f"SAM encoder {', '.join(prec) or '-'}")
    base = {r["runtime"]: r["wall_ms_per_field"] for r in results if r["config"] == "detect"}
    head = (f"{'config':<17}{'runtime':>15}{'detect':>9}{'refine':>9}{'classify':>10}{'rbc morph':>10}{'total':>9}{'wall/field':>12}"
            f"{'peak RSS':>10}{'x detect':>10}{'threads':>9}")
    print(head)
    for r in results:
        ms = r["ms"]
        b = base.get(r["runtime"])
        ratio = f"{r['wall_ms_per_field'] / b:.2f}" if b else "-"
        print(f"{r['config']:<17}{r['runtime']:>15}{ms.get('detect', 0):>9.0f}{ms.get('refine', 0):>9.0f}{ms.get('classify', 0):>10.0f}"
              f"{ms.get('rbc_morphology', 0):>10.0f}"
              f"{ms.get('total', 0):>9.0f}{r['wall_ms_per_field']:>12.0f}{r['peak_rss_mb']:>9.0f}M{ratio:>10}{r.get('torch_threads', '-'):>9}")


if __name__ == "__main__":
    main()
