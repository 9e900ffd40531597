"""bench/profile_train.py's FLOP count: a convolution's backward costs one forward per gradient it computes,
grouped (depthwise) convolutions included, which torch's own formula overcounts about ``groups`` times."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _profile_module(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the script imports bench_train as a sibling, as `python bench/...` does
    spec = importlib.util.spec_from_file_location("profile_train", BENCH / "profile_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("groups", [1, 4, 32])
def test_convolution_backward_costs_two_forwards(monkeypatch, groups):
    flops_fn = _profile_module(monkeypatch).conv_backward_flops
    conv = torch.nn.Conv2d(32, 32, 3, padding=1, groups=groups)
    x = torch.rand(2, 32, 16, 16, requires_grad=True)  # both gradients: input and weight
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: flops_fn}) as counter:
        conv(x).sum().backward()
    counts = counter.get_flop_counts()["Global"]
    forward = 2 * 2 * 16 * 16 * 32 * (32 // groups) * 9
    assert counts[torch.ops.aten.convolution] == forward
    assert counts[torch.ops.aten.convolution_backward] == 2 * forward


def test_a_trace_that_cannot_be_written_is_refused_before_the_profile(monkeypatch, tmp_path, capsys):
    """--trace in a folder that cannot be written failed after the whole profile, with a traceback."""
    module = _profile_module(monkeypatch)
    monkeypatch.setattr(module, "build_case", lambda *a: pytest.fail("profiled before checking --trace"))
    (tmp_path / "file").write_text("not a folder")
    assert module.main(["--device", "cpu", "--trace", str(tmp_path / "file" / "trace.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --trace ") and err.count("\n") == 1, err


NOISE = ["USDT:2026-12-01 15:54:44 2554:2554 SyncActivityProfilerHandler.cpp:39] profiler_start",
         "STAGE:2026-12-01 15:55:17 2703:2703 SyncActivityProfilerHandler.cpp:38] Completed Stage: Warm Up",
         "ERROR:2026-12-01 15:54:44 2554:2554 DeviceProperties.cpp:56] gpuGetDeviceCount failed with code 35"]
REAL = "ERROR:2026-12-01 15:54:44 2554:2554 CuptiActivityApi.cpp:90] cuptiActivityEnable failed with code 17"


@pytest.mark.parametrize("device, dropped", [("cpu", NOISE), ("cuda", NOISE[:2])])
def test_kinetos_noise_is_dropped_and_every_other_line_kept(monkeypatch, capfd, device, dropped):
    """Around the profiler's start and stop, kineto's probes and stages go, and on the CPU its failed look for a GPU;
    its other lines (a real error), and Python's, reach stderr in order."""
    module = _profile_module(monkeypatch)
    monkeypatch.delenv("KINETO_LOG_LEVEL", raising=False)
    with module.kineto_noise_dropped(torch.device(device)):
        os.write(2, ("\n".join([NOISE[0], REAL, NOISE[1]]) + "\n").encode())
        print("python: a warning", file=sys.stderr)
        os.write(2, (NOISE[2] + "\n").encode())
    err = capfd.readouterr().err.splitlines()
    assert "python: a warning" in err  # (pytest's sys.stderr is not descriptor 2: where it lands is not checked)
    assert [line for line in err if line != "python: a warning"] == [
        line for line in [NOISE[0], REAL, NOISE[1], NOISE[2]] if line not in dropped]


def test_kinetos_lines_asked_for_are_all_kept(monkeypatch, capfd):
    """KINETO_LOG_LEVEL set: the user asked for kineto's own lines, and gets every one."""
    module = _profile_module(monkeypatch)
    monkeypatch.setenv("KINETO_LOG_LEVEL", "1")
    with module.kineto_noise_dropped(torch.device("cpu")):
        os.write(2, (NOISE[0] + "\n").encode())
    assert capfd.readouterr().err.splitlines() == [NOISE[0]]


def test_a_cpu_profile_prints_its_tables_and_nothing_on_stderr(monkeypatch, capfd):
    """On a machine without a GPU, `profile_train.py --preset tiny` printed kineto's "USDT: ... profiler_start",
    "profiler_stop" and "ERROR: ... gpuGetDeviceCount failed with code 35" after its tables."""
    module = _profile_module(monkeypatch)
    monkeypatch.delenv("KINETO_LOG_LEVEL", raising=False)
    monkeypatch.setattr(module, "tune_cpu_allocator", lambda: False)  # process-wide: not in the test's worker
    assert module.main(["--device", "cpu", "--preset", "tiny", "--batch", "1", "--patch", "16", "--K", "1",
                        "--warmup", "0", "--iters", "1", "--rows", "1", "--peak-tflops", "1"]) == 0
    out, err = capfd.readouterr()
    assert "| FLOPs per iteration" in out and err == ""
