"""The fast path (``--compile``): the compiled iteration computes the eager one, its losses are checked
once per iteration, and bad settings are refused with the fix.

The compiled runs here use the ``eager`` backend: dynamo traces the same graphs the inductor backend
compiles (graph breaks, guards, the wiring of the iteration) without building kernels, which takes
minutes on a CPU. ``bench/bench_fast_path.py`` compares inductor-compiled training with eager training.
"""
import copy
import math

import pytest
import torch
from test_train_step import LAMBDAS, fixed_batch, tiny_nets

from utils.compiled import CompileError, check_compile
from utils.train import engine
from utils.train.distributed import DistInfo
from utils.train.iteration import LossChecks, Training, train_step
from utils.train.optim import build_optimizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def training_for(model, pots, **kw) -> Training:
    return Training(model, model, pots, build_optimizer("RMSprop", model.parameters(), 1e-4),
                    build_optimizer("RMSprop", pots.parameters(), 1e-4), LAMBDAS, channels_last=True, **kw)


@pytest.mark.parametrize("steps", [2, 1])
def test_compiled_iterations_equal_eager_ones(steps):
    from utils.train.losses import Objective
    objective = Objective(potentials_steps=steps)
    model, pots = tiny_nets()
    eager = training_for(model, pots, objective=objective)
    model_c, pots_c = copy.deepcopy(model), copy.deepcopy(pots)
    fast = training_for(model_c, pots_c, objective=objective, compile_mode="default", compile_backend="eager")
    batch = fixed_batch()
    for _ in range(2):
        want, got = train_step(eager, batch), train_step(fast, batch)
        assert list(got) == list(want)
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-9), k
    for a, b in zip([*model.parameters(), *pots.parameters()], [*model_c.parameters(), *pots_c.parameters()]):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-8)


def test_a_compiled_iteration_that_turns_nan_is_refused_after_its_updates():
    model, pots = tiny_nets()
    fast = training_for(model, pots, compile_mode="default", compile_backend="eager")
    with pytest.raises(engine.NonFiniteLossError,
                       match=r"non-finite map loss at epoch 1, iteration 4.*map=nan.*checked once per iteration"):
        train_step(fast, fixed_batch(), where="epoch 1, iteration 4", inject_nan=True)


def test_deferred_checks_read_back_once_and_name_the_first_bad_update():
    info = DistInfo()
    checks = LossChecks(info, "here", deferred=True)
    checks.before_update("map", {"map": torch.tensor(2.0), "l1": torch.tensor(0.5)})
    checks.before_update("potentials", {"potentials": torch.tensor(float("inf"))})
    checks.before_update("congruence", {"congruence": torch.tensor(float("nan"))})  # no raise yet
    with pytest.raises(engine.NonFiniteLossError, match=r"^non-finite potentials loss at here \(potentials not "
                                                        r"finite\): potentials=inf\. Training stopped after"):
        checks.settle()

    ok = LossChecks(info, "here", deferred=True)
    ok.before_update("map", {"map": torch.tensor(2.0), "l1": torch.tensor(0.5)})
    ok.before_update("congruence", {"congruence": torch.tensor(3.0, dtype=torch.float64)})
    assert ok.settle() == {"map": 2.0, "l1": 0.5, "congruence": 3.0}

    eager = LossChecks(info, "there", deferred=False)
    eager.before_update("map", {"map": torch.tensor(1.0)})
    with pytest.raises(engine.NonFiniteLossError, match=r"non-finite congruence loss at there.*stopped before this "
                                                        r"update"):
        eager.before_update("congruence", {"congruence": torch.tensor(-math.inf)})


def test_compile_settings_that_cannot_run_are_refused_with_the_fix(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    check_compile("off", cpu)
    check_compile("default", cpu, backend="eager")
    with pytest.raises(CompileError, match=r"reduce-overhead .* needs --device cuda; on the CPU use --compile default"):
        check_compile("reduce-overhead", cpu)
    import utils.compiled as compiled
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    with pytest.raises(CompileError, match=r"needs a C\+\+ compiler .* install g\+\+"):
        check_compile("default", cpu)
    import torch.utils._triton as triton
    monkeypatch.setattr(triton, "has_triton", lambda: False)
    with pytest.raises(CompileError, match=r"needs Triton"):
        check_compile("max-autotune", cuda)
    with pytest.raises(CompileError, match=r"--compile must be one of off, default"):
        check_compile("fast", cpu)


def test_compiled_restore_equals_the_eager_one_and_bad_modes_are_refused(tmp_path, capsys):
    from net.presets import build_model
    from utils.eval.inference import prepare_for_inference, restore
    torch.manual_seed(0)
    model = build_model("BaryNet", "tiny")
    x = torch.rand(1, 3, 20, 28)
    want = restore(model, x, pad=True)
    prepare_for_inference(model, "default", backend="eager")
    got = restore(model, x, pad=True, compile_mode="default")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert model.training  # restore() leaves the mode as it found it

    import tester_bary
    args = tester_bary.get_args_parser().parse_args(["--input", str(tmp_path / "none.png"), "--device", "cpu",
                                                     "--compile", "reduce-overhead", "--save", str(tmp_path / "o")])
    with pytest.raises(tester_bary.UsageError, match=r"--compile reduce-overhead .* needs --device cuda"):
        tester_bary.main(args)


def test_compiled_inference_freezes_the_weights_only_while_inductor_runs_it():
    import torch._inductor.config as inductor_config

    from utils.compiled import frozen_weights
    assert not inductor_config.freezing
    with frozen_weights("default"):
        assert inductor_config.freezing  # read when inductor compiles (at the first call)
    assert not inductor_config.freezing  # scoped: training compiles never freeze
    for mode, backend in (("off", "inductor"), ("default", "eager")):
        with frozen_weights(mode, backend):
            assert not inductor_config.freezing


@pytest.mark.skipif(torch.cuda.is_available(), reason="the note is logged only where no CUDA runtime is found")
def test_a_cpu_compile_prints_no_note_about_cuda(tmp_path):
    """--compile on the CPU printed torch's 'W... No CUDA runtime is found, using CUDA_HOME=...' among the tester's
    lines: inductor imports torch.utils.cpp_extension, which logs it once, at import."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    code = ("from utils.compiled import compile_fn; compile_fn(lambda x: x, 'default'); "
            "import torch.utils.cpp_extension")  # the import inductor makes when it builds a CPU kernel
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, CUDA_HOME=str(tmp_path), PYTHONPATH=str(repo)))
    assert done.returncode == 0, done.stderr
    assert "No CUDA runtime" not in done.stderr, done.stderr


@pytest.mark.parametrize("precision, advice", [("fp32", "Lower --lr or resume from the last checkpoint."),
                                               ("bf16", "Lower --lr, try --precision fp32, or resume from the last "
                                                        "checkpoint.")])
def test_nan_advice_names_fp32_only_to_a_run_in_another_precision(precision, advice):
    """An fp32 run (and the demo, which has no --precision and trains in fp32) was told to 'try --precision fp32'."""
    checks = LossChecks(DistInfo(), "here", deferred=False, precision=precision)
    with pytest.raises(engine.NonFiniteLossError) as stop:
        checks.before_update("map", {"map": torch.tensor(float("nan"))})
    assert str(stop.value).endswith("the last checkpoint was not overwritten. " + advice)
