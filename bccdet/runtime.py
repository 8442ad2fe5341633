"""Process-level tuning for CPU inference (no heavy imports here).

glibc serves every allocation above ``M_MMAP_THRESHOLD`` (a few MB at most by default) with a fresh
``mmap`` and gives it back with ``munmap`` when freed. A CNN forward pass on a batch of crops allocates
and frees activation buffers of tens of MB per layer, so each layer pays page faults for memory it just
returned: measured on the 2-core dev machine, the 288 px classifier ran at 25 ms per crop at batch 32 and
8.8 ms with the thresholds below (``bench/classifier.py``). Raising the mmap and trim thresholds keeps
those buffers in the heap and reuses them; the cost is that freed memory stays mapped to the process.
Measured with ``bench/pipeline.py`` (72 BCCD fields, full pipeline, same machine and session): 775 ms
per field and 2.16 GB peak RSS, against 1021 ms and 1.58 GB with ``BCCDET_NO_MALLOPT=1`` (the opt-out for
memory-tight machines). A 128 MB limit kept the RSS and lost half the speed-up, so 512 MB it is.
"""
from __future__ import annotations

import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_DONE = False


def tune_malloc(limit: int = 512 << 20) -> bool:
    """Raise glibc's mmap / trim thresholds to ``limit`` bytes once per process. False where not glibc,
    or when ``BCCDET_NO_MALLOPT`` is set."""
    global _DONE
    if _DONE:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("BCCDET_NO_MALLOPT"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, int(limit)) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, int(limit)) == 1
    except (OSError, AttributeError):
        return False
    _DONE = bool(ok)
    return _DONE
