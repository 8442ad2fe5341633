"""``python -m bccdet.cli ...``: the same app as ``bccdet`` and ``python cli.py``."""

from . import main

main()
