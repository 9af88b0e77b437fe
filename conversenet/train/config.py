"""Training configuration: YAML files with ``extends:``, presets, ``key=value`` overrides,
and a typed schema that is checked before any work is done.

A config file is a nested mapping. ``extends: other.yaml`` (or a list of files, resolved
relative to the file, else as packaged config names) is merged first, then the file itself on top (mappings merge key by
key, everything else replaces). ``presets: {NAME: {...}}`` holds partial configs; the
top-level ``preset: NAME`` (usually given on the command line as ``preset=cpu``) merges
that partial config on top, and command-line overrides are applied after it again, so
``preset=cpu train.total_iter=50`` does what it says.

The paper's configs ship inside the package (``conversenet/configs``) and are named by
their path there without ``.yaml``: ``load_config("table4/converse_dncnn")``; a path to an
existing file always wins over a name (:func:`resolve_config`, :func:`list_configs`).

Every key is checked against the dataclasses below: an unknown key or a value of the
wrong type raises :class:`ConfigError` naming the dotted key, e.g.
``train.lr: expected float, got str``.

Example:
    >>> cfg = config_from_dict({"name": "demo", "model": {"name": "dncnn"},
    ...                         "train": {"total_iter": 10, "lr": 2e-4}})
    >>> cfg.train.lr, cfg.data.batch_size
    (0.0002, 16)
    >>> config_from_dict({"train": {"lr": "fast"}})
    Traceback (most recent call last):
    ...
    conversenet.train.config.ConfigError: train.lr: expected float, got str
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import yaml

__all__ = [
    "Config", "ModelConfig", "DegradationConfig", "DataConfig", "TrainConfig", "LogConfig",
    "DebugConfig", "ConfigError", "load_config", "config_from_dict", "config_to_dict",
    "parse_overrides", "yaml_load", "check_model_name", "list_configs", "resolve_config",
]


class ConfigError(ValueError):
    """An invalid configuration; the message starts with the dotted key."""


# --------------------------------------------------------------------------- schema

@dataclass
class ModelConfig:
    """Which network: a registry name (``conversenet.models.create``) or ``"pkg.module:Factory"``."""
    name: str = ""
    args: Dict[str, Any] = field(default_factory=dict)  # keyword overrides for the constructor


@dataclass
class DegradationConfig:
    """How degraded inputs are synthesised on the fly (units of noise: 0-255)."""
    sigma: float = 25.0                         # denoising noise level (also used for validation)
    sigma_range: Optional[List[float]] = None   # [lo, hi]: blind training, sigma ~ U(lo, hi) per patch
    sigma_focus: Optional[List[float]] = None   # [lo, hi] inside sigma_range: drawn from more often ...
    sigma_focus_prob: float = 0.5               # ... with this probability per patch (else from sigma_range)
    scale: int = 4                              # SR factor (bicubic, MATLAB imresize)
    kernel_size: int = 7                        # deblurring: size of the random kernels
    kernel_types: List[str] = field(default_factory=lambda: ["gaussian", "motion"])
    noise: float = 2.55                         # deblurring: noise added after the blur
    val_kernel: Optional[str] = None            # deblurring: .npy kernel for validation (None: seeded random)


@dataclass
class DataConfig:
    """Training and validation images. Relative folders resolve under the data root first."""
    train: str = "trainsets/train400"
    val: Optional[str] = "testsets/set12"
    val_images: int = 0          # 0: every image of the validation folder
    val_crop: int = 0            # >0: centre-crop validation images to this size (HR)
    patch_size: int = 128        # HR patch size
    batch_size: int = 16         # global batch (split across ranks)
    num_workers: int = 4
    augment: bool = True         # the 8 flip/rotation modes
    cache: bool = True           # keep decoded training images in memory (per worker)


@dataclass
class TrainConfig:
    """Optimisation and schedule (iterations are optimiser steps)."""
    total_iter: int = 800_000
    lr: float = 1e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    milestones: List[int] = field(default_factory=lambda: [100_000 * i for i in range(1, 8)])
    gamma: float = 0.5
    loss: str = "l1"             # l1 | l2 | charbonnier | psnr (mean per-sample log MSE)
    grad_clip: float = 0.0       # 0: off; else max global L2 norm
    ema_decay: float = 0.0       # 0: off; e.g. 0.999
    val_every: int = 5000
    checkpoint_every: int = 5000
    snapshot_every: int = 0      # >0: also keep the weights of every N-th iteration (snapshots/iter_NNNNNNN.pth)
    log_every: int = 100


@dataclass
class LogConfig:
    progress: bool = True        # tqdm bar (rank 0)
    tensorboard: bool = False    # needs the tensorboard package
    plot: bool = True            # curves.png at the end (needs matplotlib)


@dataclass
class DebugConfig:
    dump_grads_at_step: int = 0  # >0: rank 0 writes the (all-reduced) gradients of that step
    iter_sleep_s: float = 0.0    # >0: sleep after every iteration (tests: a wide window to interrupt a run)


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    out_dir: Optional[str] = None  # default runs/<name>
    device: str = "auto"           # auto | cpu | cuda | cuda:N
    threads: int = 0               # torch intra-op threads per process (0: torch default)
    preset: Optional[str] = None
    presets: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)


_CHOICES = {
    "device": None,
    "train.loss": ("l1", "l2", "charbonnier", "psnr"),
}


# --------------------------------------------------------------------------- YAML

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 insists on ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML text (safe; ``1e-4`` is a float).

    >>> yaml_load("lr: 1e-4\\nn: 3")
    {'lr': 0.0001, 'n': 3}
    """
    return yaml.load(text, Loader=_Loader)


