"""The channels-last inference path (commit 40cb4e9): the s = 1 solve that never leaves
channels-last (conversenet/functional/_channels_last.py), its transforms rfft2_cl /
irfft2_cl (functional/_fft.py), the block's pixel-major hidden features and the "mm1x1"
policy decision (nn/converse.py, functional/_fft_policy.py), the workspace's flat
buffers, ConverseStack, gelu_fresh and pointwise (models/_common.py).

Every reference is independent of the code under test: dense float64 solves
(tests/_reference.py), numpy FFTs of the explicitly rolled, zero-padded kernel, numpy
padding, naive LayerNorm loops and einsum products; the fused block paths are compared with
the plain module sequence that autograd runs. Spies show that the path under test ran."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from _reference import NP_PAD, dense_converse, layernorm2d, softmax_kernel
from _tester import BaseTester
from conversenet import _tuning, models
from conversenet.functional import _workspace as _ws
from conversenet.functional import _channels_last, _fft, _fft_policy, converse2d
from conversenet.models._common import ConverseStack, block_stack, gelu_fresh, pointwise
from conversenet.nn import Converse2d, ConverseBlock, LayerNorm2d
from conversenet.nn import converse as _nc

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors (tests/conftest.py)

MODES = ("circular", "reflect", "replicate", "constant")
CL_PATHS = ("torch", "scipy", "ducc")
CL = torch.channels_last


# --------------------------------------------------------------------------------------
# helpers: layouts and independent numpy references
# --------------------------------------------------------------------------------------
def channels_last(t: torch.Tensor) -> torch.Tensor:
    """The same values stored channels-last (and, for C > 1 and H*W > 1, not contiguous)."""
    out = t.contiguous(memory_format=CL)
    assert torch.equal(out, t) and is_cl(out)
    return out


def sample(shape, seed: int, layout: str = "contiguous") -> torch.Tensor:
    """A float64 standard-normal tensor of ``shape``, stored in ``layout``."""
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return channels_last(t) if layout == "channels_last" else t


def is_cl(t: torch.Tensor) -> bool:
    """Channels-last and not also contiguous."""
    return t.is_contiguous(memory_format=CL) and not t.is_contiguous()


def np_pad(y: np.ndarray, pads, mode: str) -> np.ndarray:
    """numpy padding of the last two axes by (left, right, top, bottom)."""
    left, right, top, bottom = pads
    widths = [(0, 0)] * (y.ndim - 2) + [(top, bottom), (left, right)]
    return np.pad(y, widths, mode=NP_PAD[mode])


def np_filter(kernel: np.ndarray, lam: np.ndarray, size, x0: str) -> np.ndarray:
    """(C, M, N//2+1) filter (conj(FK) + lam) / (|FK|^2 + lam) (no lam in the numerator for
    x0="zero"), FK the numpy DFT of the kernel zero-padded to (M, N) with its centre
    (kh//2, kw//2) rolled to (0, 0). kernel: (C, kh, kw); lam: (C,)."""
    c, kh, kw = kernel.shape
    m, n = size
    kp = np.zeros((c, m, n))
    kp[:, :kh, :kw] = kernel
    kp = np.roll(kp, (-(kh // 2), -(kw // 2)), axis=(1, 2))
    fk = np.fft.rfft2(kp, axes=(1, 2))
    lam = np.asarray(lam, dtype=np.float64).reshape(c, 1, 1)
    num = np.conj(fk) if x0 == "zero" else np.conj(fk) + lam
    return num / (np.abs(fk) ** 2 + lam)


def np_converse(y: np.ndarray, kernel: np.ndarray, lam: np.ndarray, pads, mode: str, x0: str) -> np.ndarray:
    """s = 1 Converse2d by numpy FFTs: pad, rfft2, times np_filter, irfft2, crop.
    y: (N, C, H, W); kernel (C, kh, kw); lam (C,)."""
    left, right, top, bottom = pads
    h, w = y.shape[-2:]
    yp = np_pad(np.asarray(y, dtype=np.float64), pads, mode)
    size = yp.shape[-2:]
    g = np_filter(kernel, lam, size, x0)
    xp = np.fft.irfft2(np.fft.rfft2(yp, axes=(-2, -1)) * g[None], s=size, axes=(-2, -1))
    return xp[..., top : top + h, left : left + w]


def np_gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def perturb(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial random parameters everywhere: LayerNorm weights near 1, other weights and
    biases random, Converse2d kernels positive random and biases giving lam in about
    [5e-3, 0.1] (a well-conditioned solve), residual scales non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, LayerNorm2d):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g, dtype=torch.float64))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g, dtype=torch.float64))
            elif isinstance(m, Converse2d):
                kh, kw = m.kernel_size
                m.weight.copy_(softmax_kernel(g, 1, m.channels, kh, kw) + 0.05 * torch.rand(
                    m.weight.shape, generator=g, dtype=torch.float64))
                m.bias.copy_(5.0 + torch.randn(m.bias.shape, generator=g, dtype=torch.float64))
            elif isinstance(m, nn.Conv2d):
                m.weight.copy_(0.4 * torch.randn(m.weight.shape, generator=g, dtype=torch.float64))
                if m.bias is not None:
                    m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g, dtype=torch.float64))
        for name, p in module.named_parameters():
            if name.split(".")[-1] in ("alpha1", "alpha2"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g, dtype=torch.float64))
    return module


