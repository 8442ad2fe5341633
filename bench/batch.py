"""Benchmark `bccdet batch` against `bccdet analyze` on BCCD fields (CPU by default).

    .venv/bin/python -m bench.batch --detector FILE|NAME [--n 20,200] [--slide-size 10] [--workers 1]
                                    [--ray] [--kill-fields 40 --kills 5]

For each N (fields, grouped into slides of ``--slide-size``), in separate processes run one after the
other: ``analyze`` on the N fields, then ``batch`` (local, each ``--workers``; Ray with ``--ray``). Each
row: wall time, fields per minute, ms per field, peak RSS of the process tree (sampled every 0.1 s; for
Ray this includes the Ray daemons), and the ratio to ``analyze`` of the same N in the same run (batch
overhead). With ``--kill-fields``: a batch of that many fields is killed with SIGKILL at ``--kills``
random moments, resumed each time, and its final outputs compared with an uninterrupted run's.

Both commands load the model once, so the ratio measures what batch adds per field (planning, hashing,
manifest and state writes, slide summaries, aggregates). The CPU may be shared: compare rows of the
same run only.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bccdet.batch import complete_field_dirs, output_snapshot  # light: no ML imports
from bench.common import REPO, need_dataset, print_machine


def _fields(n: int) -> list[Path]:
    files = sorted((need_dataset("bccd") / "JPEGImages").glob("*.jpg"))
    if n > len(files):
        sys.exit(f"only {len(files)} BCCD fields; ask for at most that many")
    return files[:n]


def _slides(n: int, size: int, root: Path) -> list[Path]:
    """N fields as slide folders of ``size`` fields (copies: every field distinct)."""
    out = []
    for i, f in enumerate(_fields(n)):
        d = root / f"slide{i // size:03d}"
        if d not in out:
            d.mkdir(parents=True, exist_ok=True)
            out.append(d)
        shutil.copy(f, d / f.name)
    return out


def _measure(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``; wall seconds and the peak RSS of its process tree (MiB)."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.1)
    err = proc.stderr.read()
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "peak_mb": peak / 2**20, "rc": proc.returncode, "err": err[-500:]}


def _py() -> list[str]:
    return [sys.executable]


def _batch_cmd(inputs, out, detector, *extra) -> list[str]:
    return [*_py(), "-m", "bccdet.cli", "batch", *map(str, inputs), "--out", str(out), "--detector", detector,
            "--no-refine", "--no-classify", "--no-progress", *extra]


def kill_test(n: int, kills: int, size: int, detector: str, tmp: Path, seed: int = 0) -> dict:
    slides = _slides(n, size, tmp / "kill-in")
    ref = _measure(_batch_cmd(slides, tmp / "kill-ref", detector))
    if ref["rc"] != 0:
        raise SystemExit(f"reference batch failed: {ref['err']}")
    per_field = ref["wall_s"] / n
    rnd = random.Random(seed)
    out = tmp / "kill-out"
    done_at_kill = []
    for k in range(kills):
        before = len(complete_field_dirs(out))
        proc = subprocess.Popen(_batch_cmd(slides, out, detector, *(["--resume"] if k else [])), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if k == 0:
            time.sleep(rnd.uniform(0.5, 4.0))  # during start-up, planning or the first field
        else:  # once this run has made progress, somewhere in the next two fields
            while proc.poll() is None and len(complete_field_dirs(out)) <= before:
                time.sleep(0.02)
            time.sleep(rnd.uniform(0.0, 2.0 * per_field))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done_at_kill.append(len(complete_field_dirs(out)))
    fin = subprocess.run(_batch_cmd(slides, out, detector, "--resume"), cwd=REPO, capture_output=True, text=True)
    same = fin.returncode == 0 and output_snapshot(out) == output_snapshot(tmp / "kill-ref")
    return {"fields": n, "kills": kills, "fields_done_at_each_kill": done_at_kill, "final_rc": fin.returncode,
            "equal_to_uninterrupted": same}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--detector", required=True, help="Detector name or .pt file.")
    ap.add_argument("--n", default="20,200", help="Comma-separated field counts ('' for none: kill test only).")
    ap.add_argument("--slide-size", type=int, default=10)
    ap.add_argument("--workers", default="1", help="Comma-separated local worker counts.")
    ap.add_argument("--ray", action="store_true", help="Also run --backend ray (local Ray, --ray-workers actors).")
    ap.add_argument("--ray-workers", type=int, default=2)
    ap.add_argument("--kill-fields", type=int, default=0, help="Run the kill test on this many fields (>= 40).")
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="Keep the temporary folders.")
    a = ap.parse_args()

    from bccdet.weights import resolve

    det = str(resolve(a.detector, "detector")[0])
    tmp = Path(tempfile.mkdtemp(prefix="bccdet-bench-batch-"))
    rows = []
    try:
        for n in [int(x) for x in a.n.split(",") if x]:
            slides = _slides(n, a.slide_size, tmp / f"in{n}")
            files = sorted(f for d in slides for f in d.iterdir())
            r = _measure([*_py(), str(REPO / "cli.py"), "analyze", *map(str, files), "--out", str(tmp / f"an{n}"),
                          "--detector", det, "--no-refine", "--no-classify"])
            rows.append({"n": n, "what": "analyze", **r})
            base = r["wall_s"]
            for w in [int(x) for x in a.workers.split(",")]:
                r = _measure(_batch_cmd(slides, tmp / f"b{n}w{w}", det, "--workers", str(w)))
                rows.append({"n": n, "what": f"batch local w={w}", **r, "ratio": r["wall_s"] / base})
            if a.ray:
                r = _measure(_batch_cmd(slides, tmp / f"b{n}ray", det, "--backend", "ray", "--workers", str(a.ray_workers)))
                rows.append({"n": n, "what": f"batch ray w={a.ray_workers}", **r, "ratio": r["wall_s"] / base})
        kill = kill_test(a.kill_fields, a.kills, a.slide_size, det, tmp) if a.kill_fields else None
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    print_machine()
    print(f"fields: BCCD 640x480 JPG, slides of {a.slide_size}; detector {Path(det).name}; detect only, CPU")
    if rows:
        print(f"{'N':>5}  {'run':<18}{'wall s':>8}{'fields/min':>12}{'ms/field':>10}{'peak RSS':>10}{'x analyze':>11}  rc")
    for r in rows:
        ratio = f"{r['ratio']:.3f}" if "ratio" in r else "1.000"
        print(f"{r['n']:>5}  {r['what']:<18}{r['wall_s']:>8.1f}{r['n'] / r['wall_s'] * 60:>12.1f}"
              f"{r['wall_s'] / r['n'] * 1e3:>10.0f}{r['peak_mb']:>9.0f}M{ratio:>11}  {r['rc']}")
        if r["rc"] not in (0,):
            print(f"       stderr: {r['err'].strip().splitlines()[-1] if r['err'].strip() else ''}")
    ns = sorted({r["n"] for r in rows})
    if len(ns) >= 2:
        for what in sorted({r["what"] for r in rows}):
            lo = next((r for r in rows if r["n"] == ns[0] and r["what"] == what), None)
            hi = next((r for r in rows if r["n"] == ns[-1] and r["what"] == what), None)
            if lo and hi:
                print(f"peak RSS {what}: N={ns[-1]} / N={ns[0]} = {hi['peak_mb'] / lo['peak_mb']:.2f}")
    if len(ns) >= 2:  # the cost of one more field, start-up and fixed costs (planning, aggregates) removed
        base = None
        for what in sorted({r["what"] for r in rows}, key=lambda w: (w != "analyze", w)):
            lo = next((r for r in rows if r["n"] == ns[0] and r["what"] == what), None)
            hi = next((r for r in rows if r["n"] == ns[-1] and r["what"] == what), None)
            if lo and hi:
                ms = (hi["wall_s"] - lo["wall_s"]) / (ns[-1] - ns[0]) * 1e3
                base = ms if what == "analyze" else base
                ratio = f" = {ms / base:.3f} x analyze" if base else ""
                print(f"marginal ms/field {what} (N={ns[0]} -> {ns[-1]}): {ms:.0f}{ratio}")
    if kill:
        print(f"kill test: {kill['fields']} fields, kill -9 at {kill['kills']} random moments "
              f"(fields complete at each kill: {kill['fields_done_at_each_kill']}), resumed each time: "
              f"final exit {kill['final_rc']}, outputs equal to an uninterrupted run: {kill['equal_to_uninterrupted']}")


if __name__ == "__main__":
    main()
