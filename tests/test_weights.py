"""Official checkpoints: lookup order, SHA-256 checks, download failures, strict loading,
and the faithfulness of the released networks against the authors' published numbers."""

import shutil
import time
import urllib.error

import numpy as np
import pytest
import torch

from _reference import psnr_ref
from _train_helpers import sha256_file as _sha
from conversenet.models import WeightsError, create
from conversenet.models import weights as w

PRESETS = {
    "converse_dncnn_official": ("converse_dncnn.pth", 796_353),
    "converse_srresnet_official": ("converse_srresnet.pth", 699_072),
    "conversenet_official": ("conversenet.pth", 243_267),
    "converse_usrnet_official": ("converse_usrnet.pth", 307_987),
}


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """Empty env folder and hub cache; the network is never touched unless a test mocks it."""
    env = tmp_path / "env"
    hub = tmp_path / "hub"
    env.mkdir()
    monkeypatch.setenv(w.ENV_VAR, str(env))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def offline(url, dst, progress=False):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(w, "_fetch", offline)
    return env, hub / "checkpoints" / "conversenet"




def test_hashes_are_hex_and_cover_the_four_files():
    assert sorted(w.OFFICIAL_SHA256) == sorted(f for f, _ in PRESETS.values())
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in w.OFFICIAL_SHA256.values())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_official_loads_strict(name, official_dir, monkeypatch):
    monkeypatch.setenv(w.ENV_VAR, str(official_dir))
    filename, count = PRESETS[name]
    model = create(name, pretrained="official", download=False)
    assert sum(p.numel() for p in model.parameters()) == count
    sd = torch.load(official_dir / filename, weights_only=True)
    own = model.state_dict()
    assert set(own) == set(sd)
    assert all(torch.equal(own[k], sd[k]) for k in sd)
    assert sum(v.numel() for v in sd.values()) == count
    assert not model.training


def test_official_files_match_recorded_hashes(official_dir):
    for filename, expected in w.OFFICIAL_SHA256.items():
        assert _sha(official_dir / filename) == expected


def test_wrong_hash_is_reported(isolated):
    env, _ = isolated
    bad = env / "conversenet.pth"
    torch.save({"x": torch.zeros(3)}, bad)
    actual = _sha(bad)
    with pytest.raises(WeightsError) as e:
        create("conversenet_official", pretrained="official")
    msg = str(e.value)
    assert "SHA-256 mismatch for conversenet.pth" in msg
    assert w.OFFICIAL_SHA256["conversenet.pth"] in msg and actual in msg
    assert w.ENV_VAR in msg and "weights_path" in msg and "hub cache" in msg


def test_missing_offline_is_reported(isolated):
    _, cache = isolated
    with pytest.raises(WeightsError) as e:
        create("converse_usrnet_official", pretrained="official")
    msg = str(e.value)
    assert "converse_usrnet.pth was not found locally" in msg
    assert "downloading it from https://github.com/cszn/ConverseNet/raw/main/model_zoo/converse_usrnet.pth failed" in msg
    assert w.ENV_VAR in msg and "weights_path" in msg
    assert not any(cache.glob("*")), "a failed download must leave nothing in the cache"


def test_no_download_flag(isolated):
    with pytest.raises(WeightsError, match="download=False"):
        create("conversenet_official", pretrained="official", download=False)


def test_explicit_path_missing(tmp_path):
    with pytest.raises(WeightsError, match="not found at the explicit path"):
        create("conversenet_official", pretrained="official", weights_path=tmp_path / "nope.pth")


def test_download_goes_to_hub_cache(isolated, official_dir, monkeypatch):
    _, cache = isolated
    urls = []

    def fake_fetch(url, dst, progress=False):
        urls.append(url)
        shutil.copyfile(official_dir / "conversenet.pth", dst)

    monkeypatch.setattr(w, "_fetch", fake_fetch)
    create("conversenet_official", pretrained="official")
    assert urls == ["https://github.com/cszn/ConverseNet/raw/main/model_zoo/conversenet.pth"]
    assert sorted(p.name for p in cache.iterdir()) == ["conversenet.pth"]
    # the second call finds it in the cache and does not download again
    create("conversenet_official", pretrained="official")
    assert len(urls) == 1


