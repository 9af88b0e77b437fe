"""The few data/metric operations training needs, as thin adapters over
:mod:`conversenet.data` and :mod:`conversenet.metrics` (one place to adapt if their
signatures change). All images are float tensors (C, H, W) in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import torch


def read_image(path: Path, channels: int) -> torch.Tensor:
    """(C, H, W) float32 in [0, 1] with ``channels`` 1 (gray, BT.601 luma) or 3 (RGB)."""
    from ..data import io as _io

    arr, _ = _io.read_image(path)  # uint8/uint16 (H, W, C), alpha dropped
    if arr.shape[2] == 3 and channels == 1:
        arr = _io.rgb_to_gray(arr)
    elif arr.shape[2] == 1 and channels == 3:
        arr = _io.gray_to_rgb(arr)
    return _io.to_tensor(arr).contiguous()


def add_noise(x: torch.Tensor, sigma: float, g: torch.Generator) -> torch.Tensor:
    """x + N(0, (sigma/255)^2), noise drawn from ``g`` (no clipping, as in the protocol)."""
    from ..data.degradations import add_awgn

    return add_awgn(x, float(sigma), g)


def bicubic_down(x: torch.Tensor, scale: int) -> torch.Tensor:
    """MATLAB-style bicubic downscaling by ``scale`` (antialiased)."""
    from ..data.imresize import imresize

    return imresize(x, 1.0 / scale).float()


def circular_blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    from ..data.degradations import blur_circular

    return blur_circular(x, kernel.reshape(kernel.shape[-2:]).to(x.dtype))


GAUSSIAN_SIGMA_RANGE = (0.6, 2.0)  # isotropic widths (pixels) for the random Gaussian kernels


def random_kernel(kind: str, size: int, g: torch.Generator) -> torch.Tensor:
    """A random (size, size) blur kernel summing to 1, drawn from ``g``.

    ``gaussian``: isotropic, sigma ~ U(0.6, 2.0) (7x7 keeps >= 95% of the mass);
    ``motion``: :func:`conversenet.data.kernels.motion_kernel` with its default length
    (uniform in [size/4, 3 size/4]) and jitter.
    """
    import numpy as np

    from ..data import kernels as _k

    if kind == "gaussian":
        lo, hi = GAUSSIAN_SIGMA_RANGE
        sigma = lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))
        k = _k.gaussian_kernel(size, sigma)
    elif kind == "motion":
        seed = int(torch.randint(2**62, (), generator=g))
        k = _k.motion_kernel(size, seed=np.random.default_rng(seed))
    else:
        raise ValueError(f"kernel kind must be gaussian or motion, got {kind!r}")
    k = torch.as_tensor(k, dtype=torch.float32)
    return k / k.sum()


def load_kernel(path: Path) -> torch.Tensor:
    from ..data.kernels import load_kernel as _load

    k = torch.as_tensor(_load(path), dtype=torch.float32)
    return k / k.sum()


def psnr(out: torch.Tensor, gt: torch.Tensor, crop_border: int = 0, y_channel: bool = False) -> float:
    """PSNR (dB) of images in [0, 1] after rounding to 8 bits, as the evaluation protocol does."""
    from .. import metrics

    a = (out.detach().clamp(0, 1) * 255).round().cpu().double()
    b = (gt.detach().clamp(0, 1) * 255).round().cpu().double()
    return float(metrics.psnr(a, b, crop_border=crop_border, test_y_channel=y_channel, input_range=255.0))
