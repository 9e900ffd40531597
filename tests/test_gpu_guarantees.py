"""bench/gpu_guarantees.py, checked on the CPU before a lent GPU runs it: its checks pass where the guarantees
hold (the real trainer, the fast path traced without kernels) and fail where they do not."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def guarantees():
    sys.path.insert(0, str(REPO / "bench"))  # it imports bench_fast_path by name
    try:
        spec = importlib.util.spec_from_file_location("gpu_guarantees", REPO / "bench" / "gpu_guarantees.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "bench"))


def checkpoint(weight: float, step: float = 1.0) -> dict:
    return {"model": {"w": torch.full((2, 2), weight)}, "potentials": None,
            "optimizer": {"state": {0: {"step": torch.tensor(step), "square_avg": torch.ones(2, 2)}},
                          "param_groups": [{"lr": 1e-3}]}, "potentials_optimizer": None}


def test_max_difference_reaches_the_optimizer_state_and_tells_other_layouts(guarantees):
    a = checkpoint(1.0)
    assert guarantees.max_difference(a, checkpoint(1.0)) == 0.0
    assert guarantees.max_difference(a, checkpoint(1.25)) == 0.25
    assert guarantees.max_difference(a, checkpoint(1.0, step=3.0)) == 2.0  # a resumed optimizer's step count
    other = checkpoint(1.0)
    other["model"]["w"] = torch.ones(3)
    assert guarantees.max_difference(a, other) == float("inf")
    bad = checkpoint(float("nan"))
    assert not guarantees.all_finite(bad) and guarantees.all_finite(a)


def test_relative_distance_is_scale_free_and_tells_other_layouts(guarantees):
    a = {"model": {"w": torch.tensor([3.0, 0.0]), "b": torch.tensor([0.0, 4.0])}, "optimizer": {"s": torch.ones(1)}}
    b = {"model": {"w": torch.tensor([3.0, 0.5]), "b": torch.tensor([0.0, 4.0])}, "optimizer": {"s": torch.zeros(1)}}
    assert guarantees.relative_distance(b, a) == pytest.approx(0.5 / 5.0)  # ‖(0, .5, 0, 0)‖ / ‖(3, 0, 0, 4)‖
    assert guarantees.relative_distance(a, a) == 0.0  # the optimizer's state is not the model's
    scaled = {"model": {k: 10 * v for k, v in b["model"].items()}}
    assert guarantees.relative_distance(scaled, {"model": {k: 10 * v for k, v in a["model"].items()}}) == \
        pytest.approx(0.1)
    b["model"]["b"] = torch.ones(3)
    assert guarantees.relative_distance(a, b) == float("inf")
    nan = {"model": {"w": torch.tensor([float("nan"), 0.0]), "b": torch.tensor([0.0, 4.0])}}
    assert guarantees.relative_distance(nan, a) == float("inf")


class FakeRuns:
    """A Runs whose trainer 'ran' with the given exit status and error line, leaving ``saved`` checkpoints."""

    def __init__(self, work: Path, returncode: int, error: str, saved: dict[str, dict]):
        self.work, self.returncode, self.error = work, returncode, error
        (work / "nan-eager").mkdir(parents=True)
        for name, ck in saved.items():
            torch.save(ck, work / "nan-eager" / name)

    def run(self, name, fast=False, *extra):
        return subprocess.CompletedProcess([], self.returncode, "", f"training...\n{self.error}\n")


@pytest.mark.parametrize("returncode, error, saved, ok", [
    (1, "error: non-finite map loss at epoch 1, iteration 3", {"iter_e001_i000002.pth": 2}, True),
    (0, "=> done", {"iter_e001_i000002.pth": 2}, False),  # the NaN went unnoticed
    (1, "error: non-finite map loss at epoch 1, iteration 3", {}, False),  # nothing kept
    (1, "error: non-finite map loss at epoch 1, iteration 3", {"iter_e001_i000004.pth": 4}, False),  # saved after it
])
def test_the_nan_check_fails_when_a_guarantee_does_not_hold(guarantees, tmp_path, returncode, error, saved, ok):
    cks = {name: {**checkpoint(1.0), "global_step": step} for name, step in saved.items()}
    runs = FakeRuns(tmp_path, returncode, error, cks)
    assert guarantees.check_nan(runs, "nan-eager", False)[0] is ok


class ResumeRuns:
    """A Runs whose '--resume auto' run printed ``said`` and ended at the straight run's state."""

    def __init__(self, said: str, final: dict):
        self.said, self.state = said, final

    def run(self, name, fast=False, *extra):
        return subprocess.CompletedProcess([], 0, self.said if "--resume" in extra else "=> epoch 1", "")

    def final(self, name):
        return self.state


