"""Every bench script's table says which machine measured it: the CPU's model, its cores, the torch threads used, the
GPU's name when one ran, torch's version (one helper, utils.runtime.machine_info, the study's too)."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from _bench_scripts import load_bench_script

from utils.runtime import cpu_model, machine_info, machine_line


def test_the_machine_line_names_the_cpu_model_cores_threads_and_torch():
    line = machine_line(machine_info())
    assert line == (f"machine: {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
                    f"torch {torch.__version__}")
    cpuinfo = Path("/proc/cpuinfo")
    names = [s.split(":", 1)[1].strip() for s in cpuinfo.read_text().splitlines() if s.startswith("model name")] \
        if cpuinfo.is_file() else []
    if names:  # Linux: the model itself, not platform.processor()'s "x86_64"
        assert cpu_model() == names[0]
    gpu = machine_line({**machine_info(), "gpu": "NVIDIA H200"})
    assert ", GPU NVIDIA H200, torch " in gpu


def test_the_study_records_the_same_machine(monkeypatch):
    """study.json's "machine" is the benchmarks' (its header line too): one description of the machine."""
    study = load_bench_script("study", monkeypatch)
    assert study.machine_info is machine_info and study.machine_line is machine_line
    assert {"cpu", "cpu_count", "torch_threads", "torch", "gpu", "platform"} <= machine_info().keys()


def _blocks(monkeypatch):
    bench = load_bench_script("bench_blocks", monkeypatch)
    monkeypatch.setattr(bench, "best_ms", lambda fn, repeats: 1.0)  # no timing: the table is the point
    for block in ("FeedForward", "Attention"):
        monkeypatch.setattr(bench, block, lambda *a, **kw: torch.nn.Identity())
    return bench, ["--size", "8", "--repeats", "1"]


def _inference(monkeypatch):
    bench = load_bench_script("bench_inference", monkeypatch)

    def child(cmd, **kw):  # the path's process, run here
        row = {"path": cmd[cmd.index("--child") + 1], "seconds": 0.5, "first_seconds": 1.0, "peak_mib": 1.0}
        return subprocess.CompletedProcess(cmd, 0, json.dumps(row) + "\n", "")
    monkeypatch.setattr(bench, "run_in_session", child)
    monkeypatch.setattr(bench, "_matmul_gflops", lambda dtype: 100.0)
    monkeypatch.setattr(bench, "_forward_flops", lambda preset, size: 10 ** 9)
    return bench, ["--size", "8", "--repeats", "1", "--rounds", "1", "--paths", "plain", "--preset", "tiny"]


def _train(monkeypatch):
    bench = load_bench_script("bench_train", monkeypatch)
    row = {"variant": "engine", "precision": "fp32", "seconds": 0.5, "all": [0.5], "first_seconds": 1.0,
           "peak_mib": 10.0, "threads": 1, "first_losses": {"map": 1.0, "potentials": 0.1, "congruence": 0.0}}
    monkeypatch.setattr(bench, "_spawn", lambda variant, *a, **kw: dict(row, variant=variant))
    return bench, ["--variants", "engine", "--tiny-iters", "0"]


def _loader(monkeypatch):
    return load_bench_script("bench_loader", monkeypatch), ["--files", "1", "--batches", "1", "--workers", "0",
                                                            "--patch", "16", "--device", "cpu"]


def _profile(monkeypatch):
    bench = load_bench_script("profile_train", monkeypatch)
    monkeypatch.setattr(bench, "train_step", lambda training, batch: torch.ones(2).sum())  # one op to profile
    return bench, ["--device", "cpu", "--preset", "tiny", "--batch", "1", "--patch",
                                                   "16", "--K", "1", "--warmup", "0", "--iters", "1", "--rows", "1",
                                                   "--peak-tflops", "1"]


def _memory(monkeypatch):
    bench = load_bench_script("memory_coefficients", monkeypatch)
    monkeypatch.setattr(bench, "measure", lambda *a: {"base_mib": 1, "restore": {}, "train": {}})
    return bench, ["--kinds", "restore"]


def _guarantees(monkeypatch):
    bench = load_bench_script("gpu_guarantees", monkeypatch)

    class Runs:  # every trainer run fails at once: the header, then one row
        def __init__(self, *a):
            pass

        def run(self, name, *a):
            return subprocess.CompletedProcess([name], 1, "", "error: no run here")
    monkeypatch.setattr(bench, "Runs", Runs)
    monkeypatch.setattr(bench, "build_demo_data", lambda *a, **kw: {})
    return bench, ["--device", "cpu", "--checks", "resume-eager"]


def _fast_path(monkeypatch, tmp_path):
    bench = load_bench_script("bench_fast_path", monkeypatch)

    def run(name, mode, root, work, a, threads=None, seed=0):
        return [{"global_step": i + 1, "sec": 0.1, **{k: 1.0 + i for k in bench.PARTS}} for i in range(3)]
    monkeypatch.setattr(bench, "run", run)
    monkeypatch.setattr(bench, "build_demo_data", lambda *a, **kw: {})
    monkeypatch.chdir(tmp_path)  # its record of what it wrote: results/bench/ here
    return bench, ["--iters", "3", "--skip", "1", "--control-threads", "0", "--no-seed-control", "--fig",
                   str(tmp_path / "fig.png")]


@pytest.mark.parametrize("setup", [_blocks, _inference, _train, _loader, _profile, _memory, _guarantees, _fast_path])
def test_every_table_says_the_machine(setup, monkeypatch, tmp_path, capsys):
    """The tables (and BENCHMARKS.md's copies of them) said "torch 2.x, 2 threads" at most: not which CPU, so a
    row could not be told from another machine's. memory_coefficients measures in processes of 2 threads each
    and says so, whatever this process runs with (an earlier test in the worker may have set 1)."""
    threads = torch.get_num_threads()
    try:
        bench, flags = setup(monkeypatch, tmp_path) if setup is _fast_path else setup(monkeypatch)
        bench.main(flags)
        out = capsys.readouterr().out
        expected = {**machine_info(), **({"torch_threads": 2} if setup is _memory else {})}
        assert machine_line(expected) in out, out
    finally:  # a script's own setting must not reach the tests after this one in the worker
        torch.set_num_threads(threads)
