"""BaryPromptIR (BaryIR on the PromptIR backbone): outputs, gradients, the BaryNet parts it shares, its prompts
and its presets."""
import pytest
import torch

import net
from net import BaryNet, BaryOutput, BaryPromptIR
from net.presets import (
    BACKBONES,
    PROMPT_PRESETS,
    WB_BACKBONES,
    ModelConfigError,
    build_model,
    check_model_config,
    model_config,
)
from net.promptir import PromptGenBlock

# The modules BaryPromptIR widens to take a prompt; every other BaryNet module keeps its name and shape.
WIDENED = ("noise_level1.", "noise_level2.", "noise_level3.",
           "reduce_noise_level1.", "reduce_noise_level2.", "reduce_noise_level3.")
PROMPTS = ("prompt1.", "prompt2.", "prompt3.")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("BaryPromptIR", "tiny")


def _shapes(model):
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (2, 3, 48, 64)])
def test_tiny_forward_returns_a_bary_output(tiny, shape):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = tiny.eval()(x)
    assert isinstance(out, BaryOutput)
    b, _, h, w = shape
    latent = (b, 8 * tiny.config["dim"], h // 8, w // 8)
    assert out.restored.shape == x.shape
    assert out.source_latent.shape == out.bary_latent.shape == out.residual.shape == latent
    assert tiny.latent_channels == 8 * tiny.config["dim"] == 128
    torch.testing.assert_close(out.residual, out.source_latent - out.bary_latent, rtol=0, atol=0)
    assert all(torch.isfinite(t).all() for t in out)


def test_bary_latent_is_the_forward_pass_wb_latent(tiny):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(tiny.eval().bary_latent(x), tiny(x).bary_latent, rtol=0, atol=0)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(3)
    model = build_model("BaryPromptIR", "tiny").train()
    out = model(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4)))
    sum(t.mean() for t in out).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0]
    assert not bad, f"zero or non-finite gradients: {bad}"


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_barynet_parts_have_barynets_names_and_shapes(preset):
    with torch.device("meta"):  # names and shapes only
        bary, ours = build_model("BaryNet", preset), build_model("BaryPromptIR", preset)
    theirs, mine = _shapes(bary), dict(_shapes(ours))
    # BaryNet's keys, in BaryNet's order, then the prompts.
    assert [k for k, _ in _shapes(ours) if not k.startswith(PROMPTS)] == [k for k, _ in theirs]
    differ = sorted(k for k, s in theirs if mine[k] != s)
    assert differ and all(k.startswith(WIDENED) for k in differ)
    assert all(mine[k] == s for k, s in theirs if not k.startswith(WIDENED))
    d, (p1, p2, p3) = ours.config["dim"], ours.config["prompt_dims"]
    assert mine["noise_level3.norm1.body.weight"] == (16 * d + p3,)       # cat[b, r] and its prompt
    assert mine["reduce_noise_level3.weight"] == (4 * d, 16 * d + p3, 1, 1)
    assert mine["reduce_noise_level2.weight"] == (4 * d, 4 * d + p2, 1, 1)
    assert mine["reduce_noise_level1.weight"] == (2 * d, 2 * d + p1, 1, 1)


def test_barynet_weights_load_into_the_shared_parts():
    torch.manual_seed(5)
    bary = build_model("BaryNet", "tiny").eval()
    torch.manual_seed(6)
    ours = build_model("BaryPromptIR", "tiny").eval()
    shared = {k: v for k, v in bary.state_dict().items() if not k.startswith(WIDENED)}
    result = ours.load_state_dict(shared, strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith(WIDENED + PROMPTS) for k in result.missing_keys)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():  # the prompts act after the latent split: the WB latent is BaryNet's
        torch.testing.assert_close(ours.bary_latent(x), bary.bary_latent(x), rtol=0, atol=0)


def test_prompts_exist_and_read_the_main_decoder_widths(tiny):
    d, cfg = tiny.config["dim"], tiny.config
    params = dict(tiny.named_parameters())
    for level, lin_dim in ((1, 2 * d), (2, 4 * d), (3, 16 * d)):
        block = getattr(tiny, f"prompt{level}")
        assert isinstance(block, PromptGenBlock)
        p, s = cfg["prompt_dims"][level - 1], cfg["prompt_sizes"][level - 1]
        assert params[f"prompt{level}.prompt_param"].shape == (1, cfg["prompt_len"], p, s, s)
        assert params[f"prompt{level}.linear_layer.weight"].shape == (cfg["prompt_len"], lin_dim)
        assert params[f"prompt{level}.conv3x3.weight"].shape == (p, p, 3, 3)
    assert not any(k.startswith("resprompt") for k in params)  # the residual path has none


def test_widths_derive_from_dim():
    with torch.device("meta"):
        sd = BaryPromptIR(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, prompt_dims=(4, 8, 12),
                          prompt_len=3, prompt_sizes=(8, 4, 2)).state_dict()
    assert sd["noise_level3.attn.qkv.weight"].shape == (3 * 140, 140, 1, 1)   # 16d + 12
    assert sd["reduce_noise_level2.weight"].shape == (32, 40, 1, 1)          # 4d + 8 -> 4d
    assert sd["noise_level1.norm2.body.weight"].shape == (20,)               # 2d + 4
    assert sd["prompt3.linear_layer.weight"].shape == (3, 128)              # reads cat[b, r], 16d
    assert sd["prompt1.prompt_param"].shape == (1, 3, 4, 8, 8)
    assert sd["resreduce_noise_level3.weight"].shape == (64, 64, 1, 1)       # BaryNet's, 8d -> 8d


def test_presets_and_config_round_trip(tiny):
    assert BACKBONES["BaryPromptIR"] is BaryPromptIR and net.BaryPromptIR is BaryPromptIR
    assert "BaryPromptIR" in net.__all__
    assert WB_BACKBONES == frozenset({"BaryNet", "BaryPromptIR"})
    assert isinstance(tiny, BaryNet)  # code written for BaryNet (encode, barycenter, bary_latent) applies
    for preset in ("tiny", "paper"):
        cfg = model_config(preset, backbone="BaryPromptIR")
        assert cfg == {**model_config(preset), **PROMPT_PRESETS[preset]}
    preset = model_config("tiny", backbone="BaryPromptIR")
    assert {k: tiny.config[k] for k in preset} == preset
    again = check_model_config(tiny.config, "round trip", backbone="BaryPromptIR")
    assert again == tiny.config
    with torch.device("meta"):
        assert _shapes(BaryPromptIR(**again)) == _shapes(tiny)


def test_parameter_counts_stated_in_the_method_document():
    with torch.device("meta"):
        counts = {p: sum(t.numel() for t in build_model("BaryPromptIR", p).parameters()) for p in ("paper", "tiny")}
    assert counts == {"paper": 65_267_603, "tiny": 3_731_412}


def test_prompt_settings_are_checked_for_barypromptir():
    # 16 * 16 + 66 = 322 channels cannot be split into heads[2] = 4 heads
    with pytest.raises(ModelConfigError, match=r"heads\[2\] = 4 must .* divide .*BaryPromptIR"):
        model_config("tiny", backbone="BaryPromptIR", prompt_dims=[16, 32, 66])
    with pytest.raises(ModelConfigError, match="prompt_len"):
        model_config("tiny", backbone="BaryPromptIR", prompt_len=0)
    with pytest.raises(ModelConfigError, match="unknown key"):
        check_model_config(model_config("tiny", backbone="BaryPromptIR"), backbone="BaryNet")
