"""Atomic checkpoint files and RNG-state capture.

A checkpoint is written through :func:`conversenet._atomic.atomic_open`: a temporary file
created exclusively under an unpredictable name in the same folder
(``.<final-name>.<pid>.<random>.tmp``, never ending in ``.pth``), flushed and fsynced, then
moved over the final name with :func:`os.replace`, so a reader only ever sees a complete
file, even if the writer is killed half-way, and a failed write (a full disk: one-line
:class:`~conversenet._atomic.WriteError`) leaves the previous file intact.

Example:
    >>> import tempfile, os, torch
    >>> d = tempfile.mkdtemp()
    >>> save_atomic({"w": torch.ones(2)}, os.path.join(d, "last.pth"))
    >>> torch.load(os.path.join(d, "last.pth"), weights_only=True)["w"].tolist(), sorted(os.listdir(d))
    ([1.0, 1.0], ['last.pth'])

Everything in a training checkpoint is a tensor, a plain container, a number or a string,
so it loads with ``torch.load(weights_only=True)`` (:func:`load_checkpoint` loads it only
that way): a file that would run code when unpickled is refused. The RNG states are stored
in that form too (:func:`rng_state`): python's ``random`` state as a list of ints, numpy's
legacy ``RandomState`` as ``{"bit_generator", "key" (int64 tensor), "pos", "has_gauss",
"cached_gaussian"}``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np
import torch

from .._atomic import atomic_open, fsync_dir, write_text_atomic

__all__ = ["CheckpointError", "save_atomic", "load_checkpoint", "export_weights", "plain_state_dict", "rng_state", "set_rng_state", "write_text_atomic"]


class CheckpointError(ValueError):
    """A file given as a training checkpoint is missing, corrupt, foreign or unsafe (one-line message)."""


FORMAT = "conversenet-train"
#: 1: RNG states as python/numpy objects (numpy arrays); 2: only tensors and plain data.
VERSION = 2


def save_atomic(obj: Any, path: Union[str, Path]) -> None:
    """``torch.save`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    fsync_dir(Path(path).parent)



def _numpy_array_globals():
    """What the restricted unpickler needs to rebuild a plain numpy array (version-1 checkpoints
    stored numpy's RNG key as one). Data types only: ``_reconstruct`` makes an empty array and
    its contents are unpickled under the same restrictions."""
    return [np.zeros(1).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]


# top-level entries a training checkpoint must hold, with their types
_REQUIRED = {"iteration": int, "model": dict, "optimizer": dict, "scheduler": dict, "rng": dict, "config": dict}


def load_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Load a training checkpoint on the CPU with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is unreadable, would need to run code to load, or is not a
            conversenet training checkpoint (one line naming the file).
    """
    from .._safeload import UnsafeFileError, load_torch_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = load_torch_file(path, "checkpoint", extra_safe=_numpy_array_globals())
    except UnsafeFileError as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        hint = ""
        if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            hint = " (it holds model weights only, e.g. an export; training cannot resume from it)"
        raise CheckpointError(f"{path} is not a conversenet training checkpoint{hint}")
    for key, typ in _REQUIRED.items():
        if not isinstance(ckpt.get(key), typ) or isinstance(ckpt.get(key), bool):
            raise CheckpointError(f"{path}: damaged training checkpoint: entry {key!r} is missing or not a {typ.__name__}")
    for key in ("model", "ema"):
        sd = ckpt.get(key)
        if sd is not None and not (isinstance(sd, dict) and all(isinstance(v, torch.Tensor) for v in sd.values())):
            raise CheckpointError(f"{path}: damaged training checkpoint: entry {key!r} is not a state dict of tensors")
    return ckpt


def export_weights(checkpoint: Union[str, Path], out: Union[str, Path], ema: Union[bool, None] = None,
                   dtype: torch.dtype = torch.float32) -> Dict[str, torch.Tensor]:
    """Write the model weights of a training checkpoint as a plain state dict.

    The result is what ``create(name, pretrained=PATH)``, ``conversenet eval --weights PATH``
    and the built-in weights (``conversenet/weights/<name>.pth``) read: a flat
    ``{parameter name: tensor}`` mapping, loadable with ``torch.load(weights_only=True)``
    (as the training checkpoint itself is, which also holds the optimizer and RNG states).

    Args:
        checkpoint: a ``best.pth``/``last.pth`` written by the trainer.
        out: the file to write (atomically; its folder must exist): ``.pth`` (``torch.save``)
            or ``.safetensors`` (the ``safetensors`` format: no pickle at all).
        ema: take the EMA weights (``True``), the raw model (``False``), or the EMA when the
            run kept one (``None``).
        dtype: floating tensors are cast to it (integer buffers are kept).

    Returns:
        The state dict written (tensors contiguous, on the CPU).

    Raises:
        FileNotFoundError / CheckpointError: the checkpoint is missing, unreadable or not a
        training one. ValueError: ``ema=True`` for a run without EMA.
    """
    ckpt = load_checkpoint(checkpoint)
    if ema is None:
        ema = ckpt.get("ema") is not None
    if ema and ckpt.get("ema") is None:
        raise ValueError(f"ema: {checkpoint} holds no EMA weights (the run had train.ema_decay = 0)")
    state = plain_state_dict(ckpt["ema"] if ema else ckpt["model"], dtype)
    if str(out).lower().endswith(".safetensors"):
        from safetensors.torch import save as st_save

        data = st_save(state)  # bytes: header + raw tensors, no pickle
        with atomic_open(out, "wb") as f:
            f.write(data)
        fsync_dir(Path(out).parent)
    else:
        save_atomic(state, out)
    return state


def plain_state_dict(src: Dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> Dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies; floating tensors cast to ``dtype``, integer buffers kept."""
    return {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous().clone()
            for k, v in src.items()}


def rng_state() -> Dict[str, Any]:
    """The global RNG states (python, numpy, torch CPU and CUDA) as tensors and plain data."""
    version, key, gauss = random.getstate()
    kind, np_key, pos, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(key, dtype=torch.int64),
                   "gauss_next": gauss},
        "numpy": {"bit_generator": str(kind), "key": torch.from_numpy(np.asarray(np_key, np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore :func:`rng_state` (also the version-1 form: python tuple, numpy tuple with an array)."""
    py = state["python"]
    if isinstance(py, dict):
        py = (py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"])
    random.setstate(py)
    nps = state["numpy"]
    if isinstance(nps, dict):
        key = nps["key"].numpy() if isinstance(nps["key"], torch.Tensor) else np.asarray(nps["key"])
        nps = (nps["bit_generator"], key.astype(np.uint32), nps["pos"], nps["has_gauss"], nps["cached_gaussian"])
    np.random.set_state(nps)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):  # a different number of devices: keep the current ones
            pass
