"""Noise, circular blur, downsampling, USRNet pipeline and blur kernels."""

import math
import sys

import numpy as np
import pytest
import torch

from conversenet.data import (
    KernelError,
    add_awgn,
    add_awgn_np,
    anisotropic_gaussian_kernel,
    blur_circular,
    blur_wrap_np,
    check_kernel,
    downsample,
    downsample_np,
    gaussian_kernel,
    load_kernel,
    motion_kernel,
    read_image,
    usrnet_degrade,
    usrnet_degrade_np,
    write_image,
)


# ----------------------------------------------------------------------------- noise
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_awgn_np_is_the_published_protocol(dtype):
    img = np.random.default_rng(0).random((9, 7, 3)).astype(dtype)
    state = np.random.get_state()
    out = add_awgn_np(img, 25, seed=0)
    assert np.random.get_state()[1].tolist() == state[1].tolist()  # global RNG untouched
    ref = img.copy()
    np.random.seed(0)
    ref += np.random.normal(0, 25 / 255.0, ref.shape)  # the protocol, literally
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(add_awgn_np(img, 25, seed=0), out)  # seed reset per image
    assert (out < 0).any() and (out > 1).any()  # no clipping
    assert not np.array_equal(add_awgn_np(img, 25, seed=1), out)
    with pytest.raises(TypeError, match="floating"):
        add_awgn_np((img * 255).astype(np.uint8), 25)
    with pytest.raises(ValueError, match="sigma"):
        add_awgn_np(img, -1)


def test_awgn_torch_generator_and_per_sample_sigma():
    x = torch.full((3, 1, 64, 64), 0.5)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = add_awgn(x, torch.tensor([0.0, 10.0, 50.0]), g1)
    b = add_awgn(x, torch.tensor([0.0, 10.0, 50.0]), g2)
    assert torch.equal(a, b)
    assert torch.equal(a[0], x[0])
    stds = (a - x).flatten(1).std(dim=1)
    assert stds[1].item() == pytest.approx(10 / 255, rel=0.1)
    assert stds[2].item() == pytest.approx(50 / 255, rel=0.1)
    c = add_awgn(x, 25.0, torch.Generator().manual_seed(1))
    assert (c - x).std().item() == pytest.approx(25 / 255, rel=0.05)
    with pytest.raises(ValueError, match="sigma"):
        add_awgn(x, torch.tensor([1.0, 2.0]))


