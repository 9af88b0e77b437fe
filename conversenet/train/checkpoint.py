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
    >>> torch.load(os.path.join(d, "last.pth"))["w"].tolist(), sorted(os.listdir(d))
    ([1.0, 1.0], ['last.pth'])
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np
import torch

from .._atomic import atomic_open, write_text_atomic

__all__ = ["save_atomic", "load_checkpoint", "export_weights", "plain_state_dict", "rng_state", "set_rng_state", "write_text_atomic"]


def save_atomic(obj: Any, path: Union[str, Path]) -> None:
    """``torch.save`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    _fsync_dir(Path(path).parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Load a training checkpoint on the CPU; a clear error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # corrupt or foreign file
        raise ValueError(f"checkpoint {path} could not be read: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "conversenet-train":
        raise ValueError(f"{path} is not a conversenet training checkpoint")
    return ckpt


def export_weights(checkpoint: Union[str, Path], out: Union[str, Path], ema: Union[bool, None] = None,
                   dtype: torch.dtype = torch.float32) -> Dict[str, torch.Tensor]:
    """Write the model weights of a training checkpoint as a plain state dict.

    The result is what ``create(name, pretrained=PATH)``, ``conversenet eval --weights PATH``
    and the built-in weights (``conversenet/weights/<name>.pth``) read: a flat
    ``{parameter name: tensor}`` mapping, loadable with ``torch.load(weights_only=True)``
    (a training checkpoint is not: it holds the optimizer and numpy RNG states).

    Args:
        checkpoint: a ``best.pth``/``last.pth`` written by the trainer.
        out: the ``.pth`` file to write (atomically; its folder must exist).
        ema: take the EMA weights (``True``), the raw model (``False``), or the EMA when the
            run kept one (``None``).
        dtype: floating tensors are cast to it (integer buffers are kept).

    Returns:
        The state dict written (tensors contiguous, on the CPU).

    Raises:
        FileNotFoundError / ValueError: the checkpoint is missing or not a training one,
        or ``ema=True`` for a run without EMA.
    """
    ckpt = load_checkpoint(checkpoint)
    if ema is None:
        ema = ckpt.get("ema") is not None
    if ema and ckpt.get("ema") is None:
        raise ValueError(f"ema: {checkpoint} holds no EMA weights (the run had train.ema_decay = 0)")
    state = plain_state_dict(ckpt["ema"] if ema else ckpt["model"], dtype)
    save_atomic(state, out)
    return state


def plain_state_dict(src: Dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> Dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies; floating tensors cast to ``dtype``, integer buffers kept."""
    return {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous().clone()
            for k, v in src.items()}


def rng_state() -> Dict[str, Any]:
    """The global RNG states (python, numpy, torch CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):  # a different number of devices: keep the current ones
            pass
