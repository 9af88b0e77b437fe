"""Model registry and the one loader: ``create(name, pretrained=None, **overrides)``,
``load_weights(model_or_name, path)`` and ``list_models()``.

Architecture names use the paper's text defaults. Every weight set
(:class:`~conversenet.models.weights.WeightSet`) is also a name here: its architecture with
the record's constructor arguments (e.g. ``converse_dncnn_official``: 7x7 kernels,
circular padding 6, as the authors' released file), loaded with ``pretrained=...``.

Example:
    >>> from conversenet.models import create, list_models
    >>> "converse_dncnn_official" in list_models()
    True
    >>> net = create("converse_dncnn", width=8, num_blocks=1)
    >>> type(net).__name__, net.task
    ('ConverseDnCNN', 'denoise')
"""

from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch.nn as nn

from . import weights as _w
from .base import as_restoration_model, class_contract
from .deblur import ConverseNet, ConverseUSRNet, ConvNet, ConvUSRNet
from .denoise import ConvDnCNN, ConverseDnCNN, ConvTDnCNN, DnCNN
from .unet import ConverseUNet
from .sr import ConverseSRResNet, ConvSRResNet, ConvTSRResNet, SRResNet

__all__ = ["create", "load_weights", "LoadedModel", "read_sidecar", "list_models", "model_info", "register_model",
           "ModelEntry"]


@dataclass(frozen=True)
class ModelEntry:
    """A registry name: class, constructor defaults, and the weight set it stands for (if any)."""

    cls: type
    defaults: Dict[str, Any] = field(default_factory=dict)
    doc: str = ""
    weights: Optional[_w.WeightSet] = None


_REGISTRY: Dict[str, ModelEntry] = {
    # denoising, Table 4 (paper defaults: 5x5, circular padding 4)
    "converse_dncnn": ModelEntry(ConverseDnCNN, doc="Converse-DnCNN, 5x5 kernels (Table 4)"),
    "conv_dncnn": ModelEntry(ConvDnCNN, doc="Conv-DnCNN (depthwise conv)"),
    "convt_dncnn": ModelEntry(ConvTDnCNN, doc="ConvT-DnCNN (depthwise transposed conv)"),
    "dncnn": ModelEntry(DnCNN, doc="original DnCNN, 17 layers"),
    # blind Gaussian denoisers (sigma 0-55) trained by this project (issue #15)
    "converse_unet": ModelEntry(ConverseUNet, doc="Converse-UNet, multi-scale converse blocks"),
    "converse_unet_blind_gray": ModelEntry(
        ConverseUNet, {"in_channels": 1, "widths": (24, 48, 96, 192), "blocks": (1, 2, 2, 4)},
        doc="blind grey denoiser (sigma 0-55), Converse-UNet",
    ),
    "converse_unet_blind_color": ModelEntry(
        ConverseUNet, {"in_channels": 3, "widths": (24, 48, 96, 192), "blocks": (1, 2, 2, 4)},
        doc="blind colour denoiser (sigma 0-55), Converse-UNet",
    ),
    # super-resolution x4, Tables 5-6
    "srresnet": ModelEntry(SRResNet, doc="modified SRResNet, pixel shuffle"),
    "srresnet_pixelshuffle": ModelEntry(SRResNet, {"upsampler": "pixelshuffle"}, doc="Table 6"),
    "srresnet_nearest": ModelEntry(SRResNet, {"upsampler": "nearest"}, doc="Table 6"),
    "srresnet_convt": ModelEntry(SRResNet, {"upsampler": "convt"}, doc="Table 6"),
    "srresnet_converse": ModelEntry(SRResNet, {"upsampler": "converse"}, doc="Table 6"),
    "converse_srresnet": ModelEntry(ConverseSRResNet, doc="Converse-SRResNet (Table 5)"),
    "conv_srresnet": ModelEntry(ConvSRResNet, doc="Conv-SRResNet (Table 5)"),
    "convt_srresnet": ModelEntry(ConvTSRResNet, doc="ConvT-SRResNet (Table 5)"),
    # deblurring, Table 7
    "conversenet": ModelEntry(ConverseNet, doc="ConverseNet, blind"),
    "convnet": ModelEntry(ConvNet, doc="ConvNet, blind"),
    "converse_usrnet": ModelEntry(ConverseUSRNet, doc="Converse-USRNet, non-blind"),
    "conv_usrnet": ModelEntry(ConvUSRNet, doc="Conv-USRNet, non-blind (data step on the image)"),
}


