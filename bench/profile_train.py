"""Where a training iteration's time goes: FLOPs, achieved rate, kernel launches, host syncs, top ops.

    .venv/bin/python bench/profile_train.py --device cuda --precision bf16        # the GPU question
    .venv/bin/python bench/profile_train.py --preset tiny --iters 2                # a CPU smoke run

One iteration is the engine's :func:`utils.train.iteration.train_step` (docs/METHOD.md §2's three updates)
on :func:`bench_train.build_case`'s fixed batch, as the trainers run it (channels-last, the trainer's
cudnn/allocator settings). The script prints

- FLOPs per iteration (``torch.utils.flop_counter``: convolutions and matrix products, forward and
  backward, with the grouped-convolution backward counted correctly: :func:`conv_backward_flops`) and
  the achieved rate against the device's dense peak for the precision (known GPUs, or ``--peak-tflops``);
  for the CPU, against a 2048³ matmul measured in the same run;
- per iteration: ops dispatched, GPU kernels launched and host synchronisations (``.item()``, device to
  host copies, stream/device synchronises), the usual suspects when a GPU runs at a few % of its peak;
- the ``--rows`` most expensive ops by self time (device time on a GPU), as ``torch.profiler`` reports them.

``--compile MODE`` profiles the trainers' fast path instead (the first, compiling, iteration timed apart).
``--trace FILE`` also writes the Chrome trace (open in https://ui.perfetto.dev). Kineto's own lines as the profiler
starts and stops (its probes and stages, and on a machine without a CUDA driver "gpuGetDeviceCount failed") are left
out of stderr, its other lines kept (:func:`kineto_noise`); with ``KINETO_LOG_LEVEL`` set, all of them.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from utils.errors import stopped_while_starting

with stopped_while_starting():  # Ctrl-C while torch loads: one line, not a traceback
    import torch
    from bench_inference import _matmul_gflops
    from bench_train import _sync, add_iteration_shape_flags, build_case
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    from utils.cli import OneSpellingHelpFormatter, at_least, number_above
    from utils.compiled import COMPILE_MODES
    from utils.errors import OneLineArgumentParser, add_debug_flag, run_main
    from utils.eval.outputs import check_writable_folder
    from utils.files import check_output_file, keep_aside, replace_file
    from utils.runtime import machine_info, machine_line, pick_device, stop_signals_as_interrupt, tune_cpu_allocator
    from utils.streams import descriptor_2
    from utils.train.distributed import DistInfo
    from utils.train.iteration import Training, train_step

# Dense peak TFLOP/s by GPU name substring (vendor data sheets, SXM parts; no sparsity).
PEAK_TFLOPS = {
    "H200": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "H100": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
}
HOST_SYNCS = ("aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy")
# What kineto (torch.profiler's C++ side) writes on stderr as the profiler starts and stops that says nothing to the
# user: its trace probes and stages ("USDT:<time> <pid>:<tid> SyncActivityProfilerHandler.cpp:39] profiler_start",
# "STAGE:... Completed Stage: Warm Up"), and, on the CPU, its look for a GPU to describe in the trace, which fails
# where no CUDA driver is installed ("ERROR:... DeviceProperties.cpp:56] gpuGetDeviceCount failed with code 35").
_KINETO_HEAD = r"[0-9-]+ [0-9:.]+ \d+:\d+ [\w.]+:\d+\] "
KINETO_NOTES = re.compile(rf"(USDT|STAGE):{_KINETO_HEAD}")
KINETO_NO_GPU = re.compile(rf"ERROR:{_KINETO_HEAD}gpuGetDeviceCount failed with code \d+")


def kineto_noise(line: str, device: torch.device) -> bool:
    """``line`` (one line of stderr, without its end) is kineto's noise (:data:`KINETO_NOTES`; :data:`KINETO_NO_GPU`
    when the profile runs on the CPU, where no GPU is profiled); any other line of kineto's is not."""
    return bool(KINETO_NOTES.match(line) or device.type == "cpu" and KINETO_NO_GPU.fullmatch(line))


