"""The fast inference path computes the same function as the plain eager model."""
import numpy as np
import pytest
import torch
from skimage import data

from net import BaryNet, set_layernorm_impl
from net.presets import build_model
from utils.eval.inference import restore
from utils.eval.metrics import psnr


def _plain(net, x):
    set_layernorm_impl(net, "reference")
    with torch.no_grad():
        out = net.eval()(x)
    set_layernorm_impl(net, "fused")
    return out.restored


@pytest.fixture(scope="module")
def paper_net():
    torch.manual_seed(0)
    return BaryNet()


def test_fast_fp32_matches_plain_eager(paper_net):
    torch.manual_seed(1)
    x = torch.rand(2, 3, 64, 64)
    ref = _plain(paper_net, x)
    fast = restore(paper_net, x)
    assert fast.is_contiguous() and fast.dtype == torch.float32
    assert (fast - ref).abs().max().item() < 1e-5


def test_bf16_is_close_to_fp32_on_a_natural_image(paper_net):
    # a 64x64 natural crop (the face): CPUs without native bf16 (AVX2-only machines) emulate it about
    # 30x slower than fp32, and 256x256 took 170 s on such a machine. The agreement falls with the size on
    # these random weights (40.6 dB at 256x256, 37.0 at 512x512; 55.7 dB at 512x512 once trained 25 iterations:
    # BENCHMARKS.md), so this checks the wiring
    img = data.astronaut()[::2, ::2][32:96, 112:176].astype(np.float32) / 255.0
    x = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()
    fp32 = restore(paper_net, x, "fp32").clamp(0, 1).numpy()
    bf16 = restore(paper_net, x, "bf16").clamp(0, 1).numpy()
    assert psnr(bf16, fp32, data_range=1.0) >= 40.0


def test_layernorm_impls_agree_for_biasfree():
    torch.manual_seed(0)
    net = build_model("BaryNet", "tiny", LayerNorm_type="BiasFree")
    x = torch.rand(1, 3, 32, 32)
    assert (restore(net, x) - _plain(net, x)).abs().max().item() < 1e-5


def test_pad_restores_any_size_and_fp16_on_cpu_is_refused():
    net = build_model("Restormer", "tiny")
    torch.nn.init.zeros_(net.output.weight)          # global residual: output == input
    x = torch.rand(1, 3, 37, 50)
    torch.testing.assert_close(restore(net, x, pad=True), x)
    with pytest.raises(ValueError, match="multiples of 8"):
        restore(net, x)
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        restore(net, torch.rand(1, 3, 32, 32), "fp16")


def test_bf16_on_a_cpu_without_bf16_arithmetic_is_said_to_be_slow(monkeypatch, capsys):
    """`--precision bf16` on an AVX2 CPU ran 16x slower than fp32 (0.82 s against 13.2 s for 256x256 in the
    tester) without a word; CPUs with AVX-512 BF16 or AMX run it fast, and GPUs are not concerned."""
    from utils.eval.inference import slow_precision_note
    for bf16, amx in ((False, False), (True, False), (False, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda b=bf16: b)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda a=amx: a)
        note = slow_precision_note("cpu", "bf16")
        assert (note is not None) == (not bf16 and not amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert "many times slower than fp32; pass --precision fp32" in slow_precision_note("cpu", "bf16")
    assert slow_precision_note("cpu", "fp32") is None and slow_precision_note("cuda", "bf16") is None
    import tester_bary
    args = tester_bary.get_args_parser().parse_args(["--precision", "bf16", "--device", "cpu", "--model", "nope.pth",
                                                     "--input", "nope"])
    from utils.errors import UserError
    with pytest.raises(UserError, match="nope"):
        tester_bary.main(args)  # stops at the missing files, after the flag checks
    assert "warning: --precision bf16 on this CPU" in capsys.readouterr().err


def test_pad_reflects_the_input_bottom_right_and_crops_back():
    """--protocol pad and --input restore reflect-pad to multiples of 8 (bottom and right) and crop the result
    back: with a network that is not the identity (a zero output conv hides how the border was filled), the
    restoration is the network on the reflect-padded image, cropped; another padding gives other pixels."""
    import torch.nn.functional as F
    torch.manual_seed(0)
    net = build_model("BaryNet", "tiny").eval()
    x = torch.rand(1, 3, 37, 50)

    def padded_by(mode):
        with torch.no_grad():
            return net(F.pad(x, (0, 6, 0, 3), mode=mode)).restored[..., :37, :50]

    got = restore(net, x, pad=True)
    torch.testing.assert_close(got, padded_by("reflect"), rtol=0, atol=1e-5)
    for other in ("replicate", "constant"):
        assert (got - padded_by(other)).abs().max() > 1e-3, other


def test_restore_leaves_the_model_in_the_mode_it_found_it():
    """A validation pass in the middle of training runs in eval mode and hands the model back still training."""
    net = build_model("BaryNet", "tiny")
    x = torch.rand(1, 3, 16, 16)
    restore(net.train(), x)
    assert net.training and all(m.training for m in net.modules())
    restore(net.eval(), x)
    assert not net.training


def test_restore_of_a_float64_batch_is_that_of_its_float32_values():
    torch.manual_seed(0)
    net = build_model("BaryNet", "tiny")
    x = torch.rand(1, 3, 16, 24)
    got = restore(net, x.double(), pad=True)
    assert got.dtype == torch.float32 and torch.equal(got, restore(net, x, pad=True))


@pytest.mark.parametrize("x, error, says", [
    ((torch.rand(1, 3, 16, 16) * 255).to(torch.uint8), ValueError, r"x.float\(\) / 255"),  # was restored as 0..255
    (np.random.rand(16, 16, 3).astype(np.float32), TypeError, r"torch.from_numpy"),  # was 'has no attribute float'
    (torch.rand(3, 16, 16), ValueError, r"x\[None\]"),  # was 'required rank 4 tensor to use channels_last'
])
def test_restore_names_the_fix_of_an_input_it_cannot_take(x, error, says):
    with pytest.raises(error, match=says):
        restore(build_model("Restormer", "tiny", num_blocks=[1, 1, 1, 1]), x, pad=True)


def test_restore_runs_a_grey_network_on_a_grey_batch_of_any_size():
    net = build_model("BaryNet", "tiny", num_blocks=[1, 1, 1, 1], inp_channels=1, out_channels=1)
    assert restore(net, torch.rand(2, 1, 13, 21), pad=True).shape == (2, 1, 13, 21)
