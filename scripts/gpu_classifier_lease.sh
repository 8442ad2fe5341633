#!/bin/bash
# The GPU lease of 2026-11-26 (weights/bccdet-effnetl0-wbc288.md, "GPU lease"): three EfficientNet-Lite0
# classifiers (288 / 320 / 384 px) trained side by side on one H200, from the ImageNet weights.
#
# Before the call, in the checkout:
#   python scripts/pack_classify_set.py --src data/pbc-cls --src data/deepapl-cls --dst gpu/data --quality 50 --val-per-set 600
#   (cd gpu && python -m zipfile -c data.zip data)          # one file: 54 MB
#   an fp16 copy of the package's ImageNet .pth at gpu/imagenet-lite0-fp16.pth (9.5 MB)
# and carry gpu/data.zip, gpu/imagenet-lite0-fp16.pth and this script. Writes $OUT/cls-{a,b,c}.pt and logs.
# Run d (288 px alone, 4.3 min, seed 1) was the same command for one model with --budget-min 4.3 --workers 12
# --threads 8. One run alone trains faster than three sharing the GPU (0.4 against 1.7-1.9 ms per image).
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
B=${BUDGET:-6.5}; BS=${BATCH:-128}; DEV=${DEVICE:-cuda}; PY=${PY:-python3}; ZIP=${ZIP:-gpu/data.zip}; W=${WORK:-gpu}
t0=$(date +%s)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; free -g | head -2
  $PY -c "import torch,torchvision,timm,PIL;print('torch',torch.__version__,'tv',torchvision.__version__,'timm',timm.__version__,'PIL',PIL.__version__, torch.cuda.is_available())"; } > $OUT/gpu.txt 2>&1
$PY -m zipfile -e $ZIP $W/ || exit 3
echo "unzipped $(( $(date +%s) - t0 )) s" >> $OUT/gpu.txt
for cfg in "a 288" "b 320" "c 384"; do set -- $cfg
  ( $PY cli.py train classifier --data $W/data/pbc-cls --data $W/data/deepapl-cls --out $W/runs/$1 \
      --device $DEV --epochs 1000 --imgsz $2 --batch $BS --lr 2e-3 --seed 0 --freeze-epochs 0 \
      --samples-per-epoch 18662 --budget-min $B --ema 0.9995 --select last --workers 5 --threads 4 \
      --imagenet gpu/imagenet-lite0-fp16.pth > $OUT/log-$1.txt 2>&1
    cp $W/runs/$1/classifier.pt $OUT/cls-$1.pt ) &
done
( sleep 150; nvidia-smi; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv >> $OUT/gpu.txt 2>&1 ) &
wait
echo "total $(( $(date +%s) - t0 )) s" >> $OUT/gpu.txt
cat $OUT/gpu.txt; tail -n 4 $OUT/log-*.txt
