"""Issue #15: the blind denoisers' network (Converse-UNet) and the colour denoising protocol.

Models are small random ones and images generated, so nothing here needs data files.
"""

import math

import numpy as np
import pytest
import torch

from conversenet import evaluate as ev
from conversenet.models import ConverseUNet, create


def _tiny(c=1, **kw):
    torch.manual_seed(0)
    return ConverseUNet(c, widths=kw.pop("widths", (4, 6, 8)), blocks=kw.pop("blocks", (1, 1, 1)), **kw)


@pytest.mark.parametrize("h,w", [(1, 1), (3, 5), (8, 8), (13, 10), (33, 17)])
@pytest.mark.parametrize("c", [1, 3])
def test_any_size_and_channels_keep_their_shape(h, w, c):
    net = _tiny(c)
    x = torch.rand(2, c, h, w)
    y = net(x)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()


def test_untrained_network_is_close_to_the_identity():
    """Residual scales start at 0 and the tail small: the output starts at the input."""
    for name in ("converse_unet_blind_gray", "converse_unet_blind_color"):
        net = create(name)
        x = torch.rand(1, net.in_channels, 32, 40)
        with torch.no_grad():
            d = (net(x) - x).abs().mean().item()
        assert d < 0.05, (name, d)
        assert (net.in_channels, net.scale, net.task) == ((1 if "gray" in name else 3), 1, "denoise")


def test_registered_sizes_fit_the_shipping_limit():
    """Both weight sets are <= 10 MB as float32 safetensors (issue #15)."""
    for name in ("converse_unet_blind_gray", "converse_unet_blind_color"):
        n = sum(p.numel() for p in create(name).parameters())
        assert 1_000_000 < n and 4 * n <= 10_000_000, (name, n)


def test_every_parameter_gets_a_gradient():
    net = _tiny(3)
    x = torch.rand(2, 3, 12, 12)
    (net(x) - x).square().mean().backward()
    # the tail gets gradient at once; the rest through the (small, nonzero) tail
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, missing


def test_gradcheck_float64():
    net = _tiny(1, widths=(2, 3), blocks=(1, 1)).double()
    with torch.no_grad():  # open the residual branches so that every path is tested
        for n, p in net.named_parameters():
            if n.endswith("alpha1") or n.endswith("alpha2"):
                p.fill_(0.5)
    x = torch.rand(1, 1, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(net, (x,), eps=1e-6, atol=1e-5)


def test_padding_does_not_leak_between_images_of_a_batch():
    net = _tiny(1).eval()
    a, b = torch.rand(1, 1, 11, 9), torch.rand(1, 1, 11, 9)
    with torch.no_grad():
        both = net(torch.cat([a, b]))
        assert torch.allclose(both[:1], net(a), atol=1e-6) and torch.allclose(both[1:], net(b), atol=1e-6)


@pytest.mark.parametrize("kw,match", [
    ({"widths": (), "blocks": ()}, "non-empty"),
    ({"widths": (4, 8), "blocks": (1,)}, "equal length"),
    ({"widths": (4, 0), "blocks": (1, 1)}, "widths"),
    ({"widths": (4, 8), "blocks": (1, -1)}, "blocks"),
])
def test_bad_arguments_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        ConverseUNet(1, **kw)


def test_wrong_input_is_refused_before_work():
    net = _tiny(3)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        net(torch.rand(1, 1, 8, 8))
    with pytest.raises(TypeError, match="floating"):
        net(torch.zeros(1, 3, 8, 8, dtype=torch.int64))


# ------------------------------------------------------------------ colour protocol
def test_colour_protocol_is_seed0_noise_on_rgb_and_rgb_psnr(tmp_path):
    """CBSD68 protocol (CDnCNN's): i.i.d. noise on all three channels from numpy seed 0,
    no clipping, the restored image rounded to uint8, PSNR over R, G and B together."""
    rng = np.random.default_rng(3)
    gt = (rng.random((14, 11, 3)) * 255).round().astype(np.uint8)
    net = _tiny(3).eval()
    p = ev.protocol_for(net, sigma=15)
    _, lq = ev.degrade(gt, p)
    np.random.seed(0)  # the published recipe, written out independently
    ref = np.float32(gt / 255.0)
    ref += np.random.normal(0, 15 / 255.0, ref.shape)
    assert lq.shape == (14, 11, 3) and np.array_equal(lq, ref)
    res = ev.evaluate_arrays(net, [("c", gt)], p, out_dir=tmp_path, progress=False)
    from conversenet.data import read_image

    out, _ = read_image(tmp_path / "restored" / "c.png")
    assert out.shape == (14, 11, 3)
    mse = np.mean((out.astype(np.float64) - gt.astype(np.float64)) ** 2)
    assert res.rows[0]["psnr"] == pytest.approx(10 * math.log10(255.0**2 / mse), abs=1e-9)
