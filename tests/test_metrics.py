"""utils/eval/metrics.py against independent implementations, on natural images from scikit-image."""
import warnings

import numpy as np
import pytest
import torch
from scipy.signal import correlate2d
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from utils.eval import metrics as M

torch.set_num_threads(1)


def _pairs():
    """(clean, distorted) 8-bit RGB pairs: crops of three photographs, distorted three ways."""
    rng = np.random.default_rng(0)
    out = []
    for photo, (y, x) in ((data.astronaut(), (40, 180)), (data.chelsea(), (60, 120)), (data.coffee(), (100, 200))):
        clean = photo[y:y + 61, x:x + 75]
        noisy = np.clip(clean + rng.normal(0, 12, clean.shape), 0, 255).astype(np.uint8)
        dark = (clean * 0.8).astype(np.uint8)
        shifted = np.roll(clean, 1, axis=1)
        out += [(clean, noisy), (clean, dark), (clean, shifted)]
    return out


PAIRS = _pairs()


# --------------------------------------------------------------------------- independent formulas

def luma_by_formula(img):
    """BasicSR's Y: 16 + (65.481 R + 128.553 G + 24.966 B) / 255, channel by channel."""
    r, g, b = (img[..., c].astype(np.float64) for c in range(3))
    return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def psnr_by_formula(a, b):
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).sum() / a.size
    return 10 * np.log10(255.0 ** 2 / mse)


def ssim_by_formula(a, b):
    """Gaussian SSIM the long way: an 11x11 2-D kernel from its definition, scipy 'valid' correlation."""
    r = np.arange(-5, 6, dtype=np.float64)
    k2 = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5 ** 2))
    k2 /= k2.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def one(x, y):
        f = lambda z: correlate2d(z, k2, mode="valid")  # noqa: E731
        mx, my = f(x), f(y)
        sxx, syy, sxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
        return np.mean((2 * mx * my + c1) * (2 * sxy + c2) / ((mx * mx + my * my + c1) * (sxx + syy + c2)))

    a, b = a.astype(np.float64), b.astype(np.float64)
    if a.ndim == 2:
        return one(a, b)
    return np.mean([one(a[..., c], b[..., c]) for c in range(a.shape[2])])


# --------------------------------------------------------------------------- tests

@pytest.mark.parametrize("k", range(len(PAIRS)))
def test_rgb_metrics_equal_skimage(k):
    clean, deg = PAIRS[k]
    p, s = M.image_metrics(deg, clean)  # the reference protocol is the default
    assert abs(p - peak_signal_noise_ratio(clean, deg, data_range=255)) < 1e-10
    assert abs(s - structural_similarity(clean, deg, data_range=255, channel_axis=2)) < 1e-10
    assert abs(M.psnr(deg, clean) - p) < 1e-12 and abs(M.ssim_skimage(deg, clean) - s) < 1e-12


@pytest.mark.parametrize("k", range(len(PAIRS)))
def test_y_and_gaussian_equal_basicsr_formulas(k):
    clean, deg = PAIRS[k]
    yc, yd = luma_by_formula(clean), luma_by_formula(deg)
    assert np.abs(M.rgb_to_y(clean) - yc).max() < 1e-10
    assert 16 <= yc.min() and yc.max() <= 235
    p, s = M.image_metrics(deg, clean, metric_space="y", ssim="gaussian")
    assert abs(p - psnr_by_formula(yd, yc)) < 1e-10
    assert abs(s - ssim_by_formula(yd, yc)) < 1e-10
    # RGB with the Gaussian window: mean over the three channels.
    _, s_rgb = M.image_metrics(deg, clean, metric_space="rgb", ssim="gaussian")
    assert abs(s_rgb - ssim_by_formula(deg, clean)) < 1e-10
    # Y with skimage's window.
    _, s_y = M.image_metrics(deg, clean, metric_space="y", ssim="skimage")
    assert abs(s_y - structural_similarity(yd, yc, data_range=255)) < 1e-10


def test_gaussian_kernel_is_opencv_s():
    import cv2
    assert np.abs(M.gaussian_kernel_1d(11, 1.5) - cv2.getGaussianKernel(11, 1.5)[:, 0]).max() < 1e-15


