#!/usr/bin/env bash
# Device script (issue 3): the sweep path on a GPU — a slice of the table3_inference matrix on the 5B preset
# (random weights, 48 latents = 6 chunks): bf16 and fp8 x 4 and 2 steps, streaming decode. bf16 cells run;
# fp8 cells are explained skips until the low-precision issue lands. Then the report is rendered.
# Results + report go to $OUT (report tarred: the device tool returns at most 8 files).
set -euo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
OUT=${OUT:-/tmp/runner-gpu}
WORK=${WORK:-/tmp/runner-gpu-work}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
mkdir -p "$OUT" "$WORK"
python -m longlive.cli sweep +experiment=table3_inference precision=bf16,fp8 kv_quant=none steps=4,2 decode=streaming \
  frames=48 --results "$WORK/results" --no-progress
python -m longlive.cli report "$WORK/results" --out "$WORK/report" --title "table3_inference slice (5B, random weights)"
cp "$WORK/results/results.jsonl" "$OUT/results.jsonl"
tar czf "$OUT/report.tgz" -C "$WORK" report
for d in "$WORK"/results/cells/*/; do [ -f "$d/stderr.log" ] && tail -3 "$d/stderr.log"; done
