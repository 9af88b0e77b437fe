"""``conversenet info``: versions, devices, the weight sets and where each would be loaded
from, and a quick self-check of Converse2D."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="show versions and run a quick self-check of the operator")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from .. import __version__
    from ..functional import conv_down, converse2d

    print(f"conversenet {__version__}, torch {torch.__version__}, "
          f"cuda {'available' if torch.cuda.is_available() else 'not available'}, "
          f"threads {torch.get_num_threads()}")
    # self-check: Converse2D inverts conv_down up to the regulariser
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 48, generator=g, dtype=torch.float64)
    k = torch.softmax(torch.randn(1, 3, 9, generator=g, dtype=torch.float64), -1).reshape(1, 3, 3, 3)
    y = conv_down(x, k, scale=2)
    xr = converse2d(y, k, lam=1e-6, scale=2)
    err = (conv_down(xr, k, scale=2) - y).abs().max().item()
    print(f"self-check: Converse2D(scale=2) re-degraded matches its input to {err:.1e} (max abs)")
    _print_weights()
    return 0 if err < 1e-4 else 1


def _print_weights() -> None:
    """One line per weight set: what it is, and where it would be loaded from now
    (found: path / would download: target / missing). Nothing is read or downloaded."""
    from ..models import weights as W

    sets = W.list_weights()
    print(f"weight sets ({len(sets)}):")
    for ws in sets:
        print(f"  {ws.describe()}")
        print(f"    {W.locate(ws).describe()}")
        card = ws.card_path()
        if card is not None:
            print(f"    model card: {card}" + ("" if card.is_file() else " (missing)"))
        for sc in ws.scores:
            got = ", ".join(f"{k} {_score_text(k, v)}" for k, v in sc.metrics.items())
            print(f"    {sc.dataset}: {got}  ({sc.command})")


def _score_text(metric: str, value: float) -> str:
    """SSIM with 4 decimals, dB with 2, or 3 where a record keeps a third (so that 32.368 is not shown as 32.37)."""
    if "ssim" in metric:
        return f"{value:.4f}"
    return f"{value:.2f}" if round(value, 2) == value else f"{value:.3f}"
