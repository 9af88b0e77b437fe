"""The real 2-D FFTs of the solver; on CPUs the fastest available implementation is used.

``rfft2(x)`` and ``irfft2(z, size)`` equal ``torch.fft.rfft2`` / ``torch.fft.irfft2`` up to
float rounding. GPUs call torch.fft directly. On CPUs one of these implementations runs,
chosen per (direction, plane size, batch bucket, dtype, threads, autograd) by a short
measurement on first use (:mod:`conversenet.functional._fft_policy`; force one with
``CONVERSENET_FFT=torch|axes|split|scipy|ducc`` or the ``path`` argument):

* ``"torch"``: ``torch.fft.rfft2`` / ``irfft2`` (MKL on x86 builds).
* ``"axes"``: ``rfft`` over W, then ``fft`` over H (complex, strided) as a separate call;
  a few large planes spread better over the threads this way on some CPUs.
* ``"split"``: as ``"axes"``, with the transform over H split by Cooley-Tukey when its
  length is ``N = N1 * p`` (p the largest prime factor, N1 <= 8): MKL 2024.2 runs mixed
  sizes such as 524 = 4 * 131 with a radix-p step whose cost grows with p, while it
  transforms the prime length p itself quickly (on an Intel Xeon, 4 planes of 524 x 263:
  6.6 ms for ``fft(dim=-2)``, 2.4 ms split).
* ``"scipy"``: pocketfft through ``scipy.fft`` (``workers`` = torch's thread count) with a
  zero-copy numpy round trip; only without an autograd graph (inside the solver's no-grad
  path and inside its ``autograd.Function``, whose backward is written out). On an AMD EPYC
  it ran ``rfft2`` + ``irfft2`` of 128 x 268 x 268 about 2x faster than MKL.
* ``"ducc"``: ducc0.fft (pocketfft's successor, vectorised over planes), only where the
  user installed ducc0 (GPL-2.0-or-later, never a dependency of this package), writing
  straight into torch-owned buffers; no autograd graph, like ``"scipy"``. On the EPYC:
  about 1.5x faster than scipy.fft at 268 x 268.

``"axes"`` and ``"split"`` without autograd transform many planes a few at a time (about
``conversenet._tuning.FFT_GROUP_ELEMS`` elements per group, into one output), so that each
group stays in cache.

Split (N = N1 * N2, ``n = N2 n1 + n2``, ``k = k1 + N1 k2``)::

    X[k1 + N1 k2] = sum_n2 W_N2^(n2 k2) * W_N^(n2 k1) * sum_n1 x[N2 n1 + n2] W_N1^(n1 k1)

The N1-point DFTs are one small complex matrix product, the twiddles one multiply, the
N2-point DFTs one batched torch.fft call, the reordering one copy.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Dict, Optional, Tuple

import torch

from .. import _caches, _tuning
from . import _fft_policy as policy

__all__ = ["rfft2", "irfft2", "rfft2_cl", "irfft2_cl", "fft_h", "ct_split", "PATHS"]

PATHS = policy.PATHS
_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}
_REAL = {c: r for r, c in _COMPLEX.items()}


def ct_split(n: int, device: torch.device) -> Optional[int]:
    """N1 of the Cooley-Tukey split available for a length-n transform over H on this
    device (CPUs only), or None. Whether it is used is measured (see the module docstring)."""
    if device.type != "cpu":
        return None
    return policy.split_factor(n)


@functools.lru_cache(maxsize=_tuning.TABLE_CACHE_SIZE)
def _ct_tables(n1: int, n2: int, inverse: bool, device: torch.device, cdtype: torch.dtype):
    """(N1, N1) DFT matrix (scaled by 1/N for the inverse) and (N1, N2, 1) twiddles.

    Phases are reduced modulo N in exact integer arithmetic, the exponentials taken in
    float64, so both tables are correct to the last bit of ``cdtype``.
    """
    n = n1 * n2
    sign = 1.0 if inverse else -1.0
    with torch.inference_mode(False), torch.no_grad():  # cached: must be a normal tensor
        k1 = torch.arange(n1, dtype=torch.int64)
        dft = torch.remainder(k1[:, None] * k1[None, :], n1).to(torch.float64) * (sign * 2 * math.pi / n1)
        f1 = torch.polar(torch.full_like(dft, 1.0 / n if inverse else 1.0), dft)
        tw = torch.remainder(k1[:, None] * torch.arange(n2, dtype=torch.int64)[None, :], n)
        tw = tw.to(torch.float64) * (sign * 2 * math.pi / n)
        tw = torch.polar(torch.ones_like(tw), tw)[:, :, None]
        return f1.to(device=device, dtype=cdtype), tw.to(device=device, dtype=cdtype)


_caches.register("split-fft-tables", "Cooley-Tukey DFT matrices and twiddles of the split FFT",
                 _caches.TABLES, _ct_tables)


def fft_h(z: torch.Tensor, inverse: bool = False, n1: Optional[int] = None,
          out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``torch.fft.fft(z, dim=-2)`` (``ifft`` if ``inverse``) of a complex (..., N, L) tensor.

    ``n1``: split as N = n1 * (N / n1) (any device); None: one torch.fft call. ``out``:
    optional contiguous tensor of z's shape and dtype for the result (no autograd).

    Example:
        >>> import torch
        >>> z = torch.randn(2, 3 * 79, 5, dtype=torch.complex128)
        >>> bool(torch.allclose(fft_h(z, n1=3), torch.fft.fft(z, dim=-2)))
        True
    """
    *lead, n, length = z.shape
    if n1 is not None and not (1 < n1 < n and n % n1 == 0):
        raise ValueError(f"n1 must be a divisor of N={n} between 2 and N-1, got {n1}")
    if n1 is None:
        fn = torch.fft.ifft if inverse else torch.fft.fft
        return fn(z, dim=-2) if out is None else fn(z, dim=-2, out=out)
    n2 = n // n1
    f1, tw = _ct_tables(n1, n2, inverse, z.device, z.dtype)
    b = math.prod(lead)
    y = torch.matmul(f1, z.reshape(b, n1, n2 * length)).view(b, n1, n2, length).mul_(tw)
    y = torch.fft.ifft(y, dim=2, norm="forward") if inverse else torch.fft.fft(y, dim=2)
    if out is None:
        return y.permute(0, 2, 1, 3).reshape(*lead, n, length)
    out.view(b, n2, n1, length).copy_(y.permute(0, 2, 1, 3))  # the reordering copy, into out
    return out


