"""Converse2D for s > 1 with x0 = "interp" or "zero", solved at the input size.

The frequency-domain solve (``converse_filter``) multiplies the s x s tiled spectrum of the
padded input Y (H x W) by a filter on the sH x sW output grid. Two identities move almost
all of that work to the H x W grid and into space:

* tiling a spectrum s x s times is zero-upsampling in space:
  ``F_sH(zero_up(v)) = tile(F_H(v))``;
* the mean of a spectrum over its s x s aliases is the transform of the signal subsampled
  by s: ``mean_a F_sH(q)[u + aH] = F_H(q[s n])[u]`` (sum over the aliases, s terms per axis).

With FK the (sH x sW) kernel spectrum, box the s x s box (nearest interpolation), and
``A = mean_s(FK * Fbox)``, ``B = mean_s(|FK|^2)`` (H x W), the closed form is::

    x0 = "interp":  X = nearest_up(Y) + corr_K(zero_up(v)),  v = F_H^-1(F_H(Y) (1 - A) / (B + lam))
    x0 = "zero":    X =                 corr_K(zero_up(v)),  v = F_H^-1(F_H(Y) / (B + lam))

where ``corr_K`` is the circular correlation with the kernel (multiplication by conj(FK)).
A and B are DFTs of tiny arrays (the kernel convolved with the box, and the kernel's
autocorrelation, each subsampled by s), so they cost two small matrix products; the FFTs
run at H x W instead of sH x sW (a quarter of the work at s = 2) and the correlation is a
depthwise convolution with the small kernel. The result equals ``converse_filter``'s up to
float rounding (tests compare both with the paper's Eq. 6 in float64).
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .. import _caches, _tuning
from . import _fft

__all__ = ["converse_up"]


@functools.lru_cache(maxsize=_tuning.TABLE_CACHE_SIZE)
def _phase_matrix(size: int, first: int, count: int, rows: int, device: torch.device,
                  cdtype: torch.dtype) -> torch.Tensor:
    """(rows, count) matrix ``exp(-2 pi i u (first + e) / size)``, phases reduced exactly."""
    with torch.inference_mode(False), torch.no_grad():  # cached: must be a normal tensor
        u = torch.arange(rows, dtype=torch.int64)
        e = torch.arange(count, dtype=torch.int64) + first
        idx = torch.remainder(u[:, None] * e[None, :], size).to(torch.float64)
        return torch.polar(torch.ones_like(idx), idx * (-2.0 * math.pi / size)).to(device=device, dtype=cdtype)


def _subsampled_dft(q: torch.Tensor, origin: Tuple[int, int], s: int, h: int, w: int) -> torch.Tensor:
    """Half-plane (..., h, w//2+1) DFT on the h x w grid of ``q[s n]``.

    q: (..., a, b) small real array whose entry (i, j) sits at position
    ``(i - origin[0], j - origin[1])``; only positions divisible by s are kept.
    """
    def keep(n: int, o: int) -> Tuple[int, int, int]:
        first = -(o // s)  # smallest e with s*e >= -o
        start = s * first + o  # array index of position s*first
        count = (n - 1 - start) // s + 1
        return first, start, count

    fy, sy, ny = keep(q.shape[-2], origin[0])
    fx, sx, nx = keep(q.shape[-1], origin[1])
    sub = q[..., sy::s, sx::s][..., :ny, :nx]
    cdtype = torch.complex128 if q.dtype == torch.float64 else torch.complex64
    em = _phase_matrix(h, fy, ny, h, q.device, cdtype)
    en = _phase_matrix(w, fx, nx, w // 2 + 1, q.device, cdtype)
    return torch.matmul(torch.matmul(em, sub.to(cdtype)), en.transpose(0, 1))


def _lag_sum(a: torch.Tensor, b: torch.Tensor, sign: int) -> torch.Tensor:
    """Sums of ``a[i] * b[j]`` over the 2-D index pairs with the same ``j + sign * i``
    (sign=-1: correlation lags j - i; sign=+1: convolution positions i + j).

    a: (..., ah, aw), b: (..., bh, bw) -> (..., ah + bh - 1, aw + bw - 1); entry 0 is the
    smallest lag / position. Tiny arrays: an outer product and one index_add (no conv
    primitive, which costs milliseconds to set up for tiny shapes).
    """
    ah, aw = a.shape[-2:]
    bh, bw = b.shape[-2:]
    lead = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    prod = a.reshape(*a.shape[:-2], ah, aw, 1, 1) * b.reshape(*b.shape[:-2], 1, 1, bh, bw)
    oh, ow = ah + bh - 1, aw + bw - 1
    key = (ah, aw, bh, bw, sign, a.device)
    idx = _lag_index(*key)
    out = prod.new_zeros(*lead, oh * ow)
    out.index_add_(-1, idx, prod.expand(*lead, ah, aw, bh, bw).reshape(*lead, -1))
    return out.reshape(*lead, oh, ow)


@functools.lru_cache(maxsize=_tuning.TABLE_CACHE_SIZE)
def _lag_index(ah: int, aw: int, bh: int, bw: int, sign: int, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):
        i = torch.arange(ah).reshape(ah, 1, 1, 1)
        j = torch.arange(aw).reshape(1, aw, 1, 1)
        k = torch.arange(bh).reshape(1, 1, bh, 1)
        m = torch.arange(bw).reshape(1, 1, 1, bw)
        # row index of entry: k + sign*i shifted to start at 0
        row = k + sign * i + (ah - 1 if sign < 0 else 0)
        col = m + sign * j + (aw - 1 if sign < 0 else 0)
        return (row * (aw + bw - 1) + col).reshape(-1).to(device)


_caches.register("upsolve-tables", "phase matrices and correlation index maps of the s > 1 solve",
                 _caches.TABLES, _phase_matrix, _lag_index)


def _gain(weight: torch.Tensor, lam: torch.Tensor, s: int, h: int, w: int, x0: str) -> torch.Tensor:
    """(1 - A) / (B + lam) (interp) or 1 / (B + lam) (zero) on the h x (w//2+1) half-plane."""
    kh, kw = weight.shape[-2:]
    ch, cw = kh // 2, kw // 2
    # autocorrelation sum_m k[m] k[m + d], lags d in [-(kh-1), kh-1]: entry i <-> lag i-(kh-1)
    auto = _lag_sum(weight, weight, -1)
    big_b = _subsampled_dft(auto, (kh - 1, kw - 1), s, h, w).real
    inv = (big_b + lam).reciprocal_()
    if x0 == "zero":
        return inv
    # kernel (positions a - ch) convolved with the s x s box at [0, s): entry i <-> i - ch
    box = torch.ones(s, s, dtype=weight.dtype, device=weight.device)
    big_a = _subsampled_dft(_lag_sum(weight, box, 1), (ch, cw), s, h, w)
    return big_a.neg_().add_(1) * inv


def converse_up(yp: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, lam: torch.Tensor,
                pads: Tuple[int, int, int, int], s: int, x0: str,
                out: Optional[torch.Tensor] = None, method: str = "auto") -> torch.Tensor:
    """Converse2D output (cropped) for s > 1, x0 in ("interp", "zero"), without autograd.

    Args:
        yp: (N, C, H, W) padded input; x: (N, C, h, w) the input before padding.
        weight: (1 or N, C, kh, kw) with kh <= sH, kw <= sW; lam: (1 or N, C, 1, 1).
        pads: (left, right, top, bottom) of yp around x.
        out: optional (N, C, s*h, s*w) tensor (a view is fine) to write the result into.
        method: how the correlation is applied: ``"phases"`` (per output phase, the
            taps as multiply-adds of shifted views), ``"transposed"`` (one depthwise
            transposed convolution) or ``"auto"`` (phases when the kernel is no larger
            than s, so that every output pixel takes one tap).

    Returns:
        (N, C, s*h, s*w), the crop of the padded solution (``out`` when given).

    The correlation with the kernel of the zero-upsampled v costs kh*kw multiply-adds per
    input pixel either way; the zero samples are never touched.
    """
    n, c, hp, wp = yp.shape
    left, _, top, _ = pads
    h, w = x.shape[-2:]
    kh, kw = weight.shape[-2:]
    g = _gain(weight, lam, s, hp, wp, x0)
    v = _fft.irfft2(_fft.rfft2(yp).mul_(g), (hp, wp))
    if method not in ("auto", "phases", "transposed"):
        raise ValueError(f"method must be 'auto', 'phases' or 'transposed', got {method!r}")
    # the rows of v read are top + dy + i, dy in [dy0, dy1] (likewise columns)
    (dy0, dy1), (dx0, dx1) = _reach(kh, s), _reach(kw, s)
    my0, my1 = max(0, -(top + dy0)), max(0, top + h - 1 + dy1 - (hp - 1))
    mx0, mx1 = max(0, -(left + dx0)), max(0, left + w - 1 + dx1 - (wp - 1))
    if max(my0, my1) > hp or max(mx0, mx1) > wp:
        raise ValueError("kernel reaches around the padded grid more than once")  # unreachable: kh <= sH
    if my0 or my1 or mx0 or mx1:  # the kernel reaches around the (circular) padded grid
        v = F.pad(v, (mx0, mx1, my0, my1), mode="circular")
    top, left = top + my0, left + mx0
    base = x.to(v.dtype) if x0 == "interp" else None
    if method == "auto":
        # one tap per output pixel (kernel no larger than s): the phase loop is a single
        # multiply-add pass; larger kernels take the one transposed convolution
        method = "phases" if kh <= s and kw <= s else "transposed"
    if out is None:
        out = torch.empty(n, c, s * h, s * w, dtype=v.dtype, device=v.device)
    correlate = _correlate_phases if method == "phases" else _correlate_transposed
    return correlate(v, base, weight.to(v.dtype).flip(-2, -1), top, left, h, w, s, out)


def _reach(k: int, s: int) -> Tuple[int, int]:
    """Smallest and largest shift (in input samples) that a tap of a k-kernel centred at
    k//2 reads, for output phases 0..s-1: shift (phase - k//2 + p) // s, p < k."""
    c = k // 2
    return -((c + s - 1) // s), (s - 1 - c + k - 1) // s


def _taps(k: int, s: int, origin: int) -> list:
    """(phase, shift) of each flipped-kernel tap along one axis: tap p lands on output
    phase (p - origin) mod s and reads v shifted by ``shift`` samples."""
    return [((p - origin) % s, ((p - origin) % s + origin - p) // s) for p in range(k)]


def _window(v: torch.Tensor, top: int, left: int, h: int, w: int, kh: int, kw: int, s: int):
    """The rows/columns of v that the taps read, and the offsets (oy, ox) of the output
    in the transposed convolution of that window with the flipped kernel."""
    (dy0, dy1), (dx0, dx1) = _reach(kh, s), _reach(kw, s)
    vr = v[..., top + dy0 : top + h + dy1, left + dx0 : left + w + dx1]
    return vr, s * -dy0 + kh - 1 - kh // 2, s * -dx0 + kw - 1 - kw // 2


def _correlate_phases(v, base, kf, top, left, h, w, s, out):
    """``out = base + corr_K(zero_up(v))`` (cropped), phase by phase of the output: output
    pixel (s*I + a, s*J + b) takes v at (I + di, J + dj) times the taps of phase (a, b),
    so every phase is a few multiply-adds of shifted views of v.

    v: (N, C, H', W'); base: (N, C, h, w) or None (zero); kf: (1 or N, C, kh, kw) flipped
    kernel; out: (N, C, s*h, s*w), written and returned.
    """
    c = v.shape[1]
    kb, _, kh, kw = kf.shape
    vr, oy, ox = _window(v, top, left, h, w, kh, kw, s)
    rows, cols = _taps(kh, s, oy), _taps(kw, s, ox)
    # window rows outside [0, rows) contribute nothing: zero margins keep every view in range
    zy0 = max(0, -min(d for _, d in rows))
    zy1 = max(0, max(d for _, d in rows) + h - vr.shape[-2])
    zx0 = max(0, -min(d for _, d in cols))
    zx1 = max(0, max(d for _, d in cols) + w - vr.shape[-1])
    if zy0 or zy1 or zx0 or zx1:
        vr = F.pad(vr, (zx0, zx1, zy0, zy1))
    phases = out.unflatten(-2, (h, s)).unflatten(-1, (w, s))
    for a in range(s):
        for b in range(s):
            dst = phases[:, :, :, a, :, b]
            taps = [(p, di, q, dj) for p, (pa, di) in enumerate(rows) if pa == a
                    for q, (qb, dj) in enumerate(cols) if qb == b]
            if not taps:  # kernel smaller than s: this phase gets no tap
                dst.zero_() if base is None else dst.copy_(base)
            # several taps accumulate in a contiguous buffer (vectorised), copied once into
            # the strided phase; a single tap writes the phase directly
            acc = dst if len(taps) == 1 else None
            for i, (p, di, q, dj) in enumerate(taps):
                src = vr[..., zy0 + di : zy0 + di + h, zx0 + dj : zx0 + dj + w]
                coef = kf[..., p, q].reshape(kb, c, 1, 1)
                if i:
                    acc.addcmul_(src, coef)
                elif base is None:
                    acc = torch.mul(src, coef, out=acc)
                else:
                    acc = torch.addcmul(base, src, coef, out=acc)
            if acc is not None and acc is not dst:
                dst.copy_(acc)
    return out


def _correlate_transposed(v, base, kf, top, left, h, w, s, out):
    """As :func:`_correlate_phases`, with one depthwise transposed convolution (stride s)
    of the window of v with the flipped kernel, then the crop and the add of ``base``."""
    n, c = v.shape[:2]
    kb, _, kh, kw = kf.shape
    vr, oy, ox = _window(v, top, left, h, w, kh, kw, s)
    if kb == 1:
        ct = F.conv_transpose2d(vr, kf.reshape(c, 1, kh, kw), stride=s, groups=c)
    else:
        ct = F.conv_transpose2d(vr.reshape(1, n * c, *vr.shape[-2:]), kf.reshape(n * c, 1, kh, kw),
                                stride=s, groups=n * c).reshape(n, c, -1, (vr.shape[-1] - 1) * s + kw)
    short_y, short_x = oy + s * h - ct.shape[-2], ox + s * w - ct.shape[-1]
    if short_y > 0 or short_x > 0:  # kernel smaller than s: the last phases get no tap
        ct = F.pad(ct, (0, max(0, short_x), 0, max(0, short_y)))
    corr = ct[..., oy : oy + s * h, ox : ox + s * w]
    if base is None:
        return out.copy_(corr)
    up = base[:, :, :, None, :, None].expand(n, c, h, s, w, s)
    torch.add(corr.unflatten(-2, (h, s)).unflatten(-1, (w, s)), up, out=out.unflatten(-2, (h, s)).unflatten(-1, (w, s)))
    return out
