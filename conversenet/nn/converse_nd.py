"""Converse1d and Converse3d: learnable depthwise reverse convolution over 1 or 3 axes."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from ..checks import check_choice, check_int, check_int_tuple, check_positive_int, check_positive_number, lam_from_bias
from ..functional import converse as _fc
from ..functional import converse_nd as _fnd
from .converse import KERNEL_INITS

__all__ = ["Converse1d", "Converse3d"]

_IntOrTuple = Union[int, Sequence[int]]


class _ConverseNd(nn.Module):
    """Shared body of :class:`Converse1d` and :class:`Converse3d` (d = ``_ndim``).

    Parametrised exactly like :class:`conversenet.nn.Converse2d`: ``weight`` (1, C, *k) is
    Gaussian-random then softmax over its taps (once, at initialisation), ``bias``
    (1, C, 1..1) starts at 0 and ``lam = sigmoid(bias - 9) + eps``.
    """

    _ndim = 0

    def __init__(
        self,
        channels: int,
        kernel_size: _IntOrTuple,
        scale: _IntOrTuple = 1,
        padding: int = 0,
        padding_mode: str = "circular",
        eps: float = 1e-5,
        x0: str = "interp",
        kernel_init: str = "gaussian_softmax",
        learn_kernel: bool = True,
    ) -> None:
        super().__init__()
        d = self._ndim
        self.channels = check_positive_int("channels", channels)
        self.kernel_size = check_int_tuple("kernel_size", kernel_size, d)
        self.scale = _fnd._check_scale(scale, d)
        self.padding = check_int("padding", padding, 0)
        self.padding_mode = check_choice("padding_mode", padding_mode, _fc.PADDING_MODES)
        self.eps = check_positive_number("eps", eps)
        self.x0 = check_choice("x0", x0, _fc.X0_MODES)
        self.kernel_init = check_choice("kernel_init", kernel_init, KERNEL_INITS)
        self.learn_kernel = bool(learn_kernel)
        if learn_kernel:
            self.weight = nn.Parameter(torch.empty(1, channels, *self.kernel_size))
        else:
            self.register_parameter("weight", None)
        self.bias = nn.Parameter(torch.zeros(1, channels, *([1] * d)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.bias.zero_()
            if self.weight is None:
                return
            if self.kernel_init == "uniform":
                self.weight.uniform_(0, 1)
            else:
                self.weight.normal_()
                if self.kernel_init == "gaussian_softmax":
                    flat = torch.softmax(self.weight.reshape(1, self.channels, -1), dim=-1)
                    self.weight.copy_(flat.reshape_as(self.weight))

    @property
    def lam(self) -> torch.Tensor:
        """(1, C, 1..1) regulariser ``sigmoid(bias - 9) + eps``
        (:func:`conversenet.checks.lam_from_bias`; at least float32)."""
        return lam_from_bias(self.bias, self.eps)

    def forward(self, x: torch.Tensor, kernel: Optional[torch.Tensor] = None) -> torch.Tensor:
        name = type(self).__name__
        if self.weight is None:
            if kernel is None:
                raise ValueError(f"this {name} has learn_kernel=False: pass forward(x, kernel)")
            weight = kernel
        else:
            if kernel is not None:
                raise ValueError(f"this {name} learns its kernel; do not pass kernel=")
            weight = self.weight
        return _fnd.converse_nd(
            x, weight, self.lam, self.scale, self.padding, self.padding_mode, self.x0, ndim=self._ndim
        )

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, kernel_size={self.kernel_size}, scale={self.scale}, "
            f"padding={self.padding}, padding_mode={self.padding_mode!r}, eps={self.eps}, "
            f"x0={self.x0!r}, learn_kernel={self.learn_kernel}"
        )


class Converse1d(_ConverseNd):
    """Learnable depthwise 1-D reverse convolution (see :func:`conversenet.functional.converse1d`).

    Parameters:
        weight: (1, C, k), softmax of a Gaussian sample at initialisation (or
            ``kernel_init`` ``"gaussian"``/``"uniform"``); absent if ``learn_kernel=False``.
        bias: (1, C, 1), zeros; ``lam = sigmoid(bias - 9) + eps``.

    Args:
        channels: C.
        kernel_size: k.
        scale: upsampling factor s (output s times longer).
        padding: samples added to both ends before solving (default 0, no padding: the
            signal is treated as periodic; ``Converse2d`` defaults to ``k - 1``).
        padding_mode: circular | reflect | replicate | constant.
        eps, x0, kernel_init, learn_kernel: as in :class:`conversenet.nn.Converse2d`.

    Shape:
        (N, C, L) -> (N, C, L*s).

    Example:
        >>> import torch
        >>> from conversenet.nn import Converse1d
        >>> Converse1d(8, 5, scale=2, padding=4, padding_mode="replicate")(torch.randn(3, 8, 17)).shape
        torch.Size([3, 8, 34])
    """

    _ndim = 1


class Converse3d(_ConverseNd):
    """Learnable depthwise 3-D reverse convolution (see :func:`conversenet.functional.converse3d`).

    Parameters:
        weight: (1, C, kd, kh, kw), softmax over its taps at initialisation.
        bias: (1, C, 1, 1, 1), zeros; ``lam = sigmoid(bias - 9) + eps``.

    Args:
        channels: C.
        kernel_size: k or (kd, kh, kw).
        scale: s for every axis or (s_d, s_h, s_w).
        padding: voxels added to both ends of every axis before solving (default 0).
        padding_mode: circular | reflect | replicate | constant.
        eps, x0, kernel_init, learn_kernel: as in :class:`conversenet.nn.Converse2d`.

    Shape:
        (N, C, D, H, W) -> (N, C, D*s_d, H*s_h, W*s_w).

    Example:
        >>> import torch
        >>> from conversenet.nn import Converse3d
        >>> Converse3d(4, 3, scale=(1, 2, 2), padding=2)(torch.randn(1, 4, 5, 8, 8)).shape
        torch.Size([1, 4, 5, 16, 16])
    """

    _ndim = 3