def plain_reference(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x) along the plain layer-by-layer path (autograd on: no fused code runs) on
    planar features (the channels-last route of the stacks is switched off meanwhile)."""
    saved = _nc.pixel_major_faster
    _nc.pixel_major_faster = lambda x, c, o: False
    try:
        with torch.enable_grad():
            return module(x.detach().contiguous().clone().requires_grad_()).detach()
    finally:
        _nc.pixel_major_faster = saved


def assert_layout_like(out: torch.Tensor, x: torch.Tensor) -> None:
    if is_cl(x):
        assert is_cl(out), f"channels-last in, strides {out.stride()} out"
    else:
        assert out.is_contiguous(), f"contiguous in, strides {out.stride()} out"


# --------------------------------------------------------------------------------------
# a. converse2d on channels-last input
# --------------------------------------------------------------------------------------
class TestConverse2dChannelsLast(BaseTester):
    def _inputs(self, c, kernel, seed=0):
        gen = torch.Generator().manual_seed(seed + 10 * c + kernel[0])
        y = torch.randn(2, c, 9, 11, generator=gen, dtype=torch.float64)
        k = softmax_kernel(gen, 1, c, *kernel)
        lam = torch.linspace(0.03, 0.2, c, dtype=torch.float64)
        return y, k, lam

    def test_numpy_fft_reference_matches_dense_solve(self):
        """The numpy FFT reference used below agrees with the dense solves of _reference."""
        y, k, lam = self._inputs(3, (2, 3))
        for mode in MODES:
            for x0 in ("interp", "zero"):
                ref = dense_converse(y.numpy(), k.numpy(), lam.reshape(1, -1).numpy(), 1, 2, mode, x0)
                got = np_converse(y.numpy(), k[0].numpy(), lam.numpy(), (2, 2, 2, 2), mode, x0)
                self.assert_close(got, ref, torch.float64)

    @pytest.mark.parametrize("x0", ["interp", "zero"])
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("c,kernel", [(3, (3, 3)), (4, (2, 3)), (5, (3, 3))])
    def test_float64_matches_dense_solve(self, monkeypatch, c, kernel, mode, x0):
        y, k, lam = self._inputs(c, kernel)
        calls = self.spy(monkeypatch, _channels_last, "solve")
        y_cl = channels_last(y)
        y_copy = y_cl.clone()
        with torch.no_grad():
            out = converse2d(y_cl, k, lam, 1, 2, mode, x0)
        assert len(calls) == 1  # the channels-last solve ran
        assert is_cl(out)
        assert torch.equal(y_cl, y_copy)
        ref = dense_converse(y.numpy(), k.numpy(), lam.reshape(1, -1).numpy(), 1, 2, mode, x0)
        self.assert_close(out, ref, torch.float64)

    @pytest.mark.parametrize("x0", ["interp", "zero"])
    @pytest.mark.parametrize("mode", MODES)
    def test_float32_within_single_precision(self, monkeypatch, mode, x0):
        y, k, lam = self._inputs(4, (3, 3), seed=1)
        calls = self.spy(monkeypatch, _channels_last, "solve")
        with torch.inference_mode():
            out = converse2d(channels_last(y.float()), k.float(), lam.float(), 1, 2, mode, x0)
        assert len(calls) == 1 and is_cl(out) and out.dtype == torch.float32
        ref = dense_converse(y.float().double().numpy(), k.float().double().numpy(),
                             lam.float().double().reshape(1, -1).numpy(), 1, 2, mode, x0)
        err = float(np.abs(out.double().numpy() - ref).max())
        assert err <= 1e-4 * float(np.abs(ref).max())

    def test_grad_enabled_without_grad_inputs_also_takes_it(self, monkeypatch):
        """Nothing requires grad: the no-autograd channels-last solve is allowed."""
        y, k, lam = self._inputs(3, (3, 3), seed=2)
        calls = self.spy(monkeypatch, _channels_last, "solve")
        out = converse2d(channels_last(y), k, lam, 1, 2, "reflect")
        assert len(calls) == 1 and is_cl(out) and not out.requires_grad
        ref = dense_converse(y.numpy(), k.numpy(), lam.reshape(1, -1).numpy(), 1, 2, "reflect")
        self.assert_close(out, ref, torch.float64)

    @pytest.mark.parametrize("case", ["per_sample_kernel", "per_sample_lam", "grad", "x0_tensor"])
    def test_other_calls_fall_back_with_channels_last_output(self, monkeypatch, case):
        """Calls the channels-last solve does not handle give the same (dense) result through
        the planar solver, still channels-last."""
        gen = torch.Generator().manual_seed(7)
        y = torch.randn(2, 3, 9, 11, generator=gen, dtype=torch.float64)
        k = softmax_kernel(gen, 2 if case == "per_sample_kernel" else 1, 3, 3, 3)
        lam = torch.tensor([[0.05, 0.1, 0.2], [0.08, 0.03, 0.15]], dtype=torch.float64)
        if case != "per_sample_lam":
            lam = lam[:1]
        x0 = "interp"
        if case == "x0_tensor":
            x0_np = torch.randn(2, 3, 9, 11, generator=gen, dtype=torch.float64).numpy()
            x0 = torch.from_numpy(x0_np)
        calls = self.spy(monkeypatch, _channels_last, "solve")
        y_cl = channels_last(y)
        if case == "grad":
            y_cl.requires_grad_()
            out = converse2d(y_cl, k, lam.reshape(1, 3, 1, 1), 1, 2, "replicate", x0)
            assert out.requires_grad
            out = out.detach()
        else:
            with torch.no_grad():
                out = converse2d(y_cl, k, lam.reshape(-1, 3, 1, 1), 1, 2, "replicate", x0)
        assert not calls and is_cl(out)
        ref = dense_converse(y.numpy(), k.numpy(), lam.numpy(), 1, 2, "replicate",
                             x0_np if case == "x0_tensor" else "interp")
        self.assert_close(out, ref, torch.float64)

    @pytest.mark.parametrize("dtype", BaseTester.DTYPES)
    @pytest.mark.parametrize("path", ["measured"] + list(CL_PATHS))
    def test_large_enough_to_take_the_measured_transforms(self, monkeypatch, path, dtype):
        """1x16x40x40 padded by 3: 46*46*16 elements > FFT_MIN_MEASURED, so the transforms are
        chosen by the policy (measured, or forced to one implementation), not tiny-"torch"."""
        gen = torch.Generator().manual_seed(8)
        c, pad = 16, 3
        y = torch.randn(1, c, 40, 40, generator=gen, dtype=torch.float64)
        k = softmax_kernel(gen, 1, c, 3, 3)
        lam = torch.linspace(0.02, 0.3, c, dtype=torch.float64)
        assert (40 + 2 * pad) ** 2 * c >= _tuning.FFT_MIN_MEASURED
        if path != "measured":
            if path not in _fft.available(y, 46):
                pytest.skip(f"FFT path {path!r} is not installed here")
        monkeypatch.delenv(_fft_policy.ENV, raising=False)
        monkeypatch.setattr(_tuning, "FFT_BUDGET_S", 0.0)  # one timed round
        # which implementations the solve itself called (not the timing runs)
        ran, timing = set(), []
        measure = _fft_policy._measure
        monkeypatch.setattr(_fft_policy, "_measure",
                            lambda *a: (timing.append(1), measure(*a), timing.pop())[1])
        for op, table in (("rfft2", _fft._RFFT2_CL), ("irfft2", _fft._IRFFT2_CL)):
            for name, fn in list(table.items()):
                monkeypatch.setitem(table, name, lambda *a, _f=fn, _k=(op, name): (
                    None if timing else ran.add(_k), _f(*a))[1])
        _fft_policy.clear()
        try:
            with _fft_policy.force(None if path == "measured" else path), torch.no_grad():
                out = converse2d(channels_last(y.to(dtype)), k.to(dtype), lam.to(dtype), 1, pad, "reflect")
            rows = {d["op"]: d for d in _fft_policy.decisions()}
        finally:
            _fft_policy.clear()
        if path == "measured":
            avail = {p for p in _fft.available(y, 46) if p in CL_PATHS}
            assert {"rfft2_cl", "irfft2_cl"} <= set(rows)
            for op in ("rfft2_cl", "irfft2_cl"):
                assert set(rows[op]["ms"]) == avail and rows[op]["path"] in avail
            used = {("rfft2", rows["rfft2_cl"]["path"]), ("irfft2", rows["irfft2_cl"]["path"])}
        else:
            assert not rows
            used = {("rfft2", path), ("irfft2", path)}
        assert ran == used
        assert is_cl(out) and out.dtype == dtype
        ref = np_converse(y.to(dtype).double().numpy(), k[0].to(dtype).double().numpy(),
                          lam.to(dtype).double().numpy(), (pad,) * 4, "reflect", "interp")
        self.assert_close(out, ref, dtype)


# --------------------------------------------------------------------------------------
# b. rfft2_cl / irfft2_cl
# --------------------------------------------------------------------------------------
# (N, H, W, C): below and above FFT_MIN_MEASURED, odd and even W
FFT_SHAPES = [(2, 5, 6, 3), (1, 7, 9, 4), (2, 24, 20, 12), (1, 30, 33, 10)]


def _cl_path_or_skip(t: torch.Tensor, h: int, path: str) -> None:
    if path not in _fft.available(t, h):
        pytest.skip(f"FFT path {path!r} is not available here (scipy / ducc0 not installed)")


class TestChannelsLastFFT(BaseTester):
    @pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
    @pytest.mark.parametrize("shape", FFT_SHAPES)
    @pytest.mark.parametrize("path", CL_PATHS + (None,))
    def test_match_numpy(self, path, shape, dtype, tol):
        gen = torch.Generator().manual_seed(sum(shape))
        x = torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)
        if path is not None:
            _cl_path_or_skip(x, shape[1], path)
        xn = x.double().numpy()
        ref = np.fft.rfft2(xn, axes=(1, 2))
        with torch.no_grad():
            spec = _fft.rfft2_cl(x, path=path)
        assert spec.shape == (shape[0], shape[1], shape[2] // 2 + 1, shape[3])
        assert spec.dtype == (torch.complex128 if dtype == torch.float64 else torch.complex64)
        scale = np.abs(ref).max()
        assert np.abs(spec.numpy().astype(np.complex128) - ref).max() <= tol * scale

        z = torch.from_numpy(ref).to(spec.dtype)
        z_copy = z.clone()
        with torch.no_grad():
            back = _fft.irfft2_cl(z, shape[1:3], path=path, overwrite=False)
        assert torch.equal(z, z_copy)  # overwrite=False: z untouched
        assert back.shape == shape and back.dtype == dtype
        ref_back = np.fft.irfft2(z.numpy().astype(np.complex128), s=shape[1:3], axes=(1, 2))
        assert np.abs(back.double().numpy() - ref_back).max() <= tol * np.abs(ref_back).max()

        with torch.no_grad():  # overwrite=True: the same values (z may be destroyed)
            back2 = _fft.irfft2_cl(z.clone(), shape[1:3], path=path, overwrite=True)
        assert np.abs(back2.double().numpy() - ref_back).max() <= tol * np.abs(ref_back).max()

    @pytest.mark.parametrize("shape", [FFT_SHAPES[0], FFT_SHAPES[2]])
    @pytest.mark.parametrize("path", [
        "torch", "scipy", "ducc"])
    def test_results_are_contiguous_as_documented(self, path, shape):
        x = torch.randn(*shape, dtype=torch.float64)
        _cl_path_or_skip(x, shape[1], path)
        with torch.no_grad():
            spec = _fft.rfft2_cl(x, path=path)
            back = _fft.irfft2_cl(spec.contiguous(), shape[1:3], path=path)
        assert spec.is_contiguous() and back.is_contiguous()

    @pytest.mark.parametrize("path", CL_PATHS)
    def test_out_buffers(self, path):
        """ducc0 writes into the given buffers and returns them; the others return new tensors;
        the values are the same either way; unfit buffers are refused."""
        shape = FFT_SHAPES[3]
        x = torch.randn(*shape, dtype=torch.float64)
        _cl_path_or_skip(x, shape[1], path)
        spec_out = torch.empty(shape[0], shape[1], shape[2] // 2 + 1, shape[3], dtype=torch.complex128)
        real_out = torch.empty(*shape, dtype=torch.float64)
        with torch.no_grad():
            spec = _fft.rfft2_cl(x, path=path, out=spec_out)
            back = _fft.irfft2_cl(spec.clone(), shape[1:3], path=path, overwrite=True, out=real_out)
        assert (spec is spec_out, back is real_out) == ((True, True) if path == "ducc" else (False, False))
        ref = np.fft.rfft2(x.numpy(), axes=(1, 2))
        assert np.abs(spec.numpy() - ref).max() <= 1e-12 * np.abs(ref).max()
        assert np.abs(back.numpy() - x.numpy()).max() <= 1e-12
        with pytest.raises(ValueError, match="out must be"):
            _fft.rfft2_cl(x, path=path, out=spec_out[..., :-1])
        with pytest.raises(ValueError, match="out must be"):
            _fft.irfft2_cl(spec, shape[1:3], path=path, out=real_out.float())

    def test_tiny_inputs_take_torch_without_measuring(self, monkeypatch):
        monkeypatch.delenv(_fft_policy.ENV, raising=False)
        measured = self.spy(monkeypatch, _fft_policy, "_measure")
        _fft_policy.clear()
        x = torch.randn(2, 5, 6, 3, dtype=torch.float64)
        assert x.numel() < _tuning.FFT_MIN_MEASURED
        with torch.no_grad():
            back = _fft.irfft2_cl(_fft.rfft2_cl(x), (5, 6))
        assert not measured and not _fft_policy.decisions()
        assert torch.allclose(back, x, atol=1e-12)

    def test_bad_arguments(self):
        x = torch.randn(1, 6, 8, 2, dtype=torch.float64)
        z = torch.randn(1, 6, 5, 2, dtype=torch.complex128)
        with pytest.raises(ValueError, match="rows"):
            _fft.irfft2_cl(z, (7, 8))
        with pytest.raises(ValueError, match="nope"):
            _fft.rfft2_cl(x, path="nope")
        with pytest.raises(ValueError, match="nope"):
            _fft.irfft2_cl(z, (6, 8), path="nope")
        with pytest.raises(ValueError):  # planar-only implementations do not apply here
            _fft.rfft2_cl(x, path="axes")


# --------------------------------------------------------------------------------------
# c. pad_cl
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("pads", [(1, 3, 2, 0), (0, 2, 3, 1), (4, 1, 0, 5), (0, 0, 2, 2), (2, 0, 0, 0)])
@pytest.mark.parametrize("mode", MODES)
def test_pad_cl_equals_f_pad_and_numpy(mode, pads):
    gen = torch.Generator().manual_seed(21)
    base = torch.randn(2, 7, 9, 5, generator=gen, dtype=torch.float64)
    y = base[..., 1:4]  # a channel group of a wider tensor, as the solve passes it
    assert not y.is_contiguous()
    y_copy = y.clone()
    out = _channels_last.pad_cl(y, pads, mode)
    assert out.is_contiguous()
    left, right, top, bottom = pads
    assert out.shape == (2, 7 + top + bottom, 9 + left + right, 3)
    ref_torch = F.pad(y.permute(0, 3, 1, 2), pads, mode=mode).permute(0, 2, 3, 1)
    assert torch.equal(out, ref_torch)
    ref_np = np_pad(y.permute(0, 3, 1, 2).numpy(), pads, mode).transpose(0, 2, 3, 1)
    assert np.array_equal(out.numpy(), ref_np)
    assert torch.equal(y, y_copy)


def test_pad_cl_into_out_and_bad_out():
    y = torch.randn(2, 5, 6, 3, dtype=torch.float64)
    out = torch.full((2, 8, 7, 3), float("nan"), dtype=torch.float64)
    got = _channels_last.pad_cl(y, (1, 0, 2, 1), "reflect", out=out)
    assert got is out
    assert torch.equal(out, F.pad(y.permute(0, 3, 1, 2), (1, 0, 2, 1), mode="reflect").permute(0, 2, 3, 1))
    for bad in (torch.empty(2, 8, 7, 4, dtype=torch.float64), torch.empty(2, 8, 7, 3),
                torch.empty(2, 3, 7, 8, dtype=torch.float64).permute(0, 2, 3, 1)):
        with pytest.raises(ValueError, match="out must be"):
            _channels_last.pad_cl(y, (1, 0, 2, 1), "reflect", out=bad)


def _np_pad_adjoint(gp: np.ndarray, pads, mode: str, h: int, w: int) -> np.ndarray:
    """Naive adjoint of padding: each padded position's value added to the input position
    it copies, found by padding one-hot images with numpy (N, H', W', C) -> (N, H, W, C)."""
    left, right, top, bottom = pads
    out = np.zeros((gp.shape[0], h, w, gp.shape[3]))
    for i in range(h):
        for j in range(w):
            onehot = np.zeros((h, w))
            onehot[i, j] = 1.0
            padded = np_pad(onehot[None, None], pads, mode)[0, 0]   # (H', W'): where (i, j) lands
            out[:, i, j] = np.einsum("pq,npqc->nc", padded, gp)
    return out


@pytest.mark.parametrize("pads", [(1, 3, 2, 0), (0, 2, 3, 1), (4, 1, 0, 5), (2, 2, 2, 2), (5, 5, 6, 6)])
@pytest.mark.parametrize("mode", MODES)
def test_pad_adjoint_cl_is_the_adjoint_of_pad_cl(mode, pads):
    """Against a naive one-hot reference and against autograd through F.pad; pads up to the
    whole size (7 x 6 image, 6 rows: reflect needs padding < size, so it skips that case)."""
    h, w = 7, 6
    if mode == "reflect" and (max(pads[2:]) >= h or max(pads[:2]) >= w):
        pytest.skip("reflect padding must be smaller than the size")
    gen = torch.Generator().manual_seed(22)
    left, right, top, bottom = pads
    gp = torch.randn(2, h + top + bottom, w + left + right, 3, generator=gen, dtype=torch.float64)
    ref = _np_pad_adjoint(gp.numpy(), pads, mode, h, w)
    y = torch.randn(2, 3, h, w, dtype=torch.float64, requires_grad=True)
    F.pad(y, pads, mode=mode).backward(gp.permute(0, 3, 1, 2))
    got = _channels_last.pad_adjoint_cl(gp.clone(), pads, mode)
    assert got.shape == (2, h, w, 3) and got.is_contiguous()
    np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.numpy(), y.grad.permute(0, 2, 3, 1).numpy(), rtol=0, atol=1e-12)
    out = torch.empty(2, h, w, 3, dtype=torch.float64)
    assert _channels_last.pad_adjoint_cl(gp.clone(), pads, mode, out=out) is out
    assert torch.equal(out, got)


# --------------------------------------------------------------------------------------
# d. filter_cl
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("x0", ["interp", "zero"])
@pytest.mark.parametrize("kernel,size", [((3, 3), (13, 15)), ((2, 3), (12, 10)), ((4, 5), (9, 8)), ((1, 1), (5, 7))])
def test_filter_cl_matches_numpy_filter(kernel, size, x0):
    gen = torch.Generator().manual_seed(31)
    c = 5
    k = torch.randn(1, c, *kernel, generator=gen, dtype=torch.float64)
    lam = torch.rand(1, c, 1, 1, generator=gen, dtype=torch.float64) * 0.2 + 0.01
    g = _channels_last.filter_cl(k, lam, size, x0)
    assert g.shape == (size[0], size[1] // 2 + 1, c) and g.dtype == torch.complex128
    ref = np_filter(k[0].numpy(), lam.reshape(c).numpy(), size, x0).transpose(1, 2, 0)
    BaseTester.assert_close(g.real, ref.real, torch.float64)
    BaseTester.assert_close(g.imag, ref.imag, torch.float64)
    g32 = _channels_last.filter_cl(k.float(), lam.float(), size, x0)
    assert g32.dtype == torch.complex64
    assert np.abs(g32.numpy().astype(np.complex128) - ref).max() <= 1e-5 * np.abs(ref).max()


# --------------------------------------------------------------------------------------
# e. solve: given filter, out=, channel groups, asymmetric pads
# --------------------------------------------------------------------------------------
class TestSolve(BaseTester):
    C = 5

    def _inputs(self, seed=41):
        gen = torch.Generator().manual_seed(seed)
        y = torch.randn(2, self.C, 8, 11, generator=gen, dtype=torch.float64)
        k = softmax_kernel(gen, 1, self.C, 3, 2)
        lam = (torch.rand(1, self.C, 1, 1, generator=gen, dtype=torch.float64) * 0.2 + 0.02)
        return y, k, lam

    @pytest.mark.parametrize("given_filter", [False, True])
    @pytest.mark.parametrize("group", [1, 2, C, None])
    @pytest.mark.parametrize("mode,pads,x0", [("reflect", (1, 3, 2, 0), "interp"), ("circular", (2, 2, 1, 3), "zero"),
                                              ("replicate", (0, 4, 3, 1), "interp"),
                                              ("constant", (3, 1, 0, 2), "zero")])
    def test_matches_numpy_reference(self, mode, pads, x0, group, given_filter):
        y, k, lam = self._inputs()
        left, right, top, bottom = pads
        size = (8 + top + bottom, 11 + left + right)
        ref = np_converse(y.numpy(), k[0].numpy(), lam.reshape(-1).numpy(), pads, mode, x0)
        filt = None
        if given_filter:  # planar (1, C, M, N//2+1), built by numpy
            filt = torch.from_numpy(np_filter(k[0].numpy(), lam.reshape(-1).numpy(), size, x0))[None]
            # garbage kernel and lam: a given filter must be the one used
            k, lam = torch.full_like(k, float("nan")), torch.full_like(lam, float("nan"))
        y_cl = channels_last(y)
        out = torch.full_like(y_cl, float("nan"), memory_format=CL)
        got = _channels_last.solve(y_cl, k, lam, pads, mode, x0, filt=filt, out=out, group=group)
        assert got.data_ptr() == out.data_ptr() and got is out
        assert is_cl(out)
        self.assert_close(out, ref, torch.float64)

    def test_without_out_and_with_unfit_out(self):
        y, k, lam = self._inputs(seed=42)
        ref = np_converse(y.numpy(), k[0].numpy(), lam.reshape(-1).numpy(), (2, 2, 2, 2), "reflect", "interp")
        y_cl = channels_last(y)
        got = _channels_last.solve(y_cl, k, lam, (2, 2, 2, 2), "reflect", "interp")
        assert is_cl(got)
        self.assert_close(got, ref, torch.float64)
        for bad in (torch.full_like(y_cl, float("nan")).contiguous(),           # planar
                    torch.full_like(y_cl, float("nan"), dtype=torch.float32),  # dtype
                    torch.full((2, self.C, 8, 10), float("nan"), dtype=torch.float64).contiguous(memory_format=CL)):
            got = _channels_last.solve(y_cl, k, lam, (2, 2, 2, 2), "reflect", "interp", out=bad)
            assert got is not bad and bool(bad.isnan().all()) and is_cl(got)
            self.assert_close(got, ref, torch.float64)

    def test_applies_rule(self):
        y, k, lam = self._inputs()
        y_cl = channels_last(y)
        ok = _channels_last.applies
        with torch.no_grad():
            assert ok(y_cl, k, lam, 1, "interp") and ok(y_cl, k, lam, 1, "zero")
            assert not ok(y, k, lam, 1, "interp")                     # planar
            assert not ok(y_cl, k, lam, 2, "interp")                  # s > 1
            assert not ok(y_cl, k.expand(2, -1, -1, -1), lam, 1, "interp")
            assert not ok(y_cl, k, lam.expand(2, -1, -1, -1), 1, "interp")
            assert not ok(y_cl, k, lam, 1, torch.zeros(1))            # x0 tensor
            assert not ok(y_cl[:, :1].contiguous(memory_format=CL), k[:, :1], lam[:, :1], 1, "interp")  # C = 1
        assert not ok(y_cl.clone().requires_grad_(), k, lam, 1, "interp")
        assert ok(y_cl, k, lam, 1, "interp")


# --------------------------------------------------------------------------------------
# f. the fused ConverseBlock with pixel-major hidden features
# --------------------------------------------------------------------------------------
def _block(residual_scale: bool, seed: int = 51, train: bool = True) -> ConverseBlock:
    block = perturb(ConverseBlock(4, kernel_size=3, residual_scale=residual_scale).double(), seed)
    return block.train(train)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("residual_scale", [False, True])
@pytest.mark.parametrize("pm", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_block_fused_paths_match_plain_path(monkeypatch, layout, pm, residual_scale, train):
    block = _block(residual_scale, train=train)
    monkeypatch.setattr(_nc, "pixel_major_faster", lambda x, c, o: pm)
    solves = BaseTester.spy(monkeypatch, _channels_last, "solve")
    x = sample((2, 4, 9, 11), 52, layout)
    x_copy = x.clone()
    ref = plain_reference(block, x)
    assert not solves  # the autograd path solves planar
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            assert block.fused_applies(x) and block.pixel_major(x) is pm
            out = block(x)
        assert_layout_like(out, x)
        assert torch.equal(x, x_copy)
        BaseTester.assert_close(out, ref, torch.float64)
    assert len(solves) == (2 if pm else 0)  # pixel-major hidden features: solved channels-last


def test_block_fused_path_through_the_workspace_at_changing_sizes(monkeypatch):
    """Every temporary through the workspace (one flat buffer per name, views of it): a
    large call, then smaller and other-shaped ones, each still right; earlier outputs
    untouched; no buffer reallocated by the smaller calls."""
    monkeypatch.setattr(_tuning, "WORKSPACE_MIN_ELEMS", 1)
    monkeypatch.setattr(_nc, "pixel_major_faster", lambda x, c, o: True)
    _ws.clear_workspace()
    try:
        block = _block(True, seed=53, train=False)
        gen = torch.Generator().manual_seed(54)
        xs = [torch.randn(2, 4, 12, 10, generator=gen, dtype=torch.float64),
              channels_last(torch.randn(1, 4, 5, 7, generator=gen, dtype=torch.float64)),
              torch.randn(1, 4, 9, 6, generator=gen, dtype=torch.float64),
              channels_last(torch.randn(2, 4, 7, 11, generator=gen, dtype=torch.float64))]
        refs = [plain_reference(block, x) for x in xs]
        outs, ptrs = [], None
        for x in xs:
            with torch.no_grad():
                outs.append(block(x))
            assert_layout_like(outs[-1], x)
            if ptrs is None:
                ptrs = {name: b.data_ptr() for name, b in _ws._WORKSPACE.bufs.items()}
                assert {"hidden", "work", "residual", "spatial"} <= set(ptrs)
        assert {name: b.data_ptr() for name, b in _ws._WORKSPACE.bufs.items()} == ptrs
        for out, ref in zip(outs, refs):
            BaseTester.assert_close(out, ref, torch.float64)
    finally:
        _ws.clear_workspace()


# --------------------------------------------------------------------------------------
# g. layer_norm_pointwise
# --------------------------------------------------------------------------------------
def _norm_conv(c=6, o=11, seed=61, eps=1e-3):
    norm = perturb(LayerNorm2d(c, eps=eps).double(), seed)
    conv = perturb(nn.Conv2d(c, o, 1).double(), seed + 1)
    return norm, conv


def _np_ln_pointwise(x, norm, conv):
    ln = layernorm2d(x.detach().numpy(), norm.weight.detach().numpy(), norm.bias.detach().numpy(), norm.eps)
    w = conv.weight.detach().numpy()[:, :, 0, 0]
    return np.einsum("oc,nchw->nohw", w, ln) + conv.bias.detach().numpy()[None, :, None, None]


@pytest.mark.parametrize("buffers", [False, True])
@pytest.mark.parametrize("cl_out", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_layer_norm_pointwise_layouts(layout, cl_out, buffers):
    norm, conv = _norm_conv()
    gen = torch.Generator().manual_seed(62)
    # a large common offset: a one-pass variance would lose digits
    x = torch.randn(2, 6, 5, 7, generator=gen, dtype=torch.float64) * 0.1 + 1e3
    if layout == "channels_last":
        x = channels_last(x)
    x_copy = x.clone()
    ref = _np_ln_pointwise(x, norm, conv)
    n, hw, o = 2, 35, 11
    out = work = None
    if buffers:
        out = torch.full((n, hw, o) if cl_out else (n, o, hw), float("nan"), dtype=torch.float64)
        work = torch.full((n, 6, hw), float("nan"), dtype=torch.float64)
    with torch.no_grad():
        y = _nc.layer_norm_pointwise(x, norm, conv, out=out, work=work, channels_last=cl_out)
    assert y.shape == (2, o, 5, 7)
    assert is_cl(y) if cl_out else y.is_contiguous()
    assert torch.equal(x, x_copy)
    BaseTester.assert_close(y, ref, torch.float64)
    if buffers:  # the result lives in out, in the documented order
        assert y.data_ptr() == out.data_ptr()
        written = out.view(n, 5, 7, o).permute(0, 3, 1, 2) if cl_out else out.view(n, o, 5, 7)
        BaseTester.assert_close(written, ref, torch.float64)


@pytest.mark.parametrize("cl_out", [False, True])
def test_layer_norm_pointwise_falls_back_for_other_convs(cl_out):
    """A 3x3 conv: conv(norm(x)), in the requested layout (checked against numpy)."""
    norm = perturb(LayerNorm2d(3, eps=1e-5).double(), 63)
    conv = perturb(nn.Conv2d(3, 2, 3, padding=1, bias=False).double(), 64)
    x = channels_last(torch.randn(1, 3, 5, 6, dtype=torch.float64))
    with torch.no_grad():
        y = _nc.layer_norm_pointwise(x, norm, conv, channels_last=cl_out)
    assert is_cl(y) if cl_out else y.is_contiguous()
    ln = np.pad(layernorm2d(x.numpy(), norm.weight.detach().numpy(), norm.bias.detach().numpy(), 1e-5),
                ((0, 0), (0, 0), (1, 1), (1, 1)))
    w = conv.weight.detach().numpy()
    ref = np.zeros((1, 2, 5, 6))
    for a in range(3):
        for b in range(3):
            ref += np.einsum("oc,nchw->nohw", w[:, :, a, b], ln[:, :, a : a + 5, b : b + 6])
    BaseTester.assert_close(y, ref, torch.float64)


# --------------------------------------------------------------------------------------
# h. ConverseStack
# --------------------------------------------------------------------------------------
def _spy_layouts(monkeypatch, owner, name: str):
    """Records, for each call of ``owner.name(a, x)``, whether x is channels-last."""
    seen = []
    original = getattr(owner, name)

    def wrapper(a, x):
        seen.append(is_cl(x))
        return original(a, x)

    monkeypatch.setattr(owner, name, wrapper)
    return seen


def _spy_block_layouts(monkeypatch):
    return _spy_layouts(monkeypatch, ConverseBlock, "forward")


def _stack(spatial="converse", num_blocks=2, residual_scale=True, seed=71):
    s = block_stack(num_blocks, 6, 3, 2, "reflect", 1e-5, "interp", "gaussian_softmax",
                    spatial=spatial, residual_scale=residual_scale)
    assert type(s) is ConverseStack
    return perturb(s.double(), seed)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_stack_runs_channels_last_when_pixel_major(monkeypatch, layout):
    monkeypatch.setattr(_nc, "pixel_major_faster", lambda x, c, o: True)
    stack = _stack()
    x = sample((2, 6, 9, 10), 72, layout)
    x_copy = x.clone()
    ref = plain_reference(stack, x)
    seen = _spy_block_layouts(monkeypatch)
    with torch.no_grad():
        out = stack(x)
    assert seen == [True, True]  # every block was given channels-last features
    assert_layout_like(out, x)
    assert torch.equal(x, x_copy)
    BaseTester.assert_close(out, ref, torch.float64)


def test_stack_output_layout_for_other_strides_matches_a_block(monkeypatch):
    monkeypatch.setattr(_nc, "pixel_major_faster", lambda x, c, o: True)
    stack = _stack()
    x = BaseTester.noncontiguous(torch.randn(2, 6, 9, 10, generator=torch.Generator().manual_seed(76),
                                             dtype=torch.float64))
    assert not x.is_contiguous(memory_format=CL)
    ref = plain_reference(stack, x)
    with torch.no_grad():
        one = stack[0](x)
        out = stack(x)
    BaseTester.assert_close(out, ref, torch.float64)  # the values are right
    assert one.is_contiguous()
    assert out.is_contiguous()


@pytest.mark.parametrize("case", ["conv", "convt", "planar_faster", "one_block"])
def test_stack_stays_planar_otherwise(monkeypatch, case):
    monkeypatch.setattr(_nc, "pixel_major_faster", lambda x, c, o: case != "planar_faster")
    spatial = case if case in ("conv", "convt") else "converse"
    stack = _stack(spatial=spatial, num_blocks=1 if case == "one_block" else 2)
    gen = torch.Generator().manual_seed(73)
    x = torch.randn(2, 6, 9, 10, generator=gen, dtype=torch.float64)
    ref = plain_reference(stack, x)
    seen = _spy_block_layouts(monkeypatch)
    with torch.no_grad():
        out = stack(x)
    assert seen == [False] * len(stack)
    assert out.is_contiguous()
    BaseTester.assert_close(out, ref, torch.float64)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_converse_dncnn_through_the_channels_last_stack(monkeypatch, layout):
    monkeypatch.setattr(_nc, "pixel_major_faster", lambda x, c, o: True)
    net = perturb(models.create("converse_dncnn", in_channels=2, width=8, num_blocks=2, kernel_size=3,
                                padding=2, padding_mode="replicate").double().eval(), 74)
    assert type(net.m_body) is ConverseStack
    x = sample((1, 2, 10, 9), 75, layout)
    ref = plain_reference(net, x)
    pays = BaseTester.spy(monkeypatch, ConverseStack, "_channels_last_pays")
    seen = _spy_block_layouts(monkeypatch)
    with torch.no_grad():
        out = net(x)
    assert pays and seen == [True, True]
    BaseTester.assert_close(out, ref, torch.float64)


# --------------------------------------------------------------------------------------
# i. pointwise and gelu_fresh
# --------------------------------------------------------------------------------------
def _count_forward(module: nn.Module):
    """Records that forward ran (installed as an instance attribute: not a hook)."""
    calls = []
    original = module.forward

    def forward(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    module.forward = forward
    return calls


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_matches_numpy(bias, layout):
    conv = perturb(nn.Conv2d(5, 3, 1, bias=bias).double(), 81)
    x = sample((2, 5, 6, 7), 82, layout)
    x_copy = x.clone()
    ref = np.einsum("oc,nchw->nohw", conv.weight.detach().numpy()[:, :, 0, 0], x.numpy())
    if bias:
        ref = ref + conv.bias.detach().numpy()[None, :, None, None]
    calls = _count_forward(conv)
    with torch.no_grad():
        y = pointwise(conv, x)
    assert not calls  # the matrix product, not the module
    assert y.shape == (2, 3, 6, 7) and torch.equal(x, x_copy)
    BaseTester.assert_close(y, ref, torch.float64)
    y = pointwise(conv, x)  # autograd on: the module itself
    assert calls and y.requires_grad
    BaseTester.assert_close(y.detach(), ref, torch.float64)


def test_pointwise_falls_back_for_hooks_and_other_convs():
    conv = perturb(nn.Conv2d(4, 2, 1).double(), 83)
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    ref = np.einsum("oc,nchw->nohw", conv.weight.detach().numpy()[:, :, 0, 0], x.numpy()) \
        + conv.bias.detach().numpy()[None, :, None, None]
    fired = []
    handle = conv.register_forward_hook(lambda m, i, o: fired.append(o))
    try:
        with torch.no_grad():
            y = pointwise(conv, x)
    finally:
        handle.remove()
    assert len(fired) == 1 and fired[0] is y
    BaseTester.assert_close(y, ref, torch.float64)
    for other in (nn.Conv2d(4, 2, 3, padding=1).double(), nn.Conv2d(4, 4, 1, groups=2).double(),
                  nn.Conv2d(4, 2, 1, stride=2).double()):
        calls = _count_forward(other)
        with torch.no_grad():
            y = pointwise(other, x)
        assert calls and y.shape[1] == other.out_channels


def test_gelu_fresh_in_place_without_autograd():
    act, producer = nn.GELU(), nn.Conv2d(3, 3, 1)
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(84), dtype=torch.float64)
    ref = np_gelu(x.numpy())
    for layout in ("contiguous", "channels_last"):
        t = channels_last(x.clone()) if layout == "channels_last" else x.clone()
        with torch.no_grad():
            y = gelu_fresh(act, t, producer)
        assert y.data_ptr() == t.data_ptr()  # in place
        BaseTester.assert_close(y, ref, torch.float64)
        BaseTester.assert_close(t, ref, torch.float64)
    # autograd on: a fresh result, x untouched
    t = x.clone()
    y = gelu_fresh(act, t, producer)
    assert y.data_ptr() != t.data_ptr() and torch.equal(t, x)
    BaseTester.assert_close(y, ref, torch.float64)


@pytest.mark.parametrize("where", ["act", "producer", "global", "tanh"])
def test_gelu_fresh_falls_back(where):
    act, producer = nn.GELU(approximate="tanh" if where == "tanh" else "none"), nn.Conv2d(3, 3, 1)
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(85), dtype=torch.float64)
    fired = []
    hook = lambda m, i, o: fired.append(m)  # noqa: E731
    if where == "act":
        handle = act.register_forward_hook(hook)
    elif where == "producer":
        handle = producer.register_forward_hook(hook)
    elif where == "global":
        handle = nn.modules.module.register_module_forward_hook(hook)
    else:
        handle = None
    calls = _count_forward(act)
    t = x.clone()
    try:
        with torch.no_grad():
            y = gelu_fresh(act, t, producer)
    finally:
        if handle is not None:
            handle.remove()
    assert calls  # the module ran
    assert y.data_ptr() != t.data_ptr() and torch.equal(t, x)  # not in place
    if where in ("act", "global"):
        assert fired == [act]
    xn = x.numpy()
    if where == "tanh":
        ref = 0.5 * xn * (1 + np.tanh(math.sqrt(2 / math.pi) * (xn + 0.044715 * xn ** 3)))
    else:
        ref = np_gelu(xn)
    BaseTester.assert_close(y, ref, torch.float64)


# --------------------------------------------------------------------------------------
# j. the workspace
# --------------------------------------------------------------------------------------
def test_workspace_views_of_one_flat_buffer(monkeypatch):
    monkeypatch.setattr(_tuning, "WORKSPACE_MIN_ELEMS", 1)
    _ws.clear_workspace()
    try:
        like = torch.zeros(1, dtype=torch.float64)
        big = _ws.buffer("t", (4, 5, 6), like)
        assert big.shape == (4, 5, 6) and big.dtype == torch.float64 and big.is_contiguous()
        flat = _ws._WORKSPACE.bufs["t"]
        assert flat.numel() == 120
        small = _ws.buffer("t", (3, 7), like)  # smaller: a view, no reallocation
        assert small.shape == (3, 7) and small.is_contiguous()
        assert small.data_ptr() == big.data_ptr() and _ws._WORKSPACE.bufs["t"] is flat
        other = _ws.buffer("u", (2, 2), like)  # another name: its own buffer
        assert set(_ws._WORKSPACE.bufs) == {"t", "u"} and other.data_ptr() != big.data_ptr()
        larger = _ws.buffer("t", (11, 13), like)  # larger: reallocated (big is still alive)
        assert larger.shape == (11, 13) and _ws._WORKSPACE.bufs["t"].numel() == 143
        assert larger.data_ptr() != big.data_ptr()
        again = _ws.buffer("t", (5, 6), like)
        assert again.data_ptr() == larger.data_ptr()
        single = _ws.buffer("t", (2, 3), like.float())  # another dtype: reallocated
        assert single.dtype == torch.float32 and _ws._WORKSPACE.bufs["t"].dtype == torch.float32
        assert single.data_ptr() != larger.data_ptr()
        assert len(_ws._WORKSPACE) >= 2
        _ws.clear_workspace()
        assert not _ws._WORKSPACE.bufs
    finally:
        _ws.clear_workspace()


def test_workspace_threshold_keeps_small_tensors_out(monkeypatch):
    monkeypatch.setattr(_tuning, "WORKSPACE_MIN_ELEMS", 100)
    _ws.clear_workspace()
    try:
        like = torch.zeros(1)
        a = _ws.buffer("t", (3, 3), like)
        b = _ws.buffer("t", (3, 3), like)
        assert not _ws._WORKSPACE.bufs and a.data_ptr() != b.data_ptr()
        _ws.buffer("t", (10, 10), like)
        assert set(_ws._WORKSPACE.bufs) == {"t"}
    finally:
        _ws.clear_workspace()


# --------------------------------------------------------------------------------------
# k. the "mm1x1" policy decision
# --------------------------------------------------------------------------------------
@pytest.fixture
def measuring(monkeypatch):
    """No forced FFT path (conftest pins "torch"), one timed round, a clean decision table."""
    monkeypatch.delenv(_fft_policy.ENV, raising=False)
    monkeypatch.setattr(_tuning, "FFT_BUDGET_S", 0.0)
    _fft_policy.clear()
    yield
    _fft_policy.clear()


@pytest.mark.usefixtures("measuring")
def test_pixel_major_faster_small_and_forced_are_planar_unmeasured(monkeypatch):
    measured = BaseTester.spy(monkeypatch, _fft_policy, "_measure")
    small = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    assert 64 * 8 < _tuning.FFT_MIN_MEASURED
    assert _nc.pixel_major_faster(small, 4, 8) is False
    big = torch.randn(1, 4, 32, 32, dtype=torch.float64)
    with _fft_policy.force("torch"):  # a forced FFT path: planar, nothing measured
        assert _nc.pixel_major_faster(big, 4, 8) is False
    assert not measured and not _fft_policy.decisions()


@pytest.mark.usefixtures("measuring")
def test_pixel_major_faster_measures_once_and_records(monkeypatch):
    measured = BaseTester.spy(monkeypatch, _fft_policy, "_measure")
    x = torch.randn(1, 4, 32, 32, dtype=torch.float64)
    assert 32 * 32 * 8 >= _tuning.FFT_MIN_MEASURED
    got = _nc.pixel_major_faster(x, 4, 8)
    assert isinstance(got, bool) and len(measured) == 1
    rows = _fft_policy.decisions()
    assert len(rows) == 1
    (d,) = rows
    assert d["op"] == "mm1x1" and d["size"] == "4x8" and d["dtype"] == "float64" and d["autograd"] is False
    assert d["path"] in _fft_policy.LAYOUTS and set(d["ms"]) == set(_fft_policy.LAYOUTS)
    assert got == (d["path"] == "pixel")
    assert _nc.pixel_major_faster(x, 4, 8) is got and len(measured) == 1  # remembered
    block = ConverseBlock(4, kernel_size=3).double()  # a block reads the same decision
    assert block.pixel_major(x) is got and len(measured) == 1
    assert "mm1x1" in _fft_policy.format_decisions()


@pytest.mark.usefixtures("measuring")
def test_snapshot_adopt_keeps_layout_decisions_and_rejects_bogus():
    x = torch.randn(1, 4, 32, 32, dtype=torch.float64)
    got = _nc.pixel_major_faster(x, 4, 8)
    snap = _fft_policy.snapshot()
    (key,) = snap
    assert _fft_policy._valid(key, snap[key])
    _fft_policy.clear()
    assert not _fft_policy.decisions()
    bogus_key = key.replace("4x8", "5x9")
    _fft_policy.adopt({**snap, bogus_key: {"path": "bogus", "ms": {"bogus": 1.0}}})
    assert not _fft_policy._valid(bogus_key, {"path": "bogus", "ms": {}})
    assert _fft_policy.snapshot() == snap  # the layout entry kept, the bogus one ignored
    assert _nc.pixel_major_faster(x, 4, 8) is got


def test_layout_names_are_distinct_from_fft_paths():
    assert set(_fft_policy.LAYOUTS) == {"planar", "pixel"}
    assert not set(_fft_policy.LAYOUTS) & set(_fft_policy.PATHS)


# --------------------------------------------------------------------------------------
# training on channels-last features: the stack's route with autograd, Converse2d's
# channels-last autograd function (_ConverseS1CL), LayerNorm2d keeping the layout
# --------------------------------------------------------------------------------------
def _grads(module: nn.Module, x: torch.Tensor, weight: torch.Tensor):
    module.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_()
    out = module(xi)
    (out * weight).sum().backward()
    return out.detach(), xi.grad, [p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("route", ["plain", "checkpoint", "fused"])
@pytest.mark.parametrize("residual_scale", [False, True])
def test_stack_training_route_matches_the_planar_gradients(monkeypatch, route, residual_scale):
    """The stack's training routes on channels-last features, against planar features with
    every activation kept (a plain Sequential): "plain" (recompute off: the modules one by
    one), "checkpoint" (recompute through torch.utils.checkpoint) and "fused" (the
    pointwise pieces of conversenet.nn._block_train)."""
    from conversenet.models import _common
    from conversenet.nn import _block_train

    stack = _stack(residual_scale=residual_scale)
    if residual_scale:  # non-zero scales, so that both branches count
        with torch.no_grad():
            for blk in stack:
                blk.alpha1.copy_(sample((1, 6, 1, 1), 93))
                blk.alpha2.copy_(sample((1, 6, 1, 1), 94))
    x = sample((2, 6, 9, 10), 91)
    weight = sample((2, 6, 9, 10), 92)
    monkeypatch.setattr(_nc, "pixel_major_faster", lambda x, c, o: False)
    stack.recompute = False
    seen = _spy_block_layouts(monkeypatch)
    ref_out, ref_gx, ref_gp = _grads(stack, x, weight)
    assert seen == [False, False]
    monkeypatch.setattr(_nc, "pixel_major_faster", lambda x, c, o: True)
    stack.recompute = route != "plain"
    if route == "checkpoint":
        monkeypatch.setattr(_block_train, "applies", lambda block, x: False)
    pads = BaseTester.spy(monkeypatch, _channels_last, "pad_cl")
    recomputed = _spy_layouts(monkeypatch, _common, "_block_recomputed")
    fused = _spy_layouts(monkeypatch, _block_train, "forward")
    branches = BaseTester.spy(monkeypatch, _block_train._Branch1, "apply")
    seen.clear()
    out, gx, gp = _grads(stack, x, weight)
    # every block trained on channels-last features, by the route asked for
    assert {"plain": seen, "checkpoint": recomputed, "fused": fused}[route] == [True, True]
    assert len(seen) + len(recomputed) + len(fused) == 2
    assert len(branches) == (2 if route == "fused" else 0)  # B1 as one piece around the Converse2d
    # each Converse2d padded channels-last: forward; backward the adjoint of its crop and
    # its input again (the spectrum is recomputed, not kept)
    assert len(pads) == 6 and out.is_contiguous()
    BaseTester.assert_close(out, ref_out, torch.float64)
    BaseTester.assert_close(gx, ref_gx, torch.float64)
    assert len(gp) == len(ref_gp) > 10
    for a, b in zip(gp, ref_gp):
        BaseTester.assert_close(a, b, torch.float64)


@pytest.mark.parametrize("operator", ["converse", "swapped"])
def test_stack_fused_route_second_order_gradients(monkeypatch, operator):
    """A gradient penalty (create_graph=True) through the fused pieces equals the same through
    the plain modules; "swapped": B1's operator is another module (the _Head/_Tail pieces)."""
    from conversenet.nn import _block_train

    stack = _stack()
    if operator == "swapped":
        for blk in stack:
            blk.conv1[3] = nn.Identity()
    monkeypatch.setattr(_nc, "pixel_major_faster", lambda x, c, o: True)
    x0 = sample((1, 6, 7, 8), 106)
    results = {}
    for route in ("plain", "fused"):
        stack.recompute = route == "fused"
        used = BaseTester.spy(monkeypatch, _block_train, "forward")
        stack.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_()
        (gx,) = torch.autograd.grad((stack(x) ** 2).sum(), x, create_graph=True)
        (gx.square().sum() + gx.sum()).backward()
        assert len(used) == (2 if route == "fused" else 0)
        results[route] = [p.grad.clone() for p in stack.parameters()] + [gx.detach()]
    for a, b in zip(results["fused"], results["plain"]):
        BaseTester.assert_close(a, b, torch.float64)


