"""Super-resolution networks of the paper's Tables 5-6.

* :class:`SRResNet`: the modified SRResNet (MSRResNet of KAIR/BasicSR): 3x3 conv, residual
  blocks without BatchNorm, x2 upsampling stages, bilinear global skip; its upsampler is a
  constructor argument (Table 6).
* :class:`ConverseSRResNet` (Fig. 3b) and its twins :class:`ConvSRResNet`,
  :class:`ConvTSRResNet` (Table 5).
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import Converse2d, ConverseBlock
from ._common import block_stack, check_image, check_pos_int, gelu_fresh, pointwise
from .base import RestorationModel
from .weights import OFFICIAL_URL, Score, WeightSet, register_weights

__all__ = ["SRResNet", "ConverseSRResNet", "ConvSRResNet", "ConvTSRResNet", "UPSAMPLERS"]

UPSAMPLERS = ("pixelshuffle", "nearest", "convt", "converse")


def _stage_factors(scale: int) -> List[int]:
    """x4 = two x2 stages (as in SRResNet); x2 and x3 one stage."""
    if scale == 4:
        return [2, 2]
    if scale in (2, 3):
        return [scale]
    raise ValueError(f"scale must be 2, 3 or 4, got {scale!r}")


def _bilinear_skip(x: torch.Tensor, scale: int) -> torch.Tensor:
    # half-pixel centres (align_corners=False), as in the released Converse-SRResNet
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


class _ResidualBlock(nn.Module):
    """conv3x3 -> ReLU -> conv3x3, plus identity (SRResNet block without BN)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class SRResNet(RestorationModel):
    """Modified SRResNet (MSRResNet) with a selectable upsampler (paper Table 6).

    ``conv_first`` 3x3 -> LeakyReLU(0.1) -> ``num_blocks`` residual blocks (conv-ReLU-conv,
    no BN) -> upsampling stages (x4 = two x2 stages), each followed by LeakyReLU ->
    ``conv_hres`` 3x3 -> LeakyReLU -> ``conv_last`` 3x3; the result is added to the
    bilinearly upsampled input (half-pixel centres).

    One x``f`` stage, by ``upsampler``:

    * ``"pixelshuffle"`` (default, MSRResNet): conv3x3 C -> C*f^2, PixelShuffle(f).
      1,517,571 parameters at the defaults.
    * ``"nearest"``: nearest x f interpolation, then conv3x3 C -> C (ESRGAN style).
    * ``"convt"``: conv3x3 C -> C, then a depthwise transposed conv (kernel f, stride f).
    * ``"converse"``: conv3x3 C -> C, then a depthwise :class:`~conversenet.nn.Converse2d`
      with scale f (``kernel_size`` 2, ``padding`` 2, circular, eps 1e-5 by default).

    The conv3x3 in front of the depthwise ``convt``/``converse`` ops provides the channel
    mixing that the pixel-shuffle conv has built in.

    Args:
        in_channels: image channels (3).
        width: feature channels (``num_features``).
        num_blocks: residual blocks.
        scale: 2, 3 or 4.
        upsampler: one of ``UPSAMPLERS``.
        kernel_size, padding, padding_mode, eps, x0, kernel_init: of the Converse2d
            upsampler (only used with ``upsampler="converse"``).

    Shape: (N, in_channels, H, W) -> (N, in_channels, H*scale, W*scale).

    Example:
        >>> import torch
        >>> from conversenet.models import SRResNet
        >>> net = SRResNet(width=8, num_blocks=1, upsampler="converse")
        >>> net(torch.rand(1, 3, 6, 9)).shape
        torch.Size([1, 3, 24, 36])
    """

    task = "sr"

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 64,
        num_blocks: int = 16,
        scale: int = 4,
        upsampler: str = "pixelshuffle",
        kernel_size: int = 2,
        padding: Optional[int] = 2,
        padding_mode: str = "circular",
        eps: float = 1e-5,
        x0: str = "interp",
        kernel_init: str = "gaussian_softmax",
    ) -> None:
        super().__init__()
        self.in_channels = check_pos_int("in_channels", in_channels)
        check_pos_int("width", width)
        check_pos_int("num_blocks", num_blocks)
        factors = _stage_factors(scale)
        if upsampler not in UPSAMPLERS:
            raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {upsampler!r}")
        self.scale = scale
        self.upsampler = upsampler
        self.conv_first = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv_body = nn.Sequential(*[_ResidualBlock(width) for _ in range(num_blocks)])
        stages = []
        for f in factors:
            if upsampler == "pixelshuffle":
                ops = [nn.Conv2d(width, width * f * f, 3, padding=1), nn.PixelShuffle(f)]
            elif upsampler == "nearest":
                ops = [nn.Upsample(scale_factor=f, mode="nearest"), nn.Conv2d(width, width, 3, padding=1)]
            elif upsampler == "convt":
                ops = [nn.Conv2d(width, width, 3, padding=1), nn.ConvTranspose2d(width, width, f, stride=f, groups=width)]
            else:
                ops = [
                    nn.Conv2d(width, width, 3, padding=1),
                    Converse2d(width, kernel_size, f, padding, padding_mode, eps, x0, kernel_init),
                ]
            stages.append(nn.Sequential(*ops, nn.LeakyReLU(0.1)))
        self.upsample = nn.Sequential(*stages)
        self.conv_hres = nn.Conv2d(width, width, 3, padding=1)
        self.conv_last = nn.Conv2d(width, in_channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, self.in_channels)
        f = self.conv_body(self.act(self.conv_first(x)))
        f = self.upsample(f)
        f = self.conv_last(self.act(self.conv_hres(f)))
        return f + _bilinear_skip(x, self.scale)


