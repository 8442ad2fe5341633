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


def _doc_files() -> list[Path]:
    return [*sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "weights").glob("*.md")), ROOT / "README.md"]


def test_quoted_benchmarks_and_scripts_exist():
    """Every `python -m bench.X` / `tools.X` and every scripts/ file the docs quote exists; a bench/ script that
    no longer exists is quoted only with the commit that still has it (docs/experiments.md)."""
    import re

    missing = []
    commit = re.compile(r"`[0-9a-f]{7,40}`")
    for doc in _doc_files():
        text = doc.read_text(encoding="utf-8")
        for m in re.finditer(r"python -m (bench|tools)\.([a-z0-9_]+)\b", text):
            if not (ROOT / m.group(1) / f"{m.group(2)}.py").is_file():
                missing.append(f"{doc.name}: {m.group()}")
        for m in re.finditer(r"\b(?:bench|tools|scripts)/[a-z0-9_.-]+\.(?:py|sh)\b", text):
            # the commit follows the mention, or (docs/experiments.md) closes the entry it is in
            end = text.find("\n#", m.end()) if doc.name == "experiments.md" else m.end() + 200
            if not (ROOT / m.group()).is_file() and not commit.search(text[m.end():end if end > 0 else None]):
                missing.append(f"{doc.name}: {m.group()} (gone, and no commit that has it)")
    assert not missing, "\n".join(missing)


def test_bench_is_a_package_without_path_hacks():
    """bench/ and tools/ run as `python -m bench.X` from the repository root: no sys.path edits."""
    for folder in ("bench", "tools"):
        assert (ROOT / folder / "__init__.py").is_file()
        for f in (ROOT / folder).glob("*.py"):
            assert "sys.path.insert" not in f.read_text(encoding="utf-8"), f
