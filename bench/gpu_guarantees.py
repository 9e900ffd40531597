"""Do resume, the NaN stop and SIGTERM keep their guarantees on this device, eager and on the fast path?

The CPU tests check these guarantees with the fast path traced without kernels (``--compile-backend eager``);
this script checks them where the fast path is meant to run: the real trainer (tiny preset, the embedded
demo data, every run its own process), on a GPU with ``--compile reduce-overhead``. One row per check:

- **resume, eager:** 2 epochs straight against 1 epoch then ``--resume auto`` (which must say that it
  resumed): the weights, potentials and optimizer states equal bit for bit. Eager runs pass the trainer's
  ``--deterministic`` (no cuDNN autotuning, deterministic kernels). Should the resumed and the straight
  states differ, a second straight run is the control (run then, and once): should two straight runs differ
  too (an op without a deterministic kernel), the resumed run may differ from the straight one by no more than
  10 times as much, and the row says so;
- **resume, fast:** the same with ``--compile MODE``: it resumes, ends at epoch 2 with finite weights
  (its distance to the eager run is shown, not judged: compiled kernels round differently: the model's
  weights' distance relative to their norm, and every state tensor's largest absolute gap);
- **NaN, eager / fast:** a NaN injected at iteration 3 (``--debug-nan-at 3``, a checkpoint every 2
  iterations) stops the run with exit status 1 and an error line naming the non-finite loss, and the newest
  checkpoint is iteration 2's, with finite weights;
- **SIGTERM, eager / fast:** signalled after 3 logged iterations, the run saves where it stopped, says so
  and exits 0; ``--resume auto`` resumes and finishes it, every iteration logged once. Eager, the result is
  judged against the straight run as the resume row's is.

    python bench/gpu_guarantees.py --device cuda                   # the GPU check (bench/gpu_suite.sh)
    .venv/bin/python bench/gpu_guarantees.py --device cpu --mode default --compile-backend eager --patch 32
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))  # bench_fast_path's trainer flags: one spelling of the demo run

from utils.errors import stopped_while_starting  # noqa: E402

with stopped_while_starting():  # Ctrl-C while torch loads: one line, not a traceback
    import torch  # noqa: E402
    from bench_fast_path import add_trainer_run_flags, trainer_flags  # noqa: E402

    from utils.checkpoints import list_checkpoints, read_checkpoint, read_latest  # noqa: E402
    from utils.cli import OneSpellingHelpFormatter, at_least  # noqa: E402
    from utils.compiled import BACKENDS, COMPILE_MODES  # noqa: E402
    from utils.demo.data import build_demo_data  # noqa: E402
    from utils.errors import OneLineArgumentParser, add_debug_flag, run_main  # noqa: E402
    from utils.processes import run_in_session, stop_session  # noqa: E402
    from utils.runtime import machine_info, machine_line, pick_device, stop_signals_as_interrupt  # noqa: E402
    from utils.train.run_log import read_log  # noqa: E402

STATE_KEYS = ("model", "potentials", "optimizer", "potentials_optimizer")


def state_tensors(ck: dict) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint's model, potentials and optimizer states, by a dotted name."""
    found = {}

    def walk(value, name: str) -> None:
        if isinstance(value, torch.Tensor):
            found[name] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{name}.{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{name}.{i}")
    for key in STATE_KEYS:
        walk(ck.get(key), key)
    return found


def same_layout(ta: dict[str, torch.Tensor], tb: dict[str, torch.Tensor]) -> bool:
    """Whether two sets of named tensors have the same names and, name by name, the same shapes."""
    return ta.keys() == tb.keys() and all(ta[k].shape == tb[k].shape for k in ta)


def max_difference(a: dict, b: dict) -> float:
    """The largest |a - b| over two checkpoints' state tensors (inf when their names or shapes differ)."""
    ta, tb = state_tensors(a), state_tensors(b)
    if not same_layout(ta, tb):
        return float("inf")
    gaps = [(ta[k].double() - tb[k].double()).abs().max() for k in ta if ta[k].numel()]
    return max((float(torch.nan_to_num(g, nan=float("inf"))) for g in gaps), default=0.0)  # a NaN: inf


def relative_distance(a: dict, b: dict, key: str = "model") -> float:
    """``‖a − b‖ / ‖b‖`` over all tensors of one state (``key``: the model's weights by default), as one vector:
    a scale-free distance for runs that round differently (optimizer states hold squared gradients of the
    1e4-weighted loss, whose absolute gaps say little, and a per-tensor ratio is dominated by tensors still
    near zero, such as LayerNorm biases after a few RMSprop steps). inf when the layouts differ or a value is
    not finite."""
    ta = {k: t for k, t in state_tensors(a).items() if k.startswith(f"{key}.") and t.is_floating_point()}
    tb = {k: t for k, t in state_tensors(b).items() if k.startswith(f"{key}.") and t.is_floating_point()}
    if not same_layout(ta, tb):
        return float("inf")
    gap = sum(float(((ta[k].double() - tb[k].double()) ** 2).sum()) for k in ta)
    size = sum(float((tb[k].double() ** 2).sum()) for k in tb)
    distance = (gap / size) ** 0.5 if size else (0.0 if gap == 0 else float("inf"))
    return distance if distance == distance else float("inf")  # NaN: inf


def all_finite(ck: dict) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state_tensors(ck).values() if t.is_floating_point())


