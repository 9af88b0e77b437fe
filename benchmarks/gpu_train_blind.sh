#!/usr/bin/env bash
# Continue the two blind denoisers (issue #15) on a lent GPU in one call, from the repository
# root, then export and score them there:
#   1. both CPU runs resume side by side on the one GPU from their checkpoints
#      (CKPT_DIR/blind_gray.pth, CKPT_DIR/blind_color.pth, made by --prepare below and sent
#      with the call: `run(carry=["runs/gpu_carry"])`), with a larger
#      batch: ITERS more iterations each, lr LR halved at 1/2 and 3/4 of them, EMA kept on;
#      stopped with SIGINT (the trainer saves and exits) after TRAIN_S seconds whatever happens;
#   2. each last checkpoint exported (EMA weights) to OUT/converse_unet_blind_{gray,color}.safetensors,
#      its run's metrics.csv copied to OUT;
#   3. the Table 4 protocol on the GPU with TF32 off: grey Set12 + BSD68, colour CBSD68,
#      sigma 15 / 25 / 50 (OUT/sweep_{gray,color}.csv, per image in OUT/eval_{gray,color}.log). The shipped files change only
#      after these numbers are checked again on a CPU (docs/TRAINING.md).
# Without carried checkpoints each run fine-tunes the shipped weights instead
# ("model.args={pretrained: builtin}", fresh Adam, iterations counted from 0).
# Before the call, here: `benchmarks/gpu_train_blind.sh --prepare RUNS` writes the carried
# checkpoints runs/gpu_carry/blind_{gray,color}.pth from RUNS/blind_{gray,color}/last.pth without
# Adam's moments (14 MB instead of 29 MB each, so that both fit the 64 MiB a call carries; Adam
# starts its averages afresh on the GPU). Only small files go to OUT (a call returns at most
# 8 files of 16 MiB): the two exports, the two metrics.csv, the two sweep tables and eval logs.
# usage: benchmarks/gpu_train_blind.sh OUT [TRAIN_S]   |   benchmarks/gpu_train_blind.sh --prepare RUNS
# env:   CKPT_DIR (runs/gpu_carry), DEVICE (cuda), BATCH (32), PATCH (64), WORKERS (6),
#        ITERS (8000), LR (1e-4), VAL_EVERY (ITERS/4; Set14 crops, sigma 25), LIMIT (images per
#        eval; default all), CONVERSENET_DATA;
#        a CPU smoke test: DEVICE=cpu BATCH=2 PATCH=32 WORKERS=0 ITERS=4 VAL_EVERY=1000 LIMIT=1 ... OUT 400
set -u
PY=${PY:-python3}
if [ "${1:-}" = "--prepare" ]; then
    RUNS=${2:?usage: gpu_train_blind.sh --prepare RUNS}
    mkdir -p runs/gpu_carry
    for t in gray color; do
        $PY - "$RUNS/blind_$t/last.pth" "runs/gpu_carry/blind_$t.pth" <<'PYEOF' || exit 2
import os, sys, tempfile
import torch
from conversenet.train.checkpoint import load_checkpoint
src, dst = sys.argv[1], sys.argv[2]
ck = load_checkpoint(src)
ck["optimizer"] = {"state": {}, "param_groups": ck["optimizer"]["param_groups"]}
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dst), suffix=".tmp")
os.close(fd)
torch.save(ck, tmp)
os.replace(tmp, dst)
print(f"{dst}: iteration {ck['iteration']}, {os.path.getsize(dst) / 2**20:.1f} MiB")
PYEOF
    done
    exit 0
fi
OUT=${1:?usage: gpu_train_blind.sh OUT [TRAIN_S]}
TRAIN_S=${2:-${TRAIN_S:-300}}
CKPT_DIR=${CKPT_DIR:-runs/gpu_carry}
DEVICE=${DEVICE:-cuda}; BATCH=${BATCH:-32}; PATCH=${PATCH:-64}; WORKERS=${WORKERS:-6}
ITERS=${ITERS:-8000}; LR=${LR:-1e-4}
export PYTHONUNBUFFERED=1 CONVERSENET_OFFLINE=1 CONVERSENET_DATA=${CONVERSENET_DATA:-../shared/data}
CN="$PY -m conversenet"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RUN=$(mktemp -d)
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

pids=()
for t in gray color; do
    ck="$CKPT_DIR/blind_$t.pth"
    if [ -f "$ck" ]; then
        start=$($PY -c "import torch, sys; print(int(torch.load(sys.argv[1], map_location='cpu', weights_only=True)['iteration']))" "$ck") \
            || { echo "cannot read the iteration of $ck"; exit 2; }
        from=(--resume "$ck")
        stamp "$t: resume at $start, $ITERS iterations of batch $BATCH, lr $LR"
    else
        # no carried run (a new machine lost it): fine-tune the shipped weights, iterations from 0
        start=0
        from=("model.args={pretrained: builtin}")
        stamp "$t: no $ck: fine-tune the built-in weights, $ITERS iterations of batch $BATCH, lr $LR"
    fi
    end=$(( start + ITERS ))
    timeout -s INT -k 60 "$TRAIN_S" $CN train "denoise/blind_$t" \
        device=$DEVICE threads=2 data.batch_size=$BATCH data.patch_size=$PATCH data.num_workers=$WORKERS \
        train.total_iter=$end train.lr=$LR "train.milestones=[$(( start + ITERS / 2 )),$(( start + ITERS * 3 / 4 ))]" \
        train.ema_decay=0.999 train.val_every=${VAL_EVERY:-$(( ITERS / 4 > 0 ? ITERS / 4 : 1 ))} train.checkpoint_every=500 \
        train.log_every=100 "${from[@]}" --out "$RUN/$t" --quiet > "$RUN/train_$t.log" 2>&1 &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; echo "train rc=$?"; done
for t in gray color; do
    tail -n 5 "$RUN/train_$t.log"
    cp "$RUN/$t/metrics.csv" "$OUT/metrics_$t.csv" 2>/dev/null
    $CN train "$RUN/$t/last.pth" --export "$OUT/converse_unet_blind_$t.safetensors" --overwrite || exit 4
    sha256sum "$OUT/converse_unet_blind_$t.safetensors"
done
stamp "evaluate"
ev() {  # model datasets...
    local t=$1; shift
    env NVIDIA_TF32_OVERRIDE=0 $CN eval --model "converse_unet_blind_$t" \
        --weights "$OUT/converse_unet_blind_$t.safetensors" --dataset "$@" --sigma 15 25 50 --no-save-images \
        --no-progress --device "$DEVICE" ${LIMIT:+--limit $LIMIT} --out "$RUN/eval_$t" > "$OUT/eval_$t.log" 2>&1
    echo "eval $t rc=$?"
    cp "$RUN/eval_$t/sweep.csv" "$OUT/sweep_$t.csv"
    sed -n '/^sweep:/,$p' "$OUT/eval_$t.log"
}
ev gray set12 bsd68
ev color cbsd68
rm -rf "$RUN"
ls -la "$OUT"
stamp "done"
