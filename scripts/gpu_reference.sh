#!/usr/bin/env bash
# One call on a lent GPU machine, from scratch (e.g. ARCH=resnet101 for the poster's other row; validation on the saved
# ids of docs/reference-model/val.csv): unpack the compact pack, measure loader / training / compute rates, train the
# reference Inception v3 for the epochs that fit the time left, and return the weights (int8, in pieces of at most
# 16 MiB) with the run's files. Tried first on the CPU at small size:
#   BUDGET_S=60 LIMIT=400 IMAGE_SIZE=96 BATCH=16 OUT=/tmp/gpu-out bash scripts/gpu_reference.sh
set -euo pipefail
T0=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
PACK=${PACK:-.gpu/rsna-299-webp65.zip}
BUDGET_S=${BUDGET_S:-540}        # the whole script, end to end
ARCH=${ARCH:-inception_v3}
IMAGE_SIZE=${IMAGE_SIZE:-299}
BATCH=${BATCH:-128}
LIMIT=${LIMIT:-0}
WORK=${WORK:-/tmp/boneage-gpu}; rm -rf "$WORK"; mkdir -p "$WORK/data"
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/log.txt"; }

(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no GPU") | tee -a "$OUT/log.txt"
python3 -c "import torch, torchvision, lightning; print('torch', torch.__version__, 'tv', torchvision.__version__, 'L', lightning.__version__)" | tee -a "$OUT/log.txt"
python3 -m zipfile -e "$PACK" "$WORK/data"
log "unpacked $(ls "$WORK/data/images" | wc -l) images"

python3 -m boneage bench --images "$WORK/data/images" --labels "$WORK/data/labels.csv" --arch "$ARCH" \
  --image-size "$IMAGE_SIZE" --batch-size "$BATCH" --limit "$LIMIT" --steps 15 --cache-dir "$WORK/cache" \
  2>>"$OUT/log.txt" | tee "$OUT/bench.json"
log "bench done"
python3 -m boneage bench --images "$WORK/data/images" --labels "$WORK/data/labels.csv" --arch resnet101 \
  --image-size "$IMAGE_SIZE" --batch-size "$BATCH" --limit 1024 --steps 5 --cache-dir "$WORK/cache" \
  2>>"$OUT/log.txt" | tee "$OUT/bench-resnet101.json" || true
log "resnet101 bench done"

# Epochs that fit: what is left, less ~70 s for start-up and the export, at the measured rate (validation included).
EPOCHS=$(python3 - "$OUT/bench.json" "$BUDGET_S" "$(( $(date +%s) - T0 ))" "$WORK/data/labels.csv" "$LIMIT" <<'PY'
import json, sys
bench, budget, used, labels, limit = json.load(open(sys.argv[1])), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(sys.argv[5])
n = sum(1 for _ in open(labels)) - 1
n = min(n, limit) if limit else n
left = budget - used - 70
per_epoch = 0.8 * n / bench["train_images_per_s"] + 0.2 * n / (3 * bench["train_images_per_s"]) + 0.5
print(max(1, int(left / per_epoch)))
PY
)
log "training $ARCH for $EPOCHS epochs"
python3 -m boneage train --config recipes/reference-gpu.json --images "$WORK/data/images" --val-ids docs/reference-model/val.csv \
  --labels "$WORK/data/labels.csv" --out "$WORK/run" --arch "$ARCH" --image-size "$IMAGE_SIZE" --batch-size "$BATCH" \
  --epochs "$EPOCHS" --limit "$LIMIT" --cache-dir "$WORK/cache" \
  --max-minutes "$(python3 -c "print(max(1, ($BUDGET_S - ($(date +%s) - $T0) - 50) / 60))")" >>"$OUT/log.txt" 2>&1 \
  || log "training exited with $? (exporting what was saved)"
log "training done: $(tail -n 2 "$WORK/run/metrics.csv" | tr '\n' ' ')"

python3 -m boneage export --model "$WORK/run/best.ckpt" --out "$WORK/best-int8.pt" --storage int8 \
  --calibrate-images "$WORK/data/images" --calibrate-labels "$WORK/run/train.csv" --calibrate-films 64 | tee -a "$OUT/log.txt"
split -b 15M -d "$WORK/best-int8.pt" "$OUT/best-int8.pt.part"  # int8: ResNet-101 too fits what comes back (64 MB)
tar cf "$OUT/run.tar" -C "$WORK/run" config.json metrics.csv train.csv val.csv curves.png
log "exported: $(ls "$OUT" | tr '\n' ' ')"
