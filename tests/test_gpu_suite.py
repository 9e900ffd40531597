"""bench/gpu_suite.sh, checked on the CPU before a lent GPU runs it: every step's command line is accepted
by its script's parser (a misspelt flag, variant or compile mode would cost a step of the few minutes a
GPU is lent), each step fits one device call, and a misspelt step name is refused before anything runs."""
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "bench" / "gpu_suite.sh"
CALL_BUDGET = 570  # seconds: one device call runs at most 600 s; the header and start-up need the rest


def suite_env(tmp_path: Path, **env: str) -> dict[str, str]:
    """The environment of a suite run in a test, with ``env`` on top: this process's, except that inductor's cache
    and the carried parts are the test's own. Once a test in this pytest process has compiled, inductor has put its
    default cache folder (``/tmp/torchinductor_<user>``) into ``os.environ``; the suite then packed that whole cache
    with xz at its end, up to its 30 s cap, twice in one test (50 s in a full run against 0.6 s alone). A
    checkout's ``.gpu_cache/`` holds a GPU session's real parts, which a test must not unpack either."""
    return {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor_cache"),
            "CACHE_IN": str(tmp_path / "no_carried_parts"), **env}


def bench_module(name: str):
    sys.path.insert(0, str(REPO / "bench"))  # the scripts import one another by name
    try:
        spec = importlib.util.spec_from_file_location(f"suite_{name}", REPO / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "bench"))


def suite_steps() -> dict[str, tuple[int, str, list[str]]]:
    """Each step's name -> ``(cap seconds, script name, its arguments)``, from run_step's case branches."""
    text = SUITE.read_text().replace("\\\n", " ")
    steps, name = {}, None
    for line in text.splitlines():
        line = line.strip()
        if branch := re.fullmatch(r"([a-z0-9-]+)\)", line):
            name = branch.group(1)
        elif line.startswith("step ") and name:
            words = shlex.split(line.removesuffix(";;").replace('"$RESULTS', '"/tmp/gpu_suite_results'))
            cap, cmd = int(words[1]), words[3:]
            assert cmd[0] == "$PY" and re.fullmatch(r"bench/\w+\.py", cmd[1]), line
            steps[name] = (cap, Path(cmd[1]).stem, cmd[2:])
    return steps


def test_every_step_parses_with_its_scripts_parser_and_fits_one_device_call():
    steps = suite_steps()
    all_steps = re.search(r'^ALL_STEPS="([^"]+)"', SUITE.read_text(), re.M).group(1).split()
    assert list(steps) == all_steps == ["train-bf16", "restore", "profile", "loader", "train-fp32", "curves",
                                        "guarantees"]
    assert [script for _, script, _ in steps.values()] == ["bench_train", "bench_inference", "profile_train",
                                                          "bench_loader", "bench_train", "bench_fast_path",
                                                          "gpu_guarantees"]
    for name, (cap, script, argv) in steps.items():
        assert cap <= CALL_BUDGET, name
        args = bench_module(script).build_parser().parse_args(argv)
        if hasattr(args, "device") and script != "bench_loader":
            assert args.device == "cuda", name  # every row is a GPU row
    parse = bench_module("bench_train").build_parser().parse_args
    bf16, fp32 = parse(steps["train-bf16"][2]), parse(steps["train-fp32"][2])
    assert (bf16.precision, bf16.variants.split(",")) == ("bf16", ["straightforward", "engine", "compiled"])
    assert (fp32.precision, fp32.variants.split(",")) == ("fp32", ["engine", "compiled"])
    for name, args in (("train-bf16", bf16), ("train-fp32", fp32)):
        # compiling the paper network's iteration took about 260 s on an H200: the compiled variant gets that
        # and a margin, and a compile that hangs still leaves the step time to print its table
        assert args.compile_mode == "reduce-overhead" and 300 <= args.variant_timeout < steps[name][0]
        eager = len(args.variants.split(",")) - 1  # each eager variant took 25-50 s on the H200 (process, cuDNN)
        assert steps[name][0] - args.variant_timeout >= 45 * eager, name
        assert args.tiny_iters == 0  # the tiny preset's row would compile nothing new and cost a process
    restore = bench_module("bench_inference").build_parser().parse_args(steps["restore"][2])
    # target 3's candidates: inductor's compiled forward, then CUDA graphs of the eager kernels (a trace)
    assert restore.cudagraphs and restore.compile == ["reduce-overhead"] and restore.size == 512
    fast = bench_module("bench_fast_path").build_parser().parse_args(steps["curves"][2])
    assert fast.control_threads == 0 and not fast.seed_control  # thread count does not reorder GPU sums
    checks = bench_module("gpu_guarantees").build_parser().parse_args(steps["guarantees"][2])
    assert (checks.mode, checks.compile_backend) == ("reduce-overhead", "inductor")  # the fast path's real kernels
    assert checks.checks == list(bench_module("gpu_guarantees").CHECKS)
    # the same trainer flags as the curves' runs, so that their compiled graphs serve the guarantees' from the cache
    assert (checks.preset, checks.batch, checks.patch) == (fast.preset, fast.batch, fast.patch)


