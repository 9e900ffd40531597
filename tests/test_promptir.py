"""PromptIR against the reference's vectors, its presets, and reading its released checkpoint formats."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _conformance import CONFORMANCE, golden_weights, key_spec

from net.presets import PRESETS, PROMPT_PRESETS, ModelConfigError, build_model, model_config
from net.promptir import PromptIR
from utils.checkpoints import LEGACY_UNUSED_KEYS, load_model_weights

# Shapes of the reference's never-used layers at dim 48 (tests/conformance/legacy_unused_keys.txt).
LEGACY_SHAPES = {"chnl_reduce1.weight": (64, 64, 1, 1), "chnl_reduce2.weight": (128, 128, 1, 1),
                 "chnl_reduce3.weight": (256, 320, 1, 1), "reduce_noise_channel_1.weight": (48, 112, 1, 1),
                 "reduce_noise_channel_2.weight": (96, 224, 1, 1), "reduce_noise_channel_3.weight": (192, 448, 1, 1)}


@pytest.fixture(scope="module")
def gold():
    return torch.load(CONFORMANCE / "golden_promptir.pt", weights_only=True)


@pytest.fixture(scope="module")
def gold_weights():
    return golden_weights("promptir_keys.txt")


def _depthwise_by_shifts(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 3x3 depthwise ``conv`` (stride 1, zero padding 1) as the sum of nine shifted, scaled copies of ``x``."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1))
    out = sum(padded[:, :, i:i + h, j:j + w] * conv.weight[:, 0, i, j, None, None] for i in range(3) for j in range(3))
    return out if conv.bias is None else out + conv.bias[:, None, None]


def _vectorise_depthwise(net: nn.Module) -> int:
    """Evaluate ``net``'s depthwise convolutions by :func:`_depthwise_by_shifts`; returns how many.

    PyTorch's CPU convolution has no float64 depthwise kernel: it runs one channel at a time, which makes
    this forward take over two minutes on two cores. The sum of shifted copies is the same function (it
    differs from it by rounding, ~1e-16 in float64); the float32 test below runs the real convolutions.
    """
    count = 0
    for m in net.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels and m.kernel_size == (3, 3)
            assert m.padding == (1, 1) and m.stride == (1, 1) and m.dilation == (1, 1)
            m.forward = lambda x, conv=m: _depthwise_by_shifts(conv, x)
            count += 1
    return count


def test_state_dict_matches_reference_names_and_shapes():
    with torch.device("meta"):  # names and shapes only: nothing allocated, nothing initialised
        net = PromptIR()
    got = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    assert got == key_spec("promptir_keys.txt")
    assert len(got) == 542
    assert sum(p.numel() for p in net.parameters()) == 35_376_967
    assert not LEGACY_UNUSED_KEYS & net.state_dict().keys()


def test_importable_from_the_package():
    import net
    from net import PromptIR as exported

    assert exported is PromptIR and "PromptIR" in net.__all__


def test_forward_float64_reproduces_golden(gold, gold_weights):
    net = PromptIR().double().eval()
    net.load_state_dict(gold_weights)
    assert _vectorise_depthwise(net) == 2 * (4 + 6 + 6 + 8 + 6 + 6 + 4 + 4 + 3)  # qkv_dwconv and dwconv per block
    with torch.no_grad():
        e1, e2, e3, latent = net.encode(gold["input"])
        torch.testing.assert_close(net.prompt3(latent), gold["prompt3"], rtol=1e-7, atol=0)
        restored = net.decode(gold["input"], e1, e2, e3, latent)
    torch.testing.assert_close(restored, gold["restored"], rtol=1e-7, atol=0)


def test_float32_forward_agrees_with_float64_golden(gold, gold_weights):
    net = PromptIR().eval()
    net.load_state_dict({k: v.float() for k, v in gold_weights.items()})
    with torch.no_grad():
        restored = net(gold["input"].float())
    assert isinstance(restored, torch.Tensor) and restored.shape == gold["input"].shape
    diff = (restored.double() - gold["restored"]).abs().max().item()
    assert diff < 1e-3, f"max |fp32 - fp64 golden| = {diff}"


def test_widths_derive_from_dim_and_prompt_dims():
    with torch.device("meta"):
        sd = PromptIR(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, prompt_dims=(4, 8, 12)).state_dict()
    assert sd["noise_level3.norm1.body.weight"].shape == (8 * 8 + 12,)          # latent 8d + prompt3
    assert sd["reduce_noise_level3.weight"].shape == (32, 76, 1, 1)            # -> 4d
    assert sd["reduce_chan_level3.weight"].shape == (32, 48, 1, 1)             # 6d -> 4d
    assert sd["reduce_noise_level2.weight"].shape == (32, 40, 1, 1)            # 4d + prompt2 -> 4d
    assert sd["reduce_noise_level1.weight"].shape == (16, 20, 1, 1)            # 2d + prompt1 -> 2d
    assert sd["prompt2.prompt_param"].shape == (1, 5, 8, 32, 32)
    assert sd["prompt3.linear_layer.weight"].shape == (5, 64)                  # reads the 8d latent


def test_presets_build_promptir():
    assert PROMPT_PRESETS.keys() == PRESETS.keys()  # --preset offers the same names for every backbone
    paper = model_config("paper", backbone="PromptIR")
    with torch.device("meta"):  # the paper preset is the reference default, PromptIR()
        assert {k: PromptIR().config[k] for k in paper} == paper
        assert {k: build_model("PromptIR", "paper").config[k] for k in paper} == paper
    assert paper["prompt_dims"] == [64, 128, 320] and paper["prompt_len"] == 5
    assert paper["prompt_sizes"] == [64, 32, 16] and paper["dim"] == 48
    torch.manual_seed(0)
    tiny = build_model("PromptIR", "tiny").eval()
    assert {k: tiny.config[k] for k in model_config("tiny", backbone="PromptIR")} == model_config("tiny",
                                                                                                 backbone="PromptIR")
    assert 1_000_000 < sum(p.numel() for p in tiny.parameters()) < 3_000_000
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        y = tiny(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_prompt_settings_are_checked():
    with pytest.raises(ModelConfigError, match="unknown key"):
        model_config("tiny", prompt_len=3)  # BaryNet takes no prompts
    for bad, word in ((dict(prompt_dims=[16, 32]), "prompt_dims must be a list of 3"),
                      (dict(prompt_sizes=[64, 32, 0]), "prompt_sizes"), (dict(prompt_len=0), "prompt_len"),
                      (dict(prompt_dims=[16, 32, 66]), r"heads\[2\] = 4 must .* divide"),
                      (dict(prompt_len=64, prompt_sizes=[256, 256, 256], prompt_dims=[1024] * 3), "parameters")):
        with pytest.raises(ModelConfigError, match=word):
            model_config("tiny", backbone="PromptIR", **bad)


def _tiny_pair():
    torch.manual_seed(1)
    src = build_model("PromptIR", "tiny").eval()
    torch.manual_seed(2)
    return src, build_model("PromptIR", "tiny").eval()


def _legacy(prefix=""):
    return {prefix + k: torch.randn(shape) for k, shape in LEGACY_SHAPES.items()}


def _same_outputs(a, b):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_lightning_checkpoint_loads(tmp_path):
    src, dst = _tiny_pair()
    state = {**{"net." + k: v for k, v in src.state_dict().items()}, **_legacy("net.")}
    path = tmp_path / "epoch=119-step=100.ckpt"
    torch.save({"epoch": 119, "global_step": 100, "pytorch-lightning_version": "2.0.1", "state_dict": state,
                "hyper_parameters": {"lr": 2e-4, "epochs": 120, "de_type": ["denoise_15", "derain", "dehaze"]},
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 2e-4, "params": [0]}]}]}, path)
    obj = load_model_weights(dst, path)
    assert obj["epoch"] == 119
    _same_outputs(src, dst)


@pytest.mark.parametrize("prefix", ["", "net."])
def test_plain_state_dict_loads(tmp_path, prefix):
    src, dst = _tiny_pair()
    path = tmp_path / "promptir.pth"
    torch.save({**{prefix + k: v for k, v in src.state_dict().items()}, **_legacy(prefix)}, path)
    load_model_weights(dst, path)
    _same_outputs(src, dst)


def test_project_checkpoint_of_promptir_loads(tmp_path):
    src, dst = _tiny_pair()
    path = tmp_path / "run.pth"
    torch.save({"model": src.state_dict(), "model_config": src.config, "backbone": "PromptIR"}, path)
    load_model_weights(dst, path)
    _same_outputs(src, dst)
