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


def test_the_outputs_of_cuda_graph_replays_are_marked_and_copied_for_both_kinds_of_graphs(monkeypatch):
    """restore() copies the output of a forward that replays CUDA graphs (the next replay overwrites it) and marks
    each forward a new step for the graph trees: under reduce-overhead, and now under the cudagraphs backend in any
    mode, which had neither."""
    from utils.compiled import begin_iteration, replays_cuda_graphs
    cases = [("off", "inductor", False), ("off", "cudagraphs", False), ("default", "inductor", False),
             ("default", "eager", False), ("max-autotune", "inductor", False), ("reduce-overhead", "inductor", True),
             ("reduce-overhead", "eager", True), ("default", "cudagraphs", True)]
    assert [replays_cuda_graphs(mode, backend) for mode, backend, _ in cases] == [want for _, _, want in cases]
    marked = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marked.append(True))
    for mode, backend, want in cases:
        marked.clear()
        begin_iteration(mode, backend)
        assert marked == ([True] if want else []), (mode, backend)


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


def test_the_first_compiled_iterations_minutes_are_kept_out_of_the_pace_and_the_eta(monkeypatch, capsys):
    """The first progress line after a compile (460 s for a tiny run on this CPU) said '0.00 it/s, epoch ETA
    0:07:40' for one iteration of 4 s left: the compile counted as the pace, and a paper epoch's ETA came to days."""
    import types

    from utils.checkpoints import LoopState
    from utils.train.run_log import Console
    from utils.train.signals import StopRequest
    clock = iter([0.0, 1000.0, *range(1001, 1100)])  # the first iteration compiles for 1000 s, the others take 1 s
    monkeypatch.setattr(engine, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    monkeypatch.setattr(engine, "train_step", lambda *a, **k: {"l1": 0.1, "map": 1.0})
    training = types.SimpleNamespace(model=torch.nn.Linear(1, 1), potentials=None, compile_mode="default",
                                     compile_backend="eager", steps=types.SimpleNamespace(compiled=False),
                                     info=DistInfo())
    logged = types.SimpleNamespace(records=[], write=lambda r: logged.records.append(r))
    engine.train_one_epoch(training, [None] * 40, LoopState(epoch=1), 40, 1e-4, stop=StopRequest(), log=logged,
                           console=Console(), log_every=10)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "=> the first compiled iteration took 1000.0 s, compiling included"
    assert [line.split(" | ")[-1] for line in lines[1:]] == ["1.00 it/s, epoch ETA 0:00:30",
                                                            "1.00 it/s, epoch ETA 0:00:00"], lines
    assert [r["sec"] for r in logged.records][:2] == [1000.0, 1.0]  # the log keeps what each took


def test_a_compiled_ddp_iteration_leaves_out_dynamos_note_on_the_profiler_range(tmp_path):
    """Under torchrun, --compile printed dynamo's "Profiler record function ... will be ignored" once per rank: its
    source is DistributedDataParallel.forward's record_function, which the compiled graph leaves out. A process
    alone (gloo, world size 1) compiles a DDP-wrapped model's loss as the trainers do, and says nothing of it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from _processes import free_port
    repo = Path(__file__).resolve().parents[1]
    code = """
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from utils.train.distributed import DistInfo
from utils.train.iteration import Training
from utils.train.optim import build_optimizer
dist.init_process_group("gloo", rank=0, world_size=1)
model = torch.nn.Conv2d(3, 3, 1)
training = Training(DistributedDataParallel(model), model, None, build_optimizer("RMSprop", model.parameters(), 1e-4),
                    None, torch.ones(1), compile_mode="default", compile_backend="eager")
x = torch.rand(2, 3, 8, 8)
loss, _ = training.steps.map(x, x, torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
loss.backward()
print(type(training.model).__name__, float(loss.detach()) >= 0)
dist.destroy_process_group()
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(repo), MASTER_ADDR="127.0.0.1",
                                   MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1"))
    assert done.returncode == 0 and done.stdout.split() == ["DistributedDataParallel", "True"], done.stderr
    assert "Profiler record function" not in done.stderr, done.stderr


def test_only_dynamos_note_on_a_profiler_range_is_left_out(monkeypatch):
    """The filter drops that one message of dynamo's logger and lets its other warnings through."""
    import logging

    from utils.compiled import quiet_ddp_record_function_note
    log = logging.getLogger("torch._dynamo.variables.ctx_manager")
    monkeypatch.setattr(log, "filters", [])
    quiet_ddp_record_function_note()
    quiet_ddp_record_function_note()
    assert len(log.filters) == 1

    def passes(msg: str) -> bool:
        return bool(log.filter(log.makeRecord(log.name, logging.WARNING, __file__, 1, msg, ("x",), None)))
    assert not passes("Profiler record function %s will be ignored")
    assert passes("Profiler function %s will be ignored") and passes("Graph break: %s")
