#!/usr/bin/env bash
# One GPU session, run from the repository root (written for a 15-minute H100 lease):
#   1. `conversenet bench` on CUDA, alone on the GPU (op rows and model rows);
#   2. at the same time, in the background:
#      - the Table 4 study at a larger budget: the four denoisers trained side by side with
#        the same batch, patch, schedule and seed, weights kept every SNAP iterations;
#      - the released checkpoints: Converse-DnCNN on Set12 and BSD68 (sigma 25), Table 7
#        (Converse-USRNet and ConverseNet, BSD100, kernel_1..5, noise 2.55);
#      - the CUDA cases of the operator/module/model tests;
#   3. after the training time, every model's weights at the largest iteration all four
#      reached are evaluated on Set12 and BSD68;
#   4. everything small is packed into OUT/results.tgz, the compared weights into
#      OUT/weights.tgz.
# Evaluations run with NVIDIA_TF32_OVERRIDE=0 so that convolutions stay float32 as on CPU.
#
# usage: benchmarks/gpu_session.sh OUT [TRAIN_SECONDS] [TOTAL_ITER]
# env:   CONVERSENET_DATA, CONVERSENET_WEIGHTS_DIR (defaults: ../shared/...), PY (python3);
#        a CPU smoke test of this script: DEVICE=cpu LIMIT=1 BENCH_ROWS=up PATCH=16 BATCH=2 SNAP=2
set -u
OUT=${1:?usage: gpu_session.sh OUT [TRAIN_SECONDS] [TOTAL_ITER]}
TRAIN_S=${2:-240}
TOTAL=${3:-6000}
SNAP=${SNAP:-500}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
BENCH_ROWS=${BENCH_ROWS:-fwd,fwdbwd,up,dncnn256,dncnn512,srresnet,dncnn_train}
PATCH=${PATCH:-64}
BATCH=${BATCH:-16}
LIMIT_ARG=${LIMIT:+--limit $LIMIT}
BENCH=${BENCH:-1}; OFFICIAL=${OFFICIAL:-1}; TESTS=${TESTS:-1}
BUILTIN_ITERS=${BUILTIN_ITERS:-0}   # >0: also train a DnCNN this long (built-in weights candidate)
export PYTHONUNBUFFERED=1 CONVERSENET_OFFLINE=1
export CONVERSENET_DATA=${CONVERSENET_DATA:-../shared/data}
export CONVERSENET_WEIGHTS_DIR=${CONVERSENET_WEIGHTS_DIR:-../shared/weights/official}
mkdir -p "$OUT/logs" "$OUT/eval" "$OUT/runs"
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
CN="$PY -m conversenet"

# -- 0. environment ------------------------------------------------------------------
stamp "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/logs/gpu.txt" 2>&1
$PY -c "import torch, conversenet; print('torch', torch.__version__, 'cuda', torch.version.cuda,
torch.cuda.get_device_name() if '$DEVICE' != 'cpu' else 'cpu'); nproc=__import__('os').cpu_count(); print('cpus', nproc)" \
    | tee -a "$OUT/logs/gpu.txt" || { echo "environment check failed"; exit 3; }

# -- 1. bench, alone on the GPU ---------------------------------------------------------
[ "$BENCH" = 1 ] && stamp "bench" && timeout 150 $CN bench --device "$DEVICE" --rows "$BENCH_ROWS" \
    --repeat 10 --warmup 3 --budget 3 --json "$OUT/bench_cuda.json" --markdown "$OUT/bench_cuda.md" \
    > "$OUT/logs/bench.log" 2>&1
[ "$BENCH" = 1 ] && tail -n 30 "$OUT/logs/bench.log"

# -- 2. training study + official evaluations + CUDA tests, side by side ------------------
MODELS="converse_dncnn conv_dncnn convt_dncnn dncnn"
half=$(( TOTAL / 2 )); q3=$(( TOTAL * 3 / 4 )); q9=$(( TOTAL * 9 / 10 ))
TRAIN_PIDS=""
for m in $MODELS; do
    timeout -s INT -k 90 "$TRAIN_S" $CN train "table4/$m" \
        train.total_iter=$TOTAL train.lr=1e-3 "train.milestones=[$half,$q3,$q9]" \
        data.patch_size=$PATCH data.batch_size=$BATCH data.num_workers=2 threads=2 device=$DEVICE \
        train.val_every=$SNAP train.checkpoint_every=$SNAP train.snapshot_every=$SNAP train.log_every=50 \
        data.val_images=${VAL_IMAGES:-0} data.val_crop=0 --out "$OUT/runs/$m" --quiet > "$OUT/logs/train_$m.log" 2>&1 &
    TRAIN_PIDS="$TRAIN_PIDS $!"
done
if [ "$BUILTIN_ITERS" -gt 0 ]; then
    b=$BUILTIN_ITERS
    timeout -s INT -k 90 "$TRAIN_S" $CN train table4/dncnn \
        train.total_iter=$b train.lr=1e-3 "train.milestones=[$((b/2)),$((b*3/4)),$((b*9/10))]" \
        data.patch_size=$PATCH data.batch_size=$BATCH data.num_workers=2 threads=2 device=$DEVICE \
        train.val_every=$SNAP train.checkpoint_every=$SNAP train.snapshot_every=$SNAP train.log_every=50 \
        data.val_images=${VAL_IMAGES:-0} data.val_crop=0 --out "$OUT/runs/builtin_dncnn" --quiet > "$OUT/logs/train_builtin_dncnn.log" 2>&1 &
    TRAIN_PIDS="$TRAIN_PIDS $!"
