"""The solver's FFT helpers (conversenet/functional/_fft.py), in particular the Cooley-Tukey
split offered on CPUs for lengths such as 524 = 4 * 131 (used where it measures fastest), against DFTs written as explicit
float64 sums, and Converse2D at such sizes against the paper's Eq. 6."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _reference import eq6, softmax_kernel
from conversenet import _tuning
from conversenet.functional import _fft, _fft_policy, converse2d

SPLIT_SIZES = [(2, 79), (3, 101), (4, 131), (8, 97), (6, 7)]


def _dft_matrix(n: int, inverse: bool) -> np.ndarray:
    """Explicit DFT matrix: entry (k, m) = exp(-+2 pi i k m / n), divided by n when inverse."""
    sign = 1.0 if inverse else -1.0
    mat = np.empty((n, n), dtype=np.complex128)
    for k in range(n):
        mat[k] = np.exp(sign * 2j * np.pi * ((k * np.arange(n)) % n) / n)
    return mat / n if inverse else mat


@pytest.mark.parametrize("n1,p", SPLIT_SIZES)
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_fft_h_matches_explicit_dft(n1, p, inverse, dtype):
    n = n1 * p
    gen = torch.Generator().manual_seed(n)
    z = torch.randn(2, 3, n, 5, generator=gen, dtype=torch.complex128)
    ref = np.einsum("km,bcml->bckl", _dft_matrix(n, inverse), z.numpy())
    out = _fft.fft_h(z.to(dtype), inverse=inverse, n1=n1)  # the split, whatever the policy
    assert out.dtype == dtype and out.shape == z.shape
    err = np.abs(out.to(torch.complex128).numpy() - ref).max() / np.abs(ref).max()
    assert err < (1e-6 if dtype == torch.complex64 else 1e-13)


def test_fft_h_bad_split():
    z = torch.zeros(1, 12, 3, dtype=torch.complex64)
    for bad in (5, 1, 12):
        with pytest.raises(ValueError, match="n1"):
            _fft.fft_h(z, n1=bad)


@pytest.mark.parametrize("h,w", [(158, 30), (524, 12), (40, 33)])
def test_rfft2_irfft2_match_numpy(h, w):
    gen = torch.Generator().manual_seed(h + w)
    x = torch.randn(3, 2, h, w, generator=gen, dtype=torch.float64)
    ref = np.fft.rfft2(x.numpy())
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        spec = _fft.rfft2(x.to(dtype))
        assert np.abs(spec.to(torch.complex128).numpy() - ref).max() / np.abs(ref).max() < tol
    back = _fft.irfft2(torch.from_numpy(ref), (h, w))
    assert np.abs(back.numpy() - x.numpy()).max() < 1e-12
    with pytest.raises(ValueError, match="rows"):
        _fft.irfft2(torch.from_numpy(ref), (h + 1, w))


@pytest.mark.parametrize("s,h,padding", [(1, 146, 6), (2, 75, 2)])
def test_converse2d_at_split_sizes_matches_eq6(s, h, padding):
    """Padded output height s*(h+2p) = 158 = 2 * 79 runs the split (forced), in the
    no-grad and autograd paths."""
    assert _fft.ct_split(s * (h + 2 * padding), torch.device("cpu")) == 2
    with _fft_policy.force("split"):
        _check_split_size(s, h, padding)


def _check_split_size(s, h, padding):
    gen = torch.Generator().manual_seed(7)
    y = torch.randn(1, 2, h, 20, generator=gen, dtype=torch.float64)
    k = softmax_kernel(gen, 1, 2, 5, 5)
    lam = torch.tensor([2e-3, 5e-2], dtype=torch.float64).reshape(1, 2, 1, 1)
    crop = (slice(None), slice(None), slice(s * padding, -s * padding), slice(s * padding, -s * padding))
    ref = eq6(F.pad(y, (padding,) * 4, mode="circular"), k, lam, s)[crop]
    with torch.no_grad():
        out = converse2d(y, k, lam, s, padding, "circular")
        out32 = converse2d(y.float(), k.float(), lam.float(), s, padding, "circular")
    assert float((out - ref).abs().max()) < 1e-9
    assert float((out32.double() - ref).abs().max()) < 1e-4

    # gradients: ours against autograd through the float64 Eq. 6 (complex FFTs)
    yg, kg = y.clone().requires_grad_(), k.clone().requires_grad_()
    g = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    (converse2d(yg, kg, lam, s, padding, "circular") * g).sum().backward()
    yr, kr = y.clone().requires_grad_(), k.clone().requires_grad_()
    (eq6(F.pad(yr, (padding,) * 4, mode="circular"), kr, lam, s)[crop] * g).sum().backward()
    assert float((yg.grad - yr.grad).abs().max()) < 1e-8 * float(yr.grad.abs().max())
    assert float((kg.grad - kr.grad).abs().max()) < 1e-8 * float(kr.grad.abs().max())


@pytest.mark.parametrize("h,w", [(158, 30), (524, 12)])
def test_grouped_split_path_matches_numpy(monkeypatch, h, w):
    """Many planes without autograd are transformed a few planes at a time into one output."""
    monkeypatch.setattr(_tuning, "FFT_GROUP_ELEMS", 3 * h * (w // 2 + 1))  # 3 planes per group
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, h, w, generator=gen, dtype=torch.float64)  # 8 planes: groups 3+3+2
    ref = np.fft.rfft2(x.numpy())
    assert _fft._groups(x, h * (w // 2 + 1)) == 3
    spec = _fft.rfft2(x, path="split")
    assert spec.shape == ref.shape and spec.is_contiguous()
    assert np.abs(spec.numpy() - ref).max() / np.abs(ref).max() < 1e-12
    back = _fft.irfft2(torch.from_numpy(ref), (h, w), path="split")
    assert back.shape == x.shape and np.abs(back.numpy() - x.numpy()).max() < 1e-12
    # with autograd the one-call path runs, and gradients flow through it
    xg = x.clone().requires_grad_()
    assert _fft._groups(xg, h * (w // 2 + 1)) is None
    _fft.irfft2(_fft.rfft2(xg, path="split"), (h, w), path="split").sum().backward()
    assert torch.allclose(xg.grad, torch.ones_like(x))
