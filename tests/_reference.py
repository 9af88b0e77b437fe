"""Independent float64 references for the Converse2D tests.

The forward model is built as an explicit matrix by naive loops from its definition and
the optimum comes from a dense solve of the normal equations (none of it uses
conversenet). The paper's Eq. 6 (Algorithm 1, full complex FFTs) is the package's own
plain copy, :func:`conversenet.functional.algorithm1.algorithm1`, shared with the
benchmark and itself checked against the dense solve.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from conversenet.functional.algorithm1 import algorithm1

# numpy names of the padding modes (reflect excludes the edge pixel in both libraries)
NP_PAD = {"circular": "wrap", "reflect": "reflect", "replicate": "edge", "constant": "constant"}


def conv_down_matrix(kernel: np.ndarray, big_h: int, big_w: int, s: int) -> np.ndarray:
    """Matrix A (H*W, sH*sW) of ``y[i,j] = sum_ab K[a,b] x[(s i - a + kh//2) % sH, (s j - b + kw//2) % sW]``."""
    kh, kw = kernel.shape
    h, w = big_h // s, big_w // s
    a_mat = np.zeros((h * w, big_h * big_w))
    for i in range(h):
        for j in range(w):
            for a in range(kh):
                for b in range(kw):
                    r = (s * i - a + kh // 2) % big_h
                    c = (s * j - b + kw // 2) % big_w
                    a_mat[i * w + j, r * big_w + c] += kernel[a, b]
    return a_mat


def nearest_up(y: np.ndarray, s: int) -> np.ndarray:
    """Nearest-neighbour s-fold interpolation of the last two axes."""
    return np.repeat(np.repeat(y, s, axis=-2), s, axis=-1)


def pad(x: np.ndarray, p: int, mode: str) -> np.ndarray:
    if p == 0:
        return x
    widths = [(0, 0)] * (x.ndim - 2) + [(p, p), (p, p)]
    return np.pad(x, widths, mode=NP_PAD[mode])


def dense_converse(y, kernel, lam, s, padding=0, padding_mode="circular", x0="interp"):
    """Reference Converse2D by dense solves of (A^T A + lam I) x = A^T y + lam x0.

    y: (N, C, H, W); kernel: (1 or N, C, kh, kw); lam: (1 or N, C) array;
    x0: "interp", "zero" or an (N, C, sH, sW) array. All numpy float64.
    Returns (N, C, sH, sW).
    """
    y = np.asarray(y, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    lam = np.asarray(lam, dtype=np.float64)
    n, c, h, w = y.shape
    yp = pad(y, padding, padding_mode)
    hp, wp = yp.shape[-2:]
    if isinstance(x0, str):
        x0p = nearest_up(yp, s) if x0 == "interp" else np.zeros((n, c, s * hp, s * wp))
    else:
        x0p = pad(np.asarray(x0, dtype=np.float64), padding * s, padding_mode)
    out = np.empty((n, c, s * hp, s * wp))
    eye = np.eye(s * hp * s * wp)
    for ni in range(n):
        for ci in range(c):
            k = kernel[ni if kernel.shape[0] > 1 else 0, ci]
            lm = lam[ni if lam.shape[0] > 1 else 0, ci]
            a_mat = torch.from_numpy(conv_down_matrix(k, s * hp, s * wp, s))
            lhs = a_mat.T @ a_mat + lm * torch.from_numpy(eye)
            rhs = a_mat.T @ torch.from_numpy(yp[ni, ci].ravel()) + lm * torch.from_numpy(x0p[ni, ci].ravel())
            out[ni, ci] = torch.linalg.solve(lhs, rhs).numpy().reshape(s * hp, s * wp)
    if padding:
        q = padding * s
        out = out[..., q:-q, q:-q]
    return out


# The paper's Eq. 6 as written (Algorithm 1): the package's one copy, which the benchmark
# also times. It is not the code under test: tests/test_bench.py checks it against
# dense_converse above. Call it as eq6(y, kernel, lam, s, x0=...) (circular, no padding).
eq6 = algorithm1


def softmax_kernel(gen: torch.Generator, b: int, c: int, *size: int, dtype=torch.float64):
    """(b, c, *size) random kernels that are positive and sum to 1 (softmax of a Gaussian
    sample), as Converse2d initialises them; size is (k,), (kh, kw) or (kd, kh, kw)."""
    raw = torch.randn(b, c, math.prod(size), generator=gen, dtype=dtype)
    return torch.softmax(raw, -1).reshape(b, c, *size)


def psnr_ref(a: np.ndarray, b: np.ndarray, peak: float = 255.0, border: int = 0) -> float:
    """PSNR in dB of two images in float64, optionally without ``border`` pixels per side."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if border:
        a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    return float(10 * math.log10(peak**2 / np.mean((a - b) ** 2)))


def layernorm2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """Per-pixel LayerNorm over axis 1, float64, biased variance."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    n, c, h, w = x.shape
    for ni in range(n):
        for i in range(h):
            for j in range(w):
                v = x[ni, :, i, j]
                mu = sum(v) / c
                var = sum((t - mu) ** 2 for t in v) / c
                out[ni, :, i, j] = (v - mu) / math.sqrt(var + eps) * weight + bias
    return out
