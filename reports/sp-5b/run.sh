#!/usr/bin/env bash
# Device script (issue 5) for a 4-GPU H200 machine: Ulysses SP inference at the 5B defaults (704x1280, chunk 8,
# window 32, sink 8, random BF16 weights, 6 chunks) for sp = 1, 2, 4, with the K/V all-to-all in BF16, FP8 and
# NVFP4: per-chunk ms, denoise FPS, bytes exchanged per forward, fidelity against a single-process run
# (--reference single: rank 0 also runs sp = 1). STEPS (default 4) sets the denoising steps.
set -euo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_NCCL_ASYNC_ERROR_HANDLING=1
OUT=${OUT:-reports/sp-5b}
STEPS=${STEPS:-4}
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.txt"
nvidia-smi topo -m | tee "$OUT/topo.txt"
[ "${SCALING:-1}" = 1 ] && python -m longlive.bench.sp --preset wan2.2-ti2v-5b --chunks 6 --steps "$STEPS" --exchange none \
  --out "$OUT/sp1_${STEPS}step.json" 2>&1 | grep -v Warning
for sp in $([ "${SCALING:-1}" = 1 ] && echo 2 4); do
  python -m torch.distributed.run --standalone --nproc_per_node=$sp -m longlive.bench.sp --preset wan2.2-ti2v-5b \
    --chunks 6 --steps "$STEPS" --exchange none fp8 nvfp4 --reference single \
    --out "$OUT/sp${sp}_${STEPS}step.json" 2>&1 | grep -v "Warning\|OMP_NUM_THREADS\|\*\*\*\*"
done
# End to end with the Wan2.2 VAE (random weights): decode each chunk right after it is denoised, on the one GPU
# (sp = 1), split into spatial tiles over the SP ranks (decode=parallel), or on rank 0 only (decode=rank0).
if [ "${E2E:-0}" = 1 ]; then
  python -m longlive.bench.sp --preset wan2.2-ti2v-5b --chunks 6 --steps "$STEPS" --exchange none --decode parallel \
    --out "$OUT/e2e_sp1_${STEPS}step.json" 2>&1 | grep "FPS"
  for sp in 2 4; do
    python -m torch.distributed.run --standalone --nproc_per_node=$sp -m longlive.bench.sp --preset wan2.2-ti2v-5b \
      --chunks 6 --steps "$STEPS" --exchange none --decode parallel --out "$OUT/e2e_sp${sp}_${STEPS}step.json" 2>&1 \
      | grep "FPS"
  done
  python -m torch.distributed.run --standalone --nproc_per_node=4 -m longlive.bench.sp --preset wan2.2-ti2v-5b \
    --chunks 6 --steps "$STEPS" --exchange none --decode rank0 --out "$OUT/e2e_sp4_rank0_${STEPS}step.json" 2>&1 \
    | grep "FPS"
fi
