"""--backbone PromptIR (the L1 baseline) and BaryPromptIR (the full objective) in the same harness:
two tiny epochs train and save, a resumed run ends bit-identical to an uninterrupted one, and the
tester evaluates the run's folder."""
import json

import pytest
import torch
from _train_data import make_train_tree, make_val_tree, train_flags

import tester_bary
from net.presets import build_model
from utils.checkpoints import read_checkpoint, read_latest
from utils.train import engine
from utils.train.options import get_args_parser

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ITERS = 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_train_tree(tmp_path_factory.mktemp("backbone_data"))


def train(data, out, backbone, *extra):
    flags = train_flags(data, out) + ["--iters-per-epoch", str(ITERS), "--backbone", backbone, *extra]
    assert engine.main(get_args_parser().parse_args(flags)) == 0
    return read_checkpoint(read_latest(out / "ckpt"))


def tensors_equal(a, b, what):
    assert a.keys() == b.keys(), what
    for k in a:
        if isinstance(a[k], dict):
            tensors_equal(a[k], b[k], f"{what}.{k}")
        elif isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), f"{what}.{k} differs"
        else:
            assert a[k] == b[k], f"{what}.{k} differs"


@pytest.mark.parametrize("backbone, wb", [("PromptIR", False), ("BaryPromptIR", True)])
def test_train_resume_exactly_and_evaluate(data, tmp_path, backbone, wb, capsys):
    straight = train(data, tmp_path / "straight", backbone, "--nEpochs", "2")
    # the start line named "K=3 sources" for the L1 baseline too, which has no barycenter and no sources
    start = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"=> {backbone} "))
    assert ("K=3 sources" in start) == wb and ("3 degradation types, L1 loss" in start) == (not wb), start
    train(data, tmp_path / "resumed", backbone, "--nEpochs", "1")
    resumed = train(data, tmp_path / "resumed", backbone, "--nEpochs", "2", "--resume", "auto")

    assert (resumed["epoch"], resumed["global_step"], resumed["backbone"]) == (2, 2 * ITERS, backbone)
    for key in ("model", "optimizer", "potentials", "potentials_optimizer"):
        if straight[key] is None:
            assert resumed[key] is None and not wb
        else:
            tensors_equal(straight[key], resumed[key], key)
    assert (straight["potentials"] is not None) == wb  # the full objective trains potentials, the baseline not
    build_model(backbone, "tiny").load_state_dict(straight["model"])

    log = [json.loads(line) for line in (tmp_path / "straight" / "ckpt" / "log.jsonl").read_text().splitlines()]
    parts = set().union(*(r.keys() for r in log if r["kind"] == "iter"))
    assert ({"transport", "orthogonality", "contrastive", "potentials", "congruence"} <= parts) == wb
    assert {"map", "l1"} <= parts

    deg, tar = make_val_tree(tmp_path / "val")
    args = tester_bary.get_args_parser().parse_args([
        "--model", str(tmp_path / "resumed" / "ckpt"), "--degset", str(deg), "--tarset", str(tar),
        "--save", str(tmp_path / "test"), "--device", "cpu", "--no-progress"])
    results = tester_bary.main(args)
    (row,) = results["tasks"].values()
    assert row["count"] == 2 and 0 < row["psnr"] < 100
    assert results["protocol"]["backbone"] == backbone and results["protocol"]["config_from"] == "checkpoint"


def test_width_overrides_train_and_resume_only_into_the_same_widths(data, tmp_path):
    """--dim (e.g. a capacity-matched baseline) builds, is recorded, names the default run folder, and a
    checkpoint resumes only into the same widths."""
    from utils.train.options import ConfigError, run_dir

    args = get_args_parser().parse_args(["--backbone", "Restormer", "--preset", "tiny", "--dim", "24"])
    assert run_dir(args, 3) == "checkpoint/Restormer_tiny_d24_3D_p128"
    ck = train(data, tmp_path, "Restormer", "--nEpochs", "1", "--dim", "24")
    assert ck["model_config"]["dim"] == 24 and ck["args"]["dim"] == 24
    with pytest.raises(ConfigError, match=r"--dim 24 there, 26 here"):
        train(data, tmp_path, "Restormer", "--nEpochs", "2", "--dim", "26", "--resume", "auto")


def test_build_potentials_fits_the_latent_of_each_wb_backbone_and_none_for_the_l1_ones():
    """The trainers, the study and the benchmarks build the potentials through this one function."""
    from net.presets import build_model, build_potentials
    for backbone in ("BaryNet", "BaryPromptIR"):
        model = build_model(backbone, "tiny", dim=8)
        pots = build_potentials(backbone, model, 3, 32)
        z = torch.zeros(2, model.latent_channels, 4, 4)
        assert pots.num_potentials == 3 and pots.channels == 64 and pots(z, 1).shape == (2,), backbone
    for backbone in ("Restormer", "PromptIR"):
        assert build_potentials(backbone, build_model(backbone, "tiny", dim=8), 3, 32) is None