def test_only_the_named_steps_run_and_a_misspelt_one_runs_nothing(tmp_path):
    """Every step takes about 20 minutes, two device calls: a session runs the steps it still needs by name."""
    out = tmp_path / "out"
    env = suite_env(tmp_path, OUT=str(out), PY="echo", COMMIT="abc1234")
    done = subprocess.run(["bash", str(SUITE), "loader", "profile"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    log = (out / "suite.md").read_text()
    assert "(compile cache: none in " in log and "every graph compiles" in log  # this test's empty cache alone
    assert "commit abc1234: loader profile" in log
    assert log.index("bench/bench_loader.py --batches 200") < log.index("bench/profile_train.py")
    assert "bench_train.py" not in log and "bench_inference.py" not in log and "bench_fast_path" not in log
    (out / "suite.md").unlink()
    # a step that fails: the others still run, and the suite's exit status says so (a device call whose every
    # step failed looked like a success)
    done = subprocess.run(["bash", str(SUITE), "loader", "profile"], env={**env, "PY": "false"},
                          capture_output=True, text=True, timeout=60)
    log = (out / "suite.md").read_text()
    assert done.returncode == 1 and log.count("(exit status 1;") == 2, log
    assert log.rstrip().endswith("; failed: loader profile)"), log
    (out / "suite.md").unlink()
    done = subprocess.run(["bash", str(SUITE), "loader", "train-bf17"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and not (out / "suite.md").exists()
    assert done.stderr == ("error: unknown step 'train-bf17'; choose from: train-bf16 restore profile loader "
                           "train-fp32 curves guarantees (none: all of them)\n")


def test_a_step_past_its_cap_is_killed_with_everything_it_started(tmp_path):
    """timeout's default SIGTERM reached the script but not a trainer it had started, which caught it and
    trained on into the next step; the suite's steps are killed with their whole process group."""
    text = SUITE.read_text()
    assert 'timeout -s KILL "$cap"' in text
    script = tmp_path / "step.sh"
    marker = f"suite-test-{os.getpid()}-{time.monotonic_ns()}"  # names this run's child in the process list
    child = f"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)  # {marker}"
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)"
    script.write_text(text[text.index("step() {"):text.index("run_step() {")] +
                      f'step 1 "a row" python3 -c "{parent}" {marker}\n')
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert "(exit status 137; 137 = killed at its 1 s cap)" in done.stdout
    deadline = time.monotonic() + 10  # the kernel reaps killed children soon, not at once
    while (left := _running_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes left running: {left}"


def test_a_step_past_its_cap_also_kills_what_it_started_in_a_session_of_its_own(tmp_path):
    """The bench scripts start each variant, trainer run or path in a session of its own (utils.processes.
    run_in_session), out of the step's process group: a step killed at its cap left that process running, a
    compiled variant compiling on every core and the GPU into the next step, and, started with setsid, past the
    device call's end into the next call. Every process below the step is killed, whatever its session."""
    text = SUITE.read_text()
    script = tmp_path / "step.sh"
    marker = f"suite-session-{os.getpid()}-{time.monotonic_ns()}"
    child = f"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)  # {marker}"
    grandchild = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)"
    parent = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {grandchild!r}], "
              f"start_new_session=True); time.sleep(60)")
    script.write_text(text[text.index("step() {"):text.index("run_step() {")] +
                      f'step 2 "a row" python3 -c {shlex.quote(parent)} {marker}\n')
    tic = time.monotonic()
    with open(tmp_path / "log", "w") as log:  # a file: a process left running holds a pipe open until it ends
        subprocess.run(["bash", str(script)], stdout=log, stderr=subprocess.STDOUT, timeout=30)
    said = (tmp_path / "log").read_text()
    assert "(exit status 137; 137 = killed at its 2 s cap)" in said and time.monotonic() - tic < 10, said
    deadline = time.monotonic() + 10
    while (left := _running_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:  # the test's own leftovers, before it fails
        os.kill(pid, 9)
    assert not left, f"processes left running: {left}"


def _running_with(marker: str) -> list[int]:
    """Pids of live processes whose command line holds ``marker`` (read from /proc: no pgrep needed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "cmdline").read_bytes() and \
                    (entry / "stat").read_text().split(")")[-1].split()[0] != "Z":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_failed_variant_keeps_the_rows_measured_before_and_after_it(monkeypatch, capsys):
    """One failing variant (a compiled one, never run on that GPU before) used to raise and lose the table."""
    bench = bench_module("bench_train")
    row = {"seconds": 0.5, "all": [0.5], "first_seconds": 1.0, "peak_mib": 10.0, "threads": 1,
           "first_losses": {"map": 2.0, "potentials": 0.1, "congruence": 0.01}}

    def fake_run(cmd, **kw):
        variant = cmd[cmd.index("--_worker") + 1]
        if variant == "compiled":
            raise subprocess.TimeoutExpired(cmd, kw["timeout"])
        if variant == "engine_nchw":
            return subprocess.CompletedProcess(cmd, 1, "", "Traceback ...\nRuntimeError: CUDA error: boom\n")
        return subprocess.CompletedProcess(cmd, 0, json.dumps({**row, "variant": variant,
                                                               "precision": cmd[cmd.index("--precision") + 1]}), "")

    monkeypatch.setattr(bench, "run_in_session", fake_run)
    bench.main(["--variants", "straightforward,compiled,engine_nchw,engine", "--tiny-iters", "0",
                "--variant-timeout", "7"])
    out = capsys.readouterr().out
    assert "| straightforward | fp32 | 0.500 | 1.00x |" in out and "| engine | fp32 | 0.500 | 1.00x |" in out
    assert "| compiled (default) | fp32 | failed: ran past 7 s |" in out
    assert "| engine_nchw | fp32 | failed: exit 1: RuntimeError: CUDA error: boom |" in out


def test_a_misspelt_variant_or_mode_is_refused_not_run_as_another(capsys):
    parser = bench_module("bench_train").build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--variants", "engine,compild"])
    assert "unknown variant(s) compild; choose from straightforward" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--compile-mode", "reduce_overhead"])
    for name, argv in (("bench_fast_path", ["--mode", "fast"]), ("bench_inference", ["--compile", "reduce"]),
                       ("profile_train", ["--compile", "on"])):
        with pytest.raises(SystemExit):
            bench_module(name).build_parser().parse_args(argv)


def test_a_failed_inference_path_keeps_the_other_rows(monkeypatch, capsys):
    """An exception in the compiled path (never run on that GPU before) used to lose the eager rows too."""
    import torch
    bench = bench_module("bench_inference")
    for name, stub in (("synchronize", lambda *a: None), ("reset_peak_memory_stats", lambda *a: None),
                       ("max_memory_allocated", lambda *a: 2**20), ("get_device_name", lambda *a: "stub GPU")):
        monkeypatch.setattr(torch.cuda, name, stub)
    real = bench.restore

    def restore(model, x, precision="fp32", compile_mode="off", **kw):
        if compile_mode != "off":
            raise RuntimeError("Triton compilation failed\nmore lines")
        return real(model, x, precision, **kw)

    monkeypatch.setattr(bench, "restore", restore)
    bench.gpu_rows("tiny", 32, 1, ("reduce-overhead",), device="cpu")
    out = capsys.readouterr().out
    for row in ("| plain_fp32 |", "| restore_fp32 |", "| restore_bf16 |"):
        assert row in out
    assert "| restore_bf16_compiled_reduce-overhead | failed: RuntimeError: Triton compilation failed |" in out
    assert out.index("| plain_fp32 |") < out.index("| restore_fp32 |") < out.index("| restore_bf16 |")


def test_the_cudagraphs_row_traces_a_copy_of_the_network_and_restores_what_eager_bf16_does(monkeypatch, capsys):
    """The GPU rows' --cudagraphs path (torch.compile's cudagraphs backend: the forward's own kernels replayed as
    CUDA graphs), run here on the CPU, where that backend traces the forward and runs it eagerly: its row comes
    after the compiled ones (its trace takes none of the time they were given), its forward is traced once, on a
    copy (the network the other rows time stays uncompiled), and its output is eager bf16's to the bit."""
    import torch
    bench = bench_module("bench_inference")
    for name, stub in (("synchronize", lambda *a: None), ("reset_peak_memory_stats", lambda *a: None),
                       ("max_memory_allocated", lambda *a: 2**20), ("get_device_name", lambda *a: "stub GPU")):
        monkeypatch.setattr(torch.cuda, name, stub)
    calls, outputs, real = [], {}, bench.restore

    def restore(model, x, precision="fp32", compile_mode="off", **kw):
        calls.append((id(model), precision, compile_mode, model.__dict__.get("_compiled_forwards", {}).copy()))
        if compile_mode not in ("off", "default"):
            raise RuntimeError("Triton compilation failed")
        outputs[precision, compile_mode] = out = real(model, x, precision, compile_mode=compile_mode, **kw)
        return out

    monkeypatch.setattr(bench, "restore", restore)
    bench.gpu_rows("tiny", 32, 1, ("reduce-overhead",), device="cpu", cudagraphs=True)
    out = capsys.readouterr().out
    rows = [line.split(" | ")[0].lstrip("| ") for line in out.splitlines() if line.startswith("| restore")]
    assert rows == ["restore_fp32", "restore_bf16", "restore_bf16_compiled_reduce-overhead", "restore_bf16_cudagraphs"]
    assert re.search(r"^\| restore_bf16_cudagraphs \| [\d.]+ \| [\d.]+x \| [\d.]+ \| 1 \| [\d.]+ \|$", out, re.M), out
    graphed = [c for c in calls if c[2] == "default"]
    eager = {c[0] for c in calls if c[2] == "off"}
    assert len(graphed) == 3 + 1 and len({c[0] for c in graphed}) == 1 and not eager & {graphed[0][0]}
    assert {c[3]["default"].backend for c in graphed} == {"cudagraphs"}
    assert graphed[-1][3]["default"].compiles == 1  # traced at the first call only: the timed calls replay
    assert torch.equal(outputs["bf16", "default"], outputs["bf16", "off"])  # the copy's weights, the same image


def test_a_bench_failure_a_bad_flag_or_ctrl_c_is_one_error_line(monkeypatch, capsys):
    """The benchmark scripts ended a failure the user can fix (--device cuda without a GPU), a bad flag and Ctrl-C
    with a traceback or argparse's usage block; they end as the other scripts do (utils.errors.run_main): one
    error: line, status 2 for flags, 130 for Ctrl-C."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_module("bench_loader").main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--device" in err, err
    for name in ("bench_blocks", "bench_inference", "bench_train", "bench_fast_path", "profile_train",
                 "bench_loader", "memory_coefficients", "gpu_guarantees"):
        with pytest.raises(SystemExit) as stop:
            bench_module(name).build_parser().parse_args(["--no-such-flag"])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, (name, err)
    bench = bench_module("bench_train")

    def interrupted(cmd, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run_in_session", interrupted)
    assert bench.main(["--variants", "engine", "--tiny-iters", "0"]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "error: interrupted"


def test_device_cuda_without_a_gpu_is_one_error_line(monkeypatch, capsys, tmp_path):
    """--device cuda on a machine without a GPU: bench_inference and profile_train ended in CUDA's traceback ("Found
    no NVIDIA driver"), bench_train with a line without error: and status 1, bench_fast_path after building the
    demo data; now each says pick_device's line first, status 2."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "file").write_text("not a folder")  # bench_fast_path's --data: refused at once, when it gets there
    for name, argv in (("bench_inference", ["--preset", "tiny", "--size", "32"]),
                       ("profile_train", ["--preset", "tiny", "--patch", "16", "--iters", "1", "--warmup", "0"]),
                       ("bench_train", ["--preset", "tiny", "--tiny-iters", "0"]),
                       ("bench_fast_path", ["--data", str(tmp_path / "file")]),
                       ("gpu_guarantees", ["--data", str(tmp_path / "file")])):
        assert bench_module(name).main([*argv, "--device", "cuda"]) == 2, name
        err = capsys.readouterr().err
        assert err == ("error: --device cuda asks for a CUDA GPU, but none is visible "  # no --gpus in bench
                       "(check CUDA_VISIBLE_DEVICES, or use --device cpu)\n"), (name, err)


def test_sizes_counts_and_presets_are_checked_by_the_parsers(capsys, tmp_path):
    """--repeats 0 ended in a child's ValueError under a CalledProcessError traceback, --iters 0 in an empty median,
    --preset paperr in build_model's ValueError, --precision fp33 in every variant's failure; now the parser says
    which flag, status 2. bench_fast_path's default --skip 10 with --iters 5 ended in an empty median after all
    four training runs; now it is refused before them."""
    for name, argv in (("bench_inference", ["--repeats", "0"]), ("bench_inference", ["--preset", "paperr"]),
                       ("bench_inference", ["--size", "12"]), ("bench_train", ["--iters", "0"]),
                       ("bench_train", ["--precision", "fp33"]), ("profile_train", ["--batch", "0"]),
                       ("profile_train", ["--preset", "small"]), ("bench_fast_path", ["--skip", "-1"]),
                       ("profile_train", ["--patch", "20"]), ("bench_train", ["--patch", "20"]),
                       ("bench_loader", ["--files", "0"]), ("bench_blocks", ["--size", "0"])):
        with pytest.raises(SystemExit) as stop:
            bench_module(name).build_parser().parse_args(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.startswith(f"error: argument {argv[0]}: ") and err.count("\n") == 1, \
            (name, err)
    (tmp_path / "file").write_text("not a folder")  # --data: refused at once, were the runs started
    assert bench_module("bench_fast_path").main(["--iters", "5", "--data", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err == ("error: --skip 10 leaves none of --iters 5 to time: pass a smaller --skip "
                                       "(default 10) or more --iters\n")


def test_a_failed_measurement_process_is_one_error_line(monkeypatch, capsys):
    """A path's process that failed ended bench_inference in a CalledProcessError traceback that hid what the
    process said; now its error (a bug's traceback shown first) is the parent's one error: line."""
    bench = bench_module("bench_inference")
    monkeypatch.setattr(bench, "run_in_session", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 1, "", "Traceback (most recent call last):\n  File ...\nRuntimeError: boom\n"))
    assert bench.main(["--preset", "tiny", "--size", "32", "--rounds", "1", "--paths", "plain"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1] == "error: the plain path failed: RuntimeError: boom (exit status 1)"


def test_the_inference_table_names_its_reference_and_compile_on_the_cpu_is_refused(monkeypatch, capsys):
    """--paths fast_fp32 fast_bf16 headed its speed-ups "vs plain" though plain never ran (they were against
    fast_fp32); --compile without --device cuda was ignored without a word."""
    bench = bench_module("bench_inference")
    row = {"seconds": 0.5, "first_seconds": 1.0, "peak_mib": 10.0, "checksum": 0.0}
    monkeypatch.setattr(bench, "run_in_session", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 0, json.dumps({**row, "path": cmd[cmd.index("--child") + 1]}), ""))
    monkeypatch.setattr(bench, "_forward_flops", lambda preset, size: 10**9)
    monkeypatch.setattr(bench, "_matmul_gflops", lambda dtype: 100.0)
    assert bench.main(["--preset", "tiny", "--size", "32", "--rounds", "1", "--paths", "fast_fp32", "fast_bf16"]) == 0
    out = capsys.readouterr().out
    assert "| speed-up vs fast_fp32 |" in out and "vs plain" not in out
    assert bench.main(["--compile", "reduce-overhead"]) == 2
    assert capsys.readouterr().err.startswith("error: --compile applies to --device cuda")
    assert bench.main(["--cudagraphs"]) == 2
    assert capsys.readouterr().err == ("error: --cudagraphs applies to --device cuda (the GPU rows): CUDA graphs need "
                                       "a GPU\n")


def test_an_earlier_suite_log_is_kept_not_replaced(tmp_path):
    """A second `bash bench/gpu_suite.sh` replaced results/gpu_suite/suite.md (and its figure), the earlier run's
    numbers, without a word: they are moved to suite.md.before-<time>-<pid>/ first."""
    text = SUITE.read_text()
    script = tmp_path / "bench" / "suite_head.sh"
    script.parent.mkdir()
    script.write_text(text[:text.index("TEE=$!")] + 'echo "the new run"\nexec >&- 2>&-\nwait $! 2>/dev/null || true\n')
    out = tmp_path / "out"
    out.mkdir()
    (out / "suite.md").write_text("the earlier run\n")
    (out / "fast_path_losses_gpu.png").write_bytes(b"the earlier figure")
    subprocess.run(["bash", str(script)], env=suite_env(tmp_path, OUT=str(out)), capture_output=True, timeout=30,
                   check=True)
    kept = list(out.glob("suite.md.before-*"))
    assert len(kept) == 1 and (kept[0] / "suite.md").read_text() == "the earlier run\n"
    assert (kept[0] / "fast_path_losses_gpu.png").read_bytes() == b"the earlier figure"
    assert "the new run" in (out / "suite.md").read_text()


def test_the_compile_cache_travels_to_the_next_machine_in_parts_a_device_call_brings_back(tmp_path):
    """A device machine starts with empty caches, and compiling took most of the suite's 25 minutes: the suite
    packs inductor's cache into parts of at most CACHE_PART_BYTES under $OUT and unpacks carried parts first.
    A cache too large to bring back leaves no part; damaged parts are said and compiled around."""
    cache = tmp_path / "cache"
    payload = os.urandom(50_000)  # incompressible: three parts of 20,000 bytes
    (cache / "fxgraph" / "ab").mkdir(parents=True)
    (cache / "fxgraph" / "ab" / "entry").write_bytes(payload)
    (cache / "locks").mkdir()
    (cache / "locks" / "held.lock").write_text("")

    def suite(out: Path, cache_dir: Path, **env: str) -> str:
        done = subprocess.run(["bash", str(SUITE), "loader"], capture_output=True, text=True, timeout=60,
                              env=suite_env(tmp_path, **{"OUT": str(out), "PY": "echo", "COMMIT": "abc1234",
                                                         "TORCHINDUCTOR_CACHE_DIR": str(cache_dir),
                                                         "CACHE_IN": str(tmp_path / "none"),
                                                         "CACHE_PART_BYTES": "20000", **env}))
        assert done.returncode == 0, done.stdout + done.stderr
        return (out / "suite.md").read_text()

    log = suite(tmp_path / "out", cache)
    parts = sorted((tmp_path / "out").glob("compile_cache.tar.xz.part-*"))
    assert [p.name[-2:] for p in parts] == ["00", "01", "02"]
    assert all(p.stat().st_size <= 20_000 for p in parts)
    assert "in 3 part(s)" in log and f"none in {tmp_path / 'none'}/" in log

    log = suite(tmp_path / "out2", tmp_path / "cache2", CACHE_IN=str(tmp_path / "out"))
    assert (tmp_path / "cache2" / "fxgraph" / "ab" / "entry").read_bytes() == payload
    assert not (tmp_path / "cache2" / "locks").exists()  # another machine's lock files: left behind
    assert "3 part(s) from" in log and log.index("unpacked") < log.index("### data loader")

    log = suite(tmp_path / "out3", cache, CACHE_MAX_PARTS="2")
    assert not list((tmp_path / "out3").glob("compile_cache*")) and "too large to bring back, not kept" in log
    slow = tmp_path / "slow_bin"  # an xz that hangs: the pack is killed at its cap and keeps no part
    slow.mkdir()
    (slow / "xz").write_text("#!/bin/sh\nsleep 30\n")
    (slow / "xz").chmod(0o755)
    tic = time.monotonic()
    log = suite(tmp_path / "out5", cache, CACHE_PACK_CAP="1", PATH=f"{slow}:{os.environ['PATH']}")
    assert not list((tmp_path / "out5").glob("compile_cache*")) and "ran past its 1 s cap; nothing kept" in log
    assert time.monotonic() - tic < 20

    parts[1].write_bytes(parts[1].read_bytes()[:5000])  # a part cut short on its way
    log = suite(tmp_path / "out4", tmp_path / "cache4", CACHE_IN=str(tmp_path / "out"), CACHE_OUT="")
    assert "did not unpack" in log and "### data loader" in log
    assert not [p for p in tmp_path.glob("cache4*/**/*") if p.is_file()]  # no half-unpacked entry left behind
    assert not list((tmp_path / "out4").glob("compile_cache*"))  # CACHE_OUT= (empty): nothing packed


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_the_help_prints_the_suites_description_and_runs_nothing(flag, tmp_path):
    """`bash bench/gpu_suite.sh --help` said "error: unknown step '--help'"; every bench script has a --help."""
    env = suite_env(tmp_path / "unused", OUT=str(tmp_path), PY="false")
    done = subprocess.run(["bash", str(SUITE), "loader", flag], env=env, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith("Every GPU row of BENCHMARKS.md, step by step")
    assert "train-bf16   the straightforward loop" in done.stdout and "set -uo" not in done.stdout
    assert list(tmp_path.iterdir()) == []  # no log, no step


def test_a_warm_machines_cache_is_said_when_no_parts_were_carried(tmp_path):
    """The plan's second call runs on the machine still warm from the first, whose inductor cache is still in
    TORCHINDUCTOR_CACHE_DIR: the log said "none in .gpu_cache/; every graph compiles" there, and a compiled row's
    short first iteration then read as if the cache had failed. It names the files already held instead."""
    cache = tmp_path / "cache"
    (cache / "fxgraph" / "ab").mkdir(parents=True)
    (cache / "fxgraph" / "ab" / "entry").write_bytes(b"graph")
    (cache / "locks").mkdir()
    (cache / "locks" / "held.lock").write_text("")
    env = suite_env(tmp_path, PY="echo", COMMIT="abc1234", CACHE_IN=str(tmp_path / "none"), CACHE_OUT="")
    for cache_dir, said in ((cache, f"but {cache} already holds 1 files from an earlier run on this machine"),
                            (tmp_path / "empty", "every graph compiles")):
        out = tmp_path / f"out_{cache_dir.name}"
        done = subprocess.run(["bash", str(SUITE), "loader"], capture_output=True, text=True, timeout=60,
                              env={**env, "OUT": str(out), "TORCHINDUCTOR_CACHE_DIR": str(cache_dir)})
        assert done.returncode == 0, done.stdout + done.stderr
        log = (out / "suite.md").read_text()
        assert said in log and log.index(said) < log.index("### data loader"), log
    assert "every graph compiles" not in (tmp_path / "out_cache" / "suite.md").read_text()


CALL_LIMIT = 600  # seconds: the device tool's timeout_s at most
CALL_OVERHEAD = 40  # seconds a call needs beside its steps' caps: the header, the cache's unpacking and packing


def plan_calls() -> list[tuple[list[str], int, int | None]]:
    """BENCHMARKS.md's "What the next lent GPU runs": each call as ``(steps, timeout_s, the caps it states)``,
    the steps being those named in backticks since the call before (a call's text ends at its `timeout_s: N`)."""
    text = (REPO / "BENCHMARKS.md").read_text()
    plan = text[text.index("**What the next lent GPU runs.**"):text.index("## Memory per pixel")]
    all_steps = re.search(r'^ALL_STEPS="([^"]+)"', SUITE.read_text(), re.M).group(1).split()
    calls, start = [], 0
    for match in re.finditer(r"`timeout_s: (\d+)`", plan):
        segment = plan[start:match.start()] + plan[match.end():match.end() + 40]  # "(cap 240 s)" follows it
        named = [w.strip('"') for span in re.findall(r"`([^`]+)`", plan[start:match.start()]) for w in span.split()]
        stated = re.findall(r"caps?\s+(?:[\d\s+]+=\s+)?(\d+) s", segment)
        calls.append(([w for w in named if w in all_steps], int(match.group(1)), int(stated[-1]) if stated else None))
        start = match.end()
    return calls


def test_the_plan_for_the_next_gpu_names_each_call_with_a_timeout_its_steps_fit():
    """The plan named a second call's step in prose (`curves`, cap 240 s) with no command and no timeout_s, and
    the session after's two steps together (caps 450 + 480 s) as one, past a call's 600 s: each call it names
    now has its steps and a timeout_s that holds their caps, the header and the cache, within 600 s."""
    caps = {name: cap for name, (cap, _, _) in suite_steps().items()}
    pack_cap = int(re.search(r"CACHE_PACK_CAP=\$\{CACHE_PACK_CAP:-(\d+)\}", SUITE.read_text()).group(1))
    assert pack_cap + 10 <= CALL_OVERHEAD
    calls = plan_calls()
    assert [steps for steps, _, _ in calls] == [["train-fp32", "restore"], ["curves"], ["guarantees"], ["train-bf16"]]
    for steps, timeout, stated in calls:
        total = sum(caps[s] for s in steps)
        assert stated == total, (steps, stated, total)  # the caps the plan says are the suite's
        assert total + CALL_OVERHEAD <= timeout <= CALL_LIMIT, (steps, timeout)
    text = (REPO / "BENCHMARKS.md").read_text()
    plan = text[text.index("**What the next lent GPU runs.**"):text.index("## Memory per pixel")]
    for command in re.findall(r'command: "([^"]+)"', plan):
        env, bash, script, *steps = shlex.split(command)
        assert (env, bash, script) == ("COMMIT=<hash>", "bash", "bench/gpu_suite.sh") and steps, command
    # the parts of one pack only: an older part beside them is concatenated into the archive, which then fails
    copies = [c for c in re.findall(r"`([^`]+)`", plan) if "compile_cache.tar.xz.part-" in c and "cp " in c]
    assert copies and all(c.startswith("rm -rf .gpu_cache && ") for c in copies), copies


def test_the_largest_carried_cache_and_the_repository_fit_a_device_calls_working_tree():
    """A call carries at most 64 MiB of working tree: the repository's tracked files and `.gpu_cache`'s parts (at
    most CACHE_MAX_PARTS of CACHE_PART_BYTES). Past it the call is refused, and the cache a session brought back
    cannot be used; the repository growing is what would do it."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    tracked = sum((REPO / name).stat().st_size for name in listed.decode().split("\0")
                  if name and (REPO / name).is_file() and not (REPO / name).is_symlink())
    text = SUITE.read_text()
    part = int(re.search(r"CACHE_PART_BYTES=\$\{CACHE_PART_BYTES:-(\d+)\}", text).group(1))
    parts = int(re.search(r"CACHE_MAX_PARTS=\$\{CACHE_MAX_PARTS:-(\d+)\}", text).group(1))
    assert part <= 16 * 2**20  # one file a call brings back
    assert tracked + parts * part <= 64 * 2**20, f"tracked files {tracked:,} B + cache {parts * part:,} B"
