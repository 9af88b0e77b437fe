"""Restore images with a pretrained model: weights lookup, memory-bounded tiling, channels.

The one-call API is :func:`restore`; the command-line tools ``conversenet denoise | sr |
deblur | demo`` (:mod:`conversenet.cli.restore`) are built from the same pieces:

* :func:`load_model` picks the network for a task and its weights: ``"official"`` (the
  authors' checkpoints, :mod:`conversenet.models.weights`), ``"builtin"`` (files shipped in
  ``conversenet/weights/``), ``"auto"`` (official when found or downloadable, else built-in)
  or a path to a state-dict file.
* :func:`run_model` applies it to an (N, C, H, W) tensor, whole or in overlapping tiles
  when the estimated working memory (:func:`estimate_bytes_per_pixel`) exceeds a budget.
* :func:`restore_array` handles channel layouts (grey image into an RGB model and back,
  colour image into a grey model channel by channel, alpha channels passed through).

Weights files other than the authors' may carry a sidecar ``<file>.json`` describing the
network: ``{"model": "<registry name>", "args": {<constructor overrides>}, "sigma": 25}``;
without one the file must fit the task's default model (or ``model=``).

Example (random weights, so the "restored" image is meaningless; shows the call only):
    >>> import numpy as np, torch
    >>> from conversenet.models import create
    >>> net = create("converse_dncnn", width=4, num_blocks=1).eval()
    >>> out = restore(np.zeros((20, 24), np.uint8), model=net)
    >>> out.shape, out.dtype
    ((20, 24), dtype('uint8'))
"""

from __future__ import annotations

import importlib.resources
import json
import math
import numbers
import os
import re
import sys
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from . import _caches, _tuning
from ._caches import BoundedCache

__all__ = [
    "TASKS",
    "DEFAULT_MODELS",
    "DEFAULT_OVERLAP",
    "DEFAULT_MAX_MEMORY",
    "LoadedModel",
    "RestoreError",
    "parse_memory",
    "resolve_device",
    "load_model",
    "load_weights_file",
    "builtin_weights",
    "make_kernel",
    "estimate_bytes_per_pixel",
    "estimate_memory",
    "sample_image",
    "plan_tile",
    "run_model",
    "restore_array",
    "restore",
]

