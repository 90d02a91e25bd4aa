#!/usr/bin/env bash
# Device script (issue 7): the inference ladder at the hardware limit, one H200 (or H100).
#   PHASE=denoise  bf16 eager vs compiled, fp8 compiled, fp8 + NVFP4 KV (4 and 2 steps), profiles
#   PHASE=vae      Wan2.2 VAE streaming decode: channels-last eager vs compiled RMSNorm+SiLU, profile
#   PHASE=memory   fp8 + NVFP4 KV over a long video (peak memory must stay flat)
#   PHASE=all      compiled ladder with fp32 fidelity and long fp8 + NVFP4-KV runs, then the VAE (one lease)
#   PHASE=e2e      (2 GPUs) compiled FP8 4/2-step end to end, Wan2.2 VAE on the second GPU (decode=device)
#   PHASE=sp       (4 GPUs) compiled SP scaling, sp = 1, 2, 4: BF16 and FP8 (W8A8) weights, BF16 and FP8 K/V
#                  exchange, 4 and 2 steps (one process per sp and precision); sp = 4 BF16 also end to end with
#                  the VAE decoded in tiles on all 4 GPUs
#   PHASE=fuse     (4 GPUs, one process per GPU) compiled BF16 and FP8, 4 and 2 steps, with and without the fused
#                  q/k/v GEMM (--fuse-qkv), each profiled (device time by kind of kernel)
#   PHASE=autotune (4 GPUs, one process per GPU) compile mode default vs max-autotune-no-cudagraphs on the same GPU:
#                  BF16, FP8, FP8 with fused q/k/v, FP8 + NVFP4 KV; 4 and 2 steps
#   PHASE=autotune2 (2 GPUs) the same for FP8 and FP8 + NVFP4 KV, max-autotune with the GEMMs kept on cuBLAS
#   PHASE=spprof   (4 GPUs) compiled BF16 4-step profiles at sp = 1 and sp = 4 (rank 0): where sp = 4 loses time
# Everything lands in $OUT (rows.jsonl / JSON with manifests, profiles) and is packed into $OUT/perf.tar.gz.
set -euo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
OUT=${OUT:?set OUT}
PHASE=${PHASE:-denoise}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
mkdir -p "$OUT/$PHASE"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$OUT/$PHASE/nvidia-smi.txt"
perf_per_gpu() {  # one `bench.perf` per GPU, all at once: each argument is "name|perf arguments" (8 timed chunks)
  local i=0 spec
  for spec in "$@"; do
    # shellcheck disable=SC2086  # the perf arguments are meant to split
    CUDA_VISIBLE_DEVICES=$i python -m longlive.bench.perf ${spec#*|} --chunks 8 --out "$OUT/$PHASE/${spec%%|*}" \
      > "$OUT/$PHASE/${spec%%|*}.log" 2>&1 &
    i=$((i + 1))
  done
  wait
  grep -h "FPS\|ceilings\|Error" "$OUT/$PHASE"/*.log || true  # a summary: the logs and rows are the record
}
case "$PHASE" in
  denoise)
    python -m longlive.bench.perf --configs bf16:none:4 bf16:none:2 --compile none default --chunks 8 \
      --profile --out "$OUT/denoise/bf16"
    python -m longlive.bench.perf --configs fp8:none:4 fp8:none:2 fp8:nvfp4:4 fp8:nvfp4:2 --compile default \
      --chunks 8 --profile --out "$OUT/denoise/fp8" ;;
  vae)
    python -m longlive.bench.vae_decode --chunks 4 --channels-last --out "$OUT/vae/eager_cl.json" \
      --profile "$OUT/vae/profile_eager_cl.txt"
    python -m longlive.bench.vae_decode --chunks 4 --channels-last --compile --out "$OUT/vae/compiled_cl.json" \
      --profile "$OUT/vae/profile_compiled_cl.txt" ;;
  memory)
    python -m longlive.bench.perf --configs fp8:nvfp4:2 bf16:nvfp4:4 --compile default --chunks 8 \
      --long-chunks 48 --out "$OUT/memory" ;;
  all)
    python -m longlive.bench.perf --configs bf16:none:4 bf16:none:2 fp8:none:4 fp8:none:2 fp8:nvfp4:4 fp8:nvfp4:2 \
      --compile default --chunks 8 --long-chunks 32 --fidelity --out "$OUT/all/ladder"
    tar -czf "$OUT/perf_ladder.tar.gz" -C "$OUT" all
    python -m longlive.bench.vae_decode --chunks 4 --channels-last --out "$OUT/all/vae_eager_cl.json" \
      --profile "$OUT/all/vae_profile_eager_cl.txt"
    python -m longlive.bench.vae_decode --chunks 4 --channels-last --compile --out "$OUT/all/vae_compiled_cl.json" \
      --profile "$OUT/all/vae_profile_compiled_cl.txt" ;;
  e2e)
    for steps in 4 2; do
      python -m longlive.cli generate --preset wan2.2-ti2v-5b --random-weights --frames 96 --steps $steps \
        --precision fp8 --compile default --decode device --vae-device cuda:1 --no-progress \
        --out "$OUT/e2e/fp8_${steps}step"
      rm -f "$OUT/e2e/fp8_${steps}step/video.mp4"  # 400+ MB at 1280x704; result.json and strip.png stay
    done ;;
  sp)
    for n in 1 2 4; do
      for quant in none fp8; do
        extra=""
        if [ "$n" = 4 ] && [ "$quant" = none ]; then extra="--decode parallel"; fi
        torchrun --standalone --nproc_per_node=$n -m longlive.bench.sp --chunks 8 --steps 4 2 --quant $quant \
          --exchange none fp8 --compile default $extra --out "$OUT/sp/sp${n}_${quant}.json"
      done
    done ;;
  fuse)
    perf_per_gpu "bf16_unfused|--configs bf16:none:4 bf16:none:2 --compile default --profile" \
      "bf16_fused|--configs bf16:none:4 bf16:none:2 --compile default --profile --fuse-qkv" \
      "fp8_unfused|--configs fp8:none:4 fp8:none:2 --compile default --profile" \
      "fp8_fused|--configs fp8:none:4 fp8:none:2 --compile default --profile --fuse-qkv" ;;
  autotune)
    modes="--compile default max-autotune-no-cudagraphs"
    perf_per_gpu "bf16|--configs bf16:none:4 bf16:none:2 $modes" "fp8|--configs fp8:none:4 fp8:none:2 $modes" \
      "fp8_fused|--configs fp8:none:4 fp8:none:2 $modes --fuse-qkv" \
      "fp8_nvfp4kv|--configs fp8:nvfp4:4 fp8:nvfp4:2 $modes" ;;
  autotune2)
    modes="--compile default max-autotune-no-cudagraphs --profile"
    perf_per_gpu "fp8|--configs fp8:none:4 fp8:none:2 $modes" "fp8_nvfp4kv|--configs fp8:nvfp4:4 fp8:nvfp4:2 $modes" ;;
  spprof)
    for n in 1 4; do
      torchrun --standalone --nproc_per_node=$n -m longlive.bench.sp --chunks 8 --steps 4 --quant none \
        --exchange none --compile default --profile "$OUT/spprof/profile_sp${n}.txt" --out "$OUT/spprof/sp${n}.json"
    done ;;
  *) echo "unknown PHASE=$PHASE" >&2; exit 2 ;;
esac
tar -czf "$OUT/perf_$PHASE.tar.gz" -C "$OUT" "$PHASE"
