"""Reused CPU buffers for temporaries: one flat buffer per name and thread.

On CPUs a fresh multi-megabyte tensor costs page faults on every call (glibc hands blocks
above its mmap threshold, at most 32 MB, back to the kernel when they are freed, and the
next allocation faults each 4 KB page in again): on an AMD EPYC a 42 MB ``irfft2`` into a
new tensor took 31 ms, into a reused one 18 ms. Temporaries that never leave a function
(padded planes, spectra, the fused block's hidden features) are taken from here instead.
Users: the fused no-grad :class:`~conversenet.nn.ConverseBlock` path ("hidden", "work",
"residual", "spatial"), the channels-last solve with autograd
(:func:`~conversenet.functional.converse.s1cl_forward` / ``s1cl_backward``: "cl-pad",
"cl-spec", "cl-spec2"), the converse block's fused training pieces (:mod:`conversenet.nn._block_train`:
"bt-hidden", "bt-hidden-pre", "bt-grad-hidden", "bt-grad-narrow") and the planar no-grad
solve on CPUs (the kept rows of each channel group's inverse transform: "solve-rows"). A
name is used by one function at a time; nothing taken from here is returned to a caller or
saved for backward.

Listed in :mod:`conversenet._caches`; :func:`clear_workspace` frees this thread's buffers,
``conversenet.clear_caches()`` every thread's.
"""

from __future__ import annotations

import ctypes
import math
import sys
import threading
import weakref
from typing import Optional, Tuple

import torch

from .. import _caches, _tuning

__all__ = ["buffer", "clear_workspace", "fresh"]


class _Buffers(dict):
    """One thread's named buffers (a dict that can be referenced weakly)."""


class _Workspace(threading.local):
    """The buffers, one set per thread (threads run their own calls at the same time)."""

    # every thread's buffers by id, for clear(); an entry goes with its thread
    _all: "weakref.WeakValueDictionary[int, _Buffers]" = weakref.WeakValueDictionary()

    def __init__(self) -> None:
        self.bufs = _Buffers()
        _Workspace._all[id(self.bufs)] = self.bufs

    def get(self, name: str, shape: Tuple[int, ...], like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # one flat buffer per name, as large as the largest request so far: a network whose
        # blocks run at several sizes (Converse-SRResNet: 128, 256, 512) takes views of it
        # instead of reallocating (and page-faulting) at every change of size
        numel = math.prod(shape)
        b = self.bufs.get(name)
        if b is None or b.numel() < numel or b.dtype != dtype or b.device != like.device:
            self.bufs.pop(name, None)  # the old one goes before the new one is allocated
            b = self.bufs[name] = fresh((numel,), dtype, like.device)
        return b[:numel].view(shape)

    def clear(self) -> None:
        for bufs in list(_Workspace._all.values()):
            bufs.clear()

    def __len__(self) -> int:
        return sum(len(bufs) for bufs in list(_Workspace._all.values()))


_WORKSPACE = _Workspace()
_caches.register("workspace", "reused CPU buffers for temporaries (fused no-grad ConverseBlock, channels-last "
                 "Converse2d with autograd, fused converse-block training, planar no-grad solve)",
                 "one buffer per name per thread, each as large as the largest call so far; "
                 "freed with the thread", _WORKSPACE)


def clear_workspace() -> None:
    """Frees this thread's workspace buffers (``conversenet.clear_caches()`` frees every
    thread's and every other cache)."""
    _WORKSPACE.bufs.clear()


def buffer(name: str, shape: Tuple[int, ...], like: torch.Tensor, dtype: torch.dtype = None) -> torch.Tensor:
    """A contiguous tensor of ``shape`` (dtype: ``like``'s unless given) on ``like``'s device,
    contents undefined: this thread's buffer ``name`` on CPUs for tensors of at least
    ``conversenet._tuning.WORKSPACE_MIN_ELEMS`` elements, a fresh tensor otherwise (smaller
    ones gain nothing measurable; GPU allocators cache blocks already)."""
    dtype = like.dtype if dtype is None else dtype
    if like.device.type != "cpu" or math.prod(shape) < _tuning.WORKSPACE_MIN_ELEMS:
        return torch.empty(shape, dtype=dtype, device=like.device)
    return _WORKSPACE.get(name, shape, like, dtype)


# --- fresh tensors on huge pages ---------------------------------------------------------------
_HUGE = 2 << 20          # the x86-64 / arm64 transparent huge page size
_MADV_HUGEPAGE = 14      # <sys/mman.h>
_madvise: Optional[object] = None if sys.platform.startswith("linux") else False


def _libc_madvise():
    global _madvise
    if _madvise is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).madvise
            fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
            _madvise = fn
        except (OSError, AttributeError):
            _madvise = False
    return _madvise


def fresh(shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype, device=device)`` for a tensor that is kept or returned
    (so it cannot come from the workspace). On Linux CPUs a tensor of at least
    ``conversenet._tuning.HUGEPAGE_MIN_BYTES`` is advised to the kernel as transparent huge
    pages (``madvise(MADV_HUGEPAGE)``) before anything touches it: it then faults in 2 MB at
    a time instead of 4 KB (a fresh 33.5 MB tensor: 16 faults instead of 8192; filling it
    took 2.4 ms instead of 10 ms on an AMD EPYC virtual machine). Where the kernel's THP
    mode is "never" (or on other systems) nothing changes. numpy advises its large arrays
    the same way."""
    t = torch.empty(shape, dtype=dtype, device=device)
    nbytes = t.numel() * t.element_size()
    if t.device.type != "cpu" or nbytes < _tuning.HUGEPAGE_MIN_BYTES:
        return t
    fn = _libc_madvise()
    if fn:
        ptr = t.data_ptr()
        start, end = -(-ptr // _HUGE) * _HUGE, (ptr + nbytes) // _HUGE * _HUGE
        if end > start:
            fn(start, end - start, _MADV_HUGEPAGE)  # advice only: a refusal changes nothing
    return t
