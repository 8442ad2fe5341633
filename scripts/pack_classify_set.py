#!/usr/bin/env python
"""Re-encode converted classify sets small enough to travel to a rented GPU (used for the 320 px model).

    .venv/bin/python scripts/pack_classify_set.py --src data/pbc-cls --src data/deepapl-cls --dst gpu/data \\
        --quality 50 --val-per-set 600

Writes DST/<set>/{train,val}/<label>/<file>.webp: every training image re-encoded as WebP at
``--quality`` (the training augmentation already re-encodes 20% of crops as JPEG quality 40-90, so this
costs nothing measurable) and a random ``--val-per-set`` of each validation split (for the
per-epoch log only: the shipped model's temperature and validation figures are recomputed here on the
original images). Test splits are never copied.
"""

from __future__ import annotations

import argparse
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from bccdet.adapters.classifier import _read_split  # bccdet installed in .venv by scripts/setup.sh


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", action="append", required=True)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--quality", type=int, default=50)
    ap.add_argument("--val-per-set", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    jobs = []
    for src in a.src:
        name = Path(src).name
        for split in ("train", "val"):
            items = _read_split(Path(src), split)
            if split == "val" and len(items) > a.val_per_set:
                items = sorted(random.Random(a.seed).sample(items, a.val_per_set))
            for p, lab in items:
                jobs.append((p, Path(a.dst) / name / split / lab / (Path(p).stem + ".webp")))

    def one(job):
        src, dst = job
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.open(src).convert("RGB").save(dst, format="WEBP", quality=a.quality, method=6)
        return dst.stat().st_size

    with ThreadPoolExecutor(4) as ex:
        total = sum(ex.map(one, jobs))
    print(f"{len(jobs)} images, {total / 1e6:.1f} MB in {a.dst}")


if __name__ == "__main__":
    main()
