"""The tester base (tests/_tester.py) applied to every fast path of the operator: the chunked
no-grad solve, the s = 1 autograd function, the split FFT, the fused ConverseBlock inference
path and layer_norm_pointwise. Each is compared with an independent float64 reference at
per-dtype tolerances, on non-contiguous input, with its functional/module counterpart, and
(where it records a graph) by gradcheck; each test also shows that the fast path ran."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from _reference import dense_converse, layernorm2d, softmax_kernel
from _tester import BaseTester
from conversenet import _tuning
from conversenet.functional import _fft, _fft_policy, converse2d
from conversenet.functional import converse as _fc
from conversenet.nn import Converse2d, ConverseBlock
from conversenet.nn import converse as _nc

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (tests/conftest.py)

DTYPES = BaseTester.DTYPES


# --------------------------------------------------------------------------------------
# the chunked no-grad solve (channel groups, functional._converse_chunked)
# --------------------------------------------------------------------------------------
class TestChunkedSolve(BaseTester):
    C = 5

    def _inputs(self, dtype, s):
        gen = torch.Generator().manual_seed(3 + s)
        y = torch.randn(2, self.C, 7, 6, generator=gen, dtype=torch.float64)
        k = softmax_kernel(gen, 1, self.C, 3, 3)
        lam = torch.tensor([3e-2, 1e-1, 5e-2, 2e-1, 8e-2], dtype=torch.float64)
        return y.to(dtype), k.to(dtype), lam.to(dtype)

    def _groups_of_two(self, monkeypatch, s, padding=2):
        hp, wp = 7 + 2 * padding, 6 + 2 * padding
        monkeypatch.setattr(_tuning, "SOLVE_CHUNK_ELEMS", 2 * 2 * s * s * hp * wp)  # 2 channels a group
        # s = 1 builds each group's filter (from the kernel's factor made once for all
        # channels); s > 1 solves each group at the input size
        return self.spy(monkeypatch, _fc, "_filter_from_rows") if s == 1 else \
            self.spy(monkeypatch, _fc._upsolve, "converse_up")

    @pytest.mark.parametrize("s", [1, 2])
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_matches_dense_float64_solve(self, monkeypatch, dtype, s):
        y, k, lam = self._inputs(dtype, s)
        calls = self._groups_of_two(monkeypatch, s)
        with torch.no_grad():
            out = converse2d(y, k, lam, s, 2, "reflect")
        assert len(calls) == 3  # groups of 2 + 2 + 1 channels
        ref = dense_converse(y.double().numpy(), k.double().numpy(), lam.double().reshape(1, -1).numpy(), s, 2,
                             "reflect")
        self.assert_close(out, ref, dtype)

    @pytest.mark.parametrize("batched", ["lam", "kernel"])
    def test_groups_with_per_sample_lam_or_kernel(self, monkeypatch, batched):
        """s = 1 groups whose filter cannot come from the kernel's shared factor (lam given
        per sample, shared kernel) and groups with a per-sample kernel: each group is still
        solved exactly (dense float64 solves per sample)."""
        y, k, lam = self._inputs(torch.float64, 1)
        gen = torch.Generator().manual_seed(8)
        lam2 = torch.stack([lam, lam.flip(0) * 2]) if batched == "lam" else lam.reshape(1, -1)
        k2 = torch.cat([k, softmax_kernel(gen, 1, self.C, 3, 3)]) if batched == "kernel" else k
        factor = self.spy(monkeypatch, _fc, "_filter_from_rows")
        whole = self.spy(monkeypatch, _fc, "converse_filter")
        monkeypatch.setattr(_tuning, "SOLVE_CHUNK_ELEMS", 2 * 2 * 11 * 10)  # 2 channels a group
        with torch.no_grad():
            out = converse2d(y, k2, lam2.reshape(-1, self.C, 1, 1), 1, 2, "reflect")
        assert (len(whole), len(factor)) == ((3, 0) if batched == "lam" else (0, 3))
        ref = dense_converse(y.numpy(), k2.numpy(), lam2.numpy(), 1, 2, "reflect")
        assert (out - torch.from_numpy(ref)).abs().max().item() < 1e-10

    @pytest.mark.parametrize("one_group", [False, True])
    @pytest.mark.parametrize("s", [1, 2])
    def test_writes_into_a_given_buffer_only_without_autograd(self, monkeypatch, s, one_group):
        """The private ``out`` of the solve (the fused block path's reused buffer): filled
        and returned by the no-autograd solve, in groups or in one; ignored (left
        untouched) where autograd records the solve or the buffer does not fit."""
        y, k, lam = self._inputs(torch.float64, s)
        if not one_group:
            self._groups_of_two(monkeypatch, s)
        ref = dense_converse(y.numpy(), k.numpy(), lam.reshape(1, -1).numpy(), s, 2, "reflect")
        buf = torch.full((2, self.C, 7 * s, 6 * s), float("nan"), dtype=torch.float64)
        with torch.no_grad():
            got = _fc._converse2d(y, k, lam, s, 2, "reflect", "interp", None, "exact", out=buf)
        assert got is buf
        self.assert_close(buf, ref, torch.float64)
        wrong_dtype = torch.full_like(buf, float("nan")).float()
        wrong_shape = torch.full((2, self.C, 7 * s, 6 * s + 1), float("nan"), dtype=torch.float64)
        for other in (wrong_dtype, wrong_shape):
            with torch.no_grad():  # wrong dtype / shape: a fresh result, the buffer untouched
                got = _fc._converse2d(y, k, lam, s, 2, "reflect", "interp", None, "exact", out=other)
            assert got is not other and bool(other.isnan().all())
        with torch.enable_grad():
            buf.fill_(float("nan"))
            got = _fc._converse2d(y.requires_grad_(), k, lam, s, 2, "reflect", "interp", None, "exact", out=buf)
        assert got is not buf and got.requires_grad and bool(buf.isnan().all())
        self.assert_close(got.detach(), ref, torch.float64)

    @pytest.mark.parametrize("s", [1, 2])
    def test_noncontiguous_input_and_module_agree(self, monkeypatch, s):
        y, k, lam = self._inputs(torch.float32, s)
        calls = self._groups_of_two(monkeypatch, s)
        with torch.no_grad():
            out = converse2d(y, k, lam, s, 2, "reflect")
            out_nc = converse2d(self.noncontiguous(y), k, lam, s, 2, "reflect")
            layer = Converse2d(self.C, 3, scale=s, padding=2, padding_mode="reflect").eval()
            layer.weight.copy_(k)
            layer.bias.uniform_(-2, 2)
            layer.filter_cache_bytes = None  # no cached filter: the module's call is chunked too
            out_mod = layer(y)
            out_fn = converse2d(y, k, layer.lam, s, 2, "reflect")
        assert len(calls) == 12
        self.assert_close(out_nc, out, torch.float32)
        self.assert_close(out_mod, out_fn, torch.float32)


# --------------------------------------------------------------------------------------
# the s = 1 autograd function (functional._ConverseS1)
# --------------------------------------------------------------------------------------
class TestConverseS1(BaseTester):
    def _inputs(self, dtype=torch.float64):
        gen = torch.Generator().manual_seed(11)
        y = torch.randn(2, 2, 6, 5, generator=gen, dtype=torch.float64)
        k = softmax_kernel(gen, 1, 2, 3, 3)
        lam = torch.tensor([5e-2, 2e-1], dtype=torch.float64).reshape(1, 2, 1, 1)
        return y.to(dtype), k.to(dtype), lam.to(dtype)

    @pytest.mark.parametrize("mode", ["circular", "reflect", "replicate", "constant"])
    def test_gradcheck(self, monkeypatch, mode):
        calls = self.spy(monkeypatch, _fc._ConverseS1, "apply")
        self.gradcheck(lambda y, k, lam: converse2d(y, k, lam, 1, 2, mode), self._inputs(),
                       second_order=mode == "circular")
        assert calls

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_forward_and_gradients_match_dense_float64(self, monkeypatch, dtype):
        y, k, lam = self._inputs(dtype)
        calls = self.spy(monkeypatch, _fc._ConverseS1, "apply")
        yg = y.clone().requires_grad_()
        out = converse2d(yg, k, lam, 1, 2, "replicate")
        assert calls
        ref = dense_converse(y.double().numpy(), k.double().numpy(), lam.double().reshape(1, 2).numpy(), 1, 2,
                             "replicate")
        self.assert_close(out, ref, dtype)
        # input gradient of <out, g> against the float64 autograd-free path's finite structure:
        # the operator is linear in y, so the gradient is its adjoint applied to g
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        (out * g.to(dtype)).sum().backward()
        y64 = y.double().requires_grad_()
        with torch.enable_grad():
            (converse2d(y64, k.double(), lam.double(), 1, 2, "replicate") * g).sum().backward()
        self.assert_close(yg.grad, y64.grad, dtype)

    def test_noncontiguous_input_and_module_agree(self, monkeypatch):
        y, k, lam = self._inputs(torch.float32)
        calls = self.spy(monkeypatch, _fc._ConverseS1, "apply")
        layer = Converse2d(2, 3, padding=2).train()
        with torch.no_grad():
            layer.weight.copy_(k)
        out_mod = layer(self.noncontiguous(y))  # parameters require grad: the autograd path
        out_fn = converse2d(y, layer.weight, layer.lam, 1, 2)
        assert len(calls) == 2
        self.assert_close(out_mod, out_fn, torch.float32)
        out_mod.sum().backward()
        assert layer.weight.grad is not None and layer.bias.grad is not None


# --------------------------------------------------------------------------------------
# the split FFT (functional._fft, path "split": N = N1 * p, p prime >= 11)
# --------------------------------------------------------------------------------------
class TestSplitFFT(BaseTester):
    H, W = 22, 6  # 22 = 2 * 11: the smallest split size

    def test_split_applies_here(self):
        assert _fft.ct_split(self.H, torch.device("cpu")) == 2

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_matches_numpy_float64_and_noncontiguous(self, dtype):
        x = torch.randn(3, self.H, self.W, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        ref = np.fft.rfft2(x.numpy())
        for xin in (x.to(dtype), self.noncontiguous(x.to(dtype))):
            spec = _fft.rfft2(xin, path="split")
            self.assert_close(torch.view_as_real(spec), torch.view_as_real(torch.from_numpy(ref)), dtype)
            back = _fft.irfft2(spec, (self.H, self.W), path="split")
            self.assert_close(back, x, dtype)

    def test_gradcheck(self):
        x = torch.randn(2, self.H, self.W, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

        def round_trip(t):  # real -> real through both split transforms
            z = _fft.rfft2(t, path="split")
            return _fft.irfft2(z * z.abs(), (self.H, self.W), path="split")

        self.gradcheck(round_trip, (x,), second_order=False)

    def test_module_and_functional_agree_with_torch_fft(self, monkeypatch):
        gen = torch.Generator().manual_seed(8)
        y = torch.randn(1, 3, self.H - 4, 9, generator=gen)  # padded height 22
        layer = Converse2d(3, 3, padding=2).eval()
        monkeypatch.setattr(_tuning, "FFT_MIN_MEASURED", 0)  # tiny planes take torch.fft otherwise
        calls = self.spy(monkeypatch, _fft, "fft_h")
        with torch.no_grad(), _fft_policy.force("split"):
            out_mod = layer(y)
            out_fn = converse2d(y, layer.weight, layer.lam, 1, 2)
        assert calls  # the split ran (fft_h is its H transform)
        with torch.no_grad(), _fft_policy.force("torch"):
            ref = converse2d(y, layer.weight, layer.lam, 1, 2)
        self.assert_close(out_mod, ref, torch.float32)
        self.assert_close(out_fn, ref, torch.float32)


# --------------------------------------------------------------------------------------
# the fused ConverseBlock inference path (ConverseBlock._forward_no_grad)
# --------------------------------------------------------------------------------------
class TestFusedConverseBlock(BaseTester):
    def _block(self, residual_scale):
        torch.manual_seed(0)
        b = ConverseBlock(6, kernel_size=3, residual_scale=residual_scale).eval()
        if residual_scale:
            with torch.no_grad():
                b.alpha1.uniform_(-1, 1)
                b.alpha2.uniform_(-1, 1)
        return b

    @pytest.mark.parametrize("residual_scale", [False, True])
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_matches_the_float64_module_path(self, monkeypatch, dtype, residual_scale):
        block = self._block(residual_scale)
        x = torch.randn(2, 6, 9, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        with torch.enable_grad():  # grad mode on: the plain module-by-module path, in float64
            ref = self.reference64(block.double(), x)
        block.to(dtype)
        calls = self.spy(monkeypatch, ConverseBlock, "_forward_no_grad")
        with torch.no_grad():
            out = block(x.to(dtype))
            out_nc = block(self.noncontiguous(x.to(dtype)))
            out_cl = block(x.to(dtype).contiguous(memory_format=torch.channels_last))
        assert len(calls) == 3
        for o in (out, out_nc, out_cl):
            self.assert_close(o, ref, dtype)

    def test_workspace_buffers_are_reused_and_input_is_untouched(self, monkeypatch):
        monkeypatch.setattr(_tuning, "WORKSPACE_MIN_ELEMS", 1)  # every temporary from the workspace
        block = self._block(True)
        x = torch.randn(1, 6, 8, 8, generator=torch.Generator().manual_seed(4))
        x0 = x.clone()
        with torch.no_grad():
            a = block(x)
            b = block(x)
        assert torch.equal(x, x0) and torch.equal(a, b) and a.data_ptr() != b.data_ptr()


# --------------------------------------------------------------------------------------
# layer_norm_pointwise (LayerNorm2d + 1x1 conv as one matrix product)
# --------------------------------------------------------------------------------------
class TestLayerNormPointwise(BaseTester):
    def _modules(self, c=4, o=5):
        torch.manual_seed(1)
        norm = _nc.LayerNorm2d(c)
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
        return norm, nn.Conv2d(c, o, 1)

    def _reference(self, x, norm, conv):
        """float64, independent: naive per-pixel LayerNorm, then the 1x1 conv as a sum."""
        ln = layernorm2d(x.double().numpy(), norm.weight.detach().double().numpy(),
                         norm.bias.detach().double().numpy(), norm.eps)
        w = conv.weight.detach().double().numpy()[:, :, 0, 0]
        return np.einsum("oc,nchw->nohw", w, ln) + conv.bias.detach().double().numpy()[None, :, None, None]

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_matches_float64_reference(self, dtype):
        norm, conv = self._modules()
        x = 3 + torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        ref = self._reference(x, norm, conv)
        with torch.no_grad():
            for xin in (x.to(dtype), self.noncontiguous(x.to(dtype))):
                self.assert_close(_nc.layer_norm_pointwise(xin, norm.to(dtype), conv.to(dtype)), ref, dtype)

    def test_buffers_and_module_agreement(self):
        norm, conv = self._modules()
        x = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(10))
        out_buf, work = torch.empty(2, 5, 15), torch.empty(2, 4, 15)
        with torch.no_grad():
            fused = _nc.layer_norm_pointwise(x, norm, conv, out=out_buf, work=work)
            plain = conv(norm(x))
        assert fused.data_ptr() == out_buf.data_ptr()  # written into the buffer given
        self.assert_close(fused, plain, torch.float32)
