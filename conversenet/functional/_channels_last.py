"""The no-autograd s = 1 solve of a channels-last tensor, without leaving that layout.

A channels-last (N, C, H, W) tensor is an (N, H, W, C) array: at every pixel its C
channels lie side by side. The 1x1 convolutions around a Converse2d (the converse block)
run faster as matrix products in that order on CPUs (one (HW, C) x (C, O) product instead
of (O, C) x (C, HW)), and the FFT libraries of the pocketfft family vectorise across the
contiguous channel axis. So the whole solve stays channels-last:

    pad (index maps from torch's own padding of a ramp) -> rfft2 over H, W ->
    multiply by the filter G (built directly in (H', W'//2+1, C) order) -> irfft2 -> crop

with G = (conj(FK) + lam) / (|FK|^2 + lam) (``x0="interp"``; ``lam`` leaves the numerator
for ``x0="zero"``), the same filter as :func:`conversenet.functional.converse.converse_filter`.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .. import _caches, _tuning
from . import _fft

Pads = Tuple[int, int, int, int]  # (left, right, top, bottom), F.pad order


def is_channels_last(y: torch.Tensor) -> bool:
    """A 4-D tensor stored channels-last and not also contiguous (the two agree for C = 1
    or 1x1 planes)."""
    return y.dim() == 4 and not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last)


def applies(y: torch.Tensor, weight: torch.Tensor, lam: torch.Tensor, scale: int, x0) -> bool:
    """Whether :func:`solve` handles this call: a CPU channels-last (and not also contiguous)
    float tensor, s = 1, one kernel and one lam for the whole batch, a small kernel,
    ``x0`` "interp" or "zero", no autograd."""
    return (y.device.type == "cpu" and scale == 1 and isinstance(x0, str) and x0 in ("interp", "zero")
            and is_channels_last(y)
            and weight.shape[0] == 1 and lam.shape[0] == 1
            and weight.shape[-2] * weight.shape[-1] <= _tuning.DFT_MAX_TAPS
            and not (torch.is_grad_enabled() and (y.requires_grad or weight.requires_grad or lam.requires_grad)))


@functools.lru_cache(maxsize=_tuning.TABLE_CACHE_SIZE)
def _source_index(n: int, before: int, after: int, mode: str) -> torch.Tensor:
    """Source position of each of the ``before + n + after`` padded positions (mode: circular,
    reflect or replicate), read off torch's own padding of a ramp: the same convention."""
    with torch.inference_mode(False), torch.no_grad():
        ramp = torch.arange(n, dtype=torch.float64).view(1, 1, n)
        return F.pad(ramp, (before, after), mode=mode).view(-1).round().long()


_caches.register("channels-last-pad-index", "source row/column of each padded position, by size and padding mode",
                 _caches.TABLES, _source_index)


