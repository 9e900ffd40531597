"""One iteration of the engine against utils/train/losses.py written out in docs/METHOD.md §2's order."""
import copy
import os

import pytest
import torch

from net import Potentials
from net.presets import build_model
from utils.train import engine
from utils.train.iteration import Training, train_step
from utils.train.losses import congruence_loss, map_loss, potentials_loss
from utils.train.optim import build_optimizer, lr_at
from utils.train.options import ConfigError, get_args_parser
from utils.train.run_checks import check_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")

P = 32




def fixed_batch():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(4, 3, P, P, generator=g)
    degraded = (target + 0.1 * torch.randn(4, 3, P, P, generator=g)).clamp(0, 1)
    de_ids = torch.tensor([0, 3, 1, 4])  # sigma15, derain, sigma25, dehaze
    domains = torch.tensor([0, 1, 0, 2])
    return degraded, target, de_ids, domains


def tiny_nets():
    torch.manual_seed(0)
    model = build_model("BaryNet", "tiny")
    pots = Potentials(3, model.config["dim"] * 8, P)
    return model, pots


LAMBDAS = torch.tensor([0.318, 0.341, 0.341])


def by_hand(model, pots, batch, lr=1e-4):
    """docs/METHOD.md §2 step by step, with the loss functions of utils/train/losses.py."""
    degraded, target, de_ids, domains = batch
    opt_m = build_optimizer("RMSprop", model.parameters(), lr)
    opt_p = build_optimizer("RMSprop", pots.parameters(), lr)
    for p in pots.parameters():
        p.requires_grad_(False)
    out = model(degraded)
    l_map, _ = map_loss(out.restored, target, out.source_latent, out.bary_latent, out.residual, de_ids, domains,
                        LAMBDAS, pots, l1_weight=10000.0)
    opt_m.zero_grad()
    l_map.backward()
    opt_m.step()
    for p in pots.parameters():
        p.requires_grad_(True)
    with torch.no_grad():
        b = model(degraded).bary_latent  # a full forward here; the engine runs the encoder path only
    l_pot = potentials_loss(b, domains, LAMBDAS, pots)
    opt_p.zero_grad()
    l_pot.backward()
    opt_p.step()
    opt_p.zero_grad()
    l_cong = congruence_loss(b[-1], LAMBDAS, pots)
    l_cong.backward()
    opt_p.step()
    return l_map.item(), l_pot.item(), l_cong.item()


