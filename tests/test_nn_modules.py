"""nn modules: Converse2d parameters, init, kernel conditioning, eval cache; LayerNorm2d; ConverseBlock."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _reference import dense_converse, layernorm2d
from conversenet import _tuning
from conversenet.functional import converse2d
from conversenet.nn import Converse2d, ConverseBlock, LayerNorm2d


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (tests/conftest.py)


# --------------------------------------------------------------------------------------
# Converse2d
# --------------------------------------------------------------------------------------
def test_parameters_names_shapes_and_default_init():
    torch.manual_seed(0)
    layer = Converse2d(6, 5)
    params = dict(layer.named_parameters())
    assert set(params) == {"weight", "bias"}
    assert params["weight"].shape == (1, 6, 5, 5)
    assert params["bias"].shape == (1, 6, 1, 1)
    assert torch.equal(layer.bias, torch.zeros(1, 6, 1, 1))
    w = layer.weight.detach()
    assert (w > 0).all()
    torch.testing.assert_close(w.sum((-2, -1)), torch.ones(1, 6), rtol=0, atol=1e-6)
    # not all the same value: a random (softmax of Gaussian) kernel, different per channel
    assert w.flatten(2).std(-1).min() > 0
    assert not torch.allclose(w[0, 0], w[0, 1])
    assert layer.padding == 4  # default k - 1


def test_lam_is_sigmoid_of_bias_minus_9_plus_eps():
    layer = Converse2d(3, 3, eps=1e-3)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([-2.0, 0.0, 5.0]).reshape(1, 3, 1, 1))
    expect = 1 / (1 + np.exp(-(np.array([-2.0, 0.0, 5.0]) - 9))) + 1e-3
    np.testing.assert_allclose(layer.lam.detach().reshape(3).numpy(), expect, rtol=1e-6)
    assert layer.lam.shape == (1, 3, 1, 1)


def test_forward_is_the_converse_of_its_parameters_float64(device):
    # module output == dense reference solve with the module's own kernel and lam
    torch.manual_seed(1)
    layer = Converse2d(2, 3, scale=2, padding=1, padding_mode="reflect").double().to(device)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([3.0, 6.0], dtype=torch.float64).reshape(1, 2, 1, 1))
    y = torch.randn(2, 2, 4, 3, dtype=torch.float64)
    out = layer(y.to(device))
    lam = (1 / (1 + np.exp(-(np.array([3.0, 6.0]) - 9))) + 1e-5).reshape(1, 2)
    ref = dense_converse(y.numpy(), layer.weight.detach().cpu().numpy(), lam, 2, 1, "reflect", "interp")
    np.testing.assert_allclose(out.detach().cpu().numpy(), ref, rtol=0, atol=1e-8 * np.abs(ref).max())


@pytest.mark.parametrize("kernel_init", ["gaussian_softmax", "gaussian", "uniform"])
def test_kernel_init_variants(kernel_init):
    torch.manual_seed(2)
    w = Converse2d(8, (3, 5), kernel_init=kernel_init).weight.detach()
    assert w.shape == (1, 8, 3, 5)
    if kernel_init == "gaussian_softmax":
        assert (w > 0).all()
        torch.testing.assert_close(w.sum((-2, -1)), torch.ones(1, 8), rtol=0, atol=1e-6)
    elif kernel_init == "gaussian":
        assert (w < 0).any() and (w > 0).any()
        assert 0.7 < float(w.std()) < 1.3
    else:
        assert (w >= 0).all() and (w <= 1).all()
        assert 0.35 < float(w.mean()) < 0.65


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="kernel_init"):
        Converse2d(3, kernel_init="xavier")
    with pytest.raises(ValueError, match="padding_mode"):
        Converse2d(3, padding_mode="zeros")
    with pytest.raises(ValueError, match="x0"):
        Converse2d(3, x0="bicubic")
    with pytest.raises(ValueError, match="channels"):
        Converse2d(0)
    with pytest.raises(ValueError, match="scale"):
        Converse2d(3, scale=1.5)
    with pytest.raises(ValueError, match="kernel_size"):
        Converse2d(3, kernel_size=0)
    with pytest.raises(ValueError, match="eps"):
        Converse2d(3, eps=0.0)


def test_learn_kernel_false_takes_per_sample_kernel(device):
    torch.manual_seed(3)
    layer = Converse2d(3, 7, scale=2, padding=0, eps=1e-3, learn_kernel=False).to(device)
    assert set(dict(layer.named_parameters())) == {"bias"}
    assert layer.weight is None
    y = torch.randn(2, 3, 8, 6, device=device)
    kernel = torch.softmax(torch.randn(2, 3, 49, device=device), -1).reshape(2, 3, 7, 7)
    out = layer(y, kernel)
    assert out.shape == (2, 3, 16, 12)
    torch.testing.assert_close(out, converse2d(y, kernel, layer.lam, 2, 0, "circular"))
    # each sample uses its own kernel
    swapped = layer(y, kernel.flip(0))
    assert not torch.allclose(swapped, out)
    with pytest.raises(ValueError, match="kernel"):
        layer(y)
    with pytest.raises(ValueError, match="kernel"):
        Converse2d(3, 3)(y, kernel)
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(y, kernel), out)


def test_gradients_reach_weight_and_bias():
    torch.manual_seed(4)
    layer = Converse2d(3, 3, scale=2, padding=2)
    layer(torch.randn(1, 3, 6, 5)).square().sum().backward()
    assert layer.weight.grad.abs().sum() > 0 and layer.bias.grad.abs().sum() > 0


def test_eval_cache_matches_training_and_tracks_weight_changes(device):
    torch.manual_seed(5)
    layer = Converse2d(4, 5, scale=2, padding=4, padding_mode="replicate").to(device)
    y = torch.randn(2, 4, 10, 9, device=device)

    def fresh():  # no cache involved: training mode with autograd
        layer.train()
        with torch.enable_grad():
            return layer(y).detach()

    def cached():
        layer.eval()
        with torch.no_grad():
            return layer(y)

    want = fresh()
    first, second = cached(), cached()
    torch.testing.assert_close(first, want, rtol=0, atol=0)
    torch.testing.assert_close(second, want, rtol=0, atol=0)

    # an optimiser step changes the weights in place
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer.train()
    layer(y).square().mean().backward()
    opt.step()
    want2 = fresh()
    assert not torch.allclose(want2, want)
    torch.testing.assert_close(cached(), want2, rtol=0, atol=0)

    # changes through .data do not bump the version counter
    layer.weight.data.add_(0.05)
    want3 = fresh()
    assert not torch.allclose(want3, want2)
    torch.testing.assert_close(cached(), want3, rtol=0, atol=0)
    layer.bias.data.fill_(2.0)
    want4 = fresh()
    assert not torch.allclose(want4, want3)
    torch.testing.assert_close(cached(), want4, rtol=0, atol=0)

    # load_state_dict copies in place too
    other = Converse2d(4, 5, scale=2, padding=4, padding_mode="replicate").to(device)
    layer.load_state_dict(other.state_dict())
    want5 = fresh()
    torch.testing.assert_close(cached(), want5, rtol=0, atol=0)

    # a different input size needs a different filter
    y_small = torch.randn(1, 4, 7, 8, device=device)
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(y_small), converse2d(y_small, layer.weight, layer.lam, 2, 4, "replicate"))


def test_eval_cache_after_double():
    torch.manual_seed(6)
    layer = Converse2d(3, 3, scale=2, padding=2).eval()
    y = torch.randn(1, 3, 6, 7)
    with torch.no_grad():
        layer(y)  # fills the float32 cache
        layer.double()
        y64 = y.double()
        out = layer(y64)
    assert out.dtype == torch.float64
    lam = (torch.sigmoid(torch.zeros(1, 3, 1, 1, dtype=torch.float64) - 9) + 1e-5)
    ref = dense_converse(y64.numpy(), layer.weight.detach().numpy(), lam.reshape(1, 3).numpy(), 2, 2, "circular")
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-8 * np.abs(ref).max())


# --------------------------------------------------------------------------------------
# LayerNorm2d
# --------------------------------------------------------------------------------------
def test_layernorm2d_matches_float64_formula(device):
    torch.manual_seed(7)
    ln = LayerNorm2d(5).to(device)
    assert set(dict(ln.named_parameters())) == {"weight", "bias"}
    assert torch.equal(ln.weight.cpu(), torch.ones(5)) and torch.equal(ln.bias.cpu(), torch.zeros(5))
    with torch.no_grad():
        ln.weight.copy_(torch.randn(5))
        ln.bias.copy_(torch.randn(5))
    x = 3 * torch.randn(2, 5, 4, 3) + 1.5
    out = ln(x.to(device))
    ref = layernorm2d(x.numpy(), ln.weight.detach().cpu().numpy(), ln.bias.detach().cpu().numpy(), 1e-5)
    np.testing.assert_allclose(out.detach().cpu().numpy(), ref, rtol=1e-5, atol=1e-5)


def test_layernorm2d_normalises_over_channels_only():
    ln = LayerNorm2d(4)
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    ln = ln.double()
    out = ln(x)
    torch.testing.assert_close(out.mean(1), torch.zeros(1, 3, 3, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(out.var(1, unbiased=False), torch.full((1, 3, 3), 1.0, dtype=torch.float64),
                               rtol=1e-4, atol=0)
    # scaling one pixel's channel vector does not affect the others
    x2 = x.clone()
    x2[..., 0, 0] *= 10
    torch.testing.assert_close(ln(x2)[..., 1:, :], out[..., 1:, :])


def test_layernorm2d_float64_gradcheck_and_layout():
    # analytic gradients (torch's fused layer_norm backward) against finite differences, for
    # the input and both parameters; the output takes the input's layout (contiguous NCHW,
    # or channels-last as a convolution keeps it)
    torch.manual_seed(11)
    ln = LayerNorm2d(3, eps=1e-3).double()
    with torch.no_grad():
        ln.weight.copy_(torch.randn(3, dtype=torch.float64))
        ln.bias.copy_(torch.randn(3, dtype=torch.float64))
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t, w, b: torch.func.functional_call(ln, {"weight": w, "bias": b}, (t,)), (x, ln.weight, ln.bias))
    assert torch.autograd.gradcheck(ln, (x,))
    assert ln(x).is_contiguous()
    x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(ln, (x_cl,))
    out = ln(x_cl)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    ref = layernorm2d(x.detach().numpy(), ln.weight.detach().numpy(), ln.bias.detach().numpy(), 1e-3)
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_layernorm2d_half_input_normalised_in_float32(dtype):
    torch.manual_seed(12)
    ln = LayerNorm2d(6)
    x = (4 * torch.randn(2, 6, 5, 5) + 2).to(dtype)
    out = ln(x)
    assert out.dtype == dtype
    ref = layernorm2d(x.float().numpy(), ln.weight.detach().numpy(), ln.bias.detach().numpy(), 1e-5)
    # one rounding to the half type of a float32 result
    np.testing.assert_allclose(out.detach().float().numpy(), ref, rtol=0, atol=2e-2 if dtype == torch.bfloat16 else 4e-3)


# --------------------------------------------------------------------------------------
# ConverseBlock
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("spatial", ["converse", "conv", "convt"])
def test_block_shape(device, spatial):
    torch.manual_seed(8)
    block = ConverseBlock(6, 3, spatial=spatial).to(device)
    x = torch.randn(2, 6, 9, 11, device=device)
    out = block(x)
    assert out.shape == x.shape
    assert not torch.allclose(out, x)


def test_block_residual_scale_zero_is_identity():
    torch.manual_seed(9)
    block = ConverseBlock(4, 5, residual_scale=True)
    assert block.alpha1.shape == (1, 4, 1, 1) and block.alpha2.shape == (1, 4, 1, 1)
    x = torch.randn(2, 4, 8, 7)
    assert torch.equal(block(x), x)
    with torch.no_grad():
        block.alpha1.fill_(1.0)
    assert not torch.allclose(block(x), x)


def test_block_uses_converse2d_with_given_settings():
    block = ConverseBlock(4, 3, padding=2, padding_mode="reflect", eps=1e-3)
    conv = block.conv1[3]
    assert isinstance(conv, Converse2d)
    assert conv.weight.shape == (1, 8, 3, 3)  # expansion 2
    assert (conv.padding, conv.padding_mode, conv.eps, conv.scale) == (2, "reflect", 1e-3, 1)


@pytest.mark.parametrize("k", [3, 5, 7])
def test_block_baseline_parameter_counts_match(k):
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    n_conv = count(ConverseBlock(8, k))
    assert n_conv == count(ConverseBlock(8, k, spatial="conv")) == count(ConverseBlock(8, k, spatial="convt"))
    # independent count: LN 2C+2C, 1x1 C->2C and 2C->C twice, depthwise 2C*k*k + 2C
    c, h = 8, 16
    assert n_conv == 4 * c + 2 * (c * h + h + h * c + c) + h * k * k + h


def test_block_state_dict_matches_official_names():
    sd = ConverseBlock(8, 7, residual_scale=True).state_dict()
    expected = {
        "alpha1": (1, 8, 1, 1), "alpha2": (1, 8, 1, 1),
        "conv1.0.weight": (8,), "conv1.0.bias": (8,),
        "conv1.1.weight": (16, 8, 1, 1), "conv1.1.bias": (16,),
        "conv1.3.weight": (1, 16, 7, 7), "conv1.3.bias": (1, 16, 1, 1),
        "conv1.5.weight": (8, 16, 1, 1), "conv1.5.bias": (8,),
        "conv2.0.weight": (8,), "conv2.0.bias": (8,),
        "conv2.1.weight": (16, 8, 1, 1), "conv2.1.bias": (16,),
        "conv2.3.weight": (8, 16, 1, 1), "conv2.3.bias": (8,),
    }
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    plain = ConverseBlock(8, 7).state_dict()
    assert set(plain) == set(expected) - {"alpha1", "alpha2"}


@pytest.mark.weights
def test_block_loads_official_dncnn_block(official_dir):
    sd = torch.load(official_dir / "converse_dncnn.pth", map_location="cpu")
    prefix = "m_body.0."
    sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    block = ConverseBlock(64, 7, padding=6)
    block.load_state_dict(sub, strict=True)
    x = torch.randn(1, 64, 12, 12)
    assert torch.isfinite(block(x)).all()


# ---------------------------------------------------------------- fused LayerNorm -> 1x1 conv
def test_layer_norm_pointwise_equals_layernorm_then_conv_float64(device):
    """The no-autograd fast path of ConverseBlock: conv(LN(x)) with the LN affine folded into
    the 1x1 conv, checked against the float64 LN formula written independently."""
    from conversenet.nn.converse import layer_norm_pointwise
    g = torch.Generator().manual_seed(3)
    c, o = 6, 11
    norm = LayerNorm2d(c, eps=1e-3).double().to(device)
    conv = torch.nn.Conv2d(c, o, 1).double().to(device)
    with torch.no_grad():
        for p in list(norm.parameters()) + list(conv.parameters()):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    # a large common offset: a one-pass variance (E[x^2] - mu^2) would lose digits here
    x = (torch.randn(2, c, 7, 9, generator=g, dtype=torch.float64) * 0.1 + 1e3).to(device)
    ln = layernorm2d(x.cpu().numpy(), norm.weight.detach().cpu().numpy(), norm.bias.detach().cpu().numpy(), 1e-3)
    ref = np.einsum("oc,nchw->nohw", conv.weight.detach().cpu().numpy()[:, :, 0, 0], ln)
    ref = torch.from_numpy(ref + conv.bias.detach().cpu().numpy()[None, :, None, None]).to(device)
    with torch.no_grad():
        out = layer_norm_pointwise(x, norm, conv)
    assert out.shape == (2, o, 7, 9)
    assert torch.allclose(out, ref, rtol=1e-9, atol=1e-9)


def test_layer_norm_pointwise_falls_back_for_other_convs():
    from conversenet.nn.converse import layer_norm_pointwise
    norm, conv = LayerNorm2d(4), torch.nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 5, 6)
    with torch.no_grad():
        assert torch.equal(layer_norm_pointwise(x, norm, conv), conv(norm(x)))


@pytest.mark.parametrize("spatial", ["converse", "conv"])
def test_block_fast_path_without_autograd_matches_autograd_path(spatial):
    g = torch.Generator().manual_seed(4)
    block = ConverseBlock(8, kernel_size=3, residual_scale=True, spatial=spatial).double()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
    x = torch.randn(2, 8, 10, 12, generator=g, dtype=torch.float64)
    ref = block(x.clone().requires_grad_()).detach()   # autograd: the plain module sequence
    with torch.no_grad():
        fast = block(x)
    with torch.inference_mode():
        fast2 = block(x)
    assert torch.allclose(fast, ref, rtol=1e-10, atol=1e-10)
    assert torch.allclose(fast2, ref, rtol=1e-10, atol=1e-10)


def test_block_no_grad_path_never_writes_inputs_or_earlier_outputs(monkeypatch):
    """The inference path reuses workspace buffers: its input and the outputs it returned
    earlier must stay intact while later blocks run (the workspace threshold is lowered so
    that these small tensors go through it)."""
    from conversenet.nn import converse as nc
    monkeypatch.setattr(_tuning, "WORKSPACE_MIN_ELEMS", 1)
    g = torch.Generator().manual_seed(5)
    blocks = torch.nn.Sequential(*[ConverseBlock(4, kernel_size=3, residual_scale=True) for _ in range(3)]).double()
    with torch.no_grad():
        for p in blocks.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
    x = torch.randn(2, 4, 9, 8, generator=g, dtype=torch.float64)
    x_copy = x.clone()
    refs = []
    h = x.clone().requires_grad_()
    for b in blocks:
        h = b(h)
        refs.append(h.detach().clone())
    outs = []
    with torch.no_grad():
        h = x
        for b in blocks:
            h = b(h)
            outs.append(h)
    assert torch.equal(x, x_copy)
    for o, r in zip(outs, refs):
        assert torch.allclose(o, r, rtol=1e-10, atol=1e-10)
    assert {"hidden", "spatial"} <= set(nc._workspace._WORKSPACE.bufs)  # the buffers were used ...
    nc.clear_workspace()
    assert not nc._workspace._WORKSPACE.bufs  # ... and can be freed


def test_block_with_hooks_inside_runs_layer_by_layer():
    """Forward hooks on the block's layers see the tensors of a plain layer-by-layer run, also
    without autograd (the fused inference path reuses and overwrites such tensors)."""
    g = torch.Generator().manual_seed(6)
    blocks = torch.nn.Sequential(*[ConverseBlock(4, kernel_size=3) for _ in range(2)]).double()
    x = torch.randn(1, 4, 9, 8, generator=g, dtype=torch.float64)
    seen = []
    layer = blocks[0].conv1[3]
    h = layer.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    try:
        with torch.no_grad():
            blocks(x)
    finally:
        h.remove()
    (y, out), = seen
    with torch.no_grad():
        y_ref = blocks[0].conv1[:3](x)
    assert torch.allclose(y, y_ref, atol=1e-12)
    assert torch.allclose(out, layer(y_ref), atol=1e-12)
