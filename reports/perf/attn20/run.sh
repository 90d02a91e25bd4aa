#!/usr/bin/env bash
# Device script (issue 20): low-precision attention, the FP8 window KV cache, static FP8 activation scales, the pruned
# decoder and the full VAE, on one H100/H200.
#   PHASE=core    probe_cudnn + probe_triton, then PHASE=ladder (one call, when device time is short)
#   PHASE=mini    probe_cudnn, then the 4-step references and FP8-attention cells only
#   PHASE=probe   kernel checks and steady-shape timings outside the runner (probe_*.py) and the GPU tests of the
#                 new modules (pytest -m gpu), one call
#   PHASE=ladder  longlive sweep +experiment=attn_lowp (speed + per-chunk fidelity against BF16 attention) and
#                 the per-layer attention error (attn_error workload)
#   PHASE=kernels, ladder2, decode2: three calls that fit one session's 30 min (see each)
#   PHASE=memory2 the memory target's gated candidate (NVFP4 KV read through an FP8 window) at two lengths, and a
#                 profile of the fastest gated FP8 4-step chunk (what stands between it and 40 FPS)
#   PHASE=decode  longlive sweep +experiment=vae_decode over vae_type/vae_pruning, and the one-GPU end to end cells
# Each phase writes $OUT/<phase>.log and the rows flat in $OUT (copied every few seconds, so a cut-off call keeps
# finished rows). Extra sweep overrides: $ARGS; TLIMIT=seconds bounds one sweep.
# DRY_RUN=1 (any machine, no GPU): every sweep of the phase is expanded and checked (`longlive sweep --list`), nothing
# runs; a typo in an override fails here instead of costing device time (tests/test_device_plan.py).
set -euo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
OUT=${OUT:?set OUT}
PHASE=${PHASE:?set PHASE=probe, ladder or decode}
SRC=$PWD
DRY=${DRY_RUN:-0}
if [ -d .whl ] && [ "$DRY" != 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
  python3 -c "import imageio_ffmpeg" 2>/dev/null || export PYTHONPATH=$PYTHONPATH:$PWD/.whl/stub
fi
export PYTHONPATH=$SRC:${PYTHONPATH:-}
[ "$DRY" = 1 ] || nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$OUT/nvidia-smi.txt"
LOG="$OUT/run.log"
sweep() {  # $1: experiment, $2: a tag for the results folder, then the sweep's arguments
  local exp=$1 tag=$2; shift 2
  local res=/tmp/results/$tag
  (while sleep 5; do cp "$res/results.jsonl" "$OUT/sweep_$tag.jsonl" 2>/dev/null || true; done) &
  local copier=$!
  timeout "${TLIMIT:-86400}" python3 -m longlive.cli sweep "$@" --results "$res" 2>&1 | tr '\r' '\n' | grep -v "it/s\]$" \
    | tail -8 | tee -a "$LOG" || true
  kill $copier; cp "$res/results.jsonl" "$OUT/sweep_$tag.jsonl" || true
  python3 - "$OUT/sweep_$tag.jsonl" <<'PY' | tee -a "$LOG"
import json, sys
keys = ('attn', 'precision', 'act_scale', 'kv_quant', 'steps', 'vae_type', 'vae_pruning', 'decode', 'status',
        'denoise_fps', 'e2e_fps', 'ceiling_fps', 'latent_rel_err_vs_ref', 'latent_rel_err_max_chunk',
        'kv_saturated_share', 'peak_allocated_gb', 'decode_ms_median', 'decode_fps', 'reason')
for line in open(sys.argv[1]):
    r = json.loads(line)
    print({k: r.get(k) for k in keys if r.get(k) is not None})
PY
}
if [ "$DRY" = 1 ]; then
  PLAN="$OUT/dry_plan.txt"; : > "$PLAN"
  sweep() {  # noted here, expanded and checked together after the phase (one process: see the end)
    local exp=$1 tag=$2; shift 2
    { echo "SWEEP $exp $tag"; printf '%s\n' "$@"; echo "END"; } >> "$PLAN"
  }
  timeout() { echo "dry run: not run: ${*:2}"; }  # every other timed step is a probe or the GPU tests
fi
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
  one)  # when a session may get only one call: int8-fp8 on the GPU, the gate's 4/2-step cells, the one-GPU end to end
    (OUT=$OUT timeout 80 python3 reports/perf/attn20/probe_triton.py 2>&1 || echo "probe_triton: exit $?") | tail -30 | tee -a "$LOG"
    R=(+experiment=attn_lowp "matrices=[]" frames=96)
    TLIMIT=130 sweep attn_lowp attn_lowp "${R[@]}" attn=cudnn precision=bf16,fp8 kv_quant=none steps=2
    TLIMIT=60 sweep attn_lowp attn_lowp "${R[@]}" attn=cudnn-fp8 precision=fp8-static kv_quant=fp8 steps=2
    TLIMIT=110 sweep attn_lowp attn_lowp "${R[@]}" attn=int8-fp8 precision=fp8-static kv_quant=fp8 steps=4
    TLIMIT=150 sweep perf_ladder e2e +experiment=perf_ladder "quality.add_reference=false" attn=cudnn-fp8 \
      precision=fp8-static kv_quant=fp8 steps=2 decode=async vae_type=mg_lightvae vae_pruning=0.75 frames=96 ;;
  kernels)  # one call of a 30-min session: the cuDNN probe (Q quantisation and O dequantisation per call, the
            # two-pass fp8_window), the GPU tests, the VAE probe, then the tiny gate
    (OUT=$OUT timeout 75 python3 reports/perf/attn20/probe_cudnn.py 2>&1 || echo "probe_cudnn: exit $?") | tail -25 | tee -a "$LOG"
    (timeout 120 python3 -m pytest -q -m gpu tests/test_attention_int8_fp8.py tests/test_attention_cudnn_fp8.py \
      tests/test_kv_fp8_window.py tests/test_act_scale.py tests/test_lightvae.py tests/test_compile_vae_fusion.py \
      tests/test_attn_error.py 2>&1 || true) | tail -15 | tee -a "$LOG"
    (timeout 190 python3 reports/perf/attn20/probe_vae.py 2>&1 || echo "probe_vae: exit $?") | tail -40 | tee -a "$LOG"
    R=(+experiment=attn_lowp_tiny "matrices=[]")
    TLIMIT=70 sweep attn_lowp_tiny tiny "${R[@]}" attn=cudnn-fp8 precision=fp8-static kv_quant=fp8
    TLIMIT=40 sweep attn_lowp_tiny tiny "${R[@]}" attn=int8-fp8 precision=fp8-static kv_quant=fp8
    TLIMIT=30 sweep attn_lowp_tiny tiny "${R[@]}" attn=cudnn precision=fp8 kv_quant=none ;;
  ladder2)  # one call: the 4/2-step references, the passing config at 2 steps, then the cells that separate causes
    R=(+experiment=attn_lowp "matrices=[]" ${ARGS:-})
    sweep attn_lowp attn_lowp "${R[@]}" attn=cudnn precision=bf16,fp8 kv_quant=none steps=4,2
    sweep attn_lowp attn_lowp "${R[@]}" attn=cudnn-fp8 precision=fp8-static kv_quant=fp8 steps=2,4
    sweep attn_lowp attn_lowp "${R[@]}" attn=int8-fp8 precision=fp8-static kv_quant=fp8 steps=4
    sweep attn_lowp attn_lowp "${R[@]}" attn=cudnn-fp8 precision=bf16 kv_quant=fp8 steps=4
    sweep attn_lowp attn_lowp "${R[@]}" attn=cudnn precision=fp8-static kv_quant=none steps=4 ;;
  decode2)  # one call: full VAE and MG-LightVAE compiled, one-GPU end to end, then the per-layer attention error
    sweep vae_decode vae_decode +experiment=vae_decode compile=default decode_chunks=6 vae_type=mg_lightvae \
      vae_pruning=0,0.5,0.75
    sweep perf_ladder e2e +experiment=perf_ladder "quality.add_reference=false" attn=cudnn-fp8 precision=fp8-static kv_quant=fp8 steps=2 \
      decode=async vae_type=mg_lightvae vae_pruning=0.75 frames=96
    sweep attn_lowp attn_error +experiment=attn_lowp "hydra.sweeper.params={}" workload=attn_error precision=bf16 \
      steps=4 compile=none attn=cudnn-fp8,int8-fp8 kv_quant=fp8 frames=48 ;;
  memory2)  # one call: FP8 weights + NVFP4 KV in an FP8 window (static bytes 5.10 + 2.92 + 0.17 GB), gated (the BF16
            # reference and the FP8 baseline first), the profile, then 384 frames (the window is fixed: the peak must
            # not grow with length)
    R=(+experiment=attn_lowp "matrices=[]")
    TLIMIT=170 sweep attn_lowp attn_lowp "${R[@]}" attn=cudnn precision=fp8 kv_quant=none steps=2 frames=96
    TLIMIT=100 sweep attn_lowp attn_lowp "${R[@]}" attn=cudnn-fp8 precision=fp8-static kv_quant=nvfp4 steps=2 frames=96
    TLIMIT=130 sweep perf_ladder profile +experiment=perf_ladder "quality.add_reference=false" attn=cudnn-fp8 \
      precision=fp8-static kv_quant=fp8 steps=4 frames=96 profile=true
    cp -r /tmp/results/profile/cells "$OUT/profile_cells" 2>/dev/null || true
    sweep attn_lowp attn_lowp "${R[@]}" attn=cudnn-fp8 precision=fp8-static kv_quant=nvfp4 steps=2 frames=384 ;;
  tiny)  # the tiny half on the kernels (PHASE=kernels' last three sweeps), cells that failed earlier redone
    R=(+experiment=attn_lowp_tiny "matrices=[]")  # --retry-failed goes last: argparse takes no options in between
    TLIMIT=100 sweep attn_lowp_tiny tiny "${R[@]}" attn=cudnn-fp8 precision=fp8-static kv_quant=fp8 --retry-failed
    TLIMIT=60 sweep attn_lowp_tiny tiny "${R[@]}" attn=int8-fp8 precision=fp8-static kv_quant=fp8 --retry-failed
    TLIMIT=60 sweep attn_lowp_tiny tiny "${R[@]}" attn=cudnn precision=fp8 kv_quant=none --retry-failed ;;
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
if [ "$DRY" = 1 ]; then  # each noted sweep through `longlive sweep --list`, in one Python process
  python3 - "$PLAN" "$OUT" <<'PY'
import contextlib, io, sys
from longlive.cli import main
plan, out = open(sys.argv[1]).read().splitlines(), sys.argv[2]
n = 0
while plan:
    _, exp, tag = plan.pop(0).split(" ", 2)
    args = []
    while (line := plan.pop(0)) != "END":
        args.append(line)
    n += 1
    listing = io.StringIO()
    with contextlib.redirect_stdout(listing):
        code = main(["sweep", *args, "--results", f"/tmp/dry_results/{tag}", "--list"])
    if code:
        print(f"dry run: sweep {exp} ({tag}) {' '.join(args)}: refused (above)")
        sys.exit(1)
    open(f"{out}/dry_{n}_{tag}.txt", "w").write(listing.getvalue())
    print(f"dry run: sweep {exp} ({tag}): {len(listing.getvalue().splitlines())} cells")
PY
fi
