"""What each trainer script trains when a flag is left out, against docs/METHOD.md and the authors' scripts.

Each test reads the values from docs/METHOD.md where that file states them (its §2 objective table, §1.2's
presets), so that the code and the document cannot drift apart; the scripts themselves are run (``runpy``,
their ``run_cli`` replaced) so that their own parser calls are what is checked.
"""
import ast
import dataclasses
import os
import re
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _markdown import cells
from _train_data import make_train_tree, train_flags

from net.presets import PRESETS
from utils.train import engine
from utils.train.distributed import DistInfo
from utils.train.losses import OBJECTIVES, Objective
from utils.train.optim import build_optimizer, lr_at, set_lr
from utils.train.options import get_args_parser, resolve_objective
from utils.train.run_log import Console
from utils.train.start import build_loader, build_networks

REPO = Path(__file__).resolve().parents[1]
METHOD = (REPO / "docs" / "METHOD.md").read_text(encoding="utf-8")


def method_defaults() -> dict[str, dict[str, str]]:
    """docs/METHOD.md §2's table of the trainers' defaults: script -> {flag: value as written}."""
    table = METHOD[METHOD.index("**The trainers' defaults**"):].split("\n\n")[1].splitlines()
    scripts = re.findall(r"`(trainer_bary\w*\.py)`", table[0])
    rows = [cells(line) for line in table[2:]]
    return {script: {re.match(r"`(--\w+)`", r[0]).group(1): r[1 + i] for r in rows} for i, script in enumerate(scripts)}


# The reference scripts' DataLoader workers (`--threads`): 16 in trainer_bary.py, 4 in trainer_bary_ddp.py.
REFERENCE_THREADS = {script: int(d["--threads"]) for script, d in method_defaults().items()}


def method_objectives() -> dict[str, tuple[str, Objective]]:
    """docs/METHOD.md §2's table: script -> (default --objective, Objective(reg_weight, contrastive_eps, steps))."""
    rows = re.findall(r"^\| `(trainer_bary\w*\.py)` \| `(\w+)` \| ([\d.e-]+) \| ([\d.e-]+)[^|]*\| (\d):", METHOD,
                      re.MULTILINE)
    assert len(rows) == 2, rows
    return {script: (name, Objective(float(reg), float(eps), int(steps))) for script, name, reg, eps, steps in rows}


def script_args(script: str, monkeypatch, *argv: str):
    """The namespace ``python <script> argv`` hands to ``run_cli``: the script's own parser, nothing trained."""
    seen = []
    monkeypatch.setattr(engine, "run_cli", lambda args: seen.append(args) or 0)
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / script), run_name="__main__")
    assert done.value.code == 0 and len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("script", sorted(REFERENCE_THREADS))
def test_each_trainer_script_trains_its_namesakes_objective_with_its_loader_workers(script, monkeypatch):
    """trainer_bary.py and trainer_bary_ddp.py each default to the objective docs/METHOD.md §2's table gives
    its namesake, and to its namesake's loader workers, capped at the CPU count (on a 2-core test machine the
    cap hid which default a script had: min(8, 2) == min(16, 2))."""
    name, objective = method_objectives()[script]
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    args = script_args(script, monkeypatch)
    assert args.objective == name and OBJECTIVES[name] == objective
    assert resolve_objective(args) == objective
    assert args.threads == REFERENCE_THREADS[script]
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert script_args(script, monkeypatch).threads == 2


@pytest.mark.parametrize("script", sorted(REFERENCE_THREADS))
def test_each_objective_flag_overrides_its_own_setting_only(script, monkeypatch):
    """docs/METHOD.md §2: each of --reg-weight, --contrastive-eps and --potentials-steps overrides one setting of
    the chosen objective, and the other two stay the objective's (a flag parsed but not passed on would train the
    default silently); the values in use are written back into args for the log and the checkpoints."""
    _, base = method_objectives()[script]
    for flag, field, value in (("--reg-weight", "reg_weight", 0.3), ("--contrastive-eps", "contrastive_eps", 1e-3),
                               ("--potentials-steps", "potentials_steps", 3 - base.potentials_steps)):
        args = script_args(script, monkeypatch, flag, str(value))
        want = dataclasses.replace(base, **{field: value})
        assert resolve_objective(args) == want, flag
        assert (args.reg_weight, args.contrastive_eps, args.potentials_steps) == \
            (want.reg_weight, want.contrastive_eps, want.potentials_steps)
    assert resolve_objective(SimpleNamespace(reg_weight=None, contrastive_eps=None, potentials_steps=None)) == \
        method_objectives()["trainer_bary.py"][1]  # no --objective at all: the single-process trainer's


