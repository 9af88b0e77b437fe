"""The one way the package reads a ``torch.save`` file: ``torch.load(weights_only=True)``.

A ``.pth`` file is a pickle. Unpickling with weights-only mode switched off imports and calls
whatever the file names (``os.system`` included), so a file from anywhere could run code.
With ``weights_only=True`` torch's restricted unpickler builds only tensors, plain
containers (dict, list, tuple, ``collections.OrderedDict``/``Counter``), numbers, strings,
``None`` and the few torch types it allowlists; a file naming anything else is refused
before anything is imported. Every file the package loads goes through :func:`load_torch_file`,
which also turns torch's multi-line explanations (which suggest weights-only mode switched off)
into one line that names the file and the problem.

Example:
    >>> import io, os, tempfile, torch
    >>> p = os.path.join(tempfile.mkdtemp(), "w.pth")
    >>> torch.save({"w": torch.ones(2)}, p)
    >>> load_torch_file(p, "weights")["w"].tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from typing import Any, Iterable, Union

import torch

__all__ = ["UnsafeFileError", "load_torch_file", "load_safetensors_file"]


class UnsafeFileError(ValueError):
    """A file could not be loaded as tensors and plain data (corrupt, foreign, or asking to run code)."""


_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")
_OPERAND = re.compile(r"Unsupported operand\s+(\d+)")


def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(2)
    except OSError:
        return b""


def _why(e: BaseException, path: str) -> str:
    """One line explaining a failed weights-only load, without torch's advice to disable it."""
    text = str(e)
    head = _head(path)
    if head and head != b"PK" and head[:1] != b"\x80":  # neither torch's zip format nor a pickle
        return "not a torch.save file (corrupt or another format)"
    m = _GLOBAL.search(text)
    if m:
        return (f"it names the Python object {m.group(1)}, which loading would have to import and call; "
                f"conversenet loads only tensors and plain data from files, so it was not loaded "
                f"(the file may be malicious, or written by another program)")
    m = _OPERAND.search(text)
    if m:
        return (f"it is a pickle using instruction {m.group(1)}, which only full (code-running) unpickling "
                f"supports; conversenet loads only files written by torch.save holding tensors and plain data")
    if isinstance(e, EOFError):
        return "the file is empty or truncated"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
    first = lines[0] if lines else ""
    first = first.split(". This is an internal miniz error")[0]  # torch's long zip explanation
    return f"not a readable torch.save file (corrupt or another format): {type(e).__name__}: {first}".rstrip(": ")


def load_torch_file(path: Union[str, os.PathLike], what: str = "file", extra_safe: Iterable[Any] = ()) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one-line errors.

    Args:
        path: the file.
        what: how the error message calls it (``"weights"``, ``"checkpoint"`` ...).
        extra_safe: additional globals the restricted unpickler may build (passed to
            :func:`torch.serialization.safe_globals`; only data types, never callables
            with side effects).

    Returns:
        The loaded object (tensors on the CPU).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeFileError: anything else (named file, one line); never suggests
            weights-only mode switched off.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"{what} not found: {p}")
    if os.path.isdir(p):
        raise UnsafeFileError(f"{what} {p} is a folder, not a file")
    extra = list(extra_safe)
    ctx = torch.serialization.safe_globals(extra) if extra else contextlib.nullcontext()
    try:
        with ctx, warnings.catch_warnings():
            # torch warns about pickle protocols it did not write; the error below says enough
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(p, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except OSError as e:  # permission denied, I/O error (zip errors are RuntimeErrors)
        raise UnsafeFileError(f"cannot read {what} {p}: {e.strerror or e}") from None
    except Exception as e:  # unpickling, zip and key errors: many types, all mean "not loadable"
        raise UnsafeFileError(f"cannot load {what} {p}: {_why(e, p)}") from None


def load_safetensors_file(path: Union[str, os.PathLike], what: str = "weights") -> Any:
    """A ``.safetensors`` file (a JSON header plus raw tensor bytes: no pickle at all) as a
    ``{name: tensor}`` dict on the CPU; one-line errors like :func:`load_torch_file`."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"{what} not found: {p}")
    try:
        from safetensors.torch import load_file
    except ImportError:  # pragma: no cover - a core dependency
        raise UnsafeFileError(f"cannot load {what} {p}: the safetensors package is not installed "
                              f"(pip install safetensors)") from None
    try:
        return load_file(p, device="cpu")
    except MemoryError:
        raise
    except Exception as e:  # SafetensorError, OSError ...
        msg = " ".join(str(e).split()) or type(e).__name__
        raise UnsafeFileError(f"cannot load {what} {p}: not a readable .safetensors file ({msg})") from None
