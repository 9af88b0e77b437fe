"""Converse2D's fixed-size solve with real DFT matrices instead of FFTs (for export).

ONNX has no operator that the PyTorch exporters map ``rfft2``/``irfft2`` of complex
tensors to (the TorchScript path has no FFT support, the dynamo path fails on 2-D
inverse real FFTs), and onnxruntime has no complex dtype. For a *fixed* input size the
transforms are linear maps, so they are exact as products with cosine and sine matrices
and the complex arithmetic expands into real arithmetic. Inside :func:`export_mode`
:func:`conversenet.functional.converse2d` (and hence every Converse layer and model)
computes

    out = irfft2(tile_s(F(y)) * G)

as (real and imaginary parts kept in separate halves of the last axis, Wh = sW//2 + 1)::

    Yw  = y  @ [cos | -sin](w -> Wh)          (N, C, h, 2Wh)    rfft over W
    T   = [cos; sin](h -> sH) @ Yw            (N, C, 2sH, 2Wh)  fft over H, tiled s times
    Z   = T * G                               complex product, written out in reals
    U   = [cos; sin](sH -> sH) @ Z / sH       inverse fft over H
    out = [U_re | U_im] @ [c cos; -c sin]     c2r over W (c = 1/sW, 2/sW for the
                                              interior columns)

and the filter G (:func:`filter_parts`) from the kernel with the same matrices, so a
kernel given as a model input (Converse-USRNet) exports too. The tiling of the spectrum
by the scale is folded into the forward H and W matrices (``exp(-2 pi i u a / h)`` for
``u < s h`` repeats with period h). Phases are formed from exact integer products
``(u a) mod n`` and evaluated in float64 before the cast, so every matrix entry is
correctly rounded. The result equals the FFT path up to float rounding (about 1e-12 in
float64).

Cost: per plane ``h w (2 Wh) + 2 sH h (2 Wh) + 2 sH sH (2 Wh) + sH (2 Wh) sW`` multiply-adds,
about ``6 n^3`` for an n x n plane at s = 1 against ``O(n^2 log n)`` for FFTs; see
``docs/LAYER.md`` for measured times and file sizes.

Matrices are built with numpy (never cached as torch tensors, so that tracing with fake
tensors leaves nothing behind) and enter the traced graph as constants.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Iterator, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .. import _caches, _tuning

__all__ = ["export_mode", "export_active", "filter_parts", "apply_filter", "kernel_otf_parts", "solve"]


class _State(threading.local):
    depth = 0


_STATE = _State()


@contextlib.contextmanager
def export_mode(enabled: bool = True) -> Iterator[None]:
    """Within this context, ``converse2d`` solves with real DFT matrices (no FFTs, no
    complex tensors), so that ``torch.export`` and ``torch.onnx.export`` of any Converse
    layer or model produce graphs of real ONNX operators (MatMul, Mul, Add, Div, ...).

    The traced graph is valid for the traced input size only (the matrices depend on it).
    Per thread; nests. ``export_mode(False)`` switches it off inside an outer context.

    Example:
        >>> import torch
        >>> from conversenet.functional import converse2d, export_mode
        >>> y, k = torch.randn(1, 2, 6, 5, dtype=torch.float64), torch.rand(1, 2, 3, 3, dtype=torch.float64)
        >>> with export_mode():
        ...     out = converse2d(y, k, 0.01, scale=2, padding=2)
        >>> bool(torch.allclose(out, converse2d(y, k, 0.01, scale=2, padding=2), atol=1e-10))
        True
    """
    saved = _STATE.depth
    _STATE.depth = saved + 1 if enabled else 0
    try:
        yield
    finally:
        _STATE.depth = saved


def export_active() -> bool:
    """True inside :func:`export_mode` (in this thread)."""
    return _STATE.depth > 0


# --------------------------------------------------------------------------------------
# matrices (numpy float64, cached; converted to torch per call)
# --------------------------------------------------------------------------------------
def _phase(rows: int, cols: int, n: int, col_offset: int = 0) -> np.ndarray:
    """(rows, cols) angles ``2 pi ((u (a - col_offset)) mod n) / n`` with exact integer products."""
    u = np.arange(rows, dtype=np.int64)[:, None]
    a = np.arange(cols, dtype=np.int64)[None, :] - col_offset
    return (2.0 * np.pi / n) * np.mod(u * a, n).astype(np.float64)


@functools.lru_cache(maxsize=_tuning.TABLE_CACHE_SIZE)
def _fwd_w(w: int, wh: int) -> np.ndarray:
    """(w, 2 wh): ``y @ M`` = [Re | Im] of the first wh DFT columns of a length-w axis."""
    ph = _phase(wh, w, w)
    return np.concatenate([np.cos(ph), -np.sin(ph)], 0).T.copy()


@functools.lru_cache(maxsize=_tuning.TABLE_CACHE_SIZE)
def _fwd_h(h: int, rows: int) -> np.ndarray:
    """(2 rows, h): [cos; sin] of ``exp(-2 pi i u a / h)``, u < rows (periodic: tiles by rows/h)."""
    ph = _phase(rows, h, h)
    return np.concatenate([np.cos(ph), np.sin(ph)], 0)


@functools.lru_cache(maxsize=_tuning.TABLE_CACHE_SIZE)
def _inv_h(n: int) -> np.ndarray:
    """(2n, n): [cos; sin] of ``exp(+2 pi i m u / n) / n``."""
    ph = _phase(n, n, n)
    return np.concatenate([np.cos(ph), np.sin(ph)], 0) / n


@functools.lru_cache(maxsize=_tuning.TABLE_CACHE_SIZE)
def _inv_w(n: int) -> np.ndarray:
    """(2 (n//2+1), n): ``[U_re | U_im] @ M`` is irfft over a length-n axis (c2r)."""
    wh = n // 2 + 1
    ph = _phase(wh, n, n)
    c = np.full((wh, 1), 2.0 / n)
    c[0] = 1.0 / n
    if n % 2 == 0:
        c[-1] = 1.0 / n
    return np.concatenate([c * np.cos(ph), -c * np.sin(ph)], 0)


@functools.lru_cache(maxsize=_tuning.TABLE_CACHE_SIZE)
def _kernel_mats(n: int, k: int, rows: int) -> np.ndarray:
    """(2, rows, k): cos and sin of ``2 pi u (a - k//2) / n`` (the kernel's centre at 0)."""
    ph = _phase(rows, k, n, k // 2)
    return np.stack([np.cos(ph), np.sin(ph)])


@functools.lru_cache(maxsize=_tuning.TABLE_CACHE_SIZE)
def _box(s: int, m: int, n: int) -> np.ndarray:
    """(2, m, n): Re and Im of the DFT of an s x s box at offsets [0, s)."""

    def axis(size: int) -> np.ndarray:
        return np.exp(-1j * _phase(size, s, size)).sum(-1)

    b = axis(m)[:, None] * axis(n)[None, :]
    return np.stack([b.real, b.imag])


_caches.register("export-tables", "export_mode(): real DFT matrices and box spectra (numpy float64)",
                 _caches.TABLES, _fwd_w, _fwd_h, _inv_h, _inv_w, _kernel_mats, _box)


def _t(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """The float64 matrix rounded to like's dtype in numpy: a traced graph stores it as a
    constant of that dtype (not a float64 constant and a cast)."""
    if like.dtype == torch.float32:
        a = a.astype(np.float32)
    return torch.from_numpy(a).to(dtype=like.dtype, device=like.device)


# --------------------------------------------------------------------------------------
# filter and solve in real arithmetic
# --------------------------------------------------------------------------------------
def kernel_otf_parts(
    weight: torch.Tensor, size: Tuple[int, int], onesided: bool = False
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of :func:`conversenet.functional.kernel_otf`.

    weight (B, C, kh, kw) -> two (B, C, M, N or N//2+1) tensors.
    ``FK = Em K En^T`` with ``Em = Cm - i Sm``: ``K En^T = A - i B`` (A = K Cn^T,
    B = K Sn^T), so ``Re FK = Cm A - Sm B`` and ``Im FK = -(Cm B + Sm A)``.
    """
    kh, kw = weight.shape[-2:]
    m, n = size
    cm, sm = _t(_kernel_mats(m, kh, m), weight).unbind(0)
    cn, sn = _t(_kernel_mats(n, kw, n // 2 + 1 if onesided else n), weight).unbind(0)
    a = torch.matmul(weight, cn.transpose(0, 1))
    b = torch.matmul(weight, sn.transpose(0, 1))
    re = torch.matmul(cm, a) - torch.matmul(sm, b)
    im = -(torch.matmul(cm, b) + torch.matmul(sm, a))
    return re, im


def _block_mean(z: torch.Tensor, s: int) -> torch.Tensor:
    if s == 1:
        return z
    *lead, sh, sw = z.shape
    return z.reshape(*lead, s, sh // s, s, sw // s).mean(dim=(-4, -2))


def _tile_half(z: torch.Tensor, s: int, wh: int) -> torch.Tensor:
    """(..., H, W) tiled s x s times, first wh columns."""
    return z.repeat(*([1] * (z.dim() - 2)), s, s)[..., :wh]


def filter_parts(
    weight: torch.Tensor, lam: torch.Tensor, size: Tuple[int, int], scale: int = 1, x0: str = "interp"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts of :func:`conversenet.functional.converse_filter`.

    Args:
        weight: (B, C, kh, kw); lam: (B', C, 1, 1); size: (H, W) of the padded input.

    Returns:
        two (max(B, B'), C, sH, sW//2+1) tensors.
    """
    h, w = size
    s = scale
    big = (s * h, s * w)
    wh = big[1] // 2 + 1
    lam = lam.to(weight.dtype)
    if s == 1:
        fr, fi = kernel_otf_parts(weight, big, onesided=True)
        den = fr * fr + fi * fi + lam
        return ((fr if x0 == "zero" else fr + lam) / den, -fi / den)
    fr, fi = kernel_otf_parts(weight, big, onesided=False)
    inv = 1.0 / (_block_mean(fr * fr + fi * fi, s) + lam)  # (B, C, H, W)
    hr, hi = fr[..., :wh], -fi[..., :wh]  # conj(FK) on the half-plane
    if x0 == "zero":
        t = _tile_half(inv, s, wh)
        return hr * t, hi * t
    br, bi = _t(_box(s, *big), weight).unbind(0)
    # residual gain (1 - blockmean(FK * box)) * inv, complex
    gr = (1.0 - _block_mean(fr * br - fi * bi, s)) * inv
    gi = -_block_mean(fr * bi + fi * br, s) * inv
    tr, ti = _tile_half(gr, s, wh), _tile_half(gi, s, wh)
    return br[..., :wh] + hr * tr - hi * ti, bi[..., :wh] + hr * ti + hi * tr


def _dft(x: torch.Tensor, rows: int, cols: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Re and Im of ``fft2(x)`` at frequencies u < rows, v < cols (periodic beyond H, W).

    x (..., H, W) real -> two (..., rows, cols). rows = s H tiles the spectrum s times.
    """
    h, w = x.shape[-2:]
    yw = torch.matmul(x, _t(_fwd_w(w, cols), x))  # (..., H, 2 cols)  [Re | Im]
    t = torch.matmul(_t(_fwd_h(h, rows), x), yw)  # (..., 2 rows, 2 cols)
    # sum_a exp(-i phi) (Yr + i Yi) = (cos Yr + sin Yi) + i (cos Yi - sin Yr)
    return t[..., :rows, :cols] + t[..., rows:, cols:], t[..., :rows, cols:] - t[..., rows:, :cols]


def _irdft(zr: torch.Tensor, zi: torch.Tensor, width: int) -> torch.Tensor:
    """``irfft2`` of the half-plane spectrum zr + i zi (..., M, width//2+1) -> (..., M, width)."""
    m = zr.shape[-2]
    u = torch.matmul(_t(_inv_h(m), zr), torch.cat([zr, zi], dim=-1))  # (..., 2M, 2 wh)
    wh = zr.shape[-1]
    # sum_u exp(+i psi) (Zr + i Zi) = (cos Zr - sin Zi) + i (cos Zi + sin Zr)
    ur = u[..., :m, :wh] - u[..., m:, wh:]
    ui = u[..., :m, wh:] + u[..., m:, :wh]
    return torch.matmul(torch.cat([ur, ui], dim=-1), _t(_inv_w(width), zr))


def apply_filter(yp: torch.Tensor, gr: torch.Tensor, gi: torch.Tensor, s: int) -> torch.Tensor:
    """``irfft2(tile_s(F(yp)) * (gr + i gi), (sH, sW))`` with real matrix products.

    yp (N, C, H, W) real; gr, gi (1 or N, C, sH, sW//2+1) -> (N, C, sH, sW).
    """
    h, w = yp.shape[-2:]
    sh, sw = s * h, s * w
    tr, ti = _dft(yp, sh, sw // 2 + 1)
    return _irdft(tr * gr - ti * gi, tr * gi + ti * gr, sw)


def solve_with_x0(yp: torch.Tensor, weight: torch.Tensor, lam: torch.Tensor, s: int,
                  x0p: torch.Tensor) -> torch.Tensor:
    """The general closed form for an X0 tensor (padded, (N, C, sH, sW)), in real arithmetic:
    ``X0 + irfft2(conj(FK) tile_s(F(R) / (|FK|^2 (v)s + lam)))``,
    ``F(R) = F(Y) - (FK F(X0)) (v)s``."""
    h, w = yp.shape[-2:]
    sh, sw = s * h, s * w
    wh = sw // 2 + 1
    fr, fi = kernel_otf_parts(weight, (sh, sw), onesided=False)
    inv = 1.0 / (_block_mean(fr * fr + fi * fi, s) + lam.to(weight.dtype))
    yr, yi = _dft(yp, h, w)
    xr, xi = _dft(x0p, sh, sw)
    rr = (yr - _block_mean(fr * xr - fi * xi, s)) * inv
    ri = (yi - _block_mean(fr * xi + fi * xr, s)) * inv
    tr, ti = _tile_half(rr, s, wh), _tile_half(ri, s, wh)
    hr, hi = fr[..., :wh], -fi[..., :wh]
    return x0p + _irdft(hr * tr - hi * ti, hr * ti + hi * tr, sw)


def solve(y: torch.Tensor, weight: torch.Tensor, lam: torch.Tensor, scale: int,
          pads: Tuple[int, int, int, int], padding_mode: str, x0) -> torch.Tensor:
    """Converse2D by matrix DFTs: pad, solve, crop (arguments already validated and cast by
    :func:`conversenet.functional.converse2d`; ``pads`` is (left, right, top, bottom)).

    y (N, C, H, W); weight (1|N, C, kh, kw); lam (1|N, C, 1, 1); x0 a mode or an
    (N, C, sH, sW) tensor -> (N, C, sH, sW).
    """
    n, c, h, w = y.shape
    s = scale
    left, right, top, bottom = pads
    yp = F.pad(y, pads, mode=padding_mode) if any(pads) else y
    if isinstance(x0, torch.Tensor):
        x0p = F.pad(x0, tuple(s * p for p in pads), mode=padding_mode) if any(pads) else x0
        out = solve_with_x0(yp, weight, lam, s, x0p)
    else:
        gr, gi = filter_parts(weight, lam, tuple(yp.shape[-2:]), s, x0)
        out = apply_filter(yp, gr, gi, s)
    if any(pads):
        out = out[..., s * top : s * (top + h), s * left : s * (left + w)]
    return out


def converse2d_export(x: torch.Tensor, weight: torch.Tensor, lam: torch.Tensor, scale: int,
                      pads: Tuple[int, int, int, int], padding_mode: str, x0) -> torch.Tensor:
    """:func:`solve` in float32 (float64 for float64 input), returned in x's dtype, outside
    autocast: the same dtype rules as :func:`conversenet.functional.converse2d`."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=x.device.type, enabled=False):
        x0c = x0.to(compute) if isinstance(x0, torch.Tensor) else x0
        out = solve(x.to(compute), weight.to(compute), lam.to(compute), scale, pads, padding_mode, x0c)
    return out.to(x.dtype)
