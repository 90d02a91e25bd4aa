#!/usr/bin/env bash
# Device script (spec 03 kernels): the GPU tests of the Triton NVFP4 / FP8 quantisers against the PyTorch
# reference (bit-exact), then the bandwidth benchmark at the 5B shapes with the copy ceiling of the same run.
# From the repo root:  LONGLIVE_GIT_COMMIT=<sha> OUT=<dir> bash reports/quant-kernels/run.sh
# BENCH_ARGS (e.g. --sweep) goes to the benchmark; TEST_TIMEOUT / BENCH_TIMEOUT cap each step (seconds).
set -uo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
export PYTHONPATH=$PWD:${PYTHONPATH:-}
OUT=${OUT:-reports/quant-kernels/h200}
mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} | tee "$OUT/nvidia-smi.txt"

xdist=""
python -c "import xdist" 2>/dev/null && xdist="-n 4"
t0=$SECONDS
timeout "${TEST_TIMEOUT:-160}" python -m pytest tests/test_triton_kernels.py -q -m gpu $xdist -rfEx -p no:cacheprovider \
  --junitxml="$OUT/pytest.xml" > "$OUT/pytest.log" 2>&1
echo "pytest rc=$? after $((SECONDS - t0)) s"
grep -E "^(FAILED|ERROR|XFAIL)" "$OUT/pytest.log" | cut -c1-400 | head -n 30
tail -n 3 "$OUT/pytest.log"

t0=$SECONDS
timeout "${BENCH_TIMEOUT:-120}" python -m longlive.bench.quant_kernels --out "$OUT/quant_kernels.json" ${BENCH_ARGS:-} \
  > "$OUT/bench.log" 2>&1
echo "bench rc=$? after $((SECONDS - t0)) s"
tail -n 60 "$OUT/bench.log"
