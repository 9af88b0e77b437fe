"""The fused s = 1 filter pass (conversenet.functional._fused, numba, the `fast` extra): equal
to the filter built from torch ops and to dense float64 solves, its argument errors, its
measured choice, and that without numba (or for tiny work) the solve keeps torch's ops."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from _reference import dense_converse, softmax_kernel
from conversenet import _tuning
from conversenet.functional import _fft_policy, _fused, converse2d

pytestmark = pytest.mark.usefixtures("one_thread")


def _planes_and_spectrum(gen, b, bk, c, m, nq, dtype):
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    parts = torch.randn(bk, c, 2, m, nq, generator=gen, dtype=torch.float64)
    fy = torch.complex(torch.randn(b, c, m, nq, generator=gen, dtype=torch.float64),
                       torch.randn(b, c, m, nq, generator=gen, dtype=torch.float64))
    return parts.to(dtype), fy.to(cdtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("x0", ["interp", "zero"])
@pytest.mark.parametrize("bk,bl", [(1, 1), (1, 2), (2, 1)])
def test_equals_the_filter_written_out_in_float64(dtype, x0, bk, bl):
    pytest.importorskip("numba")
    gen = torch.Generator().manual_seed(bk * 10 + bl)
    parts, fy = _planes_and_spectrum(gen, 2, bk, 3, 7, 5, dtype)
    lam = (torch.rand(bl, 3, 1, 1, generator=gen, dtype=torch.float64) * 0.1 + 1e-3).to(dtype)
    # reference: G = (conj(FK) + lam) / (|FK|^2 + lam) from the planes, in float64, by broadcasting
    re, im = parts[:, :, 0].double(), parts[:, :, 1].double()
    lam64 = lam.double()
    ref = fy.to(torch.complex128) * torch.complex(re + (0 if x0 == "zero" else lam64), im) / (lam64 + re * re + im * im)
    out = _fused.apply_s1_filter(fy, parts, lam, x0)
    assert out is fy and out.dtype == fy.dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert (out.to(torch.complex128) - ref).abs().max().item() <= tol * ref.abs().max().item()


def test_bad_arguments_are_refused_before_any_work():
    pytest.importorskip("numba")
    parts, fy = _planes_and_spectrum(torch.Generator().manual_seed(0), 1, 1, 2, 4, 3, torch.float32)
    lam = torch.full((1, 2, 1, 1), 0.1)
    before = fy.clone()
    with pytest.raises(ValueError, match="do not match"):
        _fused.apply_s1_filter(fy, parts[:, :1], lam, "interp")
    with pytest.raises(ValueError, match="do not match"):
        _fused.apply_s1_filter(fy.transpose(-1, -2), parts, lam, "interp")
    assert torch.equal(fy, before)


@pytest.mark.parametrize("x0", ["interp", "zero"])
def test_chunked_solve_with_the_fused_pass_equals_dense_solves(monkeypatch, x0):
    pytest.importorskip("numba")
    gen = torch.Generator().manual_seed(4)
    y = torch.randn(2, 5, 7, 6, generator=gen, dtype=torch.float64)
    k = softmax_kernel(gen, 1, 5, 3, 3)
    lam = torch.tensor([3e-2, 1e-1, 5e-2, 2e-1, 8e-2], dtype=torch.float64)
    monkeypatch.setattr(_tuning, "SOLVE_CHUNK_ELEMS", 2 * 2 * 11 * 10)  # groups of 2 + 2 + 1 channels
    monkeypatch.setattr(_fused, "choose", lambda *a: "fused")
    calls = []
    apply = _fused.apply_s1_filter
    monkeypatch.setattr(_fused, "apply_s1_filter", lambda *a: calls.append(1) or apply(*a))
    with torch.no_grad():
        out = converse2d(y, k, lam.reshape(1, 5, 1, 1), 1, 2, "reflect", x0=x0)
    assert len(calls) == 3
    ref = dense_converse(y.numpy(), k.numpy(), lam.reshape(1, -1).numpy(), 1, 2, "reflect", x0=x0)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-10)


def test_choice_is_measured_and_listed(monkeypatch):
    pytest.importorskip("numba")
    monkeypatch.delenv(_fft_policy.ENV, raising=False)  # tests/conftest.py forces torch.fft
    monkeypatch.setattr(_tuning, "FFT_BUDGET_S", 0.0)  # one timed round
    _fft_policy.clear()
    try:
        assert _fused.choose(8, 64, 64, torch.float32) in ("torch", "fused")
        rows = [d for d in _fft_policy.decisions() if d["op"] == "s1_filter"]
        assert len(rows) == 1 and set(rows[0]["ms"]) == {"torch", "fused"}
        assert rows[0]["ms"][rows[0]["path"]] == min(rows[0]["ms"].values())  # ties at the rounding
        assert "s1_filter" in _fft_policy.format_decisions()
    finally:
        _fft_policy.clear()


def test_torch_ops_without_numba_or_for_tiny_work(monkeypatch):
    assert _fused.choose(1, 4, 4, torch.float32) == "torch"  # below FFT_MIN_MEASURED
    assert _fused.choose(8, 64, 64, torch.float16) == "torch"
    monkeypatch.setattr(_fused, "available", lambda: False)
    assert _fused.choose(64, 256, 256, torch.float32) == "torch"
    spied = []
    monkeypatch.setattr(_fused, "apply_s1_filter", lambda *a: spied.append(1))
    gen = torch.Generator().manual_seed(1)
    y = torch.randn(1, 3, 40, 40, generator=gen, dtype=torch.float64)
    k = softmax_kernel(gen, 1, 3, 5, 5)
    with torch.no_grad():
        out = converse2d(y, k, torch.full((1, 3, 1, 1), 0.05, dtype=torch.float64), 1, 2, "circular")
    assert not spied
    ref = dense_converse(y.numpy(), k.numpy(), np.full((1, 3), 0.05), 1, 2, "circular")
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-9, atol=1e-9)


def test_import_conversenet_does_not_import_numba():
    code = "import sys, conversenet, conversenet.functional; print('numba' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_without_numba_the_pass_says_what_to_install(monkeypatch):
    monkeypatch.setattr(_fused, "_kernel", [None])
    parts, fy = _planes_and_spectrum(torch.Generator().manual_seed(0), 1, 1, 1, 2, 2, torch.float32)
    with pytest.raises(RuntimeError, match=r"conversenet\[fast\]"):
        _fused.apply_s1_filter(fy, parts, torch.full((1, 1, 1, 1), 0.1), "interp")
