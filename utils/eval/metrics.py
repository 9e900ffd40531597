"""Image quality metrics on 8-bit images.

Two conventions, chosen by the caller (``tester_bary.py --metric-space/--ssim``):

- **reference** (the default; docs/METHOD.md §4): PSNR with data range 255 and scikit-image's
  default SSIM (7x7 uniform window, sample covariance, per RGB channel, averaged), on the
  8-bit RGB arrays.
- **BasicSR/MATLAB**: the luma of ITU-R BT.601 with its offset,
  ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` on 0..255 values (range 16..235, not
  rounded), and SSIM with an 11x11 Gaussian window (sigma 1.5), ``C1 = (0.01 L)^2``,
  ``C2 = (0.03 L)^2``, L = 255, over the 'valid' region only (no border handling), averaged
  over channels. ``crop_border`` pixels are dropped on every side first. BasicSR computes Y
  in float32; here it is float64 (differences below 1e-4 dB).

Perceptual metrics need pretrained networks, and nothing is downloaded at run time:

- :class:`LPIPS` wraps the ``lpips`` package. Its linear heads ship inside the package; its
  AlexNet/VGG trunk is torchvision's ImageNet checkpoint, read from
  ``$TORCH_HOME/hub/checkpoints/`` (:func:`lpips_backbone_path`). Inputs are scaled from
  [0, 1] to [-1, 1], the range LPIPS was calibrated on.
- :class:`FID` uses the ``pytorch-fid`` package (an optional extra, not in requirements.txt)
  and its FID Inception weights in the same folder (:func:`fid_weights_path`).

Either raises :class:`MetricUnavailable` naming the missing piece and where to put it.
"""
from __future__ import annotations

import importlib.util
import pickle
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage.metrics import structural_similarity

from utils.errors import UserError
from utils.scores import MAX_PSNR  # reported for identical images instead of infinity

METRIC_SPACES = ("rgb", "y")
SSIM_KINDS = ("skimage", "gaussian")
# The smallest side each SSIM's window needs (skimage's default 7x7 window, the 11x11 Gaussian one), and the
# smallest side LPIPS's trunk keeps a feature map at its last layer (AlexNet's stride-4 11x11 convolution and
# two 3x3 stride-2 poolings: 31 px; VGG16's four 2x2 poolings: 16 px; found by trying every side on both).
SSIM_MIN_SIDE = {"skimage": 7, "gaussian": 11}
LPIPS_MIN_SIDE = {"alex": 31, "vgg": 16}

# BT.601 luma with offset (16..235) for R, G, B in 0..255 (BasicSR's rgb2ycbcr, y_only).
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
_Y_OFFSET = 16.0


class MetricUnavailable(UserError, RuntimeError):
    """A metric's network or package is not installed; the message says what to put where."""


# --------------------------------------------------------------------------- pixel metrics

def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR in dB of two same-shape arrays; identical images give :data:`MAX_PSNR`, and no pair more."""
    if a.shape != b.shape:
        raise ValueError(f"PSNR needs equal shapes, got {a.shape} and {b.shape}")
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    if mse == 0:
        return MAX_PSNR
    return min(float(10.0 * np.log10(data_range ** 2 / mse)), MAX_PSNR)  # a near-copy never outranks a copy


def ssim_skimage(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """scikit-image's default SSIM over the channels of ``(H, W, C)`` (or ``(H, W)``) arrays."""
    channel_axis = -1 if a.ndim == 3 else None
    return float(structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=data_range,
                                       channel_axis=channel_axis))


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma with offset of an RGB image on 0..255: ``(H, W, 3) -> (H, W)`` float64 in [16, 235]."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"rgb_to_y expects (H, W, 3), got {img.shape}")
    return img.astype(np.float64) @ _Y_WEIGHTS + _Y_OFFSET


def gaussian_kernel_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised sampled Gaussian ``(size,)``, ``size`` odd (what ``cv2.getGaussianKernel`` gives for sigma > 0)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    k = np.exp(-x ** 2 / (2.0 * sigma ** 2))
    return k / k.sum()


