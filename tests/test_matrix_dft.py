"""The export-mode solver (real DFT matrices, conversenet.functional._matrix_dft).

References: the FFT solver in float64 (the brief: agreement to about 1e-10) and, for a
few cases, the dense least-squares solve of tests/_reference.py (independent of the
package).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from conversenet.functional import converse2d, converse_filter, export_active, export_mode, kernel_otf
from conversenet.functional import _matrix_dft as md
from conversenet.nn import Converse2d, ConverseBlock

from _reference import dense_converse

F64 = torch.float64

CASES = [
    # scale, padding, mode, x0, H, W, kh, kw
    (1, 0, "circular", "interp", 7, 9, 3, 3),
    (1, 3, "reflect", "zero", 8, 5, 5, 4),
    (1, 2, "constant", "interp", 6, 6, 3, 5),
    (2, 2, "replicate", "interp", 6, 7, 3, 3),
    (2, 1, "circular", "zero", 5, 5, 2, 2),
    (3, 1, "reflect", "interp", 4, 5, 4, 3),
    (4, 0, "circular", "interp", 3, 3, 2, 2),
    (2, 0, "constant", "tensor", 5, 6, 4, 4),
    (1, 2, "circular", "tensor", 6, 5, 3, 3),
]


def _inputs(gen, s, h, w, kh, kw, x0, batch_kernel=2):
    y = torch.randn(2, 3, h, w, generator=gen, dtype=F64)
    k = torch.rand(batch_kernel, 3, kh, kw, generator=gen, dtype=F64)
    k = k / k.sum((-2, -1), keepdim=True)
    lam = torch.rand(1, 3, 1, 1, generator=gen, dtype=F64) * 0.05 + 1e-4
    xx = torch.randn(2, 3, h * s, w * s, generator=gen, dtype=F64) if x0 == "tensor" else x0
    return y, k, lam, xx


@pytest.mark.parametrize("s,p,mode,x0,h,w,kh,kw", CASES)
def test_matches_fft_solver_float64(s, p, mode, x0, h, w, kh, kw):
    gen = torch.Generator().manual_seed(s * 100 + h * 10 + w)
    y, k, lam, xx = _inputs(gen, s, h, w, kh, kw, x0)
    ref = converse2d(y, k, lam, s, p, mode, xx)
    with export_mode():
        out = converse2d(y, k, lam, s, p, mode, xx)
    assert out.shape == ref.shape == (2, 3, s * h, s * w)
    assert (out - ref).abs().max().item() < 1e-10


@pytest.mark.parametrize("s,x0", [(1, "interp"), (2, "zero"), (2, "interp")])
def test_matches_dense_least_squares(s, x0):
    gen = torch.Generator().manual_seed(7)
    y, k, lam, _ = _inputs(gen, s, 4, 5, 3, 3, x0, batch_kernel=1)
    ref = dense_converse(y.numpy(), k.numpy(), lam.reshape(1, 3).numpy(), s, 1, "reflect", x0)
    with export_mode():
        out = converse2d(y, k, lam, s, 1, "reflect", x0)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-9, rtol=0)


def test_float32_close_to_float64():
    gen = torch.Generator().manual_seed(3)
    y, k, lam, _ = _inputs(gen, 2, 12, 10, 5, 5, "interp")
    ref = converse2d(y, k, lam, 2, 4, "circular")
    with export_mode():
        out = converse2d(y.float(), k.float(), lam.float(), 2, 4, "circular")
    assert out.dtype == torch.float32
    assert (out.double() - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("s", [1, 3])
def test_filter_and_otf_parts_match_complex(s):
    gen = torch.Generator().manual_seed(11)
    k = torch.rand(2, 3, 3, 4, generator=gen, dtype=F64)
    lam = torch.rand(1, 3, 1, 1, generator=gen, dtype=F64) + 1e-3
    fk = kernel_otf(k, (10, 9), onesided=True)
    re, im = md.kernel_otf_parts(k, (10, 9), onesided=True)
    assert (re - fk.real).abs().max() < 1e-12 and (im - fk.imag).abs().max() < 1e-12
    for x0 in ("interp", "zero"):
        g = converse_filter(k, lam, (5, 6), s, x0)
        gr, gi = md.filter_parts(k, lam, (5, 6), s, x0)
        assert gr.shape == g.shape
        assert (gr - g.real).abs().max() < 1e-11 and (gi - g.imag).abs().max() < 1e-11


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(5)
    y = torch.randn(1, 2, 4, 5, generator=gen, dtype=F64, requires_grad=True)
    k = torch.rand(1, 2, 3, 3, generator=gen, dtype=F64, requires_grad=True)
    lam = (torch.rand(1, 2, 1, 1, generator=gen, dtype=F64) * 0.1 + 0.01).requires_grad_()
    with export_mode():
        assert torch.autograd.gradcheck(lambda a, b, c: converse2d(a, b, c, 2, 1, "replicate"), (y, k, lam))


def test_module_and_half_input():
    torch.manual_seed(0)
    layer = Converse2d(4, 3, scale=2, padding=2).eval()
    x = torch.randn(1, 4, 9, 8)
    with torch.no_grad():
        ref = layer(x)
        with export_mode():
            out = layer(x)
            half = layer(x.to(torch.bfloat16))
    assert (out - ref).abs().max() < 1e-4
    assert half.dtype == torch.bfloat16 and half.shape == ref.shape


def test_export_mode_is_scoped_and_per_thread():
    assert not export_active()
    seen = []
    with export_mode():
        assert export_active()
        with export_mode(False):
            assert not export_active()
        assert export_active()
        t = threading.Thread(target=lambda: seen.append(export_active()))
        t.start()
        t.join()
    assert not export_active() and seen == [False]
    with pytest.raises(RuntimeError):
        with export_mode():
            raise RuntimeError("boom")
    assert not export_active()


def test_torch_export_graph_has_no_fft_or_complex():
    """The traced graph of a converse block holds real operators only, and runs."""
    torch.manual_seed(0)
    block = ConverseBlock(4, 3).eval()
    x = torch.randn(1, 4, 10, 9)
    with torch.no_grad():
        ref = block(x)
        with export_mode():
            ep = torch.export.export(block, (x,))
        out = ep.module()(x)
        again = block(x)  # eager after tracing: nothing fake left behind
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("fft" in o or "complex" in o or "view_as_real" in o for o in ops), ops
    for n in ep.graph.nodes:
        val = n.meta.get("val")
        if isinstance(val, torch.Tensor):
            assert not val.is_complex(), n
    assert (out - ref).abs().max() < 1e-4
    assert torch.equal(again, ref)
