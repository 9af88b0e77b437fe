"""End to end through the CLI entry point: conversenet denoise | sr | deblur | degrade | demo |
visualize on small generated images with tiny random-weight checkpoints (offline, fast).

Checks the files written (format, size, bit depth, channels), exit codes, a corrupt file
among good ones, inputs never overwritten, and that denoising a `degrade`d .npy input gives
the PSNR `conversenet.evaluate` computes for the same model and images."""

import hashlib

import numpy as np
import pytest
import torch

from conversenet.cli import main
from conversenet.data import read_image, write_image
from conversenet.models import create

from conftest import TINY_MODELS as TINY  # the shared small models


def _img(seed, shape, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "in"
    write_image(d / "rgb.png", _img(0, (24, 32, 3)))
    write_image(d / "grey16.png", _img(1, (20, 28, 1), np.uint16))
    write_image(d / "photo.jpg", _img(2, (16, 24, 3)))
    write_image(d / "grey.tif", _img(3, (18, 22, 1)))
    write_image(d / "alpha.png", _img(4, (16, 16, 4)))
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n definitely not an image")
    (d / "notes.txt").write_text("ignored: not an image extension")
    return d


def _digests(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir() if p.is_file()}


EXPECT = {  # name -> (format, channels, dtype)
    "rgb.png": ("PNG", 3, np.uint8), "grey16.png": ("PNG", 1, np.uint16), "photo.jpg": ("JPEG", 3, np.uint8),
    "grey.tif": ("TIFF", 1, np.uint8), "alpha.png": ("PNG", 4, np.uint8),
}


def _check_outputs(src, out, scale=1):
    for name, (fmt, c, dtype) in EXPECT.items():
        a_in, _ = read_image(src / name, alpha="keep")
        a, info = read_image(out / name, alpha="keep")
        assert info.format == fmt, name
        assert a.dtype == dtype and a.shape == (a_in.shape[0] * scale, a_in.shape[1] * scale, c), name
    assert not (out / "broken.png").exists() and not (out / "notes.txt").exists()


def test_denoise_folder_with_a_corrupt_file(tiny_ckpts, folder, tmp_path, capsys):
    before = _digests(folder)
    out = tmp_path / "out"
    rc = main(["denoise", str(folder), "-o", str(out), "--weights", str(tiny_ckpts / "converse_dncnn.pth"),
               "--no-progress", "--compare", "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 1
    assert "broken.png" in cap.err and "done: 5 written, 1 failed" in cap.out
    assert "weights:" in cap.out and "converse_dncnn.pth" in cap.out
    _check_outputs(folder, out)
    assert _digests(folder) == before
    cmp_, _ = read_image(out / "compare" / "rgb.png")
    assert cmp_.shape == (24, 2 * 32 + 4, 3)
    # a second run refuses to replace outputs unless asked
    rc = main(["denoise", str(folder / "rgb.png"), "-o", str(out), "--weights", str(tiny_ckpts / "converse_dncnn.pth"),
               "--no-progress"])
    assert rc == 1 and "exists" in capsys.readouterr().err
    rc = main(["denoise", str(folder / "rgb.png"), "-o", str(out), "--weights", str(tiny_ckpts / "converse_dncnn.pth"),
               "--no-progress", "--overwrite"])
    assert rc == 0


def test_inputs_are_never_overwritten(tiny_ckpts, folder, capsys):
    before = _digests(folder)
    rc = main(["denoise", str(folder / "rgb.png"), str(folder / "grey.tif"), "-o", str(folder), "--overwrite",
               "--weights", str(tiny_ckpts / "converse_dncnn.pth"), "--no-progress"])
    assert rc == 1 and "protected" in capsys.readouterr().err
    assert _digests(folder) == before


def test_sr_keeps_format_and_depth_and_tiles(tiny_ckpts, folder, tmp_path, capsys):
    out = tmp_path / "sr"
    w = str(tiny_ckpts / "converse_srresnet.pth")
    rc = main(["sr", str(folder), "-o", str(out), "--weights", w, "--no-progress", "--scale", "4"])
    assert rc == 1  # the corrupt file
    _check_outputs(folder, out, scale=4)
    # forced tiling writes the same sizes
    rc = main(["sr", str(folder / "rgb.png"), "-o", str(tmp_path / "t.png"), "--weights", w, "--no-progress",
               "--tile", "16", "--overlap", "4"])
    assert rc == 0
    a, _ = read_image(tmp_path / "t.png")
    assert a.shape == (96, 128, 3)
    rc = main(["sr", str(folder / "rgb.png"), "-o", str(tmp_path / "x"), "--weights", w, "--scale", "2"])
    assert rc == 2 and "upscales by 4" in capsys.readouterr().err


def test_deblur_with_kernel_and_blind(tiny_ckpts, folder, tmp_path, capsys):
    rc = main(["deblur", str(folder / "rgb.png"), "-o", str(tmp_path / "a"), "--kernel", "gaussian:1.6",
               "--weights", str(tiny_ckpts / "converse_usrnet.pth"), "--no-progress"])
    assert rc == 0
    a, info = read_image(tmp_path / "a" / "rgb.png")
    assert a.shape == (24, 32, 3) and info.format == "PNG"
    np.save(tmp_path / "k.npy", np.ones((5, 5)))
    rc = main(["deblur", str(folder / "grey.tif"), "-o", str(tmp_path / "b"), "--kernel", str(tmp_path / "k.npy"),
               "--weights", str(tiny_ckpts / "converse_usrnet.pth"), "--no-progress"])
    assert rc == 0 and read_image(tmp_path / "b" / "grey.tif")[0].shape == (18, 22, 1)
    rc = main(["deblur", str(folder / "rgb.png"), "-o", str(tmp_path / "c"), "--blind",
               "--weights", str(tiny_ckpts / "conversenet.pth"), "--no-progress"])
    assert rc == 0 and (tmp_path / "c" / "rgb.png").is_file()
    # a blind model with --kernel is refused before any work
    rc = main(["deblur", str(folder / "rgb.png"), "-o", str(tmp_path / "d"), "--kernel", "gaussian:1",
               "--weights", str(tiny_ckpts / "conversenet.pth")])
    assert rc == 2 and "non-blind" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --kernel or --blind is required (argparse)
        main(["deblur", str(folder / "rgb.png"), "-o", str(tmp_path / "e")])


def test_user_errors_exit_2(tiny_ckpts, tmp_path, capsys):
    w = str(tiny_ckpts / "converse_dncnn.pth")
    assert main(["denoise", str(tmp_path / "missing*.png"), "-o", str(tmp_path / "o"), "--weights", w]) == 2
    assert "no such file" in capsys.readouterr().err
    write_image(tmp_path / "a.png", _img(0, (20, 20, 1)))
    assert main(["denoise", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--weights", w, "--tile", "8",
                 "--overlap", "8"]) == 2
    assert "--overlap" in capsys.readouterr().err
    assert main(["denoise", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--weights", w,
                 "--max-memory", "lots"]) == 2
    assert main(["denoise", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"),
                 "--weights", str(tmp_path / "none.pth")]) == 2
    assert "not found" in capsys.readouterr().err


def test_degrade_then_denoise_matches_evaluate(tiny_ckpts, tmp_path, capsys):
    from conversenet.evaluate import evaluate_arrays, protocol_for

    gt_dir = tmp_path / "gt"
    gts = {f"im{i}": _img(10 + i, (24, 20, 1)) for i in range(3)}
    for n, g in gts.items():
        write_image(gt_dir / f"{n}.png", g)
    assert main(["degrade", str(gt_dir), "-o", str(tmp_path / "noisy"), "--sigma", "25"]) == 0
    lq = np.load(tmp_path / "noisy" / "im0.npy")
    assert lq.dtype == np.float32 and lq.shape == (24, 20, 1) and lq.min() < 0  # unclipped, as the protocol
    rc = main(["denoise", str(tmp_path / "noisy"), "-o", str(tmp_path / "den"), "--weights",
               str(tiny_ckpts / "converse_dncnn.pth"), "--no-progress", "--ground-truth", str(gt_dir)])
    out = capsys.readouterr().out
    assert rc == 0
    ours = float(out.split("average PSNR ")[1].split()[0])
    net = create("converse_dncnn", **TINY["converse_dncnn"])
    net.load_state_dict(torch.load(tiny_ckpts / "converse_dncnn.pth"))
    ref = evaluate_arrays(net.eval(), sorted(gts.items()), protocol_for(net, sigma=25), progress=False)
    assert ours == pytest.approx(ref.averages["psnr"], abs=1e-4)
    res = np.load(tmp_path / "den" / "im0.npy")
    assert res.dtype == np.float32 and res.min() >= 0 and res.max() <= 1


def test_demo_needs_builtin_weights_and_works_once_they_exist(package_weights, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out)]) == 2
    assert "no built-in weights" in capsys.readouterr().err
    package_weights("converse_dncnn_tiny", "converse_dncnn", TINY["converse_dncnn"])
    assert main(["demo", "-o", str(out), "--size", "64"]) == 0
    text = capsys.readouterr().out
    assert "built-in weights converse_dncnn_tiny.pth" in text and "PSNR degraded" in text
    a, info = read_image(out / "demo_denoise.png")
    assert info.format == "PNG" and a.shape == (64, 3 * 64 + 2 * 4, 1)


def test_visualize_writes_a_png(tiny_ckpts, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    dest = tmp_path / "fig.png"
    rc = main(["visualize", "-o", str(dest), "--weights", str(tiny_ckpts / "converse_dncnn.pth"), "--size", "32"])
    assert rc == 0 and "layer m_body.0.conv1.3" in capsys.readouterr().out
    a, info = read_image(dest)
    assert info.format == "PNG" and a.shape[0] > 100 and a.shape[1] > a.shape[0]
    assert main(["visualize", "-o", str(dest), "--weights", str(tiny_ckpts / "converse_dncnn.pth")]) == 2
    assert main(["visualize", "-o", str(tmp_path / "g.png"), "--weights", str(tiny_ckpts / "converse_dncnn.pth"),
                 "--layer", "7"]) == 2
    assert "out of range" in capsys.readouterr().err
