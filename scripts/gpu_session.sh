#!/usr/bin/env bash
# One call on a lent GPU machine that builds on the shipped model instead of starting over:
#   1. measure and profile the training step (docs/benchmarks.md),
#   2. warm-restart the shipped weights with recipes/warm-restart-gpu.json for the epochs that fit the time left,
#   3. score the new and the shipped model on the saved validation ids (test-time views none / flip / flips),
#   4. measure their precision (`boneage precision`) on the same films,
#   5. return the new weights (int8, in pieces under 16 MiB) and one tar of every result.
# Everything that comes back is under $OUT: weights.pt.part*, results.tar, log.txt. Tried first on the CPU at small size:
#   BUDGET_S=400 LIMIT=300 IMAGE_SIZE=96 BATCH=16 PREC_LIMIT=6 OUT=/tmp/gpu-out bash scripts/gpu_session.sh
set -uo pipefail
T0=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
PACK=${PACK:-.gpu/rsna-299-webp65.zip}
RECIPE=${RECIPE:-recipes/warm-restart-gpu.json}
BUDGET_S=${BUDGET_S:-560}        # the whole script, end to end
RESERVE_S=${RESERVE_S:-170}      # kept for steps 3-5 after training
IMAGE_SIZE=${IMAGE_SIZE:-299}
BATCH=${BATCH:-128}
LIMIT=${LIMIT:-0}
PREC_LIMIT=${PREC_LIMIT:-0}      # films for the new model's precision (0: the whole validation set)
OLD_PREC_LIMIT=${OLD_PREC_LIMIT:-600}
DEVICE=$(python3 -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
WORK=${WORK:-/tmp/boneage-gpu}; rm -rf "$WORK"; mkdir -p "$WORK/data" "$WORK/results"
R=$WORK/results
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/log.txt"; }
ba() { python3 -m boneage "$@"; }

(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader || echo "no GPU") \
  | tee -a "$OUT/log.txt"
python3 -c "import torch, torchvision, lightning; print('torch', torch.__version__, 'tv', torchvision.__version__, 'L', lightning.__version__)" | tee -a "$OUT/log.txt"
python3 -m zipfile -e "$PACK" "$WORK/data"
IMAGES=$WORK/data/images; LABELS=$WORK/data/labels.csv; VAL=${VAL:-docs/reference-model/val.csv}
log "unpacked $(ls "$IMAGES" | wc -l) images on $DEVICE"

# 1. the training step: rates, achieved TFLOP/s and the top kernels (issue 9), on the plain preprocessing
ba bench --images "$IMAGES" --labels "$LABELS" --image-size "$IMAGE_SIZE" --batch-size "$BATCH" \
  --limit "$(( LIMIT > 0 ? LIMIT : 2048 ))" --steps 10 --profile --cache-dir "$WORK/cache" 2>>"$OUT/log.txt" \
  | tee "$R/bench.json" | cut -c1-400
log "bench done"

# 2. warm restart: the epochs that fit what is left (measured rate, validation included, 15% slack)
EPOCHS=$(python3 - "$R/bench.json" "$BUDGET_S" "$(( $(date +%s) - T0 ))" "$RESERVE_S" "$LABELS" "$LIMIT" <<'PY'
import json, sys
budget, used, reserve, labels, limit = *map(float, sys.argv[2:5]), sys.argv[5], int(sys.argv[6])
try:
    rate = json.load(open(sys.argv[1]))["train_images_per_s"]
except (OSError, ValueError, KeyError):  # no bench figure: the H100's, measured before
    rate = 1900.0
n = sum(1 for _ in open(labels)) - 1
n = min(n, limit) if limit else n
per_epoch = 0.8 * n / rate + 0.2 * n / (3 * rate) + 0.4
left = budget - used - reserve - 40  # 40 s: the store of hand crops, start-up, the last save
print(max(1, int(0.85 * left / per_epoch)))
PY
)
MINUTES=$(python3 -c "print(max(0.5, ($BUDGET_S - $RESERVE_S - ($(date +%s) - $T0)) / 60))")
log "warm restart for $EPOCHS epochs, at most $MINUTES minutes"
ba train --config "$RECIPE" --images "$IMAGES" --labels "$LABELS" --out "$WORK/run" --image-size "$IMAGE_SIZE" \
  --batch-size "$BATCH" --epochs "$EPOCHS" --limit "$LIMIT" --cache-dir "$WORK/cache" --max-minutes "$MINUTES" \
  >>"$OUT/log.txt" 2>&1 || log "training exited with $? (scoring what was saved)"
log "training done: $(tail -n 2 "$WORK/run/metrics.csv" | tr '\n' ' ')"
cp "$WORK/run/"{config.json,metrics.csv,curves.png} "$R/" 2>/dev/null

# 3. validation MAD of the new model (three sets of test-time views) and of the shipped one, on the same films
for tta in flip none flips; do
  ba evaluate --model "$WORK/run/best.ckpt" --images "$IMAGES" --labels "$VAL" --device "$DEVICE" --tta "$tta" \
    --workers 8 --batch-size 128 --json $([ "$tta" = flip ] && echo --out "$R/eval") 2>>"$OUT/log.txt" \
    > "$R/eval-new-$tta.json"
  log "new model, views $tta: $(cut -c1-200 "$R/eval-new-$tta.json")"
done
ba evaluate --images "$IMAGES" --labels "$VAL" --device "$DEVICE" --tta flip --workers 8 --batch-size 128 --json \
  2>>"$OUT/log.txt" > "$R/eval-shipped-flip.json"
log "shipped model, views flip: $(cut -c1-200 "$R/eval-shipped-flip.json")"

# 4. precision: the new model on the validation films, the shipped one on the first of them
ba precision --model "$WORK/run/best.ckpt" --images "$IMAGES" --labels "$VAL" --limit "$PREC_LIMIT" \
  --device "$DEVICE" --out "$R/precision-new" 2>>"$OUT/log.txt" | tee -a "$OUT/log.txt"
log "precision of the new model done"
ba precision --images "$IMAGES" --labels "$VAL" --limit "$OLD_PREC_LIMIT" --device "$DEVICE" \
  --out "$R/precision-shipped" 2>>"$OUT/log.txt" | tee -a "$OUT/log.txt"
log "precision of the shipped model done"

# 5. the weights, int8, in pieces; every result in one tar
ba export --model "$WORK/run/best.ckpt" --out "$WORK/weights.pt" --storage int8 | tee -a "$OUT/log.txt"
split -b 15M -d "$WORK/weights.pt" "$OUT/weights.pt.part"
cp "$WORK/run/val.csv" "$R/run-val.csv" 2>/dev/null
tar cf "$OUT/results.tar" -C "$WORK" results
log "done: $(ls "$OUT" | tr '\n' ' ')"
