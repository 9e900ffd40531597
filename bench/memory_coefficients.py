"""Measure the activation memory per pixel that ``utils/memory.py`` keeps in code.

Each case runs in a fresh process and reports its peak resident memory (``VmHWM``) after the work.
The slope between two sizes is the activation memory per pixel; what does not grow with the image
(the interpreter, torch, weights, optimizer state) cancels out:

- restoring: ``utils.eval.inference.restore`` on one image at two sizes -> bytes per input pixel;
- training: two iterations of ``utils.train.iteration.train_step`` (K=3 potentials, RMSprop, channels_last)
  at batch 1 and batch 4 of the same patch -> bytes per pixel of ``batch x patch^2``.

It also reports the peak of a process that has only imported torch and the project, the constant
the estimates add. Run it alone (other processes do not change the peaks, but they slow it down):

    python bench/memory_coefficients.py            # prints the table and the dict for utils/memory.py

CPU peaks; a CUDA caching allocator rounds up differently, so GPU estimates carry a margin. bf16 is
measured only with ``--precisions fp32 bf16`` on a CPU with native bf16 (AVX-512 BF16/AMX): an AVX2 CPU
emulates it ~30x slower; without a bf16 row the estimates use fp32's, an upper bound (autocast keeps
fp32 weights and adds bf16 copies of activations that are smaller than the fp32 ones they replace).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from utils.cli import DocstringHelpFormatter
from utils.errors import OneLineArgumentParser, UserError, add_debug_flag, child_failure, run_main
from utils.processes import run_in_session

ROOT = Path(__file__).resolve().parents[1]
# (backbone, preset) -> (small, large) side for restoring, patch side for training
# Large sides: at small ones fixed-size buffers inflate the slope (tiny: 3128 B/px from 256-512, 2164 from
# 1024-2048), and automatic tiling matters for large images.
RESTORE_SIDES = {"tiny": (1024, 2048), "paper": (512, 1024)}
TRAIN_PATCH = {"tiny": 128, "paper": 64}
TRAIN_BATCHES = (1, 4)
BACKBONE_NAMES = ("BaryNet", "Restormer", "PromptIR", "BaryPromptIR")


def peak_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def one_case(kind: str, backbone: str, preset: str, precision: str, size: int, batch: int) -> float:
    """Run one case in this process; returns its peak resident memory in MiB."""
    import torch

    from net.presets import build_model, build_potentials
    from utils.runtime import to_channels_last, tune_cpu_allocator

    tune_cpu_allocator()  # as every entry point does
    torch.set_num_threads(2)
    torch.manual_seed(0)
    if kind == "base":
        return peak_mib()
    model = build_model(backbone, preset)
    if kind == "restore":
        from utils.eval.inference import restore
        x = torch.rand(1, 3, size, size)
        restore(model, x, precision=precision)
        return peak_mib()
    from utils.train.iteration import Training, train_step
    from utils.train.optim import build_optimizer
    to_channels_last(model)
    pots = build_potentials(backbone, model, 3, size)
    training = Training(model, model, pots, build_optimizer("RMSprop", model.parameters(), 1e-4),
                        build_optimizer("RMSprop", pots.parameters(), 1e-4) if pots is not None else None,
                        torch.tensor([0.34, 0.33, 0.33]), precision=precision, channels_last=True)
    g = torch.Generator().manual_seed(0)
    target = torch.rand(batch, 3, size, size, generator=g)
    degraded = (target + 0.1 * torch.randn(batch, 3, size, size, generator=g)).clamp(0, 1)
    de_ids = torch.arange(batch) % 5
    domains = torch.tensor([0, 0, 0, 1, 2])[de_ids]
    for _ in range(2):  # the second iteration has the optimizer's state allocated
        train_step(training, (degraded, target, de_ids, domains))
    return peak_mib()


def run_case(*case) -> float:
    cmd = [sys.executable, __file__, "--one", *map(str, case)]
    # stopped (Ctrl-C, SIGTERM), the case's process is stopped too
    out = run_in_session(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if out.returncode:
        raise UserError(f"the case {' '.join(map(str, case))} failed: {child_failure(out.stderr, out.returncode)}")
    return float(out.stdout.strip().splitlines()[-1])


def measure(precisions: tuple[str, ...] = ("fp32",), backbones: tuple[str, ...] = BACKBONE_NAMES,
            kinds: tuple[str, ...] = ("restore", "train")) -> dict:
    base = run_case("base", "BaryNet", "tiny", "fp32", 0, 0)
    rows = {"base_mib": round(base), "restore": {}, "train": {}}
    for backbone in backbones:
        for preset in ("tiny", "paper"):
            for precision in precisions:
                key = f"{backbone}/{preset}/{precision}"
                if "restore" in kinds:
                    small, large = RESTORE_SIDES[preset]
                    a = run_case("restore", backbone, preset, precision, small, 1)
                    b = run_case("restore", backbone, preset, precision, large, 1)
                    per_px = (b - a) * 2**20 / (large**2 - small**2)
                    rows["restore"][key] = round(per_px)
                    print(f"restore {key:28s} peak {a:7.0f} MiB at {small}^2, {b:7.0f} MiB at {large}^2: "
                          f"{per_px:8.0f} B/px", flush=True)
                if "train" in kinds:
                    p = TRAIN_PATCH[preset]
                    a = run_case("train", backbone, preset, precision, p, TRAIN_BATCHES[0])
                    b = run_case("train", backbone, preset, precision, p, TRAIN_BATCHES[1])
                    per_px = (b - a) * 2**20 / ((TRAIN_BATCHES[1] - TRAIN_BATCHES[0]) * p * p)
                    rows["train"][key] = round(per_px)
                    print(f"train   {key:28s} peak {a:7.0f} MiB at batch {TRAIN_BATCHES[0]}, {b:7.0f} MiB at "
                          f"batch {TRAIN_BATCHES[1]} (patch {p}): {per_px:8.0f} B/px", flush=True)
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=DocstringHelpFormatter)
    parser.add_argument("--one", nargs=6, metavar=("KIND", "BACKBONE", "PRESET", "PRECISION", "SIZE", "BATCH"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                        help="precisions to measure (bf16: only on a CPU with native bf16, see above)")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONE_NAMES), choices=list(BACKBONE_NAMES),
                        help="networks to measure, each at the tiny and paper presets")
    parser.add_argument("--kinds", nargs="+", default=["restore", "train"], choices=["restore", "train"],
                        help="restore: bytes per input pixel; train: bytes per pixel of batch x patch^2")
    add_debug_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The measurement; a failure the user can fix (or Ctrl-C) is one ``error:`` line
    (:func:`utils.errors.run_main`)."""
    args = build_parser().parse_args(argv)
    return run_main(measure_and_print, args, debug=args.debug)


def measure_and_print(args: argparse.Namespace) -> None:
    if args.one:
        kind, backbone, preset, precision, size, batch = args.one
        print(one_case(kind, backbone, preset, precision, int(size), int(batch)))
        return
    from utils.runtime import machine_info, machine_line, stop_signals_as_interrupt
    stop_signals_as_interrupt()  # SIGTERM stops it as Ctrl-C does: one line, the running case with it
    info = machine_info()
    info["torch_threads"] = 2  # each case's process sets its own (one_case)
    print(f"{machine_line(info)}; peaks are VmHWM of fresh processes")
    rows = measure(tuple(args.precisions), tuple(args.backbones), tuple(args.kinds))
    print("base (import torch and the project):", rows["base_mib"], "MiB")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.exit(main())