def _yaml_problem(e: "yaml.YAMLError") -> str:
    """One line: the problem and its line/column (PyYAML's own text spans several lines)."""
    problem = getattr(e, "problem", None) or getattr(e, "context", None)
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if problem is None:
        return " ".join(str(e).split())
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem}{where}"


def _deep_merge(base: Dict[str, Any], top: Mapping[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml_chain(path: Path, seen: Sequence[Path] = ()) -> Dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"extends: circular reference through {path}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {_yaml_problem(e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    parents = raw.pop("extends", None) or []
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"extends: expected a file name or a list of them ({path})")
    merged: Dict[str, Any] = {}
    for p in parents:
        parent = path.parent / p
        if not parent.is_file():  # not beside the file: a packaged name (your own file extends table4/dncnn)
            parent = _packaged_file(Path(p)) or parent
        merged = _deep_merge(merged, _read_yaml_chain(parent, (*seen, path)))
    return _deep_merge(merged, raw)


# --------------------------------------------------------------------------- packaged configs

def _packaged_dir() -> Path:
    """``conversenet/configs`` of the installed (or checked-out) package.

    A package installed from a wheel or used from a checkout is a folder on disk, so this is
    a real path and ``extends:`` resolves relative to it like for any other file.
    """
    root = importlib.resources.files("conversenet") / "configs"
    if not isinstance(root, Path):  # e.g. a zip import: extends: needs real files
        raise ConfigError(f"the packaged configs are not files on disk ({root}); install conversenet "
                          "into a folder (pip install) or name a config file by its path")
    return root


def list_configs() -> List[str]:
    """Names of the packaged experiment configs (the shared ``base*.yaml`` files left out).

    >>> "table4/converse_dncnn" in list_configs()
    True
    """
    root = _packaged_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml")
                  if not p.name.startswith("base"))


def _packaged_file(path: Path) -> Optional[Path]:
    """The packaged YAML file named ``path`` (``.yaml`` optional), or None."""
    name = path.as_posix()
    name = name[:-len(".yaml")] if name.endswith(".yaml") else name
    parts = name.split("/")
    # a name stays inside the packaged folder: no absolute paths, no '..' steps
    if not name or name == "." or path.is_absolute() or ".." in parts:
        return None
    candidate = _packaged_dir().joinpath(*parts[:-1], parts[-1] + ".yaml")
    return candidate if candidate.is_file() else None


def resolve_config(config: Union[str, Path]) -> Path:
    """The YAML file that ``config`` names: a path to an existing file wins; otherwise a
    packaged config name such as ``table4/converse_dncnn`` (``.yaml`` optional).

    Raises:
        ConfigError: neither a file nor a packaged name; the message lists the names.

    >>> resolve_config("table4/converse_dncnn.yaml") == resolve_config("table4/converse_dncnn")
    True
    """
    path = Path(config)
    if path.is_file():
        return path
    packaged = _packaged_file(path)
    if packaged is not None:
        return packaged
    names = ", ".join(list_configs()) or f"none, {_packaged_dir()} holds no configs"
    raise ConfigError(f"config file not found: {config} (not a file, nor a packaged config name; "
                      f"packaged: {names})")


