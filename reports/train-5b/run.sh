#!/usr/bin/env bash
# Device script (issue 6) for a 4-GPU H200 machine: the Table 1 training ladder and the Table 2 DMD memory ladder
# at the 5B preset (random BF16/FP32 weights, random latents: cost does not depend on the data).
#   PHASE=smoke   tiny preset, every Table 1 config, 1 timed iteration (plumbing on NCCL/FSDP2/compiled Flex)
#   PHASE=t1a     5B, 96 latents (16 s), Balanced SP: BF16 and FP8 (real _scaled_mm GEMMs)        [4 GPUs]
#   PHASE=t1b     5B, 96 latents: FP8 Balanced SP (again, after the saved-tensor fix), BF16 traditional SP, then
#                 BF16 without SP (FSDP only) if it fits                                           [4 GPUs]
#   PHASE=t1c     5B, 192 latents (32 s, issue 7): BF16 Balanced SP, then BF16 traditional SP, 1 timed iteration
#                 each (BF16 without SP does not fit: 112 GB per rank at 16 s)                       [4 GPUs]
#   PHASE=t1d     5B, 192 latents (32 s, issue 7): FP8 Balanced SP, 1 timed iteration                  [4 GPUs]
#   PHASE=t2      5B DMD, 32 latents: the four Table 2 rungs, one per GPU, concurrently; then FP8   [1 GPU each]
set -uo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_NCCL_ASYNC_ERROR_HANDLING=1
OUT=${OUT:-reports/train-5b/h200x4}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
FILTER='Warning\|OMP_NUM_THREADS\|\*\*\*\*\|warnings.warn'
run_t1() {  # $1 timeout, $2 preset, $3 frames, $4 iters, rest: configs
  local to=$1 preset=$2 frames=$3 iters=$4; shift 4
  timeout "$to" python -m torch.distributed.run --standalone --nproc_per_node=4 -m longlive.bench.train_ladder \
    --preset "$preset" --frames "$frames" --iters "$iters" --config "$@" --out "$OUT/table1_${preset}" 2>&1 \
    | grep -v "$FILTER" | tail -60
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/nvidia-smi.txt"
case "${PHASE:?set PHASE}" in
  smoke) run_t1 150 tiny 8 1 bf16-nosp bf16-traditional bf16-balanced fp8-balanced ;;
  t1a) run_t1 560 wan2.2-ti2v-5b 96 2 bf16-balanced fp8-balanced ;;
  t1b) run_t1 570 wan2.2-ti2v-5b 96 2 fp8-balanced bf16-traditional bf16-nosp ;;
  t1c) run_t1 450 wan2.2-ti2v-5b 192 1 bf16-balanced bf16-traditional ;;
  t1d) run_t1 500 wan2.2-ti2v-5b 192 1 fp8-balanced ;;
  t2)
    i=0
    for c in bf16 nvfp4-generator nvfp4-generator-teacher nvfp4-all; do
      CUDA_VISIBLE_DEVICES=$i timeout 420 python -m longlive.bench.dmd_memory --preset wan2.2-ti2v-5b --latents 32 \
        --config "$c" --out "$OUT/table2_dmd" > "$OUT/table2_$c.log" 2>&1 &
      i=$((i + 1))
    done
    wait
    for c in bf16 nvfp4-generator nvfp4-generator-teacher nvfp4-all; do grep -v "$FILTER" "$OUT/table2_$c.log" | tail -6; done
    ;;
esac
