"""Converse2D as Algorithm 1 of the paper computes it (Eq. 6): the one copy of the baseline.

The benchmark times it as the implementation to beat (``conversenet bench``, "baseline")
and the tests use it as the paper's formula written out (``tests/_reference.py``); it is
itself checked against dense float64 solves of the normal equations
(``tests/test_bench.py``). It is written plainly on purpose: complex FFTs of the
zero-upsampled input and of ``lam * X0``, the kernel spectrum (psf2otf) recomputed every
call, the s x s block splits and means, the final division by lam (which loses float32
precision for the small lam of trained layers, about 1e-4). Do not speed it up.
"""

from __future__ import annotations

from typing import Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ["algorithm1", "psf2otf"]


def psf2otf(psf: torch.Tensor, shape: Tuple[int, int]) -> torch.Tensor:
    """Full complex DFT of ``psf`` (..., kh, kw) zero-padded to ``shape`` with its centre
    ``(kh // 2, kw // 2)`` rolled to (0, 0) (MATLAB's psf2otf)."""
    otf = torch.zeros(psf.shape[:-2] + tuple(shape), dtype=psf.dtype, device=psf.device)
    otf[..., : psf.shape[-2], : psf.shape[-1]].copy_(psf)
    for axis, size in ((-2, psf.shape[-2]), (-1, psf.shape[-1])):
        otf = torch.roll(otf, -(size // 2), dims=axis)
    return torch.fft.fftn(otf, dim=(-2, -1))


def _splits(a: torch.Tensor, s: int) -> torch.Tensor:
    """[..., sH, sW] -> [..., H, W, s*s]: the s x s distinct blocks, stacked last."""
    b = torch.stack(torch.chunk(a, s, dim=-2), dim=-1)  # [..., H, sW, s]
    return torch.cat(torch.chunk(b, s, dim=-2), dim=-1)  # [..., H, W, s*s]


def algorithm1(
    x: torch.Tensor,
    weight: torch.Tensor,
    lam: Union[float, torch.Tensor],
    scale: int = 1,
    padding: int = 0,
    padding_mode: str = "circular",
    x0: str = "interp",
) -> torch.Tensor:
    """Converse2D by the paper's Algorithm 1 (Eq. 6), in x's dtype, differentiable.

    Args:
        x: (N, C, H, W) input Y.
        weight: (1 or N, C, kh, kw) kernel, centre ``(kh // 2, kw // 2)``.
        lam: (1 or N, C, 1, 1) regulariser (anything broadcastable to it), or a float.
        scale: upsampling factor s.
        padding, padding_mode: padding applied before the solve; ``padding * s`` is
            cropped from every side of the result, as in the released layer.
        x0: ``"interp"`` (nearest interpolation of the padded input) or ``"zero"``.

    Returns:
        (N, C, H*s, W*s).

    Example:
        >>> import torch
        >>> from conversenet.functional import converse2d
        >>> y, k = torch.randn(1, 2, 12, 10, dtype=torch.float64), torch.rand(1, 2, 3, 3, dtype=torch.float64)
        >>> ref = converse2d(y, k, 0.1, scale=2, padding=2)
        >>> bool(torch.allclose(algorithm1(y, k, 0.1, 2, 2), ref, atol=1e-10))
        True
    """
    if x0 not in ("interp", "zero"):
        raise ValueError(f"x0 must be 'interp' or 'zero' for Algorithm 1, got {x0!r}")
    s = scale
    if padding:
        x = F.pad(x, (padding,) * 4, mode=padding_mode)
    if isinstance(lam, torch.Tensor):
        lam = lam.to(x.dtype)
    n, c, h, w = x.shape
    y_up = torch.zeros(n, c, h * s, w * s, dtype=x.dtype, device=x.device)
    y_up[..., ::s, ::s] = x  # standard s-fold upsampling: zeros in between
    if x0 == "interp":
        x_init = F.interpolate(x, scale_factor=s, mode="nearest") if s > 1 else x
    else:
        x_init = torch.zeros_like(y_up)
    fk = psf2otf(weight.to(x.dtype), (h * s, w * s))
    fk_conj = torch.conj(fk)
    fk2 = torch.pow(torch.abs(fk), 2)
    fky = fk_conj * torch.fft.fftn(y_up, dim=(-2, -1))
    big_l = fky + torch.fft.fftn(lam * x_init, dim=(-2, -1))
    fkl = fk.mul(big_l)
    fkl_s = torch.mean(_splits(fkl, s), dim=-1)
    fk2_s = torch.mean(_splits(fk2, s), dim=-1)
    fdiv = fkl_s.div(fk2_s + lam)
    fmul = fk_conj * fdiv.repeat(1, 1, s, s)
    fout = (big_l - fmul) / lam
    out = torch.real(torch.fft.ifftn(fout, dim=(-2, -1)))
    if padding:
        p = padding * s
        out = out[..., p:-p, p:-p]
    return out
