"""Converse2D operator: optimality, Eq. 6, gradients, precision, shapes, layouts, devices.

References come from tests/_reference.py (dense normal-equation solves on explicit
matrices built by loops, and the paper's Eq. 6 written out with complex FFTs).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _reference import dense_converse, conv_down_matrix, eq6, softmax_kernel
from conversenet.functional import PADDING_MODES, conv_down, converse2d


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (tests/conftest.py)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a = torch.as_tensor(a, dtype=torch.float64).cpu()
    b = torch.as_tensor(b, dtype=torch.float64).cpu()
    return float((a - b).abs().max() / b.abs().max())


def _make_lam(kind: str, base: float, n: int, c: int, gen: torch.Generator):
    """Returns (lam argument for converse2d, (1 or N, C) numpy array for the reference)."""
    if kind == "float":
        return base, np.full((1, c), base)
    rows = n if kind == "NxC" else 1
    vals = base * (1 + torch.rand(rows, c, generator=gen, dtype=torch.float64))
    if kind == "cvec":
        return vals[0], vals.numpy()
    return vals.reshape(rows, c, 1, 1), vals.numpy()


# n, c, h, w, s, (kh, kw), lam kind, lam base, x0, per-sample kernel, padding, padding_mode
OPTIMALITY_CASES = [
    (1, 1, 5, 7, 1, (1, 1), "float", 1e-5, "interp", False, 0, "circular"),
    (2, 3, 5, 6, 1, (3, 3), "cvec", 1e-2, "zero", True, 0, "circular"),
    (1, 3, 7, 9, 1, (7, 7), "1xC", 10.0, "tensor", False, 0, "circular"),
    (1, 3, 6, 5, 1, (5, 5), "float", 1e-5, "interp", False, 0, "circular"),
    (2, 1, 3, 5, 2, (2, 2), "NxC", 1e-3, "interp", True, 0, "circular"),
    (1, 3, 4, 3, 2, (5, 5), "float", 0.1, "zero", False, 0, "circular"),
    (2, 3, 3, 4, 2, (3, 5), "NxC", 1e-4, "tensor", True, 0, "circular"),
    (1, 1, 3, 3, 3, (7, 7), "float", 1e-5, "interp", False, 0, "circular"),
    (2, 1, 3, 4, 3, (3, 3), "cvec", 1e-1, "zero", True, 0, "circular"),
    (1, 3, 2, 3, 4, (5, 5), "1xC", 10.0, "interp", False, 0, "circular"),
    (2, 1, 3, 2, 4, (7, 7), "NxC", 1e-2, "tensor", True, 0, "circular"),
    (2, 3, 3, 5, 4, (3, 5), "float", 1.0, "zero", False, 0, "circular"),
    # padding is applied before the solve and cropped after: reference pads with numpy
    (1, 1, 5, 6, 1, (3, 3), "float", 1e-2, "interp", False, 2, "reflect"),
    (2, 1, 4, 3, 2, (3, 3), "NxC", 1e-3, "tensor", True, 1, "replicate"),
    (1, 3, 3, 4, 2, (2, 2), "cvec", 1e-1, "zero", False, 2, "constant"),
    (1, 1, 4, 5, 3, (5, 5), "float", 1e-4, "tensor", False, 1, "circular"),
]


@pytest.mark.parametrize(
    "n,c,h,w,s,ks,lam_kind,lam_base,x0_kind,per_sample,padding,mode", OPTIMALITY_CASES
)
def test_output_solves_normal_equations(
    device, n, c, h, w, s, ks, lam_kind, lam_base, x0_kind, per_sample, padding, mode
):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((n, c, h, w, s, ks, lam_kind, x0_kind, padding)).encode()))
    y = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    kernel = torch.randn(n if per_sample else 1, c, *ks, generator=gen, dtype=torch.float64)
    lam, lam_np = _make_lam(lam_kind, lam_base, n, c, gen)
    if x0_kind == "tensor":
        x0 = torch.randn(n, c, s * h, s * w, generator=gen, dtype=torch.float64)
        x0_ref = x0.numpy()
    else:
        x0 = x0_ref = x0_kind
    ref = dense_converse(y.numpy(), kernel.numpy(), lam_np, s, padding, mode, x0_ref)

    to = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
    out = converse2d(to(y), to(kernel), to(lam), s, padding, mode, to(x0))
    assert out.shape == (n, c, s * h, s * w)
    assert out.dtype == torch.float64
    assert _rel(out, torch.from_numpy(ref)) < 1e-8


def test_optimum_beats_perturbations():
    # independent of the dense solve: the objective at the output is below nearby points
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(1, 2, 4, 5, generator=gen, dtype=torch.float64)
    k = softmax_kernel(gen, 1, 2, 3, 3)
    lam = 0.05

    def objective(x):
        x0 = y.repeat_interleave(2, -2).repeat_interleave(2, -1)
        return ((y - conv_down(x, k, 2)) ** 2).sum() + lam * ((x - x0) ** 2).sum()

    out = converse2d(y, k, lam, scale=2)
    f0 = objective(out)
    for _ in range(10):
        d = 1e-3 * torch.randn(out.shape, generator=gen, dtype=torch.float64)
        assert objective(out + d) > f0


@pytest.mark.parametrize(
    "n,c,big_h,big_w,s,ks,per_sample",
    [
        (1, 1, 6, 7, 1, (1, 1), False),
        (2, 3, 8, 6, 2, (3, 3), True),
        (1, 2, 9, 6, 3, (2, 2), False),
        (2, 1, 8, 12, 4, (5, 5), False),
        (1, 3, 7, 9, 1, (7, 7), True),
        (2, 2, 6, 10, 2, (3, 5), True),
    ],
)
def test_conv_down_matches_definition(device, n, c, big_h, big_w, s, ks, per_sample):
    gen = torch.Generator().manual_seed(big_h * 100 + big_w)
    x = torch.randn(n, c, big_h, big_w, generator=gen, dtype=torch.float64)
    k = torch.randn(n if per_sample else 1, c, *ks, generator=gen, dtype=torch.float64)
    out = conv_down(x.to(device), k.to(device), s)
    assert out.shape == (n, c, big_h // s, big_w // s)
    for ni in range(n):
        for ci in range(c):
            a_mat = conv_down_matrix(k[ni if per_sample else 0, ci].numpy(), big_h, big_w, s)
            expect = (a_mat @ x[ni, ci].numpy().ravel()).reshape(big_h // s, big_w // s)
            np.testing.assert_allclose(out[ni, ci].cpu().numpy(), expect, rtol=0, atol=1e-12)


@pytest.mark.parametrize("s", [1, 2, 3, 4])
@pytest.mark.parametrize("x0", ["interp", "zero"])
def test_agrees_with_paper_eq6(device, s, x0):
    gen = torch.Generator().manual_seed(10 * s + (x0 == "zero"))
    y = torch.randn(2, 3, 6, 5, generator=gen, dtype=torch.float64)
    k = softmax_kernel(gen, 1, 3, 5, 5)
    lam = torch.tensor([1e-3, 1.33e-4, 0.3], dtype=torch.float64).reshape(1, 3, 1, 1)
    ref = eq6(y, k, lam, s, x0=x0)
    out = converse2d(y.to(device), k.to(device), lam.to(device), s, 0, "circular", x0)
    assert _rel(out, ref) < 1e-9


def test_gradcheck_shared_and_per_sample(device):
    gen = torch.Generator().manual_seed(3)
    for s, per_sample in [(1, False), (2, True), (1, True), (2, False)]:
        x = torch.randn(2, 2, 3, 4, generator=gen, dtype=torch.float64).to(device).requires_grad_()
        w = torch.randn(2 if per_sample else 1, 2, 3, 3, generator=gen, dtype=torch.float64)
        w = w.to(device).requires_grad_()
        lam = (0.05 + torch.rand(1, 2, 1, 1, generator=gen, dtype=torch.float64)).to(device).requires_grad_()
        assert torch.autograd.gradcheck(
            lambda a, b, c: converse2d(a, b, c, scale=s), (x, w, lam), eps=1e-6, atol=1e-6
        )


@pytest.mark.parametrize(
    "mode,padding,s,x0",
    [("circular", 2, 1, "interp"), ("reflect", 1, 2, "zero"), ("replicate", 2, 2, "interp"), ("constant", 1, 1, "tensor")],
)
def test_gradcheck_with_padding(device, mode, padding, s, x0):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 2, 4, 3, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    w = torch.randn(1, 2, 3, 3, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    lam = (0.05 + torch.rand(2, generator=gen, dtype=torch.float64)).to(device).requires_grad_()
    inputs = [x, w, lam]
    if x0 == "tensor":
        inputs.append(torch.randn(1, 2, 4 * s, 3 * s, generator=gen, dtype=torch.float64).to(device).requires_grad_())
        fn = lambda a, b, c, d: converse2d(a, b, c, s, padding, mode, d)  # noqa: E731
    else:
        fn = lambda a, b, c: converse2d(a, b, c, s, padding, mode, x0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------
# precision
# --------------------------------------------------------------------------------------
def _paper_setting(device):
    gen = torch.Generator().manual_seed(2024)
    y = torch.randn(1, 64, 128, 128, generator=gen, dtype=torch.float64)
    k = softmax_kernel(gen, 1, 64, 7, 7)
    lam = torch.full((1, 64, 1, 1), float(torch.sigmoid(torch.tensor(-9.0, dtype=torch.float64))) + 1e-5,
                     dtype=torch.float64)
    return y.to(device), k.to(device), lam.to(device)


def test_float32_accuracy_at_paper_setting(device):
    y, k, lam = _paper_setting(device)
    out64 = converse2d(y, k, lam, 1, 6, "circular")
    out32 = converse2d(y.float(), k.float(), lam.float(), 1, 6, "circular")
    assert out32.dtype == torch.float32
    err_ours = float((out32.double() - out64).abs().max())
    # the paper's Eq. 6 (float64) on the circularly padded input, cropped, as ground truth
    ref64 = eq6(F.pad(y, (6,) * 4, mode="circular"), k, lam, 1)[..., 6:-6, 6:-6]
    assert float((out64 - ref64).abs().max()) < 1e-9
    eq6_32 = eq6(F.pad(y.float(), (6,) * 4, mode="circular"), k.float(), lam.float(), 1)[..., 6:-6, 6:-6]
    err_eq6 = float((eq6_32.double() - ref64).abs().max())
    print(f"float32 max abs error: ours {err_ours:.3e}, Eq. 6 {err_eq6:.3e}")
    assert err_ours <= 1e-4
    assert err_eq6 > 1e-4  # as written, Eq. 6 loses precision dividing by lam ~ 1.3e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("s", [1, 2])
def test_half_precision_inputs(device, dtype, s):
    gen = torch.Generator().manual_seed(5)
    y = torch.randn(2, 3, 10, 9, generator=gen).to(device, dtype)
    k = softmax_kernel(gen, 1, 3, 5, 5, dtype=torch.float32).to(device, dtype)
    lam = torch.tensor([1e-2, 1e-3, 0.1], device=device, dtype=dtype)
    out = converse2d(y, k, lam, s, 4, "replicate")
    assert out.dtype == dtype
    ref = converse2d(y.float(), k.float(), lam.float(), s, 4, "replicate")
    assert torch.isfinite(out).all()
    # only the final rounding to the half dtype may differ
    tol = torch.finfo(dtype).eps * ref.abs() + torch.finfo(dtype).tiny
    assert bool(((out.float() - ref).abs() <= tol).all())


def test_autocast_bfloat16_function_and_module():
    from conversenet.nn import Converse2d

    gen = torch.Generator().manual_seed(6)
    y = torch.randn(1, 4, 12, 10, generator=gen)
    k = softmax_kernel(gen, 1, 4, 3, 3, dtype=torch.float32)
    plain = converse2d(y, k, 1e-2, 2, 2)
    layer = Converse2d(4, 3, scale=2, padding=2)
    plain_mod = layer(y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = converse2d(y, k, 1e-2, 2, 2)
        out_b = converse2d(y.bfloat16(), k, 1e-2, 2, 2)
        out_mod = layer(y)
        # inside a network where a matmul-like op hands over bfloat16 features
        conv = torch.nn.Conv2d(4, 4, 1)
        feats = conv(y)
        assert feats.dtype == torch.bfloat16
        out_net = layer(feats)
    # like a convolution under autocast: the result comes back in the autocast dtype,
    # solved in float32 (only the final rounding differs)
    assert out.dtype == torch.bfloat16 and out_mod.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), plain, rtol=2**-8, atol=1e-30)
    torch.testing.assert_close(out_mod.float(), plain_mod.detach(), rtol=2**-8, atol=1e-30)
    assert out_b.dtype == torch.bfloat16 and out_net.dtype == torch.bfloat16
    torch.testing.assert_close(out_b.float(), converse2d(y.bfloat16().float(), k, 1e-2, 2, 2),
                               rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(out_net.float(), layer(feats.float()), rtol=1e-2, atol=1e-2)
    out_net.float().sum().backward()  # autograd through the autocast region works
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


# --------------------------------------------------------------------------------------
# shapes, layouts, compile
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("padding", [0, 1, 3, 4])
@pytest.mark.parametrize("s", [1, 2, 3])
def test_output_shape_all_padding_modes(device, mode, padding, s):
    y = torch.randn(2, 3, 9, 7, device=device)
    k = torch.softmax(torch.randn(1, 3, 9), -1).reshape(1, 3, 3, 3).to(device)
    out = converse2d(y, k, 1e-3, s, padding, mode)
    assert out.shape == (2, 3, 9 * s, 7 * s)
    assert torch.isfinite(out).all()


def test_padding_modes_differ_and_padding_matters():
    # a failing-if-ignored check: the mode and amount of padding change the result
    gen = torch.Generator().manual_seed(7)
    y = torch.randn(1, 2, 8, 9, generator=gen, dtype=torch.float64)
    k = softmax_kernel(gen, 1, 2, 5, 5)
    outs = {m: converse2d(y, k, 1e-3, 2, 4, m) for m in PADDING_MODES}
    for a in PADDING_MODES:
        for b in PADDING_MODES:
            if a < b:
                assert not torch.allclose(outs[a], outs[b])
    # the amount of padding changes the periodic problem that is solved
    assert not torch.allclose(converse2d(y, k, 1e-3, 2, 3, "circular"), converse2d(y, k, 1e-3, 2, 0))


def _layouts(y):
    yield "transposed", y.transpose(-1, -2).contiguous().transpose(-1, -2)
    big = torch.zeros(y.shape[0], y.shape[1] + 2, y.shape[2] * 2, y.shape[3] + 3, dtype=y.dtype, device=y.device)
    big[:, 1:-1, ::2, 2:-1] = y
    yield "sliced", big[:, 1:-1, ::2, 2:-1]
    yield "channels_last", y.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("s,x0", [(1, "interp"), (2, "interp"), (3, "zero"), (2, "tensor")])
def test_non_contiguous_inputs(device, s, x0):
    gen = torch.Generator().manual_seed(8)
    y = torch.randn(2, 3, 6, 5, generator=gen, dtype=torch.float64).to(device)
    k = softmax_kernel(gen, 2, 3, 3, 3).to(device)
    x0t = torch.randn(2, 3, 6 * s, 5 * s, generator=gen, dtype=torch.float64).to(device) if x0 == "tensor" else x0
    lam = torch.tensor([1e-2, 1e-3, 1e-1], dtype=torch.float64, device=device)
    base = converse2d(y, k, lam, s, 2, "reflect", x0t)
    for name, yy in _layouts(y):
        assert not yy.is_contiguous(), name
        for kname, kk in _layouts(k):
            x0v = x0t if x0 != "tensor" else next(v for n_, v in _layouts(x0t) if n_ == kname)
            out = converse2d(yy, kk, lam[::1], s, 2, "reflect", x0v)
            torch.testing.assert_close(out, base, rtol=1e-12, atol=1e-12, msg=f"{name}/{kname}")


@pytest.mark.slow
def test_torch_compile_module():
    from conversenet.nn import Converse2d

    torch.manual_seed(9)
    layer = Converse2d(4, 5, scale=2, padding=4, padding_mode="replicate")
    y = torch.randn(2, 4, 12, 10)
    eager = layer(y)
    compiled = torch.compile(layer)
    out = compiled(y)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(y), eager, rtol=1e-5, atol=1e-5)
