"""ConverseUpsample: a drop-in for transposed-convolution and pixel-shuffle upsamplers."""

from __future__ import annotations

from typing import Tuple, Union

import torch
import torch.nn as nn

from ..checks import check_image, check_int, check_positive_int
from .converse import Converse2d

__all__ = ["ConverseUpsample"]


class ConverseUpsample(nn.Module):
    """Upsampling by the paper's reverse convolution, for any channel counts and any size.

    Replaces ``nn.ConvTranspose2d(in_channels, out_channels, scale, stride=scale)`` or a
    pixel-shuffle upsampler (``Conv2d(in, out * s * s, ...)`` + ``PixelShuffle(s)``):
    same call, output exactly ``(N, out_channels, H * scale, W * scale)`` for every H, W
    (odd, prime and 1 included; with padding mode ``"replicate"`` or ``"constant"`` there
    is no lower limit on the size).

    Structure: a 1x1 convolution ``in_channels -> out_channels`` (``proj``; only where the
    counts differ, else identity) at the input resolution, where it is ``scale**2`` times
    cheaper than at the output's and the solve then runs on ``out_channels`` planes; then
    a depthwise :class:`Converse2d` with that scale (``up``). The defaults are the
    upsampling Converse2d of the paper's Converse-SRResNet: a 2x2 kernel, replicate
    padding 2, ``eps`` 1e-3, ``x0="interp"`` (nearest interpolation of the input).

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        scale: integer upsampling factor s >= 1.
        kernel_size: k or (kh, kw) of the Converse2d kernel.
        padding: padding added to every side before the solve (``padding * s`` cropped
            after). ``"reflect"`` needs ``padding < min(H, W)``, ``"circular"``
            ``padding <= min(H, W)`` (a clear error names the padding otherwise).
        padding_mode: circular | reflect | replicate | constant.
        x0: ``"interp"`` or ``"zero"``.
        eps: lower bound of the Converse2d's lam.
        bias: whether the 1x1 projection has a bias.
        kernel_init: of the Converse2d kernel.

    Shape:
        (N, in_channels, H, W) -> (N, out_channels, H*s, W*s).

    Example:
        >>> import torch
        >>> from conversenet.nn import ConverseUpsample
        >>> up = ConverseUpsample(64, 32, 2)      # was nn.ConvTranspose2d(64, 32, 2, stride=2)
        >>> up(torch.randn(1, 64, 13, 7)).shape
        torch.Size([1, 32, 26, 14])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale: int,
        kernel_size: Union[int, Tuple[int, int]] = 2,
        padding: int = 2,
        padding_mode: str = "replicate",
        x0: str = "interp",
        eps: float = 1e-3,
        bias: bool = True,
        kernel_init: str = "gaussian_softmax",
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.scale = check_int("scale", scale, 1)
        self.proj = nn.Conv2d(in_channels, out_channels, 1, bias=bias) if in_channels != out_channels else nn.Identity()
        self.up = Converse2d(out_channels, kernel_size, self.scale, padding, padding_mode, eps, x0, kernel_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image(x, self.in_channels)
        return self.up(self.proj(x))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, scale={self.scale}"
