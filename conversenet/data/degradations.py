"""Synthetic degradations: Gaussian noise, circular blur, s-fold downsampling, USRNet pipeline.

Two families, one per use:

* **Evaluation (numpy, bit-exact with the published protocols)**:
  :func:`add_awgn_np` (``numpy.random.seed(seed)`` then ``numpy.random.normal(0, sigma/255,
  shape)`` added to the [0, 1] image, no clipping), :func:`blur_wrap_np` (exactly
  ``scipy.ndimage.convolve(img, k[..., None], mode='wrap')``, including its uint8 output
  rounding), :func:`downsample_np` and :func:`usrnet_degrade_np`.
* **Training (torch, batched, differentiable, on any device)**: :func:`add_awgn`
  (``torch.Generator`` driven, per-sample sigma), :func:`blur_circular` (per-sample kernels),
  :func:`downsample` and :func:`usrnet_degrade`.

Blur convention (both families): a true convolution with circular boundaries whose kernel
centre is ``(kh // 2, kw // 2)``::

    out[i, j] = sum_{a, b} k[a, b] * img[(i - a + kh//2) mod H, (j - b + kw//2) mod W]

This is scipy.ndimage's ``convolve(..., mode='wrap')`` for odd and even kernel sizes and
MATLAB's ``psf2otf`` convention (the one :func:`conversenet.functional.conv_down` uses).
s-fold downsampling keeps the upper-left pixel of every ``s x s`` block: ``img[::s, ::s]``.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import numpy as np
import torch

from ..checks import check_int
from ..functional import conv_down

__all__ = [
    "add_awgn_np",
    "add_awgn",
    "blur_wrap_np",
    "blur_circular",
    "downsample_np",
    "downsample",
    "usrnet_degrade_np",
    "usrnet_degrade",
]

_DBL_EPS = np.finfo(np.float64).eps


def _check_sigma(sigma) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0 (0-255 units), got {sigma!r}")
    return float(sigma)


def _check_scale(scale) -> int:
    return check_int("scale", scale, 1)


def _check_kernel_np(kernel) -> np.ndarray:
    k = np.asarray(kernel)
    if k.ndim != 2 or k.size == 0:
        raise ValueError(f"kernel must be a non-empty 2-D array, got shape {k.shape}")
    if k.dtype.kind not in "uif" or not np.all(np.isfinite(k)):
        raise ValueError("kernel must hold finite real numbers")
    return k.astype(np.float64)


# --------------------------------------------------------------------------------------
# numpy, evaluation protocols
# --------------------------------------------------------------------------------------
def add_awgn_np(img: np.ndarray, sigma: float, seed: Union[int, np.random.RandomState, None] = 0) -> np.ndarray:
    """Adds white Gaussian noise as the published denoising protocol does.

    Equivalent to ``np.random.seed(seed); img + np.random.normal(0, sigma / 255, img.shape)``
    (the noise is drawn in float64 and the sum cast to ``img``'s dtype, like
    ``img += noise`` on a float32 image), but without touching numpy's global state: a
    fresh ``RandomState(seed)`` draws the identical stream. No clipping.

    Args:
        img: float array in [0, 1], any shape (e.g. (H, W) or (H, W, C)).
        sigma: noise standard deviation in 0..255 units (25 means 25/255 on [0, 1]).
        seed: reset per image (the protocol uses 0); a ``RandomState`` continues its own
            stream; ``None`` draws from numpy's global state.

    Returns:
        a new array, same shape and dtype as ``img``.

    Example:
        >>> import numpy as np
        >>> y = add_awgn_np(np.zeros((2, 2), np.float32), 25, seed=0)
        >>> np.random.seed(0); ref = np.random.normal(0, 25 / 255, (2, 2)).astype(np.float32)
        >>> bool(np.array_equal(y, ref))
        True
    """
    if not isinstance(img, np.ndarray) or img.dtype.kind != "f":
        raise TypeError(
            f"img must be a floating point numpy array in [0, 1], got "
            f"{getattr(img, 'dtype', type(img).__name__)} (convert with conversenet.data.to_float)"
        )
    sigma = _check_sigma(sigma)
    if isinstance(seed, np.random.RandomState):
        rs = seed
    elif seed is None:
        rs = np.random.mtrand._rand  # numpy's global RandomState (what np.random.normal uses)
    elif isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        rs = np.random.RandomState(int(seed))
    else:
        raise TypeError(f"seed must be an int, a numpy RandomState or None, got {seed!r}")
    noise = rs.normal(0.0, sigma / 255.0, img.shape)
    return (img.astype(np.float64) + noise).astype(img.dtype)


def blur_wrap_np(img: np.ndarray, kernel) -> np.ndarray:
    """Circular blur, bit-exact with ``scipy.ndimage.convolve(img, k[..., None], mode='wrap')``.

    scipy accumulates in float64, kernel taps in raster order of the flipped kernel,
    skipping taps with ``|k| <= DBL_EPSILON``, and casts to the input dtype; for integer
    images that cast truncates toward zero (so ``99.9999`` becomes 99). This function
    repeats those steps, so the USRNet protocol's uint8 blurred images come out identical.
    Integer results outside the dtype's range are clipped (scipy wraps them around; that
    only happens with kernels that have negative taps).

    Args:
        img: (H, W) or (H, W, C) array, uint8/uint16/float; channels are blurred alike.
        kernel: (kh, kw) real array (not normalised here).

    Returns:
        the blurred image, same shape and dtype as ``img``.

    Example:
        >>> import numpy as np
        >>> x = np.array([[0, 0, 90, 0]], dtype=np.uint8)
        >>> blur_wrap_np(x, np.array([[0.5, 0.5]])).tolist()  # out[i] = (x[i] + x[i+1]) / 2
        [[0, 45, 45, 0]]
    """
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3) or img.dtype.kind not in "uif":
        raise ValueError(
            f"img must be a real numpy array (H, W) or (H, W, C), got "
            f"{getattr(img, 'shape', type(img).__name__)}"
        )
    k = _check_kernel_np(kernel)
    kh, kw = k.shape
    x = img.astype(np.float64)
    acc = np.zeros_like(x)
    flipped = k[::-1, ::-1]
    for p in range(kh):
        for q in range(kw):
            wgt = flipped[p, q]
            if abs(wgt) <= _DBL_EPS:
                continue
            a, b = kh - 1 - p, kw - 1 - q  # tap k[a, b]
            # out[i] += k[a] * x[i - a + kh//2]  ==  roll(x, a - kh//2)[i]
            acc += np.roll(x, (a - kh // 2, b - kw // 2), axis=(0, 1)) * wgt
    if img.dtype.kind in "ui":
        info = np.iinfo(img.dtype)
        return np.clip(np.trunc(acc), info.min, info.max).astype(img.dtype)
    return acc.astype(img.dtype)


def downsample_np(img: np.ndarray, scale: int) -> np.ndarray:
    """Keeps the upper-left pixel of every ``scale x scale`` block: ``img[::s, ::s]``.

    >>> import numpy as np
    >>> downsample_np(np.arange(16).reshape(4, 4), 2).tolist()
    [[0, 2], [8, 10]]
    """
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3):
        raise ValueError(f"img must be a numpy array (H, W) or (H, W, C), got {getattr(img, 'shape', img)!r}")
    s = _check_scale(scale)
    return img[::s, ::s]


def usrnet_degrade_np(
    img: np.ndarray, kernel, scale: int = 1, sigma: float = 2.55, seed: Union[int, None] = 0
) -> np.ndarray:
    """The USRNet/Table 7 evaluation degradation: blur, downsample, noise.

    Steps: :func:`blur_wrap_np` on the uint8 image (uint8 result, truncated as scipy
    does), :func:`downsample_np` by ``scale``, to float32 in [0, 1] (``/ 255``), then
    :func:`add_awgn_np` with ``sigma`` (0..255 units) and ``seed``. Crop the image to a
    multiple of 8 (:func:`conversenet.data.modcrop`) before calling, as the protocol does.

    Args:
        img: uint8 (H, W) or (H, W, C) ground truth.
        kernel: (kh, kw) blur kernel (normalised, see :mod:`conversenet.data.kernels`).

    Returns:
        float32 (H // scale, W // scale[, C]) degraded image, not clipped.
    """
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        raise TypeError(f"img must be a uint8 numpy array, got {getattr(img, 'dtype', type(img).__name__)}")
    s = _check_scale(scale)
    _check_sigma(sigma)
    blurred = downsample_np(blur_wrap_np(img, kernel), s)
    # /255 in float64 then float32, as KAIR's uint2single does
    return add_awgn_np((blurred / 255.0).astype(np.float32), sigma, seed)


# --------------------------------------------------------------------------------------
# torch, training
# --------------------------------------------------------------------------------------
def _check_tensor(x, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")


def add_awgn(
    x: torch.Tensor, sigma: Union[float, torch.Tensor], generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Adds white Gaussian noise ``N(0, (sigma/255)^2)`` to a [0, 1] tensor (training use).

    Args:
        x: floating tensor of any shape; for a per-sample ``sigma`` the first dim is N.
        sigma: a number (0..255 units) or a tensor (N,) of per-sample sigmas.
        generator: a ``torch.Generator`` on ``x``'s device, for reproducible draws.

    Returns:
        ``x + noise`` (new tensor, no clipping).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> add_awgn(torch.zeros(2, 1, 4, 4), torch.tensor([0.0, 25.0]), g)[0].abs().max().item()
        0.0
    """
    _check_tensor(x)
    if isinstance(sigma, torch.Tensor):
        if sigma.ndim != 1 or x.ndim < 1 or sigma.shape[0] != x.shape[0]:
            raise ValueError(f"a sigma tensor must have shape (N,) = ({x.shape[0] if x.ndim else '?'},), got {tuple(sigma.shape)}")
        if not torch.isfinite(sigma).all() or (sigma < 0).any():
            raise ValueError("sigma values must be finite and >= 0")
        std = (sigma.to(x.device, x.dtype) / 255.0).reshape((-1,) + (1,) * (x.ndim - 1))
    else:
        std = _check_sigma(sigma) / 255.0
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + noise * std


def _as_4d(x: torch.Tensor):
    if x.ndim == 2:
        return x[None, None], lambda y: y[0, 0]
    if x.ndim == 3:
        return x[None], lambda y: y[0]
    if x.ndim == 4:
        return x, lambda y: y
    raise ValueError(f"x must be (H, W), (C, H, W) or (N, C, H, W), got shape {tuple(x.shape)}")


def blur_circular(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Circular convolution (convention in the module docstring) of images with kernels.

    Args:
        x: (H, W), (C, H, W) or (N, C, H, W) floating tensor.
        kernel: (kh, kw) shared kernel, or (N, kh, kw) / (N, 1, kh, kw) one per sample;
            kh <= H and kw <= W.

    Returns:
        tensor of ``x``'s shape; differentiable in ``x`` and ``kernel``.

    Example:
        >>> import torch
        >>> x = torch.zeros(1, 1, 5, 5); x[0, 0, 2, 2] = 1
        >>> k = torch.arange(9.0).reshape(3, 3)
        >>> torch.equal(blur_circular(x, k)[0, 0, 1:4, 1:4], k)  # impulse response = kernel
        True
    """
    _check_tensor(x)
    _check_tensor(kernel, "kernel")
    x4, back = _as_4d(x)
    n, c = x4.shape[:2]
    if kernel.ndim == 2:
        w = kernel.expand(1, c, *kernel.shape)
    elif kernel.ndim in (3, 4) and kernel.shape[0] == n and (kernel.ndim == 3 or kernel.shape[1] == 1):
        k = kernel if kernel.ndim == 4 else kernel[:, None]
        w = k.expand(n, c, *k.shape[-2:])
    else:
        raise ValueError(
            f"kernel must be (kh, kw), ({n}, kh, kw) or ({n}, 1, kh, kw) for x of shape {tuple(x.shape)}, "
            f"got {tuple(kernel.shape)}"
        )
    return back(conv_down(x4, w.to(device=x.device), 1))


def downsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Upper-left pixel of every ``scale x scale`` block of a (..., H, W) tensor."""
    s = _check_scale(scale)
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise ValueError(f"x must be a tensor (..., H, W), got {getattr(x, 'shape', type(x).__name__)}")
    return x[..., ::s, ::s]


def usrnet_degrade(
    x: torch.Tensor,
    kernel: torch.Tensor,
    scale: int = 1,
    sigma: Union[float, torch.Tensor] = 0.0,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Training version of the USRNet degradation: ``add_awgn(downsample(blur(x, k), s))``.

    Works in float on [0, 1] tensors (no uint8 rounding of the blurred image, unlike the
    evaluation protocol :func:`usrnet_degrade_np`).

    Args:
        x: (N, C, H, W) (or (C, H, W) / (H, W)) clean images, H and W multiples of ``scale``.
        kernel: as in :func:`blur_circular`.
        sigma: number or (N,) tensor, 0..255 units.

    Returns:
        (..., H // scale, W // scale) degraded tensor.

    Example:
        >>> import torch
        >>> usrnet_degrade(torch.rand(2, 3, 16, 16), torch.ones(3, 3) / 9, 2, 2.55).shape
        torch.Size([2, 3, 8, 8])
    """
    _check_tensor(x)
    s = _check_scale(scale)
    if x.shape[-1] % s or x.shape[-2] % s:
        raise ValueError(f"x size {tuple(x.shape[-2:])} must be divisible by scale={s}")
    return add_awgn(downsample(blur_circular(x, kernel), s), sigma, generator)
