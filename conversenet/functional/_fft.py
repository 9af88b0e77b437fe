"""The real 2-D FFTs of the solver, with a faster CPU path for sizes MKL handles slowly.

``rfft2(x)`` and ``irfft2(z, size)`` equal ``torch.fft.rfft2`` / ``torch.fft.irfft2`` up to
float rounding. On CPUs, for the sizes below and for a few large planes, they run the two
axes as separate 1-D transforms, and the transform over H (a strided axis, complex) is
split by Cooley-Tukey when its length is
``N = N1 * p`` with a prime p in ``_CT_PRIMES`` and a small N1: MKL (2024.2) runs mixed
sizes such as 524 = 4 * 131 with a radix-p step whose cost grows with p, while it
transforms the prime length p itself quickly. Measured at 2 threads on 4 planes of
524 x 263: 6.6 ms for ``fft(dim=-2)``, 2.4 ms split; the split loses below p = 79 and
at p = 179, hence the window. GPUs always call torch.fft directly.

Split (N = N1 * N2, ``n = N2 n1 + n2``, ``k = k1 + N1 k2``)::

    X[k1 + N1 k2] = sum_n2 W_N2^(n2 k2) * W_N^(n2 k1) * sum_n1 x[N2 n1 + n2] W_N1^(n1 k1)

The N1-point DFTs are one small complex matrix product, the twiddles one multiply, the
N2-point DFTs one batched MKL call, the reordering one copy.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import torch

__all__ = ["rfft2", "irfft2", "fft_h", "ct_split"]

_CT_PRIMES = (79, 163)  # inclusive range of the large prime factor where the split wins
_CT_MAX_N1 = 8


def _largest_prime(n: int) -> int:
    best, p = 1, 2
    while p * p <= n:
        while n % p == 0:
            best, n = p, n // p
        p += 1
    return max(best, n) if n > 1 else best


def ct_split(n: int, device: torch.device) -> Optional[int]:
    """N1 of the Cooley-Tukey split used for a length-n transform over H, or None.

    Only CPUs whose torch.fft runs on MKL (where the window was measured) take it."""
    if device.type != "cpu" or not torch.backends.mkl.is_available():
        return None
    p = _largest_prime(n)
    n1 = n // p
    if _CT_PRIMES[0] <= p <= _CT_PRIMES[1] and 2 <= n1 <= _CT_MAX_N1:
        return n1
    return None


@functools.lru_cache(maxsize=32)
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


def fft_h(z: torch.Tensor, inverse: bool = False, n1: Optional[int] = None,
          out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``torch.fft.fft(z, dim=-2)`` (``ifft`` if ``inverse``) of a complex (..., N, L) tensor.

    ``n1``: split as N = n1 * (N / n1) whatever the device (default: :func:`ct_split`'s
    choice, which may be no split). ``out``: optional contiguous tensor of z's shape and
    dtype for the result (no autograd).

    Example:
        >>> import torch
        >>> z = torch.randn(2, 3 * 79, 5, dtype=torch.complex128)
        >>> bool(torch.allclose(fft_h(z, n1=3), torch.fft.fft(z, dim=-2)))
        True
    """
    *lead, n, length = z.shape
    if n1 is None:
        n1 = ct_split(n, z.device)
    elif not (1 < n1 < n and n % n1 == 0):
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


def _split_axes(x: torch.Tensor) -> bool:
    """Whether the CPU path runs the axes one by one (see the module docstring)."""
    if x.device.type != "cpu":
        return False
    if ct_split(x.shape[-2], x.device) is not None:
        return True
    # even without the split, a few large planes spread over threads better this way
    plane = x.shape[-1] * x.shape[-2]
    return plane >= (1 << 16) and x.numel() // plane <= 32


# planes are transformed in groups of about this many complex elements when the split path
# runs without autograd: per group everything stays in cache (measured at 2 threads, 524 x
# 524: 4-16 planes at a time are 1.5-2.3x faster than MKL's rfft2, 128 at once slower)
_GROUP_ELEMS = 1 << 20
_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}
_REAL = {c: r for r, c in _COMPLEX.items()}


def _groups(t: torch.Tensor, plane: int) -> Optional[int]:
    """Planes per group for the grouped split path, or None to transform in one call."""
    if torch.is_grad_enabled() and t.requires_grad:
        return None  # the grouped path writes into a preallocated output (no autograd)
    step = max(1, _GROUP_ELEMS // plane)
    return step if t.numel() // (t.shape[-1] * t.shape[-2]) > step else None


def rfft2(x: torch.Tensor) -> torch.Tensor:
    """``torch.fft.rfft2(x)`` of a real (..., H, W) tensor -> (..., H, W//2+1)."""
    if not _split_axes(x):
        return torch.fft.rfft2(x)
    *lead, h, w = x.shape
    step = _groups(x, h * (w // 2 + 1)) if x.dtype in _COMPLEX else None
    if step is None:
        return fft_h(torch.fft.rfft(x, dim=-1))
    xs = x.reshape(-1, h, w)
    out = torch.empty(xs.shape[0], h, w // 2 + 1, dtype=_COMPLEX[x.dtype], device=x.device)
    for c0 in range(0, xs.shape[0], step):
        fft_h(torch.fft.rfft(xs[c0 : c0 + step], dim=-1), out=out[c0 : c0 + step])
    return out.reshape(*lead, h, w // 2 + 1)


def irfft2(z: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``torch.fft.irfft2(z, s=size)`` of a (..., H, W//2+1) half-plane -> (..., H, W)."""
    h, w = size
    if z.shape[-2] != h:
        raise ValueError(f"z has {z.shape[-2]} rows, size asks for {h}")
    if not _split_axes(z):
        return torch.fft.irfft2(z, s=size)
    *lead, _, length = z.shape
    step = _groups(z, h * length) if z.dtype in _REAL else None
    if step is None:
        return torch.fft.irfft(fft_h(z, inverse=True), n=w, dim=-1)
    zs = z.reshape(-1, h, length)
    out = torch.empty(zs.shape[0], h, w, dtype=_REAL[z.dtype], device=z.device)
    for c0 in range(0, zs.shape[0], step):
        torch.fft.irfft(fft_h(zs[c0 : c0 + step], inverse=True), n=w, dim=-1, out=out[c0 : c0 + step])
    return out.reshape(*lead, h, w)
