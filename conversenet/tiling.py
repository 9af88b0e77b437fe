"""Tiled inference with overlap and blending, for images too large to process at once.

Converse2D is a global (FFT) operator, so a tile does not see the whole image and the
result differs from whole-image inference near tile borders. Overlapping tiles blended
with a smooth window (each tile's weight falls off to nearly zero over ``overlap``
pixels at its inner borders) keep that difference small; ``docs/RESTORE.md`` records how
small on Set12.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional

import torch

__all__ = ["tiled_forward", "tile_starts", "auto_tile_size", "blend_window"]


def tile_starts(size: int, tile: int, overlap: int) -> List[int]:
    """Start offsets of tiles of length ``tile`` covering ``[0, size)`` with at least ``overlap``.

    Example:
        >>> tile_starts(10, 4, 1)
        [0, 3, 6]
        >>> tile_starts(5, 8, 2)
        [0]
    """
    if tile >= size:
        return [0]
    step = tile - overlap
    if step <= 0:
        raise ValueError(f"overlap ({overlap}) must be smaller than tile ({tile})")
    n = math.ceil((size - tile) / step) + 1
    starts = [min(i * step, size - tile) for i in range(n)]
    return sorted(set(starts))


def blend_window(length: int, overlap: int, at_start: bool, at_end: bool,
                 dtype=torch.float32, device=None) -> torch.Tensor:
    """1-D blending weights: a raised-cosine ramp over ``overlap`` pixels at inner borders.

    Borders that are image borders (``at_start``/``at_end``) keep weight 1 so the image
    edge is never down-weighted.
    """
    w = torch.ones(length, dtype=dtype, device=device)
    if overlap <= 0:
        return w
    r = min(overlap, length)
    ramp = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(r, dtype=dtype, device=device) + 0.5) / r)
    if not at_start:
        w[:r] = torch.minimum(w[:r], ramp)
    if not at_end:
        w[-r:] = torch.minimum(w[-r:], ramp.flip(0))
    return w


def auto_tile_size(h: int, w: int, bytes_per_pixel: float, budget_bytes: float,
                   multiple: int = 8, minimum: int = 64) -> Optional[int]:
    """Largest square tile (a multiple of ``multiple``) whose estimated memory fits the budget.

    Returns None when the whole ``h x w`` image fits.
    """
    if h * w * bytes_per_pixel <= budget_bytes:
        return None
    side = int(math.sqrt(budget_bytes / bytes_per_pixel))
    side = max(minimum, side - side % multiple)
    return side


def tiled_forward(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    overlap: int = 32,
    scale: int = 1,
    out_channels: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> torch.Tensor:
    """Applies ``fn`` to overlapping tiles of ``x`` and blends the results.

    Args:
        fn: maps (N, C, h, w) to (N, C', h*scale, w*scale).
        x: (N, C, H, W) input.
        tile: tile side in input pixels (clipped to the image size).
        overlap: overlap between neighbouring tiles in input pixels (< tile).
        scale: output/input size ratio of ``fn``.
        out_channels: C' (default: C).
        progress: optional callback ``progress(done, total)``.

    Returns:
        (N, C', H*scale, W*scale) tensor on x's device, in x's dtype.

    Example:
        >>> import torch
        >>> x = torch.rand(1, 1, 50, 70)
        >>> y = tiled_forward(lambda t: 2 * t, x, tile=32, overlap=8)
        >>> torch.allclose(y, 2 * x, atol=1e-6)
        True
    """
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    if overlap < 0 or overlap >= tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap={overlap}, tile={tile}")
    n, c, h, w = x.shape
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    co = out_channels or c
    out = torch.zeros(n, co, h * scale, w * scale, dtype=torch.float32, device=x.device)
    norm = torch.zeros(1, 1, h * scale, w * scale, dtype=torch.float32, device=x.device)
    total, done = len(ys) * len(xs), 0
    ov = overlap * scale
    for y0 in ys:
        wy = blend_window(th * scale, ov, y0 == 0, y0 + th == h, device=x.device)
        for x0 in xs:
            wx = blend_window(tw * scale, ov, x0 == 0, x0 + tw == w, device=x.device)
            res = fn(x[..., y0:y0 + th, x0:x0 + tw]).float()
            wgt = (wy[:, None] * wx[None, :])[None, None]
            sl = (..., slice(y0 * scale, (y0 + th) * scale), slice(x0 * scale, (x0 + tw) * scale))
            out[sl] += res * wgt
            norm[sl] += wgt
            done += 1
            if progress is not None:
                progress(done, total)
    return (out / norm).to(x.dtype)
