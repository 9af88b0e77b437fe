"""Converse2d layer, channel LayerNorm and the converse block of the paper."""

from __future__ import annotations

import weakref
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _caches, _tuning
from ..checks import check_choice, check_int, check_int_tuple, check_positive_int, check_positive_number, lam_from_bias
from ..functional import _fft_policy
from ..functional._channels_last import is_channels_last as _is_channels_last
from ..functional import converse as _fc
from ..functional import _workspace
from ..functional._workspace import clear_workspace

__all__ = ["Converse2d", "LayerNorm2d", "ConverseBlock", "KERNEL_INITS", "SPATIAL_OPS", "clear_workspace"]

KERNEL_INITS = ("gaussian_softmax", "gaussian", "uniform")
SPATIAL_OPS = ("converse", "conv", "convt")

_IntPair = Union[int, Tuple[int, int]]


class Converse2d(nn.Module):
    """Learnable depthwise reverse convolution (Converse2D).

    Parameters:
        weight: (1, C, kh, kw) kernel, Gaussian-random then softmax over its kh*kw entries
            (``kernel_init="gaussian_softmax"``, applied once at initialisation). Absent when
            ``learn_kernel=False``: the kernel is then a forward argument.
        bias: (1, C, 1, 1), zeros; ``lam = sigmoid(bias - 9) + eps``.

    Args:
        channels: C.
        kernel_size: k or (kh, kw).
        scale: upsampling factor s (output is s times larger).
        padding: padding added before solving; default ``max(kh, kw) - 1`` (4 for 5x5).
        padding_mode: circular | reflect | replicate | constant.
        eps: lower bound of lam (1e-5; the paper's x2 upsamplers use 1e-3).
        x0: ``"interp"`` or ``"zero"``.
        kernel_init: ``"gaussian_softmax"`` (paper default), ``"gaussian"`` or ``"uniform"``.
        learn_kernel: False for kernel-conditioned use, ``forward(x, kernel)``.
        fft_size: ``"exact"`` (published behaviour) or ``"fast"`` (opt-in: FFT sizes with
            prime factors <= 7, see :func:`conversenet.functional.fft_pads`).

    Shape:
        x (N, C, H, W) -> (N, C, H*s, W*s); kernel argument (1 or N, C, kh, kw).

    In eval mode without autograd the spectral filter is cached and reused until the
    weights change (tracked by their version counters), when it takes at most
    ``filter_cache_bytes`` (class attribute, 16 MiB; ``None`` disables the cache). Larger
    filters (e.g. 128 channels on a 256x256 image: 37 MB) are rebuilt at every call, one
    channel group at a time, in cache: in Converse-DnCNN at 256x256 that cost under 1 % of
    the time on an AMD EPYC, and it saves 20 x 37 MB of filters.

    Example:
        >>> import torch
        >>> from conversenet.nn import Converse2d
        >>> layer = Converse2d(8, 5, scale=2, padding=4)
        >>> layer(torch.randn(2, 8, 16, 12)).shape
        torch.Size([2, 8, 32, 24])
    """

    filter_cache_bytes: Optional[int] = _tuning.FILTER_CACHE_BYTES

    def __init__(
        self,
        channels: int,
        kernel_size: _IntPair = 5,
        scale: int = 1,
        padding: Optional[int] = None,
        padding_mode: str = "circular",
        eps: float = 1e-5,
        x0: str = "interp",
        kernel_init: str = "gaussian_softmax",
        learn_kernel: bool = True,
        fft_size: str = "exact",
    ) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        kh, kw = check_int_tuple("kernel_size", kernel_size, 2)
        self.kernel_size = (kh, kw)
        self.scale = check_int("scale", scale, 1)
        self.padding = max(kh, kw) - 1 if padding is None else check_int("padding", padding, 0)
        self.padding_mode = check_choice("padding_mode", padding_mode, _fc.PADDING_MODES)
        self.eps = check_positive_number("eps", eps)
        self.x0 = check_choice("x0", x0, _fc.X0_MODES)
        self.kernel_init = check_choice("kernel_init", kernel_init, KERNEL_INITS)
        self.learn_kernel = learn_kernel
        self.fft_size = check_choice("fft_size", fft_size, _fc.FFT_SIZES)
        if learn_kernel:
            self.weight = nn.Parameter(torch.empty(1, channels, kh, kw))
        else:
            self.register_parameter("weight", None)
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self._cache = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.bias.zero_()
            if self.weight is None:
                return
            kh, kw = self.kernel_size
            if self.kernel_init == "uniform":
                self.weight.uniform_(0, 1)
            else:
                self.weight.normal_()
                if self.kernel_init == "gaussian_softmax":
                    flat = torch.softmax(self.weight.reshape(1, self.channels, kh * kw), dim=-1)
                    self.weight.copy_(flat.reshape_as(self.weight))
        self._cache = None

    @property
    def lam(self) -> torch.Tensor:
        """(1, C, 1, 1) regulariser ``sigmoid(bias - 9) + eps``
        (:func:`conversenet.checks.lam_from_bias`; at least float32)."""
        return lam_from_bias(self.bias, self.eps)

    def _cached_filter(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        if self.training or torch.is_grad_enabled() or self.weight is None:
            return None
        if torch.compiler.is_compiling():
            return None
        h, w = x.shape[-2:]
        pads = _fc.fft_pads(h, w, self.padding, self.scale, self.padding_mode, self.fft_size)
        size = (h + pads[2] + pads[3], w + pads[0] + pads[1])
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        key = (
            size,
            x.device,
            compute,
            self.weight._version,
            self.bias._version,
            self.weight.data_ptr(),
            self.bias.data_ptr(),
        )
        # in-place edits through ``.data`` do not bump the version counter, so the cached
        # values are compared too (a few C*k*k numbers, negligible next to the FFTs)
        if (
            self._cache is not None
            and self._cache[0] == key
            and torch.equal(self._cache[2], self.weight)
            and torch.equal(self._cache[3], self.bias)
        ):
            return self._cache[1]
        nbytes = 2 * (torch.finfo(compute).bits // 8) * self.channels * self.scale**2 * size[0] * (size[1] // 2 + 1)
        if self.filter_cache_bytes is None or nbytes > self.filter_cache_bytes:
            self._cache = None  # too large to keep: rebuilt per channel group inside the solve
            return None
        g = _fc.converse_filter(
            self.weight.to(compute), self.lam.to(compute), size, self.scale, self.x0
        )
        self._cache = (key, g, self.weight.detach().clone(), self.bias.detach().clone())
        FILTER_CACHES.add(self)
        return g

    def forward(self, x: torch.Tensor, kernel: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._solve(x, kernel)

    def _solve(self, x: torch.Tensor, kernel: Optional[torch.Tensor] = None,
               out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """forward; ``out``: optional scratch tensor written in place of a fresh result where
        the no-autograd solve runs (see ``conversenet.functional.converse._converse2d``)."""
        if self.weight is None:
            if kernel is None:
                raise ValueError("this Converse2d has learn_kernel=False: pass forward(x, kernel)")
            weight = kernel
        else:
            if kernel is not None:
                raise ValueError("this Converse2d learns its kernel; do not pass kernel=")
            weight = self.weight
        filt = self._cached_filter(x) if kernel is None else None
        return _fc._converse2d(x, weight, self.lam, self.scale, self.padding, self.padding_mode, self.x0,
                               filt, self.fft_size, out)

    def _apply(self, fn, *args, **kwargs):  # moving/casting invalidates the cache
        self._cache = None
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, kernel_size={self.kernel_size}, scale={self.scale}, "
            f"padding={self.padding}, padding_mode={self.padding_mode!r}, eps={self.eps}, "
            f"x0={self.x0!r}, learn_kernel={self.learn_kernel}"
            + (f", fft_size={self.fft_size!r}" if self.fft_size != "exact" else "")
        )


class LayerNorm2d(nn.Module):
    """LayerNorm over channels at every pixel of an (N, C, H, W) tensor.

    Parameters ``weight`` and ``bias`` have shape (C,).

    Example:
        >>> import torch
        >>> from conversenet.nn import LayerNorm2d
        >>> y = LayerNorm2d(4)(torch.randn(2, 4, 3, 5))
        >>> torch.allclose(y.mean(1), torch.zeros(2, 3, 5), atol=1e-6)
        True
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # half-precision inputs (e.g. from a convolution under autocast) are normalised in
        # float32, as autocast does for its own normalisation layers, and returned in
        # their dtype
        half = x.dtype in (torch.float16, torch.bfloat16)
        xf = x.float() if half else x
        # torch's fused layer_norm over the last dim of a channels-last view: with autograd
        # about 3x faster than the same formula spelt out in elementwise ops (one pass
        # forward and backward instead of nine); the result takes the input's layout for the
        # 1x1 convolutions that follow
        out = F.layer_norm(xf.permute(0, 2, 3, 1), (xf.shape[1],), self.weight.to(xf.dtype),
                           self.bias.to(xf.dtype), self.eps).permute(0, 3, 1, 2)
        # a channels-last input stays so (the permuted result is channels-last already)
        out = out if _is_channels_last(xf) else out.contiguous()
        return out.to(x.dtype) if half else out


def _autocast_on(x: torch.Tensor) -> bool:
    dev = x.device.type
    return torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev)


def hooked(*modules: nn.Module) -> bool:
    """Whether forward hooks (global, or on one of ``modules``) would see these modules'
    tensors: fused paths that skip calling the modules one by one then step aside."""
    # torch has no public API that reads the global hooks (only one that adds them)
    from torch.nn.modules import module as _m
    if _m._global_forward_hooks or _m._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def _is_pointwise(conv: nn.Module, c: int) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.weight.shape[1:] == (c, 1, 1) and conv.groups == 1
            and conv.stride == (1, 1) and conv.padding in ((0, 0), "valid") and conv.dilation == (1, 1))


class _FilterCaches:
    """The Converse2d layers that hold an eval-mode filter (weakly: a layer's filter goes
    with the layer). Listed in :mod:`conversenet._caches`; ``clear()`` drops every filter."""

    def __init__(self) -> None:
        self._layers: "weakref.WeakSet[Converse2d]" = weakref.WeakSet()

    def add(self, layer: "Converse2d") -> None:
        self._layers.add(layer)

    def clear(self) -> None:
        for layer in list(self._layers):
            layer._cache = None
        self._layers.clear()

    def __len__(self) -> int:
        return sum(1 for layer in list(self._layers) if layer._cache is not None)


FILTER_CACHES = _FilterCaches()
_caches.register("converse2d-filters", "eval-mode spectral filter of each Converse2d layer",
                 "one per live layer, each <= Converse2d.filter_cache_bytes; freed with the layer", FILTER_CACHES)


def pixel_major_faster(x: torch.Tensor, c: int, o: int) -> bool:
    """Whether a block's 1x1 products (C -> O channels) on an input like x (N, C, H, W) run
    faster pixel-major, as (NHW, C) x (C, O) with channels-last features, than planar, as
    (O, C) x (C, HW). That depends on the CPU and its BLAS (on an AMD EPYC pixel-major was
    1.3-1.5x faster for C = 64, O = 128), so it is measured: once per (C, O, pixel bucket,
    dtype, threads) in a process, by the FFT policy (``conversenet bench --explain`` lists
    it as ``mm1x1``). GPUs, small images and forced FFT paths: planar."""
    pixels = x.shape[0] * x.shape[-2] * x.shape[-1]
    if x.device.type != "cpu" or pixels * max(c, o) < _tuning.FFT_MIN_MEASURED:
        return False
    size = min(1 << max(0, (pixels - 1).bit_length()), _tuning.LAYOUT_MEASURE_PIXELS)

    def make(order: str):
        def runner(_n: int):
            a = torch.randn(c, size, dtype=x.dtype)
            w = torch.randn(o, c, dtype=x.dtype)
            if order == "planar":
                out = torch.empty(o, size, dtype=x.dtype)
                return lambda: torch.mm(w, a, out=out)
            at, out = a.t().contiguous(), torch.empty(size, o, dtype=x.dtype)
            return lambda: torch.mm(at, w.t(), out=out)
        return runner

    return _fft_policy.choose("mm1x1", c, o, pixels, x.dtype, False,
                              {"planar": make("planar"), "pixel": make("pixel")}) == "pixel"


def _pixel_major(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) channels-last -> its (N, HW, C) view (contiguous)."""
    n, c = x.shape[:2]
    return x.permute(0, 2, 3, 1).reshape(n, -1, c)


def _gelu_(h: torch.Tensor) -> torch.Tensor:
    """Exact GELU in place; a channels-last tensor through its contiguous view (torch's
    kernel ran 2.5x slower on the permuted (N, C, H, W) view itself)."""
    torch.ops.aten.gelu_(h.permute(0, 2, 3, 1) if _is_channels_last(h) else h)
    return h


def layer_norm_pointwise(x: torch.Tensor, norm: LayerNorm2d, conv: nn.Conv2d,
                         out: Optional[torch.Tensor] = None, work: Optional[torch.Tensor] = None,
                         channels_last: bool = False) -> torch.Tensor:
    """``conv(norm(x))`` for a 1x1 ``conv``, computed as one matrix product (no autograd use).

    With per-pixel mean ``mu`` and ``r = 1/sqrt(var + eps)`` over channels,
    ``conv(norm(x)) = r * (W' (x - mu)) + b'`` where ``W' = W diag(gamma)`` and
    ``b' = W beta + c``: the LayerNorm's affine step is folded into the weights and the
    normalised copy of ``x`` is never formed (about half the memory passes of the two
    modules run one after the other, which dominate them at large images on CPUs).

    Args:
        x: (N, C, H, W), contiguous or channels-last (read in its own memory order).
        norm: the :class:`LayerNorm2d` over C channels.
        conv: a 1x1 ``nn.Conv2d`` from C to O channels (stride 1, no groups, no padding).
        out: optional contiguous buffer for the result: (N, O, H*W), or (N, H*W, O) with
            ``channels_last``.
        work: optional contiguous scratch tensor of x's size.
        channels_last: return the result channels-last: the product then runs as
            (HW, C) x (C, O), which on CPUs is faster than (O, C) x (C, HW) (about 1.3x for
            C = 64, O = 128 on an AMD EPYC).

    Returns:
        (N, O, H, W), equal to ``conv(norm(x))`` up to float rounding; channels-last (a
        view of ``out``) if ``channels_last``, else contiguous.
    """
    n, c, h, w = x.shape
    if not _is_pointwise(conv, c):
        y = conv(norm(x))
        return y.contiguous(memory_format=torch.channels_last) if channels_last else y.contiguous()
    o, hw = conv.weight.shape[0], h * w
    w2 = conv.weight.reshape(o, c).to(x.dtype)
    w_fold = w2 * norm.weight.to(x.dtype)
    b_fold = w2 @ norm.bias.to(x.dtype)
    if conv.bias is not None:
        b_fold = b_fold + conv.bias.to(x.dtype)
    avg = x.new_full((c, 1), 1.0 / c)
    pixel_major = _is_channels_last(x)
    if pixel_major:  # statistics over the contiguous channels of each pixel
        xm = _pixel_major(x)                                             # (N, HW, C)
        scratch = work.view(n, hw, c) if work is not None else torch.empty_like(xm)
        d = torch.sub(xm, torch.matmul(xm, avg), out=scratch)
        dc = d.transpose(1, 2)                                           # (N, C, HW) view
    else:
        xs = x.reshape(n, c, hw)
        scratch = work.view(n, c, hw) if work is not None else torch.empty_like(xs)
        d = dc = torch.sub(xs, torch.matmul(avg.t(), xs), out=scratch)
    if channels_last:
        y = out if out is not None else x.new_empty(n, hw, o)
        for i in range(n):
            torch.mm(dc[i].transpose(0, 1), w_fold.transpose(0, 1), out=y[i])  # (HW, O)
    else:
        y = out if out is not None else x.new_empty(n, o, hw)
        for i in range(n):
            torch.mm(w_fold, dc[i], out=y[i])                                 # (O, HW)
    # two-pass variance (the square is taken in place in d, after the product)
    var = (torch.matmul(d.square_(), avg) if pixel_major else torch.matmul(avg.t(), d.square_())).view(n, hw)
    r = var.add_(norm.eps).rsqrt_()
    if channels_last:
        return y.mul_(r[:, :, None]).add_(b_fold).view(n, h, w, o).permute(0, 3, 1, 2)
    return y.mul_(r[:, None, :]).add_(b_fold[:, None]).reshape(n, o, h, w)


def _spatial_op(
    kind: str, channels: int, kernel_size: Tuple[int, int], padding: Optional[int],
    padding_mode: str, eps: float, x0: str, kernel_init: str,
) -> nn.Module:
    if kind == "converse":
        return Converse2d(channels, kernel_size, 1, padding, padding_mode, eps, x0, kernel_init)
    kh, kw = kernel_size
    if kind == "conv":
        mode = "zeros" if padding_mode == "constant" else padding_mode
        return nn.Conv2d(channels, channels, kernel_size, padding="same", padding_mode=mode, groups=channels)
    if kind == "convt":
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError("spatial='convt' needs odd kernel sizes to keep the feature size")
        return nn.ConvTranspose2d(channels, channels, kernel_size, padding=(kh // 2, kw // 2), groups=channels)
    check_choice("spatial", kind, SPATIAL_OPS)
    raise AssertionError(kind)  # unreachable: every choice is handled above


class ConverseBlock(nn.Module):
    """The paper's converse block (Fig. 2), width C, expansion 2.

    ``x = x + a1 * B1(x); x = x + a2 * B2(x)`` with
    ``B1 = LN -> 1x1 C->2C -> GELU -> Converse2d(2C) -> GELU -> 1x1 2C->C`` (``conv1``) and
    ``B2 = LN -> 1x1 C->2C -> GELU -> 1x1 2C->C`` (``conv2``). ``a1``/``a2`` are the
    learnable per-channel residual scales ``alpha1``/``alpha2`` (1, C, 1, 1), initialised
    to 0, when ``residual_scale=True``; otherwise 1.

    ``spatial`` swaps Converse2d for a depthwise ``"conv"`` or transposed ``"convt"`` of
    the same kernel size (the Conv-/ConvT- baselines of Tables 4-5).

    Shape: (N, C, H, W) -> (N, C, H, W).

    Example:
        >>> import torch
        >>> from conversenet.nn import ConverseBlock
        >>> ConverseBlock(16, kernel_size=3)(torch.randn(1, 16, 10, 12)).shape
        torch.Size([1, 16, 10, 12])
    """

    def __init__(
        self,
        channels: int,
        kernel_size: _IntPair = 5,
        padding: Optional[int] = None,
        padding_mode: str = "circular",
        eps: float = 1e-5,
        x0: str = "interp",
        kernel_init: str = "gaussian_softmax",
        residual_scale: bool = False,
        spatial: str = "converse",
        expansion: int = 2,
    ) -> None:
        super().__init__()
        ks = check_int_tuple("kernel_size", kernel_size, 2)
        hidden = channels * expansion
        self.conv1 = nn.Sequential(
            LayerNorm2d(channels),
            nn.Conv2d(channels, hidden, 1),
            nn.GELU(),
            _spatial_op(spatial, hidden, ks, padding, padding_mode, eps, x0, kernel_init),
            nn.GELU(),
            nn.Conv2d(hidden, channels, 1),
        )
        self.conv2 = nn.Sequential(
            LayerNorm2d(channels),
            nn.Conv2d(channels, hidden, 1),
            nn.GELU(),
            nn.Conv2d(hidden, channels, 1),
        )
        if residual_scale:
            self.alpha1 = nn.Parameter(torch.zeros(1, channels, 1, 1))
            self.alpha2 = nn.Parameter(torch.zeros(1, channels, 1, 1))
        else:
            self.alpha1 = self.alpha2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the fused no-grad path works on reused buffers in place, in x's dtype: compiled
        # graphs (the compiler fuses the plain path itself), autocast and half inputs (whose
        # LayerNorm runs in float32 there) take the plain path below
        if self.fused_applies(x):
            return self._forward_no_grad(x)
        if self.alpha1 is None:
            x = x + self.conv1(x)
            return x + self.conv2(x)
        x = x + self.alpha1 * self.conv1(x)
        return x + self.alpha2 * self.conv2(x)

    def fused_applies(self, x: torch.Tensor) -> bool:
        """Whether ``forward(x)`` takes the fused no-grad path (:meth:`_forward_no_grad`)."""
        return (not torch.is_grad_enabled() and x.dim() == 4 and x.dtype in (torch.float32, torch.float64)
                and not torch.compiler.is_compiling() and not _autocast_on(x)
                and not self._submodule_hooks())

    def pixel_major(self, x: torch.Tensor) -> bool:
        """Whether the fused path of this block keeps its hidden features channels-last for
        an input like x (its Converse2d is then solved in that layout too):
        :func:`pixel_major_faster` for its first 1x1 product."""
        first = self.conv1[1]
        return _is_pointwise(first, x.shape[1]) and pixel_major_faster(x, x.shape[1], first.weight.shape[0])

    def _submodule_hooks(self) -> bool:
        """Hooks on the layers inside see their tensors; the fused path neither calls those
        layers one by one nor keeps their tensors intact (workspace, in-place GELU)."""
        return hooked(*(m for m in self.modules() if m is not self))

    def _forward_no_grad(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: the same arithmetic with fewer memory passes and fresh buffers (which
        dominate at large images on CPUs). Per branch: LayerNorm and the first 1x1 conv are
        one matrix product; GELUs run in place; the last 1x1 conv accumulates onto
        ``x + alpha * bias`` (residual, bias and alpha folded into one product). ``x`` is
        never written; temporaries come from a reused workspace.

        Inside a branch the hidden features are channels-last (pixel-major) where the 1x1
        products measure faster in that order (:func:`pixel_major_faster`; on the AMD EPYC
        1.3-1.5x), and the Converse2d then solves them without leaving that layout
        (:mod:`conversenet.functional._channels_last`); otherwise planar. The output has x's
        layout: channels-last for a channels-last x (a stack of blocks then never converts
        between layouts; see ``conversenet.models._common.ConverseStack``), else
        contiguous."""
        n, c, hgt, wid = x.shape
        hw = hgt * wid
        cl = _is_channels_last(x)
        if not cl:
            x = x.contiguous()
        for j, (seq, alpha) in enumerate(((self.conv1, self.alpha1), (self.conv2, self.alpha2))):
            first, last = seq[1], seq[-1]
            if not (_is_pointwise(first, c) and _is_pointwise(last, last.weight.shape[1])
                    and last.weight.shape[0] == c):
                h = seq(x)
                x = x + (h if alpha is None else alpha * h)
                continue
            o = first.weight.shape[0]
            pm = pixel_major_faster(x, c, o)  # measured once per shape, then a dict lookup
            h = layer_norm_pointwise(x, seq[0], first, out=_workspace.buffer("hidden", (n, hw, o) if pm else (n, o, hw), x),
                                     work=_workspace.buffer("work", (n, c, hw), x), channels_last=pm)
            for m in list(seq)[2:-1]:
                if type(m) is nn.GELU and m.approximate == "none":
                    h = _gelu_(h)
                elif type(m) is Converse2d and m.weight is not None:
                    # its result is consumed inside this block: solved into a reused buffer
                    sh = (n, m.scale * hgt, m.scale * wid, m.channels)
                    buf = _workspace.buffer("spatial", sh, x).permute(0, 3, 1, 2) if pm else \
                        _workspace.buffer("spatial", (sh[0], sh[3], sh[1], sh[2]), x)
                    h = m._solve(h, out=buf)
                else:
                    h = m(h)
            w_last = last.weight.reshape(c, -1).to(x.dtype)
            b_last = last.bias.to(x.dtype) if last.bias is not None else x.new_zeros(c)
            if alpha is not None:
                a = alpha.reshape(c).to(x.dtype)
                w_last, b_last = w_last * a[:, None], b_last * a
            # the first branch's sum stays inside the block; the second is the block's output
            shape = (n, hw, c) if cl else (n, c, hw)
            res = _workspace.buffer("residual", shape, x) if j == 0 else x.new_empty(shape)
            # (N, O, HW) view of h in its own memory order, read without copies by mm
            hs = _pixel_major(h).transpose(1, 2) if _is_channels_last(h) else h.reshape(n, -1, hw)
            if cl:  # (HW, C) = x + b + (HW, O) x (O, C)
                torch.add(_pixel_major(x), b_last, out=res)
                for i in range(n):
                    res[i].addmm_(hs[i].transpose(0, 1), w_last.transpose(0, 1))
                x = res.view(n, hgt, wid, c).permute(0, 3, 1, 2)
            else:   # (C, HW) = x + b + (C, O) x (O, HW)
                torch.add(x.reshape(n, c, hw), b_last[:, None], out=res)
                for i in range(n):
                    res[i].addmm_(w_last, hs[i])
                x = res.view(n, c, hgt, wid)
        return x
