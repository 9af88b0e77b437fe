"""Finding, verifying and loading checkpoints.

The authors' four released files (``pretrained="official"``) are looked up in this order:

1. an explicit location (``path=``: the file itself or a folder holding it);
2. the folder named by the environment variable ``CONVERSENET_WEIGHTS_DIR``;
3. the torch hub cache, ``torch.hub.get_dir()/checkpoints/conversenet/``;
4. otherwise it is downloaded from ``https://github.com/cszn/ConverseNet`` (folder
   ``model_zoo``) into that cache (written to a temporary file, verified, then renamed).

Every official file is checked against its SHA-256 before it is loaded. Loading is
``torch.load(weights_only=True)`` followed by ``load_state_dict(strict=True)``; key or shape
mismatches are reported as a :class:`WeightsError` naming the model and the keys.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import torch
import torch.nn as nn

__all__ = [
    "WeightsError",
    "ChecksumError",
    "OFFICIAL_SHA256",
    "OFFICIAL_URL",
    "ENV_VAR",
    "hub_cache_dir",
    "sha256_file",
    "find_official",
    "official_file_of",
    "read_state_dict",
    "load_into",
    "builtin_path",
]

ENV_VAR = "CONVERSENET_WEIGHTS_DIR"
OFFICIAL_URL = "https://github.com/cszn/ConverseNet/raw/main/model_zoo/"
# SHA-256 of the files published by the authors.
OFFICIAL_SHA256: Dict[str, str] = {
    "converse_dncnn.pth": "3b86c7f6e41a014448f923bc331232e1f45e2eae350dd7f9e18440803d283e89",
    "converse_srresnet.pth": "ed75a697f1ebb9f9ad6a53b7875bb76098f23b48d87bf6f0b0dd8cde6df81d2f",
    "converse_usrnet.pth": "729529b8bc8cbda152d6b60734b01032b49c20fcb8b6da2fb33141d9c3378d82",
    "conversenet.pth": "603cbb29075178410db9ab6166b247d2ddff32f349c59a7e1763c46feca270bd",
}

PathLike = Union[str, os.PathLike]


class WeightsError(RuntimeError):
    """A checkpoint could not be found, downloaded, verified or loaded."""


class ChecksumError(WeightsError):
    """An official file is present but its SHA-256 is not the authors' (corrupt or tampered)."""


def hub_cache_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints/conversenet`` (not created here)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / "conversenet"


def sha256_file(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _how_to_provide(filename: str) -> str:
    return (
        f"Provide {filename} in one of these ways: pass its path explicitly "
        f"(create(..., pretrained='official', weights_path=...)); put it in the folder named by "
        f"${ENV_VAR}; or place it in the torch hub cache {hub_cache_dir()} "
        f"(it is downloaded there from {OFFICIAL_URL}{filename} when online)."
    )


def _verify(path: Path, filename: str, where: str) -> Path:
    expected = OFFICIAL_SHA256[filename]
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"SHA-256 mismatch for {filename} at {path} ({where}): expected {expected}, got {actual}. "
            f"The file is corrupt or not the authors' release; remove or replace it. "
            + _how_to_provide(filename)
        )
    return path


def official_file_of(path: PathLike) -> Optional[str]:
    """The official file name (e.g. ``"converse_dncnn.pth"``) whose SHA-256 ``path`` has, else ``None``.

    Recognises the authors' checkpoints by content whatever they are called.
    """
    digest = sha256_file(path)
    for filename, expected in OFFICIAL_SHA256.items():
        if digest == expected:
            return filename
    return None


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


def _download(filename: str, folder: Path, progress: bool) -> Path:
    url = OFFICIAL_URL + filename
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"cannot create the cache folder {folder} for {filename}: {e}. " + _how_to_provide(filename)) from e
    fd, tmp = tempfile.mkstemp(prefix=filename + ".", suffix=".part", dir=folder)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            _fetch(url, tmp_path, progress)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise WeightsError(
                f"{filename} was not found locally and downloading it from {url} failed ({e}). "
                + _how_to_provide(filename)
            ) from e
        _verify(tmp_path, filename, f"downloaded from {url}")
        final = folder / filename
        os.replace(tmp_path, final)
        return final
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def find_official(
    filename: str, path: Optional[PathLike] = None, download: bool = True, progress: bool = False
) -> Path:
    """Locates (and if needed downloads) an official file, verified by SHA-256.

    Args:
        filename: one of ``OFFICIAL_SHA256`` (e.g. ``"converse_dncnn.pth"``).
        path: explicit file, or folder holding ``filename``; searched first.
        download: allow step 4 (network).

    Returns:
        Path of the verified file.

    Raises:
        WeightsError: file absent everywhere and not downloadable, or hash mismatch.
    """
    if filename not in OFFICIAL_SHA256:
        raise ValueError(f"unknown official file {filename!r}; known: {sorted(OFFICIAL_SHA256)}")
    if path is not None:
        p = Path(path)
        cand = p / filename if p.is_dir() else p
        if not cand.is_file():
            raise WeightsError(f"{filename} not found at the explicit path {cand}. " + _how_to_provide(filename))
        return _verify(cand, filename, "explicit path")
    env = os.environ.get(ENV_VAR)
    if env:
        cand = Path(env) / filename
        if cand.is_file():
            return _verify(cand, filename, f"${ENV_VAR}")
    cand = hub_cache_dir() / filename
    if cand.is_file():
        return _verify(cand, filename, "torch hub cache")
    if not download:
        raise WeightsError(f"{filename} not found locally and download=False. " + _how_to_provide(filename))
    return _download(filename, hub_cache_dir(), progress)


def _package_weights():
    """The package's ``weights`` folder (a Traversable; may not exist)."""
    return importlib.resources.files("conversenet").joinpath("weights")


def builtin_path(name: str) -> Path:
    """``conversenet/weights/<name>.pth`` shipped with the package (raises if absent)."""
    folder = _package_weights()
    res = folder.joinpath(f"{name}.pth")
    if not res.is_file():
        have = sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".pth")) if folder.is_dir() else []
        raise WeightsError(
            f"no built-in weights for {name!r} (looked for conversenet/weights/{name}.pth); "
            f"built-in weights exist for: {have or 'none'}"
        )
    return Path(str(res))


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
    except FileNotFoundError as e:
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
