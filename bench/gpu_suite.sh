#!/usr/bin/env bash
# Every GPU row of BENCHMARKS.md in one run: under 8 minutes on one H100/H200 (the steps' caps add up to 470 s;
# most of the time is torch.compile building the fast path's kernels, cached for the later steps).
#
#   bash bench/gpu_suite.sh            # on the GPU machine, from the repository root
#   PY=.venv/bin/python bash bench/gpu_suite.sh
#
# Prints Markdown tables for BENCHMARKS.md: the GPU and torch version; the straightforward loop, the eager
# engine and the --compile fast path per iteration (fp32, bf16; compile time, peak memory, first-iteration
# losses against the engine's); the fast path's 300-iteration loss curves against eager ones (figure in
# $OUT or results/gpu_suite); restore() on 1x3x512x512, eager and compiled; the eager iteration's profile
# (FLOPs, achieved TFLOP/s against the data-sheet peak, kernels and host syncs per iteration, the top
# ops); and what the data loader delivers alone with the default workers. A step that fails
# or runs past its cap prints its exit status and the suite goes on. No internet, no pretrained
# weights needed; the project's own code runs from this checkout (PYTHONPATH), not an install.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
RESULTS=${OUT:-results/gpu_suite}  # figures and data; the device tool brings $OUT back
mkdir -p "$RESULTS"
exec > >(tee "$RESULTS/suite.md") 2>&1  # the whole log, also when the console keeps only its tail
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
$PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(),
'| fp32 convolutions may use TF32:', torch.backends.cudnn.allow_tf32, '| fp32 matmuls:', torch.backends.cuda.matmul.allow_tf32)"

# Most important first: a step cut by its cap loses only itself (and later steps still run).
step 200 "training iteration: straightforward loop, eager engine, --compile reduce-overhead (fp32, bf16)" \
    $PY bench/bench_train.py --device cuda --precision fp32,bf16 --iters 5 --warmup 2 \
    --variants straightforward,engine,compiled --compile-mode reduce-overhead
step 120 "fast path vs eager: 300 tiny iterations from one seed (loss curves, first-iteration losses)" \
    $PY bench/bench_fast_path.py --device cuda --patch 128 --mode reduce-overhead --iters 300 \
    --no-seed-control --data /tmp/baryir_demo_data --fig "$RESULTS/fast_path_losses_gpu.png"
step 75 "restore() 1x3x512x512, eager and compiled" \
    $PY bench/bench_inference.py --device cuda --size 512 --repeats 10 --compile reduce-overhead
step 45 "profile, bf16 autocast, eager engine" $PY bench/profile_train.py --device cuda --precision bf16 --iters 3
step 30 "data loader alone (default workers), 3D layout" $PY bench/bench_loader.py --batches 200
echo
echo "(suite: $SECONDS s)"
