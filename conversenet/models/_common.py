"""Shared helpers of the model zoo: stacks of converse blocks (the argument checks the
models use, ``check_pos_int`` and ``check_image``, come from :mod:`conversenet.checks`)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..checks import check_image, check_pos_int
from ..nn import ConverseBlock
from ..nn import _block_train
from ..nn.converse import _is_pointwise, hooked
from ..functional._channels_last import is_channels_last as _is_channels_last

__all__ = ["check_pos_int", "check_image", "block_stack", "BlockStack", "ConverseStack", "gelu_fresh", "pointwise"]


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
    return ConverseStack(
        *[
            ConverseBlock(
                width, kernel_size, padding, padding_mode, eps, x0, kernel_init,
                residual_scale=residual_scale, spatial=spatial,
            )
            for _ in range(num_blocks)
        ]
    )


class ConverseStack(nn.Sequential):
    """A Sequential of :class:`~conversenet.nn.ConverseBlock` s (state-dict keys ``<i>.``...).

    On a CPU, where the blocks' 1x1 products are faster on channels-last features
    (:meth:`~conversenet.nn.ConverseBlock.pixel_major`: measured), the whole stack runs on
    a channels-last copy of x, so that no block converts between layouts: without autograd
    through the fused block path, with autograd through the modules themselves (torch's
    convolutions, the LayerNorm and Converse2d keep channels-last; on the AMD EPYC a 1x1
    convolution's forward and backward took 46 ms channels-last against 92 ms planar at
    16 x 64 x 64 x 64). The result comes back in x's layout. Otherwise (other devices,
    torch.compile, autocast, blocks whose spatial operator is a convolution: the Conv-/ConvT-
    twins) it is a plain Sequential.

    Shape: (N, C, H, W) -> (N, C, H, W).
    """

    #: with autograd, recompute parts of each block in backward instead of keeping their
    #: activations (see :meth:`_run`); False keeps everything, as a plain Sequential does
    recompute: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._channels_last_pays(x):
            return self._run(x)
        out = self._run(x.contiguous(memory_format=torch.channels_last))
        return out if _is_channels_last(x) else _Planar.apply(out)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """The blocks one after another. With autograd (and ``recompute``, no forward hooks,
        not under torch.compile) each block keeps part of its activations and recomputes the
        rest in backward. On channels-last CPU features a standard block runs as the fused
        autograd pieces of :mod:`conversenet.nn._block_train` (its Converse2d branch keeps x,
        the first 1x1 result and the operator's result; its pointwise branch keeps x only;
        temporaries come from a reused workspace). Other blocks run their pointwise branch
        (LayerNorm -> 1x1 -> GELU -> 1x1) and the GELU -> 1x1 tail of their Converse2d branch
        under :func:`torch.utils.checkpoint.checkpoint` (non-reentrant). Converse-DnCNN's
        training step (16 x 1 x 64 x 64), live peak: 6.3 GB keeping everything, 4.1 GB with
        the checkpointing, 2.45 GB with the fused pieces, which are also faster
        (docs/PERFORMANCE.md)."""
        if not (self.recompute and torch.is_grad_enabled() and not torch.compiler.is_compiling()
                and not hooked(*self.modules())):
            return super().forward(x)
        for block in self:
            if _block_train.applies(block, x):
                x = _block_train.forward(block, x)
            else:
                x = _block_recomputed(block, x) if type(block) is ConverseBlock else block(x)
        return x

    def _channels_last_pays(self, x: torch.Tensor) -> bool:
        if (len(self) < 2 or x.device.type != "cpu" or x.dim() != 4 or x.dtype not in (torch.float32, torch.float64)
                or torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu")):
            return False
        for block in self:  # converse blocks (depthwise-convolution twins stay planar)
            if not (type(block) is ConverseBlock and not isinstance(block.conv1[3], (nn.Conv2d, nn.ConvTranspose2d))):
                return False
        return self[0].pixel_major(x)


class _Planar(torch.autograd.Function):
    """``x.contiguous()`` of a channels-last x whose gradient goes back channels-last: the
    stack's blocks then receive their gradients in their own layout (with ``contiguous()``
    each block's 1x1 convolutions converted them again, 8 ms a time at 16 x 64 x 64 x 64
    on an AMD EPYC)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last)


def _block_recomputed(block: ConverseBlock, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` with the GELU -> 1x1 tail of ``conv1`` and the whole of ``conv2`` under
    non-reentrant activation checkpointing (same values and gradients)."""
    from torch.utils.checkpoint import checkpoint

    head, tail = block.conv1[:-2], block.conv1[-2:]
    h = checkpoint(tail, head(x), use_reentrant=False)
    x = x + (h if block.alpha1 is None else block.alpha1 * h)
    h = checkpoint(block.conv2, x, use_reentrant=False)
    return x + (h if block.alpha2 is None else block.alpha2 * h)


def _inference(x: torch.Tensor) -> bool:
    return not torch.is_grad_enabled() and not torch.compiler.is_compiling() and x.device.type == "cpu"


def gelu_fresh(act: nn.Module, x: torch.Tensor, producer: nn.Module) -> torch.Tensor:
    """``act(x)`` for an x just returned by ``producer`` that nothing else holds. Without
    autograd on a CPU an exact ``nn.GELU`` runs in place: a fresh result would be another
    large allocation whose page faults cost several times the GELU itself (at 64 x 512 x 512,
    25 ms against 4.4 ms in place on an AMD EPYC)."""
    if (_inference(x) and type(act) is nn.GELU and act.approximate == "none" and x.is_floating_point()
            and not hooked(act, producer)):
        return torch.ops.aten.gelu_(x)
    return act(x)


def pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a 1x1 convolution; without autograd on a CPU as one matrix product per
    image, (O, C) x (C, HW) (torch's convolution ran a 64 -> 3 one at 512 x 512 in 27 ms,
    the product in 8 ms, on an AMD EPYC)."""
    n, c = x.shape[:2]
    if not (_inference(x) and x.dim() == 4 and x.dtype in (torch.float32, torch.float64)
            and _is_pointwise(conv, c) and not hooked(conv)):
        return conv(x)
    # detached: torch.matmul ran 9x slower with a view of a parameter (even under no_grad)
    w = conv.weight.detach().reshape(conv.weight.shape[0], c).to(x.dtype)
    xs = x.reshape(n, c, -1)
    y = x.new_empty(n, w.shape[0], xs.shape[-1])
    for i in range(n):
        torch.mm(w, xs[i], out=y[i])
    if conv.bias is not None:
        y = y.add_(conv.bias.detach().to(x.dtype)[:, None])
    return y.reshape(n, -1, *x.shape[2:])


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
