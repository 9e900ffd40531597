#!/usr/bin/env bash
# Every GPU row of BENCHMARKS.md in one run: under 8 minutes on one H100/H200 (the steps' caps add up to 470 s).
# Most of the time is torch.compile building the fast path's kernels: each compiled graph (paper network in
# bf16, in fp32, the inference forward, the tiny preset) is compiled cold, once, in its own step.
#
#   COMMIT=$(git rev-parse --short HEAD) bash bench/gpu_suite.sh   # the device gets no .git: name the commit
#   PY=.venv/bin/python bash bench/gpu_suite.sh
#
# Prints Markdown tables for BENCHMARKS.md, each row as soon as it is measured: the GPU and torch version; the
# straightforward loop, the eager engine and the --compile fast path per iteration (bf16, then fp32; compile
# time, peak memory, first-iteration losses against the engine's); restore() on 1x3x512x512, eager and
# compiled; the eager iteration's profile (FLOPs, achieved TFLOP/s against the data-sheet peak, kernels and
# host syncs per iteration, the top ops); what the data loader delivers alone with the default workers; the
# fast path's loss curves against eager ones over 150 tiny iterations (figure in $OUT or results/gpu_suite).
# Most important first. A step that fails or runs past its cap is killed with everything it started (SIGKILL
# to its process group: no trainer lingers into the next step), prints its exit status, and the suite goes
# on; inside a step, one variant failing keeps the others' rows. No internet, no pretrained weights needed;
# the project's own code runs from this checkout (PYTHONPATH), not an install.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
RESULTS=${OUT:-results/gpu_suite}  # figures and data; the device tool brings $OUT back
mkdir -p "$RESULTS"
if [ -e "$RESULTS/suite.md" ]; then  # an earlier run's log and figure: kept aside, as utils.files.keep_aside keeps them
    KEPT="$RESULTS/suite.md.before-$(date +%Y%m%d-%H%M%S)-$$"
    mkdir -p "$KEPT" && mv "$RESULTS/suite.md" "$KEPT/" && echo "(an earlier $RESULTS/suite.md was moved to $KEPT/)"
    [ ! -e "$RESULTS/fast_path_losses_gpu.png" ] || mv "$RESULTS/fast_path_losses_gpu.png" "$KEPT/"
fi
exec > >(tee "$RESULTS/suite.md") 2>&1  # the whole log, also when the console keeps only its tail
TEE=$!
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

step() {  # step SECONDS TITLE COMMAND...: run one row with a wall-clock cap
    local cap=$1 title=$2
    shift 2
    echo
    echo "### $title"
    echo "\`$*\`"
    echo
    local t0=$SECONDS
    timeout -s KILL "$cap" "$@"
    local rc=$?
    [ $rc -eq 0 ] || echo "(exit status $rc; 137 = killed at its ${cap} s cap)"
    echo "(${title}: $((SECONDS - t0)) s)"
}

echo "## GPU suite, $(date -u '+%Y-%m-%d %H:%M UTC'), commit ${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(),
'| fp32 convolutions may use TF32:', torch.backends.cudnn.allow_tf32, '| fp32 matmuls:', torch.backends.cuda.matmul.allow_tf32)"

# Most important first: a step cut by its cap loses only its unfinished rows (and later steps still run).
step 150 "training iteration, bf16: straightforward loop (fp32), eager engine, --compile reduce-overhead" \
    $PY bench/bench_train.py --device cuda --precision bf16 --iters 5 --warmup 2 --tiny-iters 0 \
    --variants straightforward,engine,compiled --compile-mode reduce-overhead --variant-timeout 120
step 75 "restore() 1x3x512x512, eager and compiled" \
    $PY bench/bench_inference.py --device cuda --size 512 --repeats 10 --compile reduce-overhead
step 45 "profile, bf16 autocast, eager engine" $PY bench/profile_train.py --device cuda --precision bf16 --iters 2
step 25 "data loader alone (default workers), 3D layout" $PY bench/bench_loader.py --batches 200
step 90 "training iteration, fp32 (TF32 convolutions): eager engine, --compile reduce-overhead" \
    $PY bench/bench_train.py --device cuda --precision fp32 --iters 5 --warmup 2 --tiny-iters 0 \
    --variants engine,compiled --compile-mode reduce-overhead --variant-timeout 85
step 85 "fast path vs eager: 150 tiny iterations from one seed (loss curves, first-iteration losses)" \
    $PY bench/bench_fast_path.py --device cuda --patch 128 --mode reduce-overhead --iters 150 \
    --control-threads 0 --no-seed-control --data /tmp/baryir_demo_data --fig "$RESULTS/fast_path_losses_gpu.png"
echo
echo "(suite: $SECONDS s)"
exec >&- 2>&-  # end of the log: let tee write its last lines before the suite exits
wait "$TEE" 2>/dev/null || true