class ConverseSRResNet(RestorationModel):
    """Converse-SRResNet (paper Fig. 3b), the structure of the released checkpoint.

    ``conv_first`` 1x1 -> GELU -> ``conv_body`` (``num_blocks`` converse blocks, 5x5,
    replicate padding 4) -> per x2 stage ``[upconv<i> converse block -> up<i> -> GELU]``
    -> ``conv_hres`` converse block -> GELU -> ``conv_last`` 1x1 without bias; plus the
    bilinearly upsampled input (half-pixel centres). ``up<i>`` is a depthwise
    Converse2d with scale 2 (``up_kernel_size`` 2x2, replicate padding ``up_padding`` 2,
    eps ``up_eps`` 1e-3). x4 has two stages (``upconv1/up1``, ``upconv2/up2``), x2 and x3
    one. 699,072 parameters at the defaults.

    Args:
        in_channels: image channels.
        width: feature channels (``num_features``).
        num_blocks: converse blocks in ``conv_body``.
        scale: 2, 3 or 4.
        kernel_size, padding, padding_mode, eps, x0, kernel_init: of the blocks' Converse2d.
        up_kernel_size, up_padding, up_eps: of the upsampling Converse2d.

    Shape: (N, in_channels, H, W) -> (N, in_channels, H*scale, W*scale).

    Example:
        >>> import torch
        >>> from conversenet.models import ConverseSRResNet
        >>> net = ConverseSRResNet(width=8, num_blocks=1)
        >>> net(torch.rand(1, 3, 7, 10)).shape
        torch.Size([1, 3, 28, 40])
    """

    task = "sr"
    spatial = "converse"

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 64,
        num_blocks: int = 16,
        scale: int = 4,
        kernel_size: int = 5,
        padding: Optional[int] = 4,
        padding_mode: str = "replicate",
        eps: float = 1e-5,
        x0: str = "interp",
        kernel_init: str = "gaussian_softmax",
        up_kernel_size: int = 2,
        up_padding: int = 2,
        up_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        self.in_channels = check_pos_int("in_channels", in_channels)
        factors = _stage_factors(scale)
        self.scale = scale
        common = dict(
            padding=padding, padding_mode=padding_mode, eps=eps, x0=x0,
            kernel_init=kernel_init, spatial=self.spatial,
        )
        self.conv_first = nn.Conv2d(in_channels, width, 1)
        self.conv_body = block_stack(num_blocks, width, kernel_size, **common)
        self._stages = len(factors)
        for i, f in enumerate(factors, 1):
            setattr(self, f"upconv{i}", ConverseBlock(width, kernel_size, **common))
            setattr(self, f"up{i}", self._make_up(width, f, up_kernel_size, up_padding, padding_mode, up_eps, x0, kernel_init))
        self.conv_hres = ConverseBlock(width, kernel_size, **common)
        self.conv_last = nn.Conv2d(width, in_channels, 1, bias=False)
        self.act = nn.GELU()

    def _make_up(self, width, f, k, padding, padding_mode, eps, x0, kernel_init) -> nn.Module:
        return Converse2d(width, k, f, padding, padding_mode, eps, x0, kernel_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, self.in_channels)
        f = self.conv_body(self.act(self.conv_first(x)))
        for i in range(1, self._stages + 1):
            up = getattr(self, f"up{i}")
            f = gelu_fresh(self.act, up(getattr(self, f"upconv{i}")(f)), up)
        f = pointwise(self.conv_last, gelu_fresh(self.act, self.conv_hres(f), self.conv_hres))
        return f + _bilinear_skip(x, self.scale)


