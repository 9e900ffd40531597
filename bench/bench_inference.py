"""Forward time and peak memory of BaryNet: plain eager vs the fast fp32 and bf16 paths.

    .venv/bin/python bench/bench_inference.py [--size 256] [--repeats 3] [--preset paper]

Timing runs the three paths interleaved in one process (round-robin, best of ``--repeats``
after a warm-up each), so a load change on the machine hits every path alike; peak memory
is measured in one subprocess per path (so peak RSS is that path's alone). The table gives
seconds per forward, speed-up over the plain path, peak RSS above the loaded-model baseline,
achieved GFLOP/s (convolution and matmul FLOPs counted by ``torch.utils.flop_counter``),
and the same machine's plain fp32 and bf16 matmul rate for reference.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from net import set_layernorm_impl  # noqa: E402
from net.presets import build_model  # noqa: E402
from utils.inference import restore  # noqa: E402

PATHS = ("plain", "fast_fp32", "fast_bf16")


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


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
    precision = "bf16" if path == "fast_bf16" else "fp32"
    return lambda: restore(model, x, precision)


def _peak_memory(path: str, preset: str, size: int) -> dict:
    forward = _forward_fn(path, preset, size)
    base = _rss_mib()
    out = forward()
    forward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"path": path, "peak_mib": peak - base, "checksum": float(out.double().sum())}


def _interleaved_times(preset: str, size: int, repeats: int) -> dict[str, float]:
    fns = {p: _forward_fn(p, preset, size) for p in PATHS}
    for fn in fns.values():
        fn()  # warm-up: oneDNN primitive creation, layout conversion
    best = {p: float("inf") for p in PATHS}
    for _ in range(repeats):
        for p, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[p] = min(best[p], time.perf_counter() - t0)
    return best


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_peak_memory(args.child, args.preset, args.size)))
        return

    rows = []
    for path in PATHS:
        cmd = [sys.executable, __file__, "--child", path, "--size", str(args.size), "--preset", args.preset]
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    times = _interleaved_times(args.preset, args.size, args.repeats)
    for r in rows:
        r["seconds"] = times[r["path"]]
    flops = _forward_flops(args.preset, args.size)
    mm32, mm16 = _matmul_gflops(torch.float32), _matmul_gflops(torch.bfloat16)

    print(f"BaryNet ({args.preset}) forward, 1x3x{args.size}x{args.size}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs; {flops / 1e9:.1f} GFLOP per forward")
    print(f"plain matmul 2048^3 in this run: fp32 {mm32:.0f} GFLOP/s, bf16 {mm16:.0f} GFLOP/s\n")
    print("| path | s / forward | speed-up vs plain | peak RSS above model (MiB) | GFLOP/s | % of matmul rate |")
    print("|---|---|---|---|---|---|")
    plain = rows[0]["seconds"]
    for r in rows:
        rate = flops / r["seconds"] / 1e9
        ref = mm16 if r["path"].endswith("bf16") else mm32
        print(f"| {r['path']} | {r['seconds']:.3f} | {plain / r['seconds']:.2f}x | {r['peak_mib']:.0f} | "
              f"{rate:.0f} | {100 * rate / ref:.0f}% |")


if __name__ == "__main__":
    main()
