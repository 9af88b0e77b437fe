"""Running a model on an image or a tensor: device, dtype, memory-bounded tiling, channels.

The one inference path of the package: :func:`conversenet.restore`, the restore commands,
:mod:`conversenet.evaluate`, ``Trainer.validate`` and :mod:`conversenet.visualize` all run
networks through :func:`run_model` (tensors) or :func:`restore_array` (float images).

* :func:`run_model` applies a model (anything following the model contract,
  :class:`conversenet.models.RestorationModel`; a user's module is wrapped once) to an
  (N, C, H, W) tensor without gradients, whole or in overlapping tiles when the estimated
  working memory (:func:`estimate_memory`) exceeds a budget; the tile side is planned by
  :func:`conversenet.tiling.plan_tile`.
* :func:`restore_array` handles channel layouts (grey image into an RGB model and back,
  colour image into a grey model channel by channel, alpha channels passed through).

Example (random weights, so the "restored" image is meaningless; shows the call only):
    >>> import torch
    >>> from conversenet.models import create
    >>> net = create("converse_dncnn", width=4, num_blocks=1).eval()
    >>> run_model(net, torch.rand(1, 1, 20, 24)).shape
    torch.Size([1, 1, 20, 24])
"""

from __future__ import annotations

import math
import numbers
import re
import weakref
from typing import Callable, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from . import _caches, _tuning
from .models.base import as_restoration_model
from .tiling import DEFAULT_OVERLAP, plan_tile, tiled_forward

__all__ = ["DEFAULT_OVERLAP", "DEFAULT_MAX_MEMORY", "SELF_ENSEMBLE_PASSES", "RestoreError", "parse_memory",
           "resolve_device", "estimate_bytes_per_pixel", "estimate_memory", "dihedral", "dihedral_inverse",
           "run_model", "restore_array"]

#: Default working-memory budget of the network (bytes); image buffers come on top.
DEFAULT_MAX_MEMORY = 4 * 2**30


class RestoreError(ValueError):
    """A user-facing problem: no weights, a kernel that does not fit, a bad option value."""


# --------------------------------------------------------------------------------------
# small parsers
# --------------------------------------------------------------------------------------
_MEM_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
              "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}