def _filter_valid(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable correlation with ``k`` ``(n,)`` on both axes of ``(H, W)``, keeping only fully covered pixels:
    ``(H - n + 1, W - n + 1)``, float64."""
    r = len(k) // 2
    out = cv2.sepFilter2D(img, cv2.CV_64F, k, k, borderType=cv2.BORDER_REFLECT_101)
    return out[r:-r, r:-r]


def _ssim_gaussian_2d(a: np.ndarray, b: np.ndarray, data_range: float, k: np.ndarray) -> float:
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, k), _filter_valid(b, k)
    var_a = _filter_valid(a * a, k) - mu_a ** 2
    var_b = _filter_valid(b * b, k) - mu_b ** 2
    cov = _filter_valid(a * b, k) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def ssim_gaussian(a: np.ndarray, b: np.ndarray, data_range: float = 255.0, size: int = 11,
                  sigma: float = 1.5) -> float:
    """SSIM of the BasicSR/MATLAB convention (Gaussian window, 'valid' region, mean over channels).

    ``(H, W)`` or ``(H, W, C)`` arrays; H and W must be at least ``size``.
    """
    if a.shape != b.shape:
        raise ValueError(f"SSIM needs equal shapes, got {a.shape} and {b.shape}")
    if min(a.shape[:2]) < size:
        raise ValueError(f"Gaussian SSIM needs images of at least {size}x{size} pixels, got {a.shape[:2]}")
    k = gaussian_kernel_1d(size, sigma)
    a, b = a.astype(np.float64), b.astype(np.float64)
    if a.ndim == 2:
        return _ssim_gaussian_2d(a, b, data_range, k)
    return float(np.mean([_ssim_gaussian_2d(a[..., c], b[..., c], data_range, k) for c in range(a.shape[2])]))


def smallest_scorable_side(ssim: str = "skimage", crop_border: int = 0, lpips_net: str | None = None) -> int:
    """The smallest height and width an image pair can be scored at: the SSIM window after ``crop_border``
    pixels are shaved from every side, and LPIPS's trunk (on the unshaved images) when ``lpips_net``."""
    side = 2 * crop_border + SSIM_MIN_SIDE[ssim]
    return max(side, LPIPS_MIN_SIDE[lpips_net]) if lpips_net else side


def shave(img: np.ndarray, border: int) -> np.ndarray:
    """``(H, W[, C]) -> (H - 2 border, W - 2 border[, C])``: drop ``border`` pixels on every side (BasicSR's
    ``crop_border``)."""
    if border <= 0:
        return img
    if min(img.shape[:2]) <= 2 * border:
        raise ValueError(f"--crop-border {border} leaves nothing of a {img.shape[0]}x{img.shape[1]} image")
    return img[border:-border, border:-border]


def image_metrics(restored: np.ndarray, target: np.ndarray, metric_space: str = "rgb",
                  ssim: str = "skimage", crop_border: int = 0) -> tuple[float, float]:
    """``(psnr, ssim)`` of two 8-bit ``(H, W, 3)`` images under one convention.

    ``metric_space``: ``"rgb"`` (all three channels) or ``"y"`` (BT.601 luma with offset);
    ``ssim``: ``"skimage"`` (7x7 uniform window) or ``"gaussian"`` (11x11, sigma 1.5);
    ``crop_border``: pixels dropped on every side before both metrics.
    """
    if metric_space not in METRIC_SPACES:
        raise ValueError(f"--metric-space must be one of {METRIC_SPACES}, got {metric_space!r}")
    if ssim not in SSIM_KINDS:
        raise ValueError(f"--ssim must be one of {SSIM_KINDS}, got {ssim!r}")
    if restored.shape != target.shape:
        raise ValueError(f"metrics need equal shapes, got {restored.shape} and {target.shape}")
    a, b = shave(restored, crop_border), shave(target, crop_border)
    if metric_space == "y":
        a, b = rgb_to_y(a), rgb_to_y(b)
    s = ssim_skimage(a, b) if ssim == "skimage" else ssim_gaussian(a, b)
    return psnr(a, b), s


# --------------------------------------------------------------------------- pretrained networks

def torch_hub_checkpoints() -> Path:
    """The folder torchvision and torch.hub read pretrained weights from (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _weights_file_name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def lpips_backbone_path(net: str = "alex") -> Path:
    """Where the ImageNet weights of LPIPS's ``net`` trunk must be (``alex`` or ``vgg``)."""
    from torchvision.models import AlexNet_Weights, VGG16_Weights
    urls = {"alex": AlexNet_Weights.IMAGENET1K_V1.url, "vgg": VGG16_Weights.IMAGENET1K_V1.url}
    if net not in urls:
        raise ValueError(f"LPIPS net must be one of {sorted(urls)}, got {net!r}")
    return torch_hub_checkpoints() / _weights_file_name(urls[net])


def _missing(path: Path, what: str, url: str, extra: str = "") -> MetricUnavailable:
    return MetricUnavailable(
        f"{what} needs pretrained weights at {path}, which is missing, and nothing is downloaded at run "
        f"time. Put the file there (download {url} on a machine with internet access and copy it, or "
        f"set TORCH_HOME to a folder whose hub/checkpoints/ holds it){extra}.")


def _damaged(path: Path, what: str, url: str, exc: Exception) -> MetricUnavailable:
    """The weights file at ``path`` is there but cannot be loaded (cut short, not a checkpoint)."""
    why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'}"
    return MetricUnavailable(f"{what}: the pretrained weights at {path} cannot be loaded ({why}); the file is damaged "
                             f"or not those weights. Replace it with a fresh download of {url} (copied from a "
                             f"machine with internet access)")


class LPIPS:
    """LPIPS distance of 8-bit RGB images (lower is better); the trunk's weights must be on disk.

    ``pretrained_trunk=False`` builds the trunk with random weights: only for testing the code
    path, the values mean nothing.
    """

    def __init__(self, net: str = "alex", device: str | torch.device = "cpu", pretrained_trunk: bool = True):
        if importlib.util.find_spec("lpips") is None:
            raise MetricUnavailable("--lpips needs the 'lpips' package: .venv/bin/pip install 'lpips>=0.1.4'")
        if pretrained_trunk:
            from torchvision.models import AlexNet_Weights, VGG16_Weights
            path = lpips_backbone_path(net)
            url = (AlexNet_Weights if net == "alex" else VGG16_Weights).IMAGENET1K_V1.url
            if not path.is_file():
                raise _missing(path, f"LPIPS ({net})", url)
        import lpips  # imported late: it is slow to import and optional for every other metric
        self.net = net
        self.device = torch.device(device)
        # The trunk is built from the file found above: torchvision reads the cached checkpoint.
        with warnings.catch_warnings():  # lpips uses torchvision's deprecated `pretrained=` argument
            warnings.simplefilter("ignore", UserWarning)
            try:
                self.model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=not pretrained_trunk,
                                         verbose=False).to(self.device).eval()
            except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, KeyError) as exc:
                if not pretrained_trunk:
                    raise
                raise _damaged(path, f"LPIPS ({net})", url, exc) from exc

    @staticmethod
    def to_input(img: np.ndarray) -> torch.Tensor:
        """8-bit ``(H, W, 3)`` -> ``(1, 3, H, W)`` float in [-1, 1] (LPIPS's calibrated range)."""
        if img.dtype != np.uint8:
            raise ValueError(f"LPIPS expects uint8 images, got {img.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
        return t / 127.5 - 1.0

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        if a.shape != b.shape:
            raise ValueError(f"LPIPS needs equal shapes, got {a.shape} and {b.shape}")
        with torch.inference_mode():
            d = self.model(self.to_input(a).to(self.device), self.to_input(b).to(self.device))
        return float(d.reshape(-1)[0])


# --------------------------------------------------------------------------- FID

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
FID_PACKAGE = "pytorch-fid==0.3.0"


def fid_weights_path() -> Path:
    """Where pytorch-fid's FID Inception weights must be."""
    return torch_hub_checkpoints() / _weights_file_name(FID_WEIGHTS_URL)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Frechet distance of two Gaussians: ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``.

    A singular product (few samples) is regularised by adding ``eps`` to the diagonals.
    """
    from scipy import linalg
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real  # numerical noise from sqrtm; the true root is real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


class FID:
    """FID between two sets of 8-bit images, with pytorch-fid's Inception (pool3, 2048 features).

    Needs the optional package ``pytorch-fid`` and its weights on disk (see :func:`fid_weights_path`).
    Meaningful only for sets of hundreds of images; not part of the paper's tables.
    """

    def __init__(self, device: str | torch.device = "cpu", dims: int = 2048):
        if importlib.util.find_spec("pytorch_fid") is None:
            raise MetricUnavailable(f"--fid needs the optional package pytorch-fid: .venv/bin/pip install "
                                    f"'{FID_PACKAGE}' (and its weights at {fid_weights_path()})")
        path = fid_weights_path()
        if not path.is_file():
            raise _missing(path, "FID", FID_WEIGHTS_URL)
        from pytorch_fid.inception import InceptionV3
        self.device = torch.device(device)
        block = InceptionV3.BLOCK_INDEX_BY_DIM[dims]
        try:
            self.model = InceptionV3([block]).to(self.device).eval()
        except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, KeyError) as exc:
            raise _damaged(path, "FID", FID_WEIGHTS_URL, exc) from exc

    def features(self, images: list[np.ndarray]) -> np.ndarray:
        """``(N, dims)`` Inception features of 8-bit RGB images (resized to 299 inside the network).

        One image at a time: test images differ in size, and the network resizes each.
        """
        feats = []
        with torch.inference_mode():
            for im in images:
                x = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float() / 255.0
                feats.append(self.model(x.to(self.device))[0].reshape(1, -1).cpu().double().numpy())
        return np.concatenate(feats, axis=0)

    def __call__(self, images_a: list[np.ndarray], images_b: list[np.ndarray]) -> float:
        if len(images_a) < 2 or len(images_b) < 2:
            raise ValueError("FID needs at least two images in each set")
        return self.distance(self.features(images_a), self.features(images_b))

    @staticmethod
    def distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
        """FID of two ``(N, dims)`` feature arrays (N >= 2 each)."""
        return frechet_distance(feats_a.mean(0), np.cov(feats_a, rowvar=False), feats_b.mean(0),
                                np.cov(feats_b, rowvar=False))


__all__ = ["MAX_PSNR", "METRIC_SPACES", "SSIM_KINDS", "MetricUnavailable", "psnr", "ssim_skimage", "rgb_to_y",
           "gaussian_kernel_1d", "ssim_gaussian", "shave", "image_metrics", "torch_hub_checkpoints",
           "lpips_backbone_path", "LPIPS", "FID", "FID_PACKAGE", "fid_weights_path", "frechet_distance"]
