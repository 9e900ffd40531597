"""Shapes, configurability, input checks and gradients of the networks."""
import pytest
import torch

from net import BaryNet, Potentials
from net.blocks import TransformerBlock
from net.presets import build_model, model_config
from utils.train.losses import contrastive, orthogonality, transport_cost


def test_small_config_runs_forward_and_backward():
    torch.manual_seed(0)
    net = BaryNet(dim=16, num_blocks=[1, 1, 1, 2], num_refinement_blocks=1)
    x = torch.rand(2, 3, 64, 64)
    restored, z, b, r = net(x)
    assert restored.shape == x.shape
    assert z.shape == b.shape == r.shape == (2, 128, 8, 8)
    torch.testing.assert_close(r, z - b)
    (restored.abs().mean() + b.pow(2).mean()).backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_widths_derive_from_dim():
    sd = BaryNet(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1).state_dict()
    assert sd["patch_embed.proj.weight"].shape == (8, 3, 3, 3)
    assert sd["reduce_noise_level3.weight"].shape == (32, 128, 1, 1)      # 16d -> 4d
    assert sd["resup4_3.body.0.weight"].shape == (128, 64, 3, 3)         # Upsample(8d)
    assert sd["reduce_chan_level3.weight"].shape == (32, 48, 1, 1)       # 6d -> 4d
    assert sd["output.weight"].shape == (3, 16, 3, 3)                    # 2d -> 3
    assert sd["noise_level1.attn.temperature"].shape == (4, 1, 1)        # heads[2]


@pytest.mark.parametrize("shape", [(1, 3, 60, 64), (1, 3, 64, 36)])
def test_sides_not_multiple_of_8_are_a_clear_error(shape):
    net = build_model("BaryNet", "tiny")
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.rand(shape))
    with pytest.raises(ValueError, match="multiples of 8"):
        build_model("Restormer", "tiny")(torch.rand(shape))


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        build_model("BaryNet", "tiny")(torch.rand(1, 1, 64, 64))


@pytest.mark.parametrize("backbone", ["BaryNet", "Restormer", "PromptIR", "BaryPromptIR"])
def test_a_grey_network_restores_grey_batches(backbone):
    net = build_model(backbone, "tiny", num_blocks=[1, 1, 1, 1], inp_channels=1, out_channels=1)
    out = net(torch.rand(2, 1, 16, 16))
    assert (out[0] if isinstance(out, tuple) else out).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        net(torch.rand(2, 3, 16, 16))


def test_output_channels_other_than_the_input_are_refused():
    # the global residual adds the input to the output: a 1-channel output silently broadcast to 3
    with pytest.raises(ValueError, match="must equal inp_channels"):
        build_model("Restormer", "tiny", out_channels=1)
    with pytest.raises(ValueError, match="must equal inp_channels"):
        BaryNet(inp_channels=1, out_channels=3)


@pytest.mark.parametrize("x, says", [
    ((torch.rand(1, 3, 16, 16) * 255).to(torch.uint8), r"x.float\(\) / 255"),
    (torch.rand(1, 3, 16, 16, dtype=torch.float64), r"x.to\(torch.float32\)"),
    (torch.rand(3, 16, 16), r"x\[None\]"),
    (torch.rand(16, 16, 3), r"x.permute\(2, 0, 1\)\[None\]"),
])
def test_an_input_of_another_dtype_or_layout_is_named_with_its_fix(x, says):
    # torch's own errors were 'expected scalar type Byte but found Float' and a bare shape
    with pytest.raises(ValueError, match=says):
        build_model("BaryNet", "tiny", num_blocks=[1, 1, 1, 1])(x)


