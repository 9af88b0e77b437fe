"""Converse2D (reverse convolution) and its forward model, as stateless functions.

Conventions (see ``docs/OPERATOR.md``):

* ``conv_down(x, k, s)`` is a circular depthwise convolution whose kernel centre sits at
  ``(kh // 2, kw // 2)`` (MATLAB's ``psf2otf`` convention) followed by keeping the
  upper-left pixel of every ``s x s`` block.
* ``converse2d(y, k, lam, s)`` returns the minimiser of
  ``||y - conv_down(x, k, s)||^2 + lam * ||x - x0||^2`` in closed form.

The closed form used here is the numerically stable one of the math note::

    X* = X0 + F^-1( conj(FK) (.)s F(R) / (|FK|^2 (v)s + lam) ),  R = Y - (X0 (x) K) |s

For ``x0="interp"`` and ``x0="zero"`` X0 is itself a filtered copy of Y, so the whole
operator is ``irfft2(tile(F(Y)) * G)`` with a filter ``G`` that depends only on the kernel
and lam (:func:`converse_filter`); the :class:`conversenet.nn.Converse2d` module caches G
in eval mode.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .. import _caches, _tuning
from ..checks import check_choice, check_input_and_kernel, check_int, check_lam, check_padding, check_tensor
from . import _channels_last, _fft, _fused, _matrix_dft, _solve_op, _upsolve, _workspace

__all__ = [
    "converse2d",
    "conv_down",
    "converse_filter",
    "kernel_otf",
    "PADDING_MODES",
    "X0_MODES",
    "FFT_SIZES",
    "fft_pads",
]

PADDING_MODES = ("circular", "reflect", "replicate", "constant")
X0_MODES = ("interp", "zero")

Lam = Union[float, torch.Tensor]


# --------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------
def kernel_otf(weight: torch.Tensor, size: Tuple[int, int], onesided: bool = False) -> torch.Tensor:
    """DFT of a kernel zero-padded to ``size`` with its centre ``(kh//2, kw//2)`` at (0, 0).

    Args:
        weight: (B, C, kh, kw) real kernel.
        size: (M, N) spatial size of the transform, ``M >= kh`` and ``N >= kw``.
        onesided: return the ``rfft2`` half-plane (B, C, M, N//2+1) instead of the full
            (B, C, M, N) spectrum.

    Small kernels (the usual case) are transformed by two small matrix products with
    DFT matrices, ``E_M K E_N^T``, which costs ``O(M N kw)`` instead of an FFT of the
    whole padded kernel; larger kernels use the FFT. Both give the same spectrum up to
    rounding.

    Example:
        >>> import torch
        >>> k = torch.rand(1, 2, 3, 3, dtype=torch.float64)
        >>> padded = torch.roll(torch.nn.functional.pad(k, (0, 5, 0, 7)), (-1, -1), (-2, -1))
        >>> bool(torch.allclose(kernel_otf(k, (10, 8)), torch.fft.fft2(padded)))
        True
    """
    kh, kw = weight.shape[-2:]
    m, n = size
    if kh * kw <= _tuning.DFT_MAX_TAPS:
        cdtype = torch.complex128 if weight.dtype == torch.float64 else torch.complex64
        em = _dft_matrix(m, kh, m, weight.device, cdtype)  # (M, kh)
        en = _dft_matrix(n, kw, n // 2 + 1 if onesided else n, weight.device, cdtype)  # (N', kw)
        return torch.matmul(torch.matmul(em, weight.to(cdtype)), en.transpose(0, 1))
    padded = F.pad(weight, (0, n - kw, 0, m - kh))
    padded = torch.roll(padded, shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1))
    return torch.fft.rfft2(padded) if onesided else torch.fft.fft2(padded)


@functools.lru_cache(maxsize=_tuning.TABLE_CACHE_SIZE)
def _dft_matrix(size: int, k: int, rows: int, device: torch.device, cdtype: torch.dtype) -> torch.Tensor:
    """(rows, k) matrix ``exp(-2 pi i u (a - k//2) / size)``, u < rows, a < k.

    The phase index ``u (a - k//2) mod size`` is formed in exact integer arithmetic and the
    exponential in float64, so the matrix is correct to the last bit of ``cdtype``.
    """
    with torch.inference_mode(False), torch.no_grad():  # cached: must be a normal tensor
        phase = -_phase(size, k, rows)
        return torch.polar(torch.ones_like(phase), phase).to(device=device, dtype=cdtype)


def _phase(size: int, k: int, rows: int) -> torch.Tensor:
    """(rows, k) float64 angles ``2 pi (u (a - k//2) mod size) / size``: the index is reduced
    in exact integer arithmetic before the float64 product."""
    u = torch.arange(rows, dtype=torch.int64)
    a = torch.arange(k, dtype=torch.int64) - k // 2
    return torch.remainder(u[:, None] * a[None, :], size).to(torch.float64) * (2.0 * math.pi / size)


def _block_mean(z: torch.Tensor, s: int) -> torch.Tensor:
    """Mean of the s x s distinct blocks of a (..., sH, sW) spectrum -> (..., H, W)."""
    if s == 1:
        return z
    *lead, sh, sw = z.shape
    h, w = sh // s, sw // s
    # two reductions over an outer dim with a contiguous inner run: much faster than a
    # strided mean over (-4, -2), notably for complex tensors
    rows = z.reshape(*lead, s, h * sw).sum(-2)
    return rows.reshape(*lead, h, s, w).sum(-2) / (s * s)


def _tile_half(z: torch.Tensor, s: int, out_w: int) -> torch.Tensor:
    """Tiles a full (..., H, W) spectrum s x s times and keeps the rfft half-plane columns."""
    if s == 1:
        return z[..., : out_w // 2 + 1]
    return z.repeat(*([1] * (z.dim() - 2)), s, s)[..., : out_w // 2 + 1]


def _tile_mul(a: torch.Tensor, z: torch.Tensor, s: int) -> torch.Tensor:
    """``a * _tile_half(z, s, sW)`` without materialising the tiled spectrum.

    a: (B, C, sH, sW//2+1) half-plane; z: (B', C, H, W) full spectrum. Row blocks of the
    tiling become a broadcast dimension; the half-plane's columns are ``j mod W``.
    """
    *lead, sh, wh = a.shape
    h, w = z.shape[-2:]
    cols = z if wh == w else z.index_select(-1, _wrap_index(wh, w, z.device))
    prod = a.reshape(*lead, s, h, wh) * cols.unsqueeze(-3)
    return prod.reshape(*prod.shape[:-3], sh, wh)


@functools.lru_cache(maxsize=_tuning.TABLE_CACHE_SIZE)
def _wrap_index(n: int, w: int, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):
        return torch.arange(n, device=device) % w




def _box_spectrum(s: int, m: int, n: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Full DFT (m, n) of an s x s box at offsets [0, s): turns zero-upsampling into nearest."""
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64

    def axis(size: int) -> torch.Tensor:
        u = torch.arange(size, dtype=dtype, device=device)
        a = torch.arange(s, dtype=dtype, device=device)
        phase = -2 * math.pi * torch.outer(u, a) / size
        return torch.polar(torch.ones_like(phase), phase).sum(-1).to(cdtype)

    return axis(m)[:, None] * axis(n)[None, :]


def converse_filter(
    weight: torch.Tensor,
    lam: torch.Tensor,
    size: Tuple[int, int],
    scale: int = 1,
    x0: str = "interp",
) -> torch.Tensor:
    """Spectral filter G such that ``converse2d(y) = irfft2(tile_s(F(y)) * G)``.

    Args:
        weight: (B, C, kh, kw) kernel, B = 1 or N.
        lam: (B', C, 1, 1) positive regulariser, B' = 1 or N.
        size: (H, W) of the (padded) input y.
        scale: upsampling factor s.
        x0: ``"interp"`` (nearest interpolation of y) or ``"zero"``.

    Returns:
        complex (max(B, B'), C, sH, sW//2+1) filter on the rfft half-plane of the output.
    """
    h, w = size
    s = scale
    big = (s * h, s * w)
    lam_c = lam.to(weight.dtype)
    if s == 1:
        if _real_filter_applies(weight, lam_c):
            return _filter_s1_real(weight, lam_c, big, x0)
        fk = kernel_otf(weight, big, onesided=True)
        fk2 = fk.real.square() + fk.imag.square()
        inv = 1.0 / (fk2 + lam_c)
        if x0 == "zero":
            return fk.conj() * inv
        # X0 = Y:  G = 1 + conj(FK)(1 - FK)/(|FK|^2 + lam) = (conj(FK) + lam)/(|FK|^2 + lam)
        return (fk.conj() + lam_c) * inv
    fk = kernel_otf(weight, big, onesided=False)
    fk2 = fk.real.square() + fk.imag.square()
    inv = 1.0 / (_block_mean(fk2, s) + lam_c)  # (B, C, H, W)
    fk_half = fk[..., : big[1] // 2 + 1].conj()
    if x0 == "zero":
        return _tile_mul(fk_half, inv.to(fk.dtype), s)
    box = _box_spectrum(s, big[0], big[1], weight.dtype, weight.device)
    residual_gain = (1 - _block_mean(fk * box, s)) * inv  # F(R) = F(Y) * (1 - (FK*Fbox)(v)s)
    return box[..., : big[1] // 2 + 1] + _tile_mul(fk_half, residual_gain, s)


def _tracks_grad(*ts: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in ts)


@functools.lru_cache(maxsize=_tuning.TABLE_CACHE_SIZE)
def _cos_sin_matrix(size: int, k: int, rows: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(rows, 2k) real matrix ``[cos | sin]`` of the phases ``2 pi u (a - k//2) / size``,
    u < rows, a < k: the real and (negated) imaginary parts of :func:`_dft_matrix`, with
    the phase index reduced in exact integer arithmetic and the trigonometry in float64."""
    with torch.inference_mode(False), torch.no_grad():  # cached: must be a normal tensor
        phase = _phase(size, k, rows)
        return torch.cat([phase.cos(), phase.sin()], dim=1).to(device=device, dtype=dtype)


_caches.register("solver-tables",
                 "kernel DFT matrices (complex, and real cos|sin) and tiled-spectrum column indices by size and device",
                 _caches.TABLES, _dft_matrix, _cos_sin_matrix, _wrap_index)


def _real_filter_applies(weight: torch.Tensor, lam: torch.Tensor) -> bool:
    """Whether the s = 1 filter may come from :func:`_filter_s1_real` (no autograd, lam not
    batched beyond the kernel, a kernel small enough for the matrix products)."""
    return (not _tracks_grad(weight, lam) and lam.shape[0] <= weight.shape[0]
            and weight.shape[-2] * weight.shape[-1] <= _tuning.DFT_MAX_TAPS)


def _filter_s1_real(weight: torch.Tensor, lam: torch.Tensor, big: Tuple[int, int], x0: str) -> torch.Tensor:
    """The s = 1 filter without autograd, from real arithmetic on contiguous planes.

    With the DFT matrices split as ``E = C - iS``, the kernel spectrum is
    ``FK = (C K C'^T - S K S'^T) - i (S K C'^T + C K S'^T)``: real matrix products give
    Re FK and Im conj(FK) as planes (:func:`_kernel_rows`, :func:`_filter_from_rows`), and
    ``G = (conj(FK) + lam) / (|FK|^2 + lam)`` (``lam`` dropped from the numerator for
    x0 = "zero") is a few passes over them, instead of strided passes over interleaved
    complex numbers. weight: (B, C, kh, kw); lam: (B' <= B, C, 1, 1). Returns the
    complex (B, C, M, N//2+1) filter on the rfft half-plane.
    """
    return _filter_from_rows(_kernel_rows(weight, big[1]), lam, big[0], x0)


def _kernel_rows(weight: torch.Tensor, n: int) -> torch.Tensor:
    """(B, C, 2, 2kh, N') real factors ``[K C'^T; -K S'^T]`` and ``[K S'^T; K C'^T]`` of the
    s = 1 kernel spectrum on an (M, n) plane, N' = n//2+1, for weight (B, C, kh, kw): the
    products ``[C | S] @ them`` are Re FK and Im conj(FK), (M, N') each. float64 for
    float64 kernels, float32 otherwise. Small: made once per call, for all channels."""
    kw = weight.shape[-1]
    dt = torch.float64 if weight.dtype == torch.float64 else torch.float32
    ln = _cos_sin_matrix(n, kw, n // 2 + 1, weight.device, dt)           # (N', 2kw) [C' | S']
    nq = ln.shape[0]
    kh = weight.shape[-2]
    kcs = torch.matmul(weight.to(dt), ln.reshape(nq, 2, kw).transpose(0, 2).reshape(kw, 2 * nq))
    kc, ks = kcs[..., :nq], kcs[..., nq:]                                 # K C'^T, K S'^T
    rows = kcs.new_empty(*kcs.shape[:-2], 2, 2 * kh, nq)
    rows[..., 0, :kh, :] = kc
    torch.neg(ks, out=rows[..., 0, kh:, :])
    rows[..., 1, :kh, :] = ks
    rows[..., 1, kh:, :] = kc
    return rows


def _kernel_planes(rows: torch.Tensor, m: int) -> torch.Tensor:
    """(B, C, 2, M, N') planes Re FK and Im conj(FK) on an (m, N) plane from
    :func:`_kernel_rows` (B, C, 2, 2kh, N'): one batched (M, 2kh) x (2kh, N') product."""
    kh = rows.shape[-2] // 2
    lm = _cos_sin_matrix(m, kh, m, rows.device, rows.dtype)              # (M, 2kh) [C | S]
    return torch.matmul(lm, rows)


def _filter_from_rows(rows: torch.Tensor, lam: torch.Tensor, m: int, x0: str) -> torch.Tensor:
    """The s = 1 filter on an (m, N) plane from :func:`_kernel_rows` (B, C, 2, 2kh, N')."""
    parts = _kernel_planes(rows, m)
    return _filter_from_parts(parts[..., 0, :, :], parts[..., 1, :, :], lam.to(rows.dtype), x0)


def _filter_from_parts(re: torch.Tensor, im: torch.Tensor, lam: torch.Tensor, x0: str) -> torch.Tensor:
    """``G = (conj(FK) + lam) / (|FK|^2 + lam)`` (``lam`` dropped from the numerator for
    x0 = "zero") from ``re`` = Re FK and ``im`` = Im conj(FK), both overwritten; ``lam``
    broadcasts against them. Complex result."""
    den = torch.addcmul(lam, re, re).addcmul_(im, im)
    if x0 != "zero":
        re.add_(lam)
    # two divisions rather than a reciprocal and two products: one pass fewer over the planes
    return torch.complex(re.div_(den), im.div_(den))


Pads = Tuple[int, int, int, int]  # (left, right, top, bottom), F.pad order


def _pad4(x: torch.Tensor, pads: Pads, mode: str) -> torch.Tensor:
    if not any(pads):
        return x
    return F.pad(x, pads, mode=mode)


def _crop(out: torch.Tensor, pads: Pads, s: int, h: int, w: int) -> torch.Tensor:
    left, _, top, _ = pads
    if out.shape[-2:] == (s * h, s * w):
        return out
    return out[..., s * top : s * (top + h), s * left : s * (left + w)]


def _fold(g: torch.Tensor, dim: int, before: int, n: int, after: int) -> torch.Tensor:
    """Adjoint of circular padding along one dim (before, after <= n)."""
    out = g.narrow(dim, before, n).clone()
    if before:
        out.narrow(dim, n - before, before).add_(g.narrow(dim, 0, before))
    if after:
        out.narrow(dim, 0, after).add_(g.narrow(dim, before + n, after))
    return out


def _pad_adjoint(g: torch.Tensor, pads: Pads, mode: str, shape) -> torch.Tensor:
    """Gradient of ``_pad4`` w.r.t. its input, given the gradient ``g`` of the padded tensor."""
    left, right, top, bottom = pads
    h, w = shape[-2:]
    if not any(pads):
        return g
    if mode == "constant":
        return g[..., top : top + h, left : left + w]
    if mode == "circular":
        return _fold(_fold(g, -2, top, h, bottom), -1, left, w, right)
    shape_only = g.new_empty(()).expand(shape)  # the aten backward kernels read sizes only
    if mode == "reflect":
        return torch.ops.aten.reflection_pad2d_backward(g, shape_only, list(pads))
    return torch.ops.aten.replication_pad2d_backward(g, shape_only, list(pads))


class _ConverseS1(torch.autograd.Function):
    """pad -> ``irfft2(rfft2(.) * g)`` -> crop for s = 1, with a lean backward.

    The map is a real circular convolution, so the input gradient is the correlation
    ``irfft2(rfft2(grad) * conj(g))`` followed by the adjoint of the padding (a fold for
    circular padding, aten's pad backward kernels otherwise), with no per-slice copies.
    The filter gradient is autograd's own formula for ``irfft2`` and the product
    (``rfft2(grad) / HW`` with the interior columns doubled, times ``conj(rfft2(yp))``),
    summed over broadcast batch entries. Only ``rfft2(yp)`` is saved, and only when the
    filter needs a gradient (and y itself when y needs one too, for double backward).

    Second-order gradients (``create_graph=True``, e.g. ``gradgradcheck`` or gradient
    penalties) are supported: the backward then runs the same formulas with
    differentiable out-of-place ops, so the gradients carry a graph of their own.
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, g: torch.Tensor, pads: Pads, mode: str) -> torch.Tensor:
        yp = _pad4(y, pads, mode)
        size = yp.shape[-2:]
        fy = _fft.rfft2(yp)
        del yp
        need_g = ctx.needs_input_grad[1]
        z = fy * g if need_g else fy.mul_(g)
        ctx.pads, ctx.mode, ctx.y_shape, ctx.size = pads, mode, y.shape, tuple(size)
        ctx.g_batch = g.shape[0]
        # y itself is needed only for a second-order gradient in which the filter gradient
        # (made from rfft2(yp)) is differentiated with respect to y: only when both need
        # gradients (then it costs one more saved activation, as a convolution keeps its input)
        keep_y = need_g and ctx.needs_input_grad[0]
        ctx.save_for_backward(fy if need_g else None, g, y if keep_y else None)
        out = _fft.irfft2(z, size)
        del z
        return _crop(out, pads, 1, *y.shape[-2:])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        fy, g, y = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the gradients must be differentiable
            return _ConverseS1.backward_differentiable(ctx, grad, y, g, fy)
        h, w = ctx.size
        left, right, top, bottom = ctx.pads
        gs = _fft.rfft2(F.pad(grad, (left, right, top, bottom)))  # adjoint of the crop
        grad_y = grad_g = None
        if ctx.needs_input_grad[1]:
            gz = gs * fy.conj()
            dbl = w - (w // 2 + 1)
            if dbl > 0:
                gz[..., 1 : 1 + dbl] *= 2
            gz.div_(h * w)
            if ctx.g_batch == 1 and gz.shape[0] != 1:
                gz = gz.sum(0, keepdim=True)
            grad_g = gz
        if ctx.needs_input_grad[0]:
            gyp = _fft.irfft2(gs.mul_(g.conj()), (h, w))
            del gs
            grad_y = _pad_adjoint(gyp, ctx.pads, ctx.mode, ctx.y_shape)
        return grad_y, grad_g, None, None

    @staticmethod
    def backward_differentiable(ctx, grad, y, g, fy_saved):
        """The formulas of :meth:`backward` written with differentiable, out-of-place ops,
        for double backward (``create_graph=True``)."""
        need_y, need_g = ctx.needs_input_grad[:2]
        h, w = ctx.size
        left, right, top, bottom = ctx.pads
        with torch.enable_grad():
            gs = torch.fft.rfft2(F.pad(grad, (left, right, top, bottom)))  # adjoint of the crop
            grad_y = grad_g = None
            if need_y:  # correlation with g, then the adjoint of the padding
                gyp = torch.fft.irfft2(gs * g.conj(), s=(h, w))
                # the padding is linear: its adjoint is autograd's vjp of the padding itself
                probe = torch.zeros(ctx.y_shape, dtype=gyp.dtype, device=gyp.device, requires_grad=True)
                (grad_y,) = torch.autograd.grad(_pad4(probe, ctx.pads, ctx.mode), probe, gyp, create_graph=True)
            if need_g:
                # rfft2(yp): differentiable in y when y needs a gradient (then it was kept);
                # otherwise the saved spectrum is a constant
                fy = torch.fft.rfft2(_pad4(y, ctx.pads, ctx.mode)) if y is not None else fy_saved
                dbl = w - (w // 2 + 1)
                scale = torch.ones(w // 2 + 1, dtype=gs.real.dtype, device=gs.device)
                scale[1 : 1 + dbl] = 2.0
                gz = gs * fy.conj() * (scale / (h * w))
                if ctx.g_batch == 1 and gz.shape[0] != 1:
                    gz = gz.sum(0, keepdim=True)
                grad_g = gz
        return grad_y, grad_g, None, None


class _ConverseS1CL(torch.autograd.Function):
    """:class:`_ConverseS1` for a channels-last y on a CPU: the same formulas with the
    channels-last padding and transforms (:mod:`conversenet.functional._channels_last`), so
    a channels-last network (e.g. a :class:`~conversenet.models._common.ConverseStack` in
    training) never converts its features for the operator. g: the planar (B, C, M, W')
    filter. Saves y (not its spectrum) when the filter needs a gradient. Returns a
    channels-last result. The arithmetic is :func:`s1cl_forward` / :func:`s1cl_backward`."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, g: torch.Tensor, pads: Pads, mode: str) -> torch.Tensor:
        ctx.pads, ctx.mode = pads, mode
        ctx.save_for_backward(g, y if ctx.needs_input_grad[1] else None)
        return s1cl_forward(y, g, pads, mode)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g, y = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the planar formulas, differentiable
            ctx.y_shape, ctx.size, ctx.g_batch = grad.shape, _padded_size(grad.shape, ctx.pads), g.shape[0]
            return _ConverseS1.backward_differentiable(ctx, grad, y, g, None)
        grad_y, grad_g = s1cl_backward(grad, y, g, ctx.pads, ctx.mode, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return grad_y, grad_g, None, None


def _padded_size(shape, pads: Pads) -> Tuple[int, int]:
    return shape[-2] + pads[2] + pads[3], shape[-1] + pads[0] + pads[1]


def s1cl_forward(y: torch.Tensor, g: torch.Tensor, pads: Pads, mode: str) -> torch.Tensor:
    """Converse2d (s = 1) of a channels-last CPU y (N, C, H, W) with the planar filter g
    (B, C, M, W//2+1), no autograd: pad -> rfft2 -> * g -> irfft2 -> crop, channels-last
    throughout. The padded planes and spectra are temporaries of the per-thread workspace
    (:mod:`conversenet.functional._workspace`): fresh ones would page-fault in on every call
    (at 16 x 128 x 72 x 72 on an AMD EPYC, an irfft2 into a new tensor took 31 ms, into a
    reused one 18 ms). Returns a new channels-last (N, C, H, W) tensor."""
    n, c, h, w = y.shape
    left, _, top, _ = pads
    size = _padded_size(y.shape, pads)
    padded = (n, size[0], size[1], c)
    yp = _channels_last.pad_cl(y.permute(0, 2, 3, 1), pads, mode, out=_workspace.buffer("cl-pad", padded, y))
    fy = _fft.rfft2_cl(yp, out=_spectrum("cl-spec", padded, y))
    z = fy.mul_(g.permute(0, 2, 3, 1))                           # (B, M, W', C) view of g
    full = _fft.irfft2_cl(z, size, overwrite=True, out=yp)     # yp is spent: its buffer again
    out = _workspace.fresh((n, h, w, c), full.dtype, full.device)  # dense and the caller's own
    out.copy_(full[:, top : top + h, left : left + w])
    return out.permute(0, 3, 1, 2)


def s1cl_backward(grad: torch.Tensor, y: Optional[torch.Tensor], g: torch.Tensor, pads: Pads, mode: str,
                  need_y: bool, need_g: bool, out: Optional[torch.Tensor] = None):
    """Gradients of :func:`s1cl_forward` (no autograd): (grad_y, grad_g) from ``grad``
    (N, C, H, W), channels-last or not; y is needed only for grad_g (its spectrum is
    recomputed: one more FFT instead of keeping it). grad_y: channels-last, written into
    ``out`` (a contiguous (N, H, W, C) tensor) when given; grad_g: (B, C, M, W//2+1)."""
    n, c, h, w = grad.shape
    hp, wp = _padded_size(grad.shape, pads)
    padded = (n, hp, wp, c)
    # adjoint of the crop: grad zero-padded (only the border is zeroed, not the whole)
    gp = _channels_last.pad_cl(grad.permute(0, 2, 3, 1), pads, "constant",
                               out=_workspace.buffer("cl-pad", padded, grad))
    gs = _fft.rfft2_cl(gp, out=_spectrum("cl-spec", padded, grad))
    grad_y = grad_g = None
    if need_g:
        yp = _channels_last.pad_cl(y.permute(0, 2, 3, 1), pads, mode, out=gp)  # gp is spent
        fy = _fft.rfft2_cl(yp, out=_spectrum("cl-spec2", padded, grad))
        if g.shape[0] == 1:  # summed over the batch image by image: no batch-sized product
            gz = torch.zeros_like(gs[:1])
            for i in range(n):
                gz[0].addcmul_(gs[i], fy[i].conj())
        else:
            gz = gs * fy.conj()
        dbl = wp - (wp // 2 + 1)
        if dbl > 0:
            gz[:, :, 1 : 1 + dbl] *= 2
        grad_g = gz.div_(hp * wp).permute(0, 3, 1, 2)
    if need_y:
        gyp = _fft.irfft2_cl(gs.mul_(g.permute(0, 2, 3, 1).conj()), (hp, wp), overwrite=True,
                             out=_workspace.buffer("cl-pad", padded, grad))
        if out is None:
            out = _workspace.fresh((n, h, w, c), gyp.dtype, gyp.device)
        grad_y = _channels_last.pad_adjoint_cl(gyp, pads, mode, out=out).permute(0, 3, 1, 2)
    return grad_y, grad_g


def s1cl_parts(shape, dtype: torch.dtype, weight: torch.Tensor, lam: torch.Tensor, padding: Optional[int],
               padding_mode: str, x0, fft_size: str = "exact") -> Optional[Tuple[torch.Tensor, Pads]]:
    """(g, pads) for running :func:`s1cl_forward` / :func:`s1cl_backward` in place of
    ``converse2d(x, weight, lam, 1, padding, padding_mode, x0, fft_size)`` on a channels-last
    CPU x of ``shape`` (N, C, H, W) and ``dtype``, inside an autograd function of the
    caller's: g is built from weight and lam with autograd (:func:`converse_filter`, in
    ``dtype``), pads are those of the padded plane. None where converse2d would take another
    route (a tensor x0, another dtype, export mode, torch.compile, empty tensors, a kernel
    larger than the plane, C not the kernel's channels). padding is checked as converse2d
    checks it."""
    n, c, h, w = shape
    if not (dtype in (torch.float32, torch.float64) and isinstance(x0, str) and x0 in X0_MODES
            and weight.dim() == 4 and weight.shape[:2] == (1, c) and n * c * h * w > 0
            and not _matrix_dft.export_active() and not torch.compiler.is_compiling()):
        return None
    padding = check_padding(padding, padding_mode, (h, w), PADDING_MODES)
    pads = fft_pads(h, w, padding, 1, padding_mode, fft_size)
    lam_c = check_lam(lam, n, c, 2, weight.device, dtype)
    hp, wp = _padded_size(shape, pads)
    if weight.shape[-2] > hp or weight.shape[-1] > wp or lam_c.shape[0] != 1:
        return None
    with _no_autocast(weight.device.type):
        return converse_filter(weight.to(dtype), lam_c, (hp, wp), 1, x0), pads


def _spectrum(name: str, padded: Tuple[int, int, int, int], like: torch.Tensor) -> torch.Tensor:
    """Workspace buffer for the (N, M, W//2+1, C) spectrum of a padded (N, M, W, C) array."""
    n, m, w, c = padded
    return _workspace.buffer(name, (n, m, w // 2 + 1, c), like, _fft._COMPLEX[like.dtype])


def _apply_filter(yp: torch.Tensor, g: torch.Tensor, s: int) -> torch.Tensor:
    """``irfft2(tile_s(F(yp)) * g)`` at the padded output size (no autograd shortcuts)."""
    h, w = yp.shape[-2:]
    big = (s * h, s * w)
    if s == 1:
        fy = _fft.rfft2(yp)
        return _fft.irfft2(fy * g if _tracks_grad(fy, g) else fy.mul_(g), big)
    return _fft.irfft2(_tile_mul(g, torch.fft.fft2(yp), s), big)


def _converse_chunked(
    y: torch.Tensor, k_or_g: torch.Tensor, lam: Optional[torch.Tensor], pads: Pads, mode: str,
    s: int, x0: str, size: Tuple[int, int], dst: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """No-autograd solve, channel group by group, into one contiguous output (``dst`` when
    given: an (N, C, sH, sW) contiguous tensor of y's dtype, written and returned).

    ``lam is None``: ``k_or_g`` is a precomputed filter; otherwise it is the kernel and the
    filter of each group is built on the fly (never the whole filter at once).
    """
    n, c, h, w = y.shape
    hp, wp = size
    # GPUs: one group (many small groups would be launch-bound; memory is plentiful there)
    # channel groups of about SOLVE_CHUNK_ELEMS output elements: the padded input, its
    # spectrum and the FFT work space exist for one group at a time (conversenet._tuning)
    budget = _tuning.SOLVE_CHUNK_ELEMS if y.device.type == "cpu" else _tuning.SOLVE_CHUNK_ELEMS_GPU
    step = max(1, budget // (n * s * s * hp * wp))
    threads = torch.get_num_threads()
    if y.device.type == "cpu" and step < c and step >= threads:  # whole FFT batches per thread
        step = -(-step // threads) * threads

    # CPUs, s = 1: the inverse transform only for the rows kept, on the group's own spectrum
    rows_inverse = s == 1 and y.device.type == "cpu"
    # s = 1 filters from real products: the kernel's small factor once for all channels
    real = lam is not None and s == 1 and _real_filter_applies(k_or_g, lam)
    kernel_rows = _kernel_rows(k_or_g, wp) if real else None
    # ... and, where numba is installed and measured faster, applied in one fused pass
    fused = (kernel_rows is not None and rows_inverse
             and _fused.choose(n * min(step, c), hp, wp, kernel_rows.dtype) == "fused")

    def group_filter(sl: slice) -> torch.Tensor:
        if lam is None:
            return k_or_g[:, sl]
        if kernel_rows is not None:
            return _filter_from_rows(kernel_rows[:, sl], lam[:, sl], hp, x0)
        return converse_filter(k_or_g[:, sl], lam[:, sl], size, s, x0)

    def solve(sl: slice, dst: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        if lam is not None and s > 1:  # solved at the input size, written into dst (see _upsolve)
            return _upsolve.converse_up(_pad4(y[:, sl], pads, mode), y[:, sl], k_or_g[:, sl], lam[:, sl],
                                        pads, s, x0, out=dst)
        if fused:
            parts = _kernel_planes(kernel_rows[:, sl], hp)
            fy = _fft.rfft2(_pad4(y[:, sl], pads, mode)).contiguous()
            _fused.apply_s1_filter(fy, parts, lam[:, sl], x0)
        else:
            g = group_filter(sl)
            if not rows_inverse:
                return _crop(_apply_filter(_pad4(y[:, sl], pads, mode), g, s), pads, s, h, w)
            fy = _fft.rfft2(_pad4(y[:, sl], pads, mode)).contiguous().mul_(g)  # axes/split: strided
        rows = _workspace.buffer("solve-rows", (n, dst.shape[1], h, wp), y)
        _fft.irfft2_rows(fy, size, pads[2], rows)
        dst.copy_(rows[..., pads[0] : pads[0] + w])
        return None

    if step >= c and dst is None and not rows_inverse:
        return solve(slice(0, c))
    out = dst if dst is not None else _workspace.fresh((n, c, s * h, s * w), y.dtype, y.device)
    for c0 in range(0, c, step):
        sl = slice(c0, min(c, c0 + step))
        if (lam is not None and s > 1) or rows_inverse:
            solve(sl, out[:, sl])
        else:
            out[:, sl] = solve(sl)
    return out


def _solve_with_x0(
    yp: torch.Tensor, weight: torch.Tensor, lam: torch.Tensor, s: int, x0p: torch.Tensor
) -> torch.Tensor:
    """General closed form for an arbitrary X0 tensor (already at the padded output size)."""
    h, w = yp.shape[-2:]
    big = (s * h, s * w)
    fk = kernel_otf(weight, big, onesided=False)
    fk2 = fk.real.square() + fk.imag.square()
    inv = 1.0 / (_block_mean(fk2, s) + lam)
    fr = torch.fft.fft2(yp) - _block_mean(fk * torch.fft.fft2(x0p), s)
    upd = fk[..., : big[1] // 2 + 1].conj() * _tile_half(fr * inv, s, big[1])
    return x0p + _fft.irfft2(upd, big)


FFT_SIZES = ("exact", "fast")


def _smooth(n: int) -> bool:
    for p in (2, 3, 5, 7):
        while n % p == 0:
            n //= p
    return n == 1


def fft_pads(h: int, w: int, padding: int, scale: int, mode: str, fft_size: str = "exact") -> Pads:
    """Padding (left, right, top, bottom) that :func:`converse2d` applies to an H x W input.

    ``"exact"`` pads ``padding`` on every side. ``"fast"`` grows each padded side length L
    to the smallest L' >= L whose output FFT size ``scale * L'`` has prime factors <= 7,
    splitting the extra pixels between both sides (the extra stays within what the
    padding mode allows; otherwise that side length is kept).

    Example:
        >>> fft_pads(256, 250, 6, 1, "circular", "fast")  # 268 = 4*67 -> 270, 262 -> 270
        (10, 10, 7, 7)
    """
    check_choice("fft_size", fft_size, FFT_SIZES)
    if fft_size == "exact":
        return (padding,) * 4

    def grow(n: int) -> Tuple[int, int]:
        length = n + 2 * padding
        while not _smooth(scale * length):
            length += 1
        extra = length - n - 2 * padding
        before, after = padding + extra // 2, padding + extra - extra // 2
        limit = {"reflect": n - 1, "circular": n}.get(mode)
        if limit is not None and after > limit:
            return padding, padding
        return before, after

    top, bottom = grow(h)
    left, right = grow(w)
    return (left, right, top, bottom)


# --------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------
def converse2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    lam: Lam,
    scale: int = 1,
    padding: int = 0,
    padding_mode: str = "circular",
    x0: Union[str, torch.Tensor] = "interp",
    *,
    filter: Optional[torch.Tensor] = None,
    fft_size: str = "exact",
) -> torch.Tensor:
    """Reverse convolution: the closed-form inverse of depthwise convolution + s-fold downsampling.

    Solves, per sample and channel, at the padded size,
    ``argmin_X ||Y - (X (x) K) |s||^2 + lam ||X - X0||^2`` and crops ``padding * scale``
    pixels from every side of the result.

    Args:
        x: (N, C, H, W) input Y, real floating point, any strides. The solve runs in
            float32 (float64 for float64 x); float16/bfloat16 results are returned in
            x's dtype, and under ``torch.autocast`` in the autocast dtype like a
            convolution (float64 excepted). N or C may be 0 (empty result).
        weight: (1, C, kh, kw) shared kernel or (N, C, kh, kw) one kernel per sample.
            Centre at ``(kh // 2, kw // 2)``; any size up to the padded output size.
        lam: positive regulariser: a float, a C-vector, 1xCx1x1 or NxCx1x1 tensor;
            finite and at most the largest float32 (float64 for float64 x).
        scale: integer upsampling factor s >= 1.
        padding: pixels of padding added to every side of x before solving.
        padding_mode: ``"circular"``, ``"reflect"``, ``"replicate"`` or ``"constant"`` (zeros).
        x0: ``"interp"`` (nearest interpolation of x by s, the paper's default), ``"zero"``,
            or an (N, C, H*s, W*s) tensor (padded by ``padding*scale`` with the same mode).
        filter: precomputed :func:`converse_filter` for the padded size (advanced; used by
            the module's eval-mode cache). Must match weight, lam, scale and x0.
        fft_size: ``"exact"`` (default): solve at exactly the padded size, the published
            behaviour. ``"fast"``: opt-in, add up to a few more pixels of padding (same
            mode, split between both sides) so that the FFT size has no prime factor
            above 7; faster for sizes such as 268 = 4*67, but the result changes slightly
            near the borders (see ``docs/PERFORMANCE.md``).

    Returns:
        (N, C, H*scale, W*scale) tensor in x's dtype (see x), ``channels_last`` when x is.

    Gradients flow to x, weight, lam and an x0 tensor, to second order too
    (``create_graph=True``). Under ``torch.compile`` the solve is one custom op
    (:mod:`conversenet.functional._solve_op`); see ``docs/LAYER.md``.

    Example:
        >>> import torch
        >>> from conversenet.functional import converse2d, conv_down
        >>> k = torch.softmax(torch.randn(1, 3, 5 * 5), -1).reshape(1, 3, 5, 5)
        >>> y = torch.randn(2, 3, 16, 20)
        >>> out = converse2d(y, k, lam=1e-2, scale=2, padding=4)
        >>> out.shape
        torch.Size([2, 3, 32, 40])
    """
    return _converse2d(x, weight, lam, scale, padding, padding_mode, x0, filter, fft_size)


def _converse2d(x, weight, lam, scale, padding, padding_mode, x0, filter, fft_size,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`converse2d`; ``out``: an optional scratch tensor the caller owns (used by the
    fused no-grad :class:`~conversenet.nn.ConverseBlock` path, whose operator output is
    consumed inside the block): where the no-autograd solve runs and ``out`` is a
    contiguous tensor of the result's shape and dtype, the result is written into it
    (no fresh multi-megabyte buffer, whose page faults cost as much as copying it);
    otherwise ``out`` is ignored. Returns the result, ``out`` or not."""
    # everything is checked before any arithmetic happens (conversenet.checks)
    n, c = check_input_and_kernel(x, weight, 2)
    h, w = x.shape[-2:]
    scale = check_int("scale", scale, 1)
    padding = check_padding(padding, padding_mode, (h, w), PADDING_MODES)
    pads = fft_pads(h, w, padding, scale, padding_mode, fft_size)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    lam_c = check_lam(lam, n, c, 2, weight.device, compute)
    kh, kw = weight.shape[-2:]
    hp, wp = h + pads[2] + pads[3], w + pads[0] + pads[1]
    if kh > scale * hp or kw > scale * wp:
        raise ValueError(
            f"weight: kernel {kh}x{kw} is larger than the padded output {scale * hp}x{scale * wp}; "
            "increase padding or use a smaller kernel"
        )
    x0_tensor = None
    if isinstance(x0, torch.Tensor):
        check_tensor("x0", x0)
        if tuple(x0.shape) != (n, c, h * scale, w * scale):
            raise ValueError(
                f"x0 must have the output's shape {(n, c, h * scale, w * scale)}, got {tuple(x0.shape)}"
            )
        x0_tensor = x0
    else:
        check_choice("x0", x0, X0_MODES, " or a tensor")
    check_fft_device(x.device)

    if _matrix_dft.export_active():  # export_mode(): real DFT matrices, no FFTs/complex
        return _matrix_dft.converse2d_export(x, weight, lam_c, scale, pads, padding_mode, x0)
    out_dtype = output_dtype(x)
    with _no_autocast(x.device.type):
        y = x.to(compute)
        k = weight.to(compute)
        x0c = x0_tensor.to(compute) if x0_tensor is not None else None
        x0_mode = "tensor" if x0c is not None else x0
        if n == 0 or c == 0:
            res = _empty_result(y, k, lam_c, x0c, filter, scale)
        elif torch.compiler.is_compiling():
            # one opaque node for the compiler (Inductor cannot generate code for the
            # complex tensors inside); it runs the same eager implementation
            res = _solve_op.converse2d_solve(
                y, k, lam_c, x0c, filter, scale, list(pads), padding_mode, x0_mode
            )
        else:
            fits = (out is not None and out.dtype == compute == out_dtype and out.device == x.device
                    and tuple(out.shape) == (n, c, scale * h, scale * w)
                    and (out.is_contiguous() or out.is_contiguous(memory_format=torch.channels_last)))
            res = _solve(y, k, lam_c, x0c, filter, scale, pads, padding_mode, x0_mode, out if fits else None)
    res = res.to(out_dtype)
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        res = res.contiguous(memory_format=torch.channels_last)  # as a conv would keep it
    return res


def output_dtype(x: torch.Tensor) -> torch.dtype:
    """dtype of ``converse2d(x, ...)``: that of x; under autocast, autocast's dtype.

    Like a convolution under ``torch.autocast``, the result is in the autocast dtype
    (float16 or bfloat16) whatever the input dtype, except for float64 inputs, which
    autocast leaves alone. The solve itself always runs in float32 (float64 for float64).
    """
    dev = x.device.type
    if x.dtype != torch.float64 and _autocast_available(dev) and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def _autocast_available(device_type: str) -> bool:
    return torch.amp.is_autocast_available(device_type)


def _no_autocast(device_type: str):
    """Context that turns autocast off for the solve (a no-op where autocast does not exist)."""
    if _autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _empty_result(y, k, lam, x0, filt, s) -> torch.Tensor:
    """The (N, C, sH, sW) result when N or C is 0, still connected to the inputs' graph
    (every gradient is zero, as no output depends on anything)."""
    n, c, h, w = y.shape
    out = y.new_zeros(n, c, s * h, s * w)
    parts = [t for t in (y, k, lam, x0, filt) if t is not None and _tracks_grad(t)]
    if parts:
        out = out + sum(t.sum().real * 0 for t in parts)
    return out


class _FftDevices:
    """Whether torch.fft runs on a device type: cpu and cuda are known to, any other type is
    probed once (listed in :mod:`conversenet._caches`; ``clear()`` forgets the probes)."""

    _KNOWN = {"cpu": True, "cuda": True}

    def __init__(self) -> None:
        self.ok: dict = dict(self._KNOWN)
        self.errors: dict = {}

    def clear(self) -> None:
        self.ok = dict(self._KNOWN)
        self.errors = {}

    def __len__(self) -> int:  # device types probed (the known ones are not a cache)
        return sum(1 for k in self.ok if k not in self._KNOWN)


FFT_DEVICES = _FftDevices()
_caches.register("fft-devices", "whether torch.fft runs on a device type (probed once per type)",
                 "one entry per device type probed", FFT_DEVICES)


def check_fft_device(device: torch.device) -> None:
    """Raises a clear error if ``device`` cannot run the FFTs of the solve.

    CPU and CUDA are known to; any other device type is probed once with a tiny real FFT
    round trip, and the answer is cached per device type.
    """
    probes = FFT_DEVICES
    ok = probes.ok.get(device.type)
    if ok is None:
        try:
            z = torch.fft.rfft2(torch.ones(2, 2, device=device))
            torch.fft.irfft2(z, s=(2, 2))
            ok = True
        except Exception as e:  # any failure means: no usable FFT there
            ok = False
            probes.errors[device.type] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        probes.ok[device.type] = ok
    if not ok:
        raise RuntimeError(
            f"converse2d needs torch.fft, which does not run on device '{device}' "
            f"({probes.errors.get(device.type, 'probe failed')}); move the input and the "
            "layer to a device with FFT support (cpu or cuda)"
        )



def _solve(
    y: torch.Tensor, k: torch.Tensor, lam: torch.Tensor, x0: Optional[torch.Tensor],
    filt: Optional[torch.Tensor], scale: int, pads: Pads, mode: str, x0_mode: str,
    dst: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The solve on validated inputs of the compute dtype (autocast off): (N, C, sH, sW).

    ``x0`` is the unpadded X0 tensor when ``x0_mode == "tensor"``, else None; ``filt`` an
    optional precomputed :func:`converse_filter`. Takes the fast no-autograd paths where
    nothing needs a gradient; those write into ``dst`` when it is given (see
    :func:`_converse_chunked`), the others ignore it.
    """
    pads = tuple(pads)
    n, c, h, w = y.shape
    hp, wp = h + pads[2] + pads[3], w + pads[0] + pads[1]
    if x0 is not None:
        yp = _pad4(y, pads, mode)
        x0p = _pad4(x0, tuple(scale * p for p in pads), mode)
        return _crop(_solve_with_x0(yp, k, lam, scale, x0p), pads, scale, h, w)
    if (_channels_last.applies(y, k, lam, scale, x0_mode) and (filt is None or filt.shape[0] == 1)
            and not _tracks_grad(filt if filt is not None else k)):
        return _channels_last.solve(y, k, lam, pads, mode, x0_mode, filt, dst)
    if dst is not None and not dst.is_contiguous():
        dst = None
    if filt is None and not _tracks_grad(y, k, lam):
        # the filter is built group by group inside: never the whole of it at once
        return _converse_chunked(y, k, lam, pads, mode, scale, x0_mode, (hp, wp), dst)
    g = filt if filt is not None else converse_filter(k, lam, (hp, wp), scale, x0_mode)
    if not _tracks_grad(y, g):
        return _converse_chunked(y, g, None, pads, mode, scale, x0_mode, (hp, wp), dst)
    if scale == 1:
        if y.device.type == "cpu" and _channels_last.is_channels_last(y):
            return _ConverseS1CL.apply(y, g, pads, mode)
        return _ConverseS1.apply(y, g, pads, mode)
    return _crop(_apply_filter(_pad4(y, pads, mode), g, scale), pads, scale, h, w)


def conv_down(x: torch.Tensor, weight: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """Forward model of Converse2D: circular depthwise convolution, then s-fold downsampling.

    ``y[i, j] = sum_{a, b} K[a, b] x[(s*i - a + kh//2) mod H, (s*j - b + kw//2) mod W]``

    Args:
        x: (N, C, H, W) with H and W divisible by ``scale``.
        weight: (1, C, kh, kw) or (N, C, kh, kw), kh <= H and kw <= W.
        scale: keep the upper-left pixel of every scale x scale block.

    Returns:
        (N, C, H // scale, W // scale).

    Example:
        >>> import torch
        >>> from conversenet.functional import conv_down
        >>> conv_down(torch.randn(1, 2, 8, 6), torch.ones(1, 2, 3, 3) / 9, scale=2).shape
        torch.Size([1, 2, 4, 3])
    """
    n, c = check_input_and_kernel(x, weight, 2)
    h, w = x.shape[-2:]
    scale = check_int("scale", scale, 1)
    if h % scale or w % scale:
        raise ValueError(f"x size {h}x{w} must be divisible by scale={scale}")
    kh, kw = weight.shape[-2:]
    if kh > h or kw > w:
        raise ValueError(f"weight: kernel {kh}x{kw} is larger than x ({h}x{w})")
    # true convolution == correlation with the flipped kernel; centre kh//2 means
    # (kh - 1 - kh//2) pixels of wrap-around before and kh//2 after.
    ch, cw = kh // 2, kw // 2
    xp = F.pad(x, (kw - 1 - cw, cw, kh - 1 - ch, ch), mode="circular")
    k = weight.flip(-2, -1).to(x.dtype)
    if weight.shape[0] == 1:
        out = F.conv2d(xp, k.reshape(c, 1, kh, kw), groups=c)
    else:
        out = F.conv2d(xp.reshape(1, n * c, *xp.shape[-2:]), k.reshape(n * c, 1, kh, kw), groups=n * c)
        out = out.reshape(n, c, h, w)
    return out[..., ::scale, ::scale]
