"""The Converse2D solve as one ``torch.library`` custom op, for ``torch.compile``.

Inductor cannot generate code for complex tensors, and the solve is built from complex
spectra (kernel DFTs, the filter, FFTs). Under ``torch.compile``,
:func:`conversenet.functional.converse2d` therefore calls ``conversenet::converse2d_solve``:
the compiler sees one node with a fake (shape-only) implementation, validation, casts,
padding arithmetic and everything around the layer are compiled as usual, and at run time
the node calls the same eager implementation (``converse._solve``) with its fast paths.
Eager calls do not go through the op at all.

Autograd: the backward is a second custom op, ``conversenet::converse2d_solve_backward``,
which recomputes the solve with autograd on and returns the vector-Jacobian products for
the inputs that need them. It costs one extra forward solve per backward; the eager path
keeps its lean hand-written backward. Double backward through a compiled graph is not
supported (``torch.compile`` does not support it in general).
"""

from __future__ import annotations

from typing import List, Optional

import torch

from ..checks import check_lam_values

__all__ = ["converse2d_solve", "converse2d_solve_backward"]

Tensor = torch.Tensor


def _impl():
    from . import converse  # the op module is imported by converse.py itself

    return converse


def _out_shape(y: Tensor, scale: int):
    n, c, h, w = y.shape
    return (n, c, scale * h, scale * w)


@torch.library.custom_op("conversenet::converse2d_solve", mutates_args=())
def converse2d_solve(
    y: Tensor, weight: Tensor, lam: Tensor, x0: Optional[Tensor], filt: Optional[Tensor],
    scale: int, pads: List[int], padding_mode: str, x0_mode: str,
) -> Tensor:
    """``converse._solve`` on validated compute-dtype inputs -> contiguous (N, C, sH, sW)."""
    c = _impl()
    with _eager_dispatch(), torch.no_grad():
        # lam values cannot be checked while tracing (data-dependent); they are here
        check_lam_values(lam, lam.dtype)
        return c._solve(y, weight, lam, x0, filt, scale, tuple(pads), padding_mode, x0_mode).contiguous()


@converse2d_solve.register_fake
def _(y, weight, lam, x0, filt, scale, pads, padding_mode, x0_mode):
    return y.new_empty(_out_shape(y, scale))


def _eager_dispatch():
    """Runs the implementations with the dispatcher state of plain eager code.

    A custom op's implementation is called with the thread's dispatch-key sets of its
    caller: below autograd (``torch.autograd.grad`` would see no graph) and, when called
    from a compiled graph, with the Conjugate/Negative fallbacks excluded too, where a lazy
    ``conj()`` view would silently read as unconjugated. This guard sets the sets of
    top-level eager code (include BackendSelect and ADInplaceOrView, exclude only the
    autocast keys: the solve runs with autocast off) for the duration of the call.
    """
    include = torch._C.DispatchKeySet(_DK.BackendSelect).add(_DK.ADInplaceOrView)
    exclude = torch._C.DispatchKeySet(_DK.AutocastCPU)
    for name in dir(_DK):
        if name.startswith("Autocast"):
            exclude = exclude.add(getattr(_DK, name))
    return torch._C._ForceDispatchKeyGuard(include, exclude)


_DK = torch._C.DispatchKey


@torch.library.custom_op("conversenet::converse2d_solve_backward", mutates_args=())
def converse2d_solve_backward(
    grad: Tensor, y: Tensor, weight: Tensor, lam: Tensor, x0: Optional[Tensor],
    filt: Optional[Tensor], scale: int, pads: List[int], padding_mode: str, x0_mode: str,
    needs: List[bool],
) -> List[Tensor]:
    """Gradients of ``converse2d_solve`` for the inputs whose ``needs`` flag is set, in the
    order y, weight, lam, x0, filt (absent inputs never need one)."""
    c = _impl()
    with _eager_dispatch(), torch.enable_grad():
        args = [
            None if t is None else t.detach().requires_grad_(bool(need))
            for t, need in zip((y, weight, lam, x0, filt), needs)
        ]
        wanted = [t for t, need in zip(args, needs) if need and t is not None]
        out = c._solve(args[0], args[1], args[2], args[3], args[4], scale, tuple(pads), padding_mode, x0_mode)
        grads = torch.autograd.grad(out, wanted, grad, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g.contiguous() for t, g in zip(wanted, grads)]


@converse2d_solve_backward.register_fake
def _(grad, y, weight, lam, x0, filt, scale, pads, padding_mode, x0_mode, needs):
    return [
        t.new_empty(t.shape)
        for t, need in zip((y, weight, lam, x0, filt), needs)
        if need and t is not None
    ]


def _setup_context(ctx, inputs, output):
    y, weight, lam, x0, filt, scale, pads, padding_mode, x0_mode = inputs
    ctx.save_for_backward(y, weight, lam, x0, filt)
    ctx.args = (scale, pads, padding_mode, x0_mode)


def _backward(ctx, grad):
    y, weight, lam, x0, filt = ctx.saved_tensors
    needs = [bool(n) and t is not None for n, t in zip(ctx.needs_input_grad[:5], (y, weight, lam, x0, filt))]
    grads = iter(converse2d_solve_backward(grad, y, weight, lam, x0, filt, *ctx.args, needs))
    return tuple(next(grads) if need else None for need in needs) + (None,) * 4


converse2d_solve.register_autograd(_backward, setup_context=_setup_context)