def _saved_bytes(stack: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps for backward after stack(x)."""
    kept = {}

    def pack(t):
        kept[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = stack(x.clone().requires_grad_())
    out.sum().backward()
    return sum(kept.values())


@pytest.mark.parametrize("pm", [False, True])
def test_stack_recompute_keeps_fewer_activations(monkeypatch, pm):
    monkeypatch.setattr(_nc, "pixel_major_faster", lambda x, c, o: pm)
    stack = _stack()
    x = sample((2, 6, 16, 16), 98)
    stack.recompute = False
    full = _saved_bytes(stack, x)
    stack.recompute = True
    lean = _saved_bytes(stack, x)
    # per block the GELU->1x1 tail input and the pointwise branch's input are kept instead
    # of five activations (of 6 or 12 channels)
    assert lean < 0.8 * full, (lean, full)
    # and with a hook on a block, every activation is kept (the hook sees the plain forward)
    stack[0].register_forward_hook(lambda m, i, o: None)
    assert _saved_bytes(stack, x) == full


@pytest.mark.parametrize("mode", ["circular", "reflect", "replicate", "constant"])
@pytest.mark.parametrize("x0", ["interp", "zero"])
def test_converse2d_channels_last_gradcheck(monkeypatch, mode, x0):
    """Gradients of x, the kernel and lam through the channels-last autograd function
    against finite differences (float64); values against the dense solve."""
    pads = BaseTester.spy(monkeypatch, _channels_last, "pad_cl")
    x = sample((2, 3, 6, 7), 93, "channels_last").requires_grad_()
    k = softmax_kernel(torch.Generator().manual_seed(94), 1, 3, 3, 3).requires_grad_()
    lam = (torch.rand(1, 3, 1, 1, generator=torch.Generator().manual_seed(95), dtype=torch.float64) * 0.1
           + 0.01).requires_grad_()
    out = converse2d(x, k, lam, 1, 2, mode, x0)
    assert is_cl(out) and pads
    ref = dense_converse(x.detach().numpy(), k.detach().numpy(), lam.detach().numpy().reshape(1, 3), 1, 2, mode, x0)
    BaseTester.assert_close(out.detach(), ref, torch.float64)
    assert torch.autograd.gradcheck(lambda a, b, c: converse2d(a, b, c, 1, 2, mode, x0), (x, k, lam))


def test_converse2d_channels_last_autograd_through_the_workspace(monkeypatch):
    """Forward and backward take their padded planes and spectra from the workspace: the
    same buffers on a second call (no reallocation), and results that do not alias them
    (a second call leaves the first call's output and gradients intact)."""
    monkeypatch.setattr(_tuning, "WORKSPACE_MIN_ELEMS", 1)
    _ws.clear_workspace()
    try:
        gen = torch.Generator().manual_seed(99)
        k = softmax_kernel(gen, 1, 3, 3, 3).requires_grad_()
        lam = torch.full((1, 3, 1, 1), 0.05, dtype=torch.float64, requires_grad=True)
        xs = [sample((2, 3, 6, 7), s, "channels_last").requires_grad_() for s in (100, 101)]
        ws = [sample((2, 3, 6, 7), s) for s in (102, 103)]
        results, ptrs = [], None
        for x, wt in zip(xs, ws):
            out = converse2d(x, k, lam, 1, 2, "circular")
            (out * wt).sum().backward()
            results.append((out.detach(), x.grad, k.grad.clone(), lam.grad.clone()))
            k.grad = lam.grad = None
            if ptrs is None:
                ptrs = {name: b.data_ptr() for name, b in _ws._WORKSPACE.bufs.items()}
                assert {"cl-pad", "cl-spec", "cl-spec2"} <= set(ptrs)
        assert {name: b.data_ptr() for name, b in _ws._WORKSPACE.bufs.items()} == ptrs
        for (out, gx, gk, gl), x, wt in zip(results, xs, ws):
            xd = x.detach().clone().requires_grad_()
            kd, ld = k.detach().clone().requires_grad_(), lam.detach().clone().requires_grad_()
            monkeypatch.setattr(_tuning, "WORKSPACE_MIN_ELEMS", 1 << 40)  # reference: fresh tensors
            ref = converse2d(xd, kd, ld, 1, 2, "circular")
            (ref * wt).sum().backward()
            monkeypatch.setattr(_tuning, "WORKSPACE_MIN_ELEMS", 1)
            for a, b in ((out, ref), (gx, xd.grad), (gk, kd.grad), (gl, ld.grad)):
                BaseTester.assert_close(a, b.detach(), torch.float64)
        ref0 = dense_converse(xs[0].detach().numpy(), k.detach().numpy(), lam.detach().numpy().reshape(1, 3), 1, 2,
                              "circular", "interp")
        BaseTester.assert_close(results[0][0], ref0, torch.float64)
    finally:
        _ws.clear_workspace()


def test_stack_hands_channels_last_gradients_to_its_blocks(monkeypatch):
    """A planar input through the channels-last route: the gradient entering the stack's last
    block is channels-last (the output conversion sends it back in that layout), and the
    gradient leaving the stack is planar like its input."""
    from conversenet.models import _common

    monkeypatch.setattr(_nc, "pixel_major_faster", lambda x, c, o: True)
    stack = _stack()
    x = sample((2, 6, 9, 10), 104).requires_grad_()
    seen = []
    out = stack(x)
    assert out.is_contiguous() and out.grad_fn.name().endswith("_PlanarBackward")
    out.register_hook(lambda g: seen.append(("out", g.is_contiguous())))
    last_in = []
    orig = _common._Planar.backward

    def spy(ctx, grad):
        r = orig(ctx, grad)
        last_in.append(is_cl(r))
        return r
    monkeypatch.setattr(_common._Planar, "backward", staticmethod(spy))
    (out * sample((2, 6, 9, 10), 105)).sum().backward()
    assert last_in == [True] and seen == [("out", True)]
    assert x.grad.is_contiguous()


def test_converse2d_channels_last_double_backward():
    x = sample((1, 2, 5, 6), 96, "channels_last").requires_grad_()
    k = softmax_kernel(torch.Generator().manual_seed(97), 1, 2, 3, 3).requires_grad_()
    lam = torch.full((1, 2, 1, 1), 0.05, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b, c: converse2d(a, b, c, 1, 2, "circular"), (x, k, lam))
