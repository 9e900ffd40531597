"""bench/profile_train.py's FLOP count: a convolution's backward costs one forward per gradient it computes,
grouped (depthwise) convolutions included, which torch's own formula overcounts about ``groups`` times."""
import importlib.util
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
