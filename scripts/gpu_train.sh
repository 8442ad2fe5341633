#!/bin/bash
# Run one or more `bccdet train ...` commands side by side on an accelerator machine (the device tool's `run`,
# from the repository root, with $OUT set to the folder that comes back). Each argument is one run,
# "NAME: TRAIN-ARGS" (the words after `cli.py`, split on spaces, no quoting inside):
#
#   UNZIP="gpu/det/data.zip:gpu/det/data" WHEELS=gpu/det/whl bash scripts/gpu_train.sh \
#     "n640: train detector --data gpu/det/data/merged-seg/data.yaml --model yolov8n-seg.yaml \
#            --init gpu/det/tau100ep.pt --imgsz 640 --batch 32 --workers 5 --threads 3 --device 0 --epochs 1000 \
#            --project gpu/det/runs --name n640 --arg time=0.11 --arg amp=True --arg cache=ram --arg val=False"
#
# Set-up, before the runs:
#   - the machine's facts (GPU, cores, memory, torch) go to $OUT/gpu.txt;
#   - WHEELS (optional): a folder of wheels (e.g. `pip download --no-deps ultralytics==8.4.190 -d gpu/det/whl`)
#     installed into /tmp/site, on PYTHONPATH (the device image has torch, not ultralytics);
#   - UNZIP (optional): space-separated ZIP:DEST pairs, each zip unpacked into DEST; every data.yaml found under
#     DEST gets its `path:` rewritten to its own folder (the set was converted on another machine), and a set
#     zipped without one (images/ and labels/ only) gets the detector sets' (segment; rbc, wbc, platelet);
#   - COPY (optional): space-separated SRC:DEST pairs copied after unzipping (e.g. images shared by two label sets:
#     "gpu/det/data/merged-seg/images:gpu/det/data/merged-seg-sam/").
# Each run is `python3 cli.py TRAIN-ARGS` with two changes to ultralytics when the image has no polars (the
# device image has none): its results.csv reader (its one use of polars while training) is replaced with the
# csv module, and its AMP check, which would download yolo26n.pt, is skipped (the run keeps amp=True).
# Logs go to $OUT/logs/NAME.log. After the runs, each run's folder (`--out DIR`, or `--project P --name N`)
# gives its results.csv / args.yaml / log.jsonl (into $OUT/logs, tarred as $OUT/logs.tgz) and its final
# weights (weights/last.pt, else classifier.pt, else last.pt), split at 15 MB as $OUT/NAME.pt.partNN
# (join with `cat NAME.pt.part* > NAME.pt`). GPU use is sampled once, two minutes in.
#
# The recipes of the shipped models trained this way are in their cards (weights/*.md, "Recipe") and in
# docs/experiments.md ("GPU lease recipes"). Carry what the command needs (data zip, init weights, wheels): the
# working tree and the carried paths must fit 64 MiB, so leave out the tracked weights the runs do not use.
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 YOLO_OFFLINE=1 YOLO_CONFIG_DIR=/tmp/yolocfg
PY=${PY:-python3}
: "${OUT:?set OUT (the device tool does)}"
[ $# -ge 1 ] || { sed -n '2,9p' "$0"; exit 2; }
t0=$(date +%s)
mkdir -p "$OUT/logs"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; free -g | head -2
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } > "$OUT/gpu.txt" 2>&1
if [ -n "$WHEELS" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$WHEELS"/*.whl \
    >> "$OUT/gpu.txt" 2>&1 || exit 3
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
for zd in $UNZIP; do
  z=${zd%%:*}; d=${zd#*:}; mkdir -p "$d"
  $PY -m zipfile -e "$z" "$d/" || exit 4
  find "$d" -name data.yaml | while read -r y; do
    sed -i "s#^path:.*#path: $(cd "$(dirname "$y")" && pwd)#" "$y"
  done
  # a detector set zipped without its data.yaml (images/ and labels/ only) gets the converted sets' one
  find "$d" -type d -path '*/images/train' | while read -r t; do
    r=$(cd "$t/../.." && pwd); [ -f "$r/data.yaml" ] && continue
    printf 'path: %s\ntask: segment\ntrain: images/train\nval: images/val\nnames:\n  0: rbc\n  1: wbc\n  2: platelet\n' "$r" > "$r/data.yaml"
  done
done
for sd in $COPY; do cp -r "${sd%%:*}" "${sd#*:}" || exit 5; done
echo "ready $(( $(date +%s) - t0 )) s" >> "$OUT/gpu.txt"

SHIM='
import csv, importlib, os, runpy, sys
try:
    if os.environ.get("NO_POLARS"):  # to try the fallback on a machine that has polars
        raise ImportError
    importlib.import_module("polars")
except ImportError:
    sys.modules["polars"] = None
    try:
        from bccdet.adapters.yolo import setup_offline

        setup_offline()
        import ultralytics.engine.trainer as T
    except ImportError:  # no ultralytics: a classifier run
        T = None
    if T is not None:
        def read_results_csv(self):
            try:
                with open(self.csv, newline="") as f:
                    rows = list(csv.DictReader(f))
            except OSError:
                return {}
            out = {}
            for r in rows:
                for k, v in r.items():
                    try:
                        out.setdefault(k.strip(), []).append(float(v))
                    except (TypeError, ValueError):
                        pass
            return out

        T.BaseTrainer.read_results_csv = read_results_csv
        T.check_amp = lambda model: True
sys.argv = ["cli.py"] + sys.argv[1:]
runpy.run_path("cli.py", run_name="__main__")
'

names=(); dirs=(); pids=()
for spec in "$@"; do
  name=${spec%%:*}; read -r -a args <<< "${spec#*:}"
  out=""; project=""; rname=""
  for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in --out) out=${args[i+1]};; --project) project=${args[i+1]};; --name) rname=${args[i+1]};; esac
  done
  [ -z "$out" ] && [ -n "$project" ] && out=$project/${rname:-train}
  names+=("$name"); dirs+=("$out")
  ( $PY -c "$SHIM" "${args[@]}" > "$OUT/logs/$name.log" 2>&1
    echo "$name rc $? $(( $(date +%s) - t0 )) s" >> "$OUT/gpu.txt" ) & pids+=($!)
done
( sleep 120; timeout 10 nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv >> "$OUT/gpu.txt" 2>&1 ) \
  > /dev/null 2>&1 & mon=$!   # never waited for (a plain `wait` once hung on an nvidia-smi that did not return)
wait "${pids[@]}"
kill $mon 2>/dev/null

for ((i = 0; i < ${#names[@]}; i++)); do
  n=${names[i]}; d=${dirs[i]}
  [ -n "$d" ] || continue
  for f in results.csv args.yaml log.jsonl; do cp "$d/$f" "$OUT/logs/$n-$f" 2>/dev/null; done
  for w in "$d/weights/last.pt" "$d/classifier.pt" "$d/last.pt"; do
    [ -f "$w" ] && { split -b 15M -d "$w" "$OUT/$n.pt.part"; break; }
  done
done
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
echo "total $(( $(date +%s) - t0 )) s" >> "$OUT/gpu.txt"
cat "$OUT/gpu.txt"; ls -la "$OUT"
