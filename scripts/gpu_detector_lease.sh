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
export PYTHONUNBUFFERED=1 YOLO_OFFLINE=1 YOLO_CONFIG_DIR=/tmp/yolocfg
H=${HOURS:-0.11}; PY=${PY:-python3}
t0=$(date +%s)
{ nvidia-smi --query-gpu=name,memory.total --format=csv; nproc; $PY -c "import torch,cv2;print(torch.__version__,cv2.__version__)"; } > $OUT/gpu.txt 2>&1
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site gpu/det/whl/*.whl >> $OUT/gpu.txt 2>&1 || exit 3
export PYTHONPATH=/tmp/site
(cd gpu/det && $PY -m zipfile -e data.zip data/) || exit 4
echo "ready $(( $(date +%s) - t0 )) s" >> $OUT/gpu.txt
mkdir -p $OUT/logs
run() { $PY scripts/gpu_detector_lease.py "$@" verbose=True > $OUT/logs/$1.log 2>&1; echo "$1 rc $? $(( $(date +%s) - t0 )) s" >> $OUT/gpu.txt; }
run n640 yolov8n-seg.yaml gpu/det/tau100ep.pt 640 32 $H 5 threads=3 & p1=$!
run s640 yolov8s-seg.yaml none 640 32 $H 5 threads=3 & p2=$!
run n416 yolov8n-seg.yaml gpu/det/tau100ep.pt 416 32 $H 4 threads=2 & p3=$!
# A monitor that is never waited for: a second lease hung after training when a plain `wait` waited on an
# nvidia-smi that did not return.
( sleep 120; timeout 10 nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv >> $OUT/gpu.txt ) &
wait $p1 $p2 $p3
for n in n640 s640 n416; do
  d=gpu/det/runs/$n; cp $d/results.csv $OUT/logs/$n-results.csv 2>/dev/null; cp $d/args.yaml $OUT/logs/$n-args.yaml 2>/dev/null
  w=$d/weights/last.pt; [ -f $w ] && split -b 15M -d $w $OUT/$n.pt.part
done
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $OUT/logs
echo "total $(( $(date +%s) - t0 )) s" >> $OUT/gpu.txt
cat $OUT/gpu.txt; ls -la $OUT