def test_crop_border():
    clean, deg = PAIRS[1]
    p, s = M.image_metrics(deg, clean, metric_space="y", ssim="gaussian", crop_border=4)
    yc, yd = luma_by_formula(clean)[4:-4, 4:-4], luma_by_formula(deg)[4:-4, 4:-4]
    assert abs(p - psnr_by_formula(yd, yc)) < 1e-10 and abs(s - ssim_by_formula(yd, yc)) < 1e-10
    with pytest.raises(ValueError, match="crop-border"):
        M.image_metrics(deg, clean, crop_border=40)


def test_identical_images():
    clean = PAIRS[0][0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a division by zero would warn
        for space in M.METRIC_SPACES:
            for kind in M.SSIM_KINDS:
                p, s = M.image_metrics(clean, clean.copy(), space, kind)
                assert p == M.MAX_PSNR and abs(s - 1.0) < 1e-12


def test_bad_arguments():
    a = PAIRS[0][0]
    with pytest.raises(ValueError, match="equal shapes"):
        M.image_metrics(a, a[:-1])
    with pytest.raises(ValueError, match="metric-space"):
        M.image_metrics(a, a, metric_space="lab")
    with pytest.raises(ValueError, match="at least 11"):
        M.ssim_gaussian(a[:8, :8], a[:8, :8])


# --------------------------------------------------------------------------- LPIPS and FID

def test_lpips_missing_weights_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert M.lpips_backbone_path("alex") == expected
    with pytest.raises(M.MetricUnavailable) as err:
        M.LPIPS("alex")
    assert str(expected) in str(err.value) and "nothing is downloaded" in str(err.value)
    assert not expected.exists()


@pytest.mark.parametrize("content", [b"", b"junk"])
def test_damaged_lpips_weights_are_one_error_naming_the_file(tmp_path, monkeypatch, content):
    """An empty or damaged weights file ended the tester in a traceback (EOFError / UnpicklingError)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = M.lpips_backbone_path("alex")
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(M.MetricUnavailable, match=rf"{path} cannot be loaded \(.*\); the file is damaged.*download"):
        M.LPIPS("alex")
    assert path.read_bytes() == content  # the user's file is left as it is


def test_lpips_scales_inputs_to_minus_one_one():
    img = np.array([[[0, 255, 51]]], dtype=np.uint8)
    t = M.LPIPS.to_input(img)
    assert t.shape == (1, 3, 1, 1) and torch.allclose(t.flatten(), torch.tensor([-1.0, 1.0, -0.6]))
    # The code path with a random trunk (the values mean nothing, the plumbing is checked):
    # our [-1, 1] inputs must give what the package computes from [0, 1] with normalize=True.
    torch.manual_seed(0)
    metric = M.LPIPS("alex", pretrained_trunk=False)
    clean, deg = PAIRS[0]
    d = metric(deg[:64, :64], clean[:64, :64])
    with torch.inference_mode():
        ref = metric.model(torch.from_numpy(deg[:64, :64]).permute(2, 0, 1)[None].float() / 255,
                           torch.from_numpy(clean[:64, :64]).permute(2, 0, 1)[None].float() / 255, normalize=True)
    assert abs(d - float(ref)) < 1e-6 and d > 0
    assert metric(clean[:64, :64], clean[:64, :64]) == 0.0


def test_frechet_distance_closed_forms():
    # One dimension: (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s1, s2.
    assert abs(M.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]]))
               - (4.0 + 1.0)) < 1e-9
    # Diagonal covariances: sum over dimensions.
    v1, v2 = np.array([1.0, 2.0, 0.5]), np.array([4.0, 0.5, 0.5])
    mu1, mu2 = np.zeros(3), np.array([1.0, -1.0, 2.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert abs(M.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) - expected) < 1e-9


def test_fid_unavailable_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(M.MetricUnavailable, match="pytorch-fid|pt_inception"):
        M.FID()


def test_no_pair_scores_above_an_identical_one():
    """Identical images gave 100 dB, and a 512x512 copy with one value off by 1 gave 107 dB: ranked above."""
    a = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    b = a.copy()
    b[0, 0, 0] += 1
    assert M.psnr(a, a) == M.MAX_PSNR and M.psnr(a, b) <= M.MAX_PSNR
