"""Denoising networks of the paper's Table 4: Converse-DnCNN, its Conv/ConvT twins, DnCNN."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ._common import block_stack, check_image, check_pos_int
from .base import RestorationModel
from .weights import OFFICIAL_URL, Score, WeightSet, register_weights

__all__ = ["ConverseDnCNN", "ConvDnCNN", "ConvTDnCNN", "DnCNN"]


class ConverseDnCNN(RestorationModel):
    """Converse-DnCNN (paper Fig. 3a): 1x1 conv, ``num_blocks`` converse blocks, 1x1 conv.

    The network outputs the clean image directly (no global skip), as the released
    checkpoint does. Defaults are the paper's text (5x5 kernels, circular padding 4:
    734,913 parameters for grayscale); the released file uses 7x7 kernels and padding 6
    (registry name ``converse_dncnn_official``).

    Attributes ``m_head`` / ``m_body`` / ``m_tail`` carry the checkpoint's key names.

    Args:
        in_channels: 1 (grayscale) or 3 (colour); output has the same channels.
        width: feature channels C (``num_features``).
        num_blocks: number of converse blocks.
        kernel_size, padding, padding_mode, eps, x0, kernel_init: of every Converse2d
            (see :class:`conversenet.nn.Converse2d`).

    Shape: (N, in_channels, H, W) -> (N, in_channels, H, W).

    Example:
        >>> import torch
        >>> from conversenet.models import ConverseDnCNN
        >>> net = ConverseDnCNN(width=8, num_blocks=2)
        >>> net(torch.rand(1, 1, 20, 24)).shape
        torch.Size([1, 1, 20, 24])
    """

    task = "denoise"
    spatial = "converse"

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 64,
        num_blocks: int = 20,
        kernel_size: int = 5,
        padding: Optional[int] = 4,
        padding_mode: str = "circular",
        eps: float = 1e-5,
        x0: str = "interp",
        kernel_init: str = "gaussian_softmax",
    ) -> None:
        super().__init__()
        self.in_channels = check_pos_int("in_channels", in_channels)
        self.scale = 1
        self.m_head = nn.Sequential(nn.Conv2d(in_channels, width, 1))
        self.m_body = block_stack(
            num_blocks, width, kernel_size, padding, padding_mode, eps, x0, kernel_init,
            spatial=self.spatial,
        )
        self.m_tail = nn.Sequential(nn.Conv2d(width, in_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, self.in_channels)
        return self.m_tail(self.m_body(self.m_head(x)))


class ConvDnCNN(ConverseDnCNN):
    """Conv-DnCNN: :class:`ConverseDnCNN` with every Converse2d replaced by a depthwise
    convolution of the same kernel size ("same" output size, ``padding_mode`` boundary;
    ``padding`` is unused). Same parameter count (734,913 at the defaults).

    Shape: (N, in_channels, H, W) -> (N, in_channels, H, W).

    Example:
        >>> import torch
        >>> from conversenet.models import ConvDnCNN
        >>> ConvDnCNN(width=8, num_blocks=2)(torch.rand(1, 1, 9, 13)).shape
        torch.Size([1, 1, 9, 13])
    """

    spatial = "conv"


class ConvTDnCNN(ConverseDnCNN):
    """ConvT-DnCNN: :class:`ConverseDnCNN` with every Converse2d replaced by a depthwise
    transposed convolution of the same (odd) kernel size, cropped to keep the size
    (implicit zero boundary). Same parameter count (734,913 at the defaults).

    Shape: (N, in_channels, H, W) -> (N, in_channels, H, W).

    Example:
        >>> import torch
        >>> from conversenet.models import ConvTDnCNN
        >>> ConvTDnCNN(width=8, num_blocks=2)(torch.rand(1, 1, 9, 13)).shape
        torch.Size([1, 1, 9, 13])
    """

    spatial = "convt"


class DnCNN(RestorationModel):
    """The original DnCNN (Zhang et al. 2017): ``depth`` 3x3 conv layers, residual learning.

    Layer 1: conv + ReLU; layers 2..depth-1: conv + BatchNorm + ReLU; last: conv. Every
    conv has a bias (as in KAIR's DnCNN), which gives exactly the 557,057 parameters of
    Table 4 for grayscale (17 layers, width 64). The network predicts the noise and
    returns ``x - noise``.

    Built-in weights: ``create("dncnn", pretrained="builtin")`` loads
    ``conversenet/weights/dncnn.pth``, a grayscale sigma=25 DnCNN trained by this project
    (10,500 iterations on one GPU, batch 64 of 64x64 patches of train400; the paper trains
    800k iterations): Set12 30.01 dB / 0.8511, BSD68 28.94 dB / 0.8192 with the published
    protocol
    (noisy input: 20.17 dB on Set12; paper's DnCNN: 30.43 / 29.23). See docs/TRAINING.md.

    Args:
        in_channels: 1 or 3.
        width: feature channels.
        depth: total number of conv layers (>= 2).

    Shape: (N, in_channels, H, W) -> (N, in_channels, H, W).

    Example:
        >>> import torch
        >>> from conversenet.models import DnCNN
        >>> sum(p.numel() for p in DnCNN().parameters())
        557057
        >>> DnCNN(width=8, depth=3)(torch.rand(2, 1, 10, 7)).shape
        torch.Size([2, 1, 10, 7])
    """

    task = "denoise"

    def __init__(self, in_channels: int = 1, width: int = 64, depth: int = 17) -> None:
        super().__init__()
        self.in_channels = check_pos_int("in_channels", in_channels)
        self.scale = 1
        check_pos_int("width", width)
        check_pos_int("depth", depth, 2)
        layers = [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, in_channels, 3, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, self.in_channels)
        return x - self.model(x)


# ------------------------------------------------------------------------ weight sets
_EVAL = "conversenet eval --model {model} --weights {weights} --dataset {ds} --sigma 25"

CONVERSE_DNCNN_OFFICIAL = register_weights(WeightSet(
    name="converse_dncnn_official", model="converse_dncnn", args={"kernel_size": 7, "padding": 6},
    task="denoise", channels=1, sigma=25.0, file="converse_dncnn.pth", origin="authors",
    url=OFFICIAL_URL + "converse_dncnn.pth",
    sha256="3b86c7f6e41a014448f923bc331232e1f45e2eae350dd7f9e18440803d283e89",
    scores=(
        Score("set12", {"psnr": 30.70, "ssim": 0.8683},
              _EVAL.format(model="converse_dncnn", weights="official", ds="set12")),
        Score("bsd68", {"psnr": 29.36, "ssim": 0.8330},
              _EVAL.format(model="converse_dncnn", weights="official", ds="bsd68") + " --device cuda"),
    ),
    source="the paper's authors, released Converse-DnCNN (7x7 kernels, circular padding 6), "
           "grey, Gaussian noise sigma=25 (docs/REPRODUCTION.md, Table 4)",
    licence="as published by the authors in github.com/cszn/ConverseNet (not redistributed here)",
))

DNCNN_BUILTIN = register_weights(WeightSet(
    name="dncnn", model="dncnn", task="denoise", channels=1, sigma=25.0, file="dncnn.pth", origin="package",
    sha256="d31a0be77b09e23e4062bc507c51bd8b13c646c0e96238061bf184295899f26f",
    scores=(
        Score("set12", {"psnr": 30.01, "ssim": 0.8511}, _EVAL.format(model="dncnn", weights="builtin", ds="set12")),
        Score("bsd68", {"psnr": 28.94, "ssim": 0.8192}, _EVAL.format(model="dncnn", weights="builtin", ds="bsd68")),
    ),
    source="trained by this project: benchmarks/gpu_train_builtin.sh, 10,500 iterations on grey "
           "patches with sigma=25 noise (docs/TRAINING.md)",
    licence="MIT (this package)",
))
