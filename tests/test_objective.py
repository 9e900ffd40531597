"""The authors' two objectives: the single-process trainer's and the DDP trainer's.

Each is checked against an independent per-sample transcription of the reference's loops
(float64): the map loss, which potentials receive gradients, and how many optimizer steps
they take, in one process and in two (gloo).
"""
import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _conformance import golden, golden_weights
from _processes import free_port
from objective_case import LAMBDAS, P, batch_for_rank, nets

from net import Potentials
from utils.train.iteration import Training, drop_absent_gradients, train_step
from utils.train.losses import OBJECTIVES, Objective, map_loss, potentials_loss
from utils.train.optim import build_optimizer
from utils.train.options import get_args_parser, resolve_objective

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def reference_map_loss(y, target, z, b, r, de_ids, domains, lambdas, pots, l1_weight, reg, eps):
    """The reference's map loss written sample by sample (no vectorisation, no log-sum-exp)."""
    n = len(de_ids)
    flat = lambda t: t.reshape(-1)  # noqa: E731
    unit = lambda v: v / v.norm().clamp_min(1e-12)  # noqa: E731
    rs = [unit(flat(r[j])) for j in range(n)]
    total = 0.0
    for i in range(n):
        c = ((flat(z[i]) - flat(b[i])) ** 2).mean().sqrt()
        bi = unit(flat(b[i]))
        o = sum((bi @ rs[j]) ** 2 for j in range(n))
        s = [torch.exp((rs[i] @ rs[j]) / 0.07) for j in range(n)]
        pos = sum(s[j] for j in range(n) if de_ids[j] == de_ids[i])
        neg = sum(s[j] for j in range(n) if de_ids[j] != de_ids[i])
        ctr = -torch.log((pos + eps) / (pos + neg + eps))
        k = int(domains[i])
        p = pots.potentials[k](b[i:i + 1]).squeeze()
        total = total + lambdas[k] * (c + reg * (o + ctr) - p)
    return total / n + l1_weight * (y - target).abs().mean()


def test_ddp_map_loss_equals_the_reference_formula_on_the_golden_batch():
    gold = golden()
    case, out = gold["loss_case"], gold["outputs"]
    pots = Potentials(case["num_potentials"], 384, case["patch_size"]).double()
    pots.load_state_dict(golden_weights("potentials_k3_p64_keys.txt"))
    de_ids = torch.tensor(case["de_ids"])
    domains = torch.tensor([{0: 0, 1: 0, 2: 0, 3: 1, 4: 2}[int(d)] for d in de_ids])
    lambdas = torch.as_tensor(case["lambdas"], dtype=torch.float64)
    args = (out["restored"], case["target"], out["source_latent"], out["bary_latent"], out["residual"], de_ids,
            domains, lambdas, pots)
    with torch.no_grad():
        for obj in OBJECTIVES.values():
            got, _ = map_loss(*args, l1_weight=case["l1_weight"], reg_weight=obj.reg_weight,
                              contrastive_eps=obj.contrastive_eps)
            want = reference_map_loss(*args, case["l1_weight"], obj.reg_weight, obj.contrastive_eps)
            torch.testing.assert_close(got, want, rtol=1e-7, atol=0)
        # the two objectives differ on this batch (the test would not notice a swapped default otherwise)
        _, single = map_loss(*args, l1_weight=case["l1_weight"])
        _, ddp = map_loss(*args, l1_weight=case["l1_weight"], reg_weight=0.02, contrastive_eps=1e-6)
        assert (single["weighted"] - ddp["weighted"]).abs().min() > 1e-3 * single["weighted"].abs().max()


def by_hand(model, pots, batches, lambdas, objective: Objective, optimizer="RMSprop", lr=1e-4):
    """One iteration as the reference loops run it, over one or more ranks' batches.

    Ranks are simulated by averaging their losses (what DDP and the gradient all-reduce do).
    Step 2 evaluates f_{k_i} on sample i alone, so absent domains get no gradient at all.
    """
    opt_m = build_optimizer(optimizer, model.parameters(), lr)
    opt_p = build_optimizer(optimizer, pots.parameters(), lr)
    for p in pots.parameters():
        p.requires_grad_(False)
    opt_m.zero_grad(set_to_none=True)
    maps = []
    for degraded, target, de_ids, domains in batches:
        out = model(degraded)
        maps.append(reference_map_loss(out.restored, target, out.source_latent, out.bary_latent, out.residual,
                                       de_ids, domains, lambdas, pots, 10000.0, objective.reg_weight,
                                       objective.contrastive_eps))
    (sum(maps) / len(maps)).backward()
    opt_m.step()
    for p in pots.parameters():
        p.requires_grad_(True)
    with torch.no_grad():
        barys = [model(b[0]).bary_latent for b in batches]

    def pot_term(bary, domains):
        return sum(lambdas[int(k)] * pots.potentials[int(k)](bary[i:i + 1]).squeeze()
                   for i, k in enumerate(domains)) / len(domains)

    def cong_term(bary):
        return 10 * sum(lambdas[k] * f(bary[-1:]).squeeze() for k, f in enumerate(pots.potentials)) ** 2

    opt_p.zero_grad(set_to_none=True)
    if objective.potentials_steps == 2:
        (sum(pot_term(b, batch[3]) for b, batch in zip(barys, batches)) / len(batches)).backward()
        opt_p.step()
        opt_p.zero_grad(set_to_none=True)
        (sum(cong_term(b) for b in barys) / len(batches)).backward()
    else:
        (sum(pot_term(b, batch[3]) + cong_term(b) for b, batch in zip(barys, batches)) / len(batches)).backward()
    opt_p.step()
    return opt_p


