"""Forward time and peak memory of BaryNet: plain eager vs the fast fp32 and bf16 paths.

    .venv/bin/python bench/bench_inference.py [--size 256] [--repeats 2] [--rounds 2] [--preset paper]
    python bench/bench_inference.py --device cuda --size 512          # the GPU rows (one process)

Each path runs in its own process, as a user runs it: ``plain`` is the network with the
reference's hand-written LayerNorm, NCHW, fp32 under ``torch.no_grad`` and glibc's default
allocator; the ``fast_*`` paths call :func:`utils.eval.inference.restore` in a process set up as
``tester_bary.py`` sets itself up (:func:`utils.runtime.tune_cpu_allocator`).
``fast_fp32_default_alloc`` is the fast path without that allocator setting, to show its share.
Paths alternate over ``--rounds`` so a load change on the machine hits them alike; each
process times ``--repeats`` forwards after a warm-up. The table gives the best seconds per
forward, speed-up over the plain path, peak RSS above the loaded model, achieved GFLOP/s
(convolution and matmul FLOPs counted by ``torch.utils.flop_counter``), and the same
machine's plain fp32 and bf16 matmul rate for reference.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from utils.errors import stopped_while_starting

with stopped_while_starting():  # Ctrl-C while torch loads: one line, not a traceback
    import torch

    from net import set_layernorm_impl
    from net.presets import PRESETS, build_model
    from utils.cli import DocstringHelpFormatter, at_least, image_side
    from utils.compiled import COMPILE_MODES
    from utils.errors import OneLineArgumentParser, UsageError, UserError, add_debug_flag, child_failure, run_main
    from utils.eval.inference import prepare_for_inference, restore
    from utils.memory import resident_bytes
    from utils.processes import run_in_session
    from utils.runtime import machine_info, machine_line, pick_device, stop_signals_as_interrupt, tune_cpu_allocator

PATHS = ("plain", "fast_fp32", "fast_bf16", "fast_fp32_default_alloc")
# Opt-in (--paths): the fast paths through torch.compile (default mode; the first forward compiles).
EXTRA_PATHS = ("fast_fp32_compiled", "fast_bf16_compiled")


def _forward_fn(path: str, preset: str, size: int):
    """A zero-argument callable running one forward of ``path`` (weights seeded identically)."""
    torch.manual_seed(0)
    model = build_model("BaryNet", preset).eval()
    x = torch.rand(1, 3, size, size)
    if path == "plain":
        set_layernorm_impl(model, "reference")

        def forward():
            with torch.no_grad():
                return model(x).restored
        return forward
    precision = "bf16" if path.startswith("fast_bf16") else "fp32"
    mode = "default" if path.endswith("_compiled") else "off"
    return lambda: restore(model, x, precision, compile_mode=mode)


def _child(path: str, preset: str, size: int, repeats: int) -> dict:
    if path.startswith("fast_") and path != "fast_fp32_default_alloc":
        tune_cpu_allocator()
    forward = _forward_fn(path, preset, size)
    base = resident_bytes() / 2**20
    t0 = time.perf_counter()
    out = forward()  # warm-up: oneDNN primitive creation, layout conversion (and compiling)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        forward()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"path": path, "seconds": min(times), "first_seconds": first, "peak_mib": peak - base,
            "checksum": float(out.double().sum())}


def _forward_flops(preset: str, size: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    model = build_model("BaryNet", preset).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, size, size))
    return counter.get_total_flops()


def _matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e9


def gpu_rows(preset: str, size: int, repeats: int, compile_modes: tuple[str, ...] = (), device: str = "cuda",
             cudagraphs: bool = False) -> None:
    """The CUDA paths in one process: plain fp32, ``restore()`` fp32 and bf16, bf16 compiled with each of
    ``compile_modes``, and with ``cudagraphs`` bf16 through torch.compile's cudagraphs backend (the forward traced
    once, its own kernels replayed as CUDA graphs: no inductor code); best of ``repeats`` after 3 warm-ups,
    synchronised, the first call (compiling or tracing included) apart; peak memory, and each output's PSNR against
    fp32 on a natural image."""
    import copy
    import math

    from bf16_agreement import astronaut  # the image bench/bf16_agreement.py measures the agreement on

    device = torch.device(device)  # cuda (tests run the same code on the CPU, with torch.cuda's calls stubbed)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = build_model("BaryNet", preset).eval().to(device)
    x = astronaut(size).to(device)

    def plain():
        with torch.no_grad():
            return model(x).restored

    paths = {"plain_fp32": plain, "restore_fp32": lambda: restore(model, x, "fp32"),
             "restore_bf16": lambda: restore(model, x, "bf16")}
    for mode in compile_modes:
        paths[f"restore_bf16_compiled_{mode}"] = lambda mode=mode: restore(model, x, "bf16", compile_mode=mode)
    if cudagraphs:  # last: its trace must not take the time the compiled rows were given; on a copy of its own, as
        # prepare_for_inference keeps one compiled forward per mode on a network
        graphed = prepare_for_inference(copy.deepcopy(model), "default", backend="cudagraphs")
        paths["restore_bf16_cudagraphs"] = lambda: restore(graphed, x, "bf16", compile_mode="default")
    print(f"BaryNet ({preset}) forward on {torch.cuda.get_device_name()}, 1x3x{size}x{size}; best of {repeats} "
          f"after 3 warm-ups; {machine_line(machine_info(device))}\n")
    print("| path | ms / forward | speed-up vs plain | first call (s) | peak GPU memory (MiB) | "
          "PSNR vs restore_fp32 (dB) |")
    print("|---|---:|---:|---:|---:|---:|", flush=True)
    outs: dict[str, torch.Tensor] = {}
    rows: dict[str, tuple[float, float, float]] = {}

    def measure(name: str, forward) -> None:
        """``rows[name]``: best time, first call (compiling included) and peak memory; ``outs[name]``: the output."""
        t0 = time.perf_counter()
        forward()
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        for _ in range(2):
            forward()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            outs[name] = forward()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        rows[name] = (min(times), first, torch.cuda.max_memory_allocated() / 2**20)

    def show(name: str) -> None:  # a row needs plain's time and restore_fp32's output
        seconds, first, peak = rows[name]
        mse = float(((outs[name].float().clamp(0, 1) - outs["restore_fp32"].float().clamp(0, 1)) ** 2).mean())
        psnr = "identical" if mse == 0 else f"{10 * math.log10(1 / mse):.1f}"
        print(f"| {name} | {1000 * seconds:.1f} | {rows['plain_fp32'][0] / seconds:.2f}x | {first:.1f} | {peak:.0f} | "
              f"{psnr} |", flush=True)

    for name in ("plain_fp32", "restore_fp32"):  # every other row is relative to these two: no row without them
        measure(name, paths.pop(name))
    show("plain_fp32")
    show("restore_fp32")
    for name, forward in paths.items():
        try:  # one path failing (a compiled one, never run on this GPU before) keeps the others' rows
            measure(name, forward)
        except Exception as exc:  # noqa: BLE001 - reported as the row, with its type
            first_line = (str(exc).strip().splitlines() or [""])[0][:160]
            print(f"| {name} | failed: {type(exc).__name__}: {first_line} | | | | |", flush=True)
            continue
        show(name)

def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=DocstringHelpFormatter)
    parser.add_argument("--size", type=image_side(8), default=256, help="image side, a multiple of 8")
    parser.add_argument("--repeats", type=at_least(1), default=2,
                        help="timed forwards per path and round, after one warm-up; the best is kept (cuda: at least "
                             "10)")
    parser.add_argument("--rounds", type=at_least(1), default=2,
                        help="rounds over the CPU paths, each path in a fresh process per round, alternating so a "
                             "change of the machine's load hits them alike")
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS), help="BaryNet's size preset")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cuda: the GPU rows (plain, restore fp32, restore bf16) in one process; use --size 512")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS + EXTRA_PATHS,
                        help="CPU paths to compare; the speed-ups are against the first (plain by default)")
    parser.add_argument("--compile", nargs="*", default=[], metavar="MODE", choices=COMPILE_MODES[1:],
                        help="cuda: also restore() bf16 torch.compile'd with each MODE (e.g. reduce-overhead)")
    parser.add_argument("--cudagraphs", action="store_true",
                        help="cuda: also restore() bf16 through torch.compile's cudagraphs backend: the forward "
                             "traced once and its own kernels replayed as CUDA graphs (no inductor code: a trace of "
                             "seconds, not a compile of minutes)")
    add_debug_flag(parser)
    parser.add_argument("--child", choices=PATHS + EXTRA_PATHS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The benchmark; a failure the user can fix (or Ctrl-C) is one ``error:`` line (:func:`utils.errors.run_main`)."""
    args = build_parser().parse_args(argv)
    return run_main(bench, args, debug=args.debug)


