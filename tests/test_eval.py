"""conversenet.evaluate: protocol steps against independent references, outputs, errors.

No data files or checkpoints are needed: images are generated, models are small random ones.
"""

import csv
import json
import math

import numpy as np
import pytest
import torch

from conversenet import evaluate as ev
from conversenet.models import create


def _rng_img(h, w, c, seed=0):
    return (np.random.default_rng(seed).random((h, w, c)) * 255).round().astype(np.uint8)


def _naive_psnr(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = sum((x - y) ** 2 for x, y in zip(a.ravel(), b.ravel())) / a.size
    return 10 * math.log10(255.0**2 / mse)


# ------------------------------------------------------------------ degradations
def test_denoise_degradation_is_seed0_numpy_noise_without_clipping():
    gt = _rng_img(9, 7, 1)
    p = ev.Protocol("denoise", sigma=25)
    g, lq = ev.degrade(gt, p)
    np.random.seed(0)  # the published recipe, written out independently
    ref = np.float32(gt / 255.0)
    ref += np.random.normal(0, 25 / 255.0, ref.shape)
    assert g is gt or np.array_equal(g, gt)
    assert lq.dtype == np.float32 and np.array_equal(lq, ref)
    assert lq.min() < 0 or lq.max() > 1  # not clipped (sigma 25 on random pixels leaves [0, 1])
    _, lq2 = ev.degrade(gt, p)  # seed reset per image: identical second draw
    assert np.array_equal(lq, lq2)


def test_deblur_degradation_matches_scipy_wrap_blur_and_seed0_noise():
    ndimage = pytest.importorskip("scipy.ndimage")
    gt = _rng_img(21, 19, 3, seed=1)
    k = np.random.default_rng(2).random((7, 7))
    k /= k.sum()
    p = ev.Protocol("deblur", sigma=2.55, crop_border=1, kernel=k, kernel_name="k", multiple=8)
    g, lq = ev.degrade(gt, p)
    assert g.shape == (16, 16, 3) and np.array_equal(g, gt[:16, :16])
    blurred = ndimage.convolve(gt[:16, :16], k[..., None], mode="wrap")
    ref = np.float32(blurred / 255.0)
    np.random.seed(0)
    ref += np.random.normal(0, 2.55 / 255.0, ref.shape)
    assert np.array_equal(lq, ref)


def test_sr_degradation_modcrops_and_keeps_constant_images_constant():
    gt = np.full((18, 23, 3), 77, np.uint8)
    p = ev.Protocol("sr", scale=4, crop_border=4, test_y=True, multiple=4)
    g, lq = ev.degrade(gt, p)
    assert g.shape == (16, 20, 3) and lq.shape == (4, 5, 3) and lq.dtype == np.float32
    assert np.allclose(lq, 77 / 255.0, atol=1e-6)


def test_degrade_rejects_float_ground_truth():
    with pytest.raises(TypeError, match="uint8"):
        ev.degrade(np.zeros((8, 8, 1), np.float32), ev.Protocol("denoise", sigma=25))


# ------------------------------------------------------------------ metrics per protocol
def test_measure_sr_uses_border_and_rounded_matlab_y():
    rng = np.random.default_rng(3)
    gt = _rng_img(24, 20, 3, seed=4)
    out = np.clip(gt.astype(int) + rng.integers(-9, 10, gt.shape), 0, 255).astype(np.uint8)
    p = ev.Protocol("sr", scale=2, crop_border=2, test_y=True, round_y=True, multiple=2)
    r = ev.measure(out, gt, p)

    def y(img):  # MATLAB rgb2ycbcr on uint8: Y = round(16 + (65.481 R + 128.553 G + 24.966 B) / 255)
        f = img.astype(np.float64)
        return np.round(16 + (65.481 * f[..., 0] + 128.553 * f[..., 1] + 24.966 * f[..., 2]) / 255.0)

    c = (slice(2, -2), slice(2, -2))
    assert r["psnr"] == pytest.approx(_naive_psnr(out[c], gt[c]), abs=1e-9)
    assert r["psnr_y"] == pytest.approx(_naive_psnr(y(out)[c], y(gt)[c]), abs=1e-9)
    assert set(r) == {"psnr", "ssim", "psnr_y", "ssim_y"} and 0 < r["ssim_y"] < 1


def test_measure_deblur_rgb_border_one_no_y():
    gt = _rng_img(16, 16, 3, seed=5)
    out = gt.copy()
    out[0, :, :] = 0  # changes only inside the 1-pixel border: not measured
    out[5, 5, 1] ^= 0x10
    p = ev.Protocol("deblur", sigma=2.55, crop_border=1, kernel=np.ones((7, 7)) / 49, multiple=8)
    r = ev.measure(out, gt, p)
    assert set(r) == {"psnr", "ssim"}
    assert r["psnr"] == pytest.approx(_naive_psnr(out[1:-1, 1:-1], gt[1:-1, 1:-1]), abs=1e-9)


# ------------------------------------------------------------------ protocol choice and checks
def test_protocol_follows_model_task_and_rejects_foreign_options():
    dn = create("converse_dncnn", width=4, num_blocks=1)
    sr = create("converse_srresnet")
    us = create("converse_usrnet", width=4, num_blocks=1, iterations=1)
    assert ev.protocol_for(dn).sigma == 25 and ev.protocol_for(dn, sigma=15).sigma == 15
    p = ev.protocol_for(sr)
    assert (p.task, p.scale, p.crop_border, p.test_y, p.round_y) == ("sr", 4, 4, True, True)
    k = np.ones((7, 7)) / 49
    p = ev.protocol_for(us, kernel=k, kernel_name="kernel_1")
    assert (p.task, p.sigma, p.crop_border, p.multiple) == ("deblur", 2.55, 1, 8)
    with pytest.raises(ev.EvalError, match="noise"):
        ev.protocol_for(sr, sigma=10)
    with pytest.raises(ev.EvalError, match="scale"):
        ev.protocol_for(sr, scale=2)
    with pytest.raises(ev.EvalError, match="kernel"):
        ev.protocol_for(dn, kernel=k)
    with pytest.raises(ev.EvalError, match="needs --kernel"):
        ev.protocol_for(us)
    with pytest.raises(ev.EvalError, match="5x5.*7x7"):
        ev.protocol_for(us, kernel=np.ones((5, 5)) / 25, kernel_name="k5")


@pytest.mark.parametrize(
    "name,kw",
    [
        ("converse_dncnn_official", dict(width=4, num_blocks=1)),
        ("converse_usrnet_official", dict(width=4, num_blocks=1, iterations=1)),
        ("conversenet_official", dict(width=4, num_blocks=1, iterations=1)),
    ],
)
def test_model_min_side_is_the_real_limit(name, kw):
    net = create(name, **kw).eval()
    m = ev.model_min_side(net)

    def runs(s):
        x = torch.rand(1, net.in_channels, s, s)
        with torch.no_grad():
            try:
                net(x, torch.full((1, 7, 7), 1 / 49)) if net.needs_kernel else net(x)
            except ValueError:
                return False
        return True

    assert runs(m)
    if m > 1:
        assert not runs(m - 1)


def test_check_image_size_messages():
    p = ev.Protocol("sr", scale=4, crop_border=4, test_y=True, multiple=4)
    ev.check_image_size("ok", (32, 40, 3), p, 1)
    with pytest.raises(ev.EvalError, match="tiny is 9x40, too small"):
        ev.check_image_size("tiny", (9, 40, 3), p, 1)
    d = ev.Protocol("denoise", sigma=25)
    with pytest.raises(ev.EvalError, match="too small"):
        ev.check_image_size("x", (20, 5, 1), d, 6)


# ------------------------------------------------------------------ names, files, images
def test_resolve_dataset_and_kernel(tmp_path):
    (tmp_path / "testsets" / "set5").mkdir(parents=True)
    (tmp_path / "kernels").mkdir()
    k = np.random.default_rng(0).random((7, 7))
    np.save(tmp_path / "kernels" / "kernel_3.npy", k)
    assert ev.resolve_dataset("set5", tmp_path) == tmp_path / "testsets" / "set5"
    assert ev.resolve_dataset(tmp_path / "kernels", None) == tmp_path / "kernels"  # a folder works as is
    with pytest.raises(ev.EvalError, match="not found"):
        ev.resolve_dataset("set14", tmp_path)
    with pytest.raises(ev.EvalError, match="neither a folder nor a known name"):
        ev.resolve_dataset(tmp_path / "nope", tmp_path)
    arr, name = ev.resolve_kernel("kernel_3", tmp_path)
    assert name == "kernel_3" and np.array_equal(arr, k)  # used as stored, not re-normalised
    np.save(tmp_path / "bad.npy", np.ones((2, 3, 4)))
    with pytest.raises(ev.EvalError, match="2-D"):
        ev.resolve_kernel(tmp_path / "bad.npy")
    with pytest.raises(ev.EvalError, match="not found"):
        ev.resolve_kernel("kernel_9", tmp_path)


def test_load_images_replicates_grey_and_refuses_colour_for_grey_models(tmp_path):
    from conversenet.data import write_image

    write_image(tmp_path / "a.png", _rng_img(12, 12, 1))
    write_image(tmp_path / "b.png", _rng_img(12, 12, 3))
    (tmp_path / "notes.txt").write_text("not an image")
    files = ev.list_images(tmp_path)
    assert [f.name for f in files] == ["a.png", "b.png"]
    imgs = ev.load_images(files, 3)
    assert imgs[0][1].shape == (12, 12, 3) and np.array_equal(imgs[0][1][..., 0], imgs[0][1][..., 2])
    with pytest.raises(ev.EvalError, match="b.png is a colour image but the model is grayscale"):
        ev.load_images(files, 1)
    with pytest.raises(ev.EvalError, match="no images"):
        ev.list_images(_empty(tmp_path))


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_comparison_image_layout():
    lq = np.full((4, 5, 3), 0.5, np.float32)
    out = np.zeros((16, 20, 3), np.uint8)
    gt = np.full((16, 20, 3), 255, np.uint8)
    c = ev.comparison_image(lq, out, gt)
    assert c.shape == (16, 60, 3) and c.dtype == np.uint8
    assert (c[:, :20] == 128).all() and (c[:, 20:40] == 0).all() and (c[:, 40:] == 255).all()


# ------------------------------------------------------------------ whole runs
def test_evaluate_arrays_rows_averages_and_outputs(tmp_path):
    net = create("converse_dncnn", width=4, num_blocks=1).eval()
    imgs = [("x", _rng_img(16, 16, 1, 1)), ("y", _rng_img(20, 12, 1, 2))]
    p = ev.protocol_for(net, sigma=25)
    seen = []
    res = ev.evaluate_arrays(net, imgs, p, out_dir=tmp_path, compare=True, progress=False, on_row=seen.append)
    assert [r["image"] for r in res.rows] == ["x", "y"] and seen == res.rows
    assert res.averages["n"] == 2
    assert res.averages["psnr"] == pytest.approx((res.rows[0]["psnr"] + res.rows[1]["psnr"]) / 2)
    # the row's PSNR is that of the saved restored image against the ground truth
    from conversenet.data import read_image

    saved, _ = read_image(tmp_path / "restored" / "y.png")
    assert res.rows[1]["psnr"] == pytest.approx(_naive_psnr(saved, imgs[1][1]), abs=1e-9)
    cmp_, _ = read_image(tmp_path / "compare" / "y.png")
    assert cmp_.shape == (20, 36, 1) and np.array_equal(cmp_[:, 24:], imgs[1][1])
    csv_path, json_path = ev.write_results(res, tmp_path)
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["image"] for r in rows] == ["x", "y", "average"]
    assert float(rows[2]["psnr"]) == pytest.approx(res.averages["psnr"], abs=1e-6)
    doc = json.loads(json_path.read_text())
    assert doc["protocol"]["sigma"] == 25 and len(doc["images"]) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_evaluate_checks_every_image_before_any_work(tmp_path):
    net = create("converse_dncnn", width=4, num_blocks=1).eval()
    imgs = [("ok", _rng_img(16, 16, 1)), ("small", _rng_img(16, 4, 1))]
    with pytest.raises(ev.EvalError, match="small"):
        ev.evaluate_arrays(net, imgs, ev.protocol_for(net), out_dir=tmp_path, progress=False)
    assert not (tmp_path / "restored").exists()
