"""How far ``restore()``'s bf16 output lies from its fp32 output, for random and for trained weights.

    .venv/bin/python bench/bf16_agreement.py --size 512 --model checkpoint/demo [--model RUN ...]
    python bench/bf16_agreement.py --device cuda --size 512 --model RUN      # the GPU's own rounding

The GPU inference target in BENCHMARKS.md asks for a bf16 output within 40 dB PSNR of the fp32 one. The GPU row
of ``bench/bench_inference.py`` measures it on the paper network with seed-0 random weights, the only weights a
lent GPU machine has. This script measures it on the same image for each network named: ``--random PRESET``
(seeded random weights, as that row) and ``--model`` (a checkpoint, a run's folder or its ``latest``). Each row
gives the PSNR of the bf16 output against the fp32 one (both clamped to [0, 1], as the tester saves them), the
largest pixel difference, and how far the fp32 output lies from the input (a random network changes the image
far more than a trained one does). The image is scikit-image's astronaut, resized to ``--size`` as the GPU row
resizes it. On ``--device cuda`` fp16 is measured too.
"""
from __future__ import annotations

import argparse
import math
import sys
import time

from utils.errors import stopped_while_starting

with stopped_while_starting():  # Ctrl-C while torch loads: one line, not a traceback
    import torch

    from net.presets import PRESETS, build_model
    from utils.checkpoints import load_model, resolve_checkpoint
    from utils.cli import DocstringHelpFormatter, image_side
    from utils.errors import OneLineArgumentParser, UsageError, add_debug_flag, run_main
    from utils.eval.inference import restore, slow_precision_note
    from utils.runtime import machine_info, machine_line, pick_device, stop_signals_as_interrupt, tune_cpu_allocator


def astronaut(size: int) -> torch.Tensor:
    """scikit-image's astronaut photo as ``(1, 3, size, size)`` float32 in [0, 1] (bilinear resize)."""
    import numpy as np
    from skimage import data as skdata
    photo = np.asarray(skdata.astronaut(), dtype=np.float32) / 255  # 512x512 RGB
    x = torch.from_numpy(photo).permute(2, 0, 1)[None]
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).contiguous()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two ``(B, C, H, W)`` images in [0, 1]; ``inf`` when they are equal."""
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def agreement(model: torch.nn.Module, x: torch.Tensor, precisions: tuple[str, ...]) -> dict[str, float]:
    """``{"input": PSNR(fp32 output, x), "<p>": PSNR(p output, fp32 output), "<p>_max": largest |difference|}``
    for each reduced precision ``p``; outputs clamped to [0, 1]. ``x``: ``(1, 3, H, W)`` on the model's device."""
    reference = restore(model, x, "fp32").clamp(0, 1)
    row = {"input": psnr(reference, x)}
    for precision in precisions:
        out = restore(model, x, precision).clamp(0, 1)
        row[precision] = psnr(out, reference)
        row[f"{precision}_max"] = float((out - reference).abs().max())
    return row


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=DocstringHelpFormatter)
    parser.add_argument("--size", type=image_side(8), default=512, help="image side, a multiple of 8")
    parser.add_argument("--random", nargs="*", default=["paper"], choices=sorted(PRESETS), metavar="PRESET",
                        help="BaryNet presets measured with seed-0 random weights (default: paper; --random alone: "
                             "none)")
    parser.add_argument("--model", action="append", default=[], metavar="CKPT",
                        help="a trained network: a checkpoint, a run's folder or its latest (repeatable)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the forwards run")
    add_debug_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The benchmark; a failure the user can fix (or Ctrl-C) is one ``error:`` line (:func:`utils.errors.run_main`)."""
    args = build_parser().parse_args(argv)
    return run_main(bench, args, debug=args.debug)


def bench(args: argparse.Namespace) -> None:
    if not args.random and not args.model:
        raise UsageError("nothing to measure: --random alone names no preset; give a preset or --model CKPT")
    stop_signals_as_interrupt()
    device = pick_device(args.device)
    if device.type == "cpu":
        tune_cpu_allocator()  # as the tester runs
    if slow_precision_note(device, "bf16"):  # the tester's condition; its words name a flag this script lacks
        print("note: this CPU has no bf16 arithmetic (no AVX-512 BF16 or AMX): oneDNN emulates it, so each bf16 "
              "forward takes many times as long as an fp32 one", file=sys.stderr)
    # every path is resolved before the first forward: a wrong one stops the run at once, not after minutes
    paths = [resolve_checkpoint(path, flag="--model")[0] for path in args.model]
    precisions = ("bf16", "fp16") if device.type == "cuda" else ("bf16",)
    x = astronaut(args.size).to(device)
    print(f"restore() on the astronaut image, 1x3x{args.size}x{args.size}; {machine_line(machine_info(device))}\n")
    header = " | ".join(f"{p} vs fp32 (dB) | {p} largest difference" for p in precisions)
    print(f"| weights | fp32 output vs input (dB) | {header} | seconds |")
    print("|---|---:|" + "---:|---:|" * len(precisions) + "---:|", flush=True)
    for name, build in [*((f"random weights, {preset} preset (seed 0)", lambda preset=preset: random_net(preset))
                          for preset in args.random),
                        *((str(path), lambda path=path: load_model(path)[0]) for path in paths)]:
        t0 = time.perf_counter()
        row = agreement(build().eval().to(device), x, precisions)  # one network in memory at a time
        cells = " | ".join(f"{row[p]:.1f} | {row[f'{p}_max']:.4f}" for p in precisions)
        print(f"| {name} | {row['input']:.1f} | {cells} | {time.perf_counter() - t0:.0f} |", flush=True)


def random_net(preset: str) -> torch.nn.Module:
    """BaryNet of ``preset`` with the weights of ``torch.manual_seed(0)``, as ``bench_inference.py`` builds it."""
    torch.manual_seed(0)
    return build_model("BaryNet", preset)


if __name__ == "__main__":
    sys.exit(main())
