#!/usr/bin/env bash
# The detector's training set with SAM white-cell masks (weights/bccdet-yolov8n-seg640-samwbc.md): the boxes and
# splits of data/merged-seg, with `--masks sam-wbc` (LiteMedSAM on every box, its mask kept for white cells,
# inscribed ellipses for the rest). ~25 min on a 2-core CPU; converts from the sources itself.
set -euo pipefail
cd "$(dirname "$0")/.."
D="${BCCDET_DATA:-../shared/datasets}"
PY=.venv/bin/python
$PY cli.py convert bccd "$D/bccd" --out data/bccd-seg-samwbc --task segment --masks sam-wbc
$PY cli.py convert txl-pbc "$D/txl-pbc" --out data/txl-seg-samwbc --task segment --masks sam-wbc
$PY cli.py convert merge data/txl-seg-samwbc data/bccd-seg-samwbc --out data/merged-seg-samwbc --task segment
