#!/usr/bin/env bash
# Rebuild every training set into data/ (see datasets/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
D="${BCCDET_DATA:-../shared/datasets}"
PY=.venv/bin/python
$PY cli.py convert bccd "$D/bccd" --out data/bccd-seg --task segment
$PY cli.py convert txl-pbc "$D/txl-pbc" --out data/txl-seg --task segment
$PY cli.py convert merge data/txl-seg data/bccd-seg --out data/merged-seg --task segment
$PY cli.py convert pbc "$D/pbc" --out data/pbc-cls --seed 0
$PY cli.py convert deepapl "$D/deepapl" --out data/deepapl-cls --seed 0
$PY cli.py convert fix data/bccd-seg --corrections datasets/bccd-test-corrections.csv --out data/bccd-seg-fixed
