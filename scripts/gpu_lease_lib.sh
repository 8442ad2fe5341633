# Shared steps of the detector GPU lease scripts (sourced by scripts/gpu_detector_lease.sh and
# scripts/gpu_detector_sam_lease.sh; run from the repository root with $OUT set by the device tool).
export PYTHONUNBUFFERED=1 YOLO_OFFLINE=1 YOLO_CONFIG_DIR=/tmp/yolocfg
H=${HOURS:-0.11}; PY=${PY:-python3}
t0=$(date +%s)

# lease_setup ZIP: machine facts, ultralytics from the carried wheel, the carried data zip unpacked in gpu/det/data
lease_setup() {
  { nvidia-smi --query-gpu=name,memory.total --format=csv; nproc; $PY -c "import torch,cv2;print(torch.__version__,cv2.__version__)"; } > $OUT/gpu.txt 2>&1
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site gpu/det/whl/*.whl >> $OUT/gpu.txt 2>&1 || exit 3
  export PYTHONPATH=/tmp/site
  (cd gpu/det && $PY -m zipfile -e "$1" data/) || exit 4
  mkdir -p $OUT/logs
}

# lease_setup_sam: lease_setup with the SAM-mask kit (data-sam.zip), the images shared with merged-seg-sam
lease_setup_sam() {
  lease_setup data-sam.zip
  cp -r gpu/det/data/merged-seg/images gpu/det/data/merged-seg-sam/ || exit 5
  echo "ready $(( $(date +%s) - t0 )) s" >> $OUT/gpu.txt
}

# run NAME MODEL INIT IMGSZ BATCH HOURS WORKERS [KEY=VALUE ...]: one training run (DET_DATA picks the set)
run() { $PY scripts/gpu_detector_lease.py "$@" verbose=True > $OUT/logs/$1.log 2>&1; echo "$1 rc $? $(( $(date +%s) - t0 )) s" >> $OUT/gpu.txt; }

# lease_monitor: one GPU sample two minutes in, never waited for (a plain `wait` once hung on an nvidia-smi
# that did not return)
lease_monitor() { ( sleep 120; timeout 10 nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv >> $OUT/gpu.txt ) & }

# lease_collect NAME...: each run's results.csv, args.yaml and last.pt (split at 15 MB) into $OUT, logs in logs.tgz
lease_collect() {
  for n in "$@"; do
    d=gpu/det/runs/$n; cp $d/results.csv $OUT/logs/$n-results.csv 2>/dev/null; cp $d/args.yaml $OUT/logs/$n-args.yaml 2>/dev/null
    w=$d/weights/last.pt; [ -f $w ] && split -b 15M -d $w $OUT/$n.pt.part
  done
  tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $OUT/logs
  echo "total $(( $(date +%s) - t0 )) s" >> $OUT/gpu.txt
  cat $OUT/gpu.txt; ls -la $OUT
}