class _NearestDepthwise(nn.Module):
    """Nearest x f interpolation, then a depthwise conv ("same" size) with ``padding_mode``."""

    def __init__(self, width: int, f: int, k: int, padding_mode: str) -> None:
        super().__init__()
        self.f = f
        mode = "zeros" if padding_mode == "constant" else padding_mode
        self.conv = nn.Conv2d(width, width, k, padding="same", padding_mode=mode, groups=width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.f, mode="nearest"))


class ConvSRResNet(ConverseSRResNet):
    """Conv-SRResNet: :class:`ConverseSRResNet` with each Converse2d replaced by a depthwise
    convolution of the same kernel size. A stride-1 depthwise conv cannot upsample, so the
    ``up<i>`` layers are nearest x2 interpolation followed by a depthwise conv of
    ``up_kernel_size`` (our choice; the paper does not specify). ``padding``/``eps`` are unused.

    Shape: (N, in_channels, H, W) -> (N, in_channels, H*scale, W*scale).

    Example:
        >>> import torch
        >>> from conversenet.models import ConvSRResNet
        >>> ConvSRResNet(width=8, num_blocks=1)(torch.rand(1, 3, 5, 6)).shape
        torch.Size([1, 3, 20, 24])
    """

    spatial = "conv"

    def _make_up(self, width, f, k, padding, padding_mode, eps, x0, kernel_init) -> nn.Module:
        return _NearestDepthwise(width, f, k, padding_mode)


class ConvTSRResNet(ConverseSRResNet):
    """ConvT-SRResNet: :class:`ConverseSRResNet` with each Converse2d replaced by a depthwise
    transposed convolution; the ``up<i>`` layers use kernel = stride = the stage factor
    (2x2 for x4, the kernel size of the Converse2d they replace).

    Shape: (N, in_channels, H, W) -> (N, in_channels, H*scale, W*scale).

    Example:
        >>> import torch
        >>> from conversenet.models import ConvTSRResNet
        >>> ConvTSRResNet(width=8, num_blocks=1)(torch.rand(1, 3, 5, 6)).shape
        torch.Size([1, 3, 20, 24])
    """

    spatial = "convt"

    def _make_up(self, width, f, k, padding, padding_mode, eps, x0, kernel_init) -> nn.Module:
        return nn.ConvTranspose2d(width, width, f, stride=f, groups=width)


# ------------------------------------------------------------------------ weight sets
_EVAL = "conversenet eval --model converse_srresnet --weights official --dataset {ds} --scale 4"

CONVERSE_SRRESNET_OFFICIAL = register_weights(WeightSet(
    name="converse_srresnet_official", model="converse_srresnet", task="sr", channels=3, scale=4,
    file="converse_srresnet.pth", origin="authors", url=OFFICIAL_URL + "converse_srresnet.pth",
    sha256="ed75a697f1ebb9f9ad6a53b7875bb76098f23b48d87bf6f0b0dd8cde6df81d2f",
    scores=tuple(Score(ds, {"psnr_y": p, "ssim_y": s}, _EVAL.format(ds=ds))
                 for ds, p, s in (("set5", 32.25, 0.8956), ("set14", 28.72, 0.7837), ("bsd100", 27.62, 0.7367))),
    source="the paper's authors, released Converse-SRResNet, RGB, bicubic x4 (docs/REPRODUCTION.md, Table 5)",
    licence="as published by the authors in github.com/cszn/ConverseNet (not redistributed here)",
))
