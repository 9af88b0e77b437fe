"""The built-in grayscale sigma=25 DnCNN shipped in the package (conversenet/weights/dncnn.pth):
small, a plain float32 state dict, loaded strictly by ``create("dncnn", pretrained="builtin")``,
and it actually denoises (a smooth generated image with sigma=25 noise gains > 3 dB)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import conversenet
from _reference import psnr_ref
from conversenet.models import create

WEIGHTS = Path(conversenet.__file__).resolve().parent / "weights" / "dncnn.pth"


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return psnr_ref(a, b, peak=1.0)


def test_builtin_file_is_small_plain_float32():
    assert WEIGHTS.is_file()
    assert WEIGHTS.stat().st_size <= 5 * 1024 * 1024
    sd = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert isinstance(sd, dict) and sd
    assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())
    assert set(sd) == set(create("dncnn").state_dict())  # strict: no missing or extra keys


def test_builtin_dncnn_denoises_a_smooth_image():
    net = create("dncnn", pretrained="builtin")
    assert not net.training
    h, w = 96, 128
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    clean = 0.5 + 0.25 * np.sin(xx / 9.0 + yy / 13.0) + 0.15 * np.cos(yy / 7.0 - xx / 17.0)
    clean = np.round(np.clip(clean, 0, 1) * 255) / 255
    noisy = clean + np.random.default_rng(0).normal(0, 25 / 255, clean.shape)
    with torch.no_grad():
        out = net(torch.from_numpy(noisy).float()[None, None])[0, 0].clamp(0, 1).double().numpy()
    gain = _psnr(out, clean) - _psnr(noisy, clean)
    assert gain > 3.0, f"PSNR gain {gain:.2f} dB"


def test_eval_cli_reads_builtin_weights(tmp_path):
    import json
    import subprocess
    import sys

    from PIL import Image

    yy, xx = np.mgrid[0:48, 0:40].astype(np.float64)
    img = np.round(255 * (0.5 + 0.3 * np.sin(xx / 6.0) * np.cos(yy / 8.0))).astype(np.uint8)
    (tmp_path / "imgs").mkdir()
    Image.fromarray(img).save(tmp_path / "imgs" / "a.png")

    def run(model):
        return subprocess.run([sys.executable, "-m", "conversenet", "eval", "--model", model, "--weights", "builtin",
                               "--dataset", str(tmp_path / "imgs"), "--sigma", "25", "--no-save-images",
                               "--out", str(tmp_path / model), "--no-progress", "--threads", "1"],
                              capture_output=True, text=True)

    r = run("dncnn")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "dncnn" / "results.json").read_text())
    assert res["averages"]["n"] == 1 and res["averages"]["psnr"] > 20.17 + 3
    r = run("conv_dncnn")  # no built-in file for it: one-line error, exit 2
    assert r.returncode == 2 and "no built-in weights for 'conv_dncnn'" in r.stderr and "Traceback" not in r.stderr
