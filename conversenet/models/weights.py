"""Weight sets: one record per set of released or shipped weights, and finding their files.

A :class:`WeightSet` holds every fact about one set of weights: its name, its file and
SHA-256, where it comes from (``url`` for the authors' releases, the package's own
``conversenet/weights`` folder otherwise), the network it is for (a registry architecture
plus constructor arguments), the task and noise level / scale it was trained for, the
scores measured with it and the command that measured them, source and licence, and an
optional model card. Records are registered beside their networks (``denoise.py``,
``sr.py``, ``deblur.py``) with :func:`register_weights`; each one is also a name of
:func:`conversenet.models.create` (the architecture with the record's arguments).

Files of a record are looked up (:func:`locate`) in this order; the authors' files
(``origin="authors"``):

1. an explicit location (``path=``: the file itself or a folder holding it);
2. the folder named by the environment variable ``CONVERSENET_WEIGHTS_DIR`` (when it is
   not set: ``../shared/weights/official`` beside a development checkout);
3. the torch hub cache, ``torch.hub.get_dir()/checkpoints/conversenet/``;
4. otherwise it is downloaded from its ``url`` into that cache (written to a temporary
   file, verified, then renamed).

The package's own files (``origin="package"``) are read from ``conversenet/weights/``.
Every file of a record is checked against its SHA-256 before it is loaded. Loading is
``torch.load(weights_only=True)`` followed by ``load_state_dict(strict=True)``; key or shape
mismatches are reported as a :class:`WeightsError` naming the model and the keys.

Example:
    >>> from conversenet.models.weights import get_weights
    >>> ws = get_weights("converse_dncnn_official")
    >>> ws.model, dict(ws.args), ws.task, ws.sigma, ws.file
    ('converse_dncnn', {'kernel_size': 7, 'padding': 6}, 'denoise', 25.0, 'converse_dncnn.pth')
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from .._atomic import signals_held

__all__ = [
    "WeightsError",
    "ChecksumError",
    "Score",
    "WeightSet",
    "Location",
    "register_weights",
    "unregister_weights",
    "get_weights",
    "list_weights",
    "weights_for",
    "match_file",
    "locate",
    "find_file",
    "OFFICIAL_SHA256",
    "OFFICIAL_URL",
    "ENV_VAR",
    "hub_cache_dir",
    "sha256_file",
    "find_official",
    "official_file_of",
    "read_state_dict",
    "load_into",
]

ENV_VAR = "CONVERSENET_WEIGHTS_DIR"
#: Where the authors publish their checkpoints (folder ``model_zoo`` of their repository).
OFFICIAL_URL = "https://github.com/cszn/ConverseNet/raw/main/model_zoo/"
#: Origins of a weight set: the paper's authors (downloadable) or this package (shipped).
ORIGINS = ("authors", "package")

PathLike = Union[str, os.PathLike]


class WeightsError(RuntimeError):
    """A checkpoint could not be found, downloaded, verified or loaded."""


class ChecksumError(WeightsError):
    """A weights file is present but its SHA-256 is not the recorded one (corrupt or tampered)."""


@dataclass(frozen=True)
class Score:
    """One measured result of a weight set.

    Attributes:
        dataset: what it was measured on (e.g. ``"set12"``, ``"bsd100 kernel_1"``).
        metrics: e.g. ``{"psnr": 30.70, "ssim": 0.8683}`` (dB; Y channel for SR).
        command: the command that measured it.
    """

    dataset: str
    metrics: Mapping[str, float]
    command: str


@dataclass(frozen=True)
class WeightSet:
    """Everything about one set of weights (see the module docstring).

    Attributes:
        name: the weight set's name, also a :func:`~conversenet.models.create` name.
        model: the registry architecture (e.g. ``"converse_dncnn"``).
        args: constructor arguments on top of the architecture's defaults.
        task: "denoise", "sr" or "deblur".
        file: file name (``<name>.pth`` style) in the cache / package folder.
        sha256: the file's SHA-256.
        origin: "authors" (downloadable from ``url``) or "package" (in ``conversenet/weights``).
        url: download address (authors' files), else None.
        channels: image channels (1 grey, 3 colour).
        sigma: noise level (0..255) the weights were trained for (denoising), else None.
        scale: upscaling factor (SR), else 1.
        takes_kernel: the network is given the blur kernel (non-blind deblurring).
        scores: measured results, each with the command that measured it.
        source: who made the weights and how.
        licence: the licence the file comes under.
        card: a markdown model card, its path relative to the folder holding the
            ``conversenet`` package (``conversenet/weights/<name>.md`` for the package's own
            sets, so that it ships in the wheel beside the file), if any.
    """

    name: str
    model: str
    task: str
    file: str
    sha256: str
    origin: str
    args: Mapping[str, Any] = field(default_factory=dict)
    url: Optional[str] = None
    channels: int = 3
    sigma: Optional[float] = None
    scale: int = 1
    takes_kernel: bool = False
    scores: Tuple[Score, ...] = ()
    source: str = ""
    licence: str = ""
    card: Optional[str] = None

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise ValueError(f"WeightSet {self.name}: origin must be one of {ORIGINS}, got {self.origin!r}")
        if self.origin == "authors" and not self.url:
            raise ValueError(f"WeightSet {self.name}: the authors' weights need a url")
        if len(self.sha256) != 64:
            raise ValueError(f"WeightSet {self.name}: sha256 must be 64 hex digits")

    def card_path(self) -> Optional[Path]:
        """Where the model card is in this install or checkout (``card`` is relative to the
        folder holding the ``conversenet`` package), or None without a card."""
        if not self.card:
            return None
        return Path(__file__).resolve().parents[2] / self.card

    def describe(self) -> str:
        """One line: name, who made it, what it is for."""
        args = ", ".join(f"{k}={v}" for k, v in self.args.items())
        arch = f"{self.model}({args})" if args else self.model
        who = "authors' release" if self.origin == "authors" else "shipped with the package"
        what = {"denoise": f"denoise sigma={self.sigma:g}" if self.sigma is not None else "denoise, blind (any sigma)",
                "sr": f"sr x{self.scale}", "deblur": "deblur, non-blind" if self.takes_kernel else "deblur, blind"}
        chans = {1: "grey", 3: "colour"}.get(self.channels, f"{self.channels} channels")
        return f"{self.name}: {arch}, {what[self.task]}, {chans}, {who} {self.file}"


_WEIGHTS: Dict[str, WeightSet] = {}
#: (add, remove) set by the model registry once it is built, so that a record registered
#: later (a test, a plugin) becomes a ``create`` name as well
_registry_hooks = None


def register_weights(ws: WeightSet) -> WeightSet:
    """Adds a record (names are unique; a second record with the same name or file is refused).

    Adding a weight set is one call beside its network, e.g.::

        register_weights(WeightSet(name="dncnn_color", model="dncnn", args={"in_channels": 3},
                                   task="denoise", channels=3, sigma=25.0, file="dncnn_color.pth",
                                   origin="package", sha256="...", card="docs/cards/dncnn_color.md"))
    """
    if not isinstance(ws, WeightSet):
        raise TypeError(f"register_weights: expected a WeightSet, got {type(ws).__name__}")
    if ws.name in _WEIGHTS:
        raise ValueError(f"register_weights: {ws.name!r} is already registered")
    if any(o.file == ws.file and o.origin == ws.origin for o in _WEIGHTS.values()):
        raise ValueError(f"register_weights: another weight set already uses the file {ws.file!r}")
    _WEIGHTS[ws.name] = ws
    if _registry_hooks is not None:
        try:
            _registry_hooks[0](ws)
        except ValueError:
            del _WEIGHTS[ws.name]
            raise
    return ws


def unregister_weights(name: str) -> None:
    """Removes a record added with :func:`register_weights` (and its ``create`` name)."""
    ws = _WEIGHTS.pop(name)
    if _registry_hooks is not None:
        _registry_hooks[1](ws)


def list_weights(task: Optional[str] = None, origin: Optional[str] = None) -> List[WeightSet]:
    """The registered weight sets (sorted by name), optionally of one task / origin."""
    return [w for _, w in sorted(_WEIGHTS.items())
            if (task is None or w.task == task) and (origin is None or w.origin == origin)]


def get_weights(name: str) -> WeightSet:
    """The record called ``name``.

    Raises:
        WeightsError: no such record (the message lists the known ones).
    """
    if not isinstance(name, str) or name not in _WEIGHTS:
        raise WeightsError(f"no weight set named {name!r}; weight sets: {', '.join(sorted(_WEIGHTS))}")
    return _WEIGHTS[name]


def weights_for(model: str, origin: Optional[str] = None) -> List[WeightSet]:
    """Records usable for registry name ``model``: the one named ``model`` itself, else those
    whose architecture is ``model`` (e.g. ``"converse_dncnn"`` -> the authors'
    ``converse_dncnn_official``), optionally only of ``origin``."""
    own = [w for w in list_weights(origin=origin) if w.name == model]
    return own or [w for w in list_weights(origin=origin) if w.model == model]


def match_file(path: PathLike) -> Optional[WeightSet]:
    """The record whose SHA-256 the file at ``path`` has (whatever it is called), else None."""
    digest = sha256_file(path)
    return next((w for w in _WEIGHTS.values() if w.sha256 == digest), None)


class _Sha256View(Mapping):
    """``{file: sha256}`` of the authors' records (a live view, kept for existing code)."""

    def _d(self) -> Dict[str, str]:
        return {w.file: w.sha256 for w in list_weights(origin="authors")}

    def __getitem__(self, k):
        return self._d()[k]

    def __iter__(self):
        return iter(self._d())

    def __len__(self):
        return len(self._d())


#: SHA-256 of the files published by the authors, by file name (derived from the records).
OFFICIAL_SHA256: Mapping[str, str] = _Sha256View()


def hub_cache_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints/conversenet`` (not created here)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / "conversenet"


def sha256_file(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _how_to_provide(ws: WeightSet) -> str:
    if ws.origin == "package":
        return (f"{ws.file} ships inside the package (conversenet/weights/); reinstall conversenet "
                f"or pass a weights file explicitly")
    return (
        f"Provide {ws.file} in one of these ways: pass its path explicitly "
        f"(create({ws.name!r}, pretrained='official', weights_path=...)); put it in the folder named by "
        f"${ENV_VAR}; or place it in the torch hub cache {hub_cache_dir()} "
        f"(it is downloaded there from {ws.url} when online)."
    )


def _verify(path: Path, ws: WeightSet, where: str) -> Path:
    actual = sha256_file(path)
    if actual != ws.sha256:
        raise ChecksumError(
            f"SHA-256 mismatch for {ws.file} at {path} ({where}): expected {ws.sha256}, got {actual}. "
            f"The file is corrupt or not the one of weight set {ws.name}; remove or replace it. "
            + _how_to_provide(ws)
        )
    return path


def official_file_of(path: PathLike) -> Optional[str]:
    """The authors' file name (e.g. ``"converse_dncnn.pth"``) whose SHA-256 ``path`` has, else
    ``None`` (see :func:`match_file` for the record itself)."""
    ws = match_file(path)
    return ws.file if ws is not None and ws.origin == "authors" else None


def _fetch(url: str, dst: Path, progress: bool = False) -> None:
    """Downloads ``url`` into ``dst``, a file already created by mkstemp (raises on any
    network error). Opened without following links: a symlink swapped in under that name
    is refused, never written through."""
    flags = os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    with urllib.request.urlopen(url, timeout=60) as r, os.fdopen(os.open(dst, flags), "wb") as f:
        while True:
            chunk = r.read(1 << 20)
            if not chunk:
                break
            f.write(chunk)


def _download(ws: WeightSet, folder: Path, progress: bool) -> Path:
    url = ws.url
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"cannot create the cache folder {folder} for {ws.file}: {e}. " + _how_to_provide(ws)) from e
    tmp_path = None
    try:
        with signals_held():  # Ctrl-C is handled once the name is known to the clean-up below
            fd, tmp = tempfile.mkstemp(prefix=ws.file + ".", suffix=".part", dir=folder)
            os.close(fd)
            tmp_path = Path(tmp)
        try:
            _fetch(url, tmp_path, progress)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise WeightsError(
                f"{ws.file} was not found locally and downloading it from {url} failed ({e}). "
                + _how_to_provide(ws)
            ) from e
        _verify(tmp_path, ws, f"downloaded from {url}")
        final = folder / ws.file
        os.replace(tmp_path, final)
        return final
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def _package_weights():
    """The package's ``weights`` folder (may not exist)."""
    return importlib.resources.files("conversenet").joinpath("weights")


@dataclass(frozen=True)
class Location:
    """Where a weight set's file would be loaded from (:func:`locate`).

    Attributes:
        status: "found" (``path`` exists; its hash is checked when loaded), "download"
            (absent; would be downloaded to ``path``) or "missing".
        path: the file found, or where a download would go, or None.
        how: which step of the search order (e.g. ``"$CONVERSENET_WEIGHTS_DIR"``).
    """

    status: str
    path: Optional[Path]
    how: str

    def describe(self) -> str:
        if self.status == "found":
            return f"found: {self.path} ({self.how})"
        if self.status == "download":
            return f"would download to {self.path} ({self.how})"
        return f"missing ({self.how})"


def _candidates(ws: WeightSet, path: Optional[PathLike]) -> List[Tuple[Path, str]]:
    """The places searched for ``ws.file``, in order (see the module docstring)."""
    if path is not None:
        p = Path(path)
        return [(p / ws.file if p.is_dir() else p, "explicit path")]
    if ws.origin == "package":
        return [(Path(str(_package_weights())) / ws.file, "package")]
    from ..paths import default_official_weights_dir

    out = []
    d = default_official_weights_dir()
    if d is not None:
        out.append((d / ws.file, f"${ENV_VAR}" if os.environ.get(ENV_VAR) else "the checkout's ../shared/weights/official"))
    out.append((hub_cache_dir() / ws.file, "torch hub cache"))
    return out


def locate(ws: WeightSet, path: Optional[PathLike] = None, download: bool = True) -> Location:
    """Where ``ws``'s file would be loaded from, without reading or downloading it."""
    cands = _candidates(ws, path)
    for cand, how in cands:
        if cand.is_file():
            return Location("found", cand, how)
    if path is None and ws.url and download:
        return Location("download", hub_cache_dir() / ws.file, f"from {ws.url}")
    return Location("missing", None, "looked in: " + ", ".join(f"{h} {c}" for c, h in cands))


def find_file(ws: WeightSet, path: Optional[PathLike] = None, download: bool = True,
              progress: bool = False) -> Path:
    """Locates (and if needed downloads) the file of ``ws``, verified by SHA-256.

    Args:
        ws: the record.
        path: explicit file, or folder holding ``ws.file``; searched alone when given.
        download: allow downloading (authors' files; network).

    Returns:
        Path of the verified file.

    Raises:
        WeightsError: file absent everywhere and not downloadable, or hash mismatch.
    """
    for cand, how in _candidates(ws, path):
        if cand.is_file():
            return _verify(cand, ws, how)
    if path is not None:
        raise WeightsError(f"{ws.file} not found at the explicit path {_candidates(ws, path)[0][0]}. "
                           + _how_to_provide(ws))
    if ws.url is None:
        raise WeightsError(f"no file for weight set {ws.name!r} (looked for conversenet/weights/{ws.file}). "
                           + _how_to_provide(ws))
    if not download:
        raise WeightsError(f"{ws.file} not found locally and download=False. " + _how_to_provide(ws))
    return _download(ws, hub_cache_dir(), progress)


def find_official(
    filename: str, path: Optional[PathLike] = None, download: bool = True, progress: bool = False
) -> Path:
    """:func:`find_file` for the authors' record whose file is ``filename``
    (e.g. ``"converse_dncnn.pth"``)."""
    ws = next((w for w in list_weights(origin="authors") if w.file == filename), None)
    if ws is None:
        raise ValueError(f"unknown official file {filename!r}; known: {sorted(OFFICIAL_SHA256)}")
    return find_file(ws, path, download, progress)


def read_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """``torch.load(path, weights_only=True)`` on CPU (a ``.safetensors`` file: read with
    ``safetensors``, no pickle involved); unwraps a ``{"state_dict": ...}`` or
    ``{"params": ...}`` container.

    A file that names any Python object besides tensors and plain data (a pickle that would
    run code) is refused unloaded, with a one-line :class:`WeightsError`."""
    from .._safeload import UnsafeFileError, load_safetensors_file, load_torch_file

    try:
        if str(path).lower().endswith(".safetensors"):
            obj = load_safetensors_file(path, "weights")
        else:
            obj = load_torch_file(path, "weights")
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {path}") from None
    except UnsafeFileError as e:
        raise WeightsError(str(e)) from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "params", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return dict(obj)


def _short(keys) -> str:
    """First keys plus a count per top-level module, so that long lists stay readable."""
    keys = sorted(keys)
    groups: Dict[str, int] = {}
    for k in keys:
        top = k.split(".", 1)[0]
        groups[top] = groups.get(top, 0) + 1
    more = f", ... (+{len(keys) - 6} more)" if len(keys) > 6 else ""
    by = ", ".join(f"{g}.* x{n}" for g, n in groups.items())
    return ", ".join(keys[:6]) + more + f" [by module: {by}]"


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], model_name: str, source: str) -> nn.Module:
    """``model.load_state_dict(state, strict=True)`` with a readable error on mismatch."""
    own = model.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = [f"checkpoint {source} does not fit model {model_name!r} ({type(model).__name__})"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_short(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): " + "; ".join(shapes[:5]))
        raise WeightsError("; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model
