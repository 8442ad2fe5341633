#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite. CI (.ci/run) runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export YOLO_OFFLINE=1 FIFTYONE_DO_NOT_TRACK=true
exec .venv/bin/python -m pytest -q --timeout=600 "$@"
