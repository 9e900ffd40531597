#!/usr/bin/env bash
# Every GPU row of BENCHMARKS.md, step by step, on one H100/H200; or only the steps named:
#
#   COMMIT=$(git rev-parse --short HEAD) bash bench/gpu_suite.sh                     # every step, in the order below
#   COMMIT=$(git rev-parse --short HEAD) bash bench/gpu_suite.sh train-fp32 restore  # these steps only
#   PY=.venv/bin/python bash bench/gpu_suite.sh ...                                   # another Python
#
# (the device gets no .git: name the commit). Steps, most important first, with what they took on one H200
# (torch 2.11, 16 CPU cores) on 2026-11-30; most of it is torch.compile building a graph cold, about 260 s for
# the paper network's training iteration, and cuDNN trying its algorithms in the first iteration (25-40 s):
#   train-bf16   the straightforward loop (fp32), the eager engine and --compile reduce-overhead, bf16   ~350 s
#   restore      restore() on 1x3x512x512: plain fp32, fp32, bf16, bf16 compiled, bf16 CUDA graphs  eager ~25 s
#   profile      the eager iteration's profile: FLOPs, TFLOP/s against the data-sheet peak, kernels  ~40 s
#   loader       what the data loader delivers alone with the default workers, 3D layout            ~10 s
#   train-fp32   the eager engine and --compile reduce-overhead, fp32 (TF32 convolutions)           ~300 s
#   curves       the fast path's loss curves against eager ones, 150 tiny iterations (figure)   eager ~40 s
#   guarantees   resume, the NaN stop and SIGTERM, eager and compiled, tiny preset                  not yet run
# All seven take about 25 minutes, more than one device call allows (10 minutes): on a lent GPU run them as calls
# of steps whose caps add up to at most the call's timeout_s less 40 s (the header, the cache's unpacking and
# packing); their caps add up to 1,820 s, four such calls, which BENCHMARKS.md's "What the next lent GPU runs"
# lists. Each step prints its cap. The exit status is 1 when a step failed or ran past its cap; the other steps
# still run.
#
# Compiling is most of that time, and a device machine starts with empty caches. So the suite keeps inductor's
# cache (TORCHINDUCTOR_CACHE_DIR, default /tmp/baryir_gpu_suite_inductor) across machines: at the end it packs the
# cache into $RESULTS/compile_cache.tar.xz.part-NN (at most 3 parts of 15 MB, what a device call brings back), and
# at the start it unpacks the parts it finds in CACHE_IN (default .gpu_cache, git-ignored: copy an earlier call's
# parts there and carry it). Graphs of the same code, torch, Triton and GPU then load instead of compiling; any
# other graph misses the cache and compiles as before. CACHE_OUT= (empty) packs nothing.
#
# Prints Markdown tables for BENCHMARKS.md, each row as soon as it is measured. A step that fails or runs past
# its cap is killed with everything it started (SIGKILL to its process group, and to every process that carries
# the step's environment, in a session of its own too: no trainer lingers into the next step), prints its exit
# status, and the suite goes on; inside a step, one variant failing keeps the others' rows. No internet, no
# pretrained weights needed; the project's own code runs from this checkout (PYTHONPATH), not an install. The
# log (and the curves' figure) go to $OUT or results/gpu_suite.
set -uo pipefail
case " $* " in  # the comment above, as every bench script's --help prints its own; nothing runs
    *" -h "*|*" --help "*) sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
esac
cd "$(dirname "$0")/.."
ALL_STEPS="train-bf16 restore profile loader train-fp32 curves guarantees"
for name in "$@"; do  # a misspelt step would cost a device call: refused before anything runs
    case " $ALL_STEPS " in
        *" $name "*) ;;
        *) echo "error: unknown step '$name'; choose from: $ALL_STEPS (none: all of them)" >&2; exit 2 ;;
    esac
done
STEPS=${*:-$ALL_STEPS}
PY=${PY:-python3}
RESULTS=${OUT:-results/gpu_suite}  # figures and data; the device tool brings $OUT back (relative: to the repo root)
mkdir -p "$RESULTS"
if [ -e "$RESULTS/suite.md" ]; then  # an earlier run's log and figure: kept aside, as utils.files.keep_aside does
    KEPT="$RESULTS/suite.md.before-$(date +%Y%m%d-%H%M%S)-$$"
    mkdir -p "$KEPT" && mv "$RESULTS/suite.md" "$KEPT/" && echo "(an earlier $RESULTS/suite.md was moved to $KEPT/)"
    [ ! -e "$RESULTS/fast_path_losses_gpu.png" ] || mv "$RESULTS/fast_path_losses_gpu.png" "$KEPT/"
    for part in "$RESULTS"/compile_cache.tar.xz.part-*; do [ ! -e "$part" ] || mv "$part" "$KEPT/"; done
