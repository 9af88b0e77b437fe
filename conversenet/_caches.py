"""Every cache and workspace the package keeps: listed here, bounded, freed by one call.

:func:`caches` lists them (name, what it holds, its bound, entries held now);
:func:`clear_caches` (exported as ``conversenet.clear_caches()``) frees them all. Nothing
else in the package keeps state across calls: no attributes are written onto a user's
module, and no process-wide setting (thread count, malloc options, umask) is changed
without being put back (``conversenet bench`` sets the thread count for its run only).

The table names each cache by the module that owns it; a module that was never imported
holds nothing, so it is not imported here just to be cleared. A new cache must be added to
:data:`CACHES` (``tests/test_caches.py`` finds every ``functools.lru_cache`` of the package
and fails on one missing here).
"""

from __future__ import annotations

import collections
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generic, Hashable, List, Optional, TypeVar

__all__ = ["CACHES", "Cache", "caches", "clear_caches", "BoundedCache"]


@dataclass(frozen=True)
class Cache:
    """One cache: ``target`` is an attribute of ``module`` with ``cache_clear()`` and
    ``cache_info()`` (a ``functools.lru_cache``) or with ``clear()`` and ``__len__``."""

    name: str
    module: str
    target: str
    holds: str
    bound: str


CACHES = (
    Cache("converse2d-filters", "conversenet.nn.converse", "FILTER_CACHES",
          "eval-mode spectral filter of each Converse2d layer (one per layer)",
          "one per live layer, each <= Converse2d.filter_cache_bytes (16 MiB); freed with the layer"),
    Cache("block-workspace", "conversenet.nn.converse", "_WORKSPACE",
          "reused CPU buffers of the fused no-grad ConverseBlock path, per thread",
          "3 buffers per thread, sized by the largest recent call; freed with the thread"),
    Cache("dft-matrices", "conversenet.functional.converse", "_dft_matrix",
          "kernel DFT matrices by (size, taps, rows, device, dtype)", "TABLE_CACHE_SIZE entries"),
    Cache("wrap-indices", "conversenet.functional.converse", "_wrap_index",
          "column indices of the tiled spectrum by (size, period, device)", "TABLE_CACHE_SIZE entries"),
    Cache("fft-devices", "conversenet.functional.converse", "FFT_DEVICES",
          "whether torch.fft runs on a device type (probed once per type)", "one per device type"),
    Cache("split-fft-tables", "conversenet.functional._fft", "_ct_tables",
          "Cooley-Tukey DFT matrices and twiddles by (N1, N2, direction, device, dtype)",
          "TABLE_CACHE_SIZE entries"),
    Cache("fft-policy", "conversenet.functional._fft_policy", "DECISIONS",
          "CPU FFT implementation chosen per (direction, size, batch, dtype, threads, autograd)",
          "FFT_MAX_DECISIONS entries (oldest first out)"),
    Cache("upsolve-phases", "conversenet.functional._upsolve", "_phase_matrix",
          "phase matrices of the s > 1 solve by (size, offsets, rows, device, dtype)",
          "TABLE_CACHE_SIZE entries"),
    Cache("upsolve-lag-index", "conversenet.functional._upsolve", "_lag_index",
          "index maps of the small kernel correlations by (shapes, sign, device)", "TABLE_CACHE_SIZE entries"),
    Cache("export-dft-forward-w", "conversenet.functional._matrix_dft", "_fwd_w",
          "export_mode(): real DFT matrices (numpy float64)", "TABLE_CACHE_SIZE entries"),
    Cache("export-dft-forward-h", "conversenet.functional._matrix_dft", "_fwd_h",
          "export_mode(): real DFT matrices (numpy float64)", "TABLE_CACHE_SIZE entries"),
    Cache("export-dft-inverse-h", "conversenet.functional._matrix_dft", "_inv_h",
          "export_mode(): real DFT matrices (numpy float64)", "TABLE_CACHE_SIZE entries"),
    Cache("export-dft-inverse-w", "conversenet.functional._matrix_dft", "_inv_w",
          "export_mode(): real DFT matrices (numpy float64)", "TABLE_CACHE_SIZE entries"),
    Cache("export-kernel-dft", "conversenet.functional._matrix_dft", "_kernel_mats",
          "export_mode(): kernel DFT matrices (numpy float64)", "TABLE_CACHE_SIZE entries"),
    Cache("export-box-spectrum", "conversenet.functional._matrix_dft", "_box",
          "export_mode(): spectra of the s x s box (numpy float64)", "TABLE_CACHE_SIZE entries"),
    Cache("restore-models", "conversenet.restore", "_MODEL_CACHE",
          "networks loaded by conversenet.restore(...) by (task, model, weights, device, blind)",
          "RESTORE_MODEL_CACHE_SIZE entries (least recently used first out)"),
    Cache("restore-memory-estimates", "conversenet.restore", "_BPP_CACHE",
          "working memory per pixel of a network (estimate_bytes_per_pixel)",
          "one per live network (weak keys); freed with the network"),
)


def _target(c: Cache) -> Optional[Any]:
    mod = sys.modules.get(c.module)
    return None if mod is None else getattr(mod, c.target)


def _entries(obj: Any) -> int:
    if hasattr(obj, "cache_info"):
        return obj.cache_info().currsize
    return len(obj)


def caches() -> List[Dict[str, Any]]:
    """Every cache of the package: ``name``, ``module``, ``holds`` (what), ``bound`` and
    ``entries`` (held now; 0 where the owning module was never imported).

    Example:
        >>> import conversenet
        >>> names = [c["name"] for c in conversenet.caches()]
        >>> "converse2d-filters" in names and "fft-policy" in names
        True
    """
    out = []
    for c in CACHES:
        obj = _target(c)
        out.append({"name": c.name, "module": c.module, "holds": c.holds, "bound": c.bound,
                    "entries": 0 if obj is None else _entries(obj)})
    return out


def clear_caches() -> None:
    """Frees every cache and workspace of :data:`CACHES` (all threads' workspaces, every
    Converse2d layer's filter, the FFT policy's decisions, the loaded restore models).
    Everything is rebuilt on next use; results do not change.

    Example:
        >>> import conversenet
        >>> conversenet.clear_caches()
        >>> sum(c["entries"] for c in conversenet.caches() if c["name"] == "dft-matrices")
        0
    """
    for c in CACHES:
        obj = _target(c)
        if obj is None:
            continue
        if hasattr(obj, "cache_clear"):
            obj.cache_clear()
        else:
            obj.clear()


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A small thread-safe least-recently-used mapping holding at most ``maxsize`` entries
    (``maxsize`` is read at every insertion when given as a callable, so tuning constants
    can be changed at run time).

    Example:
        >>> c = BoundedCache(2)
        >>> c.put("a", 1); c.put("b", 2); c.put("c", 3)
        >>> c.get("a"), c.get("c"), len(c)
        (None, 3, 2)
    """

    def __init__(self, maxsize) -> None:
        self._maxsize: Callable[[], int] = maxsize if callable(maxsize) else (lambda: maxsize)
        self._data: "collections.OrderedDict[K, V]" = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> Optional[V]:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > max(0, self._maxsize()):
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
