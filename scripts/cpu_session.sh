#!/usr/bin/env bash
# A CPU training session that accumulates, the twin of scripts/gpu_session.sh: on a CPU with bf16 units (AMX or AVX-512 BF16),
# warm-restart the shipped model for a budget of minutes and replace it only if the result is better.
#   1. the epochs that fit MINUTES, from the training loop's rate measured here (`boneage bench`);
#   2. a warm restart of the shipped weights with recipes/warm-restart-cpu.json (noise, blur, low resolution, rotation,
#      zoom, shift, age balance; the hand crop of inference), validation on the saved ids; resumed if stopped;
#   3. the best epoch as int8, batch norm re-fitted to the rounding (`boneage export --calibrate-*`);
#   4. its bias correction by age, fitted on the validation split and measured by cross-fitting (`boneage debias`):
#      the figures it ships with;
#   5. its precision on the first PREC_FILMS validation films, every family, sensor noise included;
#   6. the shipped model's figures, measured the same way (once per shipped file, kept in docs/reference-model);
#   7. scripts/ship_if_better.py: the candidate replaces the shipped model only if
#        (MAD not worse and worst precision family better) or (MAD better and worst precision family not worse),
#      and a row goes into the model card's history either way. Commit what it changed.
# Run it in the background, it takes MINUTES plus about an hour of scoring on 2 cores:
#   MINUTES=180 nohup bash scripts/cpu_session.sh > cpu-session.log 2>&1 &
# Tried small first: MINUTES=4 LIMIT=600 PREC_FILMS=8 VAL_LIMIT=120 WORK=/tmp/cpu-try bash scripts/cpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
export PYTHONUNBUFFERED=1
MINUTES=${MINUTES:-120}            # training, wall time
DATA=${DATA:-../shared/data/rsna-bone-age}
IMAGES=${IMAGES:-$DATA/boneage-training-dataset}
LABELS=${LABELS:-$DATA/boneage-training-dataset.csv}
RECIPE=${RECIPE:-recipes/warm-restart-cpu.json}
VAL=${VAL:-docs/reference-model/val.csv}
VAL_LIMIT=${VAL_LIMIT:-0}          # 0: the whole validation split (the figures that ship); N: a quick try
PREC_FILMS=${PREC_FILMS:-200}
LIMIT=${LIMIT:-0}                  # films drawn for training (0: all)
TRAIN_ARGS=${TRAIN_ARGS:-}         # more `boneage train` flags over the recipe, e.g. "--lr 1e-4" for a short session
WORK=${WORK:-runs/cpu-session}
RUN=$WORK/run
mkdir -p "$WORK"
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$WORK/log.txt"; }
ba() { python3 -m boneage "$@"; }
command -v python3 >/dev/null && python3 -c "import boneage, lightning" 2>/dev/null \
  || { echo "cpu_session: activate the project's venv first (. .venv/bin/activate)"; exit 2; }
[ -d "$IMAGES" ] && [ -f "$LABELS" ] || { echo "cpu_session: no data at $IMAGES / $LABELS (set DATA)"; exit 2; }
grep -q -E "amx_bf16|avx512_bf16" /proc/cpuinfo || log "warning: no bf16 units on this CPU: training runs in float32, 2-3x slower"
if [ "$VAL_LIMIT" != 0 ]; then head -n $(( VAL_LIMIT + 1 )) "$VAL" > "$WORK/val.csv"; VAL=$WORK/val.csv; fi

# 1-2. the warm restart, sized to the minutes (or resumed where a stopped session left it)
if [ -f "$RUN/last.ckpt" ] && [ ! -f "$RUN/.done" ]; then
  log "resuming $RUN"
  ba train --resume --out "$RUN" >>"$WORK/log.txt" 2>&1 || log "training exited with $? (scoring what was saved)"
elif [ ! -f "$RUN/.done" ]; then
  RATE=$(ba bench --device cpu --images "$IMAGES" --labels "$LABELS" --limit 256 --steps 3 --no-fp32 2>/dev/null \
         | python3 -c "import json,sys; print(json.load(sys.stdin)['train_images_per_s'])" 2>/dev/null || echo 8)
  EPOCHS=$(python3 - "$RATE" "$MINUTES" "$LABELS" "$LIMIT" "$VAL" <<'PY'
import sys
rate, minutes = float(sys.argv[1]), float(sys.argv[2])
n = sum(1 for _ in open(sys.argv[3])) - 1
n = min(n, int(sys.argv[4])) if int(sys.argv[4]) else n
val = sum(1 for _ in open(sys.argv[5])) - 1
per_epoch = (n - val) / rate + val / (3 * rate) + 30  # training, validation (inference ~3x faster), saving
print(max(1, int(0.9 * minutes * 60 / per_epoch)))
PY
)
  log "training loop at $RATE images/s here: $EPOCHS epochs in $MINUTES minutes"
  LIMIT_ARGS=(); [ "$LIMIT" != 0 ] && LIMIT_ARGS=(--limit "$LIMIT")
  ba train --config "$RECIPE" --images "$IMAGES" --labels "$LABELS" --out "$RUN" --epochs "$EPOCHS" \
    "${LIMIT_ARGS[@]}" --max-minutes "$(python3 -c "print($MINUTES * 1.1)")" $TRAIN_ARGS >>"$WORK/log.txt" 2>&1 \
    || log "training exited with $? (scoring what was saved)"
