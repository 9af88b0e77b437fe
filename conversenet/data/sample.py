"""A sample image the package can ship: drawn procedurally, so no licence questions."""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["sample_image"]


def sample_image(size: int = 192, seed: int = 0) -> np.ndarray:
    """A generated outdoor scene, uint8 (size, size, 3): sky gradient, sun, two mountain
    ridges (sums of random sines), a house with windows and a striped roof, textured grass.

    It has what restoration tests need: smooth areas, straight and curved edges, fine
    periodic texture and random texture. Deterministic for a given ``seed``.

    >>> im = sample_image(64)
    >>> im.shape, im.dtype, bool((sample_image(64) == im).all())
    ((64, 64, 3), dtype('uint8'), True)
    """
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 16:
        raise ValueError(f"size must be an integer >= 16, got {size!r}")
    rs = np.random.RandomState(seed)
    n = int(size)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64) / n
    img = np.empty((n, n, 3))
    # sky: blue at the top to pale near the horizon
    for c, (top, bottom) in enumerate(((0.25, 0.85), (0.45, 0.9), (0.85, 0.95))):
        img[..., c] = top + (bottom - top) * yy
    # sun with a soft halo
    r = np.hypot(xx - 0.78, yy - 0.2)
    sun = np.clip((0.09 - r) / 0.01, 0, 1)
    halo = np.exp(-(r / 0.15) ** 2) * 0.25
    for c, v in enumerate((1.0, 0.9, 0.5)):
        img[..., c] = img[..., c] * (1 - sun) + v * sun + halo * v

    def ridge(base: float, amp: float) -> np.ndarray:
        x = np.arange(n) / n
        h = np.full(n, base)
        for k in range(1, 7):
            h += amp / k * np.sin(2 * np.pi * (k * x + rs.rand())) * (0.6 + 0.4 * rs.rand())
        return h

    for base, amp, col in ((0.5, 0.08, (0.45, 0.5, 0.62)), (0.62, 0.06, (0.3, 0.42, 0.3))):
        mask = yy > ridge(base, amp)[None, :]
        shade = 0.85 + 0.15 * np.sin(40 * xx + 25 * yy)  # rock strata
        for c in range(3):
            img[..., c] = np.where(mask, col[c] * shade, img[..., c])
    # grass: random texture below the horizon line
    grass = yy > 0.78
    tex = rs.rand(n, n)
    for c, v in enumerate((0.25, 0.55, 0.2)):
        img[..., c] = np.where(grass, v * (0.75 + 0.5 * tex), img[..., c])
    # house: wall, windows, striped roof (a triangle)
    x0, x1, y0, y1 = 0.12, 0.42, 0.6, 0.85
    wall = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
    img[wall] = (0.85, 0.78, 0.6)
    for wx in (0.16, 0.3):
        win = (xx >= wx) & (xx < wx + 0.07) & (yy >= 0.65) & (yy < 0.73)
        img[win] = (0.15, 0.2, 0.35)
        img[win & ((np.abs(xx - wx - 0.035) < 0.006) | (np.abs(yy - 0.69) < 0.006))] = (0.95, 0.95, 0.95)
    roof = (yy < y0) & (yy >= y0 - 0.15) & (np.abs(xx - (x0 + x1) / 2) < (yy - (y0 - 0.15)) / 0.15 * 0.19)
    stripes = (np.floor(yy * n / max(2, n // 48)) % 2).astype(bool)
    img[roof & stripes] = (0.65, 0.15, 0.1)
    img[roof & ~stripes] = (0.5, 0.1, 0.08)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
