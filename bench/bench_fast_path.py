"""Does the fast path (``--compile``) train what the eager engine trains, and how fast?

Runs the real trainer (``trainer_bary.py``'s engine) twice from the same seed on the embedded demo
data, once eager and once with ``--compile MODE``, every iteration logged, and compares:

- the first iteration's losses (same weights, same batch): the largest relative difference over
  every logged part (target: within 1e-3);
- the loss curves over the whole run, overlaid in one figure (one panel per part of the objective),
  with a control: eager again with another thread count, which changes nothing but the summation
  order. The max-min objective amplifies rounding differences, so curves drift apart after some
  iterations even then; the fast path is as faithful as eager arithmetic when its curves depart from
  the eager ones no more than the control's do. A second control, eager from another seed, gives the
  scale: how far two independent runs lie apart (in the table only);
- seconds per iteration (median after the first ``--skip`` iterations), and the first iteration's
  extra time: what compiling cost this run (a second run with torch's caches warm costs less).

Each run is its own process (its own compile caches in memory, its own peak memory).

    .venv/bin/python bench/bench_fast_path.py --iters 300                       # CPU: tiny, patch 64
    python bench/bench_fast_path.py --device cuda --patch 128 --mode reduce-overhead
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from utils.errors import stopped_while_starting  # noqa: E402

with stopped_while_starting():  # Ctrl-C while torch loads: one line, not a traceback
    from net.presets import PRESETS  # noqa: E402
    from utils.cli import OneSpellingHelpFormatter, at_least, image_side, number_above  # noqa: E402
    from utils.compiled import COMPILE_MODES  # noqa: E402
    from utils.demo.data import build_demo_data  # noqa: E402
    from utils.errors import OneLineArgumentParser, UsageError, add_debug_flag, run_main  # noqa: E402
    from utils.eval.outputs import check_writable_folder  # noqa: E402
    from utils.files import check_output_file, write_text  # noqa: E402
    from utils.owned_outputs import keep_aside_foreign_outputs, recording_outputs  # noqa: E402
    from utils.processes import run_in_session  # noqa: E402
    from utils.runtime import machine_info, machine_line, pick_device, stop_signals_as_interrupt  # noqa: E402
    from utils.train.run_log import LOSS_LABELS, read_log  # noqa: E402

# What this script wrote (utils.owned_outputs): a rerun replaces those files, and no other. Under results/ (ignored
# by git), not beside --fig: BENCHMARKS.md's command writes the documented figure into figs/bench/.
OUTPUTS_RECORD = Path("results") / "bench" / ".bench_fast_path-outputs.json"
PARTS = ("map",) + tuple(k for k, _ in LOSS_LABELS)


def add_trainer_run_flags(parser: argparse.ArgumentParser) -> None:
    """``--batch``, ``--patch``, ``--lr``: what :func:`trainer_flags` passes to every trainer run, in ``parser``
    (this benchmark's and bench/gpu_guarantees.py's); a value the trainer would refuse is refused here, before the
    demo data is built."""
    parser.add_argument("--batch", type=at_least(1), default=3, help="every run's --batchSize")
    parser.add_argument("--patch", type=image_side(16), default=64,
                        help="every run's --patch_size (a multiple of 8, at least 16)")
    parser.add_argument("--lr", type=number_above(0, " (0 would train nothing to compare)"), default=1e-3,
                        help="every run's learning rate")


def trainer_flags(root: Path, out: Path, a: argparse.Namespace, seed: int = 0) -> list[str]:
    train = root / "Train"
    return ["--preset", a.preset, "--de_type", "denoise_15", "denoise_25", "denoise_50", "derain", "dehaze",
            "--denoise_dir", str(train / "Denoise"), "--derain_dir", str(train / "Derain"),
            "--dehaze_dir", str(train / "Dehaze"), "--data_file_dir", "", "--repeat", "derain=40", "dehaze=8",
            "--batchSize", str(a.batch), "--patch_size", str(a.patch), "--nEpochs", "1",
            "--iters-per-epoch", str(a.iters), "--lr", str(a.lr), "--seed", str(seed), "--device", a.device,
            "--precision", a.precision, "--output-dir", str(out), "--save-every", "0", "--log-every", "1",
            "--degset", ""]


def run(name: str, mode: str, root: Path, work: Path, a: argparse.Namespace, threads: int | None = None,
        seed: int = 0) -> list[dict]:
    out = work / name
    cmd = [sys.executable, str(REPO / "trainer_bary.py"), *trainer_flags(root, out, a, seed), "--compile", mode]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    print(f"-- {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    tic = time.perf_counter()
    # stopped (Ctrl-C, SIGTERM), the run and its workers are stopped too, and the temporary folder goes
    done = run_in_session(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        sys.exit(f"error: the {name} run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    print(f"   {time.perf_counter() - tic:.0f} s", file=sys.stderr, flush=True)
    return [r for r in read_log(out / "log.jsonl") if r.get("kind") == "iter"]


def first_iteration_gap(eager: dict, fast: dict) -> tuple[float, str]:
    """The largest relative difference over the parts both first records hold, and which part."""
    worst, name = 0.0, ""
    for k in PARTS:
        if k in eager and k in fast:
            rel = abs(fast[k] - eager[k]) / max(abs(eager[k]), 1e-12)
            if rel >= worst:
                worst, name = rel, k
    return worst, name


def departure(run: list[dict], eager: list[dict], key: str) -> float:
    """Mean |EMA(run) - EMA(eager)| over the run, relative to the mean |EMA(eager)|, for one logged part."""
    from utils.train.loss_history import smoothed
    a, b = smoothed([r[key] for r in run]), smoothed([r[key] for r in eager])
    n = min(len(a), len(b))
    return sum(abs(x - y) for x, y in zip(a[:n], b[:n])) / max(sum(abs(y) for y in b[:n]), 1e-12)


def draw(curves: dict[str, list[dict]], labels: dict[str, str], fig_path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from utils.train.loss_history import smoothed
    parts = [(k, label) for k, label in LOSS_LABELS if k in curves["eager"][0]]
    cols = 4
    rows = -(-len(parts) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (k, label) in zip(axes.flat, parts):
        for name, (style, colour) in zip(curves, (("-", "C0"), ("--", "C1"), (":", "0.45"))):
            steps = [r["global_step"] for r in curves[name]]
            values = [r[k] for r in curves[name]]
            ax.plot(steps, smoothed(values), style, color=colour, lw=1.4, label=labels[name])
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("iteration")
    for ax in list(axes.flat)[len(parts):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    from utils.plotting import save_figure
    save_figure(fig, fig_path, dpi=110)  # whole or not at all: Ctrl-C while saving leaves the earlier figure
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=OneSpellingHelpFormatter)
    p.add_argument("--mode", default="default", choices=COMPILE_MODES[1:], help="--compile mode of the fast run")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where every run trains")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="every run's --precision")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="BaryNet's size preset")
    p.add_argument("--iters", type=at_least(1), default=300, help="training iterations per run (one epoch)")
    add_trainer_run_flags(p)
    p.add_argument("--skip", type=at_least(0), default=10,
                   help="iterations left out of the median time (fewer than --iters)")
    p.add_argument("--control-threads", dest="control_threads", type=at_least(0), default=1,
                   help="also run eager with this many OpenMP threads: the same training with another summation "
                        "order, to show how far curves of this adversarial objective drift from rounding alone "
                        "(0: no control run)")
    p.add_argument("--seed-control", dest="seed_control", action=argparse.BooleanOptionalAction, default=True,
                   help="also run eager from seed 1 (other initial weights and data order): how far two independent "
                        "runs' curves lie apart, the scale for the other departures (table only, not drawn)")
    p.add_argument("--data", default="data/demo", help="demo data folder (built when missing or stale)")
    p.add_argument("--fig", default="results/bench/fast_path_losses.png",
                   help="the loss curves' figure (the repository's figs/bench/ holds the documented one); a rerun "
                        "replaces its own, a file of yours there (or at --json) is moved aside to "
                        "bench_fast_path.before-<time>/ beside it")
    p.add_argument("--json", default=None, help="also write the curves and the summary here")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """The benchmark; a failure the user can fix (or Ctrl-C) is one ``error:`` line (:func:`utils.errors.run_main`)."""
    a = build_parser().parse_args(argv)
    return run_main(bench, a, debug=a.debug)


def bench(a: argparse.Namespace) -> None:
    stop_signals_as_interrupt()  # SIGTERM stops it as Ctrl-C does: one line, the trainer run stopped with it
    device = pick_device(a.device)  # no GPU visible for --device cuda: said now, not after building the data
    if a.skip >= a.iters:  # every run would end in an empty median, after all of them
        raise UsageError(f"--skip {a.skip} leaves none of --iters {a.iters} to time: pass a smaller --skip "
                         f"(default 10) or more --iters")
    for flag, path in (("--fig", a.fig), ("--json", a.json)):  # before the runs, not after them
        if path:  # a mistyped folder is said, not made
            check_output_file(path, flag, example="fast_path_losses.png" if flag == "--fig" else "curves.json")
            check_writable_folder(Path(path).parent, flag, create=False)
    root = Path(a.data)
    build_demo_data(root, progress=False)
    labels = {"eager": "eager", "fast": f"--compile {a.mode}"}
    with tempfile.TemporaryDirectory(prefix="fast_path_") as tmp:
        curves = {"eager": run("eager", "off", root, Path(tmp), a), "fast": run("fast", a.mode, root, Path(tmp), a)}
        if a.control_threads:
            labels["control"] = f"eager, {a.control_threads} thread(s) (control)"
            curves["control"] = run("control", "off", root, Path(tmp), a, threads=a.control_threads)
        if a.seed_control:
            labels["seed"] = "eager, seed 1 (another run)"
            curves["seed"] = run("seed", "off", root, Path(tmp), a, seed=1)
    eager, fast = curves["eager"], curves["fast"]
    if len(eager) < a.iters:
        print(f"warning: the demo data's epoch held {len(eager)} iterations, fewer than --iters {a.iters}",
              file=sys.stderr)
    gap, part = first_iteration_gap(eager[0], fast[0])
    times = {m: statistics.median(r["sec"] for r in c[min(a.skip, len(c) - 1):]) for m, c in curves.items()}
    parts = [k for k, _ in LOSS_LABELS if k in eager[0]]
    tail = max(1, len(eager) // 6)
    title = (f"{a.preset} preset, batch {a.batch}, patch {a.patch}, {a.precision}, {a.device}: eager vs --compile "
             f"{a.mode}, {len(eager)} iterations from the same seed (EMA-smoothed)")
    # a rerun replaces its own figure and curves; a file of the user's at those names is moved aside, and said
    planned = [Path(a.fig)] + ([Path(a.json)] if a.json else [])
    record = OUTPUTS_RECORD
    keep_aside_foreign_outputs(planned, record, [(p.parent, "bench_fast_path") for p in planned], "bench_fast_path")
    with recording_outputs(planned, record):
        draw({k: v for k, v in curves.items() if k != "seed"}, labels, Path(a.fig), title)
        if a.json:
            write_text(a.json, json.dumps({"curves": curves, "first_gap": gap, "seconds": times}))
    print(f"Fast path vs eager: {title}; {machine_line(machine_info(device))}\n")
    print("| run | first iteration (s) | s / iteration (median) | speed-up | "
          f"map loss, mean of the last {tail} |")
    print("|---|---:|---:|---:|---:|")
    for m, c in curves.items():
        print(f"| {labels[m]} | {c[0]['sec']:.2f} | {times[m]:.4f} | {times['eager'] / times[m]:.2f}x | "
              f"{statistics.mean(r['map'] for r in c[-tail:]):.2f} |")
    others = [m for m in curves if m != "eager"]
    print("\nHow far each run's curve departs from the eager one (mean |EMA difference| / mean |EMA of eager|):\n")
    print("| part | " + " | ".join(labels[m] for m in others) + " |")
    print("|---|" + "---:|" * len(others))
    for k in parts:
        print(f"| {k} | " + " | ".join(f"{departure(curves[m], eager, k):.3f}" for m in others) + " |")
    print(f"\nfirst iteration: largest relative difference {gap:.2e} ({part}); target 1e-3: "
          f"{'met' if gap <= 1e-3 else 'NOT met'}")
    print(f"compiling cost about {fast[0]['sec'] - eager[0]['sec']:.0f} s in the first iteration")
    print(f"figure: {a.fig}")
    if a.json:
        print(f"curves: {a.json}")


if __name__ == "__main__":
    sys.exit(main())
