#!/usr/bin/env bash
# Issue 9, one call on a lent GPU machine: inception_v3's training rate (299 px, batch 128, bf16, channels_last) with
# each implementation of its 3x3 average pools (ModelConfig.pool_impl: native, conv, sum; boneage.models.pooling):
#   1. the pool alone (benchmarks/pooling.py): its time and its difference from F.avg_pool2d on this device,
#   2. the training step with each (benchmarks/train_speed.py, one store of decoded images): train and compute
#      images/s, their ratios to native, and the fastest one's top kernels.
# Results under $OUT: pooling.txt, bench.json, table.txt, log.txt. Arguments go to benchmarks/train_speed.py after the
# defaults here, so they override them. Tried first on the CPU at tiny size:
#   IMAGES=/work/shared/data/rsna-bone-age/boneage-training-dataset \
#   LABELS=/work/shared/data/rsna-bone-age/boneage-training-dataset.csv POOL_SHAPE=4,288,35,35 OUT=/tmp/pool-out \
#   bash scripts/gpu_bench_pooling.sh --arch inception_v3 --image-size 96 --batch-size 4 --limit 32 --steps 1
set -uo pipefail
T0=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
PACK=${PACK:-.gpu/rsna-299-webp65.zip}
IMPLS=${IMPLS:-native conv sum}
POOL_SHAPE=${POOL_SHAPE:-128,288,35,35}  # Mixed_5d's input at 299 px, batch 128
PROFILE=${PROFILE:-1}                    # 1: each variant also profiled (3 more steps), the fastest one's top kernels listed
WORK=${WORK:-/tmp/boneage-pool}; mkdir -p "$WORK"
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/log.txt"; }

(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader || echo "no GPU") \
  | tee -a "$OUT/log.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'tv', torchvision.__version__)" \
  | tee -a "$OUT/log.txt"
if [ -z "${IMAGES:-}" ]; then  # the data pack, as scripts/gpu_session.sh unpacks it
  rm -rf "$WORK/data"; python3 -m zipfile -e "$PACK" "$WORK/data"
  IMAGES=$WORK/data/images; LABELS=$WORK/data/labels.csv
fi
log "images: $IMAGES ($(ls "$IMAGES" | wc -l)), labels: $LABELS"

# 1. the pool alone, in training's dtype and layout (bf16, channels_last) and in float32
python3 benchmarks/pooling.py --shape "$POOL_SHAPE" --dtype bfloat16,float32 --format channels_last --repeats 20 \
  2>>"$OUT/log.txt" | tee "$OUT/pooling.txt" | head -n -1
log "pool alone done"

# 2. the training step with each implementation, one process, ratios to native (benchmarks/train_speed.py)
python3 benchmarks/train_speed.py --images "$IMAGES" --labels "$LABELS" --variants "$(echo $IMPLS | tr ' ' ',')" \
  --limit 2048 --steps 20 $([ "$PROFILE" = 1 ] && echo --profile) --cache-dir "$WORK/cache" --json "$OUT/bench.json" \
  "$@" 2>>"$OUT/log.txt" | tee "$OUT/table.txt"
log "done: $(ls "$OUT" | tr '\n' ' ')"