TASKS = ("denoise", "sr", "deblur")
#: Default network per task ("deblur" needs a kernel; "deblur_blind" is used with blind=True).
DEFAULT_MODELS = {
    "denoise": "converse_dncnn_official",
    "sr": "converse_srresnet_official",
    "deblur": "converse_usrnet_official",
    "deblur_blind": "conversenet_official",
}
#: Noise level the official denoiser was trained for (0..255 units).
OFFICIAL_SIGMA = {"converse_dncnn_official": 25.0}
#: Overlap between tiles in input pixels (docs/RESTORE.md: <= 0.02 dB on Set12 at 192-px tiles).
DEFAULT_OVERLAP = 32
#: Default working-memory budget of the network (bytes); image buffers come on top.
DEFAULT_MAX_MEMORY = 4 * 2**30
#: Smallest tile chosen automatically (input pixels).
MIN_AUTO_TILE = 96
ENV_OFFLINE = "CONVERSENET_OFFLINE"


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
# models and weights
# --------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A network ready for inference and where its weights came from.

    Attributes:
        model: the module (eval mode, on its device).
        name: registry name.
        source: one line saying which weights were used.
        meta: the sidecar metadata (``sigma`` etc.), may be empty.
    """

    model: nn.Module
    name: str
    source: str
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.model.task

    @property
    def sigma(self) -> Optional[float]:
        """Noise level (0..255) the weights were trained for, when known."""
        s = self.meta.get("sigma", OFFICIAL_SIGMA.get(self.name) if "official" in self.source.lower() else None)
        return None if s is None else float(s)


def _registry():
    from .models import registry

    return registry


def _default_name(task: str, blind: bool = False) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return DEFAULT_MODELS["deblur_blind" if task == "deblur" and blind else task]


def _sidecar(path: Path) -> Dict[str, Any]:
    """The optional ``<file>.json`` next to a weights file, checked: ``model`` a string,
    ``args`` a mapping (or null), ``sigma`` a number (or null). One-line errors naming it."""
    side = path.with_suffix(".json")
    if not side.is_file():
        return {}
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise RestoreError(f"cannot read the weights description {side}: {e}") from e
    if not isinstance(meta, dict):
        raise RestoreError(f"{side} must hold a JSON object like {{\"model\": NAME, \"args\": {{...}}}}")
    if meta.get("model") is not None and not isinstance(meta["model"], str):
        raise RestoreError(f"{side}: \"model\" must be a registry name (a string), got {type(meta['model']).__name__}")
    if meta.get("args") is not None and not isinstance(meta["args"], dict):
        raise RestoreError(f"{side}: \"args\" must be a JSON object of constructor arguments, "
                           f"got {type(meta['args']).__name__} {json.dumps(meta['args'])[:60]}")
    sigma = meta.get("sigma")
    if sigma is not None and (isinstance(sigma, bool) or not isinstance(sigma, (int, float))):
        raise RestoreError(f"{side}: \"sigma\" must be a number, got {json.dumps(sigma)[:60]}")
    return meta


def _package_weights_dir():
    return importlib.resources.files("conversenet").joinpath("weights")


def builtin_weights(task: str, model: Optional[str] = None, blind: bool = False) -> List[Path]:
    """Built-in weight files usable for ``task`` (best first); empty when none ship.

    A file ``conversenet/weights/<stem>.pth`` qualifies when its sidecar names a model of the
    task, or ``<stem>`` is such a registry name. With ``model``, only files for that model
    (``<model>.pth``, ``<model minus _official>.pth`` or a sidecar naming it) qualify.
    """
    folder = _package_weights_dir()
    if not folder.is_dir():
        return []
    reg = _registry()
    names = reg.list_models(task)
    found: List[Tuple[int, Path]] = []
    default = _default_name(task, blind)
    for res in folder.iterdir():
        if not res.name.endswith(".pth"):
            continue
        p = Path(str(res))
        meta = _sidecar(p)
        arch = meta.get("model", p.stem)
        if arch not in names:
            continue
        if model is not None and model not in (arch, p.stem) and model.removesuffix("_official") not in (arch, p.stem):
            continue
        if task == "deblur":  # blind (ConverseNet/ConvNet) vs non-blind (USRNet) must match
            needs_kernel = "usrnet" in arch
            if needs_kernel == bool(blind):
                continue
        rank = 0 if default.removesuffix("_official") in (arch, p.stem) or default in (arch, p.stem) else 1
        found.append((rank, p))
    return [p for _, p in sorted(found, key=lambda t: (t[0], t[1].name))]


def _official_preset(filename: str) -> Optional[str]:
    """The registry name whose released file is ``filename`` (e.g. ``converse_dncnn_official``)."""
    reg = _registry()
    for n in reg.list_models():
        if reg.model_info(n)["official_file"] == filename:
            return n
    return None


def _fits(net: nn.Module, state: Dict[str, torch.Tensor]) -> bool:
    own = net.state_dict()
    return set(own) == set(state) and all(tuple(own[k].shape) == tuple(state[k].shape) for k in own)


def _guess_by_shapes(state: Dict[str, torch.Tensor], stem: str, task: Optional[str],
                     blind: bool) -> Optional[str]:
    """The first registry model (at its defaults) whose parameter names and shapes are exactly
    those of ``state``. Tried in this order: the file's stem when it is a registry name (a
    preference only, never taken without fitting), the task's default, then the others."""
    reg = _registry()
    names = reg.list_models(task)
    if task == "deblur":  # blind (no kernel input) and non-blind models are not interchangeable
        names = [n for n in names if ("usrnet" in n) != bool(blind)]
    order: List[str] = []
    for n in ([stem] if stem in names else []) + ([_default_name(task, blind)] if task else []) + names:
        if n in names and n not in order:
            order.append(n)
    for n in order:
        try:
            if _fits(reg.create(n), state):
                return n
        except (TypeError, ValueError):  # pragma: no cover - registry entries build at defaults
            continue
    return None


