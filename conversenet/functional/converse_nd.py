"""Reverse convolution in 1, 2 or 3 spatial dimensions: ``converse1d`` and ``converse3d``.

The same operator as :func:`conversenet.functional.converse2d`, over d spatial axes, with
the same conventions:

* forward model ``y = (x (x) k) |s``: circular *true* convolution with the kernel centre at
  ``k // 2`` on every axis, then keeping the first sample of every ``s_1 x ... x s_d``
  block (``y[i] = x[s * i]`` per axis);
* the result is ``argmin_x ||y - (x (x) k)|s||^2 + lam ||x - x0||^2`` solved per sample
  and channel at the padded size, with ``padding`` samples of padding added to both ends
  of every axis before the solve and ``padding * s_i`` cropped from both ends after;
* ``x0="interp"`` is nearest interpolation (``x0[i] = y[i // s]`` per axis, the d-D
  analogue of the 2-D operator's nearest upsampling), ``"zero"`` is 0, or a tensor.

The closed form is the numerically stable one of the math note, with the s-fold block
average taken over the ``s_1 * ... * s_d`` distinct blocks of the spectrum (the
downsampler is separable, so its DFT folds every axis independently)::

    X* = X0 + F^-1( conj(FK) (.)s F(R) / (|FK|^2 (v)s + lam) ),   R = Y - (X0 (x) K)|s

For ``x0="interp"``/``"zero"`` the whole operator is ``irfftn(tile_s(F(Y)) * G)`` with a
filter G that depends only on K and lam, built in :func:`converse_filter_nd`.

``converse_nd`` with d = 2 is an independent re-derivation of ``converse2d`` (tested to
agree to float64 rounding); ``converse2d`` stays the tuned 2-D path.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..checks import check_choice, check_input_and_kernel, check_int, check_lam, check_padding, check_tensor
from .converse import PADDING_MODES, X0_MODES, _dft_matrix

__all__ = ["converse1d", "converse3d", "converse_nd", "converse_filter_nd"]

Lam = Union[float, torch.Tensor]
Scale = Union[int, Sequence[int]]


# --------------------------------------------------------------------------------------
# validation (everything is checked before any arithmetic happens)
# --------------------------------------------------------------------------------------
def _check_scale(scale: Scale, d: int) -> Tuple[int, ...]:
    if isinstance(scale, (tuple, list)):
        if len(scale) != d:
            raise ValueError(f"scale must be an integer or a tuple of {d} integers, got {scale!r}")
        return tuple(check_int("scale", v, 1) for v in scale)
    return (check_int("scale", scale, 1),) * d


def _output_dtype(x: torch.Tensor) -> torch.dtype:
    """x's dtype, or under ``torch.autocast`` (x not float64) the autocast dtype, like a conv."""
    dev = x.device.type
    if (x.dtype != torch.float64 and torch.amp.is_autocast_available(dev)
            and torch.is_autocast_enabled(dev)):
        return torch.get_autocast_dtype(dev)
    return x.dtype


# --------------------------------------------------------------------------------------
# building blocks over the last d axes
# --------------------------------------------------------------------------------------
def _cdtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def kernel_otf_nd(weight: torch.Tensor, size: Tuple[int, ...]) -> torch.Tensor:
    """Full DFT of a (B, C, k_1..k_d) kernel zero-padded to ``size`` with centre ``k_i // 2`` at 0.

    Separable: one small matrix product per axis with the (size_i, k_i) DFT matrix of the
    2-D operator (``O(prod(size) * k_i)`` per axis, exact phases), no padded copy.
    """
    d = len(size)
    cdtype = _cdtype(weight.dtype)
    z = weight.to(cdtype)
    for i, m in enumerate(size):
        axis = z.dim() - d + i
        e = _dft_matrix(m, weight.shape[axis], m, weight.device, cdtype)  # (m, k_i)
        z = torch.movedim(torch.matmul(torch.movedim(z, axis, -1), e.transpose(0, 1)), -1, axis)
    return z


