import pytest
import torch

from conversenet.tiling import blend_window, plan_tile, tile_starts, tiled_forward


@pytest.mark.parametrize("size,tile,overlap", [(100, 32, 8), (33, 32, 4), (257, 64, 16), (10, 10, 0)])
def test_tile_starts_cover_with_overlap(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    covered = torch.zeros(size, dtype=torch.bool)
    for s in starts:
        assert 0 <= s and s + min(tile, size) <= size
        covered[s:s + tile] = True
    assert covered.all()
    for a, b in zip(starts, starts[1:]):
        assert a + tile - b >= overlap


def test_blend_window_keeps_image_borders():
    w = blend_window(16, 4, at_start=True, at_end=False)
    assert w[0] == 1 and w[-1] < 0.2 and (w > 0).all()


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_pointwise_fn_is_reproduced_exactly(scale):
    x = torch.rand(2, 3, 45, 70, dtype=torch.float64)

    def fn(t):
        return torch.nn.functional.interpolate(t, scale_factor=scale, mode="nearest") ** 2

    y = tiled_forward(fn, x, tile=16, overlap=4, scale=scale)
    assert y.shape == (2, 3, 45 * scale, 70 * scale)
    assert torch.allclose(y, fn(x), atol=1e-12)


def test_global_fn_differs_only_near_tile_borders():
    # a global operator (subtract the tile mean) shows why blending is needed: the
    # blended result is a convex combination of per-tile results, never a seam jump
    x = torch.rand(1, 1, 64, 64)
    y = tiled_forward(lambda t: t - t.mean(), x, tile=32, overlap=16)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_bad_arguments():
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(ValueError, match="overlap"):
        tiled_forward(lambda t: t, x, tile=4, overlap=4)
    with pytest.raises(ValueError, match="x must be 4-D"):
        tiled_forward(lambda t: t, x[0], tile=4)


def test_plan_tile_fits_the_budget_with_fewest_tiles():
    """plan_tile (the tile planner run_model uses) against a brute-force search."""
    assert plan_tile(100, 100, 10.0, 1e6) is None  # the whole image fits
    h, w, bpp, budget, ov = 4000, 3000, 1000.0, 1e8, 32
    t = plan_tile(h, w, bpp, budget, overlap=ov)
    largest = max(s for s in range(1, 5000) if s * s * bpp <= budget)
    assert t <= largest
    n = lambda size, side: len(tile_starts(size, side, ov))  # noqa: E731
    best = n(h, largest) * n(w, largest)
    assert n(h, t) * n(w, t) == best  # no more tiles than the largest fitting side needs
    assert all(n(h, s) * n(w, s) > best for s in range(2 * ov + 1, t))  # and the smallest such side