@contextmanager
def kineto_noise_dropped(device: torch.device) -> Iterator[None]:
    """Around the profiler's start or stop (no training in between): file descriptor 2, where kineto writes, goes
    to a scratch file, and afterwards every line that arrived there is written on to stderr, in order, except
    kineto's noise (:func:`kineto_noise`; :data:`utils.streams.descriptor_2`). Without a temporary folder or a
    stderr, or with ``KINETO_LOG_LEVEL`` set (kineto's lines asked for), the block runs as it is."""
    if os.environ.get("KINETO_LOG_LEVEL"):
        yield
        return

    def without_noise(text: str) -> str:
        return "".join(line for line in text.splitlines(keepends=True) if not kineto_noise(line.rstrip("\r\n"), device))
    with descriptor_2(without_noise):
        yield


def conv_backward_flops(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
                        output_padding, groups, output_mask, out_shape=None, **_) -> int:
    """FLOPs of ``aten.convolution_backward``: one forward convolution's worth (2 x N x output positions
    x the weight's elements) per requested gradient (input, weight). torch's own formula ignores
    ``groups`` here and counts a depthwise 3x3 convolution's backward about ``groups`` times too high
    (measured: 76.7 M instead of 2.4 M FLOPs for 64 channels at 32x32), which made BaryNet's backward
    look 12x its forward."""
    out = x_shape if transposed else grad_out_shape
    one = 2 * out[0] * math.prod(out[2:]) * math.prod(w_shape)
    return one * (int(output_mask[0]) + int(output_mask[1]))


def peak_tflops(device: torch.device, precision: str, given: float | None) -> tuple[float | None, str]:
    """The dense peak to compare with, and where it came from."""
    if given:
        return given, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        # fp32 convolutions (most of the FLOPs) run in TF32 when cuDNN may use it, as it may by default
        tf32 = torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32
        key = "tf32" if precision == "fp32" and tf32 else precision
        for gpu, peaks in PEAK_TFLOPS.items():
            if gpu in name:
                return peaks[key], f"{name} data sheet, {key} dense"
        return None, f"{name}: unknown peak (give --peak-tflops)"
    rate = _matmul_gflops(torch.bfloat16 if precision == "bf16" else torch.float32) / 1000
    return rate, f"a 2048^3 {precision} matmul in this run"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=OneSpellingHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"],
                   help="where the iterations run (default: cuda when a GPU is visible)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="the trainers' --precision")
    add_iteration_shape_flags(p)
    p.add_argument("--warmup", type=at_least(0), default=3, help="untimed iterations before the timed ones")
    p.add_argument("--iters", type=at_least(1), default=5, help="timed, then profiled, iterations")
    p.add_argument("--rows", type=at_least(1), default=20, help="ops listed in the table of the most expensive")
    p.add_argument("--peak-tflops", type=number_above(0), default=None,
                   help="the dense peak, in TFLOP/s, to compare with (unset: a known GPU's data sheet, or a 2048^3 "
                        "matmul on the CPU)")
    p.add_argument("--trace", default=None,
                   help="write the Chrome trace of the profiled iterations to this file (its folder must exist, "
                        "except below results/; a file already there is moved aside to <name>.before-<time>/)")
    p.add_argument("--compile", default="off", choices=COMPILE_MODES,
                   help="profile the trainers' --compile fast path with this torch.compile mode (FLOPs are "
                        "counted on the eager iteration: the same arithmetic)")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """The profile; a failure the user can fix (or Ctrl-C) is one ``error:`` line (:func:`utils.errors.run_main`)."""
    a = build_parser().parse_args(argv)
    return run_main(profile_run, a, debug=a.debug)


