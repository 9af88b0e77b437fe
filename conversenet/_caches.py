"""Every cache and workspace the package keeps: registered here, bounded, freed by one call.

:func:`caches` (``conversenet.caches()``) lists them (name, what it holds, its bound,
entries held now); :func:`clear_caches` (``conversenet.clear_caches()``) frees them all.
Each cache is registered by the module that defines it (:func:`register`, next to the
definition): the Converse2d filters and the block workspace (``nn/converse.py``), the
solver's DFT tables and FFT device probes (``functional/converse.py``), the split-FFT
tables (``functional/_fft.py``), the FFT policy's decisions (``functional/_fft_policy.py``),
the s > 1 solve's tables (``functional/_upsolve.py``), the export tables
(``functional/_matrix_dft.py``) and the restore model cache and memory estimates
(``restore.py``, ``inference.py``). Nothing else in the package keeps state across calls: no attributes are
written onto a user's module, and no process-wide setting (thread count, malloc options,
umask) is changed without being put back (``conversenet bench`` and the CLI set the thread
count for their run only). ``tests/test_caches.py`` finds every ``functools.lru_cache`` of
the package and fails on one not registered.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Generic, Hashable, List, Optional, Tuple, TypeVar

__all__ = ["CACHES", "Cache", "register", "caches", "clear_caches", "BoundedCache"]


@dataclass(frozen=True)
class Cache:
    """One cache: each of ``objects`` is a ``functools.lru_cache`` function (``cache_clear()``,
    ``cache_info()``) or an object with ``clear()`` and ``__len__``."""

    name: str
    holds: str
    bound: str
    objects: Tuple[Any, ...]


#: the registry, filled by :func:`register` where each cache is defined
CACHES: Dict[str, Cache] = {}
#: the bound of the small lookup tables (functools.lru_cache of TABLE_CACHE_SIZE entries)
TABLES = "TABLE_CACHE_SIZE entries each (conversenet._tuning)"


def register(name: str, holds: str, bound: str, *objects: Any) -> None:
    """Lists a cache (called once, by the module that owns it, next to its definition)."""
    CACHES[name] = Cache(name, holds, bound, tuple(objects))


def _entries(obj: Any) -> int:
    if hasattr(obj, "cache_info"):
        return obj.cache_info().currsize
    return len(obj)


def caches() -> List[Dict[str, Any]]:
    """Every cache of the package: ``name``, ``holds`` (what), ``bound`` and ``entries``
    (held now). A module registers its caches when it is imported (``conversenet`` imports
    the operator and the layers; ``conversenet.restore`` adds its two when imported).

    Example:
        >>> import conversenet
        >>> names = [c["name"] for c in conversenet.caches()]
        >>> "converse2d-filters" in names and "fft-policy" in names
        True
    """
    return [{"name": c.name, "holds": c.holds, "bound": c.bound,
             "entries": sum(_entries(obj) for obj in c.objects)} for c in CACHES.values()]


def clear_caches() -> None:
    """Frees every registered cache and workspace (all threads' workspaces, every
    Converse2d layer's filter, the FFT policy's decisions, the loaded restore models).
    Everything is rebuilt on next use; results do not change.

    Example:
        >>> import conversenet
        >>> conversenet.clear_caches()
        >>> sum(c["entries"] for c in conversenet.caches() if c["name"] == "solver-tables")
        0
    """
    for c in list(CACHES.values()):
        for obj in c.objects:
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
