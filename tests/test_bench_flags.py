"""The bench scripts refuse a value that makes no sense with one error: line naming the flag, before any work."""
import argparse
import subprocess

import pytest
import torch
from _bench_scripts import BENCH, load_bench_script


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_the_loader_bench_refuses_a_consume_time_that_is_not_positive(value, monkeypatch, capsys):
    """--consume-ms 0 ended in a ZeroDivisionError traceback after the whole run; -1 printed a negative target."""
    loader = load_bench_script("bench_loader", monkeypatch)
    with pytest.raises(SystemExit) as stop:
        loader.build_parser().parse_args(["--consume-ms", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: argument --consume-ms: must be a number > 0, got {value} "), err


@pytest.mark.parametrize("value", ["0", "-1"])
def test_the_profile_refuses_a_peak_that_is_not_positive(value, monkeypatch, capsys):
    """--peak-tflops 0 was taken as unset (the CPU's matmul rate was measured instead), -1 gave a negative share."""
    profile = load_bench_script("profile_train", monkeypatch)
    with pytest.raises(SystemExit) as stop:
        profile.build_parser().parse_args(["--peak-tflops", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: argument --peak-tflops: must be a number > 0, got {value} "), err


def test_the_fast_path_figure_by_default_leaves_the_repository_clean(monkeypatch):
    """--fig defaulted to figs/bench/fast_path_losses.png, the committed figure BENCHMARKS.md shows: any run,
    however short, replaced it and left `git status` dirty. The default now lies where git ignores it."""
    fast_path = load_bench_script("bench_fast_path", monkeypatch)
    fig = fast_path.build_parser().parse_args([]).fig
    repo = BENCH.parent
    ignored = subprocess.run(["git", "check-ignore", "-q", fig], cwd=repo)
    assert ignored.returncode == 0, f"{fig} is not ignored by git"


@pytest.mark.parametrize("script", ["bench_fast_path", "gpu_guarantees"])
@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_a_learning_rate_that_is_not_positive_is_refused_before_any_run(script, value, monkeypatch, capsys):
    """--lr -1 was refused by the first trainer run only, after the demo data was built; --lr 0 trained nothing and
    compared flat curves."""
    bench = load_bench_script(script, monkeypatch)
    with pytest.raises(SystemExit) as stop:
        bench.build_parser().parse_args(["--lr", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: argument --lr: must be a number > 0 (0 would train nothing to compare), got "
                             f"{value} "), err


@pytest.mark.parametrize("script", ["bench_fast_path", "gpu_guarantees"])
def test_a_patch_the_trainer_refuses_is_refused_before_any_run(script, monkeypatch, capsys):
    """--patch 20 passed the bench's check (>= 16) and failed in the first trainer run ("a multiple of 8")."""
    bench = load_bench_script(script, monkeypatch)
    with pytest.raises(SystemExit) as stop:
        bench.build_parser().parse_args(["--patch", "20"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: argument --patch: must be a multiple of 8, got 20"), err


def test_the_loader_bench_refuses_a_patch_larger_than_its_images_before_writing_them(monkeypatch, capsys):
    """--patch 336 wrote the whole synthetic layout, then failed naming the trainer's --patch-size."""
    loader = load_bench_script("bench_loader", monkeypatch)
    written = []
    monkeypatch.setattr(loader, "build_layout", lambda *a: written.append(a))
    assert loader.main(["--patch", "336", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert written == [] and len(err) == 1, err
    assert err[0].startswith("error: --patch 336 is larger than the smallest synthetic image (320 pixels"), err
    assert loader.max_patch(True) == loader.max_patch(False) == 320  # 481x321 (BSD400's size) -> 480x320


SCRIPTS = ["bench_inference", "bench_blocks", "bench_fast_path", "bench_train", "bench_loader", "profile_train",
           "memory_coefficients", "gpu_guarantees", "study"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_has_a_help_line(script, monkeypatch, capsys):
    """bench_inference's --repeats and --rounds, bench_blocks' --size and --repeats (and a dozen more) showed in
    --help with no word of what they do."""
    bench = load_bench_script(script, monkeypatch)
    parser = bench.build_parser() if hasattr(bench, "build_parser") else bench.get_args_parser()
    bare = [a.option_strings[0] for a in parser._actions
            if a.option_strings and a.help != argparse.SUPPRESS and not (a.help or "").strip()]
    assert bare == []
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--help"])
    assert stop.value.code == 0 and "--help" in capsys.readouterr().out


@pytest.mark.parametrize("script, flag, default", [("bench_inference", "--rounds", "2"),
                                                   ("bench_blocks", "--repeats", "5"), ("bench_train", "--warmup", "1"),
                                                   ("memory_coefficients", "--kinds", "['restore', 'train']")])
def test_the_help_says_each_default(script, flag, default, monkeypatch):
    """These scripts' help left the defaults out (argparse's plain formatter), the other bench scripts' gave them."""
    bench = load_bench_script(script, monkeypatch)
    text = " ".join(bench.build_parser().format_help().split())
    after = text[text.index(f" {flag} "):]
    assert f"(default: {default})" in after[:400], after[:400]


@pytest.mark.parametrize("value", ["", ","])
def test_the_training_bench_refuses_an_empty_variant_list(value, monkeypatch, capsys):
    """--variants '' (an unset shell variable) printed the table's head and no row, status 0."""
    bench = load_bench_script("bench_train", monkeypatch)
    with pytest.raises(SystemExit) as stop:
        bench.build_parser().parse_args(["--variants", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: argument --variants: name at least one variant, from straightforward, "
                             "straightforward_malloc, engine, engine_nchw, compiled"), err


def test_the_inference_bench_refuses_cpu_paths_on_the_gpu(monkeypatch, capsys):
    """--device cuda --paths fast_bf16 measured the fixed GPU rows, every one of them, and ignored --paths."""
    bench = load_bench_script("bench_inference", monkeypatch)
    monkeypatch.setattr(bench, "gpu_rows", lambda *a, **kw: pytest.fail("the GPU rows ran"))
    monkeypatch.setattr(bench, "pick_device", lambda *a, **kw: None)  # as if a GPU were there
    assert bench.main(["--device", "cuda", "--paths", "fast_bf16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --paths chooses the CPU paths; --device cuda measures its own rows (plain, restore() fp32 "
                   "and bf16, bf16 compiled with each --compile MODE, and bf16 with --cudagraphs): drop --paths"]


@pytest.mark.parametrize("script", ["bench_train", "profile_train"])
@pytest.mark.parametrize("flags, line", [
    (["--patch", "20"], "error: argument --patch: must be a multiple of 8, got 20"),
    (["--batch", "0"], "error: argument --batch: must be >= 1, got 0"),
    (["--K", "0"], "error: argument --K: must be >= 1, got 0"),
    (["--K", "7"], "error: argument --K: must be at most 6, one domain per degradation family (denoise, derain, "
                   "dehaze, deblur, lowlight, single), got 7"),
    (["--preset", "huge"], "error: argument --preset: invalid choice: 'huge'")])
def test_the_iteration_benches_refuse_a_case_they_cannot_build_before_any_work(script, flags, line, monkeypatch,
                                                                               capsys):
    """bench_train.py and profile_train.py build one case (bench_train.build_case) from one group of flags
    (bench_train.add_iteration_shape_flags): both refuse its bad values alike, in one line."""
    bench = load_bench_script(script, monkeypatch)
    with pytest.raises(SystemExit) as stop:
        bench.build_parser().parse_args(flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(line), err


@pytest.mark.parametrize("scripts, flags", [
    (("bench_train", "profile_train"), ("--preset", "--batch", "--patch", "--K")),
    (("bench_fast_path", "gpu_guarantees"), ("--batch", "--patch", "--lr"))])
def test_a_flag_two_bench_scripts_share_reads_alike_in_both(scripts, flags, monkeypatch):
    """The shared groups have one home each (bench_train.add_iteration_shape_flags,
    bench_fast_path.add_trainer_run_flags): the same default, check and help in both scripts."""
    def described(script):
        actions = {a.option_strings[0]: a for a in load_bench_script(script, monkeypatch).build_parser()._actions
                   if a.option_strings}
        return {f: (actions[f].default, actions[f].choices, actions[f].help) for f in flags}
    first, second = (described(s) for s in scripts)
    assert first == second


def test_the_iteration_case_builds_one_domain_per_family(monkeypatch):
    """--K 7 --batch 7 ended in an IndexError traceback in build_case (six degradation ids for seven domains); every
    --K it accepts builds, each domain with its own family's degradation id."""
    bench = load_bench_script("bench_train", monkeypatch)
    *_, de_ids, domains, lambdas = bench.build_case("tiny", 6, 16, 6, torch.device("cpu"))
    assert domains.tolist() == [0, 1, 2, 3, 4, 5] and de_ids.tolist() == [0, 3, 4, 5, 6, 7]
    assert lambdas.shape == (6,)


@pytest.mark.parametrize("path, precision, mode", [("fast_fp32", "fp32", "off"), ("fast_bf16", "bf16", "off"),
                                                   ("fast_fp32_compiled", "fp32", "default"),
                                                   ("fast_bf16_compiled", "bf16", "default")])
def test_each_inference_path_runs_restore_with_its_precision_and_compile_mode(path, precision, mode, monkeypatch):
    """The opt-in fast_bf16_compiled path (issue 15's bf16 target through --compile) must time restore() in bf16,
    compiled: a path name that fell through to fp32 or eager would put another path's time in its row."""
    bench = load_bench_script("bench_inference", monkeypatch)
    calls = []
    monkeypatch.setattr(bench, "restore", lambda model, x, prec, compile_mode: calls.append((prec, compile_mode)))
    bench._forward_fn(path, "tiny", 8)()
    assert calls == [(precision, mode)]
