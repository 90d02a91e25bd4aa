#!/usr/bin/env bash
# Device script (issue 20): low-precision attention, the FP8 window KV cache, static FP8 activation scales, the pruned
# decoder and the full VAE, on one H100/H200.
#   PHASE=core    probe_cudnn + probe_triton, then PHASE=ladder (one call, when device time is short)
#   PHASE=mini    probe_cudnn, then the 4-step references and FP8-attention cells only
#   PHASE=probe   kernel checks and steady-shape timings outside the runner (probe_*.py) and the GPU tests of the
#                 new modules (pytest -m gpu), one call
#   PHASE=ladder  longlive sweep +experiment=attn_lowp (speed + per-chunk fidelity against BF16 attention) and
#                 the per-layer attention error (attn_error workload)
#   PHASE=decode  longlive sweep +experiment=vae_decode over vae_type/vae_pruning, and the one-GPU end to end cells
# Each phase writes $OUT/<phase>.log and the rows flat in $OUT (copied every few seconds, so a cut-off call keeps
# finished rows). Extra sweep overrides: $ARGS.
set -euo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
OUT=${OUT:?set OUT}
PHASE=${PHASE:?set PHASE=probe, ladder or decode}
SRC=$PWD
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
  python3 -c "import imageio_ffmpeg" 2>/dev/null || export PYTHONPATH=$PYTHONPATH:$PWD/.whl/stub
fi
export PYTHONPATH=$SRC:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$OUT/nvidia-smi.txt"
LOG="$OUT/run.log"
sweep() {  # $1: experiment, $2: a tag for the results folder, then the sweep's arguments
  local exp=$1 tag=$2; shift 2
  local res=/tmp/results/$tag
  (while sleep 5; do cp "$res/results.jsonl" "$OUT/sweep_$tag.jsonl" 2>/dev/null || true; done) &
  local copier=$!
  python3 -m longlive.cli sweep "$@" --results "$res" 2>&1 | tr '\r' '\n' | grep -v "it/s\]$" \
    | tail -8 | tee -a "$LOG" || true
  kill $copier; cp "$res/results.jsonl" "$OUT/sweep_$tag.jsonl" || true
  python3 - "$OUT/sweep_$tag.jsonl" <<'PY' | tee -a "$LOG"
import json, sys
keys = ('attn', 'precision', 'act_scale', 'kv_quant', 'steps', 'vae_type', 'vae_pruning', 'decode', 'status',
        'denoise_fps', 'e2e_fps', 'ceiling_fps', 'latent_rel_err_vs_ref', 'latent_rel_err_max_chunk',
        'kv_saturated_share', 'peak_memory_gib', 'decode_ms_median', 'decode_fps', 'reason')
for line in open(sys.argv[1]):
    r = json.loads(line)
    print({k: r.get(k) for k in keys if r.get(k) is not None})
PY
}
case "$PHASE" in
  core)  # when one call is all there is: the two kernel probes, then the ladder's cells (ARGS=frames=96 keeps it short)
    for p in probe_cudnn probe_triton; do
      (OUT=$OUT timeout 75 python3 reports/perf/attn20/$p.py 2>&1 || echo "$p: exit $?") | tail -25 | tee -a "$LOG"
    done
    PHASE=ladder bash "$0" ;;
  mini)  # the least that answers the main question: the cuDNN probe, then BF16/FP8 references and the FP8-attention
         # cells at 4 steps (ARGS=frames=96)
    (OUT=$OUT timeout 60 python3 reports/perf/attn20/probe_cudnn.py 2>&1 || echo "probe_cudnn: exit $?") | tail -20 | tee -a "$LOG"
    R=(+experiment=attn_lowp "matrices=[]" ${ARGS:-})
    sweep attn_lowp attn_lowp "${R[@]}" attn=cudnn precision=bf16,fp8 kv_quant=none steps=4
    sweep attn_lowp attn_lowp "${R[@]}" attn=cudnn-fp8 precision=fp8-static kv_quant=fp8 steps=4
    sweep attn_lowp attn_lowp "${R[@]}" attn=cudnn-fp8 precision=bf16 kv_quant=fp8 steps=4 ;;
  probe)  # kernels outside the runner, then the GPU tests of the new modules (each step time-limited)
    python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.backends.cudnn.version())" | tee -a "$LOG"
    for p in probe_cudnn probe_triton; do
      (OUT=$OUT timeout 110 python3 reports/perf/attn20/$p.py 2>&1 || echo "$p: exit $?") | tail -30 | tee -a "$LOG"
    done
    (timeout 100 python3 -m pytest -q -m gpu tests/test_attention_cudnn_fp8.py tests/test_attention_int8_fp8.py \
      tests/test_kv_fp8_window.py tests/test_act_scale.py 2>&1 || true) | tail -15 | tee -a "$LOG" ;;
  vae)  # the full Wan2.2 VAE: eager, compiled, each fusion off in turn, a profile
    (timeout 200 python3 reports/perf/attn20/probe_vae.py 2>&1 || echo "probe_vae: exit $?") | tail -40 | tee -a "$LOG" ;;
  ladder)  # the gate's cells in priority order, one results folder (reference cells first: they are reused)
    R=(+experiment=attn_lowp "matrices=[]" ${ARGS:-})
    sweep attn_lowp attn_lowp "${R[@]}" attn=cudnn precision=bf16,fp8 kv_quant=none steps=4,2
    sweep attn_lowp attn_lowp "${R[@]}" attn=cudnn-fp8 precision=fp8-static kv_quant=fp8 steps=4,2
    sweep attn_lowp attn_lowp "${R[@]}" attn=cudnn-fp8 precision=bf16 kv_quant=none,fp8 steps=4
    sweep attn_lowp attn_lowp "${R[@]}" attn=int8-fp8 precision=fp8-static kv_quant=fp8 steps=4
    sweep attn_lowp attn_lowp "${R[@]}" attn=cudnn precision=fp8-static kv_quant=none steps=4
    sweep attn_lowp attn_lowp "${R[@]}" attn=cudnn-fp8 precision=fp8 kv_quant=fp8 steps=4 ;;
  decode)  # MG-LightVAE compiled at rates 0 / 0.5 / 0.75, then one GPU end to end (2-step, pruned decoder, async)
    sweep vae_decode vae_decode +experiment=vae_decode compile=default decode_chunks=6
    sweep vae_decode vae_decode +experiment=vae_decode compile=default decode_chunks=6 vae_type=mg_lightvae \
      vae_pruning=0.5,0.75
    sweep perf_ladder e2e +experiment=perf_ladder "quality.add_reference=false" attn=cudnn-fp8 precision=fp8-static kv_quant=fp8 steps=2 \
      decode=async vae_type=mg_lightvae vae_pruning=0.75 frames=96 ;;
esac