def load_weights_file(path: Union[str, os.PathLike], task: Optional[str] = None, model: Optional[str] = None,
                      blind: bool = False) -> LoadedModel:
    """Builds a network and loads a state-dict file (plus its optional ``.json`` sidecar).

    The architecture is, in this order: the authors' released network when the file's
    SHA-256 is that of one of their checkpoints (whatever the file is called); the sidecar's
    ``model``/``args``; ``model``; else the registry model whose parameter names and shapes
    are those of the file (the file's name is only a tie-break). The file itself is loaded
    weights-only (:func:`conversenet.models.weights.read_state_dict`).
    """
    from .models import WeightsError
    from .models.weights import load_into, official_file_of, read_state_dict

    p = Path(path)
    if not p.is_file():
        raise RestoreError(f"weights file not found: {p}")
    meta = _sidecar(p)
    reg = _registry()
    try:
        state = read_state_dict(p)
    except WeightsError as e:
        raise RestoreError(str(e)) from None
    official = official_file_of(p)
    preset = _official_preset(official) if official else None
    args: Dict[str, Any] = {}
    how = ""
    if preset is not None and (model is None or model in (preset, preset.removesuffix("_official"))):
        name, how = preset, f", recognised by its SHA-256 as the authors' {official}"
        meta = {k: v for k, v in meta.items() if k not in ("model", "args")}
        if name in OFFICIAL_SIGMA:
            meta.setdefault("sigma", OFFICIAL_SIGMA[name])
    elif meta.get("model"):
        name, args = meta["model"], meta.get("args") or {}
    elif model is not None:
        name = model
    else:
        name = _guess_by_shapes(state, p.stem, task, blind)
        if name is None:
            fallback = p.stem if p.stem in reg.list_models() else (_default_name(task, blind) if task else None)
            if fallback is None:
                raise RestoreError(f"cannot tell which network {p} is for: no registered model has its tensor "
                                   f"names and shapes; pass model= or add {p.with_suffix('.json')}")
            try:
                load_into(reg.create(fallback), state, fallback, str(p))
            except WeightsError as e:
                raise RestoreError(f"{e} (no registered model at its default size fits this file; pass --model "
                                   f"or describe it in {p.with_suffix('.json')})") from None
            name = fallback  # fits, but a model of another task: refused below
        else:
            how = ", chosen by its tensor shapes"
    try:
        net = reg.create(name, **args)
        load_into(net, state, name, str(p))
    except (WeightsError, ValueError, TypeError) as e:
        raise RestoreError(str(e)) from None
    if task is not None and net.task != task:
        raise RestoreError(f"{p} holds a {net.task} network ({name}), not a {task} one")
    return LoadedModel(net.eval(), name, f"{p} ({name}{how})", meta)


def _offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip() not in ("", "0", "false", "no")


def _load_official(name: str) -> LoadedModel:
    from .models.weights import ENV_VAR
    from .paths import default_official_weights_dir

    reg = _registry()
    info = reg.model_info(name)
    if info["official_file"] is None:
        raise RestoreError(f"there are no official weights for {name!r}")
    # a development checkout finds ../shared/weights/official; elsewhere the usual search
    explicit = None
    if not os.environ.get(ENV_VAR):
        d = default_official_weights_dir()
        if d is not None and (d / info["official_file"]).is_file():
            explicit = d
    net = reg.create(name, pretrained="official", weights_path=explicit, download=not _offline())
    from .models.weights import find_official

    where = find_official(info["official_file"], explicit, download=False)
    return LoadedModel(net, name, f"authors' weights {info['official_file']} ({where})", {})


def _load_builtin(task: str, model: Optional[str], blind: bool) -> LoadedModel:
    files = builtin_weights(task, model, blind)
    if not files:
        what = f"model {model!r}" if model else f"task {task!r}" + (" (blind)" if task == "deblur" and blind else "")
        raise RestoreError(
            f"no built-in weights for {what}: this install has no matching conversenet/weights/*.pth "
            "(they are produced by the project's training runs); use --weights official (the authors' "
            "checkpoints, found via $CONVERSENET_WEIGHTS_DIR or downloaded) or --weights PATH"
        )
    lm = load_weights_file(files[0], task, model, blind)
    lm.source = f"built-in weights {files[0].name} ({lm.name})"
    return lm


