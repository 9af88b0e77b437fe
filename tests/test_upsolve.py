"""The no-grad s > 1 solve at the input size (conversenet/functional/_upsolve.py) against
dense float64 solves of the normal equations (tests/_reference.py), including kernels
that reach around the padded grid, per-sample kernels and lam, and every padding mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _reference import dense_converse
from conversenet.functional import converse2d
from conversenet.functional import _upsolve
from conversenet.functional._upsolve import _lag_sum

CASES = [  # s, k, padding, mode, x0, kernel batch, h, w
    (2, 2, 2, "replicate", "interp", 1, 7, 6),
    (2, 3, 1, "circular", "interp", 2, 6, 5),
    (3, 5, 2, "reflect", "zero", 1, 5, 7),
    (2, 4, 0, "circular", "interp", 1, 4, 4),
    (4, 7, 1, "constant", "interp", 2, 3, 4),
    (2, 5, 0, "circular", "zero", 2, 3, 3),  # the kernel wraps around the grid
    (3, 5, 0, "circular", "interp", 1, 2, 3),
    (2, 6, 1, "reflect", "interp", 1, 3, 4),
    (3, 2, 1, "circular", "interp", 1, 3, 3),
    (4, 3, 0, "circular", "zero", 1, 3, 2),  # phases no tap reaches
    (2, 1, 0, "circular", "interp", 1, 3, 3),
    (3, 9, 2, "circular", "interp", 2, 3, 5),
]


@pytest.mark.parametrize("s,k,padding,mode,x0,kb,h,w", CASES)
def test_upsolve_matches_dense_solve(s, k, padding, mode, x0, kb, h, w):
    gen = torch.Generator().manual_seed(s * 100 + k * 10 + h)
    n, c = 2, 3
    y = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    kk = torch.rand(kb, c, k, k, generator=gen, dtype=torch.float64)
    lam = torch.rand(n, c, 1, 1, generator=gen, dtype=torch.float64) * 0.1 + 0.01
    with torch.no_grad():
        out = converse2d(y, kk, lam, s, padding, mode, x0)
        out32 = converse2d(y.float(), kk.float(), lam.float(), s, padding, mode, x0)
    ref = dense_converse(y.numpy(), kk.numpy(), lam.reshape(n, c).numpy(), s, padding, mode, x0)
    if ref.shape[-1] != out.shape[-1]:
        ref = ref[..., s * padding : s * (padding + h), s * padding : s * (padding + w)]
    assert out.shape == (n, c, s * h, s * w) and out.dtype == torch.float64
    assert np.abs(out.numpy() - ref).max() < 1e-10
    assert np.abs(out32.double().numpy() - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())


def test_lag_sum_is_correlation_and_convolution():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)
    b = torch.randn(2, 2, 5, generator=gen, dtype=torch.float64)
    conv = _lag_sum(a, b, 1)
    corr = _lag_sum(a, b, -1)
    ref_conv = np.zeros((2, 4, 8))
    ref_corr = np.zeros((2, 4, 8))
    for i in range(3):
        for j in range(4):
            for k in range(2):
                for m in range(5):
                    ref_conv[:, i + k, j + m] += a[:, i, j].numpy() * b[:, k, m].numpy()
                    ref_corr[:, k - i + 2, m - j + 3] += a[:, i, j].numpy() * b[:, k, m].numpy()
    assert np.abs(conv.numpy() - ref_conv).max() < 1e-12
    assert np.abs(corr.numpy() - ref_corr).max() < 1e-12


@pytest.mark.parametrize("method", ["phases", "transposed"])
@pytest.mark.parametrize("s,k,padding,mode,x0,kb,h,w", CASES)
def test_both_correlation_methods_match_dense_solve(method, s, k, padding, mode, x0, kb, h, w):
    """Either way of applying the kernel correlation (per output phase, or one transposed
    convolution; "auto" picks by kernel size) gives the dense solution, for every case."""
    gen = torch.Generator().manual_seed(s * 100 + k * 10 + h + 7)
    n, c = 2, 3
    y = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    kk = torch.rand(kb, c, k, k, generator=gen, dtype=torch.float64)
    lam = torch.rand(n, c, 1, 1, generator=gen, dtype=torch.float64) * 0.1 + 0.01
    pads = (padding,) * 4
    yp = torch.nn.functional.pad(y, pads, mode=mode) if padding else y
    out = torch.full((n, c, s * h, s * w), float("nan"), dtype=torch.float64)
    got = _upsolve.converse_up(yp, y, kk, lam, pads, s, x0, out=out, method=method)
    assert got is out
    ref = dense_converse(y.numpy(), kk.numpy(), lam.reshape(n, c).numpy(), s, padding, mode, x0)
    if ref.shape[-1] != out.shape[-1]:
        ref = ref[..., s * padding : s * (padding + h), s * padding : s * (padding + w)]
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-9, atol=1e-9)


def test_unknown_correlation_method_is_named():
    y = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match="method"):
        _upsolve.converse_up(y, y, torch.rand(1, 1, 2, 2), torch.ones(1, 1, 1, 1), (0,) * 4, 2, "interp", method="fast")
