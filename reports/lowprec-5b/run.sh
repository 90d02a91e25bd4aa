#!/usr/bin/env bash
# Device script (issue 4): the 5B preset at 704x1280 (random weights, seed 0), precision {bf16, fp8, nvfp4}
# x kv_quant {none, fp8, nvfp4}, 6 chunks at 4 steps: weight memory, KV memory, per-chunk ms, peak memory and
# fidelity against bf16/none (latent relative error over 48 latents; PSNR of the first 8 latents decoded by the
# Wan2.2 VAE, random weights). fp8 = torch._scaled_mm row-wise W8A8; nvfp4 = emulated W4A4 (Hopper has no FP4
# tensor cores: numerics and memory real, GEMM speed not).
set -euo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
OUT=${OUT:-reports/lowprec-5b}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.txt"
python -m longlive.bench.lowprec --preset wan2.2-ti2v-5b --chunks 6 --steps 4 --precisions bf16 fp8 nvfp4 \
  --kv none fp8 nvfp4 --decode-latents 8 --out "$OUT/lowprec_5b.json"
# Results: triton-kernels/ (fused kernels in the hot paths) and torch-reference-kernels/ (reference quantisers).