def load_model(task: str, model: Optional[str] = None, weights: str = "auto", device="cpu",
               blind: bool = False, log: Optional[Callable[[str], None]] = None) -> LoadedModel:
    """The network for ``task`` with weights chosen by ``weights``.

    Args:
        task: "denoise", "sr" or "deblur".
        model: registry name (default: :data:`DEFAULT_MODELS`).
        weights: "auto" (the authors' file when found or downloadable, else built-in),
            "official", "builtin", or a path to a state-dict file.
        device: where to put the network.
        blind: deblurring without a kernel (ConverseNet instead of Converse-USRNet).
        log: called with one line saying which weights were used.

    Raises:
        RestoreError: no usable weights (the message says how to provide them).
    """
    from .models import WeightsError
    from .models.weights import ChecksumError

    _default_name(task, blind)
    reg = _registry()
    if model is not None:
        if model not in reg.list_models():
            raise RestoreError(f"unknown model {model!r}; models for {task}: {', '.join(reg.list_models(task))}")
        if reg.model_info(model)["task"] != task:
            raise RestoreError(f"model {model!r} is for {reg.model_info(model)['task']}, not {task}; "
                               f"models for {task}: {', '.join(reg.list_models(task))}")
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"weights must be 'auto', 'official', 'builtin' or a path, got {weights!r}")
    w = str(weights)
    if model is not None and w in ("official", "auto") and reg.model_info(model)["official_file"] is None \
            and f"{model}_official" in reg.list_models():
        model = f"{model}_official"  # e.g. converse_dncnn -> its released preset, as `conversenet eval` does
    if w == "official":
        name = model or _default_name(task, blind)
        try:
            lm = _load_official(name)
        except WeightsError as e:
            raise RestoreError(str(e)) from e
    elif w == "builtin":
        lm = _load_builtin(task, model, blind)
    elif w == "auto":
        name = model or _default_name(task, blind)
        try:
            if reg.model_info(name)["official_file"] is None:
                raise RestoreError(f"there are no official weights for {name!r}")
            lm = _load_official(name)
        except (WeightsError, RestoreError) as e:
            first = str(e).split(". ")[0]
            if isinstance(e, ChecksumError):
                # a present but altered official file is never used; say so even when quiet
                print(f"conversenet: WARNING: {first}. The file is corrupt or has been tampered with and was NOT "
                      f"loaded; remove or replace it. Falling back to other weights.", file=sys.stderr, flush=True)
            try:
                lm = _load_builtin(task, model, blind)
            except RestoreError as e2:
                raise RestoreError(f"no weights found: authors' weights: {first}; built-in: {e2}") from e2
            lm.source += (" (authors' weights REFUSED: checksum mismatch)" if isinstance(e, ChecksumError)
                          else " (authors' weights unavailable)")
    else:
        lm = load_weights_file(w, task, model, blind)
    if task == "deblur" and lm.model.needs_kernel == bool(blind):
        want = "a blind model (e.g. conversenet)" if blind else "a non-blind model taking a kernel (e.g. converse_usrnet)"
        raise RestoreError(f"{lm.name} does not fit this deblurring mode: need {want}")
    lm.model.to(resolve_device(device) if isinstance(device, str) else device)
    if log is not None:
        log(f"weights: {lm.source}")
    return lm


