"""The training losses: the ``psnr`` loss against a naive float64 per-sample loop, its
per-sample weighting (each sample's gradient divided by its own MSE), and a tiny run that
learns with it."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from conversenet.train.trainer import _loss_fn

from _train_helpers import run_trainer, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _naive_psnr_loss(out: torch.Tensor, gt: torch.Tensor) -> float:
    total = 0.0
    for i in range(out.shape[0]):
        a, b = out[i].double().flatten().tolist(), gt[i].double().flatten().tolist()
        mse = sum((x - y) ** 2 for x, y in zip(a, b)) / len(a)
        total += 10.0 * math.log10(mse + 1e-10)
    return total / out.shape[0]


def test_psnr_loss_matches_a_naive_per_sample_loop():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(3, 2, 5, 4, generator=g, dtype=torch.float64)
    # three noise levels two decades apart: a batch mean of the MSE would be ~ the largest
    out = gt + torch.randn(gt.shape, generator=g, dtype=torch.float64) * torch.tensor([0.002, 0.02, 0.2],
                                                                                       dtype=torch.float64).view(3, 1, 1, 1)
    loss = _loss_fn("psnr")(out, gt)
    assert loss.item() == pytest.approx(_naive_psnr_loss(out, gt), rel=1e-12)
    assert _loss_fn("psnr")(out.float(), gt.float()).item() == pytest.approx(_naive_psnr_loss(out, gt), rel=1e-5)


def test_psnr_loss_weighs_each_sample_by_its_own_mse():
    g = torch.Generator().manual_seed(1)
    gt = torch.rand(2, 1, 6, 6, generator=g, dtype=torch.float64)
    noise = torch.randn(gt.shape, generator=g, dtype=torch.float64) * torch.tensor([0.01, 0.1],
                                                                                  dtype=torch.float64).view(2, 1, 1, 1)
    out = (gt + noise).requires_grad_(True)
    _loss_fn("psnr")(out, gt).backward()
    mse = noise.pow(2).flatten(1).mean(1) + 1e-10  # the loss's floor
    # d/d out_i of (1/N) sum_j 10 log10(mse_j) = 10 / (N ln 10) * 2 (out_i - gt_i) / (P mse_i)
    n, p = gt.shape[0], gt[0].numel()
    expected = 10.0 / (n * math.log(10.0)) * 2.0 * noise / (p * mse.view(2, 1, 1, 1))
    assert torch.allclose(out.grad, expected, rtol=1e-9, atol=0)
    # the low-noise sample's gradient per unit error is 100x the other's, where L2 gives both the same
    ratio = (out.grad[0] / noise[0]).mean() / (out.grad[1] / noise[1]).mean()
    assert ratio.item() == pytest.approx((mse[1] / mse[0]).item(), rel=1e-9)


def test_a_tiny_run_learns_with_the_psnr_loss(tmp_path):
    cfg = tiny_config(tmp_path, **{"model.args": {"width": 8, "num_blocks": 1}, "train.lr": 2e-3,
                                   "train.loss": "psnr", "degradation.sigma_range": [5.0, 50.0],
                                   "train.milestones": [], "train.total_iter": 100, "train.val_every": 25,
                                   "train.log_every": 25, "train.checkpoint_every": 50})
    assert run_trainer(cfg, tmp_path / "run") == 0
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    loss = [float(r["loss"]) for r in rows if r["loss"]]
    psnr = [float(r["psnr"]) for r in rows if r["psnr"]]
    assert len(loss) == 4 and len(psnr) == 4
    assert loss[-1] < loss[0] - 3.0  # 10 log10 MSE: at least 3 dB lower
    assert psnr[-1] > psnr[0] + 3.0