def bench(args: argparse.Namespace) -> None:
    if args.device == "cuda" and args.paths != list(PATHS):  # the GPU rows are fixed: it was ignored without a word
        raise UsageError("--paths chooses the CPU paths; --device cuda measures its own rows (plain, restore() fp32 "
                         "and bf16, bf16 compiled with each --compile MODE, and bf16 with --cudagraphs): drop --paths")
    if args.device == "cuda":
        pick_device("cuda")  # no GPU visible: one error: line naming --device, not CUDA's own failure
        gpu_rows(args.preset, args.size, max(args.repeats, 10), tuple(args.compile), cudagraphs=args.cudagraphs)
        return
    if args.compile:  # the CPU rows have no compiled path of that flag's: it was ignored without a word
        raise UsageError("--compile applies to --device cuda (the GPU rows); on the CPU add fast_fp32_compiled or "
                         "fast_bf16_compiled to --paths")
    if args.cudagraphs:
        raise UsageError("--cudagraphs applies to --device cuda (the GPU rows): CUDA graphs need a GPU")
    if args.child:
        print(json.dumps(_child(args.child, args.preset, args.size, args.repeats)))
        return
    stop_signals_as_interrupt()  # SIGTERM stops it as Ctrl-C does: one line, the running path's process with it

    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for path in args.paths:
            cmd = [sys.executable, __file__, "--child", path, "--size", str(args.size),
                   "--repeats", str(args.repeats), "--preset", args.preset]
            # stopped (Ctrl-C, SIGTERM), the path's process is stopped too: it went on for minutes, alone
            res = run_in_session(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if res.returncode:
                raise UserError(f"the {path} path failed: {child_failure(res.stderr, res.returncode)}")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            if path not in best or row["seconds"] < best[path]["seconds"]:
                best[path] = row
    rows = [best[p] for p in args.paths]
    flops = _forward_flops(args.preset, args.size)
    mm32 = _matmul_gflops(torch.float32)  # bf16 only when a bf16 path ran: CPUs without bf16 units take minutes
    mm16 = _matmul_gflops(torch.bfloat16) if any("bf16" in p for p in args.paths) else float("nan")

    print(f"BaryNet ({args.preset}) forward, 1x3x{args.size}x{args.size}; {flops / 1e9:.1f} GFLOP per forward; "
          f"{machine_line(machine_info())}")
    print(f"plain matmul 2048^3 in this run: fp32 {mm32:.0f} GFLOP/s, bf16 {mm16:.0f} GFLOP/s\n")
    print(f"| path | s / forward | speed-up vs {args.paths[0]} | first forward (s) | peak RSS above model (MiB) | "
          "GFLOP/s | % of matmul rate |")
    print("|---|---|---|---|---|---|---|")
    plain = rows[0]["seconds"]
    for r in rows:
        rate = flops / r["seconds"] / 1e9
        ref = mm16 if "bf16" in r["path"] else mm32
        print(f"| {r['path']} | {r['seconds']:.3f} | {plain / r['seconds']:.2f}x | {r['first_seconds']:.1f} | "
              f"{r['peak_mib']:.0f} | {rate:.0f} | {100 * rate / ref:.0f}% |")


if __name__ == "__main__":
    sys.exit(main())
