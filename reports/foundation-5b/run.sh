#!/usr/bin/env bash
# Device script (issue 2): 5B preset at 704×1280, random BF16 weights, 6 chunks (chunk 8, window 32, sink 8).
# Prints per-chunk ms, denoise FPS and peak memory; writes JSON results with manifests to $OUT.
# Also runs the release's protocol from spec 05 (12 chunks, first 4 dropped) at 4 and 2 steps for comparison.
set -euo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
OUT=${OUT:-reports/foundation-5b}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/nvidia-smi.txt"
python -m longlive.bench.chunks --preset wan2.2-ti2v-5b --chunks 6 --steps 4 --dtype bf16 --attn auto \
  --out "$OUT/chunks6_bf16_4step.json"
python -m longlive.bench.chunks --preset wan2.2-ti2v-5b --chunks 12 --steps 4 2 --warmup 4 --dtype bf16 --attn auto \
  --out "$OUT/chunks12_bf16_4and2step.json"
