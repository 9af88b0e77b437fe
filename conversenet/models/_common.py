"""Shared helpers of the model zoo: stacks of converse blocks (the argument checks the
models use, ``check_pos_int`` and ``check_image``, come from :mod:`conversenet.checks`)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..checks import check_image, check_pos_int
from ..nn import ConverseBlock

__all__ = ["check_pos_int", "check_image", "block_stack", "BlockStack"]


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