def _add_preset(ws: _w.WeightSet) -> None:
    """A weight set is a registry name too: its architecture with the record's arguments."""
    if ws.model not in _REGISTRY:
        raise ValueError(f"weight set {ws.name}: unknown architecture {ws.model!r}")
    arch = _REGISTRY[ws.model]
    if class_contract(arch.cls) != (ws.task, ws.takes_kernel):
        raise ValueError(f"weight set {ws.name}: task/takes_kernel ({ws.task}, {ws.takes_kernel}) differ from "
                         f"those of {ws.model} {class_contract(arch.cls)}")
    if ws.name == ws.model:
        if ws.args:
            raise ValueError(f"weight set {ws.name}: a set named like its architecture cannot change its arguments")
        _REGISTRY[ws.name] = ModelEntry(arch.cls, arch.defaults, arch.doc, ws)
    elif ws.name in _REGISTRY and _REGISTRY[ws.name].weights is None:
        # an existing preset (e.g. converse_unet_blind_gray) gets its weights: same network only
        e = _REGISTRY[ws.name]
        if e.cls is not arch.cls or dict(e.defaults) != {**arch.defaults, **ws.args}:
            raise ValueError(f"weight set {ws.name}: the name is taken by a model with other arguments")
        _REGISTRY[ws.name] = ModelEntry(e.cls, e.defaults, e.doc, ws)
    else:
        _REGISTRY[ws.name] = ModelEntry(arch.cls, {**arch.defaults, **ws.args}, ws.describe(), ws)


def _remove_preset(ws: _w.WeightSet) -> None:
    e = _REGISTRY.get(ws.name)
    if e is not None and (ws.name == ws.model or ws.name in _PRESETS_WITHOUT_WEIGHTS):
        _REGISTRY[ws.name] = ModelEntry(e.cls, e.defaults, e.doc, None)
    else:
        _REGISTRY.pop(ws.name, None)


#: registry names that exist without a weight set (a record may later attach to them)
_PRESETS_WITHOUT_WEIGHTS = frozenset(_REGISTRY)
for _ws in _w.list_weights():
    _add_preset(_ws)
_w._registry_hooks = (_add_preset, _remove_preset)  # records registered later get their name too
_TASKS = ("denoise", "sr", "deblur")
_BUILTIN_NAMES = frozenset(_REGISTRY)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def register_model(name: str, cls: Optional[type] = None, defaults: Optional[Dict[str, Any]] = None, *,
                   doc: str = "", replace: bool = False):
    """Adds a model class to the registry, so that configs and :func:`create` can name it.

    This is how models of your own reach ``conversenet train``: put the call in a module and
    run ``conversenet train CONFIG --import MODULE`` (which imports, i.e. runs, that module);
    the config then names the model by ``name``. Configs themselves never import code.

    Args:
        name: the registry name (letters, digits, ``_ . -``; no ``:``).
        cls: an ``nn.Module`` subclass with a class attribute ``task`` ("denoise", "sr" or
            "deblur"); best a :class:`~conversenet.models.RestorationModel` like the
            package's models. A plain module's ``in_channels``, ``scale`` and
            ``needs_kernel`` are read once by :func:`~conversenet.models.as_restoration_model`.
            Omitted: returns a decorator.
        defaults: constructor arguments used unless overridden.
        doc: one line shown by ``conversenet info``.
        replace: allow replacing an earlier user registration of ``name`` (the package's
            own names can never be replaced).

    Returns:
        ``cls`` (so it can be used as ``@register_model("my_net")``).

    Raises:
        ValueError / TypeError: a bad name, a taken name, or a class that is not a model.

    Example:
        >>> import torch.nn as nn
        >>> @register_model("doc_tiny_denoiser", defaults={"width": 4}, replace=True)
        ... class Tiny(nn.Module):
        ...     task = "denoise"
        ...     def __init__(self, width=8):
        ...         super().__init__()
        ...         self.in_channels, self.scale, self.needs_kernel = 1, 1, False
        ...         self.body = nn.Conv2d(1, 1, 3, padding=1)
        ...     def forward(self, x):
        ...         return x - self.body(x)
        >>> type(create("doc_tiny_denoiser")).__name__, "doc_tiny_denoiser" in list_models("denoise")
        ('Tiny', True)
        >>> del _REGISTRY["doc_tiny_denoiser"]  # leave the registry as it was for other examples
    """
    if cls is None:
        return lambda c: register_model(name, c, defaults, doc=doc, replace=replace)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"register_model: name must be letters, digits, '_', '.' or '-' (no ':'), got {name!r}")
    if name in _BUILTIN_NAMES:
        raise ValueError(f"register_model: {name!r} is one of the package's own models and cannot be replaced")
    if name in _REGISTRY and not replace:
        raise ValueError(f"register_model: {name!r} is already registered (pass replace=True to replace it)")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_model: {name!r} must be an nn.Module subclass, got {cls!r}")
    task, _ = class_contract(cls)
    if task not in _TASKS:
        raise ValueError(f"register_model: {cls.__name__} needs a class attribute task in {_TASKS}, "
                         f"got {task!r}")
    if defaults is not None and not isinstance(defaults, dict):
        raise TypeError(f"register_model: defaults must be a dict, got {type(defaults).__name__}")
    _REGISTRY[name] = ModelEntry(cls, dict(defaults or {}), doc or cls.__name__)
    return cls