def test_corrupt_download_is_rejected(isolated, monkeypatch):
    _, cache = isolated

    def fake_fetch(url, dst, progress=False):
        dst.write_bytes(b"<html>rate limited</html>")

    monkeypatch.setattr(w, "_fetch", fake_fetch)
    with pytest.raises(WeightsError, match="SHA-256 mismatch for converse_dncnn.pth .*downloaded from"):
        create("converse_dncnn_official", pretrained="official")
    assert not (cache / "converse_dncnn.pth").exists()
    assert not any(cache.glob("*.part"))


def test_ctrl_c_as_the_part_file_is_created_leaves_nothing_in_the_cache(isolated, monkeypatch):
    """SIGINT delivered the moment mkstemp has created ``<file>.<random>.part`` (before its name
    is returned) stops the download, and the cache is left empty."""
    import os
    import signal
    import tempfile

    _, cache = isolated
    real = tempfile.mkstemp
    fetched = []

    def mkstemp_then_sigint(**kw):
        fd, name = real(**kw)
        os.kill(os.getpid(), signal.SIGINT)  # handled at Python's next check, i.e. in here
        for _ in range(1000):
            pass
        return fd, name

    monkeypatch.setattr(w.tempfile, "mkstemp", mkstemp_then_sigint)
    monkeypatch.setattr(w, "_fetch", lambda *a, **k: fetched.append(a))
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            create("converse_dncnn_official", pretrained="official")
    finally:
        signal.signal(signal.SIGINT, old)
    assert fetched == [] and list(cache.iterdir()) == []


def test_lookup_order(isolated, official_dir, tmp_path):
    env, cache = isolated
    cache.mkdir(parents=True)
    # a corrupt copy in the cache is not reached when the env folder has the file
    (cache / "conversenet.pth").write_bytes(b"junk")
    shutil.copyfile(official_dir / "conversenet.pth", env / "conversenet.pth")
    assert w.find_official("conversenet.pth") == env / "conversenet.pth"
    # an explicit path wins over a corrupt file in the env folder
    (env / "conversenet.pth").write_bytes(b"junk")
    good = tmp_path / "mine"
    good.mkdir()
    shutil.copyfile(official_dir / "conversenet.pth", good / "conversenet.pth")
    assert w.find_official("conversenet.pth", path=good) == good / "conversenet.pth"
    create("conversenet_official", pretrained="official", weights_path=good / "conversenet.pth")
    # without the explicit path the corrupt env file is reported, not skipped
    with pytest.raises(WeightsError, match=r"SHA-256 mismatch.*\$CONVERSENET_WEIGHTS_DIR"):
        w.find_official("conversenet.pth")


def test_checkpoint_of_another_model(official_dir):
    with pytest.raises(WeightsError) as e:
        create("converse_dncnn_official", pretrained=official_dir / "conversenet.pth")
    msg = str(e.value)
    assert "does not fit model 'converse_dncnn_official'" in msg
    assert "missing keys" in msg and "m_head.* x2" in msg and "m_tail.* x2" in msg
    assert "unexpected keys" in msg and "conv1.* x2" in msg and "p.* x98" in msg