class Runs:
    """Starts the trainer on the demo data in folders under ``work``; each run its own process."""

    def __init__(self, a: argparse.Namespace, data: Path, work: Path):
        self.a, self.data, self.work = a, data, work

    def command(self, name: str, fast: bool, *extra: str) -> list[str]:
        flags = trainer_flags(self.data, self.work / name, self.a)  # one epoch of --iters; two asked for below
        mode = ["--compile", self.a.mode, "--compile-backend", self.a.compile_backend] if fast else ["--deterministic"]
        return [sys.executable, str(REPO / "trainer_bary.py"), *flags, "--nEpochs", "2", *mode, *extra]

    def env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(REPO))

    def run(self, name: str, fast: bool = False, *extra: str) -> subprocess.CompletedProcess:
        print(f"-- {name}", file=sys.stderr, flush=True)
        # stopped (Ctrl-C, SIGTERM) or past --run-timeout, the trainer and its workers are stopped too
        return run_in_session(self.command(name, fast, *extra), cwd=REPO, env=self.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=self.a.run_timeout)

    def final(self, name: str) -> dict:
        return read_checkpoint(read_latest(self.work / name))


def _failed(done: subprocess.CompletedProcess) -> str:
    last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    return f"exit {done.returncode}: {last[:200]}"


class ControlFailed(Exception):
    """The second straight run, the control, failed: no eager check can be judged."""


class Control:
    """How far two straight eager runs differ: the straight run's state against a second straight run, which
    runs when a check first asks (an eager run equal to the straight one bit for bit needs no control, and
    each run is a trainer process: minutes of a lent GPU), once."""

    def __init__(self, runs: "Runs", straight: dict):
        self.runs, self.straight, self.value = runs, straight, None

    def __call__(self) -> float:
        if self.value is None:
            done = self.runs.run("straight_again")
            if done.returncode:
                raise ControlFailed(_failed(done))
            self.value = max_difference(self.runs.final("straight_again"), self.straight)
        return self.value


def judged(diff: float, control: Callable[[], float], where: str) -> tuple[bool, str]:
    """An eager run against the straight one: equal bit for bit, or (when two straight runs differ too: an op
    without a deterministic kernel) within 10 times their difference. ``control()`` gives that difference; it is
    asked for only when ``diff`` is not 0."""
    if diff == 0:
        return True, f"{where}; equal to the straight run bit for bit"
    gap = control()
    return diff <= 10 * gap, (f"{where}; max abs difference to the straight run {diff:.3g}, two straight "
                              f"runs differ by {gap:.3g}")


