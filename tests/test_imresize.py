"""MATLAB bicubic imresize: invariants, hand-computed antialiased weights, Pillow interior check."""

import math

import numpy as np
import pytest
import torch

from conversenet.data import imresize, modcrop

# Downscaling by 2 with antialiasing: h(x) = 0.5 * k(0.5 x), taps at distances +-0.5, +-1.5,
# +-2.5, +-3.5 from u (u is a half-integer). By hand from Keys' a=-0.5 polynomials:
#   k(0.25) = 1.5/64 - 2.5/16 + 1 = 0.8671875      k(0.75) = 1.5*27/64 - 2.5*9/16 + 1 = 0.2265625
#   k(1.25) = -0.5*125/64 + 2.5*25/16 - 5 + 2 = -0.0703125
#   k(1.75) = -0.5*343/64 + 2.5*49/16 - 7 + 2 = -0.0234375
# The eight values sum to 2, times 0.5 -> weights already normalised:
W2 = 0.5 * np.array([-0.0234375, -0.0703125, 0.2265625, 0.8671875, 0.8671875, 0.2265625, -0.0703125, -0.0234375])


def _keys(x):
    x = abs(x)
    if x <= 1:
        return 1.5 * x**3 - 2.5 * x**2 + 1
    if x <= 2:
        return -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2
    return 0.0


def test_hand_weights_downscale_by_2_interior_and_border():
    x = np.random.default_rng(0).random(16)
    img = np.tile(x[:, None], (1, 5))  # varies along rows only
    out = imresize(img, 0.5)
    assert out.shape == (8, 3)
    # output i (0-based) is centred at input 2i + 0.5; taps 2i-3 .. 2i+4
    for i in range(8):
        ext = np.pad(x, 8, mode="symmetric")  # MATLAB's mirror: ... x1 x0 | x0 x1 ...
        taps = ext[8 + 2 * i - 3 : 8 + 2 * i + 5]
        assert out[i, 1] == pytest.approx(float(W2 @ taps), abs=1e-12)
    assert W2.sum() == pytest.approx(1.0, abs=1e-15)


def test_2d_pattern_downscale_by_2_separable_hand_weights():
    rng = np.random.default_rng(1)
    img = rng.random((12, 10, 2))
    def mat(n):
        m = np.zeros((n // 2, n))
        for i in range(n // 2):
            for t, w in zip(range(2 * i - 3, 2 * i + 5), W2):
                j = t if t >= 0 else -t - 1
                j = j if j < n else 2 * n - 1 - j
                m[i, j] += w
        return m
    expected = np.einsum("oh,hwc,pw->opc", mat(12), img, mat(10))
    np.testing.assert_allclose(imresize(img, 0.5), expected, atol=1e-12)


@pytest.mark.parametrize("scale", [0.25, 0.5, 1 / 3, 0.37, 1.0, 1.5, 2, 3, 4])
def test_constant_stays_constant(scale):
    img = np.full((13, 17, 3), 0.3125)
    out = imresize(img, scale)
    assert out.shape == (math.ceil(13 * scale), math.ceil(17 * scale), 3)
    np.testing.assert_allclose(out, 0.3125, atol=1e-12)
    t = imresize(torch.full((2, 3, 13, 17), 0.3125, dtype=torch.float64), scale)
    assert t.shape == (2, 3) + out.shape[:2]
    assert torch.allclose(t, torch.tensor(0.3125, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("scale", [0.25, 0.5, 1 / 3, 2, 3, 1.5])
def test_linear_ramp_stays_linear_away_from_borders(scale):
    n = 48
    r = 0.7 * np.arange(n) + 3.0
    img = np.tile(r[None, :], (6, 1))  # ramp along columns
    out = imresize(img, scale)
    m = out.shape[1]
    i = np.arange(m)
    u = (i + 0.5) / scale - 0.5  # 0-based input coordinate of output pixel i
    margin = 2.0 / min(scale, 1.0) + 1  # kernel half-width in input pixels
    inside = (u - margin >= 0) & (u + margin <= n - 1)
    assert inside.sum() >= 4
    np.testing.assert_allclose(out[0, inside], 0.7 * u[inside] + 3.0, atol=1e-10)
    # and along rows through the torch path
    tout = imresize(torch.from_numpy(img.T.copy()), scale).numpy()
    np.testing.assert_allclose(tout[inside, 0], 0.7 * u[inside] + 3.0, atol=1e-10)


@pytest.mark.parametrize("out_shape", [(16, 20), (32, 40), (22, 27), (45, 56), (100, 33)])
def test_interior_matches_pillow_bicubic(out_shape):
    # Pillow's float ("F") bicubic uses the same Keys a=-0.5 kernel, the same pixel-centre
    # mapping and the same kernel widening when downscaling; it only differs at the borders
    # (it truncates the kernel instead of mirroring), so compare away from them.
    from PIL import Image

    x = np.random.default_rng(2).random((64, 80)).astype(np.float32)
    ours = imresize(x.astype(np.float64), out_shape=out_shape)
    ref = np.asarray(Image.fromarray(x, mode="F").resize(out_shape[::-1], Image.BICUBIC), dtype=np.float64)
    oh, ow = out_shape
    mh = int(math.ceil(3 * max(64 / oh, 1) * oh / 64)) + 1
    mw = int(math.ceil(3 * max(80 / ow, 1) * ow / 80)) + 1
    np.testing.assert_allclose(ours[mh:-mh, mw:-mw], ref[mh:-mh, mw:-mw], atol=2e-6)
    assert np.abs(ours - ref).max() > 1e-4  # the borders do differ: mirroring vs truncation


def test_numpy_torch_agree_and_keep_dtype_layout():
    x = np.random.default_rng(3).random((20, 24, 3)).astype(np.float32)
    y = imresize(x, 0.25)
    assert y.dtype == np.float32 and y.shape == (5, 6, 3)
    t = torch.from_numpy(x).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    ty = imresize(t, 0.25)
    assert ty.dtype == torch.float32 and ty.shape == (2, 3, 5, 6)
    np.testing.assert_allclose(ty[1].permute(1, 2, 0).numpy(), y, atol=1e-6)
    y2 = imresize(x[..., 0], (0.5, 0.25))
    assert y2.shape == (10, 6)
    assert imresize(np.zeros((4, 4), np.uint8), 2).dtype == np.float64


def test_modcrop():
    x = np.arange(10 * 7 * 3).reshape(10, 7, 3)
    np.testing.assert_array_equal(modcrop(x, 4), x[:8, :4])
    t = torch.zeros(2, 3, 10, 7)
    assert modcrop(t, 3).shape == (2, 3, 9, 6)
    with pytest.raises(ValueError, match="scale"):
        modcrop(x, 0)
    with pytest.raises(ValueError, match="smaller"):
        modcrop(x, 11)


def test_bad_arguments():
    x = np.zeros((8, 8))
    with pytest.raises(ValueError, match="exactly one"):
        imresize(x)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(x, 0.5, out_shape=(4, 4))
    with pytest.raises(ValueError, match="scale"):
        imresize(x, -1)
    with pytest.raises(ValueError, match="out_shape"):
        imresize(x, out_shape=(0, 4))
    with pytest.raises(ValueError):
        imresize(np.zeros(8), 0.5)
    with pytest.raises(TypeError):
        imresize(torch.zeros(8, 8, dtype=torch.int64), 0.5)
