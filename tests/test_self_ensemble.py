"""Self-ensemble (the mean of 8 flipped/rotated passes) in the one inference path.

References are built with numpy's own flips and rotations (``np.rot90`` of the image and of
its transpose: the 8 symmetries of the square), never with the helpers under test.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conversenet.inference import dihedral, dihedral_inverse, run_model
from conversenet.models.base import RestorationModel


def _numpy_maps(a):
    """The 8 images T(a) with their inverses, in numpy (last two axes)."""
    out = []
    for base, transposed in ((a, False), (np.swapaxes(a, -2, -1), True)):
        for k in range(4):
            def inv(y, k=k, transposed=transposed):
                y = np.rot90(y, -k, axes=(-2, -1))
                return np.swapaxes(y, -2, -1) if transposed else y
            out.append((np.rot90(base, k, axes=(-2, -1)), inv))
    return out


class _Lopsided(RestorationModel):
    """A small fixed network with no symmetry of its own (random 3x3 convolutions)."""

    task = "denoise"

    def __init__(self):
        super().__init__()
        self.in_channels = 1
        g = torch.Generator().manual_seed(0)
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 1, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return x + self.c2(torch.tanh(self.c1(x)))


class _CircularBlur(RestorationModel):
    """Non-blind 'model' y = circular correlation of x with the kernel: commutes exactly
    with flips and rotations when the kernel is flipped/rotated with the image."""

    task = "deblur"
    takes_kernel = True
    blur_kernel_size = 5

    def __init__(self):
        super().__init__()
        self.in_channels = 1
        self.w = nn.Parameter(torch.zeros(1))  # so that the model has a device

    def forward(self, x, k):
        r = k.shape[-1] // 2
        return F.conv2d(F.pad(x, (r, r, r, r), mode="circular"), k[:1])


class _Nearest2x(RestorationModel):
    """Scale-2 'SR' by pixel repetition, plus a lopsided term (so the ensemble matters)."""

    task = "sr"

    def __init__(self):
        super().__init__()
        self.in_channels = 1
        self.scale = 2
        self.c = nn.Conv2d(1, 1, (1, 3), padding="same", bias=False)
        with torch.no_grad():
            self.c.weight.copy_(torch.tensor([[[[0.5, -0.2, 0.1]]]]))

    def forward(self, x):
        return F.interpolate(self.c(x), scale_factor=2, mode="nearest")


def test_dihedral_maps_are_the_eight_symmetries_with_inverses():
    a = np.arange(2 * 3 * 5, dtype=np.float32).reshape(1, 2, 3, 5)
    x = torch.from_numpy(a)
    ours = [dihedral(x, i).numpy() for i in range(8)]
    ref = [m for m, _ in _numpy_maps(a)]
    # the same set of 8 distinct images (order is the helpers' business)
    key = lambda m: (m.shape, m.tobytes())  # noqa: E731
    assert sorted(map(key, ours)) == sorted(map(key, ref))
    assert len(set(map(key, ours))) == 8
    for i in range(8):
        assert torch.equal(dihedral_inverse(dihedral(x, i), i), x)


def test_self_ensemble_is_the_mean_of_the_eight_passes_float64_reference():
    net = _Lopsided().eval()
    a = np.random.default_rng(1).random((1, 1, 13, 19))
    with torch.no_grad():
        ref = np.mean([inv(net(torch.from_numpy(np.ascontiguousarray(m)).float()).double().numpy())
                       for m, inv in _numpy_maps(a)], axis=0)
        plain = net(torch.from_numpy(a).float()).double().numpy()
    got = run_model(net, torch.from_numpy(a).float(), tile=0, self_ensemble=True)
    assert got.shape == (1, 1, 13, 19) and got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), ref, atol=2e-6)
    assert np.abs(plain - ref).max() > 1e-2  # the network is not symmetric: the ensemble changes it
    # default: one pass, exactly the network
    np.testing.assert_allclose(run_model(net, torch.from_numpy(a).float(), tile=0).double().numpy(), plain,
                               atol=1e-6)


def test_the_kernel_turns_with_the_image():
    net = _CircularBlur()
    k = torch.zeros(1, 1, 5, 5)
    k[0, 0, 1, 3], k[0, 0, 2, 2], k[0, 0, 4, 0] = 0.6, 0.3, 0.1  # no symmetry at all
    x = torch.rand(1, 1, 12, 17, generator=torch.Generator().manual_seed(2))
    plain = run_model(net, x, k, tile=0)
    assert (run_model(net, x, torch.rot90(k, 1, (-2, -1)), tile=0) - plain).abs().max() > 0.05
    # an operator that commutes with the maps: the ensemble changes nothing, if the kernel turned too
    torch.testing.assert_close(run_model(net, x, k, tile=0, self_ensemble=True), plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(run_model(net, x, k[0, 0], tile=0, self_ensemble=True), plain, atol=1e-6, rtol=0)


def test_self_ensemble_with_scale_and_tiles_counts_progress():
    net = _Nearest2x().eval()
    a = np.random.default_rng(3).random((1, 1, 40, 24)).astype(np.float32)
    # reference: each map run through the (one-pass) tiled path, turned back by numpy, averaged
    ref = np.mean([inv(run_model(net, torch.from_numpy(np.ascontiguousarray(m)), tile=16, overlap=4).numpy())
                   for m, inv in _numpy_maps(a)], axis=0)
    seen = []
    got = run_model(net, torch.from_numpy(a), tile=16, overlap=4, self_ensemble=True,
                    progress=lambda d, n: seen.append((d, n)))
    assert got.shape == (1, 1, 80, 48)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-5)
    total = seen[-1][1]
    assert seen[-1][0] == total and total % 8 == 0 and total > 8
    assert [d for d, _ in seen] == list(range(1, total + 1))
    untiled = []
    run_model(net, torch.from_numpy(a), tile=0, self_ensemble=True, progress=lambda d, n: untiled.append((d, n)))
    assert untiled == [(i, 8) for i in range(1, 9)]


def test_bad_self_ensemble_value_is_refused_before_work():
    import conversenet

    with pytest.raises(TypeError, match="self_ensemble"):
        run_model(_Lopsided(), torch.rand(1, 1, 8, 8), self_ensemble="yes")
    with pytest.raises(TypeError, match="self_ensemble"):
        conversenet.restore(np.zeros((8, 8), np.uint8), model=_Lopsided(), self_ensemble=1)


def test_self_ensemble_improves_the_builtin_blind_denoiser():
    """Feature check on a generated scene: 8 passes of the shipped grey blind model beat one."""
    import conversenet
    from conversenet.data import rgb_to_gray
    from conversenet.metrics import psnr
    from conversenet.restore import sample_image

    clean = rgb_to_gray(sample_image(96, seed=4))[..., 0]
    noisy = np.clip(clean / 255.0 + np.random.default_rng(5).normal(0, 25 / 255, clean.shape), 0, 1).astype(np.float32)
    kw = dict(task="denoise", model="converse_unet_blind_gray", weights="builtin", device="cpu")
    one = conversenet.restore(noisy, **kw)
    eight = conversenet.restore(noisy, self_ensemble=True, **kw)
    to8 = lambda f: np.round(np.clip(f, 0, 1) * 255).astype(np.uint8)  # noqa: E731
    p1, p8 = psnr(to8(one)[..., None], clean[..., None]), psnr(to8(eight)[..., None], clean[..., None])
    assert p1 > 28 and p8 > p1 + 0.02


def test_eval_cli_records_and_separates_self_ensemble(tmp_path, capsys):
    from conversenet.cli import main
    from conversenet.data import rgb_to_gray, write_image
    from conversenet.restore import sample_image

    data = tmp_path / "grey"
    data.mkdir()
    for i in range(2):
        write_image(data / f"img{i}.png", rgb_to_gray(sample_image(64, seed=10 + i)))
    base = ["eval", "--model", "dncnn", "--weights", "builtin", "--device", "cpu", "--no-progress",
            "--dataset", str(data), "--sigma", "25", "--no-save-images", "--threads", "1"]
    out = tmp_path / "res"
    assert main(base + ["--out", str(out)]) == 0
    plain = json.loads((out / "results.json").read_text())
    assert plain["self_ensemble"] is False
    capsys.readouterr()
    assert main(base + ["--out", str(out), "--self-ensemble"]) == 0
    text = capsys.readouterr().out
    assert "resuming" not in text and "self-ensemble" in text  # the one-pass rows are not reused
    ens = json.loads((out / "results.json").read_text())
    assert ens["self_ensemble"] is True
    assert ens["averages"]["psnr"] != plain["averages"]["psnr"]
    # a sweep names its x8 cells apart
    sweep = tmp_path / "sweep"
    assert main(base[:-4] + ["15", "25", "--no-save-images", "--threads", "1", "--out", str(sweep),
                             "--self-ensemble"]) == 0
    cells = json.loads((sweep / "sweep.json").read_text())["cells"]
    assert [c["self_ensemble"] for c in cells] == [True, True]
    assert all(c["out"].endswith("_x8") for c in cells)