# --------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------
def make_kernel(spec: Union[str, os.PathLike, np.ndarray], size: int = 7) -> np.ndarray:
    """A (size, size) float64 blur kernel, sum 1, from a spec.

    ``spec``: ``"gaussian:SIGMA"`` (isotropic Gaussian of that standard deviation in
    pixels), a kernel file (.npy/.mat/image, :func:`conversenet.data.load_kernel`) or an
    array. Odd kernels smaller than ``size`` are zero-padded around their centre; larger
    ones are an error (the non-blind model was trained on ``size x size`` kernels).

    >>> make_kernel("gaussian:1.6").shape
    (7, 7)
    >>> make_kernel(np.ones((3, 3)))[2:5, 2:5].round(3).tolist()[0]
    [0.111, 0.111, 0.111]
    """
    from .data import check_kernel, gaussian_kernel, load_kernel

    if isinstance(spec, np.ndarray):
        k = check_kernel(spec, name="kernel")
    elif isinstance(spec, str) and spec.lower().startswith("gaussian:"):
        try:
            sigma = float(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"kernel must look like gaussian:SIGMA (e.g. gaussian:1.6), got {spec!r}") from None
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"kernel: the Gaussian sigma must be > 0, got {spec!r}")
        k = gaussian_kernel(size, sigma)
    elif isinstance(spec, (str, os.PathLike)):
        k = load_kernel(spec)
    else:
        raise TypeError(f"kernel must be 'gaussian:SIGMA', a file path or an array, got {type(spec).__name__}")
    kh, kw = k.shape
    if kh > size or kw > size:
        raise ValueError(f"kernel is {kh}x{kw}, larger than the {size}x{size} the model takes")
    if (size - kh) % 2 or (size - kw) % 2:
        raise ValueError(f"kernel is {kh}x{kw}; it can only be centred in {size}x{size} when both sides are odd")
    out = np.zeros((size, size), np.float64)
    t, l = (size - kh) // 2, (size - kw) // 2
    out[t:t + kh, l:l + kw] = k
    return out / out.sum()


# --------------------------------------------------------------------------------------
# memory estimate and tiling
# --------------------------------------------------------------------------------------
#: live activations of the widest layer at once, and the safety factor (conversenet._tuning)
_ACT_FACTOR = _tuning.TILE_ACTIVATIONS
_SAFETY = _tuning.TILE_SAFETY
#: estimate_bytes_per_pixel results, weakly keyed by the network (nothing is written on it)
_BPP_CACHE: "weakref.WeakKeyDictionary[nn.Module, Tuple[float, List[float]]]" = weakref.WeakKeyDictionary()
_caches.register("restore-memory-estimates", "working memory per pixel of a network (estimate_bytes_per_pixel)",
                 "one per live network (weak keys); freed with the network", _BPP_CACHE)


def _call(model: nn.Module, x: torch.Tensor, kernel: Optional[torch.Tensor]) -> torch.Tensor:
    if getattr(model, "needs_kernel", False):
        if kernel is None:
            raise ValueError("this model needs a blur kernel (kernel=...)")
        return model(x, kernel.to(x.device, x.dtype).expand(x.shape[0], -1, -1, -1))
    return model(x)


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
    cached = _BPP_CACHE.get(model)
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
            if isinstance(mod, Converse2d) and getattr(mod, "weight", None) is not None:
                spectra.append(_SAFETY * 4.0 * out.numel() / (p * p))

    for m in model.modules():
        hooks.append(m.register_forward_hook(on_out))
    param = next(model.parameters(), None)
    dev = param.device if param is not None else torch.device("cpu")
    k = kernel
    if getattr(model, "needs_kernel", False) and k is None:
        size = getattr(model, "blur_kernel_size", 7)
        k = torch.full((1, 1, size, size), 1.0 / size**2)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            _call(model, torch.rand(1, model.in_channels, p, p, device=dev), k)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    res = (_SAFETY * 4.0 * _ACT_FACTOR * widest, spectra)
    _BPP_CACHE[model] = res
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


