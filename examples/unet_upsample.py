"""Swap a U-Net's transposed-convolution upsamplers for ConverseUpsample and train it.

A small U-Net (two poolings, two upsamplers) learns to denoise generated images of random
soft-edged shapes (no data files needed). ``--upsampler`` picks the decoder's x2
upsampler:

* ``convtranspose``: ``nn.ConvTranspose2d(c_in, c_out, 2, stride=2)`` (the usual U-Net);
* ``pixelshuffle``: ``Conv2d(c_in, 4 * c_out, 3, padding=1)`` + ``PixelShuffle(2)``;
* ``converse``: ``conversenet.nn.ConverseUpsample(c_in, c_out, 2)``, the same call as the
  transposed convolution: the only line that changes.

Run (CPU, about half a minute)::

    python examples/unet_upsample.py --steps 150

It prints each variant's parameter count and the training loss at the start and end (the
same seed, data and optimiser for every variant).
"""

from __future__ import annotations

import argparse
from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from conversenet.nn import ConverseUpsample

UPSAMPLERS = ("converse", "convtranspose", "pixelshuffle")


def make_upsampler(kind: str, c_in: int, c_out: int) -> nn.Module:
    """A x2 upsampler from c_in to c_out channels: (N, c_in, H, W) -> (N, c_out, 2H, 2W)."""
    if kind == "converse":
        return ConverseUpsample(c_in, c_out, 2)
    if kind == "convtranspose":
        return nn.ConvTranspose2d(c_in, c_out, 2, stride=2)
    if kind == "pixelshuffle":
        return nn.Sequential(nn.Conv2d(c_in, 4 * c_out, 3, padding=1), nn.PixelShuffle(2))
    raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {kind!r}")


def _double_conv(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.GELU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.GELU(),
    )


class SmallUNet(nn.Module):
    """Two-level U-Net; predicts the noise (residual learning). H and W divisible by 4."""

    def __init__(self, channels: int = 1, width: int = 16, upsampler: str = "converse") -> None:
        super().__init__()
        w = width
        self.enc1 = _double_conv(channels, w)
        self.enc2 = _double_conv(w, 2 * w)
        self.mid = _double_conv(2 * w, 4 * w)
        self.up2 = make_upsampler(upsampler, 4 * w, 2 * w)
        self.dec2 = _double_conv(4 * w, 2 * w)
        self.up1 = make_upsampler(upsampler, 2 * w, w)
        self.dec1 = _double_conv(2 * w, w)
        self.head = nn.Conv2d(w, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return x - self.head(d1)


def make_batch(gen: torch.Generator, batch: int, size: int, sigma: float = 0.1):
    """Clean images of 3 random soft-edged ellipses each, and their noisy copies."""
    coords = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    clean = torch.zeros(batch, 1, size, size)
    for _ in range(3):
        cx, cy = (torch.rand(2, batch, 1, 1, generator=gen) * 1.6 - 0.8)
        rx, ry = (torch.rand(2, batch, 1, 1, generator=gen) * 0.4 + 0.15)
        level = torch.rand(batch, 1, 1, generator=gen) * 0.8 + 0.2
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
        clean[:, 0] += level * torch.sigmoid((1 - inside) * 8)
    clean = clean.clamp(0, 1)
    noisy = clean + sigma * torch.randn(clean.shape, generator=gen)
    return noisy, clean


def train(upsampler: str = "converse", steps: int = 100, batch: int = 8, size: int = 32,
          width: int = 16, lr: float = 2e-3, seed: int = 0) -> Dict[str, object]:
    """Trains a SmallUNet with the given upsampler; returns the model and the per-step losses."""
    torch.manual_seed(seed)
    model = SmallUNet(1, width, upsampler)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed + 1)
    losses: List[float] = []
    for _ in range(steps):
        noisy, clean = make_batch(gen, batch, size)
        loss = F.mse_loss(model(noisy), clean)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {"model": model, "losses": losses}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--upsampler", choices=UPSAMPLERS + ("all",), default="all")
    args = parser.parse_args(argv)
    kinds = UPSAMPLERS if args.upsampler == "all" else (args.upsampler,)
    for kind in kinds:
        out = train(kind, steps=args.steps, size=args.size)
        losses = out["losses"]
        params = sum(p.numel() for p in out["model"].parameters())
        k = max(1, len(losses) // 10)
        first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
        print(f"{kind:>14}: {params:6d} parameters, MSE first {k} steps {first:.5f}, last {k} steps {last:.5f}")


if __name__ == "__main__":
    main()
