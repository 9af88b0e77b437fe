"""converse1d / converse3d and the Converse1d / Converse3d modules (issue 14, item 5).

References are independent of conversenet: the forward model (circular true convolution
with centre k // 2, then keeping the first sample of every s-block per axis) is written as
an explicit matrix by loops from its definition, and the optimum comes from a dense float64
solve of the normal equations ``(A^T A + lam I) x = A^T y + lam x0``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from _reference import softmax_kernel
from conversenet.functional import converse1d, converse2d, converse3d
from conversenet.functional.converse_nd import converse_nd
from conversenet.nn import Converse1d, Converse3d

NP_PAD = {"circular": "wrap", "reflect": "reflect", "replicate": "edge", "constant": "constant"}


# --------------------------------------------------------------------------------------
# independent dense reference
# --------------------------------------------------------------------------------------
def conv_down_matrix_nd(kernel: np.ndarray, big, scales) -> np.ndarray:
    """A (prod(n), prod(big)): ``y[i] = sum_a K[a] x[(s i - a + k//2) mod big]`` per axis."""
    small = [b // s for b, s in zip(big, scales)]
    a_mat = np.zeros((math.prod(small), math.prod(big)))
    for i in itertools.product(*[range(m) for m in small]):
        row = np.ravel_multi_index(i, small)
        for a in itertools.product(*[range(k) for k in kernel.shape]):
            src = tuple((s * ii - aa + k // 2) % b for ii, aa, k, s, b in zip(i, a, kernel.shape, scales, big))
            a_mat[row, np.ravel_multi_index(src, big)] += kernel[a]
    return a_mat


def dense_converse_nd(y, kernel, lam, scales, padding=0, mode="circular", x0="interp"):
    """Reference by dense solves. y (N, C, *n); kernel (1|N, C, *k); lam (1|N, C); x0 str or array."""
    y = np.asarray(y, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    lam = np.asarray(lam, dtype=np.float64)
    n, c = y.shape[:2]
    d = y.ndim - 2
    pad_y = [(0, 0), (0, 0)] + [(padding, padding)] * d
    yp = np.pad(y, pad_y, mode=NP_PAD[mode]) if padding else y
    big = tuple(s * m for s, m in zip(scales, yp.shape[2:]))
    if isinstance(x0, str):
        if x0 == "interp":
            x0p = yp
            for ax, s in enumerate(scales):
                x0p = np.repeat(x0p, s, axis=2 + ax)
        else:
            x0p = np.zeros((n, c, *big))
    else:
        pad_x0 = [(0, 0), (0, 0)] + [(padding * s, padding * s) for s in scales]
        x0p = np.pad(np.asarray(x0, dtype=np.float64), pad_x0, mode=NP_PAD[mode]) if padding else x0
    out = np.empty((n, c, *big))
    eye = torch.eye(math.prod(big), dtype=torch.float64)
    for ni in range(n):
        for ci in range(c):
            k = kernel[ni if kernel.shape[0] > 1 else 0, ci]
            lm = float(lam[ni if lam.shape[0] > 1 else 0, ci])
            a_mat = torch.from_numpy(conv_down_matrix_nd(k, big, scales))
            lhs = a_mat.T @ a_mat + lm * eye
            rhs = a_mat.T @ torch.from_numpy(yp[ni, ci].ravel()) + lm * torch.from_numpy(x0p[ni, ci].ravel())
            out[ni, ci] = torch.linalg.solve(lhs, rhs).numpy().reshape(big)
    if padding:
        sl = (slice(None), slice(None)) + tuple(slice(padding * s, b - padding * s) for s, b in zip(scales, big))
        out = out[sl]
    return out



def _lam(gen, b, c, d):
    return (1e-3 + 0.2 * torch.rand(b, c, generator=gen, dtype=torch.float64)).reshape(b, c, *([1] * d))


# --------------------------------------------------------------------------------------
# against the dense solve
# --------------------------------------------------------------------------------------
CASES_1D = [
    # s, k, L, padding, mode, x0, per-sample kernel
    (1, 3, 9, 0, "circular", "interp", False),
    (2, 5, 7, 2, "reflect", "interp", True),
    (3, 4, 5, 3, "replicate", "zero", False),
    (2, 2, 6, 1, "constant", "tensor", True),
    (4, 7, 3, 3, "circular", "interp", False),
    (1, 6, 8, 2, "replicate", "tensor", False),
]


@pytest.mark.parametrize("s,k,length,padding,mode,x0,per_sample", CASES_1D)
def test_converse1d_matches_dense_solve(device, s, k, length, padding, mode, x0, per_sample):
    gen = torch.Generator().manual_seed(100 + s * 10 + k)
    y = torch.randn(2, 3, length, generator=gen, dtype=torch.float64)
    w = softmax_kernel(gen, 2 if per_sample else 1, 3, k)
    lam = _lam(gen, 2 if per_sample else 1, 3, 1)
    x0v = torch.randn(2, 3, length * s, generator=gen, dtype=torch.float64) if x0 == "tensor" else x0
    ref = dense_converse_nd(y.numpy(), w.numpy(), lam.reshape(lam.shape[:2]).numpy(), (s,), padding, mode,
                            x0v.numpy() if x0 == "tensor" else x0)
    x0d = x0v.to(device) if x0 == "tensor" else x0
    out = converse1d(y.to(device), w.to(device), lam.to(device), s, padding, mode, x0d)
    assert out.shape == (2, 3, length * s)
    np.testing.assert_allclose(out.cpu().numpy(), ref, rtol=1e-9, atol=1e-9)


CASES_3D = [
    # scale, k, size, padding, mode, x0, per-sample
    (1, (3, 3, 3), (3, 4, 3), 0, "circular", "interp", False),
    (2, (3, 2, 3), (2, 3, 2), 1, "reflect", "interp", True),
    ((1, 2, 3), (1, 3, 2), (3, 2, 2), 1, "replicate", "zero", False),
    ((2, 1, 2), (2, 2, 3), (2, 3, 2), 1, "constant", "tensor", False),
    ((2, 2, 1), (3, 3, 1), (2, 2, 3), 2, "circular", "interp", True),
]


@pytest.mark.parametrize("scale,ks,size,padding,mode,x0,per_sample", CASES_3D)
def test_converse3d_matches_dense_solve(device, scale, ks, size, padding, mode, x0, per_sample):
    gen = torch.Generator().manual_seed(7 + sum(size))
    scales = scale if isinstance(scale, tuple) else (scale,) * 3
    y = torch.randn(2, 2, *size, generator=gen, dtype=torch.float64)
    w = softmax_kernel(gen, 2 if per_sample else 1, 2, *ks)
    lam = _lam(gen, 1, 2, 3)
    out_size = tuple(s * m for s, m in zip(scales, size))
    x0v = torch.randn(2, 2, *out_size, generator=gen, dtype=torch.float64) if x0 == "tensor" else x0
    ref = dense_converse_nd(y.numpy(), w.numpy(), lam.reshape(1, 2).numpy(), scales, padding, mode,
                            x0v.numpy() if x0 == "tensor" else x0)
    x0d = x0v.to(device) if x0 == "tensor" else x0
    out = converse3d(y.to(device), w.to(device), lam.to(device), scale, padding, mode, x0d)
    assert out.shape == (2, 2, *out_size)
    np.testing.assert_allclose(out.cpu().numpy(), ref, rtol=1e-9, atol=1e-9)


def test_reference_matrix_is_the_forward_model():
    """Sanity of the reference itself: A x equals a directly written 1-D circular conv + downsample."""
    rng = np.random.default_rng(0)
    k = rng.standard_normal(4)
    x = rng.standard_normal(12)
    s = 3
    direct = [sum(k[a] * x[(s * i - a + 2) % 12] for a in range(4)) for i in range(4)]
    np.testing.assert_allclose(conv_down_matrix_nd(k, (12,), (s,)) @ x, direct, rtol=1e-12)


def test_exact_data_is_recovered_with_small_lam():
    """Feature: with s = 1, an invertible kernel and tiny lam, the blur is undone."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 2, 16, generator=gen, dtype=torch.float64)
    k = torch.tensor([0.2, 0.6, 0.2], dtype=torch.float64).expand(1, 2, 3)  # |FK| >= 0.2
    y = torch.from_numpy(np.stack([conv_down_matrix_nd(k[0, 0].numpy(), (16,), (1,)) @ x[0, c].numpy()
                                   for c in range(2)])[None])
    out = converse1d(y, k, 1e-10)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-7)
    # a constant signal stays constant for any lam when the kernel sums to 1 (x0 = nearest)
    const = torch.full((1, 2, 5, 4, 3), 0.7, dtype=torch.float64)
    out3 = converse3d(const, softmax_kernel(gen, 1, 2, 3, 3, 3), 0.05, scale=2, padding=2, padding_mode="replicate")
    torch.testing.assert_close(out3, torch.full_like(out3, 0.7), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------
# agreement with the 2-D operator
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("s", [1, 2, 3])
@pytest.mark.parametrize("mode,padding", [("circular", 0), ("reflect", 2), ("replicate", 3), ("constant", 1)])
@pytest.mark.parametrize("x0", ["interp", "zero", "tensor"])
def test_nd_with_two_axes_equals_converse2d(device, s, mode, padding, x0):
    gen = torch.Generator().manual_seed(11 * s + padding)
    y = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64).to(device)
    k = softmax_kernel(gen, 2, 3, 3, 4).to(device)
    lam = _lam(gen, 1, 3, 2).to(device)
    x0v = torch.randn(2, 3, 5 * s, 7 * s, generator=gen, dtype=torch.float64).to(device) if x0 == "tensor" else x0
    ref = converse2d(y, k, lam, s, padding, mode, x0v)
    out = converse_nd(y, k, lam, s, padding, mode, x0v, ndim=2)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("s,mode,padding", [(1, "circular", 1), (2, "replicate", 2), (3, "constant", 1), (2, "reflect", 0)])
def test_converse3d_with_one_slice_equals_converse2d(device, s, mode, padding):
    """A single depth slice, a depth-1 kernel and scale (1, s, s): the 3-D solve is the 2-D one
    (padding a lone slice by circular/replicate copies it; constant padding adds zero slices
    that the depth-1 kernel never mixes in)."""
    gen = torch.Generator().manual_seed(21 + s)
    y = torch.randn(2, 3, 6, 5, generator=gen, dtype=torch.float64).to(device)
    k = softmax_kernel(gen, 1, 3, 3, 3).to(device)
    lam = _lam(gen, 1, 3, 2).to(device)
    ref = converse2d(y, k, lam, s, padding, mode)
    out = converse3d(y[:, :, None], k[:, :, None], lam[..., None], (1, s, s), padding, mode)
    torch.testing.assert_close(out[:, :, 0], ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("s,mode,padding,x0", [(1, "circular", 2, "interp"), (3, "replicate", 2, "zero"),
                                               (2, "reflect", 3, "interp")])
def test_converse1d_equals_converse3d_on_a_line(s, mode, padding, x0):
    gen = torch.Generator().manual_seed(31 + s)
    y = torch.randn(2, 2, 9, generator=gen, dtype=torch.float64)
    k = softmax_kernel(gen, 2, 2, 5)
    lam = _lam(gen, 2, 2, 1)
    out1 = converse1d(y, k, lam, s, padding, mode, x0)
    # every (h, w) line carries the same signal: a 4x4 plane so that all modes can pad it
    y3 = y[..., None, None].expand(2, 2, 9, 4, 4)
    out3 = converse3d(y3, k[..., None, None], lam[..., None, None], (s, 1, 1), padding, mode, x0)
    torch.testing.assert_close(out3[..., 0, 0], out1, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("s,mode,padding,x0,per_sample", [
    (1, "circular", 0, "interp", False), (2, "reflect", 2, "zero", True),
    (3, "replicate", 1, "interp", False), (2, "constant", 1, "tensor", True),
])
def test_gradcheck_1d(device, s, mode, padding, x0, per_sample):
    gen = torch.Generator().manual_seed(41 + s)
    x = torch.randn(2, 2, 5, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    w = torch.randn(2 if per_sample else 1, 2, 3, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    lam = (0.05 + torch.rand(2, generator=gen, dtype=torch.float64)).to(device).requires_grad_()
    inputs = [x, w, lam]
    if x0 == "tensor":
        inputs.append(torch.randn(2, 2, 5 * s, generator=gen, dtype=torch.float64).to(device).requires_grad_())
        fn = lambda a, b, c, d: converse1d(a, b, c, s, padding, mode, d)  # noqa: E731
    else:
        fn = lambda a, b, c: converse1d(a, b, c, s, padding, mode, x0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("scale,mode,padding,x0", [
    (1, "circular", 1, "interp"), ((2, 1, 2), "replicate", 1, "zero"), (2, "reflect", 1, "tensor"),
])
def test_gradcheck_3d(device, scale, mode, padding, x0):
    gen = torch.Generator().manual_seed(51)
    scales = scale if isinstance(scale, tuple) else (scale,) * 3
    x = torch.randn(1, 2, 2, 3, 2, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    w = torch.randn(1, 2, 2, 3, 2, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    lam = (0.05 + torch.rand(1, 2, 1, 1, 1, generator=gen, dtype=torch.float64)).to(device).requires_grad_()
    inputs = [x, w, lam]
    if x0 == "tensor":
        shape = (1, 2) + tuple(s * m for s, m in zip(scales, (2, 3, 2)))
        inputs.append(torch.randn(*shape, generator=gen, dtype=torch.float64).to(device).requires_grad_())
        fn = lambda a, b, c, d: converse3d(a, b, c, scale, padding, mode, d)  # noqa: E731
    else:
        fn = lambda a, b, c: converse3d(a, b, c, scale, padding, mode, x0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------
# layouts and dtypes
# --------------------------------------------------------------------------------------
def test_non_contiguous_inputs(device):
    gen = torch.Generator().manual_seed(61)
    y1 = torch.randn(2, 3, 11, generator=gen, dtype=torch.float64).to(device)
    k1 = softmax_kernel(gen, 1, 3, 5).to(device)
    base1 = converse1d(y1, k1, 1e-2, 2, 3, "reflect")
    big1 = torch.zeros(2, 6, 25, dtype=torch.float64, device=device)
    big1[:, ::2, 1:23:2] = y1
    kt = torch.zeros(1, 5, 3, dtype=torch.float64, device=device)
    kt[:] = k1.transpose(1, 2)
    for yy, kk in [(big1[:, ::2, 1:23:2], k1), (y1, kt.transpose(1, 2)), (y1.transpose(0, 1).contiguous().transpose(0, 1), k1)]:
        assert not (yy.is_contiguous() and kk.is_contiguous())
        torch.testing.assert_close(converse1d(yy, kk, 1e-2, 2, 3, "reflect"), base1, rtol=1e-12, atol=1e-12)

    y3 = torch.randn(2, 3, 4, 5, 6, generator=gen, dtype=torch.float64).to(device)
    k3 = softmax_kernel(gen, 2, 3, 3, 3, 3).to(device)
    base3 = converse3d(y3, k3, 1e-2, (1, 2, 2), 2, "replicate")
    cl = y3.contiguous(memory_format=torch.channels_last_3d)
    perm = y3.permute(0, 1, 4, 3, 2).contiguous().permute(0, 1, 4, 3, 2)
    for yy in (cl, perm, y3.transpose(0, 1).contiguous().transpose(0, 1)):
        assert not yy.is_contiguous()
        torch.testing.assert_close(converse3d(yy, k3, 1e-2, (1, 2, 2), 2, "replicate"), base3, rtol=1e-12, atol=1e-12)
    # the inputs are not modified
    assert torch.equal(cl, y3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    gen = torch.Generator().manual_seed(71)
    y = torch.randn(1, 2, 3, 6, 5, generator=gen)
    k = softmax_kernel(gen, 1, 2, 3, 3, 3).float()
    out = converse3d(y.to(dtype), k.to(dtype), 0.01, 2, 2, "replicate")
    ref = converse3d(y.to(dtype).float(), k.to(dtype).float(), 0.01, 2, 2, "replicate")
    assert out.dtype == dtype
    tol = 1e-2 if dtype == torch.float16 else 4e-2  # the output's rounding only
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    y1 = torch.randn(2, 3, 10, generator=gen)
    out1 = converse1d(y1.to(dtype), softmax_kernel(gen, 1, 3, 5).to(dtype), 0.01, 3, 2)
    assert out1.dtype == dtype and out1.shape == (2, 3, 30) and torch.isfinite(out1.float()).all()


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------
def _good1():
    return torch.randn(2, 3, 8), torch.softmax(torch.randn(1, 3, 3), -1)


def _good3():
    return torch.randn(2, 3, 4, 4, 4), torch.softmax(torch.randn(1, 3, 27), -1).reshape(1, 3, 3, 3, 3)


@pytest.mark.parametrize("fn,good,kwargs,match", [
    (converse1d, _good1, dict(x=torch.randn(2, 3, 4, 4)), "x must be 3-D"),
    (converse1d, _good1, dict(x=torch.ones(2, 3, 8, dtype=torch.int64)), "x must have a real floating dtype"),
    (converse1d, _good1, dict(x=[1.0, 2.0]), "x must be a torch.Tensor"),
    (converse1d, _good1, dict(x=torch.randn(2, 3, 0)), "x must have non-empty spatial axes"),
    (converse1d, _good1, dict(lam=float("nan")), "lam must be positive and finite"),
    (converse1d, _good1, dict(lam=torch.tensor([0.1, float("inf"), 0.1])), "lam must be finite everywhere"),
    (converse1d, _good1, dict(lam=torch.tensor(float("nan"))), "lam must be positive everywhere"),
    (converse1d, _good1, dict(weight=torch.randn(1, 3, 3, 3)), "weight must be 3-D"),
    (converse1d, _good1, dict(weight=torch.randn(1, 4, 3)), "weight has 4 channels but x has 3"),
    (converse1d, _good1, dict(weight=torch.randn(3, 3, 3)), "weight batch must be 1"),
    (converse1d, _good1, dict(weight=torch.randn(1, 3, 17)), "weight: kernel 17 is larger"),
    (converse1d, _good1, dict(lam=-1.0), "lam must be positive"),
    (converse1d, _good1, dict(lam=torch.tensor([0.1, -0.1, 0.1])), "lam must be positive everywhere"),
    (converse1d, _good1, dict(lam=torch.ones(1, 3, 1, 1)), "lam must be a float, a C-vector, 1xCx1"),
    (converse1d, _good1, dict(lam="big"), "lam must be a float or a tensor"),
    (converse1d, _good1, dict(scale=0), "scale must be >= 1"),
    (converse1d, _good1, dict(scale=1.5), "scale must be an integer"),
    (converse1d, _good1, dict(scale=(2, 2)), "scale must be an integer or a tuple of 1"),
    (converse1d, _good1, dict(padding=-1), "padding must be >= 0"),
    (converse1d, _good1, dict(padding=8, padding_mode="reflect"), "padding=8 with padding_mode='reflect'"),
    (converse1d, _good1, dict(padding=9), "padding=9 with padding_mode='circular'"),
    (converse1d, _good1, dict(padding_mode="zeros"), "padding_mode must be one of"),
    (converse1d, _good1, dict(x0="bicubic"), "x0 must be one of"),
    (converse1d, _good1, dict(x0=torch.randn(2, 3, 9), scale=1), r"x0 must have the output's shape \(2, 3, 8\)"),
    (converse3d, _good3, dict(x=torch.randn(2, 3, 4, 4)), "x must be 5-D"),
    (converse3d, _good3, dict(weight=torch.randn(1, 3, 3, 3)), "weight must be 5-D"),
    (converse3d, _good3, dict(weight=torch.randn(1, 3, 3, 11, 3)), "weight: kernel 3x11x3 is larger"),
    (converse3d, _good3, dict(scale=(1, 2)), "scale must be an integer or a tuple of 3"),
    (converse3d, _good3, dict(scale=(1, 0, 2)), "scale must be >= 1"),
    (converse3d, _good3, dict(lam=torch.ones(1, 3, 1)), "lam must be a float, a C-vector, 1xCx1x1x1"),
    (converse3d, _good3, dict(x0=torch.randn(2, 3, 8, 8, 8), scale=(1, 2, 2)), "x0 must have the output's shape"),
])
def test_bad_input_errors(fn, good, kwargs, match):
    x, w = good()
    args = dict(x=x, weight=w, lam=0.01)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        fn(**args)


def test_bad_ndim():
    with pytest.raises(ValueError, match="ndim must be 1, 2 or 3"):
        converse_nd(torch.randn(1, 1, 2, 2, 2, 2), torch.ones(1, 1, 1, 1, 1, 1), 0.1, ndim=4)


# --------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,d,shape,scale,out_shape", [
    (Converse1d, 1, (2, 4, 13), 3, (2, 4, 39)),
    (Converse3d, 3, (1, 4, 3, 5, 7), 2, (1, 4, 6, 10, 14)),
    (Converse3d, 3, (2, 4, 3, 5, 7), (1, 2, 3), (2, 4, 3, 10, 21)),
])
def test_module_parameters_and_output(cls, d, shape, scale, out_shape):
    torch.manual_seed(81)
    layer = cls(4, 3, scale=scale, padding=2, padding_mode="replicate")
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    assert layer.weight.shape == (1, 4) + (3,) * d
    assert layer.bias.shape == (1, 4) + (1,) * d
    # Converse2d's parametrisation: softmax kernel, bias 0, lam = sigmoid(b - 9) + eps
    torch.testing.assert_close(layer.weight.reshape(4, -1).sum(-1), torch.ones(4))
    assert bool((layer.weight > 0).all())
    lam0 = 1 / (1 + math.exp(9)) + 1e-5
    torch.testing.assert_close(layer.lam, torch.full_like(layer.bias, lam0))
    x = torch.randn(*shape)
    out = layer(x)
    assert out.shape == out_shape
    fn = converse1d if d == 1 else converse3d
    torch.testing.assert_close(out, fn(x, layer.weight, layer.lam, scale, 2, "replicate"))
    out.square().mean().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert layer.bias.grad is not None and layer.bias.grad.abs().sum() > 0
    assert set(layer.state_dict()) == {"weight", "bias"}


def test_module_kernel_conditioned_and_errors():
    layer = Converse1d(3, 5, scale=2, learn_kernel=False)
    assert layer.weight is None and [n for n, _ in layer.named_parameters()] == ["bias"]
    x = torch.randn(2, 3, 10)
    k = torch.softmax(torch.randn(2, 3, 5), -1)
    torch.testing.assert_close(layer(x, k), converse1d(x, k, layer.lam, 2))
    with pytest.raises(ValueError, match="learn_kernel=False: pass forward"):
        layer(x)
    with pytest.raises(ValueError, match="do not pass kernel="):
        Converse1d(3, 5)(x, k)
    for kwargs, match in [
        (dict(channels=0, kernel_size=3), "channels must be a positive int"),
        (dict(channels=2, kernel_size=(3, 3)), "kernel_size must be a positive int or a tuple of 1"),
        (dict(channels=2, kernel_size=3, scale=0), "scale must be >= 1"),
        (dict(channels=2, kernel_size=3, padding=-2), "padding must be >= 0"),
        (dict(channels=2, kernel_size=3, padding_mode="wrap"), "padding_mode must be one of"),
        (dict(channels=2, kernel_size=3, eps=0.0), "eps must be a positive number"),
        (dict(channels=2, kernel_size=3, x0="cubic"), "x0 must be one of"),
        (dict(channels=2, kernel_size=3, kernel_init="xavier"), "kernel_init must be one of"),
    ]:
        with pytest.raises(ValueError, match=match):
            Converse1d(**kwargs)
    with pytest.raises(ValueError, match="kernel_size must be a positive int or a tuple of 3"):
        Converse3d(2, (3, 3))
    with pytest.raises(ValueError, match="x must be 5-D"):
        Converse3d(2, 3)(torch.randn(1, 2, 4, 4))


def test_module_trains():
    """A few optimizer steps of Converse1d fit a target it can express (loss falls)."""
    torch.manual_seed(91)
    target = Converse1d(2, 3, scale=2, padding=2, padding_mode="replicate")
    with torch.no_grad():
        target.bias.fill_(4.0)
    layer = Converse1d(2, 3, scale=2, padding=2, padding_mode="replicate")
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    x = torch.randn(8, 2, 32)
    with torch.no_grad():
        y = target(x)
    losses = []
    for _ in range(30):
        loss = (layer(x) - y).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_autocast_bfloat16_forward_backward():
    """Under CPU bfloat16 autocast the solve runs in float32 inside (there are no bfloat16
    FFTs) and the result comes back in bfloat16, as a convolution's would."""
    torch.manual_seed(95)
    layer1 = Converse1d(3, 5, scale=2, padding=2, padding_mode="replicate")
    layer3 = Converse3d(2, 3, scale=(1, 2, 2), padding=1)
    x1 = torch.randn(2, 3, 20, requires_grad=True)
    x3 = torch.randn(1, 2, 3, 4, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o1, o3 = layer1(x1), layer3(x3)
        o1b = layer1(x1.to(torch.bfloat16))
        o64 = converse1d(x1.detach().double(), layer1.weight.detach().double(), 0.01)
    assert o1.dtype == o3.dtype == o1b.dtype == torch.bfloat16 and o64.dtype == torch.float64
    # float32 inside: the only error is the final rounding to bfloat16 (8 bits of mantissa)
    for got, ref in ((o1, layer1(x1)), (o3, layer3(x3))):
        ref = ref.detach()
        assert float((got.detach().float() - ref).abs().max()) <= 2 ** -8 * float(ref.abs().max())
    (o1.float().square().mean() + o3.float().square().mean()).backward()
    for t in (x1.grad, x3.grad, layer1.weight.grad, layer1.bias.grad, layer3.weight.grad):
        assert t is not None and torch.isfinite(t).all() and t.abs().sum() > 0


def test_empty_batch_or_channels():
    w = torch.ones(1, 0, 3, requires_grad=True)
    out = converse1d(torch.randn(2, 0, 7), w, 0.1, scale=2)
    assert out.shape == (2, 0, 14)
    out.sum().backward()
    assert w.grad is not None and w.grad.shape == w.shape
    x = torch.randn(0, 2, 3, 4, 5)
    assert converse3d(x, torch.ones(1, 2, 1, 1, 1), 0.1, scale=(2, 1, 3)).shape == (0, 2, 6, 4, 15)


@pytest.mark.slow
def test_torch_compile_modules():
    torch.manual_seed(97)
    for layer, x in [(Converse1d(3, 5, scale=2, padding=2, padding_mode="replicate"), torch.randn(2, 3, 20)),
                     (Converse3d(2, 3, scale=(1, 2, 2), padding=1), torch.randn(1, 2, 3, 4, 5))]:
        eager = layer(x)
        compiled = torch.compile(layer)
        torch.testing.assert_close(compiled(x), eager, rtol=1e-5, atol=1e-5)
