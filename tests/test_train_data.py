"""Training data: dihedral augmentation, patch sampling, degradations, and the
index-based determinism that makes resume and multi-rank training exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conversenet.train.config import DegradationConfig
from conversenet.train.data import (IterationBatchSampler, TrainPatches, ValImages, augment,
                                    collate, resolve_folder)

from _train_helpers import make_images


def _np_mode(a: np.ndarray, mode: int) -> np.ndarray:
    # independent reference: numpy's rot90 (counter-clockwise) then left-right flip
    b = np.rot90(a, mode % 4)
    return np.fliplr(b) if mode >= 4 else b


def test_augment_is_the_8_dihedral_modes():
    a = np.arange(12.0).reshape(3, 4)
    outs = []
    for m in range(8):
        got = augment(torch.from_numpy(a)[None], m)[0].numpy()
        np.testing.assert_array_equal(got, _np_mode(a, m))
        outs.append(got.tobytes() + bytes(got.shape))
    assert len(set(outs)) == 8
    with pytest.raises(ValueError, match="mode"):
        augment(torch.zeros(1, 2, 2), 8)


def _find_patch(img: np.ndarray, patch: np.ndarray) -> bool:
    p = patch.shape[-1]
    for t in range(img.shape[0] - p + 1):
        for l in range(img.shape[1] - p + 1):
            crop = img[t:t + p, l:l + p]
            if any(np.allclose(_np_mode(crop, m), patch, atol=1e-6) for m in range(8)):
                return True
    return False


def test_denoise_patches_are_crops_with_the_right_noise(tmp_path):
    folder = make_images(tmp_path / "imgs", n=3, size=(20, 24))
    ds = TrainPatches(folder, "denoise", DegradationConfig(sigma=25.0), 1, 12, seed=0)
    imgs = [np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(f), dtype=np.float64) / 255
            for f in sorted(folder.iterdir())]
    noise = []
    for i in range(6):
        s = ds[i]
        assert s["gt"].shape == s["lq"].shape == (1, 12, 12)
        gt = s["gt"][0].double().numpy()
        assert any(_find_patch(im, gt) for im in imgs), f"sample {i} is not a (flipped/rotated) crop"
        noise.append((s["lq"] - s["gt"]).flatten())
    std = float(torch.cat(noise).std()) * 255
    assert 22.0 < std < 28.0  # 864 draws of sigma 25: standard error ~0.6


def test_sigma_range_draws_per_patch(tmp_path):
    folder = make_images(tmp_path / "imgs", n=2, size=(32, 32))
    ds = TrainPatches(folder, "denoise", DegradationConfig(sigma_range=[0.0, 50.0]), 1, 16, seed=0)
    sig = [float(ds[i]["sigma"]) for i in range(40)]
    assert min(sig) >= 0 and max(sig) <= 50 and np.std(sig) > 5
    assert all(abs(float((ds[i]["lq"] - ds[i]["gt"]).std()) * 255 - sig[i]) < 0.35 * sig[i] + 1 for i in range(10))


def test_sigma_focus_is_a_mixture_of_two_uniforms(tmp_path):
    folder = make_images(tmp_path / "imgs", n=2, size=(20, 20))
    n = 800
    only = TrainPatches(folder, "denoise", DegradationConfig(sigma_range=[0.0, 50.0], sigma_focus=[10.0, 20.0],
                                                             sigma_focus_prob=1.0), 1, 8, seed=0)
    assert all(10.0 <= float(only[i]["sigma"]) <= 20.0 for i in range(50))
    never = TrainPatches(folder, "denoise", DegradationConfig(sigma_range=[0.0, 50.0], sigma_focus=[10.0, 20.0],
                                                              sigma_focus_prob=0.0), 1, 8, seed=0)
    assert any(not 10.0 <= float(never[i]["sigma"]) <= 20.0 for i in range(50))
    half = TrainPatches(folder, "denoise", DegradationConfig(sigma_range=[0.0, 50.0], sigma_focus=[10.0, 20.0],
                                                             sigma_focus_prob=0.5), 1, 8, seed=0)
    sig = np.array([float(half[i]["sigma"]) for i in range(n)])
    assert sig.min() >= 0.0 and sig.max() <= 50.0
    # P(sigma in [10, 20]) = 0.5 + 0.5 * 10/50 = 0.6; 800 draws: standard error ~0.017
    assert abs(np.mean((sig >= 10) & (sig <= 20)) - 0.6) < 0.07
    # above 20 only the wide uniform: P = 0.5 * 30/50 = 0.3
    assert abs(np.mean(sig > 20) - 0.3) < 0.07


def test_sigma_draws_without_focus_are_unchanged_by_the_option(tmp_path):
    # runs started before sigma_focus existed resume with the same patches
    folder = make_images(tmp_path / "imgs", n=2, size=(20, 20))
    a = TrainPatches(folder, "denoise", DegradationConfig(sigma_range=[0.0, 50.0]), 1, 8, seed=3)
    b = TrainPatches(folder, "denoise", DegradationConfig(sigma_range=[0.0, 50.0], sigma_focus_prob=0.9), 1, 8, seed=3)
    for i in range(5):
        torch.testing.assert_close(a[i]["lq"], b[i]["lq"], rtol=0, atol=0)


def test_sr_patches_are_bicubic_downscaled(tmp_path):
    from conversenet.data.imresize import imresize

    folder = make_images(tmp_path / "imgs", n=2, size=(40, 40), rgb=True)
    ds = TrainPatches(folder, "sr", DegradationConfig(scale=4), 3, 16, seed=0)
    s = ds[0]
    assert s["gt"].shape == (3, 16, 16) and s["lq"].shape == (3, 4, 4)
    torch.testing.assert_close(s["lq"], imresize(s["gt"].double(), 0.25).float(), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="multiple of degradation.scale"):
        TrainPatches(folder, "sr", DegradationConfig(scale=4), 3, 18, seed=0)


def test_samples_depend_only_on_seed_and_index(tmp_path):
    folder = make_images(tmp_path / "imgs", n=3, size=(24, 24))
    deg = DegradationConfig()
    a = TrainPatches(folder, "denoise", deg, 1, 16, seed=5)
    b = TrainPatches(folder, "denoise", deg, 1, 16, seed=5, cache=False)
    c = TrainPatches(folder, "denoise", deg, 1, 16, seed=6)
    for i in (7, 0, 3):  # any order
        assert torch.equal(a[i]["lq"], b[i]["lq"])
    assert not torch.equal(a[0]["lq"], c[0]["lq"])
    # every image is visited once per pass over the folder
    assert sorted(a.image_index(i) for i in range(3)) == [0, 1, 2]
    assert sorted(a.image_index(i) for i in range(3, 6)) == [0, 1, 2]


def test_loader_batches_are_independent_of_workers_and_ranks(tmp_path):
    folder = make_images(tmp_path / "imgs", n=3, size=(24, 24))
    ds = TrainPatches(folder, "denoise", DegradationConfig(), 1, 16, seed=1)

    def batches(workers, start=0, rank=0, world=1):
        dl = DataLoader(ds, batch_sampler=IterationBatchSampler(start, 4, 4, rank, world),
                        num_workers=workers, collate_fn=collate)
        return [b["lq"] for b in dl]

    one = batches(0)
    two = batches(2)
    assert len(one) == 4 and all(torch.equal(x, y) for x, y in zip(one, two))
    assert all(torch.equal(x, y) for x, y in zip(one[2:], batches(0, start=2)))  # resume at iteration 2
    r0, r1 = batches(0, rank=0, world=2), batches(0, rank=1, world=2)
    assert all(torch.equal(torch.cat([x, y]), z) for x, y, z in zip(r0, r1, one))


def test_batch_sampler_rejects_uneven_split():
    with pytest.raises(ValueError, match="divisible"):
        IterationBatchSampler(0, 2, 5, 0, 2)


def test_validation_images_are_deterministic(tmp_path):
    folder = make_images(tmp_path / "v", n=3, size=(30, 34), rgb=True)
    v1 = ValImages(folder, "sr", DegradationConfig(scale=4), 3, max_images=2)
    v2 = ValImages(folder, "sr", DegradationConfig(scale=4), 3, max_images=2)
    assert len(v1) == 2
    assert v1[0]["gt"].shape == (3, 28, 32) and v1[0]["lq"].shape == (3, 7, 8)  # modcrop to x4
    assert torch.equal(v1[1]["lq"], v2[1]["lq"])
    d = ValImages(folder, "denoise", DegradationConfig(sigma=15), 1, crop=16)
    assert d[0]["gt"].shape == (1, 16, 16) and torch.equal(d[0]["lq"], d[0]["lq"])


def test_missing_folder_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVERSENET_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="data.train: folder 'nowhere' not found"):
        resolve_folder("nowhere", "data.train")
    (tmp_path / "trainsets" / "x").mkdir(parents=True)
    assert resolve_folder("trainsets/x", "data.train") == tmp_path / "trainsets" / "x"


def test_every_task_of_the_table_has_a_training_degradation(tmp_path):
    from conversenet.tasks import TASK_NAMES
    from conversenet.train.data import _DEGRADE

    assert set(_DEGRADE) == set(TASK_NAMES)
    folder = make_images(tmp_path / "imgs", n=1, size=(32, 32))
    with pytest.raises(ValueError, match="task must be one of"):
        ValImages(folder, "inpaint", DegradationConfig(), 1)


def _circ_conv_ref(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    # naive circular convolution with the kernel centred at (kh//2, kw//2)
    c0, c1 = k.shape[0] // 2, k.shape[1] // 2
    out = np.zeros_like(x)
    for a in range(k.shape[0]):
        for b in range(k.shape[1]):
            out += k[a, b] * np.roll(x, (a - c0, b - c1), axis=(-2, -1))
    return out


def test_deblur_patches_blur_with_the_returned_kernel_plus_noise(tmp_path):
    folder = make_images(tmp_path / "imgs", n=2, size=(32, 32), rgb=True)
    ds = TrainPatches(folder, "deblur", DegradationConfig(kernel_size=7, noise=2.55), 3, 24, seed=0)
    resid, kinds = [], set()
    for i in range(8):
        s = ds[i]
        k = s["kernel"]
        assert k.shape == (1, 7, 7) and abs(float(k.sum()) - 1) < 1e-5 and float(k.min()) >= 0
        blurred = _circ_conv_ref(s["gt"].double().numpy(), k[0].double().numpy())
        resid.append(s["lq"].double().numpy() - blurred)
        # Gaussian kernels are symmetric under transposition, motion kernels usually not
        kinds.add(bool(torch.allclose(k[0], k[0].T, atol=1e-6)))
    std = float(np.std(np.concatenate([r.ravel() for r in resid]))) * 255
    assert 2.3 < std < 2.8
    assert kinds == {True, False}


def test_images_smaller_than_the_patch_are_left_out(tmp_path):
    folder = make_images(tmp_path / "imgs", n=2, size=(40, 40))
    make_images(tmp_path / "small", n=1, size=(10, 30))
    (tmp_path / "small" / "img00.png").rename(folder / "tiny.png")
    with pytest.warns(UserWarning, match="1 of 3 images"):
        ds = TrainPatches(folder, "denoise", DegradationConfig(), 1, 16, seed=0)
    assert len(ds) == 2 and all(f.name != "tiny.png" for f in ds.files)
    with pytest.raises(ValueError, match="every image"):
        TrainPatches(folder, "denoise", DegradationConfig(), 1, 64, seed=0)
