#!/bin/bash
# The GPU lease of 2026-11-26 (stop 19): do SAM-derived mask labels help the detector when its box targets stay
# the labelled boxes? Three YOLOv8n-seg runs at 640 px side by side on one GPU, each on ultralytics' time budget
# (HOURS, default 0.125 = 7.5 min):
#   ell    the shipped recipe on the ellipse labels (data/merged-seg), from the tau-fibrils backbone: the control
#   samk   the same on SAM masks (data/merged-seg-sam: `convert ... --masks sam`, then `convert merge`), box
#          targets kept from the labelled boxes (`train detector --box-labels data/merged-seg`)
#   ftsamk bccdet-yolov8n-seg640 fine-tuned whole on the SAM masks, box targets kept, SGD lr0 0.002 (ultralytics'
#          optimizer=auto would ignore lr0 and pick SGD 0.01 for a 1000-epoch time-budgeted run)
# Without --box-labels ultralytics takes each box target from its polygon, and SAM's outlines stray from the
# labelled boxes (their boxes score mAP50-95 0.42 on BCCD test against the labels): the prepared plan of stop 18
# (sam, ftsam on polygon boxes) was changed for this reason.
# Compare with `evaluate detector` (box: does anything move; mask: against both label sets) and, the measure that
# needs no SAM, white-cell masks against wbc-seg's true masks: `bench/sam.py --modes "" --no-timing --detector FILE`
# (seg640: its own WBC masks IoU 0.866; the default, its mask head re-fitted on CPU to --masks sam-wbc labels:
# 0.898; the same re-fit on all-SAM labels: 0.926).
#
# Before the call, in the checkout (the SAM labels take about 25 min on the 2-core CPU: log runs/sam-labels.log):
#   D=../shared/datasets
#   .venv/bin/python cli.py convert bccd $D/bccd --out data/bccd-seg-sam --task segment --masks sam
#   .venv/bin/python cli.py convert txl-pbc $D/txl-pbc --out data/txl-seg-sam --task segment --masks sam
#   .venv/bin/python cli.py convert merge data/txl-seg-sam data/bccd-seg-sam --out data/merged-seg-sam --task segment
#   (cd data && zip -q -r -0 ../gpu/det/data-sam.zip merged-seg/images/train merged-seg/images/val \
#      && zip -q -r -9 ../gpu/det/data-sam.zip merged-seg/labels/train merged-seg/labels/val \
#         merged-seg-sam/labels/train merged-seg-sam/labels/val -x '*.cache')
#   cp .venv/lib/python3.11/site-packages/tau_fibrils_yolo/model/100ep.pt gpu/det/tau100ep.pt
#   .venv/bin/pip download --no-deps ultralytics==8.4.190 -d gpu/det/whl
# and carry gpu/det/data-sam.zip (48 MB), gpu/det/tau100ep.pt and gpu/det/whl; of the tracked weights keep only
# weights/bccdet-yolov8n-seg640.pt in the working tree (move the others aside for the call and back after it):
# 64 MB in all, just under the 64 MiB limit.
# Writes $OUT/NAME.pt.partNN (split at 15 MB), the logs and results.csv files in $OUT/logs.tgz.
cd "$(dirname "$0")/.."
. scripts/gpu_lease_lib.sh
H=${HOURS:-0.125}
lease_setup_sam
B=gpu/det/data/merged-seg
DET_DATA=$B run ell yolov8n-seg.yaml gpu/det/tau100ep.pt 640 32 $H 5 threads=5 & p1=$!
DET_DATA=gpu/det/data/merged-seg-sam DET_BOXES=$B run samk yolov8n-seg.yaml gpu/det/tau100ep.pt 640 32 $H 5 threads=5 & p2=$!
DET_DATA=gpu/det/data/merged-seg-sam DET_BOXES=$B run ftsamk weights/bccdet-yolov8n-seg640.pt none 640 32 $H 4 \
  threads=4 optimizer=SGD lr0=0.002 warmup_epochs=0 & p3=$!
lease_monitor
wait $p1 $p2 $p3
lease_collect ell samk ftsamk
