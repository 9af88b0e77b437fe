"""Which implementation runs each real 2-D FFT of the solver on a CPU: chosen by measuring.

Several implementations compute the same ``rfft2`` / ``irfft2`` (see
:mod:`conversenet.functional._fft`): ``"torch"`` (torch.fft, MKL on x86 builds), ``"axes"``
(the two axes as separate torch 1-D transforms), ``"split"`` (the transform over H by a
Cooley-Tukey split N = N1 * p, for sizes MKL runs slowly), ``"scipy"`` (pocketfft through
``scipy.fft``, when scipy is installed: the ``fast`` extra) and ``"ducc"`` (ducc0.fft, only
where the user installed ducc0; it is GPL-licensed and never a dependency); the last two
only where no autograd graph is recorded. Which one is fastest depends on the CPU vendor, the core count and the library
versions (an FFT size MKL runs fast on one Xeon is 2x slower than pocketfft on an EPYC), so
nothing is hard-coded: the first time the solver meets a (direction, plane size, batch
bucket, dtype, threads, autograd) combination on a CPU, every available implementation is
timed on a tensor of that shape (interleaved, a few calls each, about
``conversenet._tuning.FFT_BUDGET_S`` seconds in all) and the fastest is kept for the rest
of the process (at most ``FFT_MAX_DECISIONS`` of them). GPUs always use torch.fft.

Decisions are logged (``logging.getLogger("conversenet.fft")`` at DEBUG), listed by
:func:`decisions` (``conversenet bench --explain`` prints them), and can be overridden:

* ``CONVERSENET_FFT=torch|axes|split|scipy|ducc|auto`` (environment) or :func:`force` (a context
  manager) forces one implementation wherever it applies (others fall back to ``"torch"``);
* ``CONVERSENET_FFT_CACHE=1`` (or a file path) keeps decisions on disk, in
  ``$XDG_CACHE_HOME/conversenet/fft_policy.json`` by default, keyed by the CPU model, the
  thread count and the torch / MKL / scipy versions; the file is plain JSON, validated on
  load, written atomically.

``"scipy"`` and ``"ducc"`` run on their own threads, between torch operations whose OpenMP
threads by default keep spinning for a while after each operation; on a machine with few
cores (or shared) set ``OMP_WAIT_POLICY=PASSIVE`` before starting Python so that the two
pools do not compete (docs/PERFORMANCE.md, "AMD EPYC").

Whatever is chosen, the results agree to float rounding (tests/test_fft_policy.py compares
every implementation with explicit float64 DFTs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional

import torch

from .. import _caches, _tuning

__all__ = ["PATHS", "choose", "force", "forced", "decisions", "format_decisions", "clear", "snapshot", "adopt",
           "fft_library", "scipy_fft", "ducc_fft", "split_factor", "measuring_seconds"]

log = logging.getLogger("conversenet.fft")

PATHS = ("torch", "axes", "split", "scipy", "ducc")
#: the other decision :func:`choose` takes: the memory order of the 1x1 products of a
#: converse block (conversenet.nn.converse.pixel_major_faster)
LAYOUTS = ("planar", "pixel")
#: and the s = 1 filter of the chunked solve: torch's ops or one fused numba pass
#: (conversenet.functional._fused)
FILTERS = ("fused",)
ENV = "CONVERSENET_FFT"
CACHE_ENV = "CONVERSENET_FFT_CACHE"

_lock = threading.RLock()
_decisions: Dict[str, dict] = {}
_forced: List[Optional[str]] = [None]
_disk_loaded = [False]
_spent = [0.0]  # seconds spent measuring in this process


def measuring_seconds() -> float:
    """Seconds this process has spent timing candidates (benchmarks subtract it from
    single cold calls, which would otherwise include a one-time cost)."""
    return _spent[0]


def scipy_fft():
    """``scipy.fft`` if importable (the optional ``fast`` extra), else None."""
    try:
        import scipy.fft as sfft
    except ImportError:  # pragma: no cover - depends on the installation
        return None
    return sfft


def ducc_fft():
    """``ducc0.fft`` if importable, else None. ducc0 (pocketfft's successor, GPL-2.0-or-later)
    is never a dependency of this package: it is used only where the user installed it."""
    try:
        import ducc0
    except ImportError:
        return None
    return ducc0.fft


def _mkl_version() -> Optional[str]:
    if not torch.backends.mkl.is_available():
        return None
    m = re.search(r"Math Kernel Library Version ([0-9.]+)", torch.__config__.show())
    return m.group(1) if m else "unknown version"


def fft_library() -> Dict[str, str]:
    """The CPU FFT libraries at hand and their versions (for bench headers and cache keys)."""
    mkl = _mkl_version()
    out = {"torch.fft": f"MKL {mkl}" if mkl else "pocketfft (torch built without MKL)"}
    sfft = scipy_fft()
    if sfft is not None:
        import scipy

        out["scipy.fft"] = f"pocketfft (scipy {scipy.__version__})"
    else:
        out["scipy.fft"] = "not installed (pip install 'conversenet[fast]')"
    if ducc_fft() is not None:
        import ducc0

        out["ducc0.fft"] = f"ducc0 {ducc0.__version__}"
    else:
        out["ducc0.fft"] = "not installed (optional; GPL)"
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def forced() -> Optional[str]:
    """The implementation forced by :func:`force` or ``CONVERSENET_FFT`` (None: measure)."""
    if _forced[-1] is not None:
        return _forced[-1]
    env = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if env == "auto":
        return None
    if env not in PATHS:
        raise ValueError(f"{ENV} must be one of {PATHS + ('auto',)}, got {env!r}")
    return env


@contextlib.contextmanager
def force(path: Optional[str]) -> Iterator[None]:
    """Within the context every CPU FFT of the solver uses ``path`` where it applies
    (``None`` or ``"auto"``: measure). For tests and reproducible timings.

    Example:
        >>> with force("torch"):
        ...     forced()
        'torch'
    """
    if path == "auto":
        path = None
    if path is not None and path not in PATHS:
        raise ValueError(f"path must be one of {PATHS + ('auto',)}, got {path!r}")
    _forced.append(path)
    try:
        yield
    finally:
        _forced.pop()


def _bucket(planes: int) -> int:
    """Batch bucket: the next power of two (timings per plane vary little within one)."""
    return 1 << max(0, math.ceil(math.log2(max(1, planes))))


def _key(op: str, h: int, w: int, planes: int, dtype: torch.dtype, grad: bool, exact: bool = False) -> str:
    batch = f"n{planes}" if exact else f"b{_bucket(planes)}"
    return f"{op}|{h}x{w}|{batch}|{str(dtype).replace('torch.', '')}|t{torch.get_num_threads()}|g{int(grad)}"


Runner = Callable[[], object]


def choose(op: str, h: int, w: int, planes: int, dtype: torch.dtype, grad: bool,
           candidates: Dict[str, Callable[[int], Runner]], exact: bool = False) -> str:
    """The implementation for one CPU transform (or, with ``op="mm1x1"``, the memory order
    of a block's 1x1 products: ``h``, ``w`` = input and output channels, ``planes`` = pixels;
    with ``op="s1_filter"``, torch's ops or the fused pass for the s = 1 filter).

    Args:
        op: ``"rfft2"``, ``"irfft2"``, ``"irfft2_rows"``, ``"rfft2_cl"``, ``"irfft2_cl"``, ``"mm1x1"``
            or ``"s1_filter"``.
        h, w: real plane size (the output size for ``irfft2``).
        planes: number of planes in the call (bucketed to a power of two unless ``exact``).
        dtype: real dtype of the plane.
        grad: whether an autograd graph is being recorded (the candidates are then only
            differentiable ones; the caller filters them).
        candidates: name -> ``make(planes)`` returning a no-argument runner on a fresh
            tensor of ``planes`` planes; only implementations that apply here.
        exact: decide and measure for exactly ``planes`` planes, not for their bucket: for
            candidates whose time per plane jumps inside a bucket (torch's elementwise ops go
            multi-threaded above 32768 elements: 3 planes of 132 x 67 run on one thread, 4 on
            two, and the latter took 5x as long here).
    """
    f = forced()
    if f is not None:
        return f if f in candidates else "torch"
    if len(candidates) == 1:
        return next(iter(candidates))
    key = _key(op, h, w, planes, dtype, grad, exact)
    with _lock:
        _load_disk()
        d = _decisions.get(key)
        if d is not None and d["path"] in candidates:
            return d["path"]
        t0 = time.perf_counter()
        times = _measure(candidates, planes if exact else _bucket(planes), h * w)
        _spent[0] += time.perf_counter() - t0
        path = min(times, key=times.get)
        _remember(key, {"path": path, "ms": {k: round(v * 1e3, 3) for k, v in times.items()}})
        log.debug("fft %s: %s (%s)", key, path,
                  ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in sorted(times.items(), key=lambda kv: kv[1])))
        _save_disk()
        return path


def _measure(candidates: Dict[str, Callable[[int], Runner]], planes: int, plane: int) -> Dict[str, float]:
    """Best time per call of each candidate on ``planes`` planes (a bucket's top, or the exact
    count; at most ``FFT_MEASURE_ELEMS`` elements), interleaved (round robin) so that a noisy
    neighbour hurts all alike; at least ``FFT_MIN_REPS`` rounds (one when ``FFT_BUDGET_S``
    is 0), then more until ``FFT_MAX_REPS`` rounds or ``FFT_BUDGET_S`` seconds (all in
    :mod:`conversenet._tuning`)."""
    t = _tuning
    n = max(1, min(planes, t.FFT_MEASURE_ELEMS // max(1, plane)))
    with torch.no_grad():
        runners = {name: make(n) for name, make in candidates.items()}
        for run in runners.values():  # warm-up: plans, tables, thread pools
            run()
        best = {name: math.inf for name in runners}
        t_start = time.perf_counter()
        for rnd in range(t.FFT_MAX_REPS):
            for name, run in runners.items():
                t0 = time.perf_counter()
                run()
                best[name] = min(best[name], time.perf_counter() - t0)
            if ((rnd + 1 >= t.FFT_MIN_REPS or t.FFT_BUDGET_S <= 0)
                    and time.perf_counter() - t_start > t.FFT_BUDGET_S):
                break
    return best


def decisions() -> List[dict]:
    """Decisions made so far in this process (and loaded from disk): key fields, the
    chosen implementation and the measured milliseconds per call of each candidate."""
    with _lock:
        out = []
        for key, d in sorted(_decisions.items()):
            op, size, bucket, dtype, threads, grad = key.split("|")
            out.append({"op": op, "size": size, "batch": bucket[1:], "exact": bucket[0] == "n", "dtype": dtype,
                        "threads": threads[1:], "autograd": grad == "g1", "path": d["path"],
                        "ms": dict(d["ms"])})
        return out


def format_decisions() -> str:
    """Human-readable :func:`decisions` (one line each), with the libraries and the override."""
    lib = fft_library()
    lines = ["FFT policy (conversenet.functional._fft_policy): "
             + "; ".join(f"{k}: {v}" for k, v in lib.items())
             + f"; {ENV}={os.environ.get(ENV, 'auto')}"
             + f"; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"]
    rows = decisions()
    if not rows:
        lines.append("  (no CPU FFT decisions were made)")
    for d in rows:
        ms = ", ".join(f"{k} {v:.2f}" for k, v in sorted(d["ms"].items(), key=lambda kv: kv[1]))
        batch = f"batch{'=' if d['exact'] else '<='}{d['batch']}"
        lines.append(f"  {d['op']:<6} {d['size']:>9} {batch:<12} {d['dtype']:<8} "
                     f"threads {d['threads']} {'grad' if d['autograd'] else 'nograd'}: "
                     f"{d['path']:<5} (ms per call: {ms})")
    return "\n".join(lines)


def _valid(key, d) -> bool:
    """A decision entry as :func:`choose` writes it (checked before anything is taken in)."""
    return (isinstance(key, str) and key.count("|") == 5 and isinstance(d, dict)
            and d.get("path") in PATHS + LAYOUTS + FILTERS and isinstance(d.get("ms"), dict)
            and all(isinstance(k, str) and isinstance(v, (int, float)) for k, v in d["ms"].items()))


def _remember(key: str, d: dict) -> None:
    """Stores one decision; beyond ``MAX_DECISIONS`` the oldest is forgotten (measured
    again if met again), so a process meeting endless sizes keeps a bounded table."""
    _decisions.pop(key, None)
    _decisions[key] = d
    while len(_decisions) > _tuning.FFT_MAX_DECISIONS:
        del _decisions[next(iter(_decisions))]


def snapshot() -> Dict[str, dict]:
    """A copy of this process's decisions (key -> ``{"path", "ms"}``), for :func:`adopt`."""
    with _lock:
        return {k: {"path": d["path"], "ms": dict(d["ms"])} for k, d in _decisions.items()}


def adopt(entries: Dict[str, dict]) -> None:
    """Takes in decisions made by another process (:func:`snapshot`); invalid entries are
    ignored. The benchmark's memory worker uses it so that its first calls do not time
    candidates again."""
    with _lock:
        for key, d in entries.items():
            if _valid(key, d):
                _remember(key, {"path": d["path"], "ms": dict(d["ms"])})


def clear() -> None:
    """Forgets every decision of this process (the disk cache is read again on next use)."""
    with _lock:
        _decisions.clear()
        _disk_loaded[0] = False


class _Decisions:
    """The decision table as :mod:`conversenet._caches` lists it (``clear()``, ``len()``)."""

    def clear(self) -> None:
        clear()

    def __len__(self) -> int:
        return len(_decisions)


DECISIONS = _Decisions()
_caches.register("fft-policy", "CPU FFT implementation chosen per (direction, size, batch, dtype, threads, autograd)",
                 "FFT_MAX_DECISIONS entries, oldest first out (conversenet._tuning)", DECISIONS)


# ---------------------------------------------------------------------------------------
# optional disk cache
# ---------------------------------------------------------------------------------------
def _cache_path() -> Optional[str]:
    v = os.environ.get(CACHE_ENV, "").strip()
    if not v or v == "0":
        return None
    if v != "1":
        return v
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "conversenet", "fft_policy.json")


def _fingerprint() -> str:
    sfft = scipy_fft()
    scipy_v = "none"
    if sfft is not None:
        import scipy

        scipy_v = scipy.__version__
    ducc_v = "none"
    if ducc_fft() is not None:
        import ducc0

        ducc_v = ducc0.__version__
    return f"{_cpu_model()}|torch {torch.__version__}|mkl {_mkl_version()}|scipy {scipy_v}|ducc0 {ducc_v}"


def _load_disk() -> None:
    if _disk_loaded[0]:
        return
    _disk_loaded[0] = True
    path = _cache_path()
    if path is None or not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        entries = data.get("machines", {}).get(_fingerprint(), {})
        for key, d in entries.items():
            if _valid(key, d) and key not in _decisions:
                _remember(key, {"path": d["path"], "ms": dict(d["ms"])})
    except (OSError, ValueError, AttributeError) as e:
        log.debug("fft policy cache %s ignored: %s", path, e)


def _save_disk() -> None:
    path = _cache_path()
    if path is None:
        return
    from .._atomic import write_text_atomic

    try:
        data: dict = {}
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
                if not isinstance(data, dict) or not isinstance(data.get("machines"), dict):
                    data = {}
            except (OSError, ValueError):
                data = {}
        data.setdefault("version", 1)
        machines = data.setdefault("machines", {})
        machines[_fingerprint()] = {k: v for k, v in _decisions.items()}
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_text_atomic(json.dumps(data, indent=1, sort_keys=True) + "\n", path)
    except OSError as e:
        log.debug("fft policy cache %s not written: %s", path, e)


def _split_factor(n: int) -> Optional[int]:
    """N1 of a Cooley-Tukey split N = N1 * p (p the largest prime factor), or None: the
    window ``2 <= N1 <= FFT_SPLIT_MAX_N1``, ``p >= FFT_SPLIT_MIN_PRIME`` (conversenet._tuning)."""
    m, best, p = n, 1, 2
    while p * p <= m:
        while m % p == 0:
            best, m = p, m // p
        p += 1
    p = max(best, m) if m > 1 else best
    n1 = n // p
    return n1 if 2 <= n1 <= _tuning.FFT_SPLIT_MAX_N1 and p >= _tuning.FFT_SPLIT_MIN_PRIME else None


def split_factor(n: int) -> Optional[int]:
    """Public alias of the split rule: N1 such that N = N1 * p with the largest prime factor
    p >= 11 and 2 <= N1 <= 8 (whether the split is *used* is measured, see :func:`choose`).

    Example:
        >>> split_factor(524), split_factor(268), split_factor(512), split_factor(131)
        (4, 4, None, None)
    """
    return _split_factor(n)


def _numpy_ok(t: torch.Tensor, lib) -> bool:
    """A numpy-based library (scipy.fft, ducc0): CPU, installed, no autograd graph being
    recorded, not while torch.compile traces, float32/float64 data."""
    if t.device.type != "cpu" or lib() is None:
        return False
    if torch.is_grad_enabled() and t.requires_grad:
        return False
    try:
        if torch.compiler.is_compiling():
            return False
    except AttributeError:  # pragma: no cover - older torch
        pass
    return t.dtype in (torch.float32, torch.float64, torch.complex64, torch.complex128)
