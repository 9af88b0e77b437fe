"""PSNR and SSIM with the conventions of the image-restoration literature.

Both functions share one calling convention:

* ``img1``, ``img2``: numpy arrays ``(H, W)`` or ``(H, W, C)`` (channel last), or torch
  tensors ``(C, H, W)`` (one image) or ``(N, C, H, W)`` (a batch: one value per image).
  Both arguments must be of the same kind and shape (else ``TypeError``/``ValueError``).
* ``input_range``: the value of white in the inputs, stated explicitly (255 for uint8-like
  data, 1.0 for [0, 1] floats). Nothing is guessed from the data. Internally every image is
  rescaled to the 0..255 scale, so the numbers do not depend on the range used.
* ``crop_border``: pixels removed from each of the four sides before measuring
  (super-resolution papers use the scale factor).
* ``test_y_channel``: measure on the BT.601 luma of MATLAB's ``rgb2ycbcr``
  (:func:`conversenet.metrics.rgb_to_y`) instead of on RGB; single-channel images are used
  as they are. ``round_y=True`` rounds Y to integers as MATLAB/KAIR do for uint8 inputs.

PSNR is ``10 log10(255^2 / MSE)`` with the MSE over all pixels and channels; identical
images give ``float('inf')``. SSIM follows Wang et al. / MATLAB ``ssim_index``: 11x11
Gaussian window with sigma 1.5, ``C1 = (0.01*255)^2``, ``C2 = (0.03*255)^2``, statistics
only where the window fits inside the (cropped) image ("valid" filtering), the mean of the
SSIM map per channel, then the mean over channels. Computation is in float64.
"""

from __future__ import annotations

import math
from typing import List, Tuple, Union

import numpy as np

from ..checks import check_int, check_positive_number
from .color import rgb_to_y

