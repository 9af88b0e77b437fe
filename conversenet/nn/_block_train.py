"""The converse block with autograd on channels-last CPU features, its pointwise parts fused.

A :class:`~conversenet.nn.ConverseBlock` is ``x + B1(x)`` then ``x + B2(x)`` with
``B1 = LN -> 1x1 -> GELU -> Converse2d -> GELU -> 1x1`` and ``B2 = LN -> 1x1 -> GELU -> 1x1``.
Run module by module in training, every intermediate is a fresh tensor, and on CPUs each
fresh tensor above glibc's mmap threshold (at most 32 MB: 16 x 128 x 64 x 64 float32 is
33.5 MB) page-faults in anew on every step. Here the three pointwise pieces are autograd
functions whose temporaries come from the per-thread workspace
(:mod:`conversenet.functional._workspace`) and whose backward recomputes what is cheap:

* ``_Branch1`` (all of ``B1`` when its spatial operator is a learnable s = 1 Converse2d):
  keeps x, the first 1x1 result a and the Converse2d result c; LN, both GELUs and the
  operator's input spectrum are recomputed; the gradients between the pieces (of c and of
  the operator's input) are workspace temporaries too.
* ``_Head``  (``LN -> 1x1 -> GELU``) and ``_Tail`` (``GELU -> 1x1``): ``B1`` around any
  other spatial module (called as a module in between, e.g. the benchmark's swapped
  operators); ``_Head`` keeps x and a, ``_Tail`` its input.
* ``_Mlp``   (all of ``B2``): keeps x only; LN, the first 1x1 and its GELU are recomputed.

On channels-last features every 1x1 convolution is one (NHW, C) x (C, O) matrix product.
The values are the modules' own formulas (torch's ``native_layer_norm``, exact GELU,
``addmm``); gradients agree with the module-by-module path to float rounding. Second-order
gradients (``create_graph=True``) run the same pieces again as plain differentiable torch
operations, so they are supported too.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..functional import _workspace
from ..functional import converse as _fc
from ..functional._channels_last import is_channels_last
from .converse import Converse2d, ConverseBlock, LayerNorm2d, _is_pointwise

__all__ = ["applies", "forward"]


def applies(block: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`forward` handles ``block(x)``: a :class:`ConverseBlock` of the standard
    layout (LayerNorm2d, 1x1 convolutions, exact GELUs; its spatial operator may be anything),
    x a channels-last CPU float tensor whose dtype every parameter shares, autograd on. The
    caller checks hooks and torch.compile."""
    if not (type(block) is ConverseBlock and x.device.type == "cpu" and is_channels_last(x)
            and x.dtype in (torch.float32, torch.float64) and torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")):
        return False
    c = x.shape[1]
    s1, s2 = block.conv1, block.conv2
    if not (len(s1) == 6 and len(s2) == 4):
        return False
    hidden = s1[1].weight.shape[0] if isinstance(s1[1], nn.Conv2d) else None
    return (type(s1[0]) is LayerNorm2d and type(s2[0]) is LayerNorm2d
            and _is_pointwise(s1[1], c) and _is_pointwise(s2[1], c)
            and _is_pointwise(s1[5], hidden) and _is_pointwise(s2[3], s2[1].weight.shape[0])
            and all(type(a) is nn.GELU and a.approximate == "none" for a in (s1[2], s1[4], s2[2]))
            and all(p.dtype == x.dtype for p in block.parameters()))


def forward(block: ConverseBlock, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` (see :func:`applies`) through the fused pieces; returns channels-last
    (N, C, H, W)."""
    s1, s2 = block.conv1, block.conv2
    ln, op = s1[0], s1[3]
    parts = None
    if type(op) is Converse2d and op.scale == 1 and op.weight is not None:
        parts = _fc.s1cl_parts((x.shape[0], op.channels, *x.shape[2:]), x.dtype, op.weight, op.lam, op.padding,
                               op.padding_mode, op.x0, op.fft_size)
    if parts is not None:
        h = _Branch1.apply(x, ln.weight, ln.bias, ln.eps, s1[1].weight, s1[1].bias, parts[0], parts[1],
                           op.padding_mode, s1[5].weight, s1[5].bias)
    else:
        h = _Head.apply(x, ln.weight, ln.bias, ln.eps, s1[1].weight, s1[1].bias)
        h = _Tail.apply(_channels_last(op(h)), s1[5].weight, s1[5].bias)
    x = x + (h if block.alpha1 is None else block.alpha1 * h)
    h = _Mlp.apply(x, s2[0].weight, s2[0].bias, s2[0].eps, s2[1].weight, s2[1].bias, s2[3].weight, s2[3].bias)
    return x + (h if block.alpha2 is None else block.alpha2 * h)


# --- helpers --------------------------------------------------------------------------------
def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t if is_channels_last(t) else t.contiguous(memory_format=torch.channels_last)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) channels-last -> its (N*H*W, C) matrix (a view)."""
    n, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(n * h * w, c)


def _image(m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N*H*W, O) matrix -> channels-last (N, O, H, W) view, N, H, W from ``like``."""
    n, _, h, w = like.shape
    return m.view(n, h, w, m.shape[1]).permute(0, 3, 1, 2)


def _mat(weight: torch.Tensor) -> torch.Tensor:
    return weight.view(weight.shape[0], weight.shape[1])  # (O, C, 1, 1) -> (O, C)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """x @ W^T + b into ``out`` (x: (P, C); W: (O, C, 1, 1))."""
    if bias is None:
        return torch.mm(x, _mat(weight).t(), out=out)
    return torch.addmm(bias, x, _mat(weight).t(), out=out)


def _linear_grads(grad: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  needs_w: bool, needs_b: bool):
    """Gradients of W (O, C, 1, 1) and b of ``inp @ W^T + b`` from ``grad`` (P, O)."""
    gw = torch.mm(grad.t(), inp).view_as(weight) if needs_w else None
    gb = grad.sum(0) if (needs_b and bias is not None) else None
    return gw, gb


def _buf(name: str, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    return _workspace.buffer(name, (rows, cols), like)


def _new(rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    """A fresh (rows, cols) matrix for a tensor that is kept or returned (on huge pages)."""
    return _workspace.fresh((rows, cols), like.dtype, like.device)


def _layer_norm(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float):
    return torch.native_layer_norm(x2, (x2.shape[1],), weight, bias, eps)  # (out, mean, rstd)


def _layer_norm_backward(grad: torch.Tensor, x2: torch.Tensor, mean, rstd, weight, bias, mask: List[bool]):
    return torch.ops.aten.native_layer_norm_backward(grad, x2, (x2.shape[1],), mean, rstd, weight, bias, mask)


def _gelu_backward(grad: torch.Tensor, a: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_backward.grad_input(grad, a, approximate="none", grad_input=out)


def _head_grads(ga: torch.Tensor, x: torch.Tensor, ln_w, ln_b, eps: float, w, b, need, stats=None):
    """Backward of ``conv1x1(LN(x))`` from the gradient ``ga`` (P, O) of its result:
    (gx as a channels-last image or None, g ln_w, g ln_b, gw, gb). ``stats``: the LayerNorm's
    (out, mean, rstd) when the caller recomputed them already; ``need``: the autograd
    function's needs_input_grad, in the order (x, ln_w, ln_b, eps, w, b, ...)."""
    x2 = _rows(x)
    ln, mean, rstd = stats if stats is not None else _layer_norm(x2, ln_w, ln_b, eps)
    gw, gb = _linear_grads(ga, ln, w, b, need[4], need[5])
    gln = torch.mm(ga, _mat(w), out=_buf("bt-grad-narrow", ga.shape[0], x.shape[1], x))
    gx, glw, glb = _layer_norm_backward(gln, x2, mean, rstd, ln_w, ln_b, list(need[:3]))
    return (_image(gx, x) if gx is not None else None), glw, glb, gw, gb


def _differentiable(plain, ctx, grads, inputs):
    """create_graph=True: the piece again in plain torch operations, differentiated by
    autograd (the saved inputs carry their own graphs)."""
    with torch.enable_grad():
        wanted = [t for t, need in zip(inputs, ctx.needs_input_grad) if need and t is not None]
        out = plain(*inputs)
        got = iter(torch.autograd.grad(out, wanted, grads, create_graph=True, allow_unused=True))
    return tuple(next(got) if (need and t is not None) else None for t, need in zip(inputs, ctx.needs_input_grad))


# --- the pieces -----------------------------------------------------------------------------
def _plain_head(x, ln_w, ln_b, eps, w, b):
    return F.gelu(F.conv2d(F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), ln_w, ln_b, eps).permute(0, 3, 1, 2),
                           w, b))


class _Head(torch.autograd.Function):
    """``GELU(conv1x1(LN(x)))`` of channels-last x (N, C, H, W) -> channels-last (N, O, H, W)."""

    @staticmethod
    def forward(ctx, x, ln_w, ln_b, eps, w, b):
        x2 = _rows(x)
        p = x2.shape[0]
        ln, _, _ = _layer_norm(x2, ln_w, ln_b, eps)
        a = _linear(ln, w, b, _new(p, w.shape[0], x))   # kept for backward
        y = torch.ops.aten.gelu.out(a, out=_new(*a.shape, x))
        ctx.eps = eps
        ctx.save_for_backward(x, ln_w, ln_b, w, b, a)
        return _image(y, x)

    @staticmethod
    def backward(ctx, grad):
        x, ln_w, ln_b, w, b, a = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _differentiable(_plain_head, ctx, grad, (x, ln_w, ln_b, ctx.eps, w, b))
        ga = _gelu_backward(_rows(_channels_last(grad)), a, _buf("bt-grad-hidden", *a.shape, x))
        gx, glw, glb, gw, gb = _head_grads(ga, x, ln_w, ln_b, ctx.eps, w, b, ctx.needs_input_grad)
        return gx, glw, glb, None, gw, gb


def _plain_tail(c, w, b):
    return F.conv2d(F.gelu(c), w, b)


class _Tail(torch.autograd.Function):
    """``conv1x1(GELU(c))`` of channels-last c (N, O, H, W) -> channels-last (N, C, H, W)."""

    @staticmethod
    def forward(ctx, c, w, b):
        c2 = _rows(c)
        d = torch.ops.aten.gelu.out(c2, out=_buf("bt-hidden", *c2.shape, c))
        e = _linear(d, w, b, _new(c2.shape[0], w.shape[0], c))
        ctx.save_for_backward(c, w, b)
        return _image(e, c)

    @staticmethod
    def backward(ctx, grad):
        c, w, b = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _differentiable(_plain_tail, ctx, grad, (c, w, b))
        c2, g2 = _rows(c), _rows(_channels_last(grad))
        d = torch.ops.aten.gelu.out(c2, out=_buf("bt-hidden", *c2.shape, c))
        gw, gb = _linear_grads(g2, d, w, b, ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        gc = None
        if ctx.needs_input_grad[0]:
            gd = torch.mm(g2, _mat(w), out=_buf("bt-grad-hidden", *c2.shape, c))
            gc = _image(_gelu_backward(gd, c2, _new(*c2.shape, c)), c)
        return gc, gw, gb


def _plain_mlp(x, ln_w, ln_b, eps, w1, b1, w2, b2):
    return F.conv2d(_plain_head(x, ln_w, ln_b, eps, w1, b1), w2, b2)


class _Mlp(torch.autograd.Function):
    """``conv1x1(GELU(conv1x1(LN(x))))`` of channels-last x (N, C, H, W) -> channels-last
    (N, C', H, W); keeps x only."""

    @staticmethod
    def forward(ctx, x, ln_w, ln_b, eps, w1, b1, w2, b2):
        x2 = _rows(x)
        p = x2.shape[0]
        ln, _, _ = _layer_norm(x2, ln_w, ln_b, eps)
        d = _linear(ln, w1, b1, _buf("bt-hidden", p, w1.shape[0], x))
        torch.ops.aten.gelu_(d)
        e = _linear(d, w2, b2, _new(p, w2.shape[0], x))
        ctx.eps = eps
        ctx.save_for_backward(x, ln_w, ln_b, w1, b1, w2, b2)
        return _image(e, x)

    @staticmethod
    def backward(ctx, grad):
        x, ln_w, ln_b, w1, b1, w2, b2 = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _differentiable(_plain_mlp, ctx, grad, (x, ln_w, ln_b, ctx.eps, w1, b1, w2, b2))
        need = ctx.needs_input_grad
        x2, g2 = _rows(x), _rows(_channels_last(grad))
        p, o = x2.shape[0], w1.shape[0]
        ln, mean, rstd = _layer_norm(x2, ln_w, ln_b, ctx.eps)
        a = _linear(ln, w1, b1, _buf("bt-hidden-pre", p, o, x))
        d = torch.ops.aten.gelu.out(a, out=_buf("bt-hidden", p, o, x))
        gw2, gb2 = _linear_grads(g2, d, w2, b2, need[6], need[7])
        gd = torch.mm(g2, _mat(w2), out=_buf("bt-grad-hidden", p, o, x))
        ga = _gelu_backward(gd, a, gd)                                  # in place: gd is spent
        gx, glw, glb, gw1, gb1 = _head_grads(ga, x, ln_w, ln_b, ctx.eps, w1, b1, need, (ln, mean, rstd))
        return gx, glw, glb, None, gw1, gb1, gw2, gb2


def _plain_branch1(x, ln_w, ln_b, eps, w1, b1, g, pads, mode, w2, b2):
    y = _plain_head(x, ln_w, ln_b, eps, w1, b1).contiguous()
    return _plain_tail(_fc._ConverseS1.apply(y, g, pads, mode), w2, b2)  # differentiable twice


class _Branch1(torch.autograd.Function):
    """``conv1x1(GELU(Converse2d(GELU(conv1x1(LN(x))))))`` of channels-last x (N, C, H, W),
    the operator given by its filter g (1, O, M, W//2+1) and padding (``pads``, ``mode``)
    -> channels-last (N, C', H, W). Keeps x, a (the first 1x1 result) and c (the operator's
    result)."""

    @staticmethod
    def forward(ctx, x, ln_w, ln_b, eps, w1, b1, g, pads, mode, w2, b2):
        x2 = _rows(x)
        p, o = x2.shape[0], w1.shape[0]
        ln, _, _ = _layer_norm(x2, ln_w, ln_b, eps)
        a = _linear(ln, w1, b1, _new(p, o, x))               # kept for backward
        del ln
        y = torch.ops.aten.gelu.out(a, out=_buf("bt-hidden", p, o, x))
        c = _fc.s1cl_forward(_image(y, x), g, pads, mode)                         # kept for backward
        d = torch.ops.aten.gelu.out(_rows(c), out=y)                              # y is spent
        e = _linear(d, w2, b2, _new(p, w2.shape[0], x))
        ctx.eps, ctx.pads, ctx.mode = eps, pads, mode
        ctx.save_for_backward(x, ln_w, ln_b, w1, b1, g, w2, b2, a, c)
        return _image(e, x)

    @staticmethod
    def backward(ctx, grad):
        x, ln_w, ln_b, w1, b1, g, w2, b2, a, c = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _differentiable(_plain_branch1, ctx, grad,
                                   (x, ln_w, ln_b, ctx.eps, w1, b1, g, ctx.pads, ctx.mode, w2, b2))
        need = ctx.needs_input_grad
        n, _, h, w = x.shape
        g2, c2 = _rows(_channels_last(grad)), _rows(c)
        p, o = c2.shape
        # tail: GELU -> 1x1
        d = torch.ops.aten.gelu.out(c2, out=_buf("bt-hidden", p, o, x))
        gw2, gb2 = _linear_grads(g2, d, w2, b2, need[9], need[10])
        gc = _gelu_backward(torch.mm(g2, _mat(w2), out=_buf("bt-grad-hidden", p, o, x)), c2,
                            _buf("bt-grad-hidden", p, o, x))                      # in place
        # the operator: its input y = GELU(a) again (for the filter gradient's spectrum)
        y = torch.ops.aten.gelu.out(a, out=d) if need[6] else None               # d is spent
        gy, gg = _fc.s1cl_backward(_image(gc, x), _image(y, x) if y is not None else None, g, ctx.pads,
                                   ctx.mode, True, need[6], out=_buf("bt-hidden-pre", p, o, x).view(n, h, w, o))
        # head: LN -> 1x1 -> GELU
        gy2 = _rows(gy)
        ga = _gelu_backward(gy2, a, gy2)                                          # in place
        gx, glw, glb, gw1, gb1 = _head_grads(ga, x, ln_w, ln_b, ctx.eps, w1, b1, need)
        return gx, glw, glb, None, gw1, gb1, gg, None, None, gw2, gb2
