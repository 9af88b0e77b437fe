"""Benchmark of Converse2D against the paper's Algorithm 1, an FFT floor and convolutions.

Everything runs side by side in one process: every implementation of a case makes its
first call, then all are warmed up and timed in turns (one call of each per round,
``repeat`` rounds), so that they run in the same process state and under the same
noise; the table shows medians, the speed-up over the
baseline (``x base`` = baseline median / median, higher is better), the peak memory and
its ratio to the baseline's, and for the Converse2D rows the ratio to the FFT floor
(``/floor`` = median / floor median, 1.0 is the floor). An implementation that raises is
shown as ``FAILED`` with its error, and the command then exits with status 1.

The baseline (:func:`baseline_converse2d`) is Algorithm 1 of the paper written plainly
(:mod:`conversenet.functional.algorithm1`, the same copy the tests use): complex FFTs of
the zero-upsampled input and of ``lam * X0``, the kernel spectrum (psf2otf) recomputed
every call, the s x s block splits and means, the division by lam; padded and cropped
like the released layer. :func:`with_operator` makes a copy of a network (sharing its
parameters) in which every :class:`~conversenet.nn.Converse2d` runs the baseline, the
floor or no operator at all (``"free"``: the network's ``bound`` row, the most that any
Converse2d speed-up could give that network), so that whole networks can be compared;
nothing in the library is patched.

The bench leaves the process as it found it: the torch thread count is set for the run
and put back after it, and glibc's malloc options are changed only in the worker
process that measures CPU memory.

Peak memory:

* CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before the call.
* CPU: measured in a worker process per row, after the row's timings (:func:`_memory_worker`;
  each implementation runs its first call once more there): the peak resident
  set size during the first call of each implementation (so one-time allocations that
  persist, such as the eval-mode filter caches, are counted), minus the resident set
  size before it. The kernel's high-water mark is reset by writing ``5`` to
  ``/proc/self/clear_refs`` and read back from ``VmHWM`` in ``/proc/self/status``; for
  that call glibc's free memory is first returned (``malloc_trim``) and its mmap
  threshold pinned to 64 KiB (``mallopt``, in the worker only), so that every tensor
  buffer is its own mapping, returned to the system when freed, and the resident set
  follows the live buffers, FFT work space included. Timed calls run in the calling
  process under glibc's own dynamic threshold (glibc raises it, up to 32 MiB, as large
  buffers are freed: the warm-up calls do that). Without Linux procfs or glibc, or with
  ``--no-memory``, the memory column is left empty.

Run ``python -m conversenet.bench --help`` (or ``conversenet bench``).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import itertools
import json
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._atomic import write_text_atomic
from .functional import _fft
from .functional._channels_last import is_channels_last as _is_channels_last
from .checks import check_int
from .functional.algorithm1 import algorithm1

__all__ = [
    "baseline_converse2d",
    "OperatorSwap",
    "with_operator",
    "ROWS",
    "Result",
    "run_bench",
    "format_table",
    "format_markdown",
    "main",
]


# --------------------------------------------------------------------------------------
# the baseline (Algorithm 1 of the paper, one copy in conversenet.functional.algorithm1)
# and the floor, run in place of Converse2d inside a copy of a network
# --------------------------------------------------------------------------------------
baseline_converse2d = algorithm1  # the public name this module has always had


class OperatorSwap(nn.Module):
    """A :class:`~conversenet.nn.Converse2d` run by another operator, with the layer's own
    parameters (shared, not copied): ``"baseline"`` (:func:`baseline_converse2d`, the paper's
    Algorithm 1) or ``"floor"`` (only the FFT work any exact implementation must do: pad,
    ``rfft2`` and ``irfft2`` at the padded output size, crop; for s > 1 the padded input is
    first enlarged by nearest interpolation; its output is not the operator's) or ``"free"``
    (no operator work at all: the identity, nearest upsampling for s > 1; a network with it
    is the most that any operator speed-up can give, since the rest of the network stays).

    Shape: as the layer, (N, C, H, W) -> (N, C, H*s, W*s).
    """

    OPERATORS = ("baseline", "floor", "free")

    def __init__(self, layer: nn.Module, operator: str) -> None:
        super().__init__()
        if operator not in self.OPERATORS:
            raise ValueError(f"operator must be one of {self.OPERATORS}, got {operator!r}")
        self.layer = layer
        self.operator = operator

    def forward(self, x: torch.Tensor, kernel: Optional[torch.Tensor] = None) -> torch.Tensor:
        m = self.layer
        s, p = m.scale, m.padding
        if self.operator != "free" and _is_channels_last(x):
            # the baseline and the floor see a contiguous input, as they did before converse
            # blocks kept their features channels-last (conversenet.nn.converse.pixel_major_faster),
            # and give back the layout they were given, as Converse2d does
            return self.forward(x.contiguous(), kernel).contiguous(memory_format=torch.channels_last)
        if self.operator == "baseline":
            weight = m.weight if kernel is None else kernel
            return baseline_converse2d(x, weight, m.lam, s, p, m.padding_mode, m.x0)
        if self.operator == "free":
            return F.interpolate(x, scale_factor=s, mode="nearest") if s > 1 else x
        xp = F.pad(x, (p,) * 4, mode=m.padding_mode) if p else x
        if s > 1:
            xp = F.interpolate(xp, scale_factor=s, mode="nearest")
        out = _round_trip(xp)
        return out[..., s * p: s * p + s * x.shape[-2], s * p: s * p + s * x.shape[-1]]

    def extra_repr(self) -> str:
        return f"operator={self.operator!r}"


def with_operator(model: nn.Module, operator: str) -> nn.Module:
    """A copy of ``model`` in which every :class:`~conversenet.nn.Converse2d` runs ``operator``
    (see :class:`OperatorSwap`); parameters and buffers are shared with ``model``, which
    itself is left untouched (nothing is patched, on the model or on the class).

    Example:
        >>> import torch
        >>> from conversenet.nn import Converse2d
        >>> layer = Converse2d(2, 3, padding=2).double().eval()
        >>> y = torch.randn(1, 2, 8, 8, dtype=torch.float64)
        >>> bool(torch.allclose(layer(y), with_operator(layer, "baseline")(y), atol=1e-6))
        True
        >>> with_operator(Converse2d(2, 3, scale=2, padding=2), "floor")(torch.randn(1, 2, 8, 8)).shape
        torch.Size([1, 2, 16, 16])
    """
    from .nn import Converse2d

    if isinstance(model, Converse2d):
        return OperatorSwap(model, operator)
    if operator not in OperatorSwap.OPERATORS:
        raise ValueError(f"operator must be one of {OperatorSwap.OPERATORS}, got {operator!r}")
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    out = copy.deepcopy(model, shared)

    def swap(mod: nn.Module) -> None:
        for name, child in list(mod.named_children()):
            if isinstance(child, Converse2d):
                setattr(mod, name, OperatorSwap(child, operator))
            else:
                swap(child)

    swap(out)
    return out


def _round_trip(z: torch.Tensor) -> torch.Tensor:
    """``irfft2(rfft2(z))`` with the library's own real FFTs (``torch.fft``, or on CPUs the
    split that sizes such as 524 = 4 * 131 take; see ``conversenet/functional/_fft.py``):
    the floor is the fastest round trip available here, not a slower one."""
    return _fft.irfft2(_fft.rfft2(z), tuple(z.shape[-2:]))


# --------------------------------------------------------------------------------------
# timing and memory
# --------------------------------------------------------------------------------------
class _PeakMemory:
    """Peak extra memory of one call (see the module docstring for the method).

    CUDA: measured in this process from the allocator's statistics. CPU: measured in a
    worker process of the bench's own (:func:`_memory_worker`), which may pin glibc's
    malloc options (they cannot be put back once set); this process keeps its settings.
    """

    _M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
    CPU_METHOD = ("peak RSS minus RSS before the first call, in a worker process (VmHWM reset "
                  "via /proc/self/clear_refs, glibc mmap threshold 64 KiB there)")

    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self.device = device
        self.method = None
        if not enabled:
            return
        if device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated minus memory allocated before the call"
        elif _procfs_ok():
            self.method = self.CPU_METHOD

    def measure(self, fn: Callable[[], object]) -> Optional[int]:
        """Runs ``fn``; returns its peak on CUDA (None on CPU: see :func:`_worker_peaks`)."""
        if self.method is None or self.device.type != "cuda":
            fn()
            return None
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        fn()
        return torch.cuda.max_memory_allocated(self.device) - base


def _procfs_ok() -> bool:
    return os.path.exists("/proc/self/clear_refs") and os.path.exists("/proc/self/status")


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{key}:\s+(\d+)\s+kB", f.read(), re.M)
    if m is None:
        raise ValueError(key)
    return int(m.group(1)) * 1024


def _memory_worker() -> int:
    """Entry point of the CPU memory worker: reads ``{"row", "dtype", "threads"}`` as JSON
    from stdin, prints ``{"peaks": [bytes or null per implementation]}``.

    For each implementation of the row (in order): build it, return glibc's free memory
    (``malloc_trim``), reset the peak resident set size (``5`` to ``/proc/self/clear_refs``),
    run the first call and report ``VmHWM`` minus the resident set size before it. glibc's
    mmap threshold is pinned to 64 KiB here (``mallopt``), so that every tensor buffer is
    its own mapping, returned to the system when freed, and the resident set follows the
    live buffers, FFT work space included. This process exits afterwards: the setting
    never reaches the caller's process.
    """
    from .functional import _fft_policy

    req = json.loads(sys.stdin.read())
    torch.set_num_threads(int(req["threads"]))
    # the FFT choices the caller measured: the first calls here run them without timing
    # candidates again (whose test tensors would otherwise count in the peaks)
    _fft_policy.adopt(req.get("fft_decisions", {}))
    libc = ctypes.CDLL("libc.so.6")
    ok = (libc.mallopt(_PeakMemory._M_MMAP_THRESHOLD, 64 * 1024) == 1
          and libc.mallopt(_PeakMemory._M_TRIM_THRESHOLD, 0) == 1)
    peaks: List[Optional[int]] = []
    impls = ROWS[req["row"]][1](_DTYPES[req["dtype"]], torch.device("cpu"))
    for impl in impls:
        try:
            fn = impl.make()
            libc.malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets the peak resident set size (VmHWM)
            base = _status("VmRSS")
            fn()
            peaks.append(max(0, _status("VmHWM") - base) if ok else None)
            del fn
        except Exception:  # the parent reports the failure from its own run
            peaks.append(None)
    print(json.dumps({"peaks": peaks}))
    return 0


def _worker_peaks(row: str, dtype: torch.dtype, threads: int, count: int) -> List[Optional[int]]:
    """CPU peak bytes of the first call of each of the row's ``count`` implementations,
    measured by :func:`_memory_worker` in a fresh process (None where it could not be)."""
    import subprocess

    from .functional import _fft_policy

    name = next(k for k, v in _DTYPES.items() if v == dtype)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = str(threads)
    code = "import sys; from conversenet.bench import _memory_worker; sys.exit(_memory_worker())"
    req = {"row": row, "dtype": name, "threads": threads, "fft_decisions": _fft_policy.snapshot()}
    try:
        done = subprocess.run([sys.executable, "-c", code], input=json.dumps(req),
                              capture_output=True, text=True, env=env)
        peaks = json.loads(done.stdout.strip().splitlines()[-1])["peaks"] if done.returncode == 0 else []
    except (OSError, ValueError, IndexError, KeyError):
        peaks = []
    return (list(peaks) + [None] * count)[:count]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Result:
    """One implementation of one case."""

    case: str
    impl: str
    kind: str  # "baseline" | "ours" | "floor" | "conv" | "bound" (free operator)
    times_s: List[float] = field(default_factory=list)
    peak_bytes: Optional[int] = None
    median_s: float = float("nan")
    speedup: Optional[float] = None  # baseline median / median
    mem_ratio: Optional[float] = None  # peak / baseline peak
    vs_floor: Optional[float] = None  # median / floor median
    cold: bool = False  # timed by the first call only: a slow case
    error: Optional[str] = None  # set when the implementation (or its whole row) failed


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _first_call(fn: Callable[[], object], device, mem: _PeakMemory, clock: str = "wall"):
    """Runs the first call of an implementation: (seconds, CUDA peak bytes or None).

    On CUDA it sees every one-time allocation that persists (e.g. filter caches), so those
    count in the peak (CPU peaks come from a worker process, see :func:`_worker_peaks`).
    Seconds the CPU FFT policy spends timing its candidates during the call (once per
    transform size and process, a one-time cost like plan creation) are not counted.
    """
    from .functional import _fft_policy

    now = CLOCKS[clock]
    spent = _fft_policy.measuring_seconds()
    t0 = now()
    peak = mem.measure(lambda: (fn(), _sync(device)))
    return max(now() - t0 - (_fft_policy.measuring_seconds() - spent), 1e-9), peak


def _round_robin(fns: Sequence[Callable[[], object]], device, warmup: int, repeat: int, budget_s: float,
                 clock: str = "wall"):
    """Times the implementations of one case in turns: ``warmup - 1`` more untimed calls of
    each (the first call was the first warm-up), then up to ``repeat`` rounds of one timed
    call of each. An implementation stops once its timed calls add up to more than
    ``budget_s`` (never fewer than one). Taking turns keeps every implementation in the same
    process state (the FFT choices that any of their first calls made, glibc's malloc
    thresholds that their large buffers moved) and lets a noisy neighbour slow all of them
    alike. Returns (times per implementation, error text or None per implementation): one
    that raises is dropped from the later rounds."""
    now = CLOCKS[clock]
    times: List[List[float]] = [[] for _ in fns]
    errors: List[Optional[str]] = [None] * len(fns)

    def call(i: int) -> None:
        try:
            fns[i]()
            _sync(device)
        except Exception as e:
            errors[i] = _error(e)

    for _ in range(warmup - 1):
        for i in range(len(fns)):
            if errors[i] is None:
                call(i)
    for _ in range(repeat):
        turn = [i for i in range(len(fns)) if errors[i] is None and (not times[i] or sum(times[i]) <= budget_s)]
        if not turn:
            break
        for i in turn:
            t0 = now()
            call(i)
            if errors[i] is None:
                times[i].append(now() - t0)
    return times, errors


# --------------------------------------------------------------------------------------
# the cases
# --------------------------------------------------------------------------------------
@dataclass
class _Impl:
    name: str
    kind: str
    make: Callable[[], Callable[[], object]]  # builds the closure (untimed)


def _module(channels, k, s, padding, mode, dtype, device, train):
    from .nn import Converse2d

    m = Converse2d(channels, k, scale=s, padding=padding, padding_mode=mode).to(device, dtype)
    with torch.no_grad():  # a trained-looking lam, not the initial 1.3e-4 (timing is the same)
        m.bias.uniform_(-2.0, 2.0)
    return m.train(train)


def _op_case(shape, k, s, padding, mode, dtype, device, train) -> List[_Impl]:
    """The implementations timed for one operator row: Algorithm 1, ours, the FFT floor and a
    depthwise convolution, on an input of ``shape`` (N, C, H, W); ``train``: forward+backward."""
    from .functional import converse2d

    n, c, h, w = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=dtype).to(device)
    hp, wp = h + 2 * padding, w + 2 * padding
    impls: List[_Impl] = []

    if not train:
        def base():
            m = _module(c, k, s, padding, mode, dtype, device, False)

            def f():
                with torch.no_grad():
                    return baseline_converse2d(x, m.weight, m.lam, s, padding, mode)
            return f

        def ours_module():
            m = _module(c, k, s, padding, mode, dtype, device, False)
            m.filter_cache_bytes = None if s * s * hp * wp * c * 8 > 2**30 else 2**30  # keep it

            def f():
                with torch.no_grad():
                    return m(x)
            return f

        def ours_functional():
            m = _module(c, k, s, padding, mode, dtype, device, False)

            def f():
                with torch.no_grad():
                    return converse2d(x, m.weight, m.lam, s, padding, mode)
            return f

        def floor():
            z = torch.randn(n, c, s * hp, s * wp, generator=g, dtype=dtype).to(device)

            def f():
                with torch.no_grad():
                    return _round_trip(z)
            return f

        def conv():
            if s == 1:
                wt = torch.randn(c, 1, k, k, dtype=dtype, device=device)
                return lambda: F.conv2d(x, wt, padding=k // 2, groups=c)
            wt = torch.randn(c, 1, k, k, dtype=dtype, device=device)
            return lambda: F.conv_transpose2d(x, wt, stride=s, groups=c)

        impls += [
            _Impl("baseline (Algorithm 1)", "baseline", base),
            _Impl("Converse2d eval, cached filter", "ours", ours_module),
            _Impl("converse2d functional", "ours", ours_functional),
            _Impl(f"floor: rfft2+irfft2 {s * hp}x{s * wp}", "floor", floor),
            _Impl("depthwise conv2d" if s == 1 else "depthwise conv_transpose2d", "conv", conv),
        ]
        return impls

    gout = torch.randn(n, c, h * s, w * s, generator=g, dtype=dtype).to(device)

    def fwd_bwd(forward, params):
        xg = x.clone().requires_grad_(True)

        def f():
            xg.grad = None
            for p in params:
                p.grad = None
            forward(xg).backward(gout)
        return f

    def base():
        m = _module(c, k, s, padding, mode, dtype, device, True)
        return fwd_bwd(lambda t: baseline_converse2d(t, m.weight, m.lam, s, padding, mode), list(m.parameters()))

    def ours_module():
        m = _module(c, k, s, padding, mode, dtype, device, True)
        return fwd_bwd(m, list(m.parameters()))

    def floor():
        z = torch.randn(n, c, s * hp, s * wp, generator=g, dtype=dtype).to(device)
        zg = torch.randn_like(z)

        def f():
            with torch.no_grad():
                a = _round_trip(z)
                b = _round_trip(zg)
            return a, b
        return f

    def conv():
        wt = torch.randn(c, 1, k, k, dtype=dtype, device=device, requires_grad=True)
        if s == 1:
            return fwd_bwd(lambda t: F.conv2d(t, wt, padding=k // 2, groups=c), [wt])
        return fwd_bwd(lambda t: F.conv_transpose2d(t, wt, stride=s, groups=c), [wt])

    return [
        _Impl("baseline (Algorithm 1) fwd+bwd", "baseline", base),
        _Impl("Converse2d train fwd+bwd", "ours", ours_module),
        _Impl(f"floor: 2x rfft2+irfft2 {s * hp}x{s * wp}", "floor", floor),
        _Impl(("depthwise conv2d" if s == 1 else "depthwise conv_transpose2d") + " fwd+bwd", "conv", conv),
    ]


def _create_model(name: str, dtype, device):
    from . import models

    m = models.create(name)
    return m.to(device, dtype)


def _model_eval_case(name, shape, dtype, device) -> List[_Impl]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g, dtype=dtype).to(device)

    def make(operator=None):
        def build():
            m = _create_model(name, dtype, device).eval()
            if operator is not None:
                m = with_operator(m, operator)

            def f():
                with torch.no_grad():
                    return m(x)
            return f
        return build

    def make_fast():
        from .nn import Converse2d

        m = _create_model(name, dtype, device).eval()
        for mod in m.modules():
            if isinstance(mod, Converse2d):
                mod.fft_size = "fast"

        def f():
            with torch.no_grad():
                return m(x)
        return f

    return [
        _Impl(f"{name}, baseline operator", "baseline", make("baseline")),
        _Impl(f"{name}, converse2d", "ours", make()),
        _Impl(f"{name}, converse2d fft_size='fast' (opt-in)", "ours", make_fast),
        _Impl(f"{name}, floor: Converse2d = pad+rfft2+irfft2+crop", "floor", make("floor")),
        _Impl(f"{name}, bound: Converse2d = identity (free operator)", "bound", make("free")),
    ]


def _model_train_case(name, shape, dtype, device) -> List[_Impl]:
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(shape, generator=g, dtype=dtype).to(device)
    noisy = clean + 0.1 * torch.randn(shape, generator=g, dtype=dtype).to(device)

    def make(operator=None):
        def build():
            m = _create_model(name, dtype, device).train()
            opt = torch.optim.Adam(m.parameters(), lr=1e-4)
            net = with_operator(m, operator) if operator else m  # same parameters

            def f():
                opt.zero_grad(set_to_none=True)
                loss = F.l1_loss(net(noisy), clean)
                loss.backward()
                opt.step()
            return f
        return build

    return [
        _Impl(f"{name} train step, baseline operator", "baseline", make("baseline")),
        _Impl(f"{name} train step, converse2d", "ours", make()),
        _Impl(f"{name} train step, bound: Converse2d = identity (free operator)", "bound", make("free")),
    ]


# row name -> (description, builder(dtype, device) -> impls)
ROWS: Dict[str, tuple] = {
    "fwd": (
        "forward, eval, 1x128x256x256, k=7, circular pad 6, s=1",
        lambda d, dev: _op_case((1, 128, 256, 256), 7, 1, 6, "circular", d, dev, False),
    ),
    "fwdbwd": (
        "forward+backward, train, 16x128x64x64, k=7, circular pad 6, s=1",
        lambda d, dev: _op_case((16, 128, 64, 64), 7, 1, 6, "circular", d, dev, True),
    ),
    "up": (
        "upsampling forward, eval, 1x64x128x128, k=2, replicate pad 2, s=2",
        lambda d, dev: _op_case((1, 64, 128, 128), 2, 2, 2, "replicate", d, dev, False),
    ),
    "dncnn256": (
        "converse_dncnn_official, 1x1x256x256, eval",
        lambda d, dev: _model_eval_case("converse_dncnn_official", (1, 1, 256, 256), d, dev),
    ),
    "dncnn512": (
        "converse_dncnn_official, 1x1x512x512, eval",
        lambda d, dev: _model_eval_case("converse_dncnn_official", (1, 1, 512, 512), d, dev),
    ),
    "srresnet": (
        "converse_srresnet_official, 1x3x128x128 -> x4, eval",
        lambda d, dev: _model_eval_case("converse_srresnet_official", (1, 3, 128, 128), d, dev),
    ),
    "dncnn_train": (
        "ConverseDnCNN, one training step (L1, Adam), 16x1x64x64",
        lambda d, dev: _model_train_case("converse_dncnn", (16, 1, 64, 64), d, dev),
    ),
}
# the shapes a public fork of the authors' code times its CUDA kernels on (1x3x128x128,
# k 3/5/7, s 1/2; module defaults: padding k-1, circular): side by side with the
# baseline there when a GPU is present; they run on CPUs too
for _k in (3, 5, 7):
    for _s in (1, 2):
        ROWS[f"fork_k{_k}_s{_s}"] = (
            f"fork shape: forward, eval, 1x3x128x128, k={_k}, circular pad {_k - 1}, s={_s}",
            lambda d, dev, _k=_k, _s=_s: _op_case((1, 3, 128, 128), _k, _s, _k - 1, "circular", d, dev, False),
        )
DEFAULT_ROWS = tuple(ROWS)
# short names accepted by --rows
ROW_ALIASES = {"train": "dncnn_train", "fork": ",".join(r for r in ROWS if r.startswith("fork_")),
               "ops": "fwd,fwdbwd,up", "networks": "dncnn256,dncnn512,srresnet,dncnn_train"}


def run_bench(
    rows: Sequence[str] = DEFAULT_ROWS,
    threads: int = 2,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    repeat: int = 5,
    warmup: int = 1,
    budget_s: float = 30.0,
    log: Optional[Callable[[str], None]] = None,
    clock: str = "wall",
    memory: bool = True,
) -> List[Result]:
    """Runs the selected rows and returns one :class:`Result` per implementation.

    A row or an implementation that raises is kept as a :class:`Result` with ``error`` set
    (``kind`` ``"failed"`` when the row could not be built at all) and printed as failed.
    ``budget_s`` caps the timed repetitions of one implementation (at least one is always
    run). ``memory=False`` skips the peak-memory column (no worker processes on CPU).

    The torch thread count is ``threads`` while it runs and the caller's again afterwards;
    no other process-wide setting is changed (CPU peak memory is measured in a worker
    process, see :func:`_worker_peaks`), and the library is not patched: the baseline and
    floor rows of networks run copies made by :func:`with_operator`.
    """
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run_rows(rows, threads, dtype, torch.device(device), repeat, warmup, budget_s, log, clock, memory)
    finally:
        torch.set_num_threads(saved_threads)


def _error(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _run_rows(rows, threads, dtype, dev, repeat, warmup, budget_s, log, clock, memory) -> List[Result]:
    mem = _PeakMemory(dev, memory)
    results: List[Result] = []
    for row in rows:
        desc, builder = ROWS[row]
        try:
            impls = builder(dtype, dev)
        except Exception as e:  # the row is reported as failed, never dropped
            results.append(Result(desc, row, "failed", error=_error(e)))
            if log:
                log(f"[FAILED] {row}: {_error(e)}")
            continue
        # every implementation's first call, then the timed calls in turns (_round_robin)
        group: List[Result] = []
        live = []  # (result, fn, first-call seconds)
        for impl in impls:
            try:
                fn = impl.make()
                first, peak = _first_call(fn, dev, mem, clock)
            except Exception as e:
                group.append(Result(desc, impl.name, impl.kind, error=_error(e)))
                if log:
                    log(f"  [FAILED] {row}: {impl.name}: {_error(e)}")
                continue
            r = Result(desc, impl.name, impl.kind, peak_bytes=peak)
            group.append(r)
            live.append((r, fn, first))
            if log:
                log(f"  {row}: {impl.name}: first call {_ms(first)} ms")
        # a first call slower than the budget: the whole case is timed by first calls
        cold = any(first > budget_s for _, _, first in live)
        if cold:
            all_times, errors = [[first] for _, _, first in live], [None] * len(live)
        else:
            all_times, errors = _round_robin([fn for _, fn, _ in live], dev, warmup, repeat, budget_s, clock)
        for (r, _, _), times, err in zip(live, all_times, errors):
            if err is not None:
                r.error, r.peak_bytes = err, None
                if log:
                    log(f"  [FAILED] {row}: {r.impl}: {err}")
                continue
            r.times_s, r.median_s, r.cold = times, statistics.median(times), cold
            if log:
                log(f"  {row}: {r.impl}: {_ms(r.median_s)} ms (n={len(times)})")
        del live
        if mem.method and dev.type == "cpu":  # after the timing: the FFT choices are made
            for r, peak in zip(group, _worker_peaks(row, dtype, threads, len(group))):
                r.peak_bytes = None if r.error is not None else peak
        if log:
            log(f"  {row}: peak MiB " + ", ".join(
                "-" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:.0f}" for r in group))
        ok = [r for r in group if r.error is None]
        base = next((r for r in ok if r.kind == "baseline"), None)
        floor = next((r for r in ok if r.kind == "floor"), None)
        for r in ok:
            if base is not None:
                r.speedup = base.median_s / r.median_s
                if r.peak_bytes is not None and base.peak_bytes:
                    r.mem_ratio = r.peak_bytes / base.peak_bytes
            if floor is not None and r.kind == "ours":
                r.vs_floor = r.median_s / floor.median_s
        results += group
    return results


# --------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------
def _cpuinfo() -> Dict[str, str]:
    """Vendor, model name and the widest x86 vector ISA from /proc/cpuinfo (empty elsewhere)."""
    out = {"vendor": "", "model": platform.processor() or platform.machine(), "isa": ""}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return out
    for key, pat in (("vendor", r"^vendor_id\s*:\s*(.+)$"), ("model", r"^model name\s*:\s*(.+)$")):
        m = re.search(pat, text, re.M)
        if m:
            out[key] = m.group(1).strip()
    m = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
    flags = set(m.group(1).split()) if m else set()
    for isa in ("avx512f", "avx2", "avx", "sse4_2", "asimd", "neon"):
        if isa in flags:
            out["isa"] = "avx512" if isa == "avx512f" else isa
            break
    return out


def machine_info(threads: int, device: str) -> Dict[str, str]:
    from .functional import _fft_policy

    cpu = _cpuinfo()
    try:
        affinity = str(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        affinity = "?"
    info = {
        "cpu": cpu["model"],
        "cpu_vendor": cpu["vendor"],
        "isa": cpu["isa"] + f" (torch CPU capability: {torch.backends.cpu.get_cpu_capability()})",
        "logical_cpus": f"{os.cpu_count()} ({affinity} usable by this process)",
        "threads": str(threads),
        "fft": "; ".join(f"{k}: {v}" for k, v in _fft_policy.fft_library().items())
               + f"; {_fft_policy.ENV}={os.environ.get(_fft_policy.ENV, 'auto')}",
        # libgomp's idle threads spin by default, which starves the FFT libraries' own
        # threads on small or shared machines (docs/PERFORMANCE.md, "AMD EPYC")
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default: spin)"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "load_average": " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "",
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _ms(seconds: float) -> str:
    """Milliseconds with at least three significant digits (GPU rows are sub-millisecond)."""
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}" if ms >= 1 else f"{ms:.3f}"


def _fmt(v, spec, suffix=""):
    return "-" if v is None else f"{v:{spec}}{suffix}"


def _cells(r: Result) -> List[str]:
    if r.error is not None:
        return [r.impl, "FAILED", "-", "-", "-", "-", f"- ({r.error})"]
    return [
        r.impl,
        _ms(r.median_s),
        str(len(r.times_s)) + ("c" if r.cold else ""),
        _fmt(r.speedup, ".2f", "x"),
        "-" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:.0f}",
        _fmt(r.mem_ratio, ".2f"),
        _fmt(r.vs_floor, ".2f"),
    ]


_HEAD = ["implementation", "median ms", "n", "x base", "peak MiB", "mem/base", "/floor"]
# n: timed calls; "1c": a slow case timed by its first (cold, memory-measuring) call only


def format_table(results: Sequence[Result]) -> str:
    """Plain-text table, one block per case."""
    lines = []
    width = max([len(r.impl) for r in results] + [len(_HEAD[0])])
    fmt = f"{{:<{width}}}  {{:>10}} {{:>3}} {{:>8}} {{:>9}} {{:>8}} {{:>7}}"
    case = None
    for r in results:
        if r.case != case:
            case = r.case
            lines += ["", case, fmt.format(*_HEAD)]
        lines.append(fmt.format(*_cells(r)))
    return "\n".join(lines[1:])


def format_markdown(results: Sequence[Result], info: Dict[str, str], method: Optional[str]) -> str:
    """Markdown report: machine, method, one table per case."""
    out = ["## Machine", ""]
    out += [f"- {k}: {v}" for k, v in info.items()]
    out += [f"- peak memory: {method or 'not available'}", ""]
    case = None
    for r in results:
        if r.case != case:
            case = r.case
            out += ["", f"### {case}", "", "| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD)]
        out.append("| " + " | ".join(_cells(r)) + " |")
    return "\n".join(out) + "\n"


def _write_atomic(path: str, text: str) -> None:
    write_text_atomic(text, path)


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--rows", "--shapes", dest="rows", default=",".join(DEFAULT_ROWS),
                   help=f"comma-separated rows to run, from {','.join(ROWS)} (default all)")
    p.add_argument("--dtype", default="float32", choices=sorted(_DTYPES))
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--repeat", type=int, default=5, help="timed repetitions per implementation")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed calls before timing (the first one also measures memory; min 1)")
    p.add_argument("--budget", type=float, default=30.0,
                   help="seconds after which an implementation stops repeating (>= 1 run)")
    p.add_argument("--clock", default="wall", choices=sorted(CLOCKS),
                   help="wall: elapsed time (default); cpu: process CPU time, steadier on a "
                        "busy machine (with --threads 1)")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the peak-memory column (on CPU it is measured in a worker process per row)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write the results as a Markdown report")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--explain", action="store_true",
                   help="print the CPU FFT implementation chosen for every transform size met, "
                        "with the measured times (also in --markdown)")


class BenchError(ValueError):
    """Bad command-line values."""


def run_from_args(args) -> int:
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    rows = [x for r in rows for x in ROW_ALIASES.get(r, r).split(",")]
    bad = [r for r in rows if r not in ROWS]
    if bad or not rows:
        raise BenchError(f"--rows: unknown row(s) {bad or rows}; choose from {','.join(ROWS)} "
                         f"or {','.join(ROW_ALIASES)}")
    for flag in ("threads", "repeat", "warmup"):
        try:
            check_int(f"--{flag}", getattr(args, flag))
        except ValueError as e:
            raise BenchError(str(e)) from None
    try:
        dev = torch.device(args.device)
    except RuntimeError as e:
        raise BenchError(f"--device: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda: CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise BenchError(f"--device must be cpu or cuda, got {args.device}")
    log = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    info = machine_info(args.threads, args.device)
    info["dtype"] = args.dtype
    info["clock"] = args.clock
    print("\n".join(f"# {k}: {v}" for k, v in info.items()), flush=True)
    memory = not getattr(args, "no_memory", False)
    results = run_bench(rows, args.threads, _DTYPES[args.dtype], args.device, args.repeat,
                        args.warmup, args.budget, log, args.clock, memory)
    info["load_average_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else ""
    method = _PeakMemory(dev, memory).method
    print(format_table(results))
    explain = None
    if args.explain:
        from .functional import _fft_policy

        explain = _fft_policy.format_decisions()
        print("\n" + explain)
    if args.json:
        from .functional import _fft_policy

        payload = {"machine": info, "memory_method": method, "results": [asdict(r) for r in results],
                   "fft_decisions": _fft_policy.decisions()}
        _write_atomic(args.json, json.dumps(payload, indent=2) + "\n")
    if args.markdown:
        text = format_markdown(results, info, method)
        if explain:
            text += "\n```\n" + explain + "\n```\n"
        _write_atomic(args.markdown, text)
    failed = [r for r in results if r.error is not None]
    if failed:
        print(f"\n{len(failed)} implementation(s) FAILED: "
              + "; ".join(f"{r.impl}: {r.error}" for r in failed), file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m conversenet.bench", description=__doc__.split("\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run_from_args(args)
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