def test_a_resume_that_trained_from_the_start_fails(guarantees):
    """A --resume auto that started afresh ends bit for bit where the straight run ends (same seed, same
    epochs): the check passed it. It must have said that it resumed."""
    straight = {**checkpoint(1.0), "epoch": 2, "global_step": 8}
    fresh = ResumeRuns("=> moved the earlier run aside; training from the start\n", straight)
    ok, detail = guarantees.check_resume(fresh, "resume-eager", False, straight, lambda: 0.0)
    assert not ok and "did not say '=> resumed'" in detail
    resumed = ResumeRuns("=> resumed ckpt/epoch_001.pth: 1 epoch done, continuing at epoch 2\n", straight)
    assert guarantees.check_resume(resumed, "resume-eager", False, straight, lambda: 0.0) == (
        True, "ended at epoch 2, global step 8; equal to the straight run bit for bit")
    drifted = ResumeRuns(resumed.said, {**checkpoint(1.5), "epoch": 2, "global_step": 8})
    assert not guarantees.check_resume(drifted, "resume-eager", False, straight, lambda: 0.0)[0]  # exact
    assert guarantees.check_resume(drifted, "resume-eager", False, straight, lambda: 0.1)[0]  # within 10x the gap


class ControlRuns:
    """A Runs whose straight runs end at ``states[name]``; counts the runs started."""

    def __init__(self, states: dict[str, dict], returncode: int = 0):
        self.states, self.returncode, self.started = states, returncode, []

    def run(self, name, fast=False, *extra):
        self.started.append(name)
        return subprocess.CompletedProcess([], self.returncode, "", "error: out of memory\n")

    def final(self, name):
        return self.states[name]


def test_the_control_run_starts_only_when_a_state_differs_and_once(guarantees):
    """Every run is a trainer process, minutes of a lent GPU: the second straight run (the control) was run
    before the checks even where each eager state then equalled the straight one bit for bit."""
    straight = checkpoint(1.0)
    runs = ControlRuns({"straight_again": checkpoint(1.125)})
    control = guarantees.Control(runs, straight)
    assert guarantees.judged(0.0, control, "here") == (True, "here; equal to the straight run bit for bit")
    assert runs.started == []
    ok, detail = guarantees.judged(1.0, control, "here")
    assert ok and detail == "here; max abs difference to the straight run 1, two straight runs differ by 0.125"
    assert not guarantees.judged(2.0, control, "here")[0]  # more than 10x the control's 0.125
    assert runs.started == ["straight_again"]  # once
    failing = guarantees.Control(ControlRuns({}, returncode=1), straight)
    with pytest.raises(guarantees.ControlFailed, match="exit 1: error: out of memory"):
        guarantees.judged(1.0, failing, "here")


def test_every_trainer_command_the_checks_start_is_one_the_trainer_takes(guarantees, tmp_path):
    """The fast path's runs are checked end to end by tests/test_resume.py (SIGTERM while compiling and after,
    NaN, resume); here, that each command this script starts for them, and for the eager runs, is one the
    trainer's parser takes as meant: a misspelt flag would cost a step of a lent GPU."""
    from utils.train.options import get_args_parser

    a = guarantees.build_parser().parse_args(["--device", "cpu", "--data", str(tmp_path / "demo")])
    runs = guarantees.Runs(a, tmp_path / "demo", tmp_path / "work")
    for fast in (False, True):
        for extra in ([], ["--nEpochs", "1"], ["--resume", "auto"],
                      ["--nEpochs", "1", "--save-every", "2", "--debug-nan-at", "3"]):
            cmd = runs.command("check", fast, *extra)
            assert cmd[1] == str(REPO / "trainer_bary.py")
            args = get_args_parser().parse_args(cmd[2:])
            assert (args.compile, args.deterministic) == (("reduce-overhead", False) if fast else ("off", True))
            assert args.preset == "tiny" and args.output_dir == str(tmp_path / "work" / "check")
            if fast:
                assert args.compile_backend == "inductor"


@pytest.mark.slow
def test_the_checks_pass_on_the_real_trainer(guarantees, tmp_path, monkeypatch, capsys):
    """The NaN stop and SIGTERM, eager (judged against a straight --deterministic run), end to end; the fast
    path's commands are checked above."""
    from utils.demo import data as demo

    monkeypatch.setattr(guarantees, "build_demo_data", lambda root, **kw: demo.build_demo_data(
        root, seed=0, scale=0.2, max_photos=3, progress=False))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    status = guarantees.main(["--device", "cpu", "--mode", "default", "--compile-backend", "eager", "--patch", "16",
                              "--iters", "8", "--checks", "nan-eager", "sigterm-eager",
                              "--data", str(tmp_path / "demo"), "--run-timeout", "120"])
    said = capsys.readouterr()
    out = said.out
    assert status == 0, out
    assert "-- straight\n" in said.err and "straight_again" not in said.err  # equal bit for bit: no control run
    assert "| nan-eager | ok | exit 1; newest checkpoint iter_e001_i000002.pth, finite: True;" in out
    assert "| sigterm-eager | ok | stopped by SIGTERM at epoch 1, iteration " in out
    assert out.count("every iteration logged once: True") == 1 and "equal to the straight run bit for bit" in out
