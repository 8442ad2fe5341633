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
