"""BaryNet, Potentials and the objective against the reference implementation's vectors."""
import pytest
import torch
from _conformance import golden, golden_weights, key_spec

from net import BaryNet, Potentials
from utils.data.degradations import ALL_IN_ONE_3D, DE_IDS, barycenter_weights, domain_of, epoch_counts
from utils.train.losses import congruence_loss, map_loss, potentials_loss


@pytest.fixture(scope="module")
def gold():
    return golden()


@pytest.fixture(scope="module")
def golden_net_f64():
    net = BaryNet().double().eval()
    net.load_state_dict(golden_weights("barynet_keys.txt"))
    return net


@pytest.fixture(scope="module")
def golden_potentials(gold):
    case = gold["loss_case"]
    pot = Potentials(case["num_potentials"], 384, case["patch_size"]).double()
    pot.load_state_dict(golden_weights("potentials_k3_p64_keys.txt"))
    return pot


def test_barynet_state_dict_matches_reference_names_and_shapes():
    got = [(k, tuple(v.shape)) for k, v in BaryNet().state_dict().items()]
    assert got == key_spec("barynet_keys.txt")
    assert len(got) == 760
    assert sum(p.numel() for p in BaryNet().parameters()) == 53_549_774  # docs/METHOD.md §1: 53.55 M


def test_potentials_state_dict_matches_reference():
    got = [(k, tuple(v.shape)) for k, v in Potentials(3, 384, 64).state_dict().items()]
    assert got == key_spec("potentials_k3_p64_keys.txt")


@pytest.mark.slow
def test_forward_float64_reproduces_golden_outputs(gold, golden_net_f64):
    with torch.no_grad():
        out = golden_net_f64(gold["input"])
    restored, source, bary, residual = out  # unpacks as a 4-tuple
    assert out._fields == ("restored", "source_latent", "bary_latent", "residual")
    for name, value in zip(out._fields, (restored, source, bary, residual)):
        torch.testing.assert_close(value, gold["outputs"][name], rtol=1e-7, atol=0, msg=name)


def _loss_inputs(gold):
    case = gold["loss_case"]
    de_ids = torch.tensor(case["de_ids"])
    # the project's own numbering of the 3D setting: σ15, σ25 -> domain 0 (one family); derain -> 1; dehaze -> 2
    domain = {DE_IDS[name]: k for name, k in domain_of(ALL_IN_ONE_3D).items()}
    domains = torch.tensor([domain[int(d)] for d in de_ids])
    lambdas = torch.as_tensor(case["lambdas"], dtype=torch.float64)
    return case, de_ids, domains, lambdas


def test_domains_and_lambdas_are_the_references(gold):
    """The golden case's domains (conformance README: σ15, σ25 -> 0, derain -> 1, dehaze -> 2), its domain counts
    (every listed id of data_dir/ after the paper's repetition) and its λ, from the project's own functions."""
    case, de_ids, domains, _ = _loss_inputs(gold)
    assert de_ids.tolist() == [0, 3, 1, 3] and domains.tolist() == [0, 1, 0, 1]
    listed = {"denoise": 5144, "derain": 200, "dehaze": 72135}  # the lines of data_dir/'s three id lists
    assert epoch_counts(ALL_IN_ONE_3D, listed)[1] == case["domain_counts"]
    torch.testing.assert_close(torch.tensor(barycenter_weights(case["domain_counts"]), dtype=torch.float64),
                               torch.as_tensor(case["lambdas"], dtype=torch.float64), rtol=1e-12, atol=0)


def test_losses_reproduce_every_golden_term(gold, golden_potentials):
    case, de_ids, domains, lambdas = _loss_inputs(gold)
    out, ref = gold["outputs"], gold["losses"]
    total, parts = map_loss(out["restored"], case["target"], out["source_latent"], out["bary_latent"],
                            out["residual"], de_ids, domains, lambdas, golden_potentials,
                            l1_weight=case["l1_weight"])
    for name in ("transport", "orthogonality", "contrastive", "potential", "weighted", "l1"):
        assert parts[name].shape == ref[name].shape, name
        torch.testing.assert_close(parts[name], ref[name], rtol=1e-7, atol=0, msg=name)
    torch.testing.assert_close(total, ref["map_loss"], rtol=1e-7, atol=0)
    torch.testing.assert_close(potentials_loss(out["bary_latent"], domains, lambdas, golden_potentials),
                               ref["potentials_loss"], rtol=1e-7, atol=0)
    torch.testing.assert_close(congruence_loss(out["bary_latent"][-1], lambdas, golden_potentials),
                               ref["congruence_loss"], rtol=1e-7, atol=0)


def test_float32_forward_agrees_with_float64_golden(gold):
    net = BaryNet().eval()
    net.load_state_dict(golden_weights("barynet_keys.txt", torch.float32))
    with torch.no_grad():
        out = net(gold["input"].float())
    for name, value in zip(out._fields, out):
        diff = (value.double() - gold["outputs"][name]).abs().max().item()
        assert diff < 1e-3, f"{name}: max |fp32 - fp64 golden| = {diff}"
