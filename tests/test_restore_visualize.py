"""conversenet.visualize: Figure 2 maps checked against an independent circular convolution
(scipy, float64) and against calling the captured layer directly."""

import sys

import numpy as np
import pytest
import torch

from conversenet.models import create
from conversenet.visualize import converse_layers, converse_maps, figure2


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return create("converse_dncnn", width=4, num_blocks=2).eval()


def test_layers_listed(net):
    assert converse_layers(net) == ["m_body.0.conv1.3", "m_body.1.conv1.3"]


def test_maps_match_independent_convolution(net):
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(1, 1, 20, 24)
    maps = converse_maps(net, x, layer=1, channels=[0, 5])
    assert maps["layer"] == "m_body.1.conv1.3" and maps["channels"] == [0, 5]
    layer = dict(net.named_modules())[maps["layer"]]
    for i, c in enumerate(maps["channels"]):
        k = layer.weight.detach().double()[0, c].numpy()
        np.testing.assert_allclose(maps["K"][i], k)
        # X* (x) K as a true circular convolution with the kernel centre at (kh//2, kw//2)
        ref = ndimage.convolve(maps["X"][i], k, mode="wrap")
        np.testing.assert_allclose(maps["XK"][i], ref, atol=1e-5)
        np.testing.assert_allclose(maps["E"][i], maps["Y"][i] - ref, atol=1e-5)
    # Y is the layer's real input and X* its output on it (captured here independently)
    seen = {}
    h = layer.register_forward_hook(lambda m, i, o: seen.update(y=i[0].detach()))
    with torch.no_grad():
        net(x)
        x_star = layer(seen["y"])
    h.remove()
    np.testing.assert_allclose(maps["Y"], seen["y"][0, [0, 5]].double().numpy(), atol=0)
    np.testing.assert_allclose(maps["X"], x_star[0, [0, 5]].double().numpy(), atol=1e-6)


def test_default_channels_have_most_variance(net):
    maps = converse_maps(net, torch.rand(1, 1, 16, 16), num_channels=2)
    assert len(maps["channels"]) == 2 and maps["channels"] == sorted(maps["channels"])


def test_errors(net):
    with pytest.raises(ValueError, match="out of range"):
        converse_maps(net, torch.rand(1, 1, 16, 16), layer=5)
    with pytest.raises(ValueError, match="not a Converse2d layer"):
        converse_maps(net, torch.rand(1, 1, 16, 16), layer="head")
    with pytest.raises(ValueError, match="channels"):
        converse_maps(net, torch.rand(1, 1, 16, 16), channels=[99])
    with pytest.raises(ValueError, match=r"\(1, C, H, W\)"):
        converse_maps(net, torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="no Converse2d"):
        converse_maps(create("dncnn", depth=3, width=4), torch.rand(1, 1, 16, 16))


def test_figure_and_missing_matplotlib(net, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    maps = converse_maps(net, torch.rand(1, 1, 16, 16), num_channels=2)
    figure2(maps, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install"):
        figure2(maps, tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()