def assert_same_weights(a, b, rtol=1e-9):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=rtol, atol=1e-12, msg=name)


@pytest.mark.parametrize("optimizer", ["RMSprop", "Adam"])
@pytest.mark.parametrize("objective", ["single", "ddp"])
def test_absent_potentials_get_no_gradient_and_keep_their_optimizer_state(optimizer, objective):
    obj = OBJECTIVES[objective]
    lambdas = torch.full((5,), 0.2, dtype=torch.float64)
    batch = batch_for_rank(0, domains=(0, 1, 0, 1), de_ids=(0, 3, 1, 3))  # domains 2, 3, 4 absent
    model, pots = nets(k=5)
    ref_model, ref_pots = copy.deepcopy(model), copy.deepcopy(pots)
    ref_opt = by_hand(ref_model, ref_pots, [batch], lambdas, obj, optimizer)

    opt_p = build_optimizer(optimizer, pots.parameters(), 1e-4)
    training = Training(model, model, pots, build_optimizer(optimizer, model.parameters(), 1e-4), opt_p, lambdas,
                        objective=obj)
    train_step(training, batch)
    assert_same_weights(model, ref_model)
    assert_same_weights(pots, ref_pots)
    # step 2 leaves absent f_k and their optimizer state alone; the congruence step reaches every f_k
    for k, (f, ref_f) in enumerate(zip(pots.potentials, ref_pots.potentials)):
        for p, ref_p in zip(f.parameters(), ref_f.parameters()):
            steps = int(opt_p.state[p]["step"])
            assert steps == int(ref_opt.state[ref_p]["step"]), (k, steps)
            assert steps == (obj.potentials_steps if k < 2 else 1), (k, steps)


@pytest.mark.parametrize("optimizer", ["RMSprop", "Adam"])
def test_potentials_update_leaves_absent_potentials_bit_identical(optimizer):
    """Step 2 alone: the f_k of absent domains, their parameters and optimizer state, do not change."""
    model, pots = nets(k=5)
    opt = build_optimizer(optimizer, pots.parameters(), 1e-3)
    domains = torch.tensor([0, 1, 0, 1])
    for _ in range(2):  # a second step: the absent f_k would now have state to decay or move
        bary = torch.randn(4, pots.channels, P // 8, P // 8, dtype=torch.float64)
        before = copy.deepcopy(pots.state_dict())
        opt.zero_grad(set_to_none=True)
        potentials_loss(bary, domains, torch.full((5,), 0.2, dtype=torch.float64), pots).backward()
        drop_absent_gradients(pots, [0, 1])
        opt.step()
        for name, value in pots.state_dict().items():
            absent = int(name.split(".")[1]) >= 2
            assert torch.equal(value, before[name]) == absent, name
        for k in (2, 3, 4):
            assert all(p not in opt.state for p in pots.potentials[k].parameters())


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["ddp", "single"])
def test_two_process_iteration_equals_the_reference_steps(tmp_path, objective):
    """gloo, 2 ranks with different batches: the ddp objective makes one potentials step on the
    rank-averaged accumulated gradient, the single one two steps."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(TESTS / "_objective_worker.py"), str(r), "2", str(port),
                               str(tmp_path), objective], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for r in range(2)]
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the 2-process iteration did not finish in 240 s")
    assert all(p.returncode == 0 for p in procs), "\n".join(
        f"rank {r} exited {p.returncode}:\n{out}" for r, (p, out) in enumerate(zip(procs, outputs)))
    got = torch.load(tmp_path / "rank0.pt", weights_only=True)

    model, pots = nets()
    by_hand(model, pots, [batch_for_rank(0), batch_for_rank(1)], LAMBDAS, OBJECTIVES[objective])
    for name, value in model.state_dict().items():
        torch.testing.assert_close(got["model"][name], value, rtol=1e-9, atol=1e-12, msg=name)
    for name, value in pots.state_dict().items():
        torch.testing.assert_close(got["potentials"][name], value, rtol=1e-9, atol=1e-12, msg=name)


def test_each_trainer_defaults_to_its_reference_objective():
    single = get_args_parser().parse_args([])
    ddp = get_args_parser(objective="ddp").parse_args([])
    assert resolve_objective(single) == Objective(0.05, 0.0, 2)
    assert resolve_objective(ddp) == Objective(0.02, 1e-6, 1)
    assert (ddp.reg_weight, ddp.potentials_steps, ddp.contrastive_eps) == (0.02, 1, 1e-6)  # recorded in args
    mixed = get_args_parser().parse_args("--objective ddp --potentials-steps 2 --reg_weight 0.1".split())
    assert resolve_objective(mixed) == Objective(0.1, 1e-6, 2)
    assert math.isclose(OBJECTIVES["single"].reg_weight, 0.05)