def run_model(model: nn.Module, x: torch.Tensor, kernel: Optional[torch.Tensor] = None, *,
              tile: Optional[int] = None, overlap: int = DEFAULT_OVERLAP,
              max_memory: Union[int, str] = DEFAULT_MAX_MEMORY,
              progress: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """Applies ``model`` to ``x`` (N, C, H, W) without gradients, tiled when needed.

    Returns (N, C, H*s, W*s) on x's device (s = ``model.scale``), not clamped.
    """
    from .tiling import tiled_forward

    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a (N, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    budget = parse_memory(max_memory)
    h, w = x.shape[-2:]
    with torch.no_grad():
        t = plan_tile(h, w, lambda px: estimate_memory(model, px, kernel), budget, tile, overlap)
        if t is None:
            return _call(model, x, kernel)
        return tiled_forward(lambda v: _call(model, v, kernel), x, tile=t, overlap=overlap,
                             scale=getattr(model, "scale", 1), progress=progress)


# --------------------------------------------------------------------------------------
# arrays
# --------------------------------------------------------------------------------------
def restore_array(img: np.ndarray, lm: Union[LoadedModel, nn.Module], kernel=None, *, tile=None,
                  overlap: int = DEFAULT_OVERLAP, max_memory=DEFAULT_MAX_MEMORY,
                  progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """Restores a float image (H, W, C) (values nominally in [0, 1], not clipped on input).

    Channel handling (returns the same C):
      * C == model channels: as is;
      * grey (C=1) into an RGB model: the grey plane is repeated to RGB, the result turned
        back to grey with BT.601 luma (:func:`conversenet.data.rgb_to_gray`);
      * colour (C=3) into a grey model: each channel restored on its own;
      * C = 2 or 4 (alpha last): the colour part as above, the alpha channel unchanged
        (SR: resized with bicubic :func:`conversenet.data.imresize`).

    Returns float32 (H*s, W*s, C), clamped to [0, 1].
    """
    from .data import imresize

    model = lm.model if isinstance(lm, LoadedModel) else lm
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"img must be a numpy array (H, W, C) with C in 1..4, got {getattr(img, 'shape', img)}")
    if img.dtype.kind != "f":
        raise TypeError(f"img must be a float array in [0, 1], got {img.dtype}")
    k = None
    if kernel is not None:
        k = torch.as_tensor(np.asarray(kernel, np.float32))[None, None]
    dev = next(model.parameters()).device
    s = getattr(model, "scale", 1)
    c = img.shape[2]
    alpha = None
    if c in (2, 4):
        img, alpha = img[..., :-1], img[..., -1:]
    cin = model.in_channels

    def run(a: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None].to(dev, torch.float32)
        y = run_model(model, x, k, tile=tile, overlap=overlap, max_memory=max_memory, progress=progress)
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


_MODEL_CACHE: "BoundedCache[Tuple, LoadedModel]" = BoundedCache(lambda: _tuning.RESTORE_MODEL_CACHE_SIZE)
_caches.register("restore-models", "networks loaded by conversenet.restore(...) by task, model, weights, device",
                 "RESTORE_MODEL_CACHE_SIZE entries, least recently used first out", _MODEL_CACHE)


def restore(image, task: str = "denoise", *, model: Union[None, str, nn.Module] = None, weights: str = "auto",
            kernel=None, blind: bool = False, sigma: Optional[float] = None, scale: Optional[int] = None,
            device="auto", tile: Optional[int] = None, overlap: int = DEFAULT_OVERLAP,
            max_memory=DEFAULT_MAX_MEMORY, verbose: bool = False):
    """Restores one image and returns it in the kind it came in.

    Args:
        image: numpy array (H, W) or (H, W, C) (uint8/uint16, or float in [0, 1]), a PIL
            image, or a float tensor (C, H, W) / (N, C, H, W) in [0, 1].
        task: "denoise", "sr" or "deblur".
        model: registry name, or an ``nn.Module`` to use as is (then ``weights`` is ignored).
        weights: "auto", "official", "builtin" or a path (see :func:`load_model`).
        kernel: deblurring: "gaussian:SIGMA", a kernel file or array (non-blind model);
            leave None with ``blind=True``.
        sigma: denoising: the noise level (0..255) of the image; a warning is given when
            the weights were trained for another one.
        scale: SR: the factor wanted; must equal the model's.
        device: "auto", "cpu" or "cuda".
        tile, overlap, max_memory: tiling (see :func:`plan_tile`); defaults: tile only
            above a 4 GiB working-memory estimate, 32-pixel overlap.

    Returns:
        numpy: same dtype and channel layout ((H, W) stays (H, W)); PIL: same mode; tensor:
        float, same layout, on the input's device. SR output is ``scale`` times larger.

    Raises:
        TypeError / ValueError naming the argument; RestoreError when no weights are found.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    kind, arr, meta = _to_float_hwc(image)
    if isinstance(model, nn.Module):
        lm = LoadedModel(model.eval(), type(model).__name__, "module passed in", {})
        if getattr(model, "task", task) != task:
            raise ValueError(f"model is a {model.task} network, not {task}")
    else:
        dev = resolve_device(device)
        key = (task, model, str(weights), str(dev), bool(blind))
        lm = _MODEL_CACHE.get(key)
        if lm is None:
            lm = load_model(task, model, weights, dev, blind, log=print if verbose else None)
            _MODEL_CACHE.put(key, lm)
    net = lm.model
    k = None
    if getattr(net, "needs_kernel", False):
        if kernel is None:
            raise ValueError("kernel is required for non-blind deblurring (or pass blind=True)")
        k = make_kernel(kernel, getattr(net, "blur_kernel_size", 7))
    elif kernel is not None:
        raise ValueError(f"kernel was given but the model {lm.name} does not take one")
    if scale is not None and int(scale) != net.scale:
        raise ValueError(f"scale={scale} but the model {lm.name} upscales by {net.scale}")
    if sigma is not None and lm.sigma is not None and float(sigma) != lm.sigma:
        warnings.warn(f"the weights of {lm.name} were trained for sigma={lm.sigma:g}; got sigma={sigma:g}")
    out = restore_array(arr, lm, k, tile=tile, overlap=overlap, max_memory=max_memory)
    return _from_float_hwc(out, kind, meta)


def _to_float_hwc(image):
    """Any supported image kind -> (kind, float32 (H, W, C), info needed to convert back)."""
    from .data import to_float

    if isinstance(image, torch.Tensor):
        if not image.is_floating_point() or image.dim() not in (3, 4) or (image.dim() == 4 and image.shape[0] != 1):
            raise ValueError(f"image tensor must be float (C, H, W) or (1, C, H, W), got {image.dtype} {tuple(image.shape)}")
        t = image[0] if image.dim() == 4 else image
        return "tensor", t.detach().float().permute(1, 2, 0).cpu().numpy(), (image.dim(), image.dtype, image.device)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        mode = image.mode
        if mode in ("I;16", "I;16B", "I;16L"):
            a = np.asarray(image).astype(np.uint16)[..., None]
        elif mode in ("L", "RGB", "RGBA", "LA"):
            a = np.asarray(image)
            a = a[..., None] if a.ndim == 2 else a
        else:
            image = image.convert("RGB")
            a = np.asarray(image)
        return "pil", to_float(np.ascontiguousarray(a)), (image.mode,)
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 2, 3, 4)):
            raise ValueError(f"image must be (H, W) or (H, W, C) with C in 1..4, got shape {image.shape}")
        a = image[..., None] if image.ndim == 2 else image
        if a.dtype.kind == "f":
            f = a.astype(np.float32)
        elif a.dtype in (np.uint8, np.uint16):
            f = to_float(a)
        else:
            raise TypeError(f"image must be uint8, uint16 or float, got {image.dtype}")
        return "numpy", f, (image.ndim, image.dtype)
    raise TypeError(f"image must be a numpy array, a PIL image or a torch tensor, got {type(image).__name__}")


def _from_float_hwc(out: np.ndarray, kind: str, meta):
    from .data import from_float

    if kind == "tensor":
        ndim, dtype, dev = meta
        t = torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))).to(dev, dtype)
        return t[None] if ndim == 4 else t
    if kind == "pil":
        from PIL import Image

        (mode,) = meta
        if mode.startswith("I;16"):
            return Image.fromarray(from_float(out[..., 0], 16))
        u8 = from_float(out, 8)
        return Image.fromarray(u8[..., 0] if u8.shape[2] == 1 else u8, mode=mode if mode in ("L", "RGB", "RGBA", "LA") else None)
    ndim, dtype = meta
    if dtype.kind == "f":
        res = out.astype(dtype)
    else:
        res = from_float(out, 16 if dtype == np.uint16 else 8)
    return res[..., 0] if ndim == 2 else res


# --------------------------------------------------------------------------------------
# a sample image the package can ship: drawn procedurally, so no licence questions
# --------------------------------------------------------------------------------------
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


# ``conversenet.restore`` is both this module and the function: after ``import conversenet``
# the attribute may be either (importing the submodule rebinds it), so the module itself is
# made callable and forwards to :func:`restore`.
class _CallableModule(type(math)):
    def __call__(self, *args, **kwargs):
        return restore(*args, **kwargs)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule
