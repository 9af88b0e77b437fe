"""Tiled inference with overlap and blending, for images too large to process at once.

Converse2D is a global (FFT) operator, so a tile does not see the whole image and the
result differs from whole-image inference near tile borders. Overlapping tiles blended
with a smooth window (each tile's weight falls off to nearly zero over ``overlap``
pixels at its inner borders) keep that difference small; ``docs/RESTORE.md`` records how
small on Set12. :func:`plan_tile` chooses the tile side from a memory estimate and a budget
(:func:`conversenet.inference.run_model` supplies both).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, List, Optional, Union

import torch

__all__ = ["tiled_forward", "tile_starts", "plan_tile", "blend_window", "DEFAULT_OVERLAP", "MIN_AUTO_TILE"]

#: Overlap between tiles in input pixels (docs/RESTORE.md: <= 0.02 dB on Set12 at 192-px tiles).
DEFAULT_OVERLAP = 32
#: Smallest tile chosen automatically (input pixels).
MIN_AUTO_TILE = 96


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


def _balanced(size: int, tmax: int, overlap: int) -> int:
    """Smallest tile <= tmax that covers ``size`` with as few tiles as tmax does."""
    if tmax >= size:
        return size
    n = math.ceil((size - overlap) / (tmax - overlap))
    return math.ceil((size - overlap) / n) + overlap


def plan_tile(h: int, w: int, memory: Union[float, Callable[[int], float]], max_memory: int,
              tile: Optional[int] = None, overlap: int = DEFAULT_OVERLAP) -> Optional[int]:
    """Tile side (input pixels) for an ``h x w`` image, or None to run it whole.

    ``memory``: bytes per pixel, or a function ``pixels -> bytes`` (:func:`estimate_memory`).
    ``tile=None``: tile only when the whole image's estimate exceeds ``max_memory``, with the
    largest square tile that fits; ``tile=0``: never; ``tile=T``: tiles of at most T. The
    side is then shrunk to the smallest one needing no more tiles (less wasted overlap).

    >>> plan_tile(512, 512, 1000.0, 2**30) is None
    True
    >>> plan_tile(512, 512, 1000.0, 2**30, tile=256, overlap=32)   # 3 x 3 tiles of 192
    192
    >>> plan_tile(4000, 3000, 1000.0, 2**28, overlap=32)   # 518 px fit -> 9 x 7 tiles of 473
    473
    """
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, numbers.Integral) or tile < 0):
        raise ValueError(f"tile must be None, 0 or a positive integer, got {tile!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, numbers.Integral) or overlap < 0:
        raise ValueError(f"overlap must be an integer >= 0, got {overlap!r}")
    mem = memory if callable(memory) else (lambda px, b=float(memory): b * px)
    if tile == 0:
        return None
    if tile is None:
        if mem(h * w) <= max_memory:
            return None
        lo, hi = 1, max(h, w)  # largest side whose square tile fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if mem(mid * mid) <= max_memory:
                lo = mid
            else:
                hi = mid - 1
        tmax = max(MIN_AUTO_TILE, lo, 2 * overlap + 1)
    else:
        tmax = int(tile)
    if tmax >= h and tmax >= w:
        return None
    if overlap >= tmax:
        raise ValueError(f"overlap ({overlap}) must be smaller than the tile ({tmax})")
    return max(_balanced(h, tmax, overlap), _balanced(w, tmax, overlap))


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
