"""The docs: docs/cli.md is up to date with the CLI, and the mkdocs site builds without warnings."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_cli_reference_is_up_to_date():
    proc = subprocess.run(
        [sys.executable, "docs/gen_cli.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"docs/cli.md is stale: run python docs/gen_cli.py\n{proc.stdout}{proc.stderr}"


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = site / "cli" / "index.html"
    assert page.exists()
    assert "convert bccd" in page.read_text(encoding="utf-8")