def profile_run(a: argparse.Namespace) -> int:

    stop_signals_as_interrupt()  # SIGTERM stops it as Ctrl-C does: one line
    device = pick_device(a.device)  # no GPU visible for --device cuda: one error: line naming the flag
    if a.trace:  # before the profile, not after it; a mistyped folder is said, not made
        check_output_file(a.trace, "--trace", example="trace.json")
        check_writable_folder(Path(a.trace).parent, "--trace", create=False)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        tune_cpu_allocator()
    model, pots, opt_m, opt_p, x, y, de_ids, domains, lambdas = build_case(a.preset, a.batch, a.patch, a.K, device)
    model.to(memory_format=torch.channels_last)
    training = Training(model, model, pots, opt_m, opt_p, lambdas, l1_weight=10000.0, precision=a.precision,
                        info=DistInfo(device=device), channels_last=True)
    batch = (x, y, de_ids, domains)

    with FlopCounterMode(display=False,
                         custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops}) as counter:
        train_step(training, batch)
    flops = counter.get_total_flops()
    compile_seconds = None
    if a.compile != "off":
        training = Training(model, model, pots, opt_m, opt_p, lambdas, l1_weight=10000.0, precision=a.precision,
                            info=DistInfo(device=device), channels_last=True, compile_mode=a.compile)
        _sync(device)
        t0 = time.perf_counter()
        train_step(training, batch)
        _sync(device)
        compile_seconds = time.perf_counter() - t0
    for _ in range(a.warmup):
        train_step(training, batch)
    if device.type == "cuda":  # the steady state's peak, not the FLOP count's or the warm-up's
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(a.iters):
        _sync(device)
        t0 = time.perf_counter()
        train_step(training, batch)
        _sync(device)
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=activities)
    with kineto_noise_dropped(device):
        prof.start()
    try:
        for _ in range(a.iters):
            train_step(training, batch)
        _sync(device)
    finally:
        with kineto_noise_dropped(device):
            prof.stop()
    if a.trace:
        trace = Path(a.trace)
        if trace.exists():  # a file of the user's, or an earlier profile: kept, not replaced
            print(f"(an earlier {trace} was moved to {keep_aside([trace], trace)}/)")
        with tempfile.TemporaryDirectory(prefix="profile_trace_") as tmp:  # written whole, then renamed into place
            prof.export_chrome_trace(str(Path(tmp) / trace.name))
            replace_file(trace, (Path(tmp) / trace.name).read_bytes())
    events = prof.events()
    per_iter = Counter()
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per_iter["GPU kernels"] += 1
        elif e.name.startswith("aten::"):
            per_iter["aten ops"] += 1
        if any(e.name.startswith(s) for s in HOST_SYNCS):
            per_iter[e.name] += 1

    peak, source = peak_tflops(device, a.precision, a.peak_tflops)
    rate = flops / seconds / 1e12
    path = "eager engine" if a.compile == "off" else f"--compile {a.compile}"
    print(f"## Training iteration profile: BaryNet {a.preset}, batch {a.batch}, patch {a.patch}, K={a.K}, "
          f"{a.precision}, {path}\n")
    print(f"{machine_line(machine_info(device))}\n")
    print("| quantity | value |\n|---|---:|")
    if compile_seconds is not None:
        print(f"| first compiled iteration (compiling included) | {compile_seconds:.1f} s |")
    print(f"| FLOPs per iteration (conv + matmul, fwd + bwd) | {flops / 1e12:.3f} TFLOP |")
    print(f"| seconds per iteration (median of {a.iters}) | {seconds:.4f} |")
    print(f"| achieved rate | {rate:.2f} TFLOP/s |")
    if peak:
        print(f"| peak ({source}) | {peak:.1f} TFLOP/s |")
        print(f"| share of peak | {100 * rate / peak:.1f} % |")
    if device.type == "cuda":
        print(f"| peak GPU memory after the warm-up | {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB |")
    for key in sorted(per_iter):
        print(f"| {key} per iteration | {per_iter[key] / a.iters:.1f} |")
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nTop {a.rows} ops by {sort.replace('_', ' ')} over {a.iters} iterations:\n")
    print("```")
    print(prof.key_averages().table(sort_by=sort, row_limit=a.rows, max_name_column_width=48))
    print("```")
    return 0


if __name__ == "__main__":
    status = main()
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_initialized():
        # On the lent H200 (session 17) the profile printed all its tables and then did not exit within 45 s:
        # the teardown of CUDA and of the profiler's CUPTI hooks, probably (not established). Everything is
        # printed by now, so the process leaves without the interpreter's teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    raise SystemExit(status)