def parse_memory(value: Union[str, int, float]) -> int:
    """Bytes from ``"4GB"``, ``"512M"``, ``"1.5g"`` or a number of bytes (units are powers of 1024).

    >>> parse_memory("2GB"), parse_memory("512m"), parse_memory(1000)
    (2147483648, 536870912, 1000)
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        v = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _MEM_UNITS:
            raise ValueError(f"max_memory must look like 4GB, 512MB or a number of bytes, got {value!r}")
        v = float(m.group(1)) * _MEM_UNITS[m.group(2).lower()]
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"max_memory must be positive, got {value!r}")
    return int(v)


def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RestoreError("device 'cuda' was requested but torch sees no CUDA device (use --device cpu)")
    return dev


# --------------------------------------------------------------------------------------
# memory estimate
# --------------------------------------------------------------------------------------
#: live activations of the widest layer at once, and the safety factor (conversenet._tuning)
_ACT_FACTOR = _tuning.TILE_ACTIVATIONS
_SAFETY = _tuning.TILE_SAFETY
#: estimate_bytes_per_pixel results, weakly keyed by the network (nothing is written on it)
_BPP_CACHE: "weakref.WeakKeyDictionary[nn.Module, Tuple[float, List[float]]]" = weakref.WeakKeyDictionary()
_caches.register("restore-memory-estimates", "working memory per pixel of a network (estimate_bytes_per_pixel)",
                 "one per live network (weak keys); freed with the network", _BPP_CACHE)


def estimate_bytes_per_pixel(model: nn.Module, kernel: Optional[torch.Tensor] = None) -> Tuple[float, List[float]]:
    """Working memory of ``model`` (eval, no grad) per input pixel: ``(activations, spectra)``.

    A forward pass on a 32x32 probe (hooks record every module's output size) gives the
    widest activation and the Converse2d layers' output sizes. About ten activations of the
    widest layer are alive at once (measured 7.4 for Converse-DnCNN, ~9 for
    Converse-SRResNet), and every eval-mode Converse2d layer may keep its spectral filter
    (complex, ~4 bytes per channel and output pixel) up to ``Converse2d.filter_cache_bytes``.
    Returns ``1.2 x 10 x 4 x widest`` bytes and one ``1.2 x 4 x size`` per Converse2d
    layer (see :func:`estimate_memory`). Cached per model (weakly, see conversenet._caches).

    >>> from conversenet.models import create
    >>> net = create("converse_dncnn", width=8, num_blocks=1).eval()
    >>> act, spectra = estimate_bytes_per_pixel(net)   # widest: 16 channels * 4 bytes
    >>> round(act, 1), [round(s, 1) for s in spectra]
    (768.0, [76.8])
    """
    key = model  # the caller's module: an adapter around a plain module is made anew each call
    model = as_restoration_model(model)
    cached = _BPP_CACHE.get(key)
    if cached is not None:
        return cached
    from .nn import Converse2d

    p = 32
    widest = 0.0
    spectra: List[float] = []
    hooks = []

    def on_out(mod, inp, out):
        nonlocal widest
        if isinstance(out, torch.Tensor):
            widest = max(widest, out.numel() / (p * p))
            if isinstance(mod, Converse2d) and mod.weight is not None:
                spectra.append(_SAFETY * 4.0 * out.numel() / (p * p))

    for m in model.modules():
        hooks.append(m.register_forward_hook(on_out))
    param = next(model.parameters(), None)
    dev = param.device if param is not None else torch.device("cpu")
    k = kernel
    if model.takes_kernel and k is None:
        size = model.blur_kernel_size
        k = torch.full((1, 1, size, size), 1.0 / size**2)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model.restore(torch.rand(1, model.in_channels, p, p, device=dev), k if model.takes_kernel else None)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    res = (_SAFETY * 4.0 * _ACT_FACTOR * widest, spectra)
    _BPP_CACHE[key] = res
    return res


def estimate_memory(model: nn.Module, pixels: int, kernel: Optional[torch.Tensor] = None) -> float:
    """Estimated peak working memory (bytes) of one forward pass on ``pixels`` input pixels:
    activations plus the cached Converse2d spectra (each capped at the layer's
    ``filter_cache_bytes``; filters above the cap are not kept)."""
    from .nn import Converse2d

    act, spectra = estimate_bytes_per_pixel(model, kernel)
    cap = Converse2d.filter_cache_bytes
    total = act * pixels
    for s in spectra:
        b = s * pixels
        total += b if cap is None or b <= cap else 0.0
    return total


# --------------------------------------------------------------------------------------
# tensors and arrays
# --------------------------------------------------------------------------------------
#: The 8 symmetries of the square (4 quarter turns, each with and without a transpose).
SELF_ENSEMBLE_PASSES = 8


def dihedral(x: torch.Tensor, i: int) -> torch.Tensor:
    """The ``i``-th (0..7) flip/rotation of the last two dims of ``x``: transposed when
    ``i >= 4``, then turned ``i % 4`` quarter turns. :func:`dihedral_inverse` undoes it.

    >>> x = torch.arange(6.).reshape(1, 1, 2, 3)
    >>> [tuple(dihedral(x, i).shape[-2:]) for i in (0, 1, 4)]
    [(2, 3), (3, 2), (3, 2)]
    >>> all(torch.equal(dihedral_inverse(dihedral(x, i), i), x) for i in range(8))
    True
    """
    if i >= 4:
        x = x.transpose(-2, -1)
    return torch.rot90(x, i % 4, dims=(-2, -1))


def dihedral_inverse(y: torch.Tensor, i: int) -> torch.Tensor:
    """Undoes :func:`dihedral` ``(.., i)``."""
    y = torch.rot90(y, -(i % 4), dims=(-2, -1))
    return y.transpose(-2, -1) if i >= 4 else y


def run_model(model: nn.Module, x: torch.Tensor, kernel: Optional[torch.Tensor] = None, *,
              tile: Optional[int] = None, overlap: int = DEFAULT_OVERLAP,
              max_memory: Union[int, str] = DEFAULT_MAX_MEMORY,
              progress: Optional[Callable[[int, int], None]] = None,
              self_ensemble: bool = False) -> torch.Tensor:
    """Applies ``model`` to ``x`` (N, C, H, W) without gradients, tiled when needed.

    With ``self_ensemble``, the result is the average of the 8 passes on the flipped and
    rotated input (each turned back; a blur kernel is flipped/rotated with the image, since
    convolution commutes with these maps), at 8x the time (+0.08 dB for the blind grey
    denoiser on Set12 at sigma 15, docs/TRAINING.md).
    ``progress(done, total)`` counts tiles (times the 8 passes); an untiled ensemble counts
    passes.

    Returns (N, C, H*s, W*s) on x's device (s = ``model.scale``), not clamped.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a (N, C, H, W) tensor, got {tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not isinstance(self_ensemble, bool):
        raise TypeError(f"self_ensemble must be True or False, got {self_ensemble!r}")
    model = as_restoration_model(model)
    budget = parse_memory(max_memory)
    passes = SELF_ENSEMBLE_PASSES if self_ensemble else 1

    def once(v: torch.Tensor, k: Optional[torch.Tensor], p: int) -> torch.Tensor:
        # the tile plan of a transposed image is planned for its own shape
        t = plan_tile(v.shape[-2], v.shape[-1], lambda px: estimate_memory(model, px, k), budget, tile, overlap)
        if t is None:
            y = model.restore(v, k)
            if passes > 1 and progress is not None:
                progress(p + 1, passes)
            return y
        step = None if progress is None else (lambda d, n: progress(p * n + d, passes * n))
        return tiled_forward(lambda u: model.restore(u, k), v, tile=t, overlap=overlap,
                             scale=model.scale, progress=step)

    with torch.no_grad():
        if passes == 1:
            return once(x, kernel, 0)
        acc, dtype = None, None
        for i in range(passes):
            k = None if kernel is None else dihedral(kernel, i).contiguous()
            y = dihedral_inverse(once(dihedral(x, i).contiguous(), k, i), i)
            dtype = y.dtype
            acc = y.float() if acc is None else acc.add_(y.float())  # summed in float32 whatever the model's dtype
        return acc.div_(passes).to(dtype)


def restore_array(img: np.ndarray, lm, kernel=None, *, tile=None,
                  overlap: int = DEFAULT_OVERLAP, max_memory=DEFAULT_MAX_MEMORY,
                  progress: Optional[Callable[[int, int], None]] = None,
                  self_ensemble: bool = False) -> np.ndarray:
    """Restores a float image (H, W, C) (values nominally in [0, 1], not clipped on input).

    Channel handling (returns the same C):
      * C == model channels: as is;
      * grey (C=1) into an RGB model: the grey plane is repeated to RGB, the result turned
        back to grey with BT.601 luma (:func:`conversenet.data.rgb_to_gray`);
      * colour (C=3) into a grey model: each channel restored on its own;
      * C = 2 or 4 (alpha last): the colour part as above, the alpha channel unchanged
        (SR: resized with bicubic :func:`conversenet.data.imresize`).

    ``self_ensemble``: average of 8 flipped/rotated passes (see :func:`run_model`).

    Returns float32 (H*s, W*s, C), clamped to [0, 1].
    """
    from .data import imresize

    model = as_restoration_model(lm if isinstance(lm, nn.Module) else lm.model)
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"img must be a numpy array (H, W, C) with C in 1..4, got {img.shape if isinstance(img, np.ndarray) else img}")
    if img.dtype.kind != "f":
        raise TypeError(f"img must be a float array in [0, 1], got {img.dtype}")
    k = None
    if kernel is not None:
        k = torch.as_tensor(np.asarray(kernel, np.float32))[None, None]
    dev = next(model.parameters()).device
    s = model.scale
    c = img.shape[2]
    alpha = None
    if c in (2, 4):
        img, alpha = img[..., :-1], img[..., -1:]
    cin = model.in_channels

    def run(a: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None].to(dev, torch.float32)
        y = run_model(model, x, k, tile=tile, overlap=overlap, max_memory=max_memory, progress=progress,
                      self_ensemble=self_ensemble)
        return y[0].clamp_(0, 1).permute(1, 2, 0).cpu().numpy()

    cc = img.shape[2]
    if cc == cin:
        out = run(img)
    elif cc == 1 and cin == 3:
        rgb = run(np.repeat(img, 3, axis=2)).astype(np.float64)
        out = (rgb @ np.asarray((0.299, 0.587, 0.114)))[..., None]
    elif cc == 3 and cin == 1:
        out = np.concatenate([run(img[..., i:i + 1]) for i in range(3)], axis=2)
    else:
        raise ValueError(f"cannot feed a {cc}-channel image to a model taking {cin} channels")
    if alpha is not None:
        if s != 1:
            alpha = imresize(alpha.astype(np.float64), s)
        out = np.concatenate([out, alpha], axis=2)
    return np.clip(out, 0, 1).astype(np.float32)