def _groups(t: torch.Tensor, plane: int) -> Optional[int]:
    """Planes per group for the grouped paths, or None to transform in one call."""
    if torch.is_grad_enabled() and t.requires_grad:
        return None  # the grouped path writes into a preallocated output (no autograd)
    # groups of about FFT_GROUP_ELEMS elements stay in cache (conversenet._tuning)
    step = max(1, _tuning.FFT_GROUP_ELEMS // plane)
    return step if t.numel() // (t.shape[-1] * t.shape[-2]) > step else None


def _rfft2_axes(x: torch.Tensor, n1: Optional[int]) -> torch.Tensor:
    *lead, h, w = x.shape
    step = _groups(x, h * (w // 2 + 1)) if x.dtype in _COMPLEX else None
    if step is None:
        return fft_h(torch.fft.rfft(x, dim=-1), n1=n1)
    xs = x.reshape(-1, h, w)
    out = torch.empty(xs.shape[0], h, w // 2 + 1, dtype=_COMPLEX[x.dtype], device=x.device)
    for c0 in range(0, xs.shape[0], step):
        fft_h(torch.fft.rfft(xs[c0 : c0 + step], dim=-1), n1=n1, out=out[c0 : c0 + step])
    return out.reshape(*lead, h, w // 2 + 1)


def _irfft2_axes(z: torch.Tensor, size: Tuple[int, int], n1: Optional[int]) -> torch.Tensor:
    h, w = size
    *lead, _, length = z.shape
    step = _groups(z, h * length) if z.dtype in _REAL else None
    if step is None:
        return torch.fft.irfft(fft_h(z, inverse=True, n1=n1), n=w, dim=-1)
    zs = z.reshape(-1, h, length)
    out = torch.empty(zs.shape[0], h, w, dtype=_REAL[z.dtype], device=z.device)
    for c0 in range(0, zs.shape[0], step):
        torch.fft.irfft(fft_h(zs[c0 : c0 + step], inverse=True, n1=n1), n=w, dim=-1, out=out[c0 : c0 + step])
    return out.reshape(*lead, h, w)


def _numpy(t: torch.Tensor):
    return t.detach().resolve_conj().resolve_neg().numpy()


def _rfft2_scipy(x: torch.Tensor) -> torch.Tensor:
    sfft = policy.scipy_fft()
    return torch.from_numpy(sfft.rfft2(_numpy(x), workers=torch.get_num_threads()))


def _irfft2_scipy(z: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    sfft = policy.scipy_fft()
    return torch.from_numpy(sfft.irfft2(_numpy(z), s=size, workers=torch.get_num_threads()))


def _rfft2_ducc(x: torch.Tensor) -> torch.Tensor:
    dfft = policy.ducc_fft()
    out = torch.empty(*x.shape[:-1], x.shape[-1] // 2 + 1, dtype=_COMPLEX[x.dtype])
    dfft.r2c(_numpy(x), axes=(-2, -1), nthreads=torch.get_num_threads(), out=out.numpy())
    return out


def _irfft2_ducc(z: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    dfft = policy.ducc_fft()
    out = torch.empty(*z.shape[:-2], *size, dtype=_REAL[z.dtype])
    dfft.c2r(_numpy(z), axes=(-2, -1), lastsize=size[1], forward=False, inorm=2,
             nthreads=torch.get_num_threads(), out=out.numpy())
    return out


_RFFT2: Dict[str, Callable] = {
    "torch": lambda x: torch.fft.rfft2(x),
    "axes": lambda x: _rfft2_axes(x, None),
    "split": lambda x: _rfft2_axes(x, policy.split_factor(x.shape[-2])),
    "scipy": _rfft2_scipy,
    "ducc": _rfft2_ducc,
}
_IRFFT2: Dict[str, Callable] = {
    "torch": lambda z, size: torch.fft.irfft2(z, s=size),
    "axes": lambda z, size: _irfft2_axes(z, size, None),
    "split": lambda z, size: _irfft2_axes(z, size, policy.split_factor(size[0])),
    "scipy": _irfft2_scipy,
    "ducc": _irfft2_ducc,
}


def available(t: torch.Tensor, h: int) -> Tuple[str, ...]:
    """Implementations that apply to a CPU transform of ``t`` with H = h (in PATHS order)."""
    if t.device.type != "cpu":
        return ("torch",)
    out = ["torch", "axes"]
    if policy.split_factor(h) is not None:
        out.append("split")
    if policy._numpy_ok(t, policy.scipy_fft):
        out.append("scipy")
    if policy._numpy_ok(t, policy.ducc_fft):
        out.append("ducc")
    return tuple(out)


def _settled(t: torch.Tensor, paths: Tuple[str, ...], path: Optional[str]) -> Optional[str]:
    """The implementation when nothing is to be measured: ``path`` if given (checked against
    ``paths``), torch.fft for tiny transforms, single choices and torch.compile traces (no
    timing inside a trace); None when the policy decides."""
    if path is not None:
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        if path not in paths:
            raise ValueError(f"path {path!r} does not apply here (available: {paths})")
        return path
    if len(paths) == 1 or t.numel() < _tuning.FFT_MIN_MEASURED or torch.compiler.is_compiling():
        return "torch"
    return None


def _pick(op: str, t: torch.Tensor, h: int, w: int, path: Optional[str]) -> str:
    paths = available(t, h)
    settled = _settled(t, paths, path)
    if settled is not None:
        return settled
    grad = torch.is_grad_enabled() and t.requires_grad
    dtype = _REAL.get(t.dtype, t.dtype)
    planes = t.numel() // (t.shape[-1] * t.shape[-2])

    def maker(name: str):
        def make(n: int):
            if op == "rfft2":
                x = torch.randn(n, h, w, dtype=dtype)
                return lambda: _RFFT2[name](x)
            z = torch.randn(n, h, w // 2 + 1, dtype=_COMPLEX[dtype])
            return lambda: _IRFFT2[name](z, (h, w))
        return make

    return policy.choose(op, h, w, planes, dtype, grad, {p: maker(p) for p in paths})


def rfft2(x: torch.Tensor, path: Optional[str] = None) -> torch.Tensor:
    """``torch.fft.rfft2(x)`` of a real (..., H, W) tensor -> (..., H, W//2+1).

    ``path``: force one implementation (a ValueError if it does not apply, e.g. ``"scipy"``
    on a tensor that requires grad); default: the policy's choice."""
    h, w = x.shape[-2:]
    return _RFFT2[_pick("rfft2", x, h, w, path)](x)


def irfft2(z: torch.Tensor, size: Tuple[int, int], path: Optional[str] = None) -> torch.Tensor:
    """``torch.fft.irfft2(z, s=size)`` of a (..., H, W//2+1) half-plane -> (..., H, W)."""
    h, w = size
    if z.shape[-2] != h:
        raise ValueError(f"z has {z.shape[-2]} rows, size asks for {h}")
    return _IRFFT2[_pick("irfft2", z, h, w, path)](z, (h, w))


# --- the inverse of a solve: rows of the output only, the spectrum overwritten -----------
# The solver crops its padded result, so the inverse over W (the second half of irfft2) is
# needed only for the rows it keeps, and the spectrum is its own: the inverse over H runs in
# place. ducc0's combined 2-D inverse copies the spectrum first; done as these two calls a
# 14 x 268 x 135 inverse plus its crop ran 2x faster on an AMD EPYC (the choice is measured).

def _irfft2_rows_torch(z: torch.Tensor, size: Tuple[int, int], top: int, out: torch.Tensor) -> torch.Tensor:
    rows = out.shape[-2]
    return torch.fft.irfft(torch.fft.ifft(z, dim=-2)[..., top : top + rows, :], n=size[1], dim=-1, out=out)


def _irfft2_rows_scipy(z: torch.Tensor, size: Tuple[int, int], top: int, out: torch.Tensor) -> torch.Tensor:
    sfft, threads, rows = policy.scipy_fft(), torch.get_num_threads(), out.shape[-2]
    cols = sfft.ifft(_numpy(z), axis=-2, overwrite_x=True, workers=threads)
    out.copy_(torch.from_numpy(sfft.irfft(cols[..., top : top + rows, :], n=size[1], axis=-1, workers=threads)))
    return out


def _irfft2_rows_ducc(z: torch.Tensor, size: Tuple[int, int], top: int, out: torch.Tensor) -> torch.Tensor:
    dfft, threads, rows = policy.ducc_fft(), torch.get_num_threads(), out.shape[-2]
    zn = _numpy(z)
    dfft.c2c(zn, axes=(zn.ndim - 2,), forward=False, inorm=2, nthreads=threads, out=zn)  # in place
    dfft.c2r(zn[..., top : top + rows, :], axes=(zn.ndim - 1,), lastsize=size[1], forward=False, inorm=2,
             nthreads=threads, out=out.numpy())
    return out


_IRFFT2_ROWS: Dict[str, Callable] = {
    "torch": _irfft2_rows_torch,
    "scipy": _irfft2_rows_scipy,
    "ducc": _irfft2_rows_ducc,
}


def irfft2_rows(z: torch.Tensor, size: Tuple[int, int], top: int, out: torch.Tensor,
                path: Optional[str] = None) -> torch.Tensor:
    """Rows ``top : top + R`` of ``torch.fft.irfft2(z, s=size)`` written into ``out``, for a
    contiguous CPU (..., H, W//2+1) half-plane ``z`` that is **overwritten** (no autograd).

    ``out``: a contiguous real (..., R, W) tensor; returned. ``path``: ``"torch"``,
    ``"scipy"`` or ``"ducc"`` where it applies; default: the fastest, measured on first use
    (op ``irfft2_rows``, listed by ``conversenet bench --explain``)."""
    h, w = size
    if z.shape[-2] != h or z.shape[-1] != w // 2 + 1 or not z.is_contiguous() or z.device.type != "cpu":
        raise ValueError(f"z must be a contiguous CPU (..., {h}, {w // 2 + 1}) half-plane, got "
                         f"{tuple(z.shape)} (contiguous: {z.is_contiguous()}, {z.device})")
    rows = out.shape[-2] if out.dim() >= 2 else -1
    _check_out(out, (*z.shape[:-2], rows, w), _REAL.get(z.dtype))
    if not 0 <= top <= h - rows:
        raise ValueError(f"rows {top}..{top + rows} are outside the {h} rows of the result")
    paths = tuple(p for p in available(z, h) if p in _IRFFT2_ROWS)
    settled = _settled(z, paths, path)
    if settled is None:
        dtype = _REAL[z.dtype]

        def maker(name: str):
            def make(n: int):
                # as the solver calls it: on a spectrum it may overwrite (refilled each call)
                src, work = torch.randn(2, n, h, w // 2 + 1, dtype=z.dtype)
                dst = torch.empty(n, rows, w, dtype=dtype)
                return lambda: _IRFFT2_ROWS[name](work.copy_(src), size, top, dst)
            return make

        planes = z.numel() // (h * (w // 2 + 1))
        settled = policy.choose("irfft2_rows", h, w, planes, dtype, False, {p: maker(p) for p in paths})
    return _IRFFT2_ROWS[settled](z, size, top, out)


# --- channels-last transforms: (N, H, W, C) memory order, over dims 1 and 2 -----------------
# The planes of a channels-last tensor are interleaved, C values per pixel; the pocketfft
# family (scipy, ducc0) vectorises across that contiguous axis, which on an AMD EPYC made
# a 268 x 268 x 128 transform about 2x faster than the same planes one by one. Only without
# autograd (the no-grad solve of conversenet.functional._channels_last).

def _rfft2_cl_ducc(x: torch.Tensor, out: Optional[torch.Tensor]) -> torch.Tensor:
    n, h, w, c = x.shape
    if out is None:
        out = torch.empty(n, h, w // 2 + 1, c, dtype=_COMPLEX[x.dtype])
    policy.ducc_fft().r2c(_numpy(x), axes=(1, 2), nthreads=torch.get_num_threads(), out=out.numpy())
    return out


def _irfft2_cl_ducc(z: torch.Tensor, size: Tuple[int, int], overwrite: bool,
                    out: Optional[torch.Tensor]) -> torch.Tensor:
    # the inverse over H (complex, in place) and then over W (to real) as two calls: one
    # combined call ran 1.6x slower on the EPYC
    dfft, threads = policy.ducc_fft(), torch.get_num_threads()
    zn = _numpy(z)
    tmp = zn if overwrite and z.is_contiguous() else None
    tmp = dfft.c2c(zn, axes=(1,), forward=False, inorm=2, nthreads=threads, out=tmp)
    if out is None:
        out = torch.empty(z.shape[0], size[0], size[1], z.shape[3], dtype=_REAL[z.dtype])
    dfft.c2r(tmp, axes=(2,), lastsize=size[1], forward=False, inorm=2, nthreads=threads, out=out.numpy())
    return out


def _rfft2_cl_scipy(x: torch.Tensor, out: Optional[torch.Tensor]) -> torch.Tensor:
    sfft = policy.scipy_fft()  # scipy.fft has no out argument: out is not used
    return torch.from_numpy(sfft.rfft2(_numpy(x), axes=(1, 2), workers=torch.get_num_threads()))


def _irfft2_cl_scipy(z: torch.Tensor, size: Tuple[int, int], overwrite: bool,
                     out: Optional[torch.Tensor]) -> torch.Tensor:
    sfft = policy.scipy_fft()
    return torch.from_numpy(sfft.irfft2(_numpy(z), s=size, axes=(1, 2), workers=torch.get_num_threads(),
                                        overwrite_x=overwrite))


_RFFT2_CL: Dict[str, Callable] = {
    # torch.fft keeps the transformed dims innermost in memory: made (N, H, W', C) again
    "torch": lambda x, out: torch.fft.rfft2(x, dim=(1, 2)).contiguous(),
    "scipy": _rfft2_cl_scipy,
    "ducc": _rfft2_cl_ducc,
}
_IRFFT2_CL: Dict[str, Callable] = {
    "torch": lambda z, size, overwrite, out: torch.fft.irfft2(z, s=size, dim=(1, 2)).contiguous(),
    "scipy": _irfft2_cl_scipy,
    "ducc": _irfft2_cl_ducc,
}


def _pick_cl(op: str, t: torch.Tensor, h: int, w: int, path: Optional[str]) -> str:
    paths = tuple(p for p in available(t, h) if p in _RFFT2_CL)
    settled = _settled(t, paths, path)
    if settled is not None:
        return settled
    dtype = _REAL.get(t.dtype, t.dtype)
    planes = t.shape[0] * t.shape[3]

    def maker(name: str):
        def make(c: int):
            # as the solver calls them: with an output buffer (used where the implementation
            # can), the inverse on a spectrum it may overwrite (refilled each call, the same
            # copy for every candidate)
            real = torch.empty(1, h, w, c, dtype=dtype)
            if op == "rfft2_cl":
                x = torch.randn(1, h, w, c, dtype=dtype)
                spec = torch.empty(1, h, w // 2 + 1, c, dtype=_COMPLEX[dtype])
                return lambda: _RFFT2_CL[name](x, spec)
            z, work = torch.randn(2, 1, h, w // 2 + 1, c, dtype=_COMPLEX[dtype])
            return lambda: _IRFFT2_CL[name](work.copy_(z), (h, w), True, real)
        return make

    return policy.choose(op, h, w, planes, dtype, False, {p: maker(p) for p in paths})


def rfft2_cl(x: torch.Tensor, path: Optional[str] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``torch.fft.rfft2(x, dim=(1, 2))`` of a real contiguous (N, H, W, C) tensor (no autograd)
    -> contiguous (N, H, W//2+1, C). ``path``: ``"torch"``, ``"scipy"`` or ``"ducc"`` where it
    applies; default: the policy's choice, measured on first use like :func:`rfft2`.
    ``out``: an optional contiguous complex (N, H, W//2+1, C) buffer that implementations
    able to write into one (ducc0) use and return; the others return a new tensor."""
    _check_out(out, (x.shape[0], x.shape[1], x.shape[2] // 2 + 1, x.shape[3]), _COMPLEX.get(x.dtype))
    return _RFFT2_CL[_pick_cl("rfft2_cl", x, x.shape[1], x.shape[2], path)](x, out)


def irfft2_cl(z: torch.Tensor, size: Tuple[int, int], path: Optional[str] = None,
              overwrite: bool = False, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``torch.fft.irfft2(z, s=size, dim=(1, 2))`` of a contiguous (N, H, W//2+1, C) half-plane
    (no autograd) -> contiguous (N, H, W, C). ``overwrite``: z may be destroyed (saves a copy).
    ``out``: an optional contiguous real (N, H, W, C) buffer, as for :func:`rfft2_cl`."""
    if z.shape[1] != size[0]:
        raise ValueError(f"z has {z.shape[1]} rows, size asks for {size[0]}")
    _check_out(out, (z.shape[0], size[0], size[1], z.shape[3]), _REAL.get(z.dtype))
    return _IRFFT2_CL[_pick_cl("irfft2_cl", z, size[0], size[1], path)](z, size, overwrite, out)


def _check_out(out: Optional[torch.Tensor], shape: Tuple[int, ...], dtype: Optional[torch.dtype]) -> None:
    if out is not None and not (tuple(out.shape) == shape and out.dtype == dtype and out.is_contiguous()
                                and out.device.type == "cpu"):
        raise ValueError(f"out must be a contiguous CPU tensor of shape {shape} and dtype {dtype}, got "
                         f"{tuple(out.shape)} {out.dtype} (contiguous: {out.is_contiguous()}, {out.device})")