def test_step_matches_the_loss_functions_in_spec_order():
    model, pots = tiny_nets()
    ref_model, ref_pots = copy.deepcopy(model), copy.deepcopy(pots)
    batch = fixed_batch()
    expect = by_hand(ref_model, ref_pots, batch)

    calls = {"decoder": 0, "frozen": []}
    model.output.register_forward_hook(lambda *a: calls.__setitem__("decoder", calls["decoder"] + 1))
    pots.potentials[0].register_forward_hook(
        lambda *a: calls["frozen"].append(not pots.potentials[0][0].weight.requires_grad))
    training = Training(model, model, pots, build_optimizer("RMSprop", model.parameters(), 1e-4),
                        build_optimizer("RMSprop", pots.parameters(), 1e-4), LAMBDAS, l1_weight=10000.0)
    losses = train_step(training, batch)

    assert losses["map"] == pytest.approx(expect[0], rel=1e-6)
    assert losses["potentials"] == pytest.approx(expect[1], rel=1e-5, abs=1e-9)
    assert losses["congruence"] == pytest.approx(expect[2], rel=1e-5, abs=1e-9)
    assert calls["decoder"] == 1  # step 2 recomputes b without the decoder
    assert calls["frozen"] == [True, False, False]  # frozen in step 1 only; three potential evaluations
    for a, b in zip(list(model.parameters()) + list(pots.parameters()),
                    list(ref_model.parameters()) + list(ref_pots.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert all(p.requires_grad for p in pots.parameters())


def test_restormer_baseline_is_l1_only():
    torch.manual_seed(0)
    model = build_model("Restormer", "tiny")
    ref = copy.deepcopy(model)
    degraded, target, de_ids, domains = fixed_batch()
    training = Training(model, model, None, build_optimizer("Adam", model.parameters(), 1e-4), None, LAMBDAS,
                        l1_weight=10000.0)
    losses = train_step(training, (degraded, target, de_ids, domains))
    expect = 10000.0 * (ref(degraded) - target).abs().mean()
    assert losses["map"] == pytest.approx(expect.item(), rel=1e-6)
    assert set(losses) == {"map", "l1"}


def test_injected_nan_stops_before_the_update():
    model, pots = tiny_nets()
    before = copy.deepcopy(model.state_dict())
    training = Training(model, model, pots, build_optimizer("RMSprop", model.parameters(), 1e-4),
                        build_optimizer("RMSprop", pots.parameters(), 1e-4), LAMBDAS)
    with pytest.raises(engine.NonFiniteLossError, match=r"non-finite map loss at epoch 2, iteration 7.*map=nan"):
        train_step(training, fixed_batch(), where="epoch 2, iteration 7", inject_nan=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_lr_schedule():
    assert lr_at(2e-4, 1, 20) == pytest.approx(1e-4)
    assert lr_at(2e-4, 20, 20) == pytest.approx(1e-4)
    assert lr_at(2e-4, 21, 20) == pytest.approx(1e-5)
    assert lr_at(2e-4, 41, 20) == pytest.approx(1e-6)


def test_flags_and_num_sources():
    parser = get_args_parser()
    args = parser.parse_args([])
    assert (args.batchSize, args.nEpochs, args.lr, args.step, args.patch_size, args.Sigma, args.optimizer,
            args.threads, args.data_file_dir, args.start_epoch, args.pairnum) == \
        (4, 200, 2e-4, 20, 128, 10000, "RMSprop", min(16, os.cpu_count() or 1), "data_dir/", 1, 10000000)
    assert args.de_type == ["denoise_15", "denoise_25", "denoise_50", "derain", "dehaze"]
    assert check_args(args) == 3
    five = parser.parse_args("--de_type derain dehaze deblur denoise_25 lowlight --num_source 5".split())
    assert five.num_sources == 5 and check_args(five) == 5
    assert parser.parse_args(["--workers", "2"]).threads == 2
    bad = parser.parse_args("--de_type derain dehaze --num_sources 3".split())
    with pytest.raises(ConfigError, match=r"--num-sources 3 does not match --de-type derain dehaze, which spans 2"):
        check_args(bad)
    assert engine.run_cli(bad) == 2
    with pytest.raises(ConfigError, match="--patch-size"):
        check_args(parser.parse_args(["--patch_size", "60"]))


@pytest.mark.parametrize("flags, said", [
    (["--backbone", "Restormer", "--reg-weight", "0.1", "--num-sources", "7"],
     "--reg-weight 0.1 --num-sources 7 have no effect: --backbone Restormer trains with the L1 loss alone"),
    (["--backbone", "PromptIR", "--potentials-steps", "1"], "--potentials-steps 1 has no effect: --backbone PromptIR"),
    (["--ablate", "potentials", "--potentials-steps", "1"],
     "--potentials-steps 1 has no effect: --ablate potentials skips"),
    (["--ablate", "contrastive", "--contrastive-eps", "1e-6"], "--contrastive-eps 1e-06 has no effect: --ablate contr"),
    (["--ablate", "orthogonality", "contrastive", "--reg-weight", "0.1"],
     "--reg-weight 0.1 has no effect: --ablate orthogonality contrastive leaves out both"),
    (["--ablate", "orthogonality", "--reg-weight", "0.1"], None),  # the contrastive term still weighs it
    (["--reg-weight", "0.1", "--potentials-steps", "1", "--num-sources", "3"], None),
])
def test_objective_flags_the_run_cannot_use_are_said(tmp_path, capsys, flags, said):
    """--backbone Restormer --reg-weight 0.1 (or --ablate potentials --potentials-steps 1) trained without a word
    that the flag did nothing."""
    from utils.train.distributed import DistInfo
    from utils.train.start import check_run
    args = get_args_parser().parse_args(["--device", "cpu", "--output-dir", str(tmp_path / "run"), *flags])
    check_run(args, DistInfo())
    err = capsys.readouterr().err
    if said is None:
        assert "no effect" not in err, err
    else:
        assert said in err, err


def _start_warnings(tmp_path, capsys, flags: list[str]) -> list[str]:
    """The warnings check_run prints for ``flags`` (on the CPU), one string each."""
    from utils.train.distributed import DistInfo
    from utils.train.start import check_run
    check_run(get_args_parser().parse_args(["--device", "cpu", "--output-dir", str(tmp_path / "run"), *flags]),
              DistInfo())
    return [line[len("!! WARNING: "):] for line in capsys.readouterr().err.splitlines()
            if line.startswith("!! WARNING: ")]


def test_data_folders_of_families_the_run_does_not_train_are_said(tmp_path, capsys):
    """--de-type denoise_15 denoise_25 denoise_50 --derain_dir data/rain/ trained the three noise levels and
    never read the rain folder, without a word (a --de-type missing its derain looked like a full 3D run)."""
    three = ["--de-type", "denoise_15", "denoise_25", "denoise_50"]
    assert _start_warnings(tmp_path, capsys, [*three, "--derain_dir", "rain/"])[-1] == (
        "--derain-dir rain/ has no effect: --de-type denoise_15 denoise_25 denoise_50 does not train derain (drop "
        "it, or add derain to --de-type)")
    said = _start_warnings(tmp_path, capsys, ["--de-type", "derain", "dehaze", "--lowlight-dir", "l/",
                                              "--denoise_dir", "n/"])
    assert said == ["--denoise-dir n/ --lowlight-dir l/ have no effect: --de-type derain dehaze does not train denoise "
                    "or lowlight (drop them, or add denoise_15/denoise_25/denoise_50 or lowlight to --de-type)"]
    # a folder of a family trained, or a flag left at its default, is no news
    assert _start_warnings(tmp_path, capsys, ["--de-type", "derain", "dehaze", "--derain-dir", "r/"]) == []
    assert _start_warnings(tmp_path, capsys, ["--de-type", "derain", "dehaze"]) == []


def test_gpus_on_the_cpu_is_said(tmp_path, capsys):
    """trainer_bary.py --device cpu --gpus 0 trained on the CPU and never said that --gpus did nothing."""
    assert _start_warnings(tmp_path, capsys, ["--gpus", "0"]) == [
        "--gpus 0 has no effect: --device cpu runs on the CPU (drop --gpus, or pass --device cuda)"]
    assert _start_warnings(tmp_path, capsys, []) == []


def test_gpus_with_a_device_that_may_use_them_is_no_news(tmp_path, capsys):
    """--gpus 0 with --device auto (the default, a GPU when there is one) or cuda uses the GPUs it names: saying
    "--device cpu runs on the CPU" there would be false."""
    for device in ("auto", "cuda"):
        assert _start_warnings(tmp_path, capsys, ["--gpus", "0", "--device", device]) == []


def test_one_source_domain_is_said_for_the_barycenter_backbones(tmp_path, capsys):
    """--de-type denoise_15 denoise_25 denoise_50 (one family) or --de-type derain trained BaryNet with K=1, whose
    barycenter is its one domain, without a word; the L1-only backbones have no barycenter to speak of."""
    said = _start_warnings(tmp_path, capsys, ["--de-type", "denoise_15", "denoise_25", "denoise_50"])
    assert said == ["--de-type denoise_15 denoise_25 denoise_50 spans one source domain (K=1; noise levels count "
                    "once): the barycenter of one distribution is that distribution itself, so --backbone BaryNet's "
                    "barycenter terms have nothing to align across domains; the paper trains 3D with K=3 and 5D with "
                    "K=5 (add another degradation family to --de-type to train across domains)"]
    [line] = _start_warnings(tmp_path, capsys, ["--de-type", "derain", "--backbone", "BaryPromptIR"])
    assert line.startswith("--de-type derain spans one source domain (K=1): the barycenter of one distribution is "
                           "that distribution itself, so --backbone BaryPromptIR's barycenter terms"), line
    for l1_only in ("Restormer", "PromptIR"):
        assert _start_warnings(tmp_path, capsys, ["--de-type", "derain", "--backbone", l1_only]) == []
    assert _start_warnings(tmp_path, capsys, ["--de-type", "derain", "dehaze"]) == []


def test_the_start_warnings_are_said_once_by_a_dry_run(tmp_path, capsys, monkeypatch):
    """The new warnings come from the flag checks every run makes first, --dry-run included, once each."""
    from _train_data import make_train_tree, train_flags
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", ""))  # --gpus sets it
    data = make_train_tree(tmp_path / "data")
    flags = train_flags(data, tmp_path, de_type=("derain",)) + ["--deblur_dir", str(data["deblur"]),
                                                                 "--lowlight_dir", str(data["lowlight"])]
    assert engine.run_cli(get_args_parser().parse_args([*flags, "--gpus", "0", "--dry-run"])) == 0
    out, err = capsys.readouterr()
    assert "=> dry run:" in out
    for words in ("--de-type derain spans one source domain (K=1)", "--gpus 0 has no effect",
                  "--deblur-dir", "--lowlight-dir"):
        assert err.count(words) == 1, (words, err)


def test_an_l1_only_run_resumes_under_either_trainers_objective(tmp_path):
    """trainer_bary_ddp.py refused to continue trainer_bary.py's Restormer run ('--objective single there, ddp
    here; --reg-weight 0.05 there, 0.02 here ...'), settings the L1 loss does not use."""
    from utils.train.options import resolve_objective
    from utils.train.resuming import check_same_run
    saved = get_args_parser().parse_args(["--backbone", "Restormer"])
    resolve_objective(saved)
    ddp = get_args_parser(objective="ddp").parse_args(["--backbone", "Restormer"])
    resolve_objective(ddp)
    check_same_run(ddp, {"args": vars(saved)}, tmp_path / "epoch_001.pth")
    ddp.patch_size = 64  # another setting is still refused, without sending it to the other script
    with pytest.raises(ConfigError, match="--patch-size 128 there, 64 here") as err:
        check_same_run(ddp, {"args": vars(saved)}, tmp_path / "epoch_001.pth")
    assert "--objective" not in str(err.value) and "trained by" not in str(err.value)
    wb_saved, wb_ddp = (get_args_parser(objective=o).parse_args([]) for o in ("single", "ddp"))
    resolve_objective(wb_saved), resolve_objective(wb_ddp)
    with pytest.raises(ConfigError, match="--objective single there, ddp here"):  # BaryNet's objective matters
        check_same_run(wb_ddp, {"args": vars(wb_saved)}, tmp_path / "epoch_001.pth")


def test_the_trainer_weights_domains_by_the_datasets_lambdas_and_l1_by_sigma():
    """engine.build_training wires the data set's barycenter weights and --Sigma into every iteration: the
    map loss the trainer steps on is map_loss with those lambdas and that L1 weight (uniform lambdas, or
    the default 1e4 in place of --Sigma, trained another objective without a word)."""
    from types import SimpleNamespace

    from utils.train.distributed import DistInfo
    from utils.train.losses import OBJECTIVES
    from utils.train.run_log import Console
    lambdas = [0.7, 0.2, 0.1]
    args = get_args_parser().parse_args(["--Sigma", "5", "--preset", "tiny"])
    model, pots = tiny_nets()
    ref_model, ref_pots = copy.deepcopy(model), copy.deepcopy(pots)
    training = engine.build_training(args, model, pots, SimpleNamespace(lambdas=lambdas), DistInfo(),
                                     OBJECTIVES["single"], frozenset(), 1, Console(False))
    batch = fixed_batch()
    got = train_step(training, batch)["map"]

    degraded, target, de_ids, domains = batch
    with torch.no_grad():
        out = ref_model(degraded)

        def expect(lam, sigma):
            return map_loss(out.restored, target, out.source_latent, out.bary_latent, out.residual, de_ids, domains,
                            torch.tensor(lam), ref_pots, l1_weight=sigma)[0].item()
        want = expect(lambdas, 5.0)
        assert abs(want - expect([1 / 3] * 3, 5.0)) > 1e-3 * abs(want)  # the test can tell the lambdas apart
        assert abs(want - expect(lambdas, 10000.0)) > 1e-3 * abs(want)
    assert got == pytest.approx(want, rel=1e-5)


def test_an_iteration_does_not_depend_on_the_gradients_the_previous_one_left():
    """Every update starts from zeroed gradients: a second iteration after the first trains exactly as one after
    the first with every .grad cleared by hand (a missing zero_grad on either optimizer accumulated the previous
    iteration's gradients; one iteration alone, as above, cannot show it)."""
    first = fixed_batch()
    second = tuple(t.flip(-1) if t.dim() == 4 else t for t in first)
    runs = []
    for clear in (False, True):
        model, pots = tiny_nets()
        training = Training(model, model, pots, build_optimizer("RMSprop", model.parameters(), 1e-4),
                            build_optimizer("RMSprop", pots.parameters(), 1e-4), LAMBDAS, l1_weight=10000.0)
        train_step(training, first)
        if clear:
            for p in list(model.parameters()) + list(pots.parameters()):
                p.grad = None
        train_step(training, second)
        runs.append([p.detach().clone() for p in list(model.parameters()) + list(pots.parameters())])
    for a, b in zip(*runs):
        assert torch.equal(a, b)
