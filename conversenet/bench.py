"""Benchmark of Converse2D against the paper's Algorithm 1, an FFT floor and convolutions.

Everything runs side by side in one process: every implementation of a case is warmed
up, then timed ``repeat`` times; the table shows medians, the speed-up over the
baseline (``x base`` = baseline median / median, higher is better), the peak memory and
its ratio to the baseline's, and for the Converse2D rows the ratio to the FFT floor
(``/floor`` = median / floor median, 1.0 is the floor).

The baseline (:func:`baseline_converse2d`) is Algorithm 1 of the paper written plainly:
complex FFTs of the zero-upsampled input and of ``lam * X0``, the kernel spectrum
(psf2otf) recomputed every call, the s x s block splits and means, the division by lam;
padded and cropped like the released layer. :func:`baseline_operator` swaps it into
every :class:`~conversenet.nn.Converse2d` so that whole networks can be compared.

Peak memory:

* CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before the call.
* CPU: the peak resident set size of the process during the first call (which is also
  the first warm-up call, so one-time allocations that persist, such as the eval-mode
  filter caches, are counted), minus the resident set size before it. The kernel's high-water mark is reset
  by writing ``5`` to ``/proc/self/clear_refs`` and read back from ``VmHWM`` in
  ``/proc/self/status``; for that call glibc's free memory is first returned
  (``malloc_trim``) and its mmap threshold pinned to 64 KiB (``mallopt``), so that every
  tensor buffer is its own mapping, returned to the system when freed, and the resident
  set follows the live buffers, FFT work space included. Timed calls run with the
  threshold at 32 MiB, where glibc's own dynamic threshold settles. Without Linux procfs
  or glibc the memory column is left empty.

Run ``python -m conversenet.bench --help`` (or ``conversenet bench``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ._atomic import write_text_atomic
from .functional import _fft

__all__ = [
    "baseline_converse2d",
    "baseline_operator",
    "floor_operator",
    "ROWS",
    "Result",
    "run_bench",
    "format_table",
    "format_markdown",
    "main",
]


# --------------------------------------------------------------------------------------
# the baseline: Algorithm 1 of the paper, plainly
# --------------------------------------------------------------------------------------
def _p2o(psf: torch.Tensor, shape) -> torch.Tensor:
    """psf2otf: kernel zero-padded to ``shape``, centre rolled to (0, 0), full complex FFT."""
    otf = torch.zeros(psf.shape[:-2] + tuple(shape), dtype=psf.dtype, device=psf.device)
    otf[..., : psf.shape[-2], : psf.shape[-1]].copy_(psf)
    for axis, size in ((-2, psf.shape[-2]), (-1, psf.shape[-1])):
        otf = torch.roll(otf, -(size // 2), dims=axis)
    return torch.fft.fftn(otf, dim=(-2, -1))


def _splits(a: torch.Tensor, s: int) -> torch.Tensor:
    """[..., sH, sW] -> [..., H, W, s*s]: the s x s distinct blocks, stacked last."""
    b = torch.stack(torch.chunk(a, s, dim=-2), dim=-1)  # [..., H, sW, s]
    return torch.cat(torch.chunk(b, s, dim=-2), dim=-1)  # [..., H, W, s*s]


def baseline_converse2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    lam: torch.Tensor,
    scale: int = 1,
    padding: int = 0,
    padding_mode: str = "circular",
) -> torch.Tensor:
    """Converse2D as Algorithm 1 of the paper computes it (Eq. 6), the reference to beat.

    Args:
        x: (N, C, H, W) input Y.
        weight: (1 or N, C, k, k) kernel.
        lam: (1 or N, C, 1, 1) regulariser, or a float.
        scale: upsampling factor s.
        padding, padding_mode: padding applied before the solve; ``padding * s`` is
            cropped from every side of the result, as in the released layer.

    Returns:
        (N, C, H*s, W*s).

    Example:
        >>> import torch
        >>> from conversenet.functional import converse2d
        >>> y, k = torch.randn(1, 2, 12, 10, dtype=torch.float64), torch.rand(1, 2, 3, 3, dtype=torch.float64)
        >>> ref = converse2d(y, k, 0.1, scale=2, padding=2)
        >>> bool(torch.allclose(baseline_converse2d(y, k, 0.1, 2, 2), ref, atol=1e-10))
        True
    """
    s = scale
    if padding:
        x = F.pad(x, (padding,) * 4, mode=padding_mode)
    n, c, h, w = x.shape
    y_up = torch.zeros(n, c, h * s, w * s, dtype=x.dtype, device=x.device)
    y_up[..., ::s, ::s] = x  # standard s-fold upsampling: zeros in between
    x0 = F.interpolate(x, scale_factor=s, mode="nearest") if s > 1 else x
    fk = _p2o(weight.to(x.dtype), (h * s, w * s))
    fk_conj = torch.conj(fk)
    fk2 = torch.pow(torch.abs(fk), 2)
    fky = fk_conj * torch.fft.fftn(y_up, dim=(-2, -1))
    big_l = fky + torch.fft.fftn(lam * x0, dim=(-2, -1))
    fkl = fk.mul(big_l)
    fkl_s = torch.mean(_splits(fkl, s), dim=-1)
    fk2_s = torch.mean(_splits(fk2, s), dim=-1)
    fdiv = fkl_s.div(fk2_s + lam)
    fmul = fk_conj * fdiv.repeat(1, 1, s, s)
    fout = (big_l - fmul) / lam
    out = torch.real(torch.fft.ifftn(fout, dim=(-2, -1)))
    if padding:
        p = padding * s
        out = out[..., p:-p, p:-p]
    return out


@contextlib.contextmanager
def _converse_forward(forward: Callable) -> Iterator[None]:
    """Every :class:`~conversenet.nn.Converse2d` runs ``forward`` inside; restored after."""
    from .nn.converse import Converse2d

    original = Converse2d.forward
    Converse2d.forward = forward
    try:
        yield
    finally:
        Converse2d.forward = original


@contextlib.contextmanager
def baseline_operator() -> Iterator[None]:
    """Within this context every :class:`~conversenet.nn.Converse2d` runs :func:`baseline_converse2d`.

    The parameters and the module's interface are untouched (only ``x0="interp"``, the
    paper's setting, is supported by the baseline).

    Example:
        >>> import torch
        >>> from conversenet.nn import Converse2d
        >>> layer = Converse2d(2, 3, padding=2).double().eval()
        >>> y = torch.randn(1, 2, 8, 8, dtype=torch.float64)
        >>> with baseline_operator():
        ...     ref = layer(y)
        >>> bool(torch.allclose(layer(y), ref, atol=1e-6))
        True
    """
    def forward(self, x, kernel=None):
        weight = self.weight if kernel is None else kernel
        if self.x0 != "interp":
            raise ValueError("the baseline operator supports x0='interp' only")
        return baseline_converse2d(x, weight, self.lam, self.scale, self.padding, self.padding_mode)

    with _converse_forward(forward):
        yield


def _round_trip(z: torch.Tensor) -> torch.Tensor:
    """``irfft2(rfft2(z))`` with the library's own real FFTs (``torch.fft``, or on CPUs the
    split that sizes such as 524 = 4 * 131 take; see ``conversenet/functional/_fft.py``):
    the floor is the fastest round trip available here, not a slower one."""
    return _fft.irfft2(_fft.rfft2(z), tuple(z.shape[-2:]))


@contextlib.contextmanager
def floor_operator() -> Iterator[None]:
    """Within this context every :class:`~conversenet.nn.Converse2d` does only the FFT work
    any exact implementation at the same FFT size must do: pad, ``rfft2`` and ``irfft2`` of a
    tensor of the padded output size, crop (for s > 1 the padded input is first enlarged by
    nearest interpolation). Its output is not the operator's; run inside a network it gives
    the network's floor: the time left when Converse2D costs one FFT round trip.

    Example:
        >>> import torch
        >>> from conversenet.nn import Converse2d
        >>> layer = Converse2d(2, 3, scale=2, padding=2).eval()
        >>> with floor_operator():
        ...     layer(torch.randn(1, 2, 8, 8)).shape
        torch.Size([1, 2, 16, 16])
    """
    def forward(self, x, kernel=None):  # noqa: ARG001
        s, p = self.scale, self.padding
        xp = F.pad(x, (p,) * 4, mode=self.padding_mode) if p else x
        if s > 1:
            xp = F.interpolate(xp, scale_factor=s, mode="nearest")
        out = _round_trip(xp)
        return out[..., s * p: s * p + s * x.shape[-2], s * p: s * p + s * x.shape[-1]]

    with _converse_forward(forward):
        yield


# --------------------------------------------------------------------------------------
# timing and memory
# --------------------------------------------------------------------------------------
class _PeakMemory:
    """Peak extra memory of one call (see the module docstring for the method).

    On CPU the timed calls run with glibc's mmap threshold fixed at 32 MiB (the value its
    dynamic threshold settles at for large tensors), the memory call with 64 KiB after
    ``malloc_trim``; the call is repeated for memory after the timed ones.
    """

    _M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = None
        if device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated minus memory allocated before the call"
            return
        try:
            self._libc = ctypes.CDLL("libc.so.6")
            self._clear_refs()
            self._status("VmHWM")
            if self._timing_mode():
                self.method = ("peak RSS minus RSS before the call (VmHWM reset via "
                               "/proc/self/clear_refs, glibc mmap threshold 64 KiB)")
        except (OSError, AttributeError, ValueError):
            self.method = None

    def _timing_mode(self) -> bool:
        ok = self._libc.mallopt(self._M_MMAP_THRESHOLD, 32 * 2**20) == 1
        return ok and self._libc.mallopt(self._M_TRIM_THRESHOLD, 64 * 2**20) == 1

    @staticmethod
    def _clear_refs() -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set size (VmHWM)

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{key}:\s+(\d+)\s+kB", f.read(), re.M)
        if m is None:
            raise ValueError(key)
        return int(m.group(1)) * 1024

    def measure(self, fn: Callable[[], object]) -> Optional[int]:
        if self.method is None:
            return None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            fn()
            return torch.cuda.max_memory_allocated(self.device) - base
        self._libc.malloc_trim(0)
        self._libc.mallopt(self._M_MMAP_THRESHOLD, 64 * 1024)
        self._libc.mallopt(self._M_TRIM_THRESHOLD, 0)
        try:
            self._clear_refs()
            base = self._status("VmRSS")
            fn()
            return max(0, self._status("VmHWM") - base)
        finally:
            self._timing_mode()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Result:
    """One implementation of one case."""

    case: str
    impl: str
    kind: str  # "baseline" | "ours" | "floor" | "conv"
    times_s: List[float] = field(default_factory=list)
    peak_bytes: Optional[int] = None
    median_s: float = float("nan")
    speedup: Optional[float] = None  # baseline median / median
    mem_ratio: Optional[float] = None  # peak / baseline peak
    vs_floor: Optional[float] = None  # median / floor median
    cold: bool = False  # timed by the first (memory) call only: a slow case


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _measure(fn: Callable[[], object], device, warmup: int, repeat: int, budget_s: float,
             mem: _PeakMemory, clock: str = "wall", cold_only: bool = False):
    """Peak memory of the first call, then ``repeat`` timed calls after ``warmup`` calls.

    The first call is the memory call and counts as the first warm-up call; it sees every
    one-time allocation that persists (e.g. filter caches), so those count in the peak.
    When it alone takes longer than ``budget_s`` (or ``cold_only``), its time is the only
    sample (``cold``): the whole case is then timed that way, baseline and ours alike.
    Seconds the CPU FFT policy spends timing its candidates during that call (once per
    transform size and process) are not counted in it.
    """
    from .functional import _fft_policy

    now = CLOCKS[clock]
    spent = _fft_policy.measuring_seconds()
    t0 = now()
    peak = mem.measure(lambda: (fn(), _sync(device)))
    # the CPU FFT policy times its candidates once per transform size, on first use (a
    # one-time cost like plan creation): not part of a cold call's time
    first = max(now() - t0 - (_fft_policy.measuring_seconds() - spent), 1e-9)
    if cold_only or first > budget_s:
        return [first], peak, True
    for _ in range(warmup - 1):
        fn()
        _sync(device)
    times = []
    for _ in range(repeat):
        t0 = now()
        fn()
        _sync(device)
        times.append(now() - t0)
        if sum(times) > budget_s:
            break  # slow rows: fewer repetitions, never fewer than one
    return times, peak, False


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


def _op_case(name, shape, k, s, padding, mode, dtype, device, train) -> List[_Impl]:
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
    from . import models  # written by the models issue; rows are skipped without it

    m = models.create(name)
    return m.to(device, dtype)


def _model_eval_case(name, shape, dtype, device) -> List[_Impl]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g, dtype=dtype).to(device)

    def make(operator=None):
        def build():
            m = _create_model(name, dtype, device).eval()

            def f():
                ctx = operator() if operator is not None else contextlib.nullcontext()
                with ctx, torch.no_grad():
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
        _Impl(f"{name}, baseline operator", "baseline", make(baseline_operator)),
        _Impl(f"{name}, converse2d", "ours", make()),
        _Impl(f"{name}, converse2d fft_size='fast' (opt-in)", "ours", make_fast),
        _Impl(f"{name}, floor: Converse2d = pad+rfft2+irfft2+crop", "floor", make(floor_operator)),
    ]


def _model_train_case(name, shape, dtype, device) -> List[_Impl]:
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(shape, generator=g, dtype=dtype).to(device)
    noisy = clean + 0.1 * torch.randn(shape, generator=g, dtype=dtype).to(device)

    def make(baseline):
        def build():
            m = _create_model(name, dtype, device).train()
            opt = torch.optim.Adam(m.parameters(), lr=1e-4)

            def f():
                ctx = baseline_operator() if baseline else contextlib.nullcontext()
                with ctx:
                    opt.zero_grad(set_to_none=True)
                    loss = F.l1_loss(m(noisy), clean)
                    loss.backward()
                    opt.step()
            return f
        return build

    return [
        _Impl(f"{name} train step, baseline operator", "baseline", make(True)),
        _Impl(f"{name} train step, converse2d", "ours", make(False)),
    ]


# row name -> (description, builder(dtype, device) -> impls)
ROWS: Dict[str, tuple] = {
    "fwd": (
        "forward, eval, 1x128x256x256, k=7, circular pad 6, s=1",
        lambda d, dev: _op_case("fwd", (1, 128, 256, 256), 7, 1, 6, "circular", d, dev, False),
    ),
    "fwdbwd": (
        "forward+backward, train, 16x128x64x64, k=7, circular pad 6, s=1",
        lambda d, dev: _op_case("fwdbwd", (16, 128, 64, 64), 7, 1, 6, "circular", d, dev, True),
    ),
    "up": (
        "upsampling forward, eval, 1x64x128x128, k=2, replicate pad 2, s=2",
        lambda d, dev: _op_case("up", (1, 64, 128, 128), 2, 2, 2, "replicate", d, dev, False),
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
            lambda d, dev, _k=_k, _s=_s: _op_case(f"fork_k{_k}_s{_s}", (1, 3, 128, 128), _k, _s, _k - 1,
                                                  "circular", d, dev, False),
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
) -> List[Result]:
    """Runs the selected rows and returns one :class:`Result` per implementation.

    Rows whose builder fails with ImportError/AttributeError (e.g. no models package yet)
    are skipped with a message. ``budget_s`` caps the timed repetitions of one
    implementation (at least one is always run).
    """
    torch.set_num_threads(threads)
    dev = torch.device(device)
    mem = _PeakMemory(dev)
    results: List[Result] = []
    for row in rows:
        desc, builder = ROWS[row]
        try:
            impls = builder(dtype, dev)
            closures = [(impl, impl.make()) for impl in impls]
        except (ImportError, AttributeError, KeyError) as e:
            if log:
                log(f"[skip] {row}: {type(e).__name__}: {e}")
            continue
        group: List[Result] = []
        cold = False
        for impl, fn in closures:
            times, peak, cold = _measure(fn, dev, warmup, repeat, budget_s, mem, clock, cold)
            r = Result(desc, impl.name, impl.kind, times, peak, statistics.median(times), cold=cold)
            group.append(r)
            if log:
                mb = "-" if peak is None else f"{peak / 2**20:.0f} MiB"
                log(f"  {row}: {impl.name}: {_ms(r.median_s)} ms (n={len(times)}), peak {mb}")
        del closures
        base = next((r for r in group if r.kind == "baseline"), None)
        floor = next((r for r in group if r.kind == "floor"), None)
        for r in group:
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
    if args.threads < 1:
        raise BenchError(f"--threads must be >= 1, got {args.threads}")
    if args.repeat < 1 or args.warmup < 1:
        raise BenchError("--repeat and --warmup must be >= 1")
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
    results = run_bench(rows, args.threads, _DTYPES[args.dtype], args.device, args.repeat,
                        args.warmup, args.budget, log, args.clock)
    info["load_average_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else ""
    method = _PeakMemory(dev).method
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
