"""Model registry: ``create(name, pretrained=None, **overrides)`` and ``list_models()``.

Names without ``_official`` use the paper's text defaults; the ``*_official`` presets match
the released checkpoints (``pretrained="official"``).

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
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch.nn as nn

from . import weights as _w
from .base import class_contract
from .deblur import ConverseNet, ConverseUSRNet, ConvNet, ConvUSRNet
from .denoise import ConvDnCNN, ConverseDnCNN, ConvTDnCNN, DnCNN
from .unet import ConverseUNet
from .sr import ConverseSRResNet, ConvSRResNet, ConvTSRResNet, SRResNet

__all__ = ["create", "list_models", "model_info", "register_model", "ModelEntry"]


@dataclass(frozen=True)
class ModelEntry:
    cls: type
    defaults: Dict[str, Any] = field(default_factory=dict)
    official_file: Optional[str] = None
    doc: str = ""


_REGISTRY: Dict[str, ModelEntry] = {
    # denoising, Table 4 (paper defaults: 5x5, circular padding 4)
    "converse_dncnn": ModelEntry(ConverseDnCNN, doc="Converse-DnCNN, 5x5 kernels (Table 4)"),
    "conv_dncnn": ModelEntry(ConvDnCNN, doc="Conv-DnCNN (depthwise conv)"),
    "convt_dncnn": ModelEntry(ConvTDnCNN, doc="ConvT-DnCNN (depthwise transposed conv)"),
    "dncnn": ModelEntry(DnCNN, doc="original DnCNN, 17 layers"),
    "converse_dncnn_official": ModelEntry(
        ConverseDnCNN, {"kernel_size": 7, "padding": 6}, "converse_dncnn.pth",
        "released Converse-DnCNN (7x7, circular padding 6), grayscale sigma=25",
    ),
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
    "converse_srresnet_official": ModelEntry(
        ConverseSRResNet, {}, "converse_srresnet.pth", "released Converse-SRResNet, bicubic x4"
    ),
    # deblurring, Table 7
    "conversenet": ModelEntry(ConverseNet, doc="ConverseNet, blind"),
    "convnet": ModelEntry(ConvNet, doc="ConvNet, blind"),
    "converse_usrnet": ModelEntry(ConverseUSRNet, doc="Converse-USRNet, non-blind"),
    "conv_usrnet": ModelEntry(ConvUSRNet, doc="Conv-USRNet, non-blind (data step on the image)"),
    "conversenet_official": ModelEntry(ConverseNet, {}, "conversenet.pth", "released ConverseNet"),
    "converse_usrnet_official": ModelEntry(
        ConverseUSRNet, {}, "converse_usrnet.pth", "released Converse-USRNet"
    ),
}


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
            "deblur") and instance attributes ``in_channels``, ``scale``, ``needs_kernel``
            like the package's models. Omitted: returns a decorator.
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
    _REGISTRY[name] = ModelEntry(cls, dict(defaults or {}), None, doc or cls.__name__)
    return cls


def list_models(task: Optional[str] = None) -> List[str]:
    """Registered names (sorted), optionally only those of ``task`` (denoise/sr/deblur)."""
    return sorted(n for n, e in _REGISTRY.items() if task is None or class_contract(e.cls)[0] == task)


def _entry(name: str) -> ModelEntry:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(list_models())}")
    return _REGISTRY[name]


def model_info(name: str) -> Dict[str, Any]:
    """Class, defaults, official file and a one-line description of a registered name."""
    e = _entry(name)
    task, takes_kernel = class_contract(e.cls)
    return {"class": e.cls.__name__, "task": task, "takes_kernel": takes_kernel, "defaults": dict(e.defaults),
            "official_file": e.official_file, "doc": e.doc}


def _valid_args(cls: type) -> List[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def create(
    name: str,
    pretrained: Union[None, str, os.PathLike] = None,
    *,
    weights_path: Union[None, str, os.PathLike] = None,
    download: bool = True,
    **overrides: Any,
) -> nn.Module:
    """Builds a registered model, optionally with weights.

    Args:
        name: one of :func:`list_models`.
        pretrained: ``None`` (random init); ``"official"`` (the authors' file, found and
            verified as described in :mod:`conversenet.models.weights`; only for names
            with an official file); ``"builtin"`` (``conversenet/weights/<name>.pth``
            shipped with the package); or a path to a state-dict file (loaded as is).
        weights_path: with ``"official"``, an explicit file or folder searched first.
        download: with ``"official"``, allow downloading into the torch hub cache.
        **overrides: constructor arguments replacing the entry's defaults.

    Returns:
        The model; in eval mode when weights were loaded.

    Raises:
        ValueError: unknown name or override, or ``"official"`` for a name without a file.
        WeightsError: weights missing, corrupt or not fitting the model.
    """
    entry = _entry(name)
    valid = _valid_args(entry.cls)
    bad = sorted(set(overrides) - set(valid))
    if bad:
        raise ValueError(f"unknown argument(s) {bad} for {name!r} ({entry.cls.__name__}); valid: {', '.join(valid)}")
    model = entry.cls(**{**entry.defaults, **overrides})
    if pretrained is None or pretrained is False:
        return model
    if pretrained == "official":
        if entry.official_file is None:
            have = [n for n in list_models() if _REGISTRY[n].official_file]
            raise ValueError(f"no official weights for {name!r}; official weights exist for: {', '.join(have)}")
        path = _w.find_official(entry.official_file, weights_path, download=download)
        source = f"{entry.official_file} ({path})"
    elif pretrained == "builtin":
        path = _w.builtin_path(name)
        source = f"built-in {path.name}"
    elif isinstance(pretrained, (str, os.PathLike)):
        path = Path(pretrained)
        source = str(path)
    else:
        raise ValueError(f"pretrained must be None, 'official', 'builtin' or a path, got {pretrained!r}")
    _w.load_into(model, _w.read_state_dict(path), name, source)
    return model.eval()
