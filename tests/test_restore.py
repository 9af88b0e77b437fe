"""conversenet.restore: kinds in = kinds out, channel handling, tiling plans, memory estimate,
kernels, weights resolution (sidecars, built-in folder, auto fallback), sample scene."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import conversenet
from conversenet import restore as R
from conversenet.models import create
from conversenet.tiling import tile_starts


class Gain(nn.Module):
    """Pointwise fake model: channel c is multiplied by gains[c], then (SR) nearest upsampling."""

    task = "denoise"

    def __init__(self, gains, scale=1, task="denoise"):
        super().__init__()
        self.g = nn.Parameter(torch.tensor(gains, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.in_channels = len(gains)
        self.scale = scale
        self.needs_kernel = False
        self.task = task

    def forward(self, x):
        y = x * self.g
        return y.repeat_interleave(self.scale, -2).repeat_interleave(self.scale, -1) if self.scale > 1 else y


# ------------------------------------------------------------------ kinds and channels
@pytest.mark.parametrize("shape,dtype", [((9, 11), np.uint8), ((9, 11, 1), np.uint16), ((9, 11, 3), np.uint8),
                                         ((9, 11, 4), np.uint16), ((9, 11), np.float32)])
def test_identity_model_round_trips_numpy_exactly(shape, dtype):
    rng = np.random.default_rng(0)
    if dtype == np.float32:
        img = rng.random(shape).astype(np.float32)
    else:
        img = rng.integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype)
    c = 1 if len(shape) == 2 else (shape[2] - 1 if shape[2] in (2, 4) else shape[2])
    out = R.restore(img, model=Gain([1.0] * c))
    assert out.shape == img.shape and out.dtype == img.dtype
    if dtype == np.float32:
        np.testing.assert_allclose(out, img, atol=1e-7)
    else:
        assert np.array_equal(out, img)


def test_pil_and_tensor_kinds():
    from PIL import Image

    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (7, 5, 3)).astype(np.uint8)
    out = R.restore(Image.fromarray(a), model=Gain([1.0, 1.0, 1.0]))
    assert isinstance(out, Image.Image) and out.mode == "RGB" and np.array_equal(np.asarray(out), a)
    g = Image.fromarray(a[..., 0])
    out = R.restore(g, model=Gain([1.0]))
    assert out.mode == "L" and np.array_equal(np.asarray(out), a[..., 0])
    t = torch.rand(1, 1, 6, 8, dtype=torch.float64)
    o = R.restore(t, model=Gain([0.5]))
    assert o.shape == t.shape and o.dtype == torch.float64
    torch.testing.assert_close(o, (t * 0.5).float().double(), atol=1e-7, rtol=0)
    o3 = R.restore(t[0], model=Gain([0.5]))
    assert o3.shape == (1, 6, 8)


def test_colour_into_grey_model_runs_each_channel():
    rng = np.random.default_rng(2)
    img = rng.random((6, 7, 3)).astype(np.float32)
    out = R.restore_array(img, Gain([0.5]))
    np.testing.assert_allclose(out, img * 0.5, atol=1e-6)


def test_grey_into_rgb_model_uses_bt601_luma_of_the_rgb_result():
    rng = np.random.default_rng(3)
    img = rng.random((5, 6, 1)).astype(np.float32)
    gains = [0.2, 0.6, 1.0]
    out = R.restore_array(img, Gain(gains))
    expect = img[..., 0] * (0.299 * 0.2 + 0.587 * 0.6 + 0.114 * 1.0)
    assert out.shape == (5, 6, 1)
    np.testing.assert_allclose(out[..., 0], expect, atol=1e-6)


def test_alpha_passes_through_and_is_resized_for_sr():
    rng = np.random.default_rng(4)
    img = rng.random((8, 8, 4)).astype(np.float32)
    out = R.restore_array(img, Gain([0.5, 0.5, 0.5]))
    np.testing.assert_allclose(out[..., 3], img[..., 3], atol=0)
    np.testing.assert_allclose(out[..., :3], img[..., :3] * 0.5, atol=1e-6)
    img[..., 3] = 0.25  # a constant alpha stays constant through bicubic resizing
    up = R.restore_array(img, Gain([1.0, 1.0, 1.0], scale=2, task="sr"))
    assert up.shape == (16, 16, 4)
    np.testing.assert_allclose(up[..., 3], 0.25, atol=1e-6)


def test_output_is_clamped():
    out = R.restore_array(np.full((4, 4, 1), 0.8, np.float32), Gain([2.0]))
    assert out.max() == 1.0


# ------------------------------------------------------------------ tiling
@pytest.mark.parametrize("scale", [1, 2])
def test_tiled_equals_whole_for_pointwise_model(scale):
    x = torch.rand(1, 2, 45, 70)
    m = Gain([0.3, 0.9], scale=scale)
    whole = R.run_model(m, x, tile=0)
    tiled = R.run_model(m, x, tile=24, overlap=8)
    assert tiled.shape == (1, 2, 45 * scale, 70 * scale)
    torch.testing.assert_close(tiled, whole, atol=1e-6, rtol=0)


def test_budget_triggers_tiling():
    calls = []

    class Spy(Gain):
        def forward(self, x):
            calls.append(tuple(x.shape[-2:]))
            return super().forward(x)

    m = Spy([1.0])
    x = torch.rand(1, 1, 200, 300)
    R.run_model(m, x, max_memory=10**12)
    assert calls[-1] == (200, 300)
    calls.clear()
    bpp = sum([R.estimate_bytes_per_pixel(m)[0]])
    R.run_model(m, x, max_memory=int(bpp * 100 * 100))  # about 100 x 100 pixels fit
    assert len(calls) > 1 and max(max(c) for c in calls) <= 100


@pytest.mark.parametrize("size,tmax,ov", [(512, 256, 32), (4000, 518, 32), (3000, 473, 32), (100, 37, 5),
                                          (97, 96, 0), (1000, 194, 32)])
def test_plan_tile_is_no_larger_and_needs_no_more_tiles(size, tmax, ov):
    t = R.plan_tile(size, size, 1.0, 1, tile=tmax, overlap=ov)
    assert t <= tmax
    assert len(tile_starts(size, t, ov)) <= len(tile_starts(size, tmax, ov))
    starts = tile_starts(size, t, ov)
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s:s + t] = True
    assert covered.all()


def test_plan_tile_auto_fits_budget_and_errors():
    mem = lambda px: 1000.0 * px  # noqa: E731
    assert R.plan_tile(100, 100, mem, 10**7) is None  # 1e7 bytes fit 100 x 100
    t = R.plan_tile(3000, 4000, mem, 2**28, overlap=32)
    assert t is not None and mem(t * t) <= 2**28
    with pytest.raises(ValueError, match="overlap"):
        R.plan_tile(500, 500, 1.0, 1, tile=16, overlap=16)
    with pytest.raises(ValueError, match="tile"):
        R.plan_tile(500, 500, 1.0, 1, tile=-1)
    assert R.plan_tile(500, 500, 1.0, 1, tile=0) is None


def test_memory_estimate_counts_widest_layer_and_converse_layers():
    net = create("converse_dncnn", width=8, num_blocks=3).eval()
    act, spectra = R.estimate_bytes_per_pixel(net)
    # widest activation: the 2C = 16 channels inside a block, float32; ten alive; 20% margin
    assert act == pytest.approx(1.2 * 10 * 4 * 16)
    assert len(spectra) == 3 and all(s == pytest.approx(1.2 * 4 * 16) for s in spectra)
    # above the per-layer filter cache cap the spectra are not kept
    from conversenet.nn import Converse2d

    cap = Converse2d.filter_cache_bytes
    small, big = 1000, int(cap / spectra[0]) + 10
    assert R.estimate_memory(net, small) == pytest.approx(small * (act + sum(spectra)))
    assert R.estimate_memory(net, big) == pytest.approx(big * act)


def test_parse_memory():
    assert R.parse_memory("4GB") == 4 * 2**30
    assert R.parse_memory("1.5 g") == int(1.5 * 2**30)
    assert R.parse_memory("300mb") == 300 * 2**20
    for bad in ("lots", "-1GB", "0", "4 parsecs"):
        with pytest.raises(ValueError, match="max_memory"):
            R.parse_memory(bad)


# ------------------------------------------------------------------ kernels
def test_make_kernel_gaussian_matches_formula():
    k = R.make_kernel("gaussian:1.6", 7)
    y, x = np.mgrid[-3:4, -3:4]
    ref = np.exp(-(x**2 + y**2) / (2 * 1.6**2))
    np.testing.assert_allclose(k, ref / ref.sum(), rtol=1e-12)


def test_make_kernel_pads_and_rejects():
    k = R.make_kernel(np.arange(1, 10, dtype=float).reshape(3, 3), 7)
    assert k.shape == (7, 7) and k[:2].sum() == 0 and k[:, 5:].sum() == 0
    np.testing.assert_allclose(k[2:5, 2:5], np.arange(1, 10).reshape(3, 3) / 45)
    with pytest.raises(ValueError, match="larger"):
        R.make_kernel(np.ones((9, 9)), 7)
    with pytest.raises(ValueError, match="odd"):
        R.make_kernel(np.ones((4, 4)), 7)
    with pytest.raises(ValueError, match="gaussian:SIGMA"):
        R.make_kernel("gaussian:wide", 7)
    with pytest.raises(ValueError, match="> 0"):
        R.make_kernel("gaussian:0", 7)


# ------------------------------------------------------------------ argument errors
def test_restore_argument_errors():
    img = np.zeros((16, 16), np.uint8)
    with pytest.raises(ValueError, match="task"):
        R.restore(img, task="colorize", model=Gain([1.0]))
    with pytest.raises(TypeError, match="image"):
        R.restore([[0, 1]], model=Gain([1.0]))
    with pytest.raises(TypeError, match="image"):
        R.restore(np.zeros((4, 4), np.int32), model=Gain([1.0]))
    with pytest.raises(ValueError, match="kernel"):
        R.restore(img, model=Gain([1.0]), kernel="gaussian:1")
    with pytest.raises(ValueError, match="scale"):
        R.restore(img, task="sr", model=Gain([1.0], scale=4, task="sr"), scale=2)
    with pytest.raises(ValueError, match="model is a sr network"):
        R.restore(img, task="denoise", model=Gain([1.0], scale=4, task="sr"))


def test_callable_module():
    assert callable(conversenet.restore)
    out = conversenet.restore(np.full((8, 8), 100, np.uint8), model=Gain([1.0]))
    assert out.dtype == np.uint8 and (out == 100).all()


# ------------------------------------------------------------------ weights
def _tiny(folder, stem, name, args):
    net = create(name, **args)
    torch.save(net.state_dict(), folder / f"{stem}.pth")
    (folder / f"{stem}.json").write_text(json.dumps({"model": name, "args": args, "sigma": 25}))
    return net


def test_weights_file_with_sidecar(tmp_path):
    net = _tiny(tmp_path, "mine", "converse_dncnn", {"width": 4, "num_blocks": 1})
    lines = []
    lm = R.load_model("denoise", weights=str(tmp_path / "mine.pth"), device="cpu", log=lines.append)
    assert lm.name == "converse_dncnn" and lm.sigma == 25 and len(lines) == 1 and "mine.pth" in lines[0]
    for k, v in net.state_dict().items():
        assert torch.equal(lm.model.state_dict()[k], v)
    with pytest.raises(R.RestoreError, match="denoise network"):
        R.load_model("sr", weights=str(tmp_path / "mine.pth"), device="cpu")
    with pytest.raises(R.RestoreError, match="not found"):
        R.load_model("denoise", weights=str(tmp_path / "nope.pth"), device="cpu")
    with pytest.raises(R.RestoreError, match="unknown model"):
        R.load_model("denoise", model="nonet", device="cpu")
    with pytest.raises(R.RestoreError, match="is for sr"):
        R.load_model("denoise", model="converse_srresnet", device="cpu")


def test_weights_without_sidecar_that_do_not_fit_are_explained(tmp_path):
    torch.save(create("converse_dncnn", width=4, num_blocks=1).state_dict(), tmp_path / "w.pth")
    with pytest.raises(R.RestoreError, match="does not fit"):
        R.load_model("denoise", weights=str(tmp_path / "w.pth"), device="cpu")


def test_builtin_discovery_by_task(package_weights):
    assert R.builtin_weights("denoise") == []
    with pytest.raises(R.RestoreError, match="no built-in weights"):
        R.load_model("denoise", weights="builtin", device="cpu")
    package_weights("converse_dncnn_tiny", "converse_dncnn", {"width": 4, "num_blocks": 1})
    package_weights("conversenet_tiny", "conversenet", {"width": 4, "num_blocks": 1})
    assert [w.name for w in R.builtin_weights("denoise")] == ["converse_dncnn_tiny"]
    assert R.builtin_weights("sr") == []
    assert [w.name for w in R.builtin_weights("deblur", blind=True)] == ["conversenet_tiny"]
    assert R.builtin_weights("deblur", blind=False) == []
    assert [w.name for w in R.builtin_weights("denoise", model="converse_dncnn")] == ["converse_dncnn_tiny"]
    assert R.builtin_weights("denoise", model="dncnn") == []
    lm = R.load_model("denoise", weights="builtin", device="cpu")
    assert "built-in" in lm.source and lm.name == "converse_dncnn_tiny" and lm.weights.origin == "package"


def test_auto_falls_back_to_builtin_offline(package_weights, tmp_path, monkeypatch):
    import urllib.error

    from conversenet.models import weights as W

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("CONVERSENET_WEIGHTS_DIR", str(empty))
    monkeypatch.setattr(W, "hub_cache_dir", lambda: tmp_path / "hub")

    def no_network(url, dst, progress=False):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(W, "_fetch", no_network)
    with pytest.raises(R.RestoreError, match="no weights found"):
        R.load_model("denoise", weights="auto", device="cpu")
    package_weights("converse_dncnn_tiny", "converse_dncnn", {"width": 4, "num_blocks": 1})
    lines = []
    lm = R.load_model("denoise", weights="auto", device="cpu", log=lines.append)
    assert lm.name == "converse_dncnn_tiny" and "authors' weights unavailable" in lines[0]


def test_auto_prefers_official(official_dir, monkeypatch):
    monkeypatch.setenv("CONVERSENET_WEIGHTS_DIR", str(official_dir))
    lines = []
    lm = R.load_model("denoise", weights="auto", device="cpu", log=lines.append)
    assert lm.name == "converse_dncnn_official" and "converse_dncnn.pth" in lines[0] and lm.sigma == 25


# ------------------------------------------------------------------ sample scene
def test_sample_image_is_deterministic_and_varied():
    a, b = R.sample_image(96, seed=0), R.sample_image(96, seed=0)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, R.sample_image(96, seed=1))
    grad = np.abs(np.diff(a.astype(int), axis=1)).max(axis=2)
    assert (grad > 60).sum() > 50  # strong edges (house, windows)
    assert a.std() > 30
    with pytest.raises(ValueError, match="size"):
        R.sample_image(4)


def test_restore_equals_evaluate_protocol_with_official_weights(official_dir, data_root, monkeypatch):
    """conversenet.restore on the protocol's noisy input gives exactly the uint8 image that
    conversenet.evaluate produces (a 48 x 48 crop of Set12/01 keeps it fast)."""
    from conversenet.data import add_awgn_np, read_image, to_float
    from conversenet.evaluate import Protocol
    from conversenet.evaluate import restore_lq as eval_restore

    monkeypatch.setenv("CONVERSENET_WEIGHTS_DIR", str(official_dir))
    gt, _ = read_image(data_root / "testsets" / "set12" / "01.png")
    gt = np.ascontiguousarray(gt[100:148, 60:108])
    lq = add_awgn_np(to_float(gt), 25, seed=0)
    lm = R.load_model("denoise", weights="official", device="cpu")
    ref = eval_restore(lm.model, lq, Protocol("denoise", sigma=25))
    from conversenet.data import from_float

    ours = from_float(conversenet.restore(lq, task="denoise", weights="official", device="cpu"), 8)
    assert np.array_equal(ours, ref)
