"""Restore images with a pretrained model: the one-call API :func:`restore` and
:func:`load_model`, which picks a task's network and weights.

The command-line tools ``conversenet denoise | sr | deblur | demo``
(:mod:`conversenet.cli.restore`) are built from the same pieces, each with one home:

* :func:`load_model`: the network for a task (default: the task table,
  :mod:`conversenet.tasks`) and its weights: ``"official"`` (the authors' weight sets),
  ``"builtin"`` (the package's own), ``"auto"`` (official when found or downloadable, else
  built-in) or a path (:func:`conversenet.models.load_weights`);
* running it: :mod:`conversenet.inference` (:func:`run_model`, :func:`restore_array`,
  memory estimates), tile planning: :mod:`conversenet.tiling` (:func:`plan_tile`);
* images of any kind to float and back, kernels from specs and the sample scene:
  :mod:`conversenet.data` (:func:`make_kernel`, :func:`sample_image`).

The names of those modules used here are re-exported, so ``conversenet.restore.run_model``
etc. keep working.

Example (random weights, so the "restored" image is meaningless; shows the call only):
    >>> import numpy as np, torch
    >>> from conversenet.models import create
    >>> net = create("converse_dncnn", width=4, num_blocks=1).eval()
    >>> out = restore(np.zeros((20, 24), np.uint8), model=net)
    >>> out.shape, out.dtype
    ((20, 24), dtype('uint8'))
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple, Union

import torch.nn as nn

from . import _caches, _tuning
from ._caches import BoundedCache
from .data import from_float_hwc, make_kernel, sample_image, to_float_hwc
from .inference import (
    DEFAULT_MAX_MEMORY,
    RestoreError,
    estimate_bytes_per_pixel,
    estimate_memory,
    parse_memory,
    resolve_device,
    restore_array,
    run_model,
)
from .models.base import as_restoration_model
from .models.registry import LoadedModel
from .tasks import TASK_NAMES
from .tasks import TASKS as _TASKS
from .tasks import channel_kind, get_task
from .tiling import DEFAULT_OVERLAP, MIN_AUTO_TILE, plan_tile

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
    "MIN_AUTO_TILE",
    "run_model",
    "restore_array",
    "restore",
]

TASKS = TASK_NAMES
#: Default network per task, a view of the task table ("deblur_blind": with blind=True).
DEFAULT_MODELS = {**{t.name: t.default_model() for t in _TASKS.values()},
                  **{f"{t.name}_blind": t.default_model(blind=True) for t in _TASKS.values() if t.has_blind_mode}}
ENV_OFFLINE = "CONVERSENET_OFFLINE"


# --------------------------------------------------------------------------------------
# models and weights
# --------------------------------------------------------------------------------------
def _registry():
    from .models import registry

    return registry


def _default_name(task: str, blind: bool = False) -> str:
    return get_task(task).default_model(blind=blind)


def _architecture(name: str) -> str:
    """The architecture of a registry name (a weight set's ``model``, else the name itself)."""
    ws = _registry().model_info(name)["weights"]
    return _weights_mod().get_weights(ws).model if ws else name


def _weights_mod():
    from .models import weights

    return weights


def builtin_weights(task: str, model: Optional[str] = None, blind: bool = False) -> List[Any]:
    """The package's own weight sets (:class:`~conversenet.models.weights.WeightSet`,
    ``origin="package"``) usable for ``task`` whose file is present, best first; empty when
    none. For deblurring only those of the mode (``blind`` or taking a kernel); with
    ``model``, only sets named ``model`` or for that architecture (or the architecture of
    the weight set ``model``). The set named ``model`` comes first, then those of the task's
    default architecture."""
    W = _weights_mod()
    default_arch = _architecture(_default_name(task, blind))
    archs = None if model is None else {model, _architecture(model)}
    found = []
    for ws in W.list_weights(task=task, origin="package"):
        if get_task(task).has_blind_mode and ws.takes_kernel == bool(blind):
            continue
        if archs is not None and not ({ws.name, ws.model} & archs):
            continue
        if W.locate(ws).status == "found":
            found.append(ws)
    # the default architecture first, then sets trained for one noise level (the paper's
    # protocol) before blind ones (those are picked by image channels, see load_model)
    return sorted(found, key=lambda ws: (ws.name != model, ws.model != default_arch, ws.sigma is None, ws.name))


def load_weights_file(path: Union[str, os.PathLike], task: Optional[str] = None, model: Optional[str] = None,
                      blind: bool = False) -> LoadedModel:
    """:func:`conversenet.models.load_weights` for ``task`` (the task's default network is
    preferred when the file's tensors fit several), errors as :class:`RestoreError`."""
    from .models import WeightsError, load_weights

    p = Path(path)
    if not p.is_file():
        raise RestoreError(f"weights file not found: {p}")
    try:
        return load_weights(model, p, task=task, blind=blind if task and get_task(task).has_blind_mode else None,
                            prefer=_default_name(task, blind) if task else None)
    except (WeightsError, ValueError, TypeError) as e:
        raise RestoreError(str(e)) from None


def _offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip() not in ("", "0", "false", "no")


def _official_set(name: str):
    """The authors' weight set for registry name ``name`` (itself, or the one for its
    architecture: converse_dncnn -> converse_dncnn_official)."""
    sets = _weights_mod().weights_for(name, origin="authors")
    if not sets:
        raise RestoreError(f"there are no official weights for {name!r}")
    return sets[0]


def _load_set(ws, asked: str, what: str) -> LoadedModel:
    """Builds and loads weight set ``ws``; the source line names the record (and the name
    asked for, when that was an architecture the record is for)."""
    W = _weights_mod()
    path = W.find_file(ws, download=not _offline())
    net = _registry().create(ws.name, pretrained=True, weights_path=path)
    via = f"; weight set {ws.name} for {asked}" if asked != ws.name else ""
    return LoadedModel(net, ws.name, f"{what} {ws.file} ({path}{via})", {}, ws)


def _load_builtin(task: str, model: Optional[str], blind: bool) -> LoadedModel:
    sets = builtin_weights(task, model, blind)
    if not sets:
        what = f"model {model!r}" if model else f"task {task!r}" + (" (blind)" if blind and get_task(task).has_blind_mode else "")
        raise RestoreError(
            f"no built-in weights for {what}: this install has no matching weight set in conversenet/weights/ "
            "(they are produced by the project's training runs); use --weights official (the authors' "
            "checkpoints, found via $CONVERSENET_WEIGHTS_DIR or downloaded) or --weights PATH"
        )
    from .models import WeightsError

    try:
        return _load_set(sets[0], model or sets[0].name, "built-in weights")
    except WeightsError as e:
        raise RestoreError(str(e)) from None


def _by_channels(task: str, model: Optional[str], weights: str, blind: bool,
                 channels: Optional[int]) -> Optional[LoadedModel]:
    """The task's default for images of ``channels`` (the blind grey / colour denoisers) when
    no model was named, ``weights`` is "auto" or "builtin" and the row has such a default
    whose file is here (or, for the authors' sets, downloadable); else None."""
    if model is not None or channels is None or weights not in ("auto", "builtin"):
        return None
    t = get_task(task)
    name = t.default_model(blind=blind, channels=channel_kind(channels))
    if name == t.default_model(blind=blind):
        return None
    W = _weights_mod()
    ws = W.get_weights(name)
    if W.locate(ws).status != "found" and (ws.origin == "package" or _offline()):
        return None
    lm = _load_set(ws, name, "built-in weights" if ws.origin == "package" else "authors' weights")
    lm.source += f" (the default for {'grey' if ws.channels == 1 else 'colour'} images)"
    return lm


def by_image_kind(task: str, model: Optional[str], weights: str, sigma: Optional[float]) -> bool:
    """Whether the model is picked by the kind of each image (grey / colour): the task has
    such defaults (denoising: the blind denoisers) and neither a model, a noise level nor
    weights other than "auto" / "builtin" were asked for. The CLI and the web app ask this
    before loading one model per kind."""
    return (get_task(task).picks_by_channels and model is None and sigma is None
            and weights in ("auto", "builtin"))


def _load_by_weights(task: str, model: Optional[str], w: str, blind: bool) -> LoadedModel:
    """``model`` (default: the task's) with weights "official", "builtin", "auto" or a path."""
    from .models import WeightsError
    from .models.weights import ChecksumError

    name = model or _default_name(task, blind)
    if w == "official":
        try:
            lm = _load_set(_official_set(name), name, "authors' weights")
        except WeightsError as e:
            raise RestoreError(str(e)) from e
    elif w == "builtin":
        lm = _load_builtin(task, model, blind)
    elif w == "auto":
        try:
            lm = _load_set(_official_set(name), name, "authors' weights")
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
    return lm


def load_model(task: str, model: Optional[str] = None, weights: str = "auto", device="cpu",
               blind: bool = False, log: Optional[Callable[[str], None]] = None,
               channels: Optional[int] = None) -> LoadedModel:
    """The network for ``task`` with weights chosen by ``weights``.

    Args:
        task: "denoise", "sr" or "deblur".
        model: registry name (default: :data:`DEFAULT_MODELS`). An architecture name with
            "official" weights loads the authors' weight set for it, and says so.
        weights: "auto" (the authors' file when found or downloadable, else built-in),
            "official", "builtin", or a path to a state-dict file.
        device: where to put the network.
        blind: deblurring without a kernel (ConverseNet instead of Converse-USRNet).
        log: called with one line saying which weights were used.
        channels: the image's channels (1, 2 grey + alpha, 3, 4 colour + alpha). With no
            ``model`` and ``weights`` "auto"/"builtin", the task's default for such images
            is used when the task has one (denoising: the blind grey / colour denoisers;
            pass None where a noise level was given, to keep the sigma-trained default).

    Raises:
        RestoreError: no usable weights (the message says how to provide them).
    """
    from .models import WeightsError

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
    try:
        lm = _by_channels(task, model, w, blind, channels)
    except WeightsError as e:
        raise RestoreError(str(e)) from e
    if lm is None:
        lm = _load_by_weights(task, model, w, blind)
    if get_task(task).has_blind_mode and lm.model.takes_kernel == bool(blind):
        want = "a blind model (e.g. conversenet)" if blind else "a non-blind model taking a kernel (e.g. converse_usrnet)"
        raise RestoreError(f"{lm.name} does not fit this deblurring mode: need {want}")
    lm.model.to(resolve_device(device) if isinstance(device, str) else device)
    if log is not None:
        log(f"weights: {lm.source}")
    return lm


#: (task, model, weights, device, blind, channels) -> LoadedModel of earlier restore() calls
_MODEL_CACHE: "BoundedCache[Tuple, LoadedModel]" = BoundedCache(lambda: _tuning.RESTORE_MODEL_CACHE_SIZE)
_caches.register("restore-models", "networks loaded by conversenet.restore(...) by task, model, weights, device",
                 "RESTORE_MODEL_CACHE_SIZE entries, least recently used first out", _MODEL_CACHE)


def restore(image, task: str = "denoise", *, model: Union[None, str, nn.Module] = None, weights: str = "auto",
            kernel=None, blind: bool = False, sigma: Optional[float] = None, scale: Optional[int] = None,
            device="auto", tile: Optional[int] = None, overlap: int = DEFAULT_OVERLAP,
            max_memory=DEFAULT_MAX_MEMORY, self_ensemble: bool = False, verbose: bool = False):
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
            the weights were trained for another one. Without ``sigma`` and ``model`` the
            blind grey or colour denoiser is used, by the image's channels.
        scale: SR: the factor wanted; must equal the model's.
        device: "auto", "cpu" or "cuda".
        tile, overlap, max_memory: tiling (see :func:`plan_tile`); defaults: tile only
            above a 4 GiB working-memory estimate, 32-pixel overlap.
        self_ensemble: average 8 flipped/rotated passes (8x the time, usually a little
            better; see :func:`conversenet.inference.run_model`).

    Returns:
        numpy: same dtype and channel layout ((H, W) stays (H, W)); PIL: same mode; tensor:
        float, same layout, on the input's device. SR output is ``scale`` times larger.

    Raises:
        TypeError / ValueError naming the argument; RestoreError when no weights are found.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not isinstance(self_ensemble, bool):
        raise TypeError(f"self_ensemble must be True or False, got {self_ensemble!r}")
    kind, arr, meta = to_float_hwc(image)
    if isinstance(model, nn.Module):
        net = as_restoration_model(model, task)
        lm = LoadedModel(net.eval(), net.describe(), "module passed in", {})
        if net.task != task:
            raise ValueError(f"model is a {net.task} network, not {task}")
    else:
        dev = resolve_device(device)
        # the image picks the default (see load_model); a noise level given keeps the task's
        channels = arr.shape[2] if by_image_kind(task, model, str(weights), sigma) else None
        key = (task, model, str(weights), str(dev), bool(blind), channels)
        lm = _MODEL_CACHE.get(key)
        if lm is None:
            lm = load_model(task, model, weights, dev, blind, log=print if verbose else None, channels=channels)
            _MODEL_CACHE.put(key, lm)
    net = lm.model
    k = None
    if net.takes_kernel:
        if kernel is None:
            raise ValueError("kernel is required for non-blind deblurring (or pass blind=True)")
        k = make_kernel(kernel, net.blur_kernel_size)
    elif kernel is not None:
        raise ValueError(f"kernel was given but the model {lm.name} does not take one")
    if scale is not None and int(scale) != net.scale:
        raise ValueError(f"scale={scale} but the model {lm.name} upscales by {net.scale}")
    if sigma is not None and lm.sigma is not None and float(sigma) != lm.sigma:
        warnings.warn(f"the weights of {lm.name} were trained for sigma={lm.sigma:g}; got sigma={sigma:g}")
    out = restore_array(arr, lm, k, tile=tile, overlap=overlap, max_memory=max_memory, self_ensemble=self_ensemble)
    return from_float_hwc(out, kind, meta)


# ``conversenet.restore`` is both this module and the function: after ``import conversenet``
# the attribute may be either (importing the submodule rebinds it), so the module itself is
# made callable and forwards to :func:`restore`.
class _CallableModule(type(math)):
    def __call__(self, *args, **kwargs):
        return restore(*args, **kwargs)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule
