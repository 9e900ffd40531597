"""bench/gpu_suite.sh, checked on the CPU before a lent GPU runs it: every step's command line is accepted
by its script's parser (a misspelt flag, variant or compile mode would cost a step of the few minutes a
GPU is lent), and the caps keep the whole suite under 8 minutes."""
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "bench" / "gpu_suite.sh"
CAP_BUDGET = 470  # seconds: the steps' caps; start-up and the header leave the rest of 8 minutes


def bench_module(name: str):
    sys.path.insert(0, str(REPO / "bench"))  # the scripts import one another by name
    try:
        spec = importlib.util.spec_from_file_location(f"suite_{name}", REPO / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "bench"))


def suite_steps() -> list[tuple[int, str, list[str]]]:
    """``(cap seconds, script name, its arguments)`` of each ``step`` line, continuation lines joined."""
    text = SUITE.read_text().replace("\\\n", " ")
    steps = []
    for line in text.splitlines():
        if not line.startswith("step "):
            continue
        words = shlex.split(line.replace('"$RESULTS', '"/tmp/gpu_suite_results'))
        cap, cmd = int(words[1]), words[3:]
        assert cmd[0] == "$PY" and re.fullmatch(r"bench/\w+\.py", cmd[1]), line
        steps.append((cap, Path(cmd[1]).stem, cmd[2:]))
    return steps


def test_every_step_parses_with_its_scripts_parser_and_the_caps_fit_eight_minutes():
    steps = suite_steps()
    assert [name for _, name, _ in steps] == ["bench_train", "bench_fast_path", "bench_inference", "profile_train",
                                              "bench_loader"]
    assert sum(cap for cap, _, _ in steps) <= CAP_BUDGET
    for _, name, argv in steps:
        args = bench_module(name).build_parser().parse_args(argv)
        if hasattr(args, "device") and name != "bench_loader":
            assert args.device == "cuda", name  # every row is a GPU row
    train = bench_module("bench_train").build_parser().parse_args(steps[0][2])
    assert train.variants.split(",") == ["straightforward", "engine", "compiled"]
    assert train.compile_mode == "reduce-overhead"


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
