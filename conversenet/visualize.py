"""The paper's Figure 2 for any Converse2d layer: what reverse convolution does to features.

For a chosen :class:`~conversenet.nn.Converse2d` layer of a model and an input image,
:func:`converse_maps` captures the layer's input ``Y`` with a forward hook and returns, for a
few channels c: ``Y_c``, the kernel ``K_c``, the output ``X*_c``, the reconstruction
``X*_c (x) K_c`` (:func:`conversenet.functional.conv_down` with scale 1, i.e. circular
convolution) and the error ``Y_c - X*_c (x) K_c``. For scale-s layers the reconstruction is
``conv_down(X*, K, s)``, again the size of ``Y``. :func:`figure2` draws them as one PNG
(matplotlib, the ``plot`` extra).

The error is small where Converse2D solves ``min ||Y - X (x) K||^2 + lam ||X - X0||^2`` almost
exactly (small lam); near the image borders it shows the layer's padding.

Example (random network; no matplotlib needed for the maps):
    >>> import torch
    >>> from conversenet.models import create
    >>> net = create("converse_dncnn", width=4, num_blocks=1).eval()
    >>> maps = converse_maps(net, torch.rand(1, 1, 24, 24), channels=[0, 1])
    >>> sorted(maps), maps["Y"].shape
    (['E', 'K', 'X', 'XK', 'Y', 'channels', 'lam', 'layer'], (2, 24, 24))
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from .inference import run_model
from .models.base import as_restoration_model

__all__ = ["converse_layers", "converse_maps", "prepare_input", "figure2"]


def converse_layers(model: nn.Module) -> List[str]:
    """Names (``model.named_modules()``) of the Converse2d layers that learn their kernel."""
    from .nn import Converse2d

    return [n for n, m in model.named_modules() if isinstance(m, Converse2d) and m.weight is not None]


def _pick_layer(model: nn.Module, layer: Union[int, str, None]) -> str:
    names = converse_layers(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no Converse2d layer with a learned kernel")
    if layer is None:
        return names[0]
    if isinstance(layer, int) and not isinstance(layer, bool):
        if not -len(names) <= layer < len(names):
            raise ValueError(f"layer index {layer} out of range: the model has {len(names)} Converse2d layers")
        return names[layer]
    if layer not in names:
        raise ValueError(f"layer {layer!r} is not a Converse2d layer; choose one of: {', '.join(names[:8])}"
                         + (f", ... ({len(names)} in all)" if len(names) > 8 else ""))
    return layer


def prepare_input(model: nn.Module, img: np.ndarray, size: int = 96, sigma: float = 0.0, seed: int = 0,
                  kernel_sigma: float = 1.6):
    """A float image (H, W, C) in [0, 1] -> the model input and kernel Figure 2 is drawn for.

    The image is centre-cropped to at most ``size`` x ``size``, turned grey (BT.601) or
    repeated to RGB to match ``model.in_channels``, and, with ``sigma`` > 0 (0..255 units),
    given white Gaussian noise (numpy seed ``seed``) so that a denoiser sees what it was
    trained on. Models taking a blur kernel get a Gaussian of ``kernel_sigma`` pixels.

    Returns:
        ``(x, kernel)``: float32 tensors (1, C, s, s) and (1, 1, k, k) or None.

    >>> from conversenet.models import create
    >>> net = create("converse_dncnn", width=4, num_blocks=1)
    >>> x, k = prepare_input(net, np.ones((40, 50, 3), np.float32), size=32, sigma=25)
    >>> tuple(x.shape), k is None
    ((1, 1, 32, 32), True)
    """
    from .data import add_awgn_np, rgb_to_gray

    model = as_restoration_model(model)
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] not in (1, 3) or img.dtype.kind != "f":
        raise ValueError(f"img must be a float (H, W, 1 or 3) array, got {getattr(img, 'dtype', type(img).__name__)} "
                         f"{getattr(img, 'shape', '')}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size must be an integer >= 16, got {size!r}")
    h, w = img.shape[:2]
    s = min(int(size), h, w)
    img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s].astype(np.float32)
    if model.in_channels == 1 and img.shape[2] == 3:
        img = rgb_to_gray(img)
    elif model.in_channels == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if sigma > 0:
        img = add_awgn_np(img, sigma, seed=seed)
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].float()
    kernel = None
    if model.takes_kernel:
        from .data import make_kernel

        k = make_kernel(f"gaussian:{kernel_sigma}", model.blur_kernel_size)
        kernel = torch.from_numpy(k).float()[None, None]
    return x, kernel


def converse_maps(model: nn.Module, x: torch.Tensor, layer: Union[int, str, None] = None,
                  channels: Optional[Sequence[int]] = None, num_channels: int = 3,
                  kernel: Optional[torch.Tensor] = None) -> Dict[str, object]:
    """Runs ``model`` on ``x`` and returns Figure 2's maps for one Converse2d layer.

    Args:
        model: any module containing Converse2d layers.
        x: (1, C, H, W) input of the model.
        layer: index into :func:`converse_layers` or a module name (default: the first).
        channels: channel indices to show (default: the ``num_channels`` channels whose
            input maps have the largest variance, i.e. the most structure).
        kernel: the blur kernel for models whose forward takes one.

    Returns:
        dict with ``"layer"`` (name), ``"channels"`` (list), ``"lam"`` (per shown channel),
        and float64 numpy stacks (n, h, w): ``"Y"``, ``"K"`` (n, kh, kw), ``"X"`` (X*),
        ``"XK"`` (X* (x) K, size of Y) and ``"E"`` (Y - X* (x) K).
    """
    from .functional import conv_down

    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be a (1, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    name = _pick_layer(model, layer)
    mod = dict(model.named_modules())[name]
    got: Dict[str, torch.Tensor] = {}

    def hook(m, inp, out):
        got["Y"], got["X"] = inp[0].detach(), out.detach()

    h = mod.register_forward_hook(hook)
    try:
        run_model(model, x, kernel, tile=0)  # the one inference path, whole image, no grad
    finally:
        h.remove()
    if "Y" not in got:
        raise ValueError(f"layer {name!r} was not called by the forward pass")
    y, xs = got["Y"].double(), got["X"].double()
    w = mod.weight.detach().double()
    c = y.shape[1]
    if channels is None:
        var = y[0].flatten(1).var(dim=1)
        channels = var.argsort(descending=True)[: max(1, min(num_channels, c))].sort().values.tolist()
    channels = [int(i) for i in channels]
    bad = [i for i in channels if not 0 <= i < c]
    if bad or not channels:
        raise ValueError(f"channels must be indices in [0, {c}), got {channels}")
    xk = conv_down(xs, w, mod.scale)
    lam = mod.lam.detach().double().reshape(-1)
    pick = lambda t: t[0, channels].cpu().numpy()  # noqa: E731
    return {
        "layer": name, "channels": channels, "lam": lam[channels].cpu().numpy(),
        "Y": pick(y), "K": w[0, channels].cpu().numpy(), "X": pick(xs), "XK": pick(xk), "E": pick(y - xk),
    }


def figure2(maps: Dict[str, object], path, title: Optional[str] = None, dpi: int = 110) -> None:
    """Draws :func:`converse_maps` output as one PNG: rows = channels, columns = Y, K, X*,
    X* (x) K and the error map (symmetric colour scale, its max |error| in the title).
    Needs matplotlib (``pip install conversenet[plot]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("drawing the figure needs matplotlib: pip install 'conversenet[plot]' "
                          "(or pip install matplotlib)") from e
    from pathlib import Path

    cols = [("Y", "input Y"), ("K", "kernel K"), ("X", "output X*"), ("XK", "X* \u2297 K"), ("E", "Y \u2212 X* \u2297 K")]
    n = len(maps["channels"])
    fig, axes = plt.subplots(n, len(cols), figsize=(2.2 * len(cols), 2.2 * n + (0.5 if title else 0)), squeeze=False)
    for r in range(n):
        ylim = (float(maps["Y"][r].min()), float(maps["Y"][r].max()))
        for j, (key, label) in enumerate(cols):
            ax = axes[r, j]
            img = maps[key][r]
            if key == "E":
                m = float(np.abs(img).max()) or 1.0
                ax.imshow(img, cmap="RdBu_r", vmin=-m, vmax=m)
                label = f"{label}\nmax {m:.2g}"
            elif key == "K":
                ax.imshow(img, cmap="viridis", interpolation="nearest")
            elif key in ("Y", "XK"):
                ax.imshow(img, cmap="gray", vmin=ylim[0], vmax=ylim[1])
            else:
                ax.imshow(img, cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 or key == "E":
                ax.set_title(label, fontsize=9)
        axes[r, 0].set_ylabel(f"channel {maps['channels'][r]}\n\u03bb={float(maps['lam'][r]):.1e}", fontsize=8)
    fig.suptitle(title or f"Converse2D layer {maps['layer']}", fontsize=10)
    fig.tight_layout()
    from ._atomic import atomic_open

    try:
        with atomic_open(Path(path), "wb") as f:
            fig.savefig(f, dpi=dpi, format="png")
    finally:
        plt.close(fig)
