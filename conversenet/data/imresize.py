"""MATLAB-compatible bicubic ``imresize`` (antialiasing on) and ``modcrop``.

This reproduces what MATLAB's ``imresize(img, scale, 'bicubic')`` computes on floating
point images, which is how the super-resolution literature makes its low-resolution inputs:

* cubic convolution kernel with ``a = -0.5`` (Keys)::

      k(x) = 1.5|x|^3 - 2.5|x|^2 + 1             for |x| <= 1
           = -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2     for 1 < |x| <= 2
           = 0                                    otherwise

* output pixel ``i`` (1-based) samples the input at ``u = i / s + 0.5 * (1 - 1/s)``
  (1-based input coordinates; pixel centres are aligned), ``s = out / in`` per axis;
* when downscaling with antialiasing the kernel is widened: ``h(x) = s * k(s x)`` with
  support ``4 / s``;
* the taps are ``left + 0 .. ceil(width) + 1`` with ``left = floor(u - width / 2)``,
  the weights ``h(u - j)`` normalised to sum 1 per output pixel;
* out-of-range taps are mirrored symmetrically (``... 2 1 | 1 2 ... n | n n-1 ...``,
  the edge pixel repeated) as MATLAB does;
* the output size is ``ceil(in * scale)``; rows are resized first, then columns (the
  two 1-D passes commute up to rounding).

numpy images are ``(H, W)`` or ``(H, W, C)`` (resized over the first two axes); torch
tensors are ``(..., H, W)`` e.g. ``(C, H, W)`` or ``(N, C, H, W)`` (the last two axes).
numpy inputs are computed in float64 and returned in their own float dtype (integer
inputs return float64, unrounded: MATLAB would round them back to uint8); torch inputs
are computed in their own floating dtype on their device.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..checks import check_int

__all__ = ["imresize", "modcrop", "cubic", "resize_weights"]

Image = Union[np.ndarray, torch.Tensor]


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with ``a = -0.5`` (MATLAB's bicubic), elementwise.

    >>> cubic(np.array([0.0, 0.5, 1.0, 1.5, 2.0])).tolist()
    [1.0, 0.5625, 0.0, -0.0625, 0.0]
    """
    ax = np.abs(np.asarray(x, dtype=np.float64))
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def resize_weights(
    in_length: int, out_length: int, scale: float, antialiasing: bool = True
) -> Tuple[np.ndarray, np.ndarray]:
    """Taps and weights of MATLAB's ``contributions`` for one axis.

    Args:
        in_length: input size along the axis.
        out_length: output size along the axis.
        scale: ``out / in`` factor used for the coordinates and the kernel width.
        antialiasing: widen the kernel when ``scale < 1``.

    Returns:
        ``(indices, weights)``: int64 (out_length, P) 0-based input indices (already
        mirrored into range) and float64 (out_length, P) weights, each row summing to 1.

    >>> idx, w = resize_weights(4, 2, 0.5)
    >>> idx.shape, np.allclose(w.sum(1), 1)
    ((2, 10), True)
    """
    kernel_width = 4.0
    widen = antialiasing and scale < 1
    if widen:
        kernel_width /= scale
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    p = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(p, dtype=np.float64)[None, :]  # 1-based
    dist = u[:, None] - idx
    w = scale * cubic(dist * scale) if widen else cubic(dist)
    w = w / w.sum(axis=1, keepdims=True)
    # symmetric mirroring of 1-based indices: aux = [1..n, n..1], period 2n
    period = 2 * in_length
    j = np.mod(idx.astype(np.int64) - 1, period)
    j = np.where(j < in_length, j, period - 1 - j)
    return j, w


def _check_image(img, name: str = "img") -> None:
    if isinstance(img, torch.Tensor):
        if img.ndim < 2:
            raise ValueError(f"{name} must be a tensor (..., H, W), got shape {tuple(img.shape)}")
        if not img.is_floating_point():
            raise TypeError(f"{name} tensor must be floating point, got {img.dtype}")
    elif isinstance(img, np.ndarray):
        if img.ndim not in (2, 3):
            raise ValueError(f"{name} must be a numpy array (H, W) or (H, W, C), got shape {img.shape}")
        if img.dtype.kind not in "uif":
            raise TypeError(f"{name} must have a real numeric dtype, got {img.dtype}")
    else:
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(img).__name__}")


def _spatial(img: Image) -> Tuple[int, int]:
    return tuple(img.shape[-2:]) if isinstance(img, torch.Tensor) else tuple(img.shape[:2])


