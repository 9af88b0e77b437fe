"""Converse-UNet: a multi-scale network of converse blocks for blind denoising.

The paper's networks keep one resolution (Converse-DnCNN: 20 blocks at full size). A
blind denoiser for noise up to sigma = 55 needs a large receptive field, which a U-Net
reaches at a fraction of the cost: most blocks run at 1/2, 1/4, 1/8 of the image size.
Every spatial operation of the body is a Converse2d: the blocks' depthwise solves and the
decoder's 2x upsampling (:class:`~conversenet.nn.ConverseUpsample`, the paper's
replacement for transposed convolution). Downsampling is a strided 2x2 convolution.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import ConverseBlock, ConverseUpsample
from ._common import check_image, check_pos_int
from .base import RestorationModel
from .weights import Score, WeightSet, register_weights

__all__ = ["ConverseUNet"]


class ConverseUNet(RestorationModel):
    """U-Net of converse blocks that predicts the clean image (global residual).

    ``head`` (3x3 conv, in -> widths[0]); per level ``l < L``: ``blocks[l]`` converse blocks
    at widths[l], then a 2x2 stride-2 conv to widths[l + 1]; ``blocks[L]`` blocks at the
    coarsest level; per level on the way up: ConverseUpsample(widths[l + 1] -> widths[l],
    x2), the skip added, ``blocks[l]`` blocks; ``tail`` (3x3 conv, widths[0] -> in). The
    output is ``x + tail(...)``. The blocks have learnable residual scales (initialised to
    0) and the tail starts small, so an untrained network is close to the identity.

    Any input size works: the input is padded (reflect, or replicate when too small) to a
    multiple of 2^L, at least 2^L * ``padding`` (so that every level can be padded
    circularly), and the output cropped back.

    Args:
        in_channels: 1 (grey) or 3 (colour); the output has the same channels.
        widths: feature channels per level, finest first (L + 1 entries, L >= 0).
        blocks: converse blocks per level (same length as ``widths``).
        kernel_size, padding, padding_mode: of every block's Converse2d.

    Shape: (N, in_channels, H, W) -> (N, in_channels, H, W).

    Example:
        >>> import torch
        >>> from conversenet.models import ConverseUNet
        >>> net = ConverseUNet(1, widths=(8, 16), blocks=(1, 1))
        >>> net(torch.rand(1, 1, 13, 10)).shape
        torch.Size([1, 1, 13, 10])
    """

    task = "denoise"

    @property
    def min_input_size(self) -> int:
        """1: the input is padded inside to a size every level accepts."""
        return 1

    def __init__(
        self,
        in_channels: int = 1,
        widths: Sequence[int] = (32, 64, 128, 256),
        blocks: Sequence[int] = (2, 2, 2, 2),
        kernel_size: int = 5,
        padding: int = 4,
        padding_mode: str = "circular",
    ) -> None:
        super().__init__()
        self.in_channels = check_pos_int("in_channels", in_channels)
        widths = [check_pos_int("widths[]", w) for w in widths]
        blocks = [check_pos_int("blocks[]", b, 0) for b in blocks]
        if not widths or len(widths) != len(blocks):
            raise ValueError(f"widths and blocks must be non-empty and of equal length, got "
                             f"{len(widths)} and {len(blocks)}")
        self.scale = 1
        self.levels = len(widths) - 1
        self.padding = int(padding)

        def stage(w: int, n: int) -> nn.Sequential:
            # residual scales start at 0: every block starts as the identity, so activations
            # do not grow with depth at initialisation
            return nn.Sequential(*[ConverseBlock(w, kernel_size, padding, padding_mode, residual_scale=True)
                                   for _ in range(n)])

        self.head = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(stage(w, n) for w, n in zip(widths[:-1], blocks[:-1]))
        self.downs = nn.ModuleList(nn.Conv2d(a, b, 2, stride=2) for a, b in zip(widths[:-1], widths[1:]))
        self.middle = stage(widths[-1], blocks[-1])
        self.ups = nn.ModuleList(ConverseUpsample(b, a, 2) for a, b in zip(widths[:-1], widths[1:]))
        self.up_blocks = nn.ModuleList(stage(w, n) for w, n in zip(widths[:-1], blocks[:-1]))
        self.tail = nn.Conv2d(widths[0], in_channels, 3, padding=1)
        with torch.no_grad():  # start near the identity map (output = input)
            self.tail.weight.mul_(0.1)
            self.tail.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, self.in_channels)
        h, w = x.shape[-2:]
        m = 1 << self.levels
        # a multiple of 2^L, and at least 2^L * padding so that the coarsest level can be
        # padded circularly
        lo = m * self.padding
        ph, pw = max(-h % m, lo - h), max(-w % m, lo - w)
        xp = x
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            xp = F.pad(x, (0, pw, 0, ph), mode=mode)
        f = self.head(xp)
        skips = []
        for blocks, down in zip(self.down_blocks, self.downs):
            f = blocks(f)
            skips.append(f)
            f = down(f)
        f = self.middle(f)
        for up, blocks, skip in zip(reversed(self.ups), reversed(self.up_blocks), reversed(skips)):
            f = blocks(up(f) + skip)
        return (xp + self.tail(f))[..., :h, :w]


# ------------------------------------------------------------------------ weight sets
# Trained by this project with ``conversenet train denoise/blind_gray`` / ``denoise/blind_color``
# (issue #15); the files ship in conversenet/weights/ with a model card each. The scores are
# the published Table 4 protocol (seed-0 Gaussian noise, no clipping, uint8 metrics) on the
# shipped files; BLIND_SCORES holds them (dataset, sigma, PSNR, SSIM).
_EVAL_BLIND = "conversenet eval --model {name} --weights builtin --dataset {ds} --sigma 15 25 50"


def _blind_scores(name: str, rows) -> tuple:
    return tuple(Score(f"{ds} sigma={sigma:g}", {"psnr": psnr, "ssim": ssim}, _EVAL_BLIND.format(name=name, ds=ds))
                 for ds, sigma, psnr, ssim in rows)


#: (dataset, sigma, PSNR dB, SSIM) measured on the shipped files (docs/TRAINING.md)
BLIND_GRAY_SCORES = (
    ("set12", 15, 32.39, 0.8974),
    ("set12", 25, 30.03, 0.8553),
    ("set12", 50, 26.78, 0.7690),
    ("bsd68", 15, 31.47, 0.8860),
    ("bsd68", 25, 29.01, 0.8221),
    ("bsd68", 50, 26.04, 0.7088),
)
BLIND_COLOR_SCORES = (
    ("cbsd68", 15, 33.54, 0.9252),
    ("cbsd68", 25, 30.91, 0.8773),
    ("cbsd68", 50, 27.65, 0.7776),
)

def _blind_record(colour: str, channels: int, sha256: str, data: str, iterations: str, scores) -> WeightSet:
    name = f"converse_unet_blind_{colour}"
    return register_weights(WeightSet(
        name=name, model="converse_unet", args={"in_channels": channels, "widths": (24, 48, 96, 192),
                                                 "blocks": (1, 2, 2, 4)},
        task="denoise", channels=channels, sigma=None, file=f"{name}.safetensors", origin="package", sha256=sha256,
        scores=_blind_scores(name, scores),
        source=(f"trained by this project on CPUs with conversenet train denoise/blind_{colour} (Converse-UNet, "
                f"1.77 M parameters; {data}, Gaussian noise sigma in [0, 55]); {iterations} iterations, "
                "see the model card"),
        licence="MIT (this package)", card=f"conversenet/weights/{name}.md",
    ))


CONVERSE_UNET_BLIND_GRAY = _blind_record(
    "gray", 1, "9f7d1e0d04734a57ecb2688e24271648f4106ef5220fd0b4f1f3bbdf6073fb77",
    "trainsets/train400 grey patches", "22,330 + 6,043 + 6,000 + 8,000 + 6,000 + 2,000 + 8,000 + 8,000",
    BLIND_GRAY_SCORES)
CONVERSE_UNET_BLIND_COLOR = _blind_record(
    "color", 3, "85b39cf9a3c5184271db764397caeb12cbc4028e4d487bc0120afd497c9fbb23",
    "trainsets/bsds400_color colour patches", "22,365 + 8,000 + 6,000", BLIND_COLOR_SCORES)
