"""bccdet.runtime: the glibc malloc tuning is applied by the adapters and can be switched off."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CODE = textwrap.dedent("""
    import json
    from bccdet import runtime
    print(json.dumps(runtime.tune_malloc()))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
@pytest.mark.parametrize("opt_out, expected", [("", "true"), ("1", "false")])
def test_tune_malloc_applies_unless_opted_out(opt_out, expected):
    env = {"PATH": "/usr/bin:/bin", "BCCDET_NO_MALLOPT": opt_out} if opt_out else {"PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, cwd=str(Path(__file__).resolve().parent.parent))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expected


def test_classifier_loads_with_tuning():
    """Loading a classifier applies the tuning (the flag is process-wide and idempotent)."""
    pytest.importorskip("torch")
    from bccdet import runtime
    from bccdet.adapters.classifier import CellClassifier
    from bccdet.weights import resolve

    w, name, sha = resolve(None, "classifier")
    CellClassifier(w, name=name, sha256=sha)
    assert runtime._DONE is sys.platform.startswith("linux")
    assert runtime.tune_malloc() is runtime._DONE


THREADS_CODE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from bccdet.adapters.yolo import YoloDetector
    from bccdet.types import SmearMeta
    from bccdet.weights import resolve
    before = None
    if len(sys.argv) > 1:  # as a batch worker does with its share of the cores
        import torch
        torch.set_num_threads(int(sys.argv[1]))
        before = torch.get_num_threads()
    w, name, sha = resolve(None, "detector")
    det = YoloDetector(w, name=name, sha256=sha)  # the first import of ultralytics (and, without argv, of torch)
    det(np.full((320, 320, 3), 200, np.uint8), SmearMeta(width=320, height=320))
    import torch
    print(json.dumps([before, torch.get_num_threads()]))
""")


@pytest.mark.slow
@pytest.mark.parametrize("asked", [None, 3])
def test_detector_leaves_torch_threads_as_found(asked):
    """ultralytics sets OMP_NUM_THREADS=1 on import and torch's threads to cpu_count - 1 (at most 8) on
    every predict set-up; the SAM and classifier stages after the detector must keep the process's own
    count (measured: analyze ran all stages on 1 thread of this 2-core machine)."""
    pytest.importorskip("ultralytics")
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_NUM_THREADS"}
    repo = str(Path(__file__).resolve().parent.parent)
    default = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], capture_output=True,
                             text=True, env=env, cwd=repo)
    assert default.returncode == 0, default.stderr
    r = subprocess.run([sys.executable, "-c", THREADS_CODE] + ([str(asked)] if asked else []), capture_output=True,
                       text=True, env=env, cwd=repo)
    assert r.returncode == 0, r.stderr[-2000:]
    before, after = __import__("json").loads(r.stdout.strip().splitlines()[-1])
    assert before == asked
    assert after == (asked or int(default.stdout))