@pytest.mark.parametrize("name", ["RMSprop", "Adam"])
def test_the_optimizers_are_torchs_with_its_defaults_as_in_the_reference(name):
    """docs/METHOD.md §2: RMSprop by default, or Adam; the reference builds torch.optim.RMSprop/Adam with only the
    learning rate given, so alpha, betas, eps, momentum and weight decay are torch's defaults."""
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = build_optimizer(name, params, 1e-4)
    reference = getattr(torch.optim, name)(params, lr=1e-4)
    assert type(opt) is type(reference)
    assert opt.defaults == reference.defaults


def test_model_flags_reach_the_network_and_the_potentials():
    """--dim, --num-blocks, --num-refinement-blocks and --heads each change the network the trainer builds (a flag
    dropped on the way would build the preset's silently), and the potentials follow K, the network's width and
    --patch-size (docs/METHOD.md §1.4: K networks on 8·dim channels, tied to the patch size; the reference's K
    defaulted to 3 whatever --de-type trained)."""
    args = get_args_parser().parse_args("--preset tiny --dim 24 --num-blocks 1 1 2 1 --num-refinement-blocks 2 "
                                        "--heads 1 2 4 4 --patch_size 64 --device cpu".split())
    model, pots, _, _ = build_networks(args, 5, None, None, DistInfo(), Console(False))
    assert {k: model.config[k] for k in ("dim", "num_blocks", "num_refinement_blocks", "heads")} == \
        {"dim": 24, "num_blocks": [1, 1, 2, 1], "num_refinement_blocks": 2, "heads": [1, 2, 4, 4]}
    assert len(model.encoder_level3) == 2 and len(model.refinement) == 2
    assert model.latent[0].attn.temperature.shape[0] == 4
    assert (pots.num_potentials, len(pots.potentials), pots.channels, pots.size) == (5, 5, 8 * 24, 64)


def test_the_run_takes_its_optimizer_learning_rate_and_l1_weight_from_the_flags():
    """--optimizer, --lr and --step (docs/METHOD.md §2: lr · 0.1^⌊(e−1)/step⌋ / 2 at epoch e, for both networks)
    and --Sigma reach what an iteration updates: both optimizers of the chosen kind at the epoch's rate, the
    chosen L1 weight and objective (a flag dropped on the way would train the default silently)."""
    args = get_args_parser().parse_args("--preset tiny --optimizer Adam --lr 1e-3 --step 3 --Sigma 5 "
                                        "--patch_size 32 --device cpu".split())
    objective = resolve_objective(args)
    model, pots, _, _ = build_networks(args, 3, None, None, DistInfo(), Console(False))
    training = engine.build_training(args, model, pots, SimpleNamespace(lambdas=[0.2, 0.3, 0.5]), DistInfo(),
                                     objective, frozenset(), 4, Console(False))
    assert lr_at(1e-3, 4, 3) == pytest.approx(5e-5)
    for opt in (training.optimizer, training.potentials_optimizer):
        assert type(opt) is torch.optim.Adam and opt.param_groups[0]["lr"] == pytest.approx(5e-5)
    assert {id(p) for p in training.potentials_optimizer.param_groups[0]["params"]} == \
        {id(p) for p in pots.parameters()}
    assert training.l1_weight == 5 and training.objective == objective


def test_the_presets_are_the_configurations_method_md_gives():
    """docs/METHOD.md §1.2: --preset paper (the default) is the published configuration, key for key, and tiny is
    the same graph at dim 16 with blocks [1,1,1,2] and 1 refinement block (the parameter counts elsewhere pin
    sizes, not which setting gives them)."""
    paper = re.search(r"Default configuration \(preset `paper`[^)]*\): (.*?)\.\s", METHOD, re.DOTALL).group(1)
    documented = {k: ast.literal_eval(v) for k, v in re.findall(r"`(\w+)=([^`]+)`", paper)}
    assert len(documented) == 7 and PRESETS["paper"] == documented
    assert get_args_parser().parse_args([]).preset == "paper"
    dim, blocks, refinement = re.search(r"The `tiny` preset \(dim (\d+), blocks (\[[\d,]+\]), (\d+) refinement",
                                        METHOD).groups()
    assert PRESETS["tiny"] == {**documented, "dim": int(dim), "num_blocks": ast.literal_eval(blocks),
                               "num_refinement_blocks": int(refinement)}


