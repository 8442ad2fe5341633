#!/bin/bash
# The GPU lease of 2026-11-26 (weights/bccdet-yolov8n-seg640.md): three YOLOv8-seg runs side by side on one
# H200, each on ultralytics' time budget (HOURS, default 0.11 = 6.6 min): n at 640 px and n at 416 px from the
# tau-fibrils backbone, s at 640 px from scratch. GPU 98 % busy, load 15.9 on 16 cores: about 7.5 s an epoch each,
# 53 epochs.
#
# Before the call, in the checkout:
#   (cd data && zip -q -r -0 ../gpu/det/data.zip merged-seg/images/train merged-seg/images/val \
#      && zip -q -r -9 ../gpu/det/data.zip merged-seg/labels/train merged-seg/labels/val -x '*.cache')   # 45 MB
#   cp .venv/lib/python3.11/site-packages/tau_fibrils_yolo/model/100ep.pt gpu/det/tau100ep.pt
#   .venv/bin/pip download --no-deps ultralytics==8.4.190 -d gpu/det/whl
# and carry gpu/det/data.zip, gpu/det/tau100ep.pt and gpu/det/whl (the tracked weights must be left out of the
# working tree for the 64 MiB limit: git rm --cached, then git reset). Writes $OUT/NAME.pt.partNN (split at 15 MB),
# the logs and results.csv files in $OUT/logs.tgz.
cd "$(dirname "$0")/.."
. scripts/gpu_lease_lib.sh
lease_setup data.zip
echo "ready $(( $(date +%s) - t0 )) s" >> $OUT/gpu.txt
run n640 yolov8n-seg.yaml gpu/det/tau100ep.pt 640 32 $H 5 threads=3 & p1=$!
run s640 yolov8s-seg.yaml none 640 32 $H 5 threads=3 & p2=$!
run n416 yolov8n-seg.yaml gpu/det/tau100ep.pt 416 32 $H 4 threads=2 & p3=$!
lease_monitor
wait $p1 $p2 $p3
lease_collect n640 s640 n416
