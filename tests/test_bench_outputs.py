"""A bench script's output file flag (profile_train's --trace, bench_fast_path's --fig and --json) is checked before
the work: a mistyped folder is one error line naming it (not made without a word), a folder at the file's name is
refused, and a file already there is moved aside, said, never replaced."""

import pytest
import torch
from _bench_scripts import load_bench_script

PROFILE = ["--device", "cpu", "--preset", "tiny", "--batch", "1", "--patch", "16", "--K", "1", "--warmup", "0",
           "--iters", "1", "--rows", "1", "--peak-tflops", "1"]


@pytest.fixture
def profile(monkeypatch):
    """profile_train with a one-op iteration (the files are the point); ``profile.built`` counts the cases built."""
    module = load_bench_script("profile_train", monkeypatch)
    monkeypatch.setattr(module, "train_step", lambda training, batch: torch.ones(2).sum())
    built = []
    build_case = module.build_case
    monkeypatch.setattr(module, "build_case", lambda *a: built.append(a) or build_case(*a))
    module.built = built
    return module


def test_a_trace_in_a_folder_that_does_not_exist_is_refused_before_the_profile(profile, tmp_path, capsys):
    """--trace reslts/trace.json made the folder reslts/ without a word and wrote the trace there."""
    trace = tmp_path / "reslts" / "trace.json"
    assert profile.main([*PROFILE, "--trace", str(trace)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --trace {trace}: the folder {trace.parent} does not exist — check the path, or create the "
                   f"folder first (mkdir -p {trace.parent}); below results/ folders are made as needed"]
    assert profile.built == [] and not trace.parent.exists()


def test_a_trace_flag_naming_a_folder_is_refused(profile, tmp_path, capsys):
    """--trace out/ (a folder) moved the whole folder aside to out.before-<time>/ and wrote the trace as 'out'."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("mine")
    assert profile.main([*PROFILE, "--trace", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    said = f"error: --trace {tmp_path / 'out'} is a folder: give a file's name"
    assert len(err) == 1 and err[0].startswith(said), err
    assert (tmp_path / "out" / "mine.txt").read_text() == "mine" and profile.built == []


def test_below_results_the_folder_is_made_and_an_earlier_trace_is_kept_aside(profile, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert profile.main([*PROFILE, "--trace", "results/profile/trace.json"]) == 0
    trace = tmp_path / "results" / "profile" / "trace.json"
    first = trace.read_text()
    assert "traceEvents" in first
    assert profile.main([*PROFILE, "--trace", str(trace)]) == 0
    kept = list(trace.parent.glob("trace.json.before-*/trace.json"))
    assert [p.read_text() for p in kept] == [first] and "traceEvents" in trace.read_text()
    assert f"(an earlier {trace} was moved to {kept[0].parent}/)" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--json", "--fig"])
def test_the_fast_path_refuses_a_mistyped_output_folder_before_the_runs(flag, monkeypatch, tmp_path, capsys):
    bench = load_bench_script("bench_fast_path", monkeypatch)
    runs = []
    monkeypatch.setattr(bench, "run", lambda *a, **kw: runs.append(a))
    monkeypatch.setattr(bench, "build_demo_data", lambda *a, **kw: {})
    path = tmp_path / "typo" / "out.png"
    flags = ["--iters", "3", "--skip", "1", "--control-threads", "0", "--no-seed-control", "--fig",
             str(tmp_path / "fig.png"), flag, str(path)]
    assert bench.main(flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {flag} {path}: the folder {path.parent} does not exist"), err
    assert runs == [] and not path.parent.exists()