def pad_cl(y: torch.Tensor, pads: Pads, mode: str, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.pad`` of an (N, H, W, C) array over H and W -> contiguous (N, H', W', C), written
    into ``out`` when given (a contiguous tensor of that shape and y's dtype)."""
    left, right, top, bottom = pads
    n, h, w, c = y.shape
    shape = (n, top + h + bottom, left + w + right, c)
    if out is None:
        out = y.new_empty(shape)
    elif not (out.shape == shape and out.dtype == y.dtype and out.is_contiguous()):
        raise ValueError(f"out must be a contiguous {y.dtype} tensor of shape {shape}, got {tuple(out.shape)}")
    out[:, top : top + h, left : left + w] = y
    if mode == "constant":
        out[:, :top].zero_()
        out[:, top + h :].zero_()
        out[:, top : top + h, :left].zero_()
        out[:, top : top + h, left + w :].zero_()
        return out
    iw = _source_index(w, left, right, mode).to(y.device)
    ih = _source_index(h, top, bottom, mode).to(y.device)
    if left:
        out[:, top : top + h, :left] = y.index_select(2, iw[:left])
    if right:
        out[:, top : top + h, left + w :] = y.index_select(2, iw[left + w :])
    # whole padded rows: copies of rows already complete in ``out``
    if top:
        out[:, :top] = out.index_select(1, ih[:top] + top)
    if bottom:
        out[:, top + h :] = out.index_select(1, ih[top + h :] + top)
    return out


def pad_adjoint_cl(gp: torch.Tensor, pads: Pads, mode: str, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Adjoint of :func:`pad_cl`: the gradient of its (N, H, W, C) input from the gradient
    ``gp`` (N, H', W', C) of the padded array, i.e. every padded position's value added to
    the position it copies (the same index maps as :func:`pad_cl`; "constant": a crop).
    ``gp`` is overwritten (its border is summed into its interior in place, so that only the
    border is touched twice); the result is a new contiguous tensor, or ``out``."""
    left, right, top, bottom = pads
    n, hp, wp, c = gp.shape
    h, w = hp - top - bottom, wp - left - right
    if mode != "constant":
        ih = _source_index(h, top, bottom, mode).to(gp.device)
        iw = _source_index(w, left, right, mode).to(gp.device)
        rows = gp[:, top : top + h]                      # the interior rows, whole width
        if top:
            rows.index_add_(1, ih[:top], gp[:, :top])
        if bottom:
            rows.index_add_(1, ih[top + h :], gp[:, top + h :])
        inner = rows[:, :, left : left + w]
        if left:
            inner.index_add_(2, iw[:left], rows[:, :, :left])
        if right:
            inner.index_add_(2, iw[left + w :], rows[:, :, left + w :])
    if out is None:
        out = gp.new_empty(n, h, w, c)
    return out.copy_(gp[:, top : top + h, left : left + w])


def filter_cl(weight: torch.Tensor, lam: torch.Tensor, size: Tuple[int, int], x0: str) -> torch.Tensor:
    """The s = 1 filter in (M, N//2+1, C) order, complex, from real matrix products.

    weight: (1, C, kh, kw); lam: (1, C, 1, 1); size: (M, N) padded plane. With the DFT
    matrices split as ``E = Cos - i Sin`` (phases of the kernel centred at (kh//2, kw//2)),
    ``FK = (Cos_M K Cos_N^T - Sin_M K Sin_N^T) - i (Sin_M K Cos_N^T + Cos_M K Sin_N^T)``; the
    inner products are (kh, N', C) arrays and the outer ones single (M, 2kh) x (2kh, N' C)
    products, so FK comes out channels-last. G = (conj(FK) + lam) / (|FK|^2 + lam), lam
    dropped from the numerator for x0 = "zero" (the planar filter's own arithmetic)."""
    # the planar filter's kernel factor, exact-phase tables and arithmetic
    from .converse import _cos_sin_matrix, _filter_from_parts, _kernel_rows

    m, n = size
    _, c, kh, _ = weight.shape
    nq = n // 2 + 1
    rows = _kernel_rows(weight.detach(), n)[0]                         # (C, 2, 2kh, N')
    lm = _cos_sin_matrix(m, kh, m, weight.device, rows.dtype)         # (M, 2kh)  [Cos | Sin]
    # channels last: (2, 2kh, N' C), one (M, 2kh) x (2kh, N' C) product per plane
    parts = torch.matmul(lm, rows.permute(1, 2, 3, 0).reshape(2, 2 * kh, nq * c)).view(2, m, nq, c)
    return _filter_from_parts(parts[0], parts[1], lam.detach().to(rows.dtype).reshape(c), x0)


def solve(y: torch.Tensor, weight: torch.Tensor, lam: torch.Tensor, pads: Pads, mode: str, x0: str,
          filt: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None,
          group: Optional[int] = None) -> torch.Tensor:
    """Converse2d (s = 1) of a channels-last y (see :func:`applies`).

    Args:
        y: (N, C, H, W) channels-last, float32 or float64.
        weight: (1, C, kh, kw) kernel; lam: (1, C, 1, 1).
        pads: (left, right, top, bottom) of the padded plane; mode: padding mode.
        x0: "interp" or "zero".
        filt: optional precomputed planar filter (1, C, H', W'//2+1) (an eval-mode cache).
        out: optional (N, C, H, W) channels-last tensor of y's dtype for the result.
        group: channels solved at a time (default: about ``SOLVE_CHUNK_ELEMS`` padded
            elements, so that each group's buffers stay in cache).

    Returns:
        (N, C, H, W) channels-last.
    """
    n, c, h, w = y.shape
    left, right, top, bottom = pads
    size = (h + top + bottom, w + left + right)
    if out is None or not (out.shape == y.shape and out.dtype == y.dtype
                           and out.is_contiguous(memory_format=torch.channels_last)):
        out = torch.empty_like(y, memory_format=torch.channels_last)
    if group is None:
        # about SOLVE_CHUNK_ELEMS padded elements, rounded up to whole 64-byte runs of
        # channels per pixel (16 float32): shorter runs leave the copies and the filter's
        # per-channel arithmetic unvectorised
        run = max(1, 64 // y.element_size())
        group = -(-max(1, _tuning.SOLVE_CHUNK_ELEMS // (n * size[0] * size[1])) // run) * run
    yc, oc = y.permute(0, 2, 3, 1), out.permute(0, 2, 3, 1)     # (N, H, W, C) views
    for c0 in range(0, c, group):
        sl = slice(c0, min(c, c0 + group))
        spec = _fft.rfft2_cl(pad_cl(yc[..., sl], pads, mode))
        if filt is not None:
            spec.mul_(filt[0, sl].permute(1, 2, 0))
        else:
            spec.mul_(filter_cl(weight[:, sl], lam[:, sl], size, x0))
        full = _fft.irfft2_cl(spec, size, overwrite=True)
        oc[..., sl] = full[:, top : top + h, left : left + w]
    return out