__all__ = ["psnr", "ssim", "gaussian_window", "SSIM_WINDOW", "SSIM_SIGMA"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_C1 = (0.01 * 255.0) ** 2
_C2 = (0.03 * 255.0) ** 2

Metric = Union[float, np.ndarray]


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """1-D normalised Gaussian taps ``exp(-x^2 / (2 sigma^2))``, x = -(size//2)..size//2.

    The 2-D SSIM window is ``np.outer(g, g)`` (MATLAB ``fspecial('gaussian', 11, 1.5)``).

    >>> g = gaussian_window()
    >>> g.shape, round(float(g.sum()), 12)
    ((11,), 1.0)
    """
    x = np.arange(size, dtype=np.float64) - (size // 2)
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _is_torch(x) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False
    return isinstance(x, torch.Tensor)


def _as_images(img1, img2, crop_border, input_range, test_y_channel, round_y) -> Tuple[List, List, bool]:
    """Validates the arguments and returns two lists of (H, W, C) float64 images on 0..255."""
    t1, t2 = _is_torch(img1), _is_torch(img2)
    if t1 != t2:
        raise TypeError(
            f"img1 and img2 must both be numpy arrays or both torch tensors, "
            f"got {type(img1).__name__} and {type(img2).__name__}"
        )
    if not t1 and not (isinstance(img1, np.ndarray) and isinstance(img2, np.ndarray)):
        raise TypeError(
            f"img1 and img2 must be numpy arrays or torch tensors, got {type(img1).__name__} and {type(img2).__name__}"
        )
    if tuple(img1.shape) != tuple(img2.shape):
        raise ValueError(f"img1 and img2 must have the same shape, got {tuple(img1.shape)} and {tuple(img2.shape)}")
    crop_border = check_int("crop_border", crop_border, 0)
    check_positive_number("input_range", input_range, " (e.g. 255 or 1.0)")
    for name, im in (("img1", img1), ("img2", img2)):
        if t1:
            bad = im.is_complex() or not (im.is_floating_point() or str(im.dtype).startswith(("torch.int", "torch.uint")))
        else:
            bad = im.dtype.kind not in "uif"
        if bad:
            raise TypeError(f"{name} must have a real numeric dtype, got {im.dtype}")

    batched = False
    if t1:
        if img1.ndim == 2:
            a, b = [img1.detach().cpu().double().numpy()[..., None]], [img2.detach().cpu().double().numpy()[..., None]]
        elif img1.ndim in (3, 4):
            batched = img1.ndim == 4
            x1 = img1.detach().cpu().double().numpy()
            x2 = img2.detach().cpu().double().numpy()
            if not batched:
                x1, x2 = x1[None], x2[None]
            a = list(np.moveaxis(x1, 1, -1))
            b = list(np.moveaxis(x2, 1, -1))
        else:
            raise ValueError(f"torch inputs must be (H, W), (C, H, W) or (N, C, H, W), got shape {tuple(img1.shape)}")
    else:
        if img1.ndim == 2:
            a, b = [img1[..., None]], [img2[..., None]]
        elif img1.ndim == 3:
            a, b = [img1], [img2]
        else:
            raise ValueError(f"numpy inputs must be (H, W) or (H, W, C), got shape {img1.shape}")

    h, w, c = a[0].shape
    if 2 * crop_border >= min(h, w):
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {h}x{w} image")
    if test_y_channel and c not in (1, 3):
        raise ValueError(f"test_y_channel needs 1 or 3 channels, got {c}")
    scale = 255.0 / float(input_range)

    def prep(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if crop_border:
            x = x[crop_border:-crop_border, crop_border:-crop_border]
        if test_y_channel and c == 3:
            return rgb_to_y(x, input_range=input_range, round_y=round_y)[..., None]
        return x * scale

    return [prep(x) for x in a], [prep(x) for x in b], batched


def _psnr_one(x: np.ndarray, y: np.ndarray) -> float:
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return float("inf")
    return 10.0 * math.log10(255.0**2 / mse)


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of a 2-D array with the window ``outer(g, g)``."""
    win = np.lib.stride_tricks.sliding_window_view
    x = win(x, g.size, axis=0) @ g  # (H-k+1, W)
    return win(x, g.size, axis=1) @ g  # (H-k+1, W-k+1)


def _ssim_channel(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> float:
    mu1, mu2 = _filter_valid(x, g), _filter_valid(y, g)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s11 = _filter_valid(x * x, g) - mu1_sq
    s22 = _filter_valid(y * y, g) - mu2_sq
    s12 = _filter_valid(x * y, g) - mu12
    num = (2.0 * mu12 + _C1) * (2.0 * s12 + _C2)
    den = (mu1_sq + mu2_sq + _C1) * (s11 + s22 + _C2)
    return float(np.mean(num / den))


def _ssim_one(x: np.ndarray, y: np.ndarray) -> float:
    h, w = x.shape[:2]
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs an image of at least {SSIM_WINDOW}x{SSIM_WINDOW} after cropping, got {h}x{w}")
    g = gaussian_window()
    return float(np.mean([_ssim_channel(x[..., i], y[..., i], g) for i in range(x.shape[2])]))


def psnr(
    img1,
    img2,
    crop_border: int = 0,
    test_y_channel: bool = False,
    input_range: float = 255.0,
    *,
    round_y: bool = False,
) -> Metric:
    """Peak signal-to-noise ratio in dB (see the module docstring for the conventions).

    Returns:
        a float for one image (numpy input or a (C, H, W)/(H, W) tensor), a float64 array
        (N,) for an (N, C, H, W) tensor. Identical images give ``float('inf')``.

    Example:
        >>> import numpy as np
        >>> a = np.zeros((8, 8), dtype=np.uint8); b = a.copy(); b[0, 0] = 255
        >>> round(psnr(a, b), 4)  # MSE = 255^2 / 64
        18.0618
        >>> psnr(a, a)
        inf
    """
    a, b, batched = _as_images(img1, img2, crop_border, input_range, test_y_channel, round_y)
    vals = [_psnr_one(x, y) for x, y in zip(a, b)]
    return np.asarray(vals, dtype=np.float64) if batched else vals[0]


def ssim(
    img1,
    img2,
    crop_border: int = 0,
    test_y_channel: bool = False,
    input_range: float = 255.0,
    *,
    round_y: bool = False,
) -> Metric:
    """Structural similarity as MATLAB's ``ssim_index`` (see the module docstring).

    The (cropped) image must be at least 11x11. Multi-channel images: SSIM per channel,
    then the mean.

    Returns:
        a float for one image, a float64 array (N,) for an (N, C, H, W) tensor.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).random((16, 16))
        >>> ssim(x, x, input_range=1.0)
        1.0
    """
    a, b, batched = _as_images(img1, img2, crop_border, input_range, test_y_channel, round_y)
    vals = [_ssim_one(x, y) for x, y in zip(a, b)]
    return np.asarray(vals, dtype=np.float64) if batched else vals[0]
