"""Shared helpers of the model zoo: argument checks and stacks of converse blocks."""

from __future__ import annotations

import numbers
from typing import Optional

import torch
import torch.nn as nn

from ..nn import ConverseBlock

__all__ = ["check_pos_int", "check_image", "block_stack", "BlockStack"]


def check_pos_int(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or int(v) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def check_image(x, channels: int, name: str = "x") -> None:
    """Rejects anything that is not a real (N, channels, H, W) tensor, before any work."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex() or not x.is_floating_point():
        raise TypeError(f"{name} must have a real floating dtype, got {x.dtype}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must have shape (N, {channels}, H, W), got {tuple(x.shape)}")


def block_stack(
    num_blocks: int,
    width: int,
    kernel_size: int,
    padding: Optional[int],
    padding_mode: str,
    eps: float,
    x0: str,
    kernel_init: str,
    spatial: str = "converse",
    residual_scale: bool = False,
) -> nn.Sequential:
    """``num_blocks`` :class:`~conversenet.nn.ConverseBlock` s of width ``width`` in a Sequential."""
    check_pos_int("num_blocks", num_blocks)
    check_pos_int("width", width)
    return nn.Sequential(
        *[
            ConverseBlock(
                width, kernel_size, padding, padding_mode, eps, x0, kernel_init,
                residual_scale=residual_scale, spatial=spatial,
            )
            for _ in range(num_blocks)
        ]
    )


class BlockStack(nn.Module):
    """A Sequential of converse blocks kept under the attribute ``m_body``.

    Exists so that state-dict keys read ``p.m_body.<i>...`` as in the released
    deblurring checkpoints. Shape: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, body: nn.Sequential) -> None:
        super().__init__()
        self.m_body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m_body(x)
