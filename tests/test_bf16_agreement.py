"""bench/bf16_agreement.py: the bf16-vs-fp32 PSNR of restore() for random and trained weights, one row each."""
import math

import torch
from _bench_scripts import load_bench_script

from net.presets import build_model, model_config


def _zero_output_checkpoint(path):
    """A project checkpoint of the tiny BaryNet whose last convolution is zero: it returns its input exactly."""
    torch.manual_seed(0)
    model = build_model("BaryNet", "tiny")
    torch.nn.init.zeros_(model.output.weight)
    torch.save({"model": model.state_dict(), "model_config": model_config("tiny"), "backbone": "BaryNet",
                "epoch": 1}, path)


def _rows(out: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| weights")]


def _bench(monkeypatch):
    """The script as a module, its process-wide SIGTERM/SIGHUP handlers left out of pytest's process."""
    bench = load_bench_script("bf16_agreement", monkeypatch)
    monkeypatch.setattr(bench, "stop_signals_as_interrupt", lambda: None)
    return bench


def test_each_network_gets_a_row_and_an_output_equal_to_its_input_is_infinitely_close(tmp_path, monkeypatch, capsys):
    bench = _bench(monkeypatch)
    _zero_output_checkpoint(tmp_path / "zero.pth")
    assert bench.main(["--size", "32", "--random", "tiny", "--model", str(tmp_path / "zero.pth")]) == 0
    rows = _rows(capsys.readouterr().out)
    assert [r[0] for r in rows] == ["random weights, tiny preset (seed 0)", str(tmp_path / "zero.pth")]
    random_row, zero_row = rows
    # the zero-output network hands back its input in both precisions: nothing to tell them apart
    assert zero_row[1:4] == ["inf", "inf", "0.0000"], zero_row
    # random weights change the image, and bf16 rounding moves the output by a little, not by nothing
    assert 5 < float(random_row[1]) < 60 and 30 < float(random_row[2]) < 100 and 0 < float(random_row[3]) < 0.1


def test_the_psnr_is_that_of_the_clamped_outputs(monkeypatch):
    bench = load_bench_script("bf16_agreement", monkeypatch)
    torch.manual_seed(1)
    model = build_model("BaryNet", "tiny").eval()
    x = bench.astronaut(16)
    assert x.shape == (1, 3, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1
    row = bench.agreement(model, x, ("bf16",))
    from utils.eval.inference import restore
    fp32, bf16 = restore(model, x, "fp32").clamp(0, 1), restore(model, x, "bf16").clamp(0, 1)
    assert math.isclose(row["bf16"], -10 * math.log10(float(((fp32 - bf16) ** 2).mean())), rel_tol=1e-6)
    assert math.isclose(row["input"], -10 * math.log10(float(((fp32 - x) ** 2).mean())), rel_tol=1e-6)
    assert row["bf16_max"] == float((fp32 - bf16).abs().max())


def test_a_missing_checkpoint_is_one_error_line_before_any_forward(tmp_path, monkeypatch, capsys):
    bench = _bench(monkeypatch)
    monkeypatch.setattr(bench, "agreement", lambda *a: (_ for _ in ()).throw(AssertionError("a forward ran")))
    assert bench.main(["--size", "16", "--random", "tiny", "--model", str(tmp_path / "nope.pth")]) == 1
    said = capsys.readouterr()
    assert said.out == "" and said.err.startswith(f"error: --model {tmp_path / 'nope.pth'}: checkpoint not found"), said
    assert len(said.err.strip().splitlines()) == 1
    assert bench.main(["--random"]) == 2
    assert capsys.readouterr().err.startswith("error: nothing to measure: --random alone names no preset")


def test_a_cpu_without_bf16_arithmetic_is_said_to_be_slow_once(monkeypatch, capsys):
    """On an AVX2-only CPU every bf16 forward is emulated (about 30x an fp32 one there): said before the wait."""
    bench = _bench(monkeypatch)
    monkeypatch.setattr(bench, "agreement", lambda *a: {"input": 20.0, "bf16": 50.0, "bf16_max": 0.01})
    for slow in (True, False):
        monkeypatch.setattr(bench, "slow_precision_note", lambda device, precision: "slow" if slow else None)
        assert bench.main(["--size", "16", "--random", "tiny"]) == 0
        said = capsys.readouterr()
        assert said.err.count("note: this CPU has no bf16 arithmetic") == (1 if slow else 0), said.err
        assert "| random weights, tiny preset (seed 0) | 20.0 | 50.0 | 0.0100 |" in said.out
