#!/usr/bin/env bash
# Every GPU row of BENCHMARKS.md in one run: about 6 minutes on one H100/H200 (each step is capped).
#
#   bash bench/gpu_suite.sh            # on the GPU machine, from the repository root
#   PY=.venv/bin/python bash bench/gpu_suite.sh
#
# Prints Markdown tables for BENCHMARKS.md: the GPU and torch version, the training-iteration
# profile (FLOPs, achieved TFLOP/s against the data-sheet peak, kernels and host syncs per iteration,
# the top ops) in fp32 and bf16, the straightforward loop against the engine, restore() on
# 1x3x512x512, and what the data loader delivers alone with the default workers. A step that fails
# or runs past its cap prints its exit status and the suite goes on. No internet, no pretrained
# weights needed; the project's own code runs from this checkout (PYTHONPATH), not an install.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

step() {  # step SECONDS TITLE COMMAND...: run one row with a wall-clock cap
    local cap=$1 title=$2
    shift 2
    echo
    echo "### $title"
    echo "\`$*\`"
    echo
    local t0=$SECONDS
    timeout "$cap" "$@"
    local rc=$?
    [ $rc -eq 0 ] || echo "(exit status $rc; 124 = ran past its ${cap} s cap)"
    echo "(${title}: $((SECONDS - t0)) s)"
}

echo "## GPU suite, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"

step 90 "profile, fp32 (TF32 off: PyTorch's default)" $PY bench/profile_train.py --device cuda --precision fp32
step 90 "profile, bf16 autocast" $PY bench/profile_train.py --device cuda --precision bf16
step 120 "training iteration: straightforward loop vs engine" \
    $PY bench/bench_train.py --device cuda --precision fp32,bf16 --iters 10 --warmup 3 \
    --variants straightforward,engine
step 60 "restore() 1x3x512x512" $PY bench/bench_inference.py --device cuda --size 512 --repeats 10
step 90 "data loader alone (default workers), 3D and 5D layouts" \
    bash -c "$PY bench/bench_loader.py --batches 300 && $PY bench/bench_loader.py --5d --batches 300"