def _resize_axis_np(x: np.ndarray, idx: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    x = np.moveaxis(x, axis, 0)
    out = np.zeros((idx.shape[0],) + x.shape[1:], dtype=np.float64)
    extra = (slice(None),) + (None,) * (x.ndim - 1)
    for p in range(idx.shape[1]):  # few taps: loop keeps memory at one output-sized array
        out += w[:, p][extra] * x[idx[:, p]]
    return np.moveaxis(out, 0, axis)


def _resize_axis_torch(x: torch.Tensor, idx: np.ndarray, w: np.ndarray, dim: int) -> torch.Tensor:
    ti = torch.as_tensor(idx, device=x.device)
    tw = torch.as_tensor(w, dtype=x.dtype, device=x.device)
    shape = [1] * x.ndim
    shape[dim] = idx.shape[0]
    out = None
    for p in range(idx.shape[1]):
        term = x.index_select(dim, ti[:, p]) * tw[:, p].reshape(shape)
        out = term if out is None else out + term
    return out


def imresize(
    img: Image,
    scale: Union[float, Sequence[float], None] = None,
    *,
    out_shape: Optional[Sequence[int]] = None,
    antialiasing: bool = True,
) -> Image:
    """Bicubic resize exactly as MATLAB ``imresize`` (see the module docstring).

    Args:
        img: numpy (H, W) / (H, W, C) or torch (..., H, W) image; values are not clipped.
        scale: factor (or (sh, sw)); output size ``ceil(H * sh) x ceil(W * sw)``.
        out_shape: (H_out, W_out) instead of ``scale``; then ``s = out / in`` per axis.
        antialiasing: widen the kernel when downscaling (MATLAB's default, True).

    Returns:
        the resized image, same kind and layout as ``img``.

    Example:
        >>> import numpy as np
        >>> x = np.full((8, 12, 3), 0.25, dtype=np.float32)
        >>> y = imresize(x, 0.25)
        >>> y.shape, y.dtype, bool(np.allclose(y, 0.25))
        ((2, 3, 3), dtype('float32'), True)
    """
    _check_image(img)
    if (scale is None) == (out_shape is None):
        raise ValueError("give exactly one of scale and out_shape")
    h, w = _spatial(img)
    if scale is not None:
        sc = (scale, scale) if isinstance(scale, numbers.Real) else tuple(scale)
        if len(sc) != 2 or any(
            isinstance(v, bool) or not isinstance(v, numbers.Real) or not (math.isfinite(v) and v > 0) for v in sc
        ):
            raise ValueError(f"scale must be a positive number or a pair of them, got {scale!r}")
        sh, sw = float(sc[0]), float(sc[1])
        oh, ow = int(math.ceil(h * sh)), int(math.ceil(w * sw))
    else:
        os_ = tuple(out_shape)
        if len(os_) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in os_):
            raise ValueError(f"out_shape must be two positive integers, got {out_shape!r}")
        oh, ow = int(os_[0]), int(os_[1])
        sh, sw = oh / h, ow / w
    ih, wh = resize_weights(h, oh, sh, antialiasing)
    iw, ww = resize_weights(w, ow, sw, antialiasing)
    if isinstance(img, torch.Tensor):
        out = _resize_axis_torch(img, ih, wh, img.ndim - 2)
        return _resize_axis_torch(out, iw, ww, img.ndim - 1)
    out_dtype = img.dtype if img.dtype.kind == "f" else np.float64
    out = _resize_axis_np(img.astype(np.float64, copy=False), ih, wh, 0)
    out = _resize_axis_np(out, iw, ww, 1)
    return out.astype(out_dtype, copy=False)


def modcrop(img: Image, scale: int) -> Image:
    """Crops the bottom/right so that H and W are multiples of ``scale`` (a view, no copy).

    numpy (H, W[, C]) crops axes 0 and 1; torch (..., H, W) the last two.

    >>> import numpy as np
    >>> modcrop(np.zeros((10, 7, 3)), 4).shape
    (8, 4, 3)
    """
    _check_image(img)
    scale = check_int("scale", scale, 1)
    h, w = _spatial(img)
    hh, ww = h - h % scale, w - w % scale
    if hh == 0 or ww == 0:
        raise ValueError(f"image of size {h}x{w} is smaller than scale={scale}")
    if isinstance(img, torch.Tensor):
        return img[..., :hh, :ww]
    return img[:hh, :ww]
