"""Converse layers in other people's networks (issue 14, items 1, 2 and 6):
mixed precision, torch.compile, memory formats and devices.

Tolerances against float32 (stated in docs/LAYER.md):

* converse2d / Converse2d with float16 or bfloat16 inputs, or under autocast: the solve
  runs in float32, so only the final rounding differs from the float32 result of the same
  (rounded) inputs: ``|out - ref| <= eps(dtype) * |ref|`` elementwise.
* whole networks under CPU bfloat16 autocast or in bfloat16/float16: the max abs error is
  at most 8 % of the float32 output's max abs (measured: up to 5 % on the small registry
  models; Converse layers with lam ~ 1e-4 amplify the rounding of their inputs at some
  frequencies, so Converse networks sit above their convolutional twins).
* torch.compile against eager: 1e-5.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conversenet.functional import converse2d, converse_filter
from conversenet.functional import converse as _fc
from conversenet.models import create, list_models
from conversenet.nn import Converse2d, ConverseBlock

sys.path.insert(0, str(Path(__file__).parent))
from _reference import softmax_kernel  # noqa: E402
from test_models import inputs, run, small  # noqa: E402  (small registry models)

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this machine")
HALF = [torch.float16, torch.bfloat16]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _fresh_compile_state():
    yield
    torch._dynamo.reset()



def _rounding_only(out, ref, dtype):
    """Elementwise: out is ref rounded to dtype (one rounding of a float32 value)."""
    tol = torch.finfo(dtype).eps * ref.abs() + torch.finfo(dtype).tiny
    return bool(((out.float() - ref).abs() <= tol).all())


# ======================================================================================
# B. mixed precision
# ======================================================================================
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("s", [1, 2])
def test_half_inputs_forward_backward(dtype, s):
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(2, 3, 9, 10, generator=gen).to(dtype).requires_grad_()
    k = softmax_kernel(gen, 1, 3, 5, 5, dtype=torch.float32).to(dtype).requires_grad_()
    lam = torch.tensor([1e-2, 1e-3, 0.1], dtype=dtype, requires_grad=True)
    out = converse2d(y, k, lam, s, 4, "replicate")
    assert out.dtype == dtype
    y32, k32, lam32 = (t.detach().float().requires_grad_() for t in (y, k, lam))
    ref = converse2d(y32, k32, lam32, s, 4, "replicate")
    assert _rounding_only(out, ref.detach(), dtype)
    gout = torch.randn(out.shape, generator=gen)
    out.backward(gout.to(dtype))
    ref.backward(gout.to(dtype).float())
    for t, t32 in ((y, y32), (k, k32), (lam, lam32)):
        assert t.grad.dtype == dtype  # gradients come back in the parameter's dtype
        # the float32 gradient, rounded once
        assert _rounding_only(t.grad, t32.grad, dtype)


@pytest.mark.parametrize("ac_dtype", HALF)
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_autocast_cpu_output_dtype_and_tolerance(ac_dtype, in_dtype):
    gen = torch.Generator().manual_seed(1)
    y = torch.randn(2, 4, 11, 9, generator=gen).to(in_dtype)
    k = softmax_kernel(gen, 1, 4, 3, 3, dtype=torch.float32)
    ref = converse2d(y.double(), k.double(), 1e-2, 2, 2).float()
    with torch.autocast("cpu", dtype=ac_dtype):
        out = converse2d(y, k, 1e-2, 2, 2)
        conv = F.conv2d(y, k.reshape(4, 1, 3, 3).to(in_dtype), groups=4)
    # like a convolution under autocast: the autocast dtype, except float64 (left alone)
    assert out.dtype == conv.dtype == (torch.float64 if in_dtype == torch.float64 else ac_dtype)
    assert _rounding_only(out, ref, out.dtype) if out.dtype != torch.float64 else torch.allclose(out.float(), ref)


@pytest.mark.parametrize("ac_dtype", HALF)
def test_autocast_cpu_modules(ac_dtype):
    torch.manual_seed(2)
    layer = Converse2d(4, 5, scale=2)
    block = ConverseBlock(4, 3)
    twin = ConverseBlock(4, 3, spatial="conv")  # the same block with a depthwise conv
    x = torch.randn(2, 4, 10, 12, requires_grad=True)
    ref_layer, ref_block = layer(x), block(x)
    with torch.autocast("cpu", dtype=ac_dtype):
        out_layer, out_block, out_twin = layer(x), block(x), twin(x)
        with torch.no_grad():
            out_block_ng = block(x)
    assert out_layer.dtype == ac_dtype
    assert out_block.dtype == out_twin.dtype == out_block_ng.dtype  # what autocast gives
    assert _rounding_only(out_layer, ref_layer.detach(), ac_dtype)
    for o in (out_block, out_block_ng):
        err = (o.float() - ref_block).abs().max() / ref_block.abs().max()
        assert float(err) <= 0.08
    (out_layer.float().sum() + out_block.float().sum()).backward()
    for p in list(layer.parameters()) + list(block.parameters()) + [x]:
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()


_CONV_TWIN = {"converse_dncnn": "conv_dncnn", "converse_srresnet": "conv_srresnet",
              "converse_usrnet": "conv_usrnet", "conversenet": "convnet"}


@pytest.mark.parametrize("name", list_models())
def test_every_model_autocast_cpu_bfloat16(name):
    torch.manual_seed(3)
    model, _ = small(name)
    x, k = inputs(model, h=12, w=14)
    ref = run(model, x, k)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = run(model, x, k)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert out.dtype in (torch.bfloat16, torch.float32)
    twin = _CONV_TWIN.get(name.replace("_official", ""))
    if twin is not None:  # the dtype autocast gives the same network with convolutions
        tw, _ = small(twin)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert run(tw, x, k).dtype == out.dtype
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert float(err) <= 0.08, f"{name}: relative max error {float(err):.3g}"
    out.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("name", list_models())
def test_every_model_in_half_precision(name, dtype):
    # the model and its input in float16/bfloat16 (no autocast): runs, trains, stays close
    torch.manual_seed(4)
    model, _ = small(name)
    x, k = inputs(model, h=12, w=14)
    ref = run(model, x, k)
    model = model.to(dtype)
    out = run(model, x.to(dtype), None if k is None else k.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out.float()).all()
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert float(err) <= 0.08, f"{name}: relative max error {float(err):.3g}"
    out.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == dtype and torch.isfinite(p.grad.float()).all()
               for p in model.parameters())


def _toy_denoising(n=4, size=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = F.avg_pool2d(torch.rand(n, 1, size + 4, size + 4, generator=g), 5, 1)  # smooth
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=g)
    return noisy, clean


def test_training_steps_under_cpu_bfloat16_autocast():
    torch.manual_seed(5)
    model = create("converse_dncnn", width=8, num_blocks=2)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    noisy, clean = _toy_denoising()
    losses = []
    for _ in range(8):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(noisy)
        loss = F.mse_loss(out.float(), clean)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights


@needs_cuda
@pytest.mark.parametrize("dtype", HALF)
def test_cuda_autocast_and_grad_scaler(dtype):
    torch.manual_seed(6)
    model = create("converse_dncnn", width=8, num_blocks=2).cuda()
    x = torch.randn(2, 4, 12, 10, device="cuda")
    layer = Converse2d(4, 5, scale=2).cuda()
    ref = layer(x)
    with torch.autocast("cuda", dtype=dtype):
        out = layer(x)
    assert out.dtype == dtype and _rounding_only(out, ref.detach(), dtype)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    noisy, clean = (t.cuda() for t in _toy_denoising())
    losses = []
    for _ in range(8):
        with torch.autocast("cuda", dtype=dtype):
            loss = F.mse_loss(model(noisy).float(), clean)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


# ======================================================================================
# C. torch.compile
# ======================================================================================
def _graph_recorder(graphs):
    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    return backend


def test_compile_solver_is_one_custom_op_node():
    """Quick: what Dynamo hands to a backend is one custom-op node, no complex/FFT ops."""
    graphs = []
    gen = torch.Generator().manual_seed(7)
    y = torch.randn(1, 2, 8, 9, generator=gen)
    k = softmax_kernel(gen, 1, 2, 3, 3, dtype=torch.float32)
    f = torch.compile(lambda y, k: converse2d(y, k, 1e-2, 2, 2, "reflect"), backend=_graph_recorder(graphs),
                      fullgraph=True)
    torch.testing.assert_close(f(y, k), converse2d(y, k, 1e-2, 2, 2, "reflect"), rtol=0, atol=0)
    code = "\n".join(g.code for g in graphs)
    assert code.count("conversenet.converse2d_solve") == 1
    assert "fft" not in code and "complex" not in code


def test_eager_does_not_use_the_custom_op(monkeypatch):
    from conversenet.functional import _solve_op

    def boom(*args, **kwargs):
        raise AssertionError("eager converse2d went through the custom op")

    monkeypatch.setattr(_solve_op, "converse2d_solve", boom)
    y = torch.randn(1, 2, 6, 6, requires_grad=True)
    converse2d(y, torch.ones(1, 2, 3, 3) / 9, 1e-2, 2, 1).sum().backward()
    assert y.grad is not None


def _check_compiled_function(s, x0, mode="reflect"):
    gen = torch.Generator().manual_seed(8 + s)
    y = torch.randn(2, 3, 8, 9, generator=gen, requires_grad=True)
    k = softmax_kernel(gen, 1, 3, 3, 3, dtype=torch.float32).requires_grad_()
    lam = torch.tensor([1e-2, 1e-3, 1e-1], requires_grad=True)
    x0t = torch.randn(2, 3, 8 * s, 9 * s, generator=gen, requires_grad=True) if x0 == "tensor" else x0

    def f(y, k, lam):
        return converse2d(y, k, lam, s, 2, mode, x0t)

    compiled = torch.compile(f, fullgraph=True)
    out, ref = compiled(y, k, lam), f(y, k, lam)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    inputs_ = (y, k, lam) + ((x0t,) if x0 == "tensor" else ())
    gout = torch.randn(out.shape, generator=gen)
    for a, b in zip(torch.autograd.grad(out, inputs_, gout), torch.autograd.grad(ref, inputs_, gout)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def test_compile_fullgraph_converse2d_s1_with_gradients():
    """Quick (unmarked) end-to-end Inductor compile: s = 1, forward and gradients."""
    _check_compiled_function(1, "interp")


@pytest.mark.slow
@pytest.mark.parametrize("s,x0,mode", [(2, "interp", "reflect"), (3, "zero", "circular"),
                                       (2, "tensor", "replicate"), (1, "zero", "constant")])
def test_compile_fullgraph_converse2d_more(s, x0, mode):
    _check_compiled_function(s, x0, mode)


@pytest.mark.slow
@pytest.mark.parametrize("s", [1, 2])
def test_compile_fullgraph_module_train_and_eval(s):
    torch.manual_seed(9)
    layer = Converse2d(4, 5, scale=s, padding=4, padding_mode="replicate")
    with torch.no_grad():
        layer.bias.uniform_(-1, 1)
    compiled = torch.compile(layer, fullgraph=True)
    y = torch.randn(2, 4, 12, 10, requires_grad=True)
    out, ref = compiled(y), layer(y)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    params = [y, layer.weight, layer.bias]
    for a, b in zip(torch.autograd.grad(out.sum(), params), torch.autograd.grad(ref.sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(y), layer(y), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_compile_fullgraph_converse_dncnn_official(official_dir_or_none):
    if official_dir_or_none is not None:
        model = create("converse_dncnn_official", "official", download=False)
    else:  # random weights: the 17 deep blocks amplify rounding, compare on the output scale
        torch.manual_seed(10)
        model = create("converse_dncnn_official").eval()
    x = torch.rand(1, 1, 24, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model, fullgraph=True)(x)
    scale = 1.0 if official_dir_or_none is not None else float(ref.abs().max())
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * scale)


@pytest.fixture
def official_dir_or_none():
    from conversenet import paths

    d = paths.default_official_weights_dir()
    if d is None or not (Path(d) / "converse_dncnn.pth").is_file():
        return None
    import os

    os.environ.setdefault("CONVERSENET_WEIGHTS_DIR", str(d))
    return d


@pytest.mark.slow
def test_compile_autocast_channels_last_and_filter_argument():
    gen = torch.Generator().manual_seed(11)
    y = torch.randn(2, 3, 8, 9, generator=gen).contiguous(memory_format=torch.channels_last)
    k = softmax_kernel(gen, 1, 3, 3, 3, dtype=torch.float32)

    def f(y, k):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return converse2d(y, k, 1e-2, 2, 2)

    out, ref = torch.compile(f, fullgraph=True)(y, k), f(y, k)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    # a precomputed (complex) filter passed in from outside the graph
    g = converse_filter(k, torch.full((1, 3, 1, 1), 1e-2), (12, 13), 2, "interp")
    h = torch.compile(lambda y: converse2d(y, k, 1e-2, 2, 2, filter=g), fullgraph=True)
    torch.testing.assert_close(h(y), converse2d(y, k, 1e-2, 2, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_custom_op_opcheck():
    from conversenet.functional import _solve_op

    gen = torch.Generator().manual_seed(12)
    y = torch.randn(2, 3, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    k = softmax_kernel(gen, 1, 3, 3, 3).requires_grad_()
    lam = torch.tensor([1e-2, 1e-3, 1e-1], dtype=torch.float64).reshape(1, 3, 1, 1).requires_grad_()
    x0 = torch.randn(2, 3, 12, 14, generator=gen, dtype=torch.float64, requires_grad=True)
    for args in [(y, k, lam, None, None, 1, [2, 2, 2, 2], "reflect", "interp"),
                 (y, k, lam, x0, None, 2, [1, 1, 1, 1], "replicate", "tensor")]:
        torch.library.opcheck(_solve_op.converse2d_solve, args)

        def f(*t):
            return _solve_op.converse2d_solve(*t, *args[len(t):])

        tensors = tuple(a for a in args[:4] if a is not None)
        assert torch.autograd.gradcheck(f, tensors, eps=1e-6, atol=1e-7, rtol=1e-5)


# ======================================================================================
# D. memory formats and devices
# ======================================================================================
def _layouts(t):
    yield "channels_last", t.contiguous(memory_format=torch.channels_last)
    big = torch.zeros(t.shape[0], t.shape[1] + 1, t.shape[2] + 2, 2 * t.shape[3], dtype=t.dtype)
    big[:, 1:, 2:, ::2] = t
    yield "strided", big[:, 1:, 2:, ::2]
    yield "transposed", t.transpose(-1, -2).contiguous().transpose(-1, -2)


@pytest.mark.parametrize("s", [1, 2])
def test_memory_formats_equal_contiguous_with_gradients(s):
    gen = torch.Generator().manual_seed(13)
    y = torch.randn(2, 3, 7, 6, generator=gen, dtype=torch.float64)
    k = softmax_kernel(gen, 1, 3, 3, 3)
    lam = torch.tensor([1e-2, 1e-3, 1e-1], dtype=torch.float64)
    yc = y.clone().requires_grad_()
    ref = converse2d(yc, k, lam, s, 2, "reflect")
    gout = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    (gref,) = torch.autograd.grad(ref, yc, gout)
    for name, yy in _layouts(y):
        assert not yy.is_contiguous(), name
        yy.requires_grad_()
        out = converse2d(yy, k, lam, s, 2, "reflect")
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12, msg=name)
        if name == "channels_last":  # kept, as a convolution keeps it
            assert out.is_contiguous(memory_format=torch.channels_last)
        (g,) = torch.autograd.grad(out, yy, gout)
        torch.testing.assert_close(g, gref, rtol=1e-12, atol=1e-12, msg=name)
        with torch.no_grad():
            torch.testing.assert_close(converse2d(yy, k, lam, s, 2, "reflect"), ref, rtol=1e-12, atol=1e-12)


def test_channels_last_network_equals_contiguous():
    torch.manual_seed(14)
    model = create("converse_dncnn", width=8, num_blocks=2).double()
    x = torch.rand(2, 1, 16, 13, dtype=torch.float64)
    ref = model(x)
    model_cl = model.to(memory_format=torch.channels_last)
    out = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(model_cl(x.contiguous(memory_format=torch.channels_last)), ref,
                                   rtol=1e-10, atol=1e-10)


@needs_cuda
@pytest.mark.parametrize("s", [1, 2])
def test_cuda_equals_cpu_float64(s):
    gen = torch.Generator().manual_seed(15)
    y = torch.randn(2, 3, 17, 12, generator=gen)
    k = softmax_kernel(gen, 1, 3, 5, 5, dtype=torch.float32)
    ref = converse2d(y.double(), k.double(), 1e-2, s, 4, "reflect")
    out = converse2d(y.cuda(), k.cuda(), 1e-2, s, 4, "reflect")
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-4, atol=1e-4)
    out_cl = converse2d(y.cuda().contiguous(memory_format=torch.channels_last), k.cuda(), 1e-2, s, 4, "reflect")
    torch.testing.assert_close(out_cl, out, rtol=1e-6, atol=1e-6)


def test_device_without_fft_gets_a_clear_error(monkeypatch):
    """A device type whose FFT kernels fail: one probe, then an error naming the device,
    raised before any solve. Simulated on 'meta' by making its real FFT fail the way an
    unsupported backend does (meta itself does support FFT shapes)."""
    real_rfft2 = torch.fft.rfft2
    calls = []

    def rfft2(x, *args, **kwargs):
        if x.device.type == "meta":
            calls.append(x.shape)
            raise NotImplementedError("Could not run 'aten::_fft_r2c' with arguments from the 'Meta' backend")
        return real_rfft2(x, *args, **kwargs)

    monkeypatch.setattr(torch.fft, "rfft2", rfft2)
    # a fresh probe cache without "meta" (an earlier test may have probed it already)
    monkeypatch.setattr(_fc, "FFT_DEVICES", _fc._FftDevices())
    y = torch.randn(1, 2, 8, 8, device="meta")
    k = torch.ones(1, 2, 3, 3, device="meta")
    for _ in range(2):
        with pytest.raises(RuntimeError, match=r"device 'meta'.*_fft_r2c"):
            converse2d(y, k, 1e-2, 1, 2)
    with pytest.raises(RuntimeError, match=r"device 'meta'"):
        Converse2d(2, 3).to("meta")(y)
    assert len(calls) == 1  # probed once per device type, then cached


def test_meta_device_shape_inference():
    y = torch.randn(2, 3, 8, 9, device="meta")
    k = torch.ones(1, 3, 3, 3, device="meta")
    for s in (1, 2):
        assert converse2d(y, k, torch.full((3,), 1e-2, device="meta"), s, 2).shape == (2, 3, 8 * s, 9 * s)