def test_each_epochs_learning_rate_reaches_both_optimizers():
    """docs/METHOD.md §2: both networks use the same, decaying learning rate. The epoch loop sets it with set_lr;
    one that reached the map's optimizer alone left the potentials at the first epoch's rate for the whole run
    (an L1-only run has no potentials' optimizer: None is passed over)."""
    optimizers = [build_optimizer("RMSprop", [torch.nn.Parameter(torch.zeros(2))], lr_at(2e-4, 1, 20)),
                  build_optimizer("RMSprop", [torch.nn.Parameter(torch.zeros(2))], lr_at(2e-4, 1, 20))]
    set_lr([*optimizers, None], lr_at(2e-4, 21, 20))
    assert [opt.param_groups[0]["lr"] for opt in optimizers] == pytest.approx([1e-5, 1e-5])


def test_the_loader_takes_threads_shuffles_and_keeps_the_last_partial_batch():
    """build_loader as the reference's DataLoader: --threads workers, a shuffled order (DistributedSampler's
    default, the single trainer's shuffle=True), the per-process --batchSize and the last partial batch kept."""
    sampler, loader = build_loader(SimpleNamespace(batchSize=3, threads=2), list(range(40)), 7, DistInfo())
    assert (loader.num_workers, loader.batch_size, loader.drop_last, sampler.shuffle) == (2, 3, False, True)
    sampler.set_epoch(1)
    assert sorted(sampler) == list(range(40)) and list(sampler) != list(range(40))


def test_the_epoch_loop_decays_the_rate_every_step_epochs(tmp_path, monkeypatch):
    """A run's epochs train at docs/METHOD.md §2's lr · 0.1^⌊(e−1)/step⌋ / 2 with the --lr and --step given, in both
    optimizers: a loop that used another step kept training at the start rate. The epochs' training is replaced
    by a record of the rates it would train at (the loop, its checkpoints and log run as they are)."""
    seen = []

    def one_epoch(training, loader, state, iters, lr, **_):
        seen.append((state.epoch, lr, *(opt.param_groups[0]["lr"] for opt in
                                        (training.optimizer, training.potentials_optimizer))))
        state.iteration = iters
        return {}, False

    monkeypatch.setattr(engine, "train_one_epoch", one_epoch)
    monkeypatch.setattr(engine, "draw_loss_figure", lambda *a: None)
    dirs = make_train_tree(tmp_path / "data", n=1, size=32)
    flags = train_flags(dirs, tmp_path, de_type=("derain", "dehaze"))
    flags += "--batchSize 1 --iters-per-epoch 1 --nEpochs 3 --step 2 --lr 1e-3".split()
    assert engine.main(get_args_parser().parse_args(flags)) == 0
    assert seen == [(e, pytest.approx(r), pytest.approx(r), pytest.approx(r))
                    for e, r in ((1, 5e-4), (2, 5e-4), (3, 5e-5))]


@pytest.mark.parametrize("script", sorted(REFERENCE_THREADS))
def test_each_trainer_scripts_defaults_are_method_mds_table(script, monkeypatch):
    """docs/METHOD.md §2 lists what each script trains when a flag is left out (the authors' scripts'
    defaults); the script's own parser must give exactly those, so code and document cannot drift apart."""
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    args = script_args(script, monkeypatch)
    table = method_defaults()[script]
    # each documented flag: its attribute in args, and how its table cell reads
    read = {"--batchSize": int, "--nEpochs": int, "--lr": float, "--step": int, "--patch_size": int,
            "--Sigma": float, "--optimizer": str, "--de_type": str.split, "--threads": int}
    assert sorted(table) == sorted(read)
    assert {flag: getattr(args, flag[2:]) for flag in read} == {flag: read[flag](table[flag]) for flag in read}
