"""The blind grey and colour denoisers shipped in the package (issue #15): small safetensors
files loaded without pickle, records with a model card, denoising at several noise levels
with one network, and the defaults that follow the image (grey -> grey model, colour ->
colour model) in ``conversenet.restore`` and ``conversenet denoise``, offline included."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import conversenet
from _reference import psnr_ref
from conversenet.cli import main
from conversenet.data import read_image, sample_image, write_image
from conversenet.models import create
from conversenet.models.weights import get_weights, sha256_file

NAMES = {1: "converse_unet_blind_gray", 3: "converse_unet_blind_color"}
PKG = Path(conversenet.__file__).resolve().parent


@pytest.fixture(autouse=True)
def _quiet_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _scene(channels: int, size: int = 96) -> np.ndarray:
    """The generated scene in [0, 1], (H, W, channels), rounded to 8 bits."""
    img = sample_image(size, seed=3).astype(np.float64) / 255
    if channels == 1:
        img = np.round((img @ np.array([0.299, 0.587, 0.114]))[..., None] * 255) / 255
    return img


@pytest.mark.parametrize("channels", [1, 3])
def test_shipped_file_is_small_safetensors_with_record_and_card(channels):
    ws = get_weights(NAMES[channels])
    path = PKG / "weights" / ws.file
    assert ws.origin == "package" and ws.task == "denoise" and ws.sigma is None and ws.channels == channels
    assert path.suffix == ".safetensors" and path.stat().st_size <= 10 * 1024 * 1024
    assert sha256_file(path) == ws.sha256
    from safetensors.torch import load_file

    sd = load_file(str(path))  # no pickle involved
    net = create(ws.name)
    assert set(sd) == set(net.state_dict())
    assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())
    card = ws.card_path()
    assert card is not None and card.is_file()
    text = card.read_text()
    for must in ("Data", "Degradation", "Iterations", "Scores", "Limits", "Licence"):
        assert f"## {must}" in text, must


def test_readme_quotes_the_recorded_blind_scores():
    readme = (PKG.parent / "README.md").read_text(encoding="utf-8")
    readme = " ".join(readme.split())  # the line wraps of the bullet do not matter
    for name, datasets in (("converse_unet_blind_gray", ("set12", "bsd68")),
                           ("converse_unet_blind_color", ("cbsd68",))):
        rec = {s.dataset: s.metrics["psnr"] for s in get_weights(name).scores}  # "set12 sigma=15": dB
        for ds in datasets:
            quoted = " / ".join(f"{rec[f'{ds} sigma={sig}']:.2f}" for sig in (15, 25, 50))
            assert quoted in readme, (name, ds, quoted)


def test_loading_the_shipped_weights_never_unpickles(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("torch.load called for a safetensors file")

    monkeypatch.setattr(torch, "load", refuse)
    net = create("converse_unet_blind_color", pretrained=True)
    assert not net.training and net.in_channels == 3


@pytest.mark.parametrize("channels", [1, 3])
def test_one_blind_network_denoises_several_noise_levels(channels):
    torch.set_num_threads(1)
    net = create(NAMES[channels], pretrained=True)
    clean = _scene(channels)
    gains = {}
    for sigma in (10, 25, 50):
        noisy = clean + np.random.default_rng(sigma).normal(0, sigma / 255, clean.shape)
        with torch.no_grad():
            out = net(torch.from_numpy(noisy).permute(2, 0, 1)[None].float())[0].permute(1, 2, 0).double().numpy()
        gains[sigma] = psnr_ref(np.clip(out, 0, 1), clean, peak=1.0) - psnr_ref(noisy, clean, peak=1.0)
    # no noise level given: the same weights must help at every level, more at higher noise
    assert gains[10] > 1.5 and gains[25] > 6.0 and gains[50] > 9.0, gains


@pytest.mark.parametrize("channels", [1, 3])
def test_restore_picks_the_model_by_image_channels(channels, capsys, monkeypatch):
    monkeypatch.setenv("CONVERSENET_OFFLINE", "1")
    import conversenet.restore as R

    R._MODEL_CACHE.clear()
    img = (_scene(channels) * 255).astype(np.uint8)
    if channels == 1:
        img = img[..., 0]
    out = conversenet.restore(img, task="denoise", verbose=True)
    assert out.shape == img.shape and out.dtype == np.uint8
    said = capsys.readouterr().out
    assert NAMES[channels] in said and NAMES[4 - channels] not in said
    # a noise level given: the sigma-trained default, not the blind model
    conversenet.restore(img, task="denoise", sigma=25, verbose=True)
    assert "blind" not in capsys.readouterr().out


@pytest.mark.parametrize("named", [1, 3])
@pytest.mark.parametrize("image_channels", [None, 1, 3])
def test_a_named_blind_set_is_the_one_loaded_whatever_the_image(named, image_channels, monkeypatch):
    # both sets share the architecture: naming one must never load the other
    monkeypatch.setenv("CONVERSENET_OFFLINE", "1")
    import conversenet.restore as R

    lm = R.load_model("denoise", NAMES[named], "builtin", channels=image_channels)
    assert lm.model.in_channels == named
    assert f"{NAMES[named]}.safetensors" in lm.source and NAMES[4 - named] not in lm.source


def _noisy_files(folder: Path) -> None:
    rng = np.random.default_rng(0)
    for name, ch in (("colour.png", 3), ("grey.png", 1)):
        clean = _scene(ch, 64)
        noisy = np.clip(clean + rng.normal(0, 30 / 255, clean.shape), 0, 1)
        write_image(folder / name, np.round((noisy if ch == 3 else noisy[..., 0]) * 255).astype(np.uint8))


def test_cli_without_options_uses_the_colour_model_for_colour_images(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CONVERSENET_OFFLINE", "1")
    _noisy_files(tmp_path)
    out = tmp_path / "out"
    assert main(["denoise", str(tmp_path / "colour.png"), str(tmp_path / "grey.png"), "-o", str(out),
                 "--no-progress", "--workers", "0", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "weights for colour images: built-in weights converse_unet_blind_color.safetensors" in text
    assert "weights for grey images: built-in weights converse_unet_blind_gray.safetensors" in text
    a, _ = read_image(out / "colour.png")
    g, _ = read_image(out / "grey.png")
    assert a.shape == (64, 64, 3) and g.shape == (64, 64, 1)
    # each file went through its own model: the colour output equals the colour network's result
    noisy = read_image(tmp_path / "colour.png")[0].astype(np.float32) / 255
    net = create("converse_unet_blind_color", pretrained=True)
    with torch.no_grad():
        ref = net(torch.from_numpy(noisy).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    assert np.abs(a.astype(np.int16) - np.round(np.clip(ref, 0, 1) * 255).astype(np.int16)).max() <= 1


def test_cli_with_sigma_keeps_the_sigma_trained_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CONVERSENET_OFFLINE", "1")
    _noisy_files(tmp_path)
    assert main(["denoise", str(tmp_path / "grey.png"), "-o", str(tmp_path / "o"), "--sigma", "25",
                 "--no-progress", "--workers", "0", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "blind" not in text and "weights:" in text


def test_demo_restores_a_colour_scene_with_the_colour_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CONVERSENET_OFFLINE", "1")
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--size", "64", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "converse_unet_blind_color" in text
    found = re.search(r"PSNR degraded: ([\d.]+) dB\s+restored: ([\d.]+) dB", text)
    noisy_db, restored_db = float(found.group(1)), float(found.group(2))
    assert restored_db > noisy_db + 4.0
    a, info = read_image(out / "demo_denoise.png")
    assert a.shape[2] == 3 and not (a[..., 0] == a[..., 1]).all()  # a colour picture, not grey


def test_chroma_subsampling_read_from_the_jpeg_header(tmp_path):
    from PIL import Image

    from conversenet.data import chroma_subsampling

    rgb = (_scene(3, 32) * 255).astype(np.uint8)
    for sub, want in ((2, "4:2:0"), (1, "4:2:2"), (0, None)):
        Image.fromarray(rgb).save(tmp_path / f"s{sub}.jpg", quality=90, subsampling=sub)
        assert chroma_subsampling(tmp_path / f"s{sub}.jpg") == want
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.jpg", quality=90)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    for name in ("grey.jpg", "c.png", "bad.jpg", "missing.jpg"):
        assert chroma_subsampling(tmp_path / name) is None, name


def test_cli_notes_once_when_a_colour_jpeg_has_subsampled_colour(tmp_path, capsys, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("CONVERSENET_OFFLINE", "1")
    rng = np.random.default_rng(1)
    noisy = np.clip(np.round(_scene(3, 48) * 255 + rng.normal(0, 25, (48, 48, 3))), 0, 255).astype(np.uint8)
    for name, sub in (("a420.jpg", 2), ("b420.jpg", 2), ("c444.jpg", 0)):
        Image.fromarray(noisy).save(tmp_path / name, quality=95, subsampling=sub)
    args = ["--no-progress", "--workers", "0", "--threads", "1"]
    assert main(["denoise", str(tmp_path / "c444.jpg"), "-o", str(tmp_path / "o1")] + args) == 0
    assert "reduced resolution" not in capsys.readouterr().out
    assert main(["denoise", str(tmp_path / "a420.jpg"), str(tmp_path / "b420.jpg"), "-o", str(tmp_path / "o2")]
                + args) == 0
    out = capsys.readouterr().out
    assert out.count("reduced resolution (JPEG 4:2:0)") == 1
    assert "--model converse_unet_blind_gray" in out
    # a model named: no note (the user chose)
    assert main(["denoise", str(tmp_path / "a420.jpg"), "-o", str(tmp_path / "o3"), "--model",
                 "converse_unet_blind_gray", "--weights", "builtin"] + args) == 0
    assert "reduced resolution" not in capsys.readouterr().out
    assert read_image(tmp_path / "o3" / "a420.jpg")[0].shape == (48, 48, 3)  # the grey model, per channel
