"""Gradients of Converse2D (custom autograd path for s = 1, autograd for s > 1).

Every check is float64 ``torch.autograd.gradcheck`` (finite differences, independent of
the backward formulas) with respect to the input, the kernel and lam, for shared and
per-sample kernels, even and odd padded widths (the rfft half-plane's Nyquist column)
and every padding mode.
"""

import pytest
import torch

from conversenet.functional import converse2d
from conversenet.nn import Converse2d


def _inputs(n, c, h, w, k, per_sample, per_sample_lam, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    kb = n if per_sample else 1
    weight = torch.softmax(torch.randn(kb, c, k * k, generator=g, dtype=torch.float64), -1)
    weight = weight.reshape(kb, c, k, k)
    lb = n if per_sample_lam else 1
    lam = 0.02 + torch.rand(lb, c, 1, 1, generator=g, dtype=torch.float64) * 0.2
    return x.requires_grad_(), weight.requires_grad_(), lam.requires_grad_()


CASES = [
    # (scale, h, w, k, padding, mode, per-sample kernel, per-sample lam)
    (1, 6, 7, 3, 2, "circular", False, False),
    (1, 5, 6, 3, 2, "reflect", True, False),
    (1, 6, 6, 2, 1, "replicate", False, True),
    (1, 5, 5, 3, 0, "circular", True, True),
    (2, 4, 5, 2, 1, "replicate", False, False),
    (2, 4, 4, 3, 2, "circular", True, False),
    (2, 3, 4, 3, 1, "constant", False, True),
    (3, 3, 3, 2, 1, "reflect", True, True),
]


@pytest.mark.parametrize("scale,h,w,k,padding,mode,ps,pl", CASES)
@pytest.mark.parametrize("x0", ["interp", "zero"])
def test_gradcheck_x_weight_lam(scale, h, w, k, padding, mode, ps, pl, x0):
    x, weight, lam = _inputs(2, 2, h, w, k, ps, pl)

    def f(x, weight, lam):
        return converse2d(x, weight, lam, scale=scale, padding=padding, padding_mode=mode, x0=x0)

    assert torch.autograd.gradcheck(f, (x, weight, lam), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("which", ["x", "weight", "lam"])
def test_gradcheck_one_input_at_a_time(which):
    # only one input requires grad: exercises the paths that skip the other gradients
    x, weight, lam = _inputs(1, 2, 5, 4, 3, False, False, seed=1)
    args = {"x": x.detach(), "weight": weight.detach(), "lam": lam.detach()}
    args[which].requires_grad_()

    def f(t):
        a = dict(args, **{which: t})
        return converse2d(a["x"], a["weight"], a["lam"], scale=1, padding=2)

    assert torch.autograd.gradcheck(f, (args[which],), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("scale", [1, 2])
def test_module_gradcheck_weight_and_bias(scale):
    layer = Converse2d(2, 3, scale=scale, padding=2).double()
    with torch.no_grad():
        layer.bias.uniform_(3.0, 6.0)  # lam of order 0.01-0.1: well-conditioned differences
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)

    def f(x, weight, bias):
        return torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (x,))

    inputs = (x, layer.weight.detach().clone().requires_grad_(), layer.bias.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_backward_matches_between_float32_and_float64():
    # the float32 gradient of the fast path follows the float64 one (no precision trap)
    x, weight, lam = _inputs(2, 4, 12, 10, 5, False, False, seed=3)
    grads = []
    for dt in (torch.float64, torch.float32):
        xs, ws, ls = (t.detach().to(dt).requires_grad_() for t in (x, weight, lam))
        out = converse2d(xs, ws, ls, padding=4)
        out.backward(torch.ones_like(out) + torch.linspace(0, 1, out.shape[-1], dtype=dt))
        grads.append([xs.grad.double(), ws.grad.double(), ls.grad.double()])
    for g64, g32 in zip(*grads):
        scale = g64.abs().max()
        assert (g64 - g32).abs().max() <= 1e-4 * scale


# ---------------------------------------------------------------------------------------
# fft_size="fast": same operator, solved at a 7-smooth padded size
# ---------------------------------------------------------------------------------------
def _factors_ok(n):
    for p in (2, 3, 5, 7):
        while n % p == 0:
            n //= p
    return n == 1


@pytest.mark.parametrize("mode", ["circular", "reflect", "replicate", "constant"])
@pytest.mark.parametrize("scale", [1, 2])
def test_fast_fft_size_is_exact_solve_on_the_larger_padding(mode, scale):
    import torch.nn.functional as F

    from conversenet.functional import fft_pads

    g = torch.Generator().manual_seed(5)
    h, w, p = 23, 19, 3  # 29 and 25: 29 is prime
    x = torch.randn(2, 3, h, w, generator=g, dtype=torch.float64)
    k = torch.rand(1, 3, 3, 3, generator=g, dtype=torch.float64)
    pads = fft_pads(h, w, p, scale, mode, "fast")
    left, right, top, bottom = pads
    assert min(pads) >= p
    assert _factors_ok(scale * (h + top + bottom)) and _factors_ok(scale * (w + left + right))
    fast = converse2d(x, k, 0.05, scale=scale, padding=p, padding_mode=mode, fft_size="fast")
    # reference: pad by hand, solve without padding, crop by hand
    full = converse2d(F.pad(x, pads, mode=mode), k, 0.05, scale=scale, padding=0)
    ref = full[..., scale * top : scale * (top + h), scale * left : scale * (left + w)]
    assert fast.shape == (2, 3, scale * h, scale * w)
    assert torch.allclose(fast, ref, atol=1e-12)
    exact = converse2d(x, k, 0.05, scale=scale, padding=p, padding_mode=mode)
    assert not torch.allclose(fast, exact, atol=1e-6)  # it is a different boundary treatment


def test_fast_fft_size_gradcheck_and_module():
    x, weight, lam = _inputs(1, 2, 5, 7, 3, False, False, seed=7)

    def f(x, weight, lam):
        return converse2d(x, weight, lam, padding=2, fft_size="fast")

    assert torch.autograd.gradcheck(f, (x, weight, lam), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)
    layer = Converse2d(2, 3, padding=2, fft_size="fast").double().eval()
    y = torch.randn(1, 2, 9, 11, dtype=torch.float64)
    with torch.no_grad():
        ref = converse2d(y, layer.weight, layer.lam, padding=2, fft_size="fast")
        assert torch.allclose(layer(y), ref, atol=1e-12)  # first call fills the cache
        assert torch.allclose(layer(y), ref, atol=1e-12)  # second call uses it
    with pytest.raises(ValueError, match="fft_size"):
        Converse2d(2, 3, fft_size="quick")
    with pytest.raises(ValueError, match="fft_size"):
        converse2d(y, layer.weight.detach(), 0.1, fft_size="quick")
