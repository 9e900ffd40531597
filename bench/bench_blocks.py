"""Per-block time of the GDFN and MDTA blocks at full resolution: plain forms vs split forms.

    .venv/bin/python bench/bench_blocks.py [--size 256] [--repeats 5]

Both forms run on the same channels_last input under ``torch.inference_mode`` (fp32, and bf16
autocast), in a process set up as the tester sets itself up (:func:`utils.runtime.tune_cpu_allocator`).
The plain forms are forced by switching ``net.blocks._split_forms_apply`` off for the call, which
is how the fast path ran before the split forms existed. Widths are the paper model's full-resolution
ones: 48 channels (encoder level 1) and 96 (decoder level 1 and refinement), one head.
Prints the best milliseconds of ``--repeats`` calls after two warm-ups, and the largest difference
between the two forms' outputs.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from unittest import mock

from utils.errors import stopped_while_starting

with stopped_while_starting():  # Ctrl-C while torch loads: one line, not a traceback
    import torch

    from net.blocks import Attention, FeedForward
    from utils.cli import OneSpellingHelpFormatter, at_least
    from utils.errors import OneLineArgumentParser, add_debug_flag, run_main
    from utils.runtime import machine_info, machine_line, stop_signals_as_interrupt, tune_cpu_allocator


def best_ms(fn, repeats: int) -> float:
    fn()
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(description=__doc__.splitlines()[0], formatter_class=OneSpellingHelpFormatter)
    p.add_argument("--size", type=at_least(1), default=256, help="side of the blocks' input (full resolution)")
    p.add_argument("--repeats", type=at_least(1), default=5, help="timed calls per block form, after two warm-ups")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """The benchmark; a failure the user can fix (or Ctrl-C) is one ``error:`` line (:func:`utils.errors.run_main`)."""
    a = build_parser().parse_args(argv)
    return run_main(bench, a, debug=a.debug)


def bench(a: argparse.Namespace) -> None:
    stop_signals_as_interrupt()  # SIGTERM stops it as Ctrl-C does: one line
    tune_cpu_allocator()
    torch.manual_seed(0)
    print(f"GDFN and MDTA, 1 x C x {a.size} x {a.size}, channels_last; best of {a.repeats} (ms); "
          f"{machine_line(machine_info())}\n")
    print("| block | channels | precision | plain forms | split forms | speed-up | max abs difference |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for channels in (48, 96):
        x = torch.randn(1, channels, a.size, a.size).contiguous(memory_format=torch.channels_last)
        blocks = {"GDFN": FeedForward(channels, 2.66), "MDTA": Attention(channels, num_heads=1)}
        for name, block in blocks.items():
            block = block.eval().to(memory_format=torch.channels_last)
            for precision in ("fp32", "bf16"):
                cast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                        else contextlib.nullcontext())
                with torch.inference_mode(), cast:
                    split_ms = best_ms(lambda: block(x), a.repeats)
                    split_out = block(x).float()
                    with mock.patch("net.blocks._split_forms_apply", return_value=False):
                        plain_ms = best_ms(lambda: block(x), a.repeats)
                        plain_out = block(x).float()
                diff = (split_out - plain_out).abs().max().item()
                print(f"| {name} | {channels} | {precision} | {plain_ms:.1f} | {split_ms:.1f} | "
                      f"{plain_ms / split_ms:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
