#!/usr/bin/env python
"""Thin shim: ``python cli.py ...`` runs the same typer app as the installed ``bccdet`` command."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bccdet.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
