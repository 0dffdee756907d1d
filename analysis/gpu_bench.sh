#!/usr/bin/env bash
# Issue 3's GPU figures in one call of the lent GPU machine (the `device` tool's `run`, 10 minutes a call):
# sd15 (real SD1.5 + ControlNet architecture, random weights), fp16, batch 2 (CFG), 512², 20 steps, full vs
# the DeepCache-style N=3 branch-0 policy, timed alternately: eager, then regional torch.compile (default
# mode), then CUDA graphs (mode reduce-overhead) if time is left. One JSON per run under $OUT.
#
# The GPU machine has torch but no internet: carry the other wheels, built here once with
#   pip download diffusers==<version in .venv> --no-deps -d .whl && pip wheel fvcore iopath --no-deps -w .whl
#   (plus yacs, termcolor, importlib_metadata)
# and call:  run(command="bash analysis/gpu_bench.sh", carry=[".whl"], timeout_s=600)
set -uo pipefail
OUT=${OUT:-runs/gpu-bench}
mkdir -p "$OUT"
if [ -d .whl ] && ! python3 -c "import diffusers, fvcore" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:.
else
    export PYTHONPATH=.
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
START=$SECONDS
bench() {  # bench NAME SECONDS [extra flags]: skipped when the call's 10 minutes would not cover it
    local name=$1 limit=$2
    shift 2
    if (( SECONDS - START + limit > 570 )); then echo "skip $name: not enough time left"; return; fi
    echo "== $name (up to ${limit}s)"
    timeout "$limit" python3 -m hgc_tune.cli bench --model sd15 --policy peer:deepcache-n3-b0 \
        --device cuda --dtype fp16 --batch 1 --steps 20 --repeats 3 --warmup 1 --json "$@" \
        >"$OUT/$name.json" 2>"$OUT/$name.log" && tail -c 600 "$OUT/$name.json" || tail -5 "$OUT/$name.log"
}
bench eager 120
bench compile 330 --compile --warmup 2
bench compile-cudagraphs 330 --compile --compile-mode reduce-overhead --warmup 2