fi
stamp "training started (${TRAIN_S} s, total_iter $TOTAL, snapshots every $SNAP)"

EV="env NVIDIA_TF32_OVERRIDE=0 timeout 420 $CN eval --no-save-images --no-progress --threads 1 --device $DEVICE $LIMIT_ARG"
EVAL_PIDS=""
if [ "$OFFICIAL" = 1 ]; then
$EV --model converse_dncnn --weights official --dataset set12 --sigma 25 --out "$OUT/eval/official_dncnn_set12" \
    > "$OUT/logs/eval_official_dncnn_set12.log" 2>&1 &
EVAL_PIDS="$EVAL_PIDS $!"
$EV --model converse_dncnn --weights official --dataset bsd68 --sigma 25 --out "$OUT/eval/official_dncnn_bsd68" \
    > "$OUT/logs/eval_official_dncnn_bsd68.log" 2>&1 &
EVAL_PIDS="$EVAL_PIDS $!"
for k in ${T7_KERNELS:-1 2 3 4 5}; do
    for m in converse_usrnet conversenet; do
        $EV --model $m --weights official --dataset bsd100 --kernel kernel_$k --out "$OUT/eval/t7_${m}_k$k" \
            > "$OUT/logs/eval_t7_${m}_k$k.log" 2>&1 &
        EVAL_PIDS="$EVAL_PIDS $!"
    done
done
fi
TEST_PID=""
[ "$TESTS" = 1 ] && (timeout 300 $PY -m pytest tests/test_converse2d.py tests/test_converse_autograd.py tests/test_nn_modules.py \
    tests/test_models.py -q -m "not slow" -k cuda -p no:cacheprovider > "$OUT/logs/pytest_cuda.log" 2>&1;
 echo "pytest rc=$?" >> "$OUT/logs/pytest_cuda.log") &
[ "$TESTS" = 1 ] && TEST_PID=$!

wait $TRAIN_PIDS
for m in $MODELS; do stamp "$m: $(tail -n 2 "$OUT/logs/train_$m.log" | tr '\n' ' ')"; done

# -- 3. the four models at the largest common iteration, on Set12 and BSD68 ---------------
COMMON=$($PY - "$OUT/runs" $MODELS <<'EOF'
import sys, pathlib
root, models = pathlib.Path(sys.argv[1]), sys.argv[2:]
its = []
for m in models:
    snaps = sorted((root / m / "snapshots").glob("iter_*.pth"))
    its.append({int(p.stem[5:]) for p in snaps})
common = set.intersection(*its) if its else set()
print(max(common) if common else 0)
EOF
)
stamp "largest common iteration: $COMMON"
mkdir -p "$OUT/weights" "$OUT/weights_last"
if [ "$COMMON" -gt 0 ]; then
    STUDY_PIDS=""
    for m in $MODELS; do
        w="$OUT/runs/$m/snapshots/iter_$(printf %07d "$COMMON").pth"
        cp "$w" "$OUT/weights/${m}_iter$COMMON.pth"
        for d in set12 bsd68; do
            $EV --model $m --weights "$w" --dataset $d --sigma 25 --out "$OUT/eval/study_${m}_${d}" \
                > "$OUT/logs/eval_study_${m}_${d}.log" 2>&1 &
            STUDY_PIDS="$STUDY_PIDS $!"
        done
    done
fi
if [ -d "$OUT/runs/builtin_dncnn/snapshots" ]; then
    w="$OUT/runs/builtin_dncnn/snapshots/$(ls "$OUT/runs/builtin_dncnn/snapshots" | tail -n 1)"
    stamp "built-in candidate: $w"
    for d in set12 bsd68; do
        $EV --model dncnn --weights "$w" --dataset $d --sigma 25 --out "$OUT/eval/builtin_dncnn_${d}" \
            > "$OUT/logs/eval_builtin_dncnn_${d}.log" 2>&1 &
        STUDY_PIDS="${STUDY_PIDS:-} $!"
    done
fi
wait ${STUDY_PIDS:-}
stamp "study evaluations done"
wait $EVAL_PIDS
stamp "official evaluations done"
[ -n "$TEST_PID" ] && wait $TEST_PID && tail -n 5 "$OUT/logs/pytest_cuda.log"

# -- 4. summary and packing -------------------------------------------------------------
for f in "$OUT"/logs/eval_*.log; do echo "== $(basename "$f")"; grep -iE "average|mean|error" "$f" | tail -n 3; done
for m in $MODELS builtin_dncnn; do [ -d "$OUT/runs/$m/snapshots" ] && cp "$OUT/runs/$m/snapshots/$(ls "$OUT/runs/$m/snapshots" | tail -n 1)" \
    "$OUT/weights_last/${m}_$(ls "$OUT/runs/$m/snapshots" | tail -n 1)" 2>/dev/null; done
(cd "$OUT" && tar czf results.tgz logs eval $(ls bench_cuda.json bench_cuda.md 2>/dev/null) \
    $(ls runs/*/metrics.csv runs/*/curves.png runs/*/config.yaml 2>/dev/null);
 tar czf weights_common.tgz weights; tar czf weights_last.tgz weights_last)
rm -rf "$OUT/logs" "$OUT/eval" "$OUT/runs" "$OUT/weights" "$OUT/weights_last"
ls -la "$OUT"
stamp "done"