def _not_resumed(done: subprocess.CompletedProcess) -> str | None:
    """Why a ``--resume auto`` run did not continue the earlier one (a fresh run ends like a straight one)."""
    if done.returncode:
        return f"resume: {_failed(done)}"
    if "=> resumed " not in done.stdout:
        return "the --resume auto run did not say '=> resumed': it trained from the start"
    return None


def check_resume(runs: Runs, name: str, fast: bool, straight: dict,
                 control: Callable[[], float]) -> tuple[bool, str]:
    first = runs.run(name, fast, "--nEpochs", "1")
    if first.returncode:
        return False, f"first epoch: {_failed(first)}"
    if why := _not_resumed(runs.run(name, fast, "--resume", "auto")):
        return False, why
    ck = runs.final(name)
    diff = max_difference(ck, straight)
    where = f"ended at epoch {ck['epoch']}, global step {ck['global_step']}"
    if fast:
        ok = ck["epoch"] == 2 and all_finite(ck)
        return ok, (f"{where}, weights finite: {all_finite(ck)}; distance of the model's weights to the eager "
                    f"run's, relative to their norm: {relative_distance(ck, straight):.2g} (largest absolute gap of "
                    f"any state tensor, optimizers' included: {diff:.3g})")
    return judged(diff, control, where)


def check_nan(runs: Runs, name: str, fast: bool) -> tuple[bool, str]:
    done = runs.run(name, fast, "--nEpochs", "1", "--save-every", "2", "--debug-nan-at", "3")
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]  # warnings may follow
    error = errors[-1] if errors else (done.stderr.strip().splitlines() or [""])[-1]
    saved = list_checkpoints(runs.work / name)
    newest = read_checkpoint(saved[-1]) if saved else None
    ok = (done.returncode == 1 and error.startswith("error: ") and "non-finite" in error and newest is not None
          and newest["global_step"] == 2 and all_finite(newest))
    kept = f"newest checkpoint {saved[-1].name}, finite: {all_finite(newest)}" if newest else "no checkpoint"
    return ok, f"exit {done.returncode}; {kept}; said: {error[:160]}"


def check_sigterm(runs: Runs, name: str, fast: bool, straight: dict | None,
                  control: Callable[[], float]) -> tuple[bool, str]:
    log = runs.work / name / "log.jsonl"
    print(f"-- {name}", file=sys.stderr, flush=True)
    said = runs.work / f"{name}.out"  # a file, not a pipe: a trainer that prints much never blocks on it
    with open(said, "w") as out:
        proc = subprocess.Popen(runs.command(name, fast), cwd=REPO, env=runs.env(), stdout=out,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + runs.a.run_timeout  # the fast path compiles before its first iteration
            logged = 0
            while time.monotonic() < deadline and proc.poll() is None and logged < 3:
                time.sleep(0.02)
                logged = log.read_text().count('"kind": "iter"') if log.is_file() else 0
            if proc.poll() is not None:
                return False, f"the run ended (exit {proc.returncode}) before it was signalled: raise --iters"
            if logged < 3:
                return False, f"fewer than 3 iterations within --run-timeout {runs.a.run_timeout} s"
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=runs.a.run_timeout)
        except subprocess.TimeoutExpired:
            return False, f"still running {runs.a.run_timeout} s after SIGTERM"
        finally:  # never leave a trainer (or its workers) running into the next check, nor past a Ctrl-C
            if proc.poll() is None:
                stop_session(proc)
    output = said.read_text()
    stopped = next((line for line in output.splitlines() if line.startswith("=> stopped by SIGTERM")), None)
    saved = list_checkpoints(runs.work / name)
    if proc.returncode != 0 or stopped is None or not saved:
        return False, f"exit {proc.returncode}, {len(saved)} checkpoint(s); said: {output.strip()[-200:]}"
    if why := _not_resumed(runs.run(name, fast, "--resume", "auto")):
        return False, f"{stopped[3:]}; {why}"
    steps = [r["global_step"] for r in read_log(log) if r.get("kind") == "iter"]
    once = steps == list(range(1, 2 * runs.a.iters + 1))
    detail = f"{stopped[3:].split(';')[0]}; resumed to the end, every iteration logged once: {once}"
    if straight is None:
        return once, detail
    ok, judgement = judged(max_difference(runs.final(name), straight), control, detail)
    return once and ok, judgement


