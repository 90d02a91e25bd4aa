#!/usr/bin/env bash
# Device script (issue 2): the 5B preset at 704×1280 with random BF16 weights (chunk 8, window 32, sink 8).
#  1. 6 chunks, 4 steps: per-chunk ms, denoise FPS, peak memory (the done-criterion);
#  2. the release's protocol of spec 05 (12 chunks, first 4 dropped) at 4 and 2 steps, for comparison;
#  3. the Wan2.2 VAE (random weights): streaming decode of 3 chunks, NCDHW and channels-last;
#  4. end to end: `longlive generate` with async streaming decode through the Wan2.2 VAE, mp4 written.
# Results (JSON with manifests) go to $OUT. Needs imageio-ffmpeg for step 4 (carried as a wheel in .whl/).
set -euo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
OUT=${OUT:-reports/foundation-5b}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/nvidia-smi.txt"
python -m longlive.bench.chunks --preset wan2.2-ti2v-5b --chunks 6 --steps 4 --dtype bf16 --attn auto \
  --out "$OUT/chunks6_bf16_4step.json" --profile "$OUT/profile_bf16_4step.txt"
python -m longlive.bench.chunks --preset wan2.2-ti2v-5b --chunks 12 --steps 4 2 --warmup 4 --dtype bf16 --attn auto \
  --out "$OUT/chunks12_bf16_4and2step.json"
python -m longlive.bench.vae_decode --preset wan2.2-ti2v-5b --chunks 3 --dtype bf16 --out "$OUT/vae_decode_bf16.json"
python -m longlive.bench.vae_decode --preset wan2.2-ti2v-5b --chunks 3 --dtype bf16 --channels-last \
  --out "$OUT/vae_decode_bf16_cl.json"
python -m longlive.cli generate --preset wan2.2-ti2v-5b --random-weights --frames 48 --steps 4 --decode async \
  --no-progress --out "$OUT/e2e"
