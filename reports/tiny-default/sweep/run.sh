#!/usr/bin/env bash
# Device script (issue 6): tiny-default recipe variants side by side on the device machine's CPU cores, two cores
# each (taskset), each under the same wall-clock budget. No GPU is used. Results (eval JSON, strips, weights) in $OUT.
#   VARIANTS="run19 patch1 ..." MINUTES=8 bash reports/tiny-default/sweep/run.sh
set -uo pipefail
OUT=${OUT:-/tmp/sweep-out}
MINUTES=${MINUTES:-8}
VARIANTS=${VARIANTS:-"run19 patch1 layers4 centre spread03 patch1-centre layers4-centre run16-patch1"}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:${PYTHONPATH:-} OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
mkdir -p "$OUT"
lscpu | grep -E "Model name|^CPU\(s\)" > "$OUT/cpu.txt"
python3 -c "import torch, sys; print(torch.__version__, sys.version)" >> "$OUT/cpu.txt"
i=0
for v in $VARIANTS; do
  taskset -c $((2 * i)),$((2 * i + 1)) python3 reports/tiny-default/sweep/sweep.py "$v" --minutes "$MINUTES" \
    --work /tmp/sweep-work --keep "$OUT" > "$OUT/$v.log" 2>&1 &
  i=$((i + 1))
done
wait
for v in $VARIANTS; do echo "== $v"; grep -o "AR: [0-9]* steps at [0-9.]* s/step" "$OUT/$v.log"; tail -1 "$OUT/$v.log"; done
# one archive (the tool brings back at most 8 files, 16 MiB each): weights stay behind
tar czf "$OUT/sweep.tgz" --exclude="*.pt" --exclude="*.safetensors" -C "$OUT" $(cd "$OUT" && ls -d */ | tr -d /) $(cd "$OUT" && ls *.log) && rm -rf "$OUT"/*/ "$OUT"/*.log
