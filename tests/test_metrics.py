"""PSNR / SSIM / rgb_to_y against independent references (numpy formulas, naive loops, skimage)."""

import numpy as np
import pytest
import torch

from _reference import psnr_ref
from conversenet.data import add_awgn_np, from_float, read_image, to_float
from conversenet.metrics import psnr, rgb_to_y, ssim


def _rand(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, size=shape).astype(np.uint8)


_psnr_ref = psnr_ref


def _ssim_naive(x, y):
    """Direct double loop over 11x11 windows (float64), MATLAB constants."""
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    h, wd = x.shape
    vals = []
    for i in range(h - 10):
        for j in range(wd - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx = (w * (px - mx) ** 2).sum()
            vy = (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_psnr_matches_formula_and_range_invariance():
    a, b = _rand((20, 17, 3), 0), _rand((20, 17, 3), 1)
    ref = _psnr_ref(a, b)
    assert psnr(a, b) == pytest.approx(ref, abs=1e-10)
    assert psnr(a / 255.0, b / 255.0, input_range=1.0) == pytest.approx(ref, abs=1e-10)
    ref_c = _psnr_ref(a[3:-3, 3:-3], b[3:-3, 3:-3])
    assert psnr(a, b, crop_border=3) == pytest.approx(ref_c, abs=1e-10)
    # uint16 data with its own range
    a16, b16 = a.astype(np.uint16) * 257, b.astype(np.uint16) * 257
    assert psnr(a16, b16, input_range=65535) == pytest.approx(ref, abs=1e-9)


def test_psnr_identical_is_inf_everywhere():
    a = _rand((16, 16, 3), 2)
    assert psnr(a, a) == float("inf")
    assert psnr(a, a.copy(), crop_border=2, test_y_channel=True) == float("inf")
    t = torch.rand(2, 3, 16, 16)
    out = psnr(t, t.clone(), input_range=1.0)
    assert out.shape == (2,) and np.all(np.isinf(out))


def test_rgb_to_y_by_hand():
    px = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0], [10, 20, 30]]], np.uint8)
    expected = [16 + 65.481, 16 + 128.553, 16 + 24.966, 235.0, 16.0, 16 + (65.481 * 10 + 128.553 * 20 + 24.966 * 30) / 255]
    np.testing.assert_allclose(rgb_to_y(px)[0], expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(rgb_to_y(px / 255.0, input_range=1.0)[0], expected, atol=1e-9)
    np.testing.assert_array_equal(rgb_to_y(px, round_y=True)[0], np.round(expected))


def test_psnr_y_channel_uses_luma():
    a, b = _rand((12, 12, 3), 3), _rand((12, 12, 3), 4)
    w = np.array([65.481, 128.553, 24.966]) / 255
    ya, yb = 16 + a.astype(float) @ w, 16 + b.astype(float) @ w
    assert psnr(a, b, test_y_channel=True) == pytest.approx(_psnr_ref(ya, yb), abs=1e-10)
    assert psnr(a, b, test_y_channel=True, round_y=True) == pytest.approx(_psnr_ref(np.round(ya), np.round(yb)), abs=1e-10)
    assert ssim(a, b, test_y_channel=True) == pytest.approx(_ssim_naive(ya, yb), abs=1e-10)


def test_ssim_matches_naive_loop_gray_and_color():
    a, b = _rand((18, 21), 5), _rand((18, 21), 6)
    b2 = np.clip(a.astype(int) + _rand((18, 21), 7) // 8, 0, 255).astype(np.uint8)
    assert ssim(a, b) == pytest.approx(_ssim_naive(a.astype(float), b.astype(float)), abs=1e-12)
    assert ssim(a, b2) == pytest.approx(_ssim_naive(a.astype(float), b2.astype(float)), abs=1e-12)
    ca, cb = _rand((17, 16, 3), 8), _rand((17, 16, 3), 9)
    ref = np.mean([_ssim_naive(ca[..., i].astype(float), cb[..., i].astype(float)) for i in range(3)])
    assert ssim(ca, cb) == pytest.approx(ref, abs=1e-12)
    assert ssim(ca / 255.0, cb / 255.0, input_range=1.0) == pytest.approx(ref, abs=1e-12)
    ref_c = np.mean([_ssim_naive(ca[2:-2, 2:-2, i].astype(float), cb[2:-2, 2:-2, i].astype(float)) for i in range(3)])
    assert ssim(ca, cb, crop_border=2) == pytest.approx(ref_c, abs=1e-12)
    assert abs(ref_c - ref) > 1e-6  # the crop changes the value, so the check above is meaningful


@pytest.mark.data
def test_ssim_agrees_with_skimage_on_test_images(data_root):
    from skimage.metrics import structural_similarity

    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, truncate=3.5)
    cases = []
    for name in ("01.png", "05.png", "09.png"):
        clean, _ = read_image(data_root / "testsets" / "set12" / name)
        noisy = from_float(add_awgn_np(to_float(clean), 25, seed=0))
        cases.append((clean[..., 0], noisy[..., 0], 0))
    for name in ("baby.png", "butterfly.png"):
        clean, _ = read_image(data_root / "testsets" / "set5" / name)
        noisy = from_float(add_awgn_np(to_float(clean), 15, seed=1))
        cases.append((clean, noisy, 4))
    for clean, noisy, border in cases:
        ours = ssim(clean, noisy, crop_border=border)
        c = slice(border, clean.shape[0] - border), slice(border, clean.shape[1] - border)
        x, y = clean[c].astype(np.float64), noisy[c].astype(np.float64)
        ref = structural_similarity(x, y, channel_axis=2 if x.ndim == 3 else None, **kw)
        assert abs(ours - ref) < 1e-4, (ours, ref)
        assert 0.3 < ours < 0.99  # a real, non-trivial comparison
        assert psnr(clean, noisy, crop_border=border) == pytest.approx(_psnr_ref(x, y), abs=1e-10)


def test_torch_batch_gives_per_image_values():
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    y = (x + 0.05 * torch.randn(3, 3, 16, 16, dtype=torch.float64)).clamp(0, 1)
    p, s = psnr(x, y, input_range=1.0), ssim(x, y, input_range=1.0)
    assert p.shape == (3,) and s.shape == (3,)
    for i in range(3):
        xi, yi = x[i].permute(1, 2, 0).numpy(), y[i].permute(1, 2, 0).numpy()
        assert p[i] == pytest.approx(_psnr_ref(xi, yi, peak=1.0), abs=1e-9)
        assert s[i] == pytest.approx(ssim(xi, yi, input_range=1.0), abs=1e-12)
        assert isinstance(psnr(x[i], y[i], input_range=1.0), float)


def test_bad_inputs():
    a = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\(16, 16, 3\).*\(16, 15, 3\)"):
        psnr(a, np.zeros((16, 15, 3), np.uint8))
    with pytest.raises(ValueError, match="crop_border"):
        ssim(a, a, crop_border=-1)
    with pytest.raises(ValueError, match="crop_border"):
        psnr(a, a, crop_border=8)
    with pytest.raises(ValueError, match="input_range"):
        psnr(a, a, input_range=0)
    with pytest.raises(TypeError):
        psnr(a, torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((10, 30)), np.zeros((10, 30)))
    with pytest.raises(ValueError, match="channels"):
        psnr(np.zeros((16, 16, 4)), np.zeros((16, 16, 4)), test_y_channel=True)