# --------------------------------------------------------------------------- overrides

def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """``["train.lr=2e-4", "preset=cpu"]`` -> nested dict; values are parsed as YAML.

    >>> parse_overrides(["train.lr=2e-4", "data.val=null", "model.args.kernel_size=3"])
    {'train': {'lr': 0.0002}, 'data': {'val': None}, 'model': {'args': {'kernel_size': 3}}}
    """
    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE (e.g. train.lr=2e-4)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: empty key")
        try:
            val = yaml_load(value) if value.strip() else ""
        except yaml.YAMLError:
            val = value
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is set to a value and used as a section")
        node[parts[-1]] = val
    return out


# --------------------------------------------------------------------------- validation

def _tname(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin is Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return " or ".join(_tname(a) for a in args) + " or null"
    if origin in (list, List):
        return f"list of {_tname(typing.get_args(t)[0])}"
    if origin in (dict, Dict):
        return "mapping"
    return getattr(t, "__name__", str(t))


def _check(value: Any, t: Any, key: str) -> Any:
    """Return ``value`` converted to type ``t`` or raise ConfigError naming ``key``."""
    if dataclasses.is_dataclass(t):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(t, value, key + ".")
    origin = typing.get_origin(t)
    if origin is Union:
        args = typing.get_args(t)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(value, inner[0], key)
    if t is Any:
        return copy.deepcopy(value)
    if origin in (list, List):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {_tname(t)}, got {type(value).__name__}")
        (inner,) = typing.get_args(t)
        return [_check(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        kt, vt = typing.get_args(t)
        return {str(k): _check(v, vt, f"{key}.{k}") for k, v in value.items()}
    if t is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected bool, got {type(value).__name__}")
        return value
    if t is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected int, got {type(value).__name__}")
        return value
    if t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected float, got {type(value).__name__}")
        return float(value)
    if t is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected str, got {type(value).__name__}")
        return value
    raise TypeError(f"unsupported schema type {t!r} for {key}")  # pragma: no cover


def _build(cls: type, raw: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in names:
            raise ConfigError(f"{prefix}{k}: unknown key (valid: {', '.join(sorted(names))})")
    kwargs = {k: _check(v, hints[k], prefix + k) for k, v in raw.items()}
    return cls(**kwargs)


def check_model_name(name: Any) -> None:
    """Raise :class:`ConfigError` unless ``name`` is a registered model name (never imports what it names)."""
    from ..models import list_models

    available = list_models()
    if isinstance(name, str) and name in available:
        return
    raise ConfigError(f"model.name: unknown model {name!r}: a config names a registered model only and never "
                      f"imports code (for a model of your own, register it with "
                      f"conversenet.models.register_model in a module and pass --import MODULE); "
                      f"available: {', '.join(available)}")


def _semantic_checks(cfg: Config) -> None:
    def pos(key: str, v: Union[int, float], allow_zero: bool = False) -> None:
        if v < 0 or (v == 0 and not allow_zero):
            raise ConfigError(f"{key}: expected a {'non-negative' if allow_zero else 'positive'} number, got {v}")

    t, d, g = cfg.train, cfg.data, cfg.degradation
    if not cfg.model.name:
        raise ConfigError("model.name: required (a registered model name)")
    # whether the name is registered is checked when the model is built (build_model, also
    # under --check): models registered by `--import` code exist only then
    pos("train.total_iter", t.total_iter)
    pos("train.lr", t.lr)
    pos("train.val_every", t.val_every)
    pos("train.checkpoint_every", t.checkpoint_every)
    pos("train.log_every", t.log_every)
    pos("train.snapshot_every", t.snapshot_every, allow_zero=True)
    pos("train.grad_clip", t.grad_clip, allow_zero=True)
    if not 0 <= t.ema_decay < 1:
        raise ConfigError(f"train.ema_decay: expected 0 <= value < 1, got {t.ema_decay}")
    if len(t.betas) != 2:
        raise ConfigError(f"train.betas: expected two numbers, got {t.betas}")
    if t.loss not in _CHOICES["train.loss"]:
        raise ConfigError(f"train.loss: expected one of {_CHOICES['train.loss']}, got {t.loss!r}")
    if any(b <= a for a, b in zip(t.milestones, t.milestones[1:])):
        raise ConfigError(f"train.milestones: expected increasing iterations, got {t.milestones}")
    pos("data.patch_size", d.patch_size)
    pos("data.batch_size", d.batch_size)
    pos("data.num_workers", d.num_workers, allow_zero=True)
    pos("data.val_images", d.val_images, allow_zero=True)
    pos("data.val_crop", d.val_crop, allow_zero=True)
    pos("degradation.sigma", g.sigma, allow_zero=True)
    pos("degradation.scale", g.scale)
    pos("degradation.kernel_size", g.kernel_size)
    pos("degradation.noise", g.noise, allow_zero=True)
    if g.sigma_range is not None and (len(g.sigma_range) != 2 or not 0 <= g.sigma_range[0] <= g.sigma_range[1]):
        raise ConfigError(f"degradation.sigma_range: expected [lo, hi] with 0 <= lo <= hi, got {g.sigma_range}")
    if g.sigma_focus is not None:
        if g.sigma_range is None:
            raise ConfigError("degradation.sigma_focus: needs degradation.sigma_range (blind training)")
        if len(g.sigma_focus) != 2 or not g.sigma_range[0] <= g.sigma_focus[0] <= g.sigma_focus[1] <= g.sigma_range[1]:
            raise ConfigError(f"degradation.sigma_focus: expected [lo, hi] inside sigma_range {g.sigma_range}, "
                              f"got {g.sigma_focus}")
    if not 0 <= g.sigma_focus_prob <= 1:
        raise ConfigError(f"degradation.sigma_focus_prob: expected a probability in [0, 1], got {g.sigma_focus_prob}")
    for i, kt in enumerate(g.kernel_types):
        if kt not in ("gaussian", "motion"):
            raise ConfigError(f"degradation.kernel_types[{i}]: expected gaussian or motion, got {kt!r}")
    if not g.kernel_types:
        raise ConfigError("degradation.kernel_types: expected at least one kernel type")
    pos("debug.dump_grads_at_step", cfg.debug.dump_grads_at_step, allow_zero=True)
    pos("debug.iter_sleep_s", cfg.debug.iter_sleep_s, allow_zero=True)
    pos("threads", cfg.threads, allow_zero=True)
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device):
        raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {cfg.device!r}")


def config_from_dict(raw: Mapping[str, Any], overrides: Optional[Mapping[str, Any]] = None) -> Config:
    """Validate a merged mapping (plus optional overrides; the preset is applied in between)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config: expected a mapping, got {type(raw).__name__}")
    merged = dict(raw)
    merged.pop("extends", None)
    overrides = dict(overrides or {})
    merged = _deep_merge(merged, overrides)
    preset = merged.get("preset")
    if preset is not None:
        presets = merged.get("presets") or {}
        if not isinstance(preset, str):
            raise ConfigError(f"preset: expected str, got {type(preset).__name__}")
        if not isinstance(presets, Mapping) or preset not in presets:
            avail = ", ".join(sorted(presets)) if isinstance(presets, Mapping) and presets else "none defined"
            raise ConfigError(f"preset: unknown preset {preset!r} (available: {avail})")
        part = presets[preset]
        if not isinstance(part, Mapping):
            raise ConfigError(f"presets.{preset}: expected a mapping, got {type(part).__name__}")
        merged = _deep_merge(_deep_merge(merged, part), overrides)
    cfg = _build(Config, merged)
    _semantic_checks(cfg)
    return cfg


def load_config(path: Union[str, Path], overrides: Union[Sequence[str], Mapping[str, Any], None] = None) -> Config:
    """Read ``path`` (following ``extends:``), apply preset and overrides, validate.

    ``path`` is a YAML file or a packaged config name (:func:`resolve_config`), e.g.
    ``"table4/converse_dncnn"``. ``overrides`` is a list of ``"key=value"`` strings or an
    already nested mapping.

    >>> load_config("table4/converse_dncnn", ["preset=cpu"]).data.batch_size
    4
    """
    path = resolve_config(path)
    raw = _read_yaml_chain(path)
    if overrides is None:
        ov: Dict[str, Any] = {}
    elif isinstance(overrides, Mapping):
        ov = dict(overrides)
    else:
        ov = parse_overrides(list(overrides))
    if "name" not in raw and "name" not in ov:
        raw["name"] = Path(path).stem
    return config_from_dict(raw, ov)


def config_to_dict(cfg: Config) -> Dict[str, Any]:
    """Plain nested dict (YAML/JSON serialisable) of a validated config."""
    return dataclasses.asdict(cfg)