def list_models(task: Optional[str] = None) -> List[str]:
    """Registered names (sorted), optionally only those of ``task`` (denoise/sr/deblur)."""
    return sorted(n for n, e in _REGISTRY.items() if task is None or class_contract(e.cls)[0] == task)


def _entry(name: str) -> ModelEntry:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(list_models())}")
    return _REGISTRY[name]


def model_info(name: str) -> Dict[str, Any]:
    """Class, task, defaults, weight set (name, and its file when it is the authors') and a
    one-line description of a registered name."""
    e = _entry(name)
    task, takes_kernel = class_contract(e.cls)
    ws = e.weights
    return {"class": e.cls.__name__, "task": task, "takes_kernel": takes_kernel, "defaults": dict(e.defaults),
            "weights": ws.name if ws else None,
            "official_file": ws.file if ws is not None and ws.origin == "authors" else None, "doc": e.doc}


def _valid_args(cls: type) -> List[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def _weight_set(name: str, entry: ModelEntry, pretrained) -> _w.WeightSet:
    """The record ``create(name, pretrained=...)`` asks for (see :func:`create`)."""
    ws = entry.weights
    origin = {"official": "authors", "builtin": "package", True: None}[pretrained]
    if ws is not None and (origin is None or ws.origin == origin):
        return ws
    have = [w.name for w in _w.list_weights(origin=origin)]
    if pretrained == "official":
        raise ValueError(f"no official weights for {name!r}; official weights exist for: {', '.join(have)}")
    if pretrained == "builtin":
        raise _w.WeightsError(f"no built-in weights for {name!r} (no weight set of the package is for it, so "
                              f"conversenet/weights/{name}.pth is not used); built-in weights exist for: "
                              f"{', '.join(have) or 'none'}")
    raise ValueError(f"no weight set named {name!r}; weight sets: {', '.join(have)}")


def create(
    name: str,
    pretrained: Union[None, bool, str, os.PathLike] = None,
    *,
    weights_path: Union[None, str, os.PathLike] = None,
    download: bool = True,
    **overrides: Any,
) -> nn.Module:
    """Builds a registered model, optionally with weights.

    Args:
        name: one of :func:`list_models`; a weight set's name
            (:func:`conversenet.models.weights.list_weights`) builds its network.
        pretrained: ``None`` (random init); ``True`` (the weight set called ``name``);
            ``"official"`` (the same, when it is the authors' release: found and verified as
            described in :mod:`conversenet.models.weights`); ``"builtin"`` (the same, when
            it ships with the package); or a path to a state-dict file
            (:func:`load_weights`).
        weights_path: with a weight set, an explicit file or folder searched first.
        download: with the authors' weights, allow downloading into the torch hub cache.
        **overrides: constructor arguments replacing the entry's defaults.

    Returns:
        The model; in eval mode when weights were loaded.

    Raises:
        ValueError: unknown name or override, or no weight set of the kind asked for.
        WeightsError: weights missing, corrupt or not fitting the model.
    """
    entry = _entry(name)
    valid = _valid_args(entry.cls)
    bad = sorted(set(overrides) - set(valid))
    if bad:
        raise ValueError(f"unknown argument(s) {bad} for {name!r} ({entry.cls.__name__}); valid: {', '.join(valid)}")
    if pretrained is None or pretrained is False:
        return entry.cls(**{**entry.defaults, **overrides})
    if pretrained is True or (isinstance(pretrained, str) and pretrained in ("official", "builtin")):
        ws = _weight_set(name, entry, pretrained)
        model = entry.cls(**{**entry.defaults, **overrides})
        path = _w.find_file(ws, weights_path, download=download)
        _w.load_into(model, _w.read_state_dict(path), name, f"weight set {ws.name}: {ws.file} ({path})")
        return model.eval()
    if isinstance(pretrained, (str, os.PathLike)):
        return load_weights(name, pretrained, **overrides).model
    raise ValueError(f"pretrained must be None, True, 'official', 'builtin' or a path, got {pretrained!r}")


# --------------------------------------------------------------------------------------
# weights files: one loader
# --------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A network with loaded weights and where they came from.

    Attributes:
        model: the module (eval mode; a user's module is wrapped once, see
            :func:`~conversenet.models.as_restoration_model`).
        name: registry name of the network.
        source: one line saying which weights were used (and which record matched).
        meta: sidecar metadata (``sigma`` etc.), may be empty.
        weights: the weight set the file is (by SHA-256 or by name), when there is one.
    """

    model: nn.Module
    name: str
    source: str
    meta: Dict[str, Any] = field(default_factory=dict)
    weights: Optional[_w.WeightSet] = None

    def __post_init__(self) -> None:
        self.model = as_restoration_model(self.model)

    @property
    def task(self) -> str:
        return self.model.task

    @property
    def sigma(self) -> Optional[float]:
        """Noise level (0..255) the weights were trained for, when known."""
        s = self.meta.get("sigma", self.weights.sigma if self.weights is not None else None)
        return None if s is None else float(s)


def read_sidecar(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The optional ``<file>.json`` next to a weights file of the user's own, checked:
    ``{"model": "<registry name>", "args": {<constructor overrides>}, "sigma": 25}`` with
    ``model`` a string, ``args`` a mapping (or null), ``sigma`` a number (or null).

    Raises:
        WeightsError: one line naming the file and the field.
    """
    side = Path(path).with_suffix(".json")
    if not side.is_file():
        return {}
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise _w.WeightsError(f"cannot read the weights description {side}: {e}") from e
    if not isinstance(meta, dict):
        raise _w.WeightsError(f"{side} must hold a JSON object like {{\"model\": NAME, \"args\": {{...}}}}")
    if meta.get("model") is not None and not isinstance(meta["model"], str):
        raise _w.WeightsError(f"{side}: \"model\" must be a registry name (a string), got {type(meta['model']).__name__}")
    if meta.get("args") is not None and not isinstance(meta["args"], dict):
        raise _w.WeightsError(f"{side}: \"args\" must be a JSON object of constructor arguments, "
                              f"got {type(meta['args']).__name__} {json.dumps(meta['args'])[:60]}")
    sigma = meta.get("sigma")
    if sigma is not None and (isinstance(sigma, bool) or not isinstance(sigma, (int, float))):
        raise _w.WeightsError(f"{side}: \"sigma\" must be a number, got {json.dumps(sigma)[:60]}")
    return meta


def _fits(net: nn.Module, state: Dict[str, Any]) -> bool:
    own = net.state_dict()
    return set(own) == set(state) and all(tuple(own[k].shape) == tuple(state[k].shape) for k in own)


def _candidates_for(task: Optional[str], blind: Optional[bool]) -> List[str]:
    """Registry names of ``task``; with ``blind`` given (a task with a blind mode, i.e.
    deblurring), blind (no kernel input) and non-blind models are not interchangeable, so
    only those of the mode asked for."""
    names = list_models(task)
    if blind is not None:
        names = [n for n in names if model_info(n)["takes_kernel"] != bool(blind)]
    return names


def _guess_by_shapes(state: Dict[str, Any], stem: str, task: Optional[str], blind: Optional[bool],
                     prefer: Optional[str]) -> Optional[str]:
    """The first registry model (at its defaults) whose parameter names and shapes are exactly
    those of ``state``. Tried in this order: the file's stem when it is a registry name (a
    preference only, never taken without fitting), ``prefer`` (the task's default), then
    the others."""
    names = _candidates_for(task, blind)
    order: List[str] = []
    for n in ([stem] if stem in names else []) + ([prefer] if prefer else []) + names:
        if n in names and n not in order:
            order.append(n)
    for n in order:
        try:
            if _fits(create(n), state):
                return n
        except (TypeError, ValueError):  # pragma: no cover - registry entries build at defaults
            continue
    return None


def load_weights(model_or_name: Union[None, str, nn.Module], path: Union[str, os.PathLike], *,
                 task: Optional[str] = None, blind: Optional[bool] = None, prefer: Optional[str] = None,
                 **overrides: Any) -> LoadedModel:
    """Loads a state-dict file: the one loader for weights files (``create(name, pretrained=PATH)``,
    ``--weights PATH`` and the restore / eval / export / web tools use it).

    The network is, in this order:

    1. ``model_or_name`` when it is a module (the file is loaded into it);
    2. the weight set whose SHA-256 the file has (whatever the file is called), when
       ``model_or_name`` is None, that set's name or its architecture: the record it matched
       is named in ``source``;
    3. ``model_or_name`` (a registry name, with ``overrides``) or else the sidecar
       ``<file>.json``'s ``model``; the sidecar's ``args`` apply when it names that model
       (:func:`read_sidecar`; a sidecar naming another model is an error);
    5. else the registry model (of ``task``) whose parameter names and shapes are those of
       the file (its stem, then ``prefer``, are tried first).

    The file is read weights-only (:func:`conversenet.models.weights.read_state_dict`) and
    loaded strictly.

    Returns:
        :class:`LoadedModel` (eval mode, on the CPU).

    Raises:
        WeightsError: missing or unreadable file, a network that does not fit, or a network
            of another task than ``task``.
    """
    p = Path(path)
    if not p.is_file():
        raise _w.WeightsError(f"weights file not found: {p}")
    state = _w.read_state_dict(p)
    ws = _w.match_file(p)
    how = f", recognised by its SHA-256 as weight set {ws.name} ({ws.file})" if ws is not None else ""
    if isinstance(model_or_name, nn.Module):
        net = as_restoration_model(model_or_name)
        _w.load_into(model_or_name, state, net.describe(), str(p))
        return LoadedModel(model_or_name.eval(), net.describe(), f"{p}{how}", {}, ws)
    if model_or_name is not None:
        _entry(model_or_name)
    meta = read_sidecar(p)
    args: Dict[str, Any] = dict(overrides)
    if ws is not None and model_or_name in (None, ws.name, ws.model) and not overrides:
        name = ws.name
        meta = {k: v for k, v in meta.items() if k not in ("model", "args")}
    elif meta.get("model") or model_or_name is not None:
        name, ws = model_or_name or meta["model"], None
        if meta.get("model") not in (None, name):
            raise _w.WeightsError(f"{p.with_suffix('.json')} describes the file as {meta['model']!r}, "
                                  f"but model {name!r} was asked for")
        if meta.get("model"):
            args = {**(meta.get("args") or {}), **overrides}
    else:
        ws = None
        name = _guess_by_shapes(state, p.stem, task, blind, prefer)
        if name is None:
            fallback = p.stem if p.stem in list_models() else prefer
            if fallback is None:
                raise _w.WeightsError(f"cannot tell which network {p} is for: no registered model has its tensor "
                                      f"names and shapes; pass model= or add {p.with_suffix('.json')}")
            try:
                _w.load_into(create(fallback), state, fallback, str(p))
            except _w.WeightsError as e:
                raise _w.WeightsError(f"{e} (no registered model at its default size fits this file; pass --model "
                                      f"or describe it in {p.with_suffix('.json')})") from None
            name = fallback  # fits, but a model of another task: refused below
        else:
            how = ", chosen by its tensor shapes"
    try:
        net = create(name, **args)
    except (ValueError, TypeError) as e:
        raise _w.WeightsError(str(e)) from None
    _w.load_into(net, state, name, str(p))
    loaded = LoadedModel(net.eval(), name, f"{p} ({name}{how})", meta, ws)
    if task is not None and loaded.task != task:
        raise _w.WeightsError(f"{p} holds a {loaded.task} network ({name}), not a {task} one")
    return loaded
