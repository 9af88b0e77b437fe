#!/usr/bin/env bash
# Train the built-in DnCNN (grayscale, sigma 25, train400) in one short GPU call, from the
# repository root:
#   1. a probe of PROBE iterations measures the speed (start-up included, so conservative);
#   2. the real run, sized to fit TRAIN_S seconds, lr 1e-3 halved at 1/2, 3/4 and 9/10;
#   3. the last checkpoint exported as a plain state dict (OUT/dncnn.pth, about 2 MB);
#   4. Set12 and BSD68 evaluated on the GPU (TF32 off), per-image results in OUT/eval_*.
# usage: benchmarks/gpu_train_builtin.sh OUT [TRAIN_S]
# env:   CONVERSENET_DATA (default ../shared/data), DEVICE (cuda), PATCH (64), BATCH (64),
#        WORKERS (8), PROBE (300), LIMIT (images per eval; default all)
set -u
OUT=${1:?usage: gpu_train_builtin.sh OUT [TRAIN_S]}
TRAIN_S=${2:-330}
DEVICE=${DEVICE:-cuda}; PATCH=${PATCH:-64}; BATCH=${BATCH:-64}; WORKERS=${WORKERS:-8}; PROBE=${PROBE:-300}
export PYTHONUNBUFFERED=1 CONVERSENET_OFFLINE=1 CONVERSENET_DATA=${CONVERSENET_DATA:-../shared/data}
CN="python3 -m conversenet"
RUN=$(mktemp -d)
mkdir -p "$OUT"
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
COMMON="data.patch_size=$PATCH data.batch_size=$BATCH data.num_workers=$WORKERS data.val_images=0 device=$DEVICE threads=2"

stamp "probe: $PROBE iterations"
t0=$(date +%s)
$CN train table4/dncnn name=probe train.total_iter=$PROBE train.lr=1e-3 "train.milestones=[$((PROBE * 10))]" \
    train.val_every=1000000 train.checkpoint_every=1000000 train.log_every=100 $COMMON --out "$RUN/probe" --quiet \
    > "$OUT/probe.log" 2>&1 || { tail -n 20 "$OUT/probe.log"; exit 3; }
dt=$(( $(date +%s) - t0 )); [ "$dt" -lt 1 ] && dt=1
ITERS=$(( TRAIN_S * PROBE / dt ))
ITERS=$(( ITERS / 100 * 100 )); [ "$ITERS" -lt 200 ] && ITERS=200
stamp "probe took $dt s -> $ITERS iterations"

# stopped with SIGINT after twice the planned time (the trainer saves and exits on SIGINT)
timeout -s INT -k 60 $(( TRAIN_S * 2 )) $CN train table4/dncnn name=builtin_dncnn_gpu \
    train.total_iter=$ITERS train.lr=1e-3 \
    "train.milestones=[$((ITERS / 2)),$((ITERS * 3 / 4)),$((ITERS * 9 / 10))]" \
    train.val_every=1000000 train.checkpoint_every=$(( ITERS / 4 )) train.log_every=500 $COMMON \
    --out "$RUN/main" --quiet > "$OUT/train.log" 2>&1
echo "train rc=$?"
tail -n 4 "$OUT/train.log"
cp "$RUN/main/metrics.csv" "$RUN/main/config.yaml" "$OUT/" 2>/dev/null
stamp "export"
$CN train "$RUN/main/last.pth" --export "$OUT/dncnn.pth" || exit 4
for d in set12 bsd68; do
    env NVIDIA_TF32_OVERRIDE=0 $CN eval --model dncnn --weights "$OUT/dncnn.pth" --dataset $d --sigma 25 \
        --no-save-images --no-progress --device $DEVICE ${LIMIT:+--limit $LIMIT} --out "$OUT/eval_$d" > "$OUT/eval_$d.log" 2>&1
    stamp "$d: $(grep -iE 'average|mean' "$OUT/eval_$d.log" | tail -n 1)"
done
rm -rf "$RUN"
ls -la "$OUT"
stamp "done"