CHECKS = ("resume-eager", "resume-fast", "nan-eager", "nan-fast", "sigterm-eager", "sigterm-fast")


def guarantees(a: argparse.Namespace) -> int:
    stop_signals_as_interrupt()  # SIGTERM stops it as Ctrl-C does: one line, the running trainer with it
    device = pick_device(a.device)  # --device cuda without a GPU: one error: line naming the flag
    a.device = device.type
    data = Path(a.data)
    build_demo_data(data, progress=False)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="gpu_guarantees_") as tmp:
        runs = Runs(a, data, Path(tmp))
        print(f"## Guarantees on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'the CPU'}: "
              f"tiny preset, batch {a.batch}, patch {a.patch}, 2 epochs of {a.iters} iterations, fast path "
              f"--compile {a.mode} ({a.compile_backend}); {machine_line(machine_info(device))}\n")
        print("| check | result | detail |\n|---|---|---|", flush=True)
        straight, control = None, None
        if {"resume-eager", "sigterm-eager", "resume-fast"} & set(a.checks):  # the eager run to compare with
            done = runs.run("straight")
            if done.returncode:
                print(f"| straight | FAILED | {_failed(done)} |", flush=True)
                return 1
            straight = runs.final("straight")
            control = Control(runs, straight)
        for check in a.checks:
            kind, path = check.split("-")
            fast = path == "fast"
            tic = time.perf_counter()
            try:
                if kind == "resume":
                    ok, detail = check_resume(runs, check, fast, straight, control)
                elif kind == "nan":
                    ok, detail = check_nan(runs, check, fast)
                else:
                    ok, detail = check_sigterm(runs, check, fast, None if fast else straight, control)
            except subprocess.TimeoutExpired:
                ok, detail = False, f"a run took longer than --run-timeout {a.run_timeout} s"
            except ControlFailed as e:
                print(f"| straight_again | FAILED | {e} |", flush=True)
                return 1
            failed += not ok
            print(f"| {check} | {'ok' if ok else 'FAILED'} | {detail} ({time.perf_counter() - tic:.0f} s) |",
                  flush=True)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=OneSpellingHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"], help="where every trainer run trains")
    p.add_argument("--mode", default="reduce-overhead", choices=COMPILE_MODES[1:],
                   help="--compile mode of the fast path")
    p.add_argument("--compile-backend", dest="compile_backend", default="inductor", choices=BACKENDS,
                   help="eager/aot_eager: the fast path's wiring traced without kernels (a quick CPU check)")
    p.add_argument("--checks", nargs="+", default=list(CHECKS), choices=CHECKS, metavar="CHECK",
                   help=f"which checks (default all: {' '.join(CHECKS)})")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="every run's --precision")
    p.add_argument("--preset", default="tiny", choices=["tiny"], help="the tiny preset: the checks are of wiring")
    p.add_argument("--iters", type=at_least(4), default=12, help="iterations per epoch (2 epochs)")
    add_trainer_run_flags(p)
    p.add_argument("--run-timeout", dest="run_timeout", type=at_least(1), default=300,
                   help="seconds one trainer process may take (compiling included)")
    p.add_argument("--data", default="/tmp/baryir_demo_data", help="demo data folder (built when missing or stale)")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    return run_main(guarantees, a, debug=a.debug)


if __name__ == "__main__":
    sys.exit(main())
