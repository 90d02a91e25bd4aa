#!/usr/bin/env bash
# Device script (issue 17): the perf ladder and the VAE decode through the runner, next to the bench scripts they
# replace, on one GPU.
#   PHASE=ladder   longlive sweep +experiment=perf_ladder: the FP32 eager reference cells (latent error), then
#                  BF16/FP8 x 4/2 steps compiled. The FP32 cells take most of a call, so speed is compared in:
#   PHASE=compare  the ladder's four cells again (quality.add_reference=false) and python -m longlive.bench.perf with
#                  the same settings (compile default, 8 chunks; its --fidelity fp32 runs left out: the ladder
#                  call measures that), then longlive sweep +experiment=vae_decode and python -m
#                  longlive.bench.vae_decode (channels-last, eager and compiled) — each pair in this one call.
# Writes $OUT/<phase>.log and the rows flat in $OUT (sweep results.jsonl copied as cells finish, bench JSON).
# The bench scripts were removed once their workloads existed: BENCH_SRC is a snapshot of the package at the last
# commit that had them (made here with `git archive 2dc68ec longlive | tar -x -C .snap/bench-2dc68ec`, carried
# to the device machine), so both sides run in the same call on the same GPU. The bench runs from inside the
# snapshot: `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH (the first run here
# failed on exactly that, see reports/harness/README.md).
set -euo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
OUT=${OUT:?set OUT}
PHASE=${PHASE:?set PHASE=ladder or compare}
SRC=$PWD
BENCH_SRC=${BENCH_SRC:-$PWD/.snap/bench-2dc68ec}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$SRC:${PYTHONPATH:-}
cd "$SRC"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$OUT/nvidia-smi.txt"
LOG="$OUT/$PHASE.log"
sweep() {  # $1: experiment, then extra overrides; results.jsonl is copied back every few seconds, so a cut-off call
           # keeps finished rows
  local exp=$1; shift
  local res=/tmp/results/$exp-$PHASE
  (while sleep 5; do cp "$res/results.jsonl" "$OUT/sweep_$exp.jsonl" 2>/dev/null || true; done) &
  local copier=$!
  python3 -m longlive.cli sweep +experiment="$exp" "$@" --results "$res" 2>&1 | tr '\r' '\n' | grep -v "it/s\]$" \
    | tail -5 | tee -a "$LOG"
  kill $copier; cp "$res/results.jsonl" "$OUT/sweep_$exp.jsonl"
  python3 -c "
import json, sys
keys = ('precision', 'steps', 'compile', 'status', 'denoise_fps', 'ceiling_fps', 'fraction_of_ceiling',
        'latent_rel_err_vs_ref', 'gemm_tflops', 'attn_tflops', 'compile_s', 'decode_ms_median', 'decode_fps', 'reason')
for line in open(sys.argv[1]):
    r = json.loads(line)
    print({k: r.get(k) for k in keys if r.get(k) is not None})
" "$OUT/sweep_$exp.jsonl" | tee -a "$LOG"
}
case "$PHASE" in
  ladder)  # the whole preset: the FP32 eager reference cells first, then BF16/FP8 x 4/2 steps compiled
    sweep perf_ladder ;;
  perf)  # the compare call's first half alone (when device time is short): the ladder's cells and the bench
    sweep perf_ladder quality.add_reference=false
    (cd "$BENCH_SRC" && LONGLIVE_GIT_COMMIT=2dc68ec PYTHONPATH=$BENCH_SRC:$PYTHONPATH python3 -m longlive.bench.perf --configs bf16:none:4 bf16:none:2 fp8:none:4 \
      fp8:none:2 --compile default --chunks 8 --out /tmp/bench_perf) 2>&1 | grep -v "^  \[" | tee -a "$LOG"
    cp /tmp/bench_perf/rows.jsonl "$OUT/bench_perf_rows.jsonl" ;;
  compare)  # speed both ways in one call: the ladder's cells again (no reference) and the former bench script,
            # then the VAE decode both ways
    sweep perf_ladder quality.add_reference=false
    (cd "$BENCH_SRC" && LONGLIVE_GIT_COMMIT=2dc68ec PYTHONPATH=$BENCH_SRC:$PYTHONPATH python3 -m longlive.bench.perf --configs bf16:none:4 bf16:none:2 fp8:none:4 \
      fp8:none:2 --compile default --chunks 8 --out /tmp/bench_perf) 2>&1 | grep -v "^  \[" | tee -a "$LOG"
    cp /tmp/bench_perf/rows.jsonl "$OUT/bench_perf_rows.jsonl"
    sweep vae_decode
    (cd "$BENCH_SRC" && LONGLIVE_GIT_COMMIT=2dc68ec PYTHONPATH=$BENCH_SRC:$PYTHONPATH python3 -m longlive.bench.vae_decode --chunks 4 --channels-last \
      --out "$OUT/bench_vae_eager.json") 2>&1 | tail -1 | tee -a "$LOG"
    (cd "$BENCH_SRC" && LONGLIVE_GIT_COMMIT=2dc68ec PYTHONPATH=$BENCH_SRC:$PYTHONPATH python3 -m longlive.bench.vae_decode --chunks 4 --channels-last --compile \
      --out "$OUT/bench_vae_compiled.json") 2>&1 | tail -1 | tee -a "$LOG" ;;
  *) echo "unknown PHASE=$PHASE (ladder or compare)"; exit 2 ;;
esac