# ----------------------------------------------------------------------------- blur
def _naive_wrap(img, k):
    """out[i, j] = sum_ab k[a, b] img[(i - a + kh//2) % H, (j - b + kw//2) % W] (loops)."""
    h, w = img.shape[:2]
    kh, kw = k.shape
    out = np.zeros(img.shape, np.float64)
    for i in range(h):
        for j in range(w):
            for a in range(kh):
                for b in range(kw):
                    out[i, j] += k[a, b] * img[(i - a + kh // 2) % h, (j - b + kw // 2) % w]
    return out


@pytest.mark.parametrize("kshape", [(3, 3), (4, 4), (2, 5), (7, 7)])
def test_blur_wrap_np_matches_formula_and_scipy(kshape):
    from scipy import ndimage

    rng = np.random.default_rng(1)
    k = rng.random(kshape)
    k /= k.sum()
    img = rng.random((9, 11))
    np.testing.assert_allclose(blur_wrap_np(img, k), _naive_wrap(img, k), atol=1e-12)
    u8 = rng.integers(0, 256, (10, 12, 3)).astype(np.uint8)
    np.testing.assert_array_equal(blur_wrap_np(u8, k), ndimage.convolve(u8, k[..., None], mode="wrap"))
    f32 = u8.astype(np.float32) / 255
    np.testing.assert_array_equal(blur_wrap_np(f32, k), ndimage.convolve(f32, k[..., None], mode="wrap"))


@pytest.mark.data
def test_blur_wrap_np_bit_exact_with_scipy_on_real_images(data_root):
    from scipy import ndimage

    img, _ = read_image(data_root / "testsets" / "set5" / "bird.png")
    img = img[:96, :128]
    for i in range(1, 6):
        k = np.load(data_root / "kernels" / f"kernel_{i}.npy")
        ours = blur_wrap_np(img, k)
        ref = ndimage.convolve(img, np.expand_dims(k, axis=2), mode="wrap")
        assert ours.dtype == np.uint8
        np.testing.assert_array_equal(ours, ref)


def test_blur_circular_torch_matches_numpy_and_batches():
    rng = np.random.default_rng(2)
    img = rng.random((2, 3, 12, 10))
    ks = rng.random((2, 5, 4))
    ks /= ks.sum(axis=(1, 2), keepdims=True)
    x = torch.from_numpy(img)
    per = blur_circular(x, torch.from_numpy(ks))
    for n in range(2):
        ref = blur_wrap_np(img[n].transpose(1, 2, 0), ks[n]).transpose(2, 0, 1)
        np.testing.assert_allclose(per[n].numpy(), ref, atol=1e-12)
    shared = blur_circular(x, torch.from_numpy(ks[0]))
    np.testing.assert_allclose(shared[1].numpy(), blur_wrap_np(img[1].transpose(1, 2, 0), ks[0]).transpose(2, 0, 1), atol=1e-12)
    assert blur_circular(x[0, 0], torch.from_numpy(ks[0])).shape == (12, 10)
    with pytest.raises(ValueError, match="kernel"):
        blur_circular(x, torch.ones(3, 3, 3))


def test_downsample_and_usrnet_pipeline_np():
    from scipy import ndimage

    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (16, 24, 3)).astype(np.uint8)
    np.testing.assert_array_equal(downsample_np(img, 2), img[::2, ::2])
    k = gaussian_kernel(7, 1.6)
    out = usrnet_degrade_np(img, k, scale=2, sigma=2.55, seed=0)
    # the KAIR-style reference, step by step with scipy and the global numpy RNG
    ref = ndimage.convolve(img, np.expand_dims(k, axis=2), mode="wrap")[::2, ::2]
    ref = np.float32(ref / 255.0)
    np.random.seed(0)
    ref += np.random.normal(0, 2.55 / 255.0, ref.shape)
    assert out.dtype == np.float32 and out.shape == (8, 12, 3)
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(TypeError, match="uint8"):
        usrnet_degrade_np(img.astype(np.float32), k)


def test_usrnet_torch_pipeline():
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    k = torch.from_numpy(gaussian_kernel(5, 1.0))
    y0 = usrnet_degrade(x, k, 2, 0.0)
    np.testing.assert_allclose(y0.numpy(), downsample(blur_circular(x, k), 2).numpy())
    assert torch.equal(downsample(x, 4), x[..., ::4, ::4])
    g = torch.Generator().manual_seed(0)
    y = usrnet_degrade(x, k, 2, 7.65, g)
    assert y.shape == (2, 3, 8, 8) and not torch.equal(y, y0)
    with pytest.raises(ValueError, match="divisible"):
        usrnet_degrade(x[..., :15], k, 2)


# ----------------------------------------------------------------------------- kernels
def test_gaussian_kernels_formula_and_orientation():
    k = gaussian_kernel(7, 1.3)
    yy, xx = np.mgrid[-3:4, -3:4]
    ref = np.exp(-(xx**2 + yy**2) / (2 * 1.3**2))
    np.testing.assert_allclose(k, ref / ref.sum(), atol=1e-15)
    a0 = anisotropic_gaussian_kernel(21, 3.0, 1.0, 0.0)
    a90 = anisotropic_gaussian_kernel(21, 3.0, 1.0, math.pi / 2)
    np.testing.assert_allclose(a90, a0.T, atol=1e-15)
    # second moments of a large kernel approach the covariance R diag(9, 1) R^T
    big = anisotropic_gaussian_kernel(41, 4.0, 1.5, math.pi / 6)
    yy, xx = np.mgrid[-20:21, -20:21]
    u, v = xx, -yy
    cov = np.array([[(big * u * u).sum(), (big * u * v).sum()], [(big * u * v).sum(), (big * v * v).sum()]])
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    r = np.array([[c, -s], [s, c]])
    np.testing.assert_allclose(cov, r @ np.diag([16.0, 2.25]) @ r.T, atol=1e-3)
    np.testing.assert_allclose(anisotropic_gaussian_kernel(9, 2.0, 2.0, 0.7), gaussian_kernel(9, 2.0), atol=1e-15)


def test_motion_kernels():
    k1, k2 = motion_kernel(15, seed=3), motion_kernel(15, seed=3)
    assert np.array_equal(k1, k2)
    assert not np.array_equal(k1, motion_kernel(15, seed=4))
    for k in (k1, motion_kernel((9, 13), length=20, jitter=1.0, seed=0)):
        assert k.sum() == pytest.approx(1.0, abs=1e-12) and (k >= 0).all()
        assert (k > 0).sum() > 3  # spread along a path, not a dot
    # jitter 0: a straight segment of the requested length -> a rank-1 second-moment matrix
    line = motion_kernel(31, length=12, jitter=0.0, seed=1)
    yy, xx = np.mgrid[-15:16, -15:16]
    my, mx = (line * yy).sum(), (line * xx).sum()
    cov = np.array([[(line * (xx - mx) ** 2).sum(), (line * (xx - mx) * (yy - my)).sum()],
                    [(line * (xx - mx) * (yy - my)).sum(), (line * (yy - my) ** 2).sum()]])
    ev = np.linalg.eigvalsh(cov)
    assert ev[0] < 0.2 and ev[1] == pytest.approx(12**2 / 12, rel=0.15)  # uniform segment variance L^2/12


def test_check_kernel_errors():
    with pytest.raises(KernelError, match="2-D"):
        check_kernel(np.ones((3, 3, 1)))
    with pytest.raises(KernelError, match="positive sum"):
        check_kernel(-np.ones((3, 3)))
    with pytest.raises(KernelError, match="NaN"):
        check_kernel(np.full((3, 3), np.nan))
    assert isinstance(KernelError("x"), ValueError)


def test_load_kernel_npy_mat_image(tmp_path, monkeypatch):
    import scipy.io

    k = gaussian_kernel(7, 1.5) * 3.0
    np.save(tmp_path / "k.npy", k)
    np.testing.assert_allclose(load_kernel(tmp_path / "k.npy"), k / k.sum(), atol=1e-15)
    scipy.io.savemat(tmp_path / "k.mat", {"kernel": k})
    np.testing.assert_allclose(load_kernel(tmp_path / "k.mat"), k / k.sum(), atol=1e-15)
    cells = np.empty((1, 2), dtype=object)
    cells[0, 0], cells[0, 1] = np.ones((3, 3)), k
    scipy.io.savemat(tmp_path / "c.mat", {"kernels": cells, "other": np.ones((2, 2))})
    with pytest.raises(KernelError, match="key="):
        load_kernel(tmp_path / "c.mat")
    np.testing.assert_allclose(load_kernel(tmp_path / "c.mat", key="kernels", index=1), k / k.sum(), atol=1e-15)
    img = np.zeros((5, 5), np.uint8)
    img[2, 1:4] = [255, 128, 255]
    write_image(tmp_path / "k.png", img)
    ref = img.astype(float) / img.sum()
    np.testing.assert_allclose(load_kernel(tmp_path / "k.png"), ref, atol=1e-12)
    np.save(tmp_path / "bad.npy", np.ones((3, 3, 3)))
    with pytest.raises(KernelError, match="2-D"):
        load_kernel(tmp_path / "bad.npy")
    with pytest.raises(KernelError, match="does not exist"):
        load_kernel(tmp_path / "missing.npy")
    (tmp_path / "k.txt").write_text("1")
    with pytest.raises(KernelError, match="extension"):
        load_kernel(tmp_path / "k.txt")
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # as if scipy were not installed
    with pytest.raises(ImportError, match="scipy"):
        load_kernel(tmp_path / "k.mat")


@pytest.mark.data
def test_shared_kernels_load(data_root):
    for i in range(1, 6):
        k = load_kernel(data_root / "kernels" / f"kernel_{i}.npy")
        assert k.shape == (7, 7) and k.sum() == pytest.approx(1.0)
