#!/usr/bin/env bash
# Issue 9, one call on a lent GPU machine: inception_v3's training rate (299 px, batch 128, bf16, channels_last) with
# each implementation of its 3x3 average pools (ModelConfig.pool_impl: native, conv, sum; boneage.models.pooling):
#   1. the pool alone (benchmarks/pooling.py): its time and its difference from F.avg_pool2d on this device,
#   2. `boneage bench --pool-impl IMPL` for each, on one store of decoded images,
#   3. a table of train and compute images/s and their ratios to native, and each variant's top kernels.
# Results under $OUT: pooling.txt, bench-IMPL.json, table.txt, log.txt. Arguments go to every `boneage bench` after the
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
PROFILE=${PROFILE:-1}                    # 1: each bench also lists its top kernels (3 more steps)
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

# 2. the training step with each implementation
for impl in $IMPLS; do
  python3 -m boneage bench --images "$IMAGES" --labels "$LABELS" --arch inception_v3 --image-size 299 \
    --batch-size 128 --limit 2048 --steps 20 $([ "$PROFILE" = 1 ] && echo --profile) --cache-dir "$WORK/cache" "$@" \
    --pool-impl "$impl" 2>>"$OUT/log.txt" > "$OUT/bench-$impl.json" || log "bench $impl exited with $?"
  log "bench $impl: $(cut -c1-240 "$OUT/bench-$impl.json")"
done

# 3. the table
python3 - "$OUT" $IMPLS <<'PY' | tee "$OUT/table.txt"
import json, sys
from pathlib import Path

out, impls = Path(sys.argv[1]), sys.argv[2:]
runs = {}
for impl in impls:
    try:
        runs[impl] = json.loads((out / f"bench-{impl}.json").read_text())
    except (OSError, ValueError):
        runs[impl] = None
base = runs.get("native")
first = next((r for r in runs.values() if r), None)
if first:
    print(f"{first['device']}: {first['arch']} {first['image_size']} px, batch {first['batch_size']}, "
          f"{first['precision']}, {first['steps']} timed steps each")
print(f"{'pool_impl':9} {'train img/s':>11} {'x native':>8} {'compute img/s':>13} {'x native':>8} {'TFLOP/s':>8} "
      f"{'peak':>6}")
for impl, r in runs.items():
    if not r:
        print(f"{impl:9} failed: see log.txt")
        continue
    ratio = {k: f"{r[k] / base[k]:8.2f}" if base else f"{'-':>8}" for k in ("train_images_per_s", "compute_images_per_s")}
    peak = f"{r['bf16_peak_share']:6.1%}" if r.get("bf16_peak_share") else f"{'-':>6}"
    print(f"{impl:9} {r['train_images_per_s']:11.1f} {ratio['train_images_per_s']} {r['compute_images_per_s']:13.1f} "
          f"{ratio['compute_images_per_s']} {r['achieved_tflops']:8.2f} {peak}")
for impl, r in runs.items():
    for k in (r or {}).get("profile_top_kernels", [])[:5]:
        print(f"  {impl:7} {k.get('share', 0):6.1%} {k.get('calls', '')!s:>5} {k.get('name', k.get('error', ''))[:90]}")
PY
log "done: $(ls "$OUT" | tr '\n' ' ')"
