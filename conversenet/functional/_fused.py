"""One fused CPU pass for the s = 1 filter: ``fy *= G`` with G made from its two real planes.

The chunked no-grad solve (:func:`conversenet.functional.converse._converse_chunked`) builds
``G = (conj(FK) + lam) / (|FK|^2 + lam)`` from the planes Re FK and Im conj(FK) and multiplies
the spectrum by it. With torch's CPU ops that is six passes over the planes and one over the
spectrum; compiled by numba (optional, the ``fast`` extra) it is one pass that reads the planes
and updates the spectrum in place. Which of the two runs is measured on first use, like the
FFT implementations (op ``s1_filter`` of :mod:`conversenet.functional._fft_policy`, listed by
``conversenet bench --explain``).

numba compiles the kernel in memory on first use; its on-disk cache is not used (it would load
compiled code from files). Nothing here is imported by ``import conversenet`` unless a solve
asks for it.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from typing import Callable, Optional

import torch

from .. import _caches

__all__ = ["available", "apply_s1_filter", "choose"]

_kernel: list = []  # [compiled function] or [None] when numba is missing
_lock = threading.Lock()


def _compile() -> Optional[Callable]:
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(parallel=True, cache=False)
    def kernel(fy, parts, lam, lam_num):  # pragma: no cover - runs compiled
        # fy: (B, C, M, N') complex, updated in place; parts: (Bk, C, 2, M, N') real planes
        # [Re FK, Im conj(FK)]; lam, lam_num: (Bl, C) denominator and numerator lam
        b, c, m, nq = fy.shape
        bk, bl = parts.shape[0], lam.shape[0]
        for bc in numba.prange(b * c):
            bi, ci = bc // c, bc % c
            kb, lb = (bi if bk > 1 else 0), (bi if bl > 1 else 0)
            la, ln = lam[lb, ci], lam_num[lb, ci]
            for u in range(m):
                for v in range(nq):
                    re = parts[kb, ci, 0, u, v]
                    im = parts[kb, ci, 1, u, v]
                    d = la + re * re + im * im
                    gr = (re + ln) / d
                    gi = im / d
                    z = fy[bi, ci, u, v]
                    fy[bi, ci, u, v] = complex(z.real * gr - z.imag * gi, z.real * gi + z.imag * gr)

    return kernel


def _get() -> Optional[Callable]:
    with _lock:
        if not _kernel:
            _kernel.append(_compile())
        return _kernel[0]


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether numba is installed (the kernel is compiled on the first call); looked up once
    per process (a search of the import path costs about 25 us, paid by every solve otherwise)."""
    return importlib.util.find_spec("numba") is not None


_caches.register("fused-filter", "the s = 1 filter pass compiled by numba (one function, in memory) and "
                 "whether numba is installed", "one each per process; compiled again on next use", _kernel, available)


def apply_s1_filter(fy: torch.Tensor, parts: torch.Tensor, lam: torch.Tensor, x0: str) -> torch.Tensor:
    """``fy *= (conj(FK) + lam) / (|FK|^2 + lam)`` in place (``lam`` dropped from the
    numerator for x0 = "zero"), in one compiled pass.

    Args:
        fy: contiguous CPU (B, C, M, N') complex64/complex128 spectrum; overwritten, returned.
        parts: contiguous (Bk, C, 2, M, N') real planes Re FK and Im conj(FK) of fy's real
            dtype, Bk = 1 or B.
        lam: (Bl, C, 1, 1) regulariser, Bl = 1 or B.
    """
    b, c, m, nq = fy.shape
    if not (fy.is_contiguous() and parts.is_contiguous() and parts.shape[1:] == (c, 2, m, nq)
            and parts.shape[0] in (1, b) and fy.device.type == "cpu"):
        raise ValueError(f"fy {tuple(fy.shape)} and parts {tuple(parts.shape)} do not match "
                         "(contiguous CPU (B, C, M, N') and (1 or B, C, 2, M, N'))")
    kernel = _get()  # compiled on the first call
    if kernel is None:
        raise RuntimeError("the fused s = 1 filter needs numba (pip install 'conversenet[fast]')")
    lam_d = lam.reshape(lam.shape[0], c).to(parts.dtype).contiguous()
    lam_n = torch.zeros_like(lam_d) if x0 == "zero" else lam_d
    import numba

    numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    kernel(fy.numpy(), parts.numpy(), lam_d.numpy(), lam_n.numpy())
    return fy


def choose(planes: int, m: int, n: int, dtype: torch.dtype) -> str:
    """``"fused"`` or ``"torch"`` for the s = 1 filter of ``planes`` (M, n) planes of real
    ``dtype`` on this CPU: measured on first use (op ``s1_filter``) where numba is installed,
    ``"torch"`` otherwise."""
    from .. import _tuning
    from . import _fft_policy as policy
    from .converse import _filter_from_parts

    if (not available() or dtype not in (torch.float32, torch.float64)
            or planes * m * n < _tuning.FFT_MIN_MEASURED or torch.compiler.is_compiling()):
        return "torch"  # tiny work is not worth a measurement (as for the transforms)
    nq = n // 2 + 1
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128

    def maker(name: str):
        def make(k: int):
            src = torch.randn(1, k, 2, m, nq, dtype=dtype)
            parts, fy = torch.empty_like(src), torch.randn(1, k, m, nq, dtype=cdtype)
            lam = torch.full((1, k, 1, 1), 1e-2, dtype=dtype)
            if name == "fused":
                return lambda: apply_s1_filter(fy, parts.copy_(src), lam, "interp")
            return lambda: fy.mul_(_filter_from_parts(parts.copy_(src)[:, :, 0], parts[:, :, 1], lam, "interp"))
        return make

    # exact: torch's passes switch from one thread to all within a power-of-two bucket of planes
    return policy.choose("s1_filter", m, n, planes, dtype, False, {p: maker(p) for p in ("torch", "fused")},
                         exact=True)