def test_the_input_dtypes_a_network_runs_still_run():
    net = build_model("Restormer", "tiny", num_blocks=[1, 1, 1, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(torch.rand(1, 3, 16, 16, dtype=torch.bfloat16)).shape == (1, 3, 16, 16)
        assert net(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)
    assert net.double()(torch.rand(1, 3, 16, 16, dtype=torch.float64)).dtype == torch.float64


def test_restormer_baseline_returns_an_image():
    net = build_model("Restormer", "tiny")
    x = torch.rand(1, 3, 32, 32)
    y = net(x)
    assert isinstance(y, torch.Tensor) and y.shape == x.shape


def test_presets_and_overrides():
    assert {k: BaryNet().config[k] for k in model_config("paper")} == model_config("paper")
    assert build_model("BaryNet", "paper").config["dim"] == 48
    assert build_model("BaryNet", "tiny", dim=24).config["dim"] == 24
    with pytest.raises(ValueError, match="--preset"):
        model_config("huge")
    with pytest.raises(ValueError, match="--backbone"):
        build_model("UNet")


def test_potentials_per_sample_and_per_domain_agree():
    torch.manual_seed(0)
    pot = Potentials(3, channels=128, size=32)
    z = torch.randn(4, 128, 4, 4)
    idx = torch.tensor([2, 0, 1, 2])
    per_sample = pot(z, idx)
    assert per_sample.shape == (4,)
    for i, k in enumerate(idx.tolist()):
        torch.testing.assert_close(per_sample[i], pot(z[i:i + 1], k)[0])
    assert pot.all(z).shape == (4, 3)
    with pytest.raises(ValueError, match="--patch-size 32"):
        pot(torch.randn(4, 128, 8, 8), 0)


def test_loss_terms_behave_as_defined():
    torch.manual_seed(0)
    z = torch.randn(4, 8, 2, 2)
    assert torch.allclose(transport_cost(z, z), torch.zeros(4))
    # b orthogonal to every r -> zero orthogonality term
    b = torch.zeros(4, 8, 2, 2); b[:, 0] = 1.0
    r = torch.zeros(4, 8, 2, 2); r[:, 1] = torch.randn(4, 2, 2)
    assert torch.allclose(orthogonality(b, r), torch.zeros(4))
    # all samples in one class -> contrastive is exactly 0
    assert torch.allclose(contrastive(torch.randn(4, 8, 2, 2), torch.zeros(4, dtype=torch.long)), torch.zeros(4))


@pytest.mark.parametrize("bias", [False, True])
def test_channels_last_split_forms_compute_the_same_blocks(bias):
    """channels_last GDFN/MDTA take the split forms (weight slices), NCHW the plain ones: same values,
    and the same gradients when autograd is on (the trainer's channels_last engine)."""
    from net.blocks import Attention, FeedForward, _split_forms_apply
    torch.manual_seed(0)
    x = torch.randn(2, 24, 16, 12, dtype=torch.float64)
    xcl = x.contiguous(memory_format=torch.channels_last)
    for block in (FeedForward(24, 2.66, bias=bias), Attention(24, num_heads=3, bias=bias)):
        block = block.double()
        if bias:  # non-zero biases, so a wrong bias slice would show
            for m in block.modules():
                if isinstance(m, torch.nn.Conv2d):
                    torch.nn.init.normal_(m.bias)
        assert _split_forms_apply(xcl) and not _split_forms_apply(x)
        with torch.no_grad():
            plain = block(x)
            split = block.to(memory_format=torch.channels_last)(xcl)
        assert split.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(split, plain, rtol=1e-12, atol=1e-12)
        grads = []
        for inp in (x, xcl):
            block.zero_grad()
            inp = inp.clone().requires_grad_()
            (block(inp) * torch.linspace(-1, 1, inp.numel(), dtype=inp.dtype).view_as(inp)).sum().backward()
            grads.append([inp.grad] + [p.grad.clone() for p in block.parameters()])
        for a, b in zip(*grads):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layernorm_type", ["WithBias", "BiasFree"])
def test_a_float64_forward_on_the_cpu_keeps_nchw_activations(layernorm_type):
    """oneDNN has no float64 kernels, and torch's fallback convolution ran about 3x slower on channels_last
    tensors (the float64 conformance forward: 28 -> 10 s): a float64 NCHW input keeps its layout through the
    LayerNorm, same values; float32 still comes out channels_last, where the blocks take their split forms."""
    from net.blocks import LayerNorm, _layernorm_reference
    torch.manual_seed(0)
    norm = LayerNorm(24, layernorm_type)
    torch.nn.init.normal_(norm.body.weight)
    x = torch.randn(2, 24, 8, 6)
    for dtype in (torch.float64, torch.float32):
        norm, x = norm.to(dtype), x.to(dtype)
        with torch.no_grad():
            y = norm(x)
            torch.testing.assert_close(y, _layernorm_reference(x, norm.body.weight, norm.body.bias))
        assert y.is_contiguous() == (dtype == torch.float64 or layernorm_type == "BiasFree"), dtype
        if layernorm_type == "WithBias" and dtype == torch.float32:
            assert y.is_contiguous(memory_format=torch.channels_last)
    model = build_model("BaryNet", "tiny", LayerNorm_type=layernorm_type).double().eval()
    seen = []
    for block in model.modules():
        if isinstance(block, TransformerBlock):
            block.ffn.register_forward_pre_hook(lambda _, args: seen.append(args[0].is_contiguous()))
    with torch.no_grad():
        model(torch.rand(1, 3, 16, 16, dtype=torch.float64))
    assert seen and all(seen)