def _block_mean_nd(z: torch.Tensor, scales: Tuple[int, ...]) -> torch.Tensor:
    """Mean of the prod(s) distinct blocks of a (..., s_1 n_1, ..., s_d n_d) spectrum."""
    d = len(scales)
    if all(s == 1 for s in scales):
        return z
    lead = z.shape[: z.dim() - d]
    split = []
    for s, m in zip(scales, z.shape[z.dim() - d:]):
        split += [s, m // s]
    z = z.reshape(*lead, *split)
    dims = tuple(len(lead) + 2 * i for i in range(d))
    return z.sum(dims) / math.prod(scales)


def _tile_nd(z: torch.Tensor, scales: Tuple[int, ...]) -> torch.Tensor:
    """Tiles the last d axes ``s_i`` times (a spectrum of y seen at the s-times larger size)."""
    if all(s == 1 for s in scales):
        return z
    return z.repeat(*([1] * (z.dim() - len(scales))), *scales)


def _box_spectrum_nd(scales: Tuple[int, ...], big: Tuple[int, ...], dtype, device) -> torch.Tensor:
    """Full DFT of the box ``[0, s_1) x ... x [0, s_d)``: zero insertion (x) box = nearest."""
    out = None
    for i, (s, m) in enumerate(zip(scales, big)):
        u = torch.arange(m, dtype=torch.float64, device=device)
        a = torch.arange(s, dtype=torch.float64, device=device)
        phase = -2 * math.pi * torch.outer(u, a) / m
        ax = torch.polar(torch.ones_like(phase), phase).sum(-1).to(_cdtype(dtype))
        ax = ax.reshape([m if j == i else 1 for j in range(len(big))])
        out = ax if out is None else out * ax
    return out


def converse_filter_nd(
    weight: torch.Tensor, lam: torch.Tensor, size: Tuple[int, ...], scale: Tuple[int, ...],
    x0: str = "interp",
) -> torch.Tensor:
    """Filter G with ``converse_nd(y) = irfftn(tile_s(F(y)) * G)`` over the last d axes.

    Args:
        weight: (B, C, k_1..k_d) kernel, B = 1 or N.
        lam: (B', C, 1..1) positive regulariser.
        size: (n_1..n_d), the (padded) size of y.
        scale: (s_1..s_d).
        x0: ``"interp"`` or ``"zero"``.

    Returns:
        complex (max(B, B'), C, s_1 n_1, ..., s_d n_d // 2 + 1): the half spectrum of the
        last axis (G is Hermitian-symmetric, the output real).
    """
    big = tuple(s * m for s, m in zip(scale, size))
    fk = kernel_otf_nd(weight, big)
    fk2 = fk.real.square() + fk.imag.square()
    inv = 1.0 / (_block_mean_nd(fk2, scale) + lam.to(fk2.dtype))
    if x0 == "zero":
        g = fk.conj() * _tile_nd(inv, scale)
    else:
        # F(X0) = tile(F(Y)) * box, so F(R) = F(Y) * (1 - (FK * box) (v)s)
        box = _box_spectrum_nd(scale, big, weight.dtype, weight.device)
        gain = (1 - _block_mean_nd(fk * box, scale)) * inv
        g = box + fk.conj() * _tile_nd(gain, scale)
    return g[..., : big[-1] // 2 + 1]


def _pad_nd(x: torch.Tensor, pads: Tuple[int, ...], mode: str) -> torch.Tensor:
    if not any(pads):
        return x
    return F.pad(x, pads, mode=mode)


def _crop_nd(out: torch.Tensor, padding: int, scale: Tuple[int, ...], sizes: Tuple[int, ...]) -> torch.Tensor:
    if padding == 0:
        return out
    d = len(scale)
    for i, (s, m) in enumerate(zip(scale, sizes)):
        out = out.narrow(out.dim() - d + i, s * padding, s * m)
    return out


def _solve_with_x0(yp, weight, lam, scale, x0p):
    """General closed form for an arbitrary X0 (already padded to the padded output size)."""
    d = len(scale)
    dims = tuple(range(-d, 0))
    big = tuple(x0p.shape[-d:])
    fk = kernel_otf_nd(weight, big)
    fk2 = fk.real.square() + fk.imag.square()
    inv = 1.0 / (_block_mean_nd(fk2, scale) + lam)
    fr = torch.fft.fftn(yp, dim=dims) - _block_mean_nd(fk * torch.fft.fftn(x0p, dim=dims), scale)
    upd = (fk.conj() * _tile_nd(fr * inv, scale))[..., : big[-1] // 2 + 1]
    return x0p + torch.fft.irfftn(upd, s=big, dim=dims)


# --------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------
def converse_nd(
    x: torch.Tensor,
    weight: torch.Tensor,
    lam: Lam,
    scale: Scale = 1,
    padding: int = 0,
    padding_mode: str = "circular",
    x0: Union[str, torch.Tensor] = "interp",
    *,
    ndim: int,
) -> torch.Tensor:
    """Reverse convolution over the last ``ndim`` axes (1, 2 or 3) of an (N, C, ...) tensor.

    See :func:`converse1d` / :func:`converse3d` for the arguments; ``ndim=2`` gives the
    result of :func:`conversenet.functional.converse2d` (a plain re-derivation without its
    speed-ups, used to cross-check it).
    """
    if ndim not in (1, 2, 3):
        raise ValueError(f"ndim must be 1, 2 or 3, got {ndim!r}")
    d = ndim
    # everything is checked before any arithmetic happens (conversenet.checks)
    n, c = check_input_and_kernel(x, weight, d, nonempty=True)
    sizes = tuple(x.shape[2:])
    scale_t = _check_scale(scale, d)
    padding = check_padding(padding, padding_mode, sizes, PADDING_MODES)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    lam_c = check_lam(lam, n, c, d, weight.device, compute)
    padded = tuple(m + 2 * padding for m in sizes)
    big = tuple(s * m for s, m in zip(scale_t, padded))
    ks = tuple(weight.shape[2:])
    if any(k > b for k, b in zip(ks, big)):
        raise ValueError(
            f"weight: kernel {'x'.join(map(str, ks))} is larger than the padded output "
            f"{'x'.join(map(str, big))}; increase padding or use a smaller kernel"
        )
    out_shape = (n, c, *(s * m for s, m in zip(scale_t, sizes)))
    x0_tensor = None
    if isinstance(x0, torch.Tensor):
        check_tensor("x0", x0)
        if tuple(x0.shape) != out_shape:
            raise ValueError(f"x0 must have the output's shape {out_shape}, got {tuple(x0.shape)}")
        x0_tensor = x0
    else:
        check_choice("x0", x0, X0_MODES, " or a tensor")

    out_dtype = _output_dtype(x)
    dims = tuple(range(-d, 0))
    pads = (padding,) * (2 * d)
    with torch.autocast(device_type=x.device.type, enabled=False):
        y = x.to(compute)
        k = weight.to(compute)
        if n == 0 or c == 0:
            # nothing to solve; zeros that stay connected to the inputs' graph
            out = y.new_zeros(out_shape)
            for t in (y, k, lam_c, x0_tensor):
                if t is not None and t.requires_grad:
                    out = out + t.sum() * 0
            return out.to(out_dtype)
        yp = _pad_nd(y, pads, padding_mode)
        if x0_tensor is not None:
            # the 2-D convention: x0 is padded by padding * s with the same mode
            x0_pads = tuple(scale_t[d - 1 - j // 2] * padding for j in range(2 * d))
            x0p = _pad_nd(x0_tensor.to(compute), x0_pads, padding_mode)
            out = _solve_with_x0(yp, k, lam_c, scale_t, x0p)
        else:
            g = converse_filter_nd(k, lam_c, padded, scale_t, x0)
            fy = _tile_nd(torch.fft.fftn(yp, dim=dims), scale_t)[..., : big[-1] // 2 + 1]
            out = torch.fft.irfftn(fy * g, s=big, dim=dims)
        out = _crop_nd(out, padding, scale_t, sizes)
    return out.to(out_dtype)


def converse1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    lam: Lam,
    scale: Scale = 1,
    padding: int = 0,
    padding_mode: str = "circular",
    x0: Union[str, torch.Tensor] = "interp",
) -> torch.Tensor:
    """1-D reverse convolution: the closed-form inverse of depthwise conv + s-fold downsampling.

    Solves, per sample and channel, ``argmin_X ||Y - (X (x) K)|s||^2 + lam ||X - X0||^2``
    at the padded length and crops ``padding * scale`` samples from both ends.

    Args:
        x: (N, C, L) input Y, real floating point. The solve runs in float32 (float64
            for float64 input); the result has x's dtype, or under ``torch.autocast`` the
            autocast dtype (as a convolution's would), float64 excepted.
        weight: (1, C, k) shared kernel or (N, C, k) one per sample; centre ``k // 2``;
            true convolution.
        lam: positive regulariser: a float, a C-vector, 1xCx1 or NxCx1 tensor.
        scale: integer upsampling factor s >= 1 (or a 1-tuple).
        padding: samples added to both ends before solving.
        padding_mode: ``"circular"``, ``"reflect"``, ``"replicate"`` or ``"constant"``.
        x0: ``"interp"`` (nearest: ``x0[i] = y[i // s]``), ``"zero"``, or an (N, C, L*s)
            tensor (padded by ``padding * s`` with the same mode).

    Returns:
        (N, C, L*s) tensor (N or C may be 0).

    Example:
        >>> import torch
        >>> from conversenet.functional import converse1d
        >>> k = torch.softmax(torch.randn(1, 4, 5), -1)
        >>> converse1d(torch.randn(2, 4, 30), k, lam=1e-2, scale=3, padding=4).shape
        torch.Size([2, 4, 90])
    """
    return converse_nd(x, weight, lam, scale, padding, padding_mode, x0, ndim=1)


def converse3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    lam: Lam,
    scale: Scale = 1,
    padding: int = 0,
    padding_mode: str = "circular",
    x0: Union[str, torch.Tensor] = "interp",
) -> torch.Tensor:
    """3-D reverse convolution: the closed-form inverse of depthwise conv + s-fold downsampling.

    Solves, per sample and channel, ``argmin_X ||Y - (X (x) K)|s||^2 + lam ||X - X0||^2``
    at the padded size (downsampling keeps the first voxel of every s_d x s_h x s_w block)
    and crops ``padding * s_i`` voxels from both ends of every axis.

    Args:
        x: (N, C, D, H, W) input Y, real floating point; dtypes and autocast as in
            :func:`converse1d`.
        weight: (1, C, kd, kh, kw) shared kernel or (N, C, kd, kh, kw); centre
            ``(kd // 2, kh // 2, kw // 2)``; true convolution.
        lam: positive regulariser: a float, a C-vector, 1xCx1x1x1 or NxCx1x1x1 tensor.
        scale: one integer for every axis or a tuple (s_d, s_h, s_w).
        padding: voxels added to both ends of every axis before solving.
        padding_mode: ``"circular"``, ``"reflect"``, ``"replicate"`` or ``"constant"``.
        x0: ``"interp"`` (nearest interpolation by s per axis), ``"zero"``, or an
            (N, C, D*s_d, H*s_h, W*s_w) tensor (padded by ``padding * s_i`` per axis).

    Returns:
        (N, C, D*s_d, H*s_h, W*s_w) tensor.

    Example:
        >>> import torch
        >>> from conversenet.functional import converse3d
        >>> k = torch.softmax(torch.randn(1, 2, 27), -1).reshape(1, 2, 3, 3, 3)
        >>> converse3d(torch.randn(1, 2, 4, 6, 5), k, lam=1e-2, scale=(1, 2, 2), padding=2).shape
        torch.Size([1, 2, 4, 12, 10])
    """
    return converse_nd(x, weight, lam, scale, padding, padding_mode, x0, ndim=3)
