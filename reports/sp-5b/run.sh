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
python -m longlive.bench.sp --preset wan2.2-ti2v-5b --chunks 6 --steps "$STEPS" --exchange none \
  --out "$OUT/sp1_${STEPS}step.json" 2>&1 | grep -v Warning
for sp in 2 4; do
  python -m torch.distributed.run --standalone --nproc_per_node=$sp -m longlive.bench.sp --preset wan2.2-ti2v-5b \
    --chunks 6 --steps "$STEPS" --exchange none fp8 nvfp4 --reference single \
    --out "$OUT/sp${sp}_${STEPS}step.json" 2>&1 | grep -v "Warning\|OMP_NUM_THREADS\|\*\*\*\*"
done
