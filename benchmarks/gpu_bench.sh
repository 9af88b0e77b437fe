#!/usr/bin/env bash
# A short GPU session for the speed issue, run from the repository root:
#   1. `conversenet bench` on CUDA, alone on the GPU (all rows), JSON + Markdown;
#   2. the CUDA cases of the operator/module/model/FFT tests.
# usage: benchmarks/gpu_bench.sh OUT     (env: PY, BENCH_ROWS, BENCH_TIMEOUT, TEST_TIMEOUT)
set -u
OUT=${1:?usage: gpu_bench.sh OUT}
PY=${PY:-python3}
BENCH_ROWS=${BENCH_ROWS:-fwd,fwdbwd,up,dncnn256,dncnn512,srresnet,dncnn_train}
mkdir -p "$OUT"
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
export PYTHONUNBUFFERED=1 CONVERSENET_OFFLINE=1
stamp "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, conversenet; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
    | tee -a "$OUT/gpu.txt" || exit 3
stamp "bench"
timeout "${BENCH_TIMEOUT:-240}" $PY -m conversenet bench --device cuda --rows "$BENCH_ROWS" \
    --repeat 10 --warmup 3 --budget 3 --json "$OUT/bench_cuda.json" --markdown "$OUT/bench_cuda.md" \
    > "$OUT/bench.log" 2>&1
echo "bench rc=$?"; tail -n 40 "$OUT/bench.log"
stamp "tests"
timeout "${TEST_TIMEOUT:-240}" $PY -m pytest tests/test_converse2d.py tests/test_converse_autograd.py \
    tests/test_nn_modules.py tests/test_models.py tests/test_fft_split.py -q -m "not slow" -k cuda \
    -p no:cacheprovider > "$OUT/pytest_cuda.log" 2>&1
echo "pytest rc=$?"; tail -n 5 "$OUT/pytest_cuda.log"
stamp "done"