fi
exec > >(tee "$RESULTS/suite.md") 2>&1  # the whole log, also when the console keeps only its tail
TEE=$!
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/baryir_gpu_suite_inductor}
CACHE_IN=${CACHE_IN:-.gpu_cache}
CACHE_OUT=${CACHE_OUT-$RESULTS}
CACHE_PART_BYTES=${CACHE_PART_BYTES:-15000000}  # a device call brings back files of up to 16 MiB, 64 MiB in all
CACHE_MAX_PARTS=${CACHE_MAX_PARTS:-3}           # and carries 64 MiB of working tree, a third of it the repository
CACHE_PACK_CAP=${CACHE_PACK_CAP:-30}            # seconds: with caps of 560 s, a call of 600 s

step() {  # step SECONDS TITLE COMMAND...: run one row with a wall-clock cap
    local cap=$1 title=$2
    shift 2
    echo
    echo "### $title"
    echo "\`$*\` (cap ${cap} s)"
    echo
    local t0=$SECONDS token="$$.$RANDOM.$SECONDS"
    BARYIR_SUITE_STEP=$token timeout -s KILL "$cap" "$@"
    local rc=$?
    end_step_processes "$token"
    [ $rc -eq 0 ] || echo "(exit status $rc; 137 = killed at its ${cap} s cap)"
    echo "(${title}: $((SECONDS - t0)) s)"
    return $rc
}