def test_checkpoint_of_another_model_offline(tmp_path):
    path = tmp_path / "dncnn.pth"
    torch.save(create("dncnn", width=8, depth=3).state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit model 'conv_dncnn'.*missing keys.*unexpected keys.*model.0.weight"):
        create("conv_dncnn", pretrained=path, width=8, num_blocks=1)
    # same keys, other widths: the shapes are named
    torch.save(create("conv_dncnn", width=8, num_blocks=1).state_dict(), path)
    with pytest.raises(WeightsError, match=r"shape mismatches \(17\).*m_body.0.conv1.1.weight: checkpoint \(16, 8, 1, 1\) vs model \(8, 4, 1, 1\)"):
        create("conv_dncnn", pretrained=path, width=4, num_blocks=1)


def test_not_a_state_dict(tmp_path):
    p = tmp_path / "x.pth"
    p.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="cannot load weights .*x.pth: not a torch.save file"):
        create("dncnn", pretrained=p)
    with pytest.raises(WeightsError, match="weights file not found"):
        create("dncnn", pretrained=tmp_path / "absent.pth")


# ------------------------------------------------------------------ faithfulness
def _read(path, mode):
    from PIL import Image

    return np.asarray(Image.open(path).convert(mode))


_psnr = psnr_ref  # (a, b, peak=255.0, border=0)


@pytest.mark.slow
def test_converse_dncnn_set12_01_matches_authors(official_dir, data_root):
    skm = pytest.importorskip("skimage.metrics")
    img = _read(data_root / "testsets" / "set12" / "01.png", "L")
    np.random.seed(0)
    noisy = img.astype(np.float64) / 255.0 + np.random.normal(0, 25 / 255, img.shape)
    net = create("converse_dncnn_official", pretrained="official", weights_path=official_dir)
    t = time.perf_counter()
    with torch.no_grad():
        out = net(torch.from_numpy(noisy).float()[None, None])
    elapsed = time.perf_counter() - t
    est = np.uint8((out[0, 0].clamp(0, 1).numpy() * 255.0).round())
    # MATLAB-style SSIM: 11x11 Gaussian window, sigma 1.5, population covariances
    ssim = skm.structural_similarity(
        est.astype(np.float64), img.astype(np.float64), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=255,
    )
    print(f"set12/01 sigma=25: PSNR {_psnr(est, img):.4f} dB, SSIM {ssim:.5f}, {elapsed:.1f} s")
    assert abs(_psnr(est, img) - 30.44) <= 0.01
    assert abs(ssim - 0.8805) <= 0.0005


@pytest.mark.slow
def test_converse_usrnet_bsd100_101085_kernel1_matches_authors(official_dir, data_root):
    ndimage = pytest.importorskip("scipy.ndimage")
    img = _read(data_root / "testsets" / "bsd100" / "101085.jpg", "RGB")
    h, w_ = img.shape[:2]
    img = img[: h - h % 8, : w_ - w_ % 8]
    kernel = np.load(data_root / "kernels" / "kernel_1.npy")
    blurred = ndimage.convolve(img, kernel[..., None], mode="wrap").astype(np.float32) / 255.0
    np.random.seed(0)
    blurred += np.random.normal(0, 2.55 / 255, blurred.shape)
    x = torch.from_numpy(np.ascontiguousarray(blurred)).permute(2, 0, 1)[None].float()
    net = create("converse_usrnet_official", pretrained="official", weights_path=official_dir)
    with torch.no_grad():
        out = net(x, torch.from_numpy(kernel).float()[None, None])
    est = np.uint8((out[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round())
    assert abs(_psnr(est, img, border=1) - 28.59) <= 0.01


def test_converse_srresnet_set5_head_matches_authors(official_dir, data_root):
    from conversenet.data.imresize import imresize

    img = _read(data_root / "testsets" / "set5" / "head.png", "RGB")
    h, w_ = img.shape[:2]
    img = img[: h - h % 4, : w_ - w_ % 4]
    low = imresize(img.astype(np.float32) / 255.0, 1 / 4)  # MATLAB bicubic, antialiased
    net = create("converse_srresnet_official", pretrained="official", weights_path=official_dir)
    with torch.no_grad():
        out = net(torch.from_numpy(np.ascontiguousarray(low)).permute(2, 0, 1)[None].float())
    est = np.uint8((out[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round())
    assert est.shape == img.shape
    assert abs(_psnr(est, img, border=4) - 29.95) <= 0.01  # RGB PSNR of the authors' code
