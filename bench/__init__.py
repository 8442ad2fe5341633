"""The benchmarks that are re-run. Each is a module run from the repository root:

    .venv/bin/python -m bench.pipeline --n 72
    .venv/bin/python -m bench.machine

Shared helpers (the machine record, data look-up, BCCD / wbc-seg readers, PR metrics) are in
``bench.common``. Answered one-off questions are recorded in docs/experiments.md, with the commit that
holds the script that answered them; scripts that build a shipped artifact live in ``tools/``.
"""
