"""Operator edge cases of converse2d (issue 12, item 12): empty batches and channel sets,
0x0 kernels, non-finite or overflowing lam, second-order gradients at s = 1.

Every test name contains ``reliability`` (``pytest -k "security or reliability"``); each
fails on the code before the fix (ZeroDivisionError / MKL errors for empty inputs, a 0x0
kernel silently accepted, inf lam giving NaN, an overflow message from a conversion,
a wrong second derivative at s = 1).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from _reference import softmax_kernel
from conversenet.functional import conv_down, converse2d
from conversenet.nn import Converse2d



# --------------------------------------------------------------------------------------
# N = 0, C = 0
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("s", [1, 2, 3])
@pytest.mark.parametrize("x0", ["interp", "zero", "tensor"])
@pytest.mark.parametrize("n,c", [(0, 3), (2, 0), (0, 0)])
def test_reliability_empty_batch_or_channels(n, c, s, x0):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, 7, 6, generator=gen, requires_grad=True)
    weight = (softmax_kernel(gen, 1, c, 3, 3, dtype=torch.float32).requires_grad_() if c
              else torch.zeros(1, 0, 3, 3, requires_grad=True))
    lam = torch.full((c,), 1e-2, requires_grad=True)
    x0_arg = torch.randn(n, c, 7 * s, 6 * s, generator=gen, requires_grad=True) if x0 == "tensor" else x0
    out = converse2d(x, weight, lam, scale=s, padding=2, padding_mode="reflect", x0=x0_arg)
    assert out.shape == (n, c, 7 * s, 6 * s) and out.dtype == x.dtype
    # autograd still works: nothing depends on anything, so every gradient is zero
    out.sum().backward()
    for t in (x, weight, lam) + ((x0_arg,) if x0 == "tensor" else ()):
        assert t.grad is not None and t.grad.shape == t.shape
        assert not t.grad.any()
    with torch.no_grad():  # the no-autograd (chunked) path too
        assert converse2d(x, weight, lam, s, 2, "reflect", x0_arg).shape == (n, c, 7 * s, 6 * s)


def test_reliability_empty_batch_module_and_half():
    layer = Converse2d(4, 5, scale=2)
    out = layer(torch.randn(0, 4, 9, 8))
    assert out.shape == (0, 4, 18, 16)
    layer.eval()
    with torch.no_grad():  # eval-mode filter cache path
        assert layer(torch.randn(0, 4, 9, 8)).shape == (0, 4, 18, 16)
    half = converse2d(torch.randn(0, 2, 5, 5).bfloat16(), torch.ones(1, 2, 3, 3) / 9, 1e-2, 2, 1)
    assert half.shape == (0, 2, 10, 10) and half.dtype == torch.bfloat16


# --------------------------------------------------------------------------------------
# 0 x 0 kernels
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kh,kw", [(0, 0), (0, 3), (3, 0)])
def test_reliability_empty_kernel_refused(kh, kw):
    x = torch.randn(2, 3, 8, 8)
    w = torch.ones(1, 3, kh, kw)
    with pytest.raises(ValueError, match=rf"weight.*at least 1x1.*{kh}x{kw}"):
        converse2d(x, w, 1e-2, padding=2)
    with pytest.raises(ValueError, match=r"weight.*at least 1x1"):
        Converse2d(3, 3, learn_kernel=False)(x, w)
    with pytest.raises(ValueError, match=r"weight.*at least 1x1"):
        conv_down(x, w, 2)


# --------------------------------------------------------------------------------------
# lam: inf / NaN tensors, huge finite values
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("form", ["scalar", "vector", "4d", "float64", "requires_grad"])
def test_reliability_non_finite_lam_tensor_refused(bad, form):
    x = torch.randn(2, 3, 8, 8)
    k = torch.ones(1, 3, 3, 3) / 9
    if form == "scalar":
        lam = torch.tensor(bad)
    elif form == "vector":
        lam = torch.tensor([1e-2, bad, 1e-2])
    elif form == "4d":
        lam = torch.full((2, 3, 1, 1), 1e-2)
        lam[1, 2] = bad
    elif form == "float64":
        lam = torch.tensor([1e-2, 1e-2, bad], dtype=torch.float64)
    else:
        lam = torch.tensor([bad, 1e-2, 1e-2], requires_grad=True)
    with pytest.raises(ValueError, match=r"lam must be (positive|finite)"):
        converse2d(x, k, lam, 2, 1)
    # exactly like a Python float of the same value
    with pytest.raises(ValueError, match=r"lam must be positive and finite"):
        converse2d(x, k, bad, 2, 1)


def test_reliability_huge_lam_clear_error_or_correct_result():
    gen = torch.Generator().manual_seed(3)
    y = torch.randn(2, 3, 8, 9, generator=gen)
    k = softmax_kernel(gen, 1, 3, 3, 3, dtype=torch.float32)
    # beyond float32: refused with a message naming lam and the compute dtype, for float,
    # float64-tensor and half inputs alike (no "cannot be converted ... overflow")
    for lam in (1e300, torch.tensor([1e-2, 1e300, 1e-2], dtype=torch.float64), 1e39):
        with pytest.raises(ValueError, match=r"lam=1e\+(300|39) is too large.*float32"):
            converse2d(y, k, lam, 2, 2)
        with pytest.raises(ValueError, match=r"lam.*too large.*float32"):
            converse2d(y.bfloat16(), k, lam, 1, 2)
    # within the compute dtype: the exact answer, x0 + O(1/lam). References: as lam grows,
    # X* -> X0 (nearest interpolation of y), and lam * X* -> A^T y for x0 = "zero", where
    # A^T is the adjoint of conv_down (obtained by autograd of the forward model).
    for dtype, lam in ((torch.float32, 1e30), (torch.float32, 3e38), (torch.float64, 1e300)):
        yy, kk = y.to(dtype), k.to(dtype)
        for s in (1, 2):
            out = converse2d(yy, kk, lam, s, 0, "circular")
            x0 = F.interpolate(yy, scale_factor=s, mode="nearest")
            torch.testing.assert_close(out, x0, rtol=0, atol=4 * torch.finfo(dtype).eps * 4)
            out0 = converse2d(yy.double(), kk.double(), lam, s, 0, "circular", x0="zero")
            xs = torch.zeros(2, 3, 8 * s, 9 * s, dtype=torch.float64, requires_grad=True)
            (adj,) = torch.autograd.grad((conv_down(xs, kk.double(), s) * yy.double()).sum(), xs)
            torch.testing.assert_close(out0 * lam, adj, rtol=1e-9, atol=1e-12)
            if dtype == torch.float32:
                out0_32 = converse2d(yy, kk, lam, s, 0, "circular", x0="zero")
                assert torch.isfinite(out0_32).all()
                # tiny values, subnormal below 1.2e-38: compared on the lam-scaled scale
                err = ((out0_32.double() - out0) * lam).abs().max()
                assert float(err) <= 1e-5 * float(adj.abs().max()) + 1.5e-45 * lam


# --------------------------------------------------------------------------------------
# second-order gradients
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["circular", "reflect", "replicate", "constant"])
@pytest.mark.parametrize("s", [1, 2])
def test_reliability_gradgradcheck(s, mode):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    k = softmax_kernel(gen, 2, 2, 3, 3).requires_grad_()
    lam = (0.05 + 0.1 * torch.rand(2, generator=gen, dtype=torch.float64)).requires_grad_()

    def f(x, k, lam):
        return converse2d(x, k, lam, scale=s, padding=1, padding_mode=mode)

    assert torch.autograd.gradgradcheck(f, (x, k, lam), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("which", ["x", "weight", "lam"])
def test_reliability_gradgradcheck_one_input(which):
    # s = 1 with only one input requiring grad (the custom backward's branches)
    gen = torch.Generator().manual_seed(5)
    args = {
        "x": torch.randn(1, 2, 5, 5, generator=gen, dtype=torch.float64),
        "weight": softmax_kernel(gen, 1, 2, 3, 3),
        "lam": torch.tensor([0.05, 0.2], dtype=torch.float64),
    }
    t = args[which].requires_grad_()

    def f(t):
        a = dict(args, **{which: t})
        return converse2d(a["x"], a["weight"], a["lam"], 1, 2, "reflect")

    assert torch.autograd.gradgradcheck(f, (t,), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_reliability_gradient_penalty_module():
    # a typical use of second derivatives: a penalty on the input gradient, trained through
    layer = Converse2d(2, 3, scale=1, padding=2).double()
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    assert gx.requires_grad
    gx.square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert layer.bias.grad is not None and layer.bias.grad.abs().sum() > 0