fi
[ -f "$RUN/best.ckpt" ] || { log "no best.ckpt in $RUN: nothing to score"; exit 1; }
touch "$RUN/.done"
log "trained: $(tail -n 1 "$RUN/metrics.csv")"

# 3. int8, calibrated on the run's own training films, with the shipped card carried forward
python3 - "$RUN" > "$WORK/card.json" <<'PY'
import json, sys
import torch
card = dict(torch.load("src/boneage/weights/boneage-reference.pt", weights_only=True).get("card") or {})
config = json.load(open(f"{sys.argv[1]}/config.json"))
card["summary"] = (f"{card.get('summary', '')} + a CPU warm restart ({config['epochs']} epochs at batch "
                   f"{config['batch_size']}, bf16 on the CPU, scripts/cpu_session.sh)").strip(" +")
print(json.dumps(card, indent=1))
PY
ba export --model "$RUN/best.ckpt" --out "$WORK/candidate-int8.pt" --storage int8 --card "$WORK/card.json" \
  --calibrate-images "$IMAGES" --calibrate-labels "$RUN/train.csv" --calibrate-films 128 | tee -a "$WORK/log.txt"

# 4. its bias correction and its validation figures (cross-fitted)
ba debias --model "$WORK/candidate-int8.pt" --images "$IMAGES" --labels "$VAL" --out "$WORK/candidate.pt" \
  --report "$WORK/bias-candidate" 2>>"$WORK/log.txt" | tee -a "$WORK/log.txt"

# 5. its precision
ba precision --model "$WORK/candidate.pt" --images "$IMAGES" --labels "$VAL" --limit "$PREC_FILMS" \
  --out "$WORK/precision-candidate" 2>>"$WORK/log.txt" | tee -a "$WORK/log.txt"

# 6. the shipped model's figures, the same way (kept with its checksum; measured again when it changed)
SHIPPED=src/boneage/weights/boneage-reference.pt; FIG=docs/reference-model
SUM="$(sha256sum "$SHIPPED" | cut -c1-64) films=$PREC_FILMS val=$(sha256sum "$VAL" | cut -c1-16)"
if [ "$(cat "$FIG/figures.sha256" 2>/dev/null)" != "$SUM" ]; then
  log "measuring the shipped model the same way"
  ba debias --images "$IMAGES" --labels "$VAL" --out "$WORK/shipped-refit.pt" --report "$WORK/bias-shipped" \
    2>>"$WORK/log.txt" | tee -a "$WORK/log.txt"
  ba precision --images "$IMAGES" --labels "$VAL" --limit "$PREC_FILMS" --out "$WORK/precision-shipped" \
    2>>"$WORK/log.txt" | tee -a "$WORK/log.txt"
  SHIPPED_BIAS=$WORK/bias-shipped/bias.json; SHIPPED_PREC=$WORK/precision-shipped/precision.json
  if [ "$VAL_LIMIT" = 0 ]; then
    cp "$SHIPPED_BIAS" "$FIG/bias.json"; cp "$WORK/bias-shipped/bias.md" "$FIG/bias.md"
    cp "$SHIPPED_PREC" "$FIG/precision-cpu.json"; cp "$WORK/precision-shipped/precision.md" "$FIG/precision-cpu.md"
    echo "$SUM" > "$FIG/figures.sha256"
  fi
else
  SHIPPED_BIAS=$FIG/bias.json; SHIPPED_PREC=$FIG/precision-cpu.json
fi

# 7. ship only if better; a history row either way (a quick try with VAL_LIMIT decides nothing)
DRY=(); [ "$VAL_LIMIT" != 0 ] && DRY=(--dry-run)
python3 scripts/ship_if_better.py --candidate "$WORK/candidate.pt" --candidate-bias "$WORK/bias-candidate/bias.json" \
  --candidate-precision "$WORK/precision-candidate/precision.json" --shipped-bias "$SHIPPED_BIAS" \
  --shipped-precision "$SHIPPED_PREC" --run "$RUN" "${DRY[@]}" | tee -a "$WORK/log.txt"
log "done; git status shows what changed"