end_step_processes() {  # end_step_processes TOKEN: SIGKILL each process whose environment has BARYIR_SUITE_STEP=TOKEN
    # The bench scripts start their variants, trainer runs and paths in sessions of their own (utils.processes.
    # run_in_session), out of the process group that timeout kills: killed at the cap, a script left them running
    # (a compiled variant compiling into the next step; past the device call, as setsid's processes outlive it).
    # They inherit the step's environment wherever they are, so they are found by it.
    local pass entry pid found killed=0
    for pass in 1 2 3; do  # again: one killed may have started another meanwhile
        found=0
        for entry in /proc/[0-9]*/environ; do
            pid=${entry#/proc/}
            pid=${pid%/environ}
            [ "$pid" != "$$" ] && grep -qzxF "BARYIR_SUITE_STEP=$1" "$entry" 2>/dev/null || continue
            kill -KILL "$pid" 2>/dev/null && found=$((found + 1))
        done
        killed=$((killed + found))
        [ $found -gt 0 ] || break
    done
    [ $killed -eq 0 ] || echo "(killed $killed process(es) the step had started and left running)"
}

xz_stream() {  # xz_stream -z|-d: stdin to stdout through xz, or Python's lzma where the machine has no xz
    if command -v xz >/dev/null; then
        if [ "$1" = -z ]; then XZ_OPT=-T0 xz -3; else xz -dc; fi
    else
        python3 -c "import lzma, shutil, sys
if sys.argv[1] == '-z':
    with lzma.open(sys.stdout.buffer, 'wb', preset=3) as out: shutil.copyfileobj(sys.stdin.buffer, out)
else:
    with lzma.open(sys.stdin.buffer, 'rb') as src: shutil.copyfileobj(src, sys.stdout.buffer)" "$1"
    fi
}

unpack_cache() {  # an earlier run's compile cache, from the parts in CACHE_IN, into TORCHINDUCTOR_CACHE_DIR
    local parts=("$CACHE_IN"/compile_cache.tar.xz.part-*)
    if [ ! -e "${parts[0]}" ]; then  # a warm machine's second call still has the first call's cache
        local held
        held=$(find "$TORCHINDUCTOR_CACHE_DIR" -type f -not -path "*/locks/*" 2>/dev/null | wc -l)
        if [ "$held" -gt 0 ]; then
            echo "(compile cache: none in $CACHE_IN/, but $TORCHINDUCTOR_CACHE_DIR already holds $held files from an" \
                 "earlier run on this machine; graphs it holds load instead of compiling)"
        else
            echo "(compile cache: none in $CACHE_IN/; every graph compiles)"
        fi
        return 0
    fi
    mkdir -p "$TORCHINDUCTOR_CACHE_DIR"
    local whole  # unpacked beside the cache first: a part cut short must leave no half-written entry in it
    whole=$(mktemp -d "$TORCHINDUCTOR_CACHE_DIR.unpack.XXXXXX") || return 0
    if cat "${parts[@]}" | xz_stream -d | tar -x -C "$whole" && cp -a "$whole/." "$TORCHINDUCTOR_CACHE_DIR/"; then
        rm -rf "$whole"
        echo "(compile cache: ${#parts[@]} part(s) from $CACHE_IN/ unpacked into $TORCHINDUCTOR_CACHE_DIR:" \
             "$(find "$TORCHINDUCTOR_CACHE_DIR" -type f | wc -l) files; graphs it holds load instead of compiling)"
    else
        rm -rf "$whole"
        echo "(compile cache: the parts in $CACHE_IN/ did not unpack, a part missing or cut short;" \
             "every graph compiles)"
    fi
}

pack_cache() {  # TORCHINDUCTOR_CACHE_DIR into CACHE_OUT/compile_cache.tar.xz.part-N, or nothing if too large
    [ -n "$CACHE_OUT" ] && [ -d "$TORCHINDUCTOR_CACHE_DIR" ] || return 0
    mkdir -p "$CACHE_OUT"
    local prefix="$CACHE_OUT/compile_cache.tar.xz.part-" t0=$SECONDS
    rm -f "$prefix"*
    export -f xz_stream  # packed with a cap of its own: a slow pack must not take the device call's last seconds
    if ! timeout -s KILL "$CACHE_PACK_CAP" bash -c 'set -o pipefail
            tar -C "$1" --exclude=./locks -cf - . | xz_stream -z | split -b "$2" -d -a 2 - "$3"' \
            _ "$TORCHINDUCTOR_CACHE_DIR" "$CACHE_PART_BYTES" "$prefix"; then
        rm -f "$prefix"*
        echo "(compile cache: packing failed or ran past its ${CACHE_PACK_CAP} s cap; nothing kept)"
        return 0
    fi
    local parts=("$prefix"*) bytes
    bytes=$(cat "${parts[@]}" | wc -c)
    if [ "${#parts[@]}" -gt "$CACHE_MAX_PARTS" ]; then
        rm -f "$prefix"*
        echo "(compile cache: $bytes bytes packed, more than $CACHE_MAX_PARTS parts of $CACHE_PART_BYTES bytes:" \
             "too large to bring back, not kept)"
    else
        echo "(compile cache: $bytes bytes in ${#parts[@]} part(s) ${prefix}*, packed in $((SECONDS - t0)) s;" \
             "copy them into $CACHE_IN/ and carry it, and the next run loads these graphs)"
    fi
}

run_step() {  # run_step NAME: one of ALL_STEPS
    case $1 in
    train-bf16)
        step 450 "training iteration, bf16: straightforward loop (fp32), eager engine, --compile reduce-overhead" \
            $PY bench/bench_train.py --device cuda --precision bf16 --iters 5 --warmup 2 --tiny-iters 0 \
            --variants straightforward,engine,compiled --compile-mode reduce-overhead --variant-timeout 330 ;;
    restore)
        step 200 "restore() 1x3x512x512, eager, compiled, and CUDA graphs of the eager kernels" \
            $PY bench/bench_inference.py --device cuda --size 512 --repeats 10 --compile reduce-overhead --cudagraphs ;;
    profile)
        step 60 "profile, bf16 autocast, eager engine" \
            $PY bench/profile_train.py --device cuda --precision bf16 --iters 2 ;;
    loader)
        step 30 "data loader alone (default workers), 3D layout" $PY bench/bench_loader.py --batches 200 ;;
    train-fp32)
        step 360 "training iteration, fp32 (TF32 convolutions): eager engine, --compile reduce-overhead" \
            $PY bench/bench_train.py --device cuda --precision fp32 --iters 5 --warmup 2 --tiny-iters 0 \
            --variants engine,compiled --compile-mode reduce-overhead --variant-timeout 310 ;;
    curves)
        step 240 "fast path vs eager: 150 tiny iterations from one seed (loss curves, first-iteration losses)" \
            $PY bench/bench_fast_path.py --device cuda --patch 128 --mode reduce-overhead --iters 150 \
            --control-threads 0 --no-seed-control --data /tmp/baryir_demo_data \
            --fig "$RESULTS/fast_path_losses_gpu.png" ;;
    guarantees)
        # the curves' trainer flags (tiny, batch 3, patch 128): run after curves, its graphs come from the cache
        step 480 "resume, NaN stop and SIGTERM on the GPU, eager and --compile reduce-overhead (tiny preset)" \
            $PY bench/gpu_guarantees.py --device cuda --mode reduce-overhead --iters 24 --patch 128 --run-timeout 240 ;;
    esac
}

COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
echo "## GPU suite, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $COMMIT: $STEPS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(),
'| fp32 convolutions may use TF32:', torch.backends.cudnn.allow_tf32, '| fp32 matmuls:', torch.backends.cuda.matmul.allow_tf32)"
unpack_cache
FAILED=""  # the steps that failed or ran past their caps: the suite's exit status is 1 if any did
for name in $STEPS; do
    run_step "$name" || FAILED="$FAILED $name"
done
echo
pack_cache
echo "(suite: $SECONDS s${FAILED:+; failed:$FAILED})"
exec >&- 2>&-  # end of the log: let tee write its last lines before the suite exits
wait "$TEE" 2>/dev/null || true
[ -z "$FAILED" ]
