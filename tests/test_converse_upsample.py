"""ConverseUpsample (issue 14, item 4) and the U-Net example that uses it."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conversenet.functional import converse2d
from conversenet.nn import Converse2d, ConverseUpsample

SIZES = [1, 2, 7, 13, 31]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "unet_upsample.py"


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
@pytest.mark.parametrize("cin,cout", [(8, 4), (3, 3), (2, 5)])
def test_output_shape_every_size_like_convtranspose(scale, cin, cout):
    torch.manual_seed(0)
    up = ConverseUpsample(cin, cout, scale)
    ref = nn.ConvTranspose2d(cin, cout, scale, stride=scale)
    for h, w in itertools.product(SIZES, SIZES):
        x = torch.randn(2, cin, h, w)
        out = up(x)
        assert out.shape == (2, cout, h * scale, w * scale), (h, w)
        assert out.shape == ref(x).shape
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("mode", ["replicate", "constant"])
@pytest.mark.parametrize("kernel_size,padding", [(3, 0), (5, 4), ((2, 3), 1)])
def test_any_size_with_unbounded_padding_modes(mode, kernel_size, padding):
    up = ConverseUpsample(4, 6, 2, kernel_size=kernel_size, padding=padding, padding_mode=mode)
    for h, w in [(1, 1), (1, 13), (7, 2), (13, 31)]:
        if padding == 0 and max(up.up.kernel_size) > 2 * min(h, w):
            continue  # the kernel needs padding or a larger input; see the error test
        assert up(torch.randn(1, 4, h, w)).shape == (1, 6, 2 * h, 2 * w)


def test_equals_projection_then_converse2d():
    """The structure, checked against the operator called by hand."""
    torch.manual_seed(1)
    up = ConverseUpsample(6, 3, 3, kernel_size=3, padding=2, padding_mode="reflect", x0="zero", eps=1e-4).double()
    assert isinstance(up.proj, nn.Conv2d) and up.proj.kernel_size == (1, 1)
    assert isinstance(up.up, Converse2d) and up.up.scale == 3 and up.up.channels == 3
    x = torch.randn(2, 6, 7, 5, dtype=torch.float64)
    z = F.conv2d(x, up.proj.weight, up.proj.bias)
    ref = converse2d(z, up.up.weight, up.up.lam, 3, 2, "reflect", "zero")
    torch.testing.assert_close(up(x), ref, rtol=1e-12, atol=1e-12)
    same = ConverseUpsample(4, 4, 2)
    assert isinstance(same.proj, nn.Identity)
    assert not any(isinstance(m, nn.Conv2d) for m in same.modules())
    assert ConverseUpsample(4, 8, 2, bias=False).proj.bias is None


def test_constant_input_upsamples_to_constant():
    """Feature: softmax kernel (sums to 1) and nearest x0: a constant image stays constant."""
    torch.manual_seed(2)
    up = ConverseUpsample(3, 3, 2).double()
    with torch.no_grad():  # the float32 softmax sums to 1 only to ~1e-7: renormalise in float64
        up.up.weight /= up.up.weight.sum((-2, -1), keepdim=True)
    x = torch.full((1, 3, 7, 13), 0.25, dtype=torch.float64)
    torch.testing.assert_close(up(x), torch.full((1, 3, 14, 26), 0.25, dtype=torch.float64), rtol=0, atol=1e-10)


def test_gradients_reach_every_parameter_and_the_input():
    torch.manual_seed(3)
    up = ConverseUpsample(5, 2, 2)
    x = torch.randn(2, 5, 7, 13, requires_grad=True)
    up(x).square().mean().backward()
    for name, p in up.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert sorted(n for n, _ in up.named_parameters()) == ["proj.bias", "proj.weight", "up.bias", "up.weight"]


def test_gradcheck_float64():
    torch.manual_seed(4)
    up = ConverseUpsample(3, 2, 2, kernel_size=3, padding=1).double()
    x = torch.randn(1, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(up, (x,), eps=1e-6, atol=1e-6)
    params = dict(up.named_parameters())

    def as_function(pw, uw, ub):
        return torch.func.functional_call(up, {**params, "proj.weight": pw, "up.weight": uw, "up.bias": ub}, (x,))

    inputs = tuple(params[k].detach().clone().requires_grad_() for k in ("proj.weight", "up.weight", "up.bias"))
    assert torch.autograd.gradcheck(as_function, inputs, eps=1e-6, atol=1e-6)


def test_non_contiguous_and_channels_last_input():
    torch.manual_seed(5)
    up = ConverseUpsample(4, 3, 2).double()
    x = torch.randn(2, 4, 7, 9, dtype=torch.float64)
    base = up(x)
    for xx in (x.contiguous(memory_format=torch.channels_last), x.transpose(-1, -2).contiguous().transpose(-1, -2)):
        torch.testing.assert_close(up(xx), base, rtol=1e-12, atol=1e-12)


def test_errors():
    for kwargs, match in [
        (dict(in_channels=0, out_channels=2, scale=2), "in_channels must be a positive int"),
        (dict(in_channels=2, out_channels=1.5, scale=2), "out_channels must be a positive int"),
        (dict(in_channels=2, out_channels=2, scale=0), "scale must be >= 1"),
        (dict(in_channels=2, out_channels=2, scale=2, padding_mode="zeros"), "padding_mode must be one of"),
        (dict(in_channels=2, out_channels=2, scale=2, x0="bilinear"), "x0 must be one of"),
        (dict(in_channels=2, out_channels=2, scale=2, kernel_size=0), "kernel_size must be a positive int"),
    ]:
        with pytest.raises(ValueError, match=match):
            ConverseUpsample(**kwargs)
    up = ConverseUpsample(4, 2, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 4, H, W\)"):
        up(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 4, H, W\)"):
        up(torch.randn(4, 8, 8))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        up([[1.0]])
    # reflect/circular padding is bounded by the input size: a clear error names it
    with pytest.raises(ValueError, match="padding=2 with padding_mode='reflect'"):
        ConverseUpsample(4, 2, 2, padding_mode="reflect")(torch.randn(1, 4, 2, 9))
    with pytest.raises(ValueError, match="weight: kernel 5x5 is larger than the padded output"):
        ConverseUpsample(4, 2, 2, kernel_size=5, padding=0)(torch.randn(1, 4, 1, 9))


def test_drop_in_for_convtranspose_in_a_sequential():
    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GELU(), nn.ConvTranspose2d(16, 8, 2, stride=2))
    net[2] = ConverseUpsample(16, 8, 2)
    assert net(torch.rand(1, 3, 13, 7)).shape == (1, 8, 26, 14)


# --------------------------------------------------------------------------------------
# the example
# --------------------------------------------------------------------------------------
def _load_example():
    spec = importlib.util.spec_from_file_location("unet_upsample_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_example_unet_trains_with_converse_upsample():
    ex = _load_example()
    out = ex.train("converse", steps=40, batch=8, size=16, width=8, lr=5e-3, seed=0)
    model, losses = out["model"], out["losses"]
    ups = [m for m in model.modules() if isinstance(m, ConverseUpsample)]
    assert len(ups) == 2 and not any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    assert len(losses) == 40 and all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"example U-Net with ConverseUpsample: mean MSE of steps 1-5 {first:.5f}, steps 36-40 {last:.5f}")
    # the untrained net returns its input (residual), so it starts at the noise variance 0.01
    assert last < 0.75 * first


def test_example_variants_have_the_same_interface():
    ex = _load_example()
    x = torch.rand(2, 1, 12, 20)
    shapes = {kind: ex.SmallUNet(1, 4, kind)(x).shape for kind in ex.UPSAMPLERS}
    assert set(shapes.values()) == {x.shape}
    with pytest.raises(ValueError, match="upsampler must be one of"):
        ex.make_upsampler("bilinear", 4, 2)
