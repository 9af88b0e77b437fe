"""Argument checks of the whole package, in one place (like kornia's ``core/check.py``).

Every public function of ``functional``, ``nn``, ``models`` and ``data`` checks its
arguments with these before any work is done, so that bad input gets the same clear error
everywhere: the argument's name, what was expected and what came. Checks that return a
value return it normalised (``int``, ``float``, a tuple, a tensor).

Also here: the regulariser parametrisation of every learnable reverse convolution,
:func:`lam_from_bias` (``lam = sigmoid(bias - 9) + eps``), so that it exists once.

This module imports nothing from the package (every layer may use it).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence, Tuple, Union

import torch

__all__ = [
    "check_tensor",
    "check_int",
    "check_pos_int",
    "check_positive_int",
    "check_int_tuple",
    "check_positive_number",
    "check_choice",
    "check_image",
    "check_input_and_kernel",
    "check_padding",
    "check_lam",
    "check_lam_values",
    "lam_from_bias",
    "LAM_BIAS_OFFSET",
]


def check_tensor(name: str, t: Any) -> None:
    """A real floating-point ``torch.Tensor`` (TypeError otherwise).

    >>> check_tensor("x", torch.zeros(2, dtype=torch.int64))
    Traceback (most recent call last):
    ...
    TypeError: x must have a real floating dtype, got torch.int64
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_complex() or not t.is_floating_point():
        raise TypeError(f"{name} must have a real floating dtype, got {t.dtype}")


def check_int(name: str, v: Any, minimum: int = 1) -> int:
    """An integer (not a bool) ``>= minimum``, returned as ``int``.

    >>> check_int("scale", 2), check_int("padding", 0, 0)
    (2, 0)
    >>> check_int("scale", 0)
    Traceback (most recent call last):
    ...
    ValueError: scale must be >= 1, got 0
    """
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    v = int(v)
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


check_pos_int = check_int  # the name the model zoo uses (models/_common.py)


def check_positive_int(name: str, v: Any) -> int:
    """A positive ``int`` (a count such as channels).

    >>> check_positive_int("channels", 0)
    Traceback (most recent call last):
    ...
    ValueError: channels must be a positive int, got 0
    """
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def check_int_tuple(name: str, v: Union[int, Sequence[int]], d: int) -> Tuple[int, ...]:
    """One positive int for all ``d`` axes, or ``d`` of them, returned as a d-tuple.

    >>> check_int_tuple("kernel_size", 3, 2), check_int_tuple("kernel_size", (3, 5), 2)
    ((3, 3), (3, 5))
    >>> check_int_tuple("kernel_size", (3, 3), 3)
    Traceback (most recent call last):
    ...
    ValueError: kernel_size must be a positive int or a tuple of 3 of them, got (3, 3)
    """
    t = tuple(v) if isinstance(v, (tuple, list)) else (v,) * d
    if len(t) != d or any(isinstance(i, bool) or not isinstance(i, numbers.Integral) or i < 1 for i in t):
        of = "a pair of them" if d == 2 else f"a tuple of {d} of them"
        raise ValueError(f"{name} must be a positive int or {of}, got {v!r}")
    return tuple(int(i) for i in t)


def check_positive_number(name: str, v: Any, hint: str = "") -> float:
    """A finite real number ``> 0`` (not a bool), returned as ``float``.

    >>> check_positive_number("eps", 1e-5)
    1e-05
    >>> check_positive_number("eps", 0.0)
    Traceback (most recent call last):
    ...
    ValueError: eps must be a positive number, got 0.0
    """
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive number{hint}, got {v!r}")
    return float(v)


def check_choice(name: str, v: Any, choices: Sequence[Any], alternative: str = "") -> Any:
    """One of ``choices`` (``alternative``: words added to the message, e.g. " or a tensor").

    >>> check_choice("padding_mode", "zeros", ("circular", "reflect"))
    Traceback (most recent call last):
    ...
    ValueError: padding_mode must be one of ('circular', 'reflect'), got 'zeros'
    """
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}{alternative}, got {v!r}")
    return v


def check_image(x: Any, channels: int, name: str = "x") -> None:
    """A real floating (N, channels, H, W) tensor, before any work.

    >>> check_image(torch.zeros(1, 3, 4, 4), 1)
    Traceback (most recent call last):
    ...
    ValueError: x must have shape (N, 1, H, W), got (1, 3, 4, 4)
    """
    check_tensor(name, x)
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must have shape (N, {channels}, H, W), got {tuple(x.shape)}")


_AXES = {1: "L", 2: "min(H, W)", 3: "min(D, H, W)"}
_SHAPES = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}
_KERNELS = {1: "k", 2: "kh, kw", 3: "kd, kh, kw"}


def check_input_and_kernel(x: Any, weight: Any, d: int, nonempty: bool = False) -> Tuple[int, int]:
    """The input (N, C, *spatial) and depthwise kernel (1 or N, C, *k) of a d-D reverse
    convolution; returns (N, C). ``nonempty``: the spatial axes must not be empty.

    >>> check_input_and_kernel(torch.zeros(2, 3, 8, 8), torch.zeros(1, 4, 3, 3), 2)
    Traceback (most recent call last):
    ...
    ValueError: weight has 4 channels but x has 3
    """
    check_tensor("x", x)
    if x.dim() != d + 2:
        raise ValueError(f"x must be {d + 2}-D {_SHAPES.get(d, '')}, got shape {tuple(x.shape)}")
    n, c = x.shape[:2]
    if nonempty and any(v == 0 for v in x.shape[2:]):
        raise ValueError(f"x must have non-empty spatial axes, got shape {tuple(x.shape)}")
    check_tensor("weight", weight)
    if weight.dim() != d + 2:
        raise ValueError(f"weight must be {d + 2}-D (1 or N, C, {_KERNELS.get(d, '...')}), "
                         f"got shape {tuple(weight.shape)}")
    if weight.shape[1] != c:
        raise ValueError(f"weight has {weight.shape[1]} channels but x has {c}")
    if any(v < 1 for v in weight.shape[2:]):
        raise ValueError(f"weight: kernel must be at least {'x'.join(['1'] * d)}, "
                         f"got {'x'.join(str(v) for v in weight.shape[2:])}")
    if weight.shape[0] not in (1, n):
        raise ValueError(f"weight batch must be 1 (shared) or N={n} (per-sample), got {weight.shape[0]}")
    return n, c


def check_padding(padding: Any, padding_mode: str, sizes: Sequence[int], modes: Sequence[str]) -> int:
    """``padding >= 0`` that ``padding_mode`` (one of ``modes``) allows on spatial ``sizes``:
    reflect needs padding < the smallest size, circular padding <= it.

    >>> check_padding(4, "reflect", (4, 9), ("circular", "reflect"))
    Traceback (most recent call last):
    ...
    ValueError: padding=4 with padding_mode='reflect' needs padding < min(H, W)=4
    """
    padding = check_int("padding", padding, 0)
    check_choice("padding_mode", padding_mode, modes)
    smallest = min(sizes)
    label = _AXES.get(len(sizes), "the smallest spatial size")
    if padding_mode == "reflect" and padding >= smallest:
        raise ValueError(f"padding={padding} with padding_mode='reflect' needs padding < {label}={smallest}")
    if padding_mode == "circular" and padding > smallest:
        raise ValueError(f"padding={padding} with padding_mode='circular' needs padding <= {label}={smallest}")
    return padding


def check_lam(lam: Any, n: int, c: int, d: int, device: torch.device, compute: torch.dtype) -> torch.Tensor:
    """The regulariser of a d-D reverse convolution as a (1 or N, C, 1, ..., 1) tensor of
    ``compute`` dtype (the solve's: float32, or float64 for float64 inputs).

    lam may be a float, a C-vector (or 1-vector), a scalar tensor, or a (1 or N, 1 or C,
    1, ..., 1) tensor; it must be positive, finite and representable in ``compute`` (a
    larger lam would turn into inf there and the closed form into inf/inf). Values of a
    tensor are checked in eager mode (one host sync on a C-vector); a compiled graph checks
    them inside the solver op instead, and tensors on the meta device are not checked.

    >>> check_lam(0.5, 2, 3, 2, torch.device("cpu"), torch.float32).shape
    torch.Size([1, 3, 1, 1])
    """
    ones = (1,) * d
    if isinstance(lam, bool):
        raise ValueError(f"lam must be a positive number or tensor, got {lam!r}")
    if isinstance(lam, numbers.Real):
        if not lam > 0 or not math.isfinite(lam):
            raise ValueError(f"lam must be positive and finite, got {lam}")
        if lam > torch.finfo(compute).max:
            raise ValueError(_lam_too_large(float(lam), compute))
        return torch.full((1, c, *ones), float(lam), dtype=compute, device=device)
    if not isinstance(lam, torch.Tensor):
        raise ValueError(f"lam must be a float or a tensor, got {type(lam).__name__}")
    check_tensor("lam", lam)
    if lam.dim() == 0:
        t = lam.reshape(1, 1, *ones).expand(1, c, *ones)
    elif lam.dim() == 1 and lam.shape[0] in (1, c):
        t = lam.reshape(1, -1, *ones).expand(1, c, *ones)
    elif (lam.dim() == d + 2 and lam.shape[0] in (1, n) and lam.shape[1] in (1, c)
          and tuple(lam.shape[2:]) == ones):
        t = lam.expand(lam.shape[0], c, *ones)
    else:
        shape = "x".join(["1", "C"] + ["1"] * d)
        raise ValueError(
            f"lam must be a float, a C-vector, {shape} or {shape.replace('1', 'N', 1)} "
            f"(N={n}, C={c}); got shape {tuple(lam.shape)}"
        )
    if not torch.compiler.is_compiling() and lam.device.type != "meta":
        check_lam_values(lam.detach(), compute)
    return t.to(compute)


def _lam_too_large(value: float, compute: torch.dtype) -> str:
    return (
        f"lam={value:g} is too large: the solve runs in {str(compute).replace('torch.', '')}, "
        f"whose largest finite value is {torch.finfo(compute).max:g} (use float64 inputs "
        "for a larger lam; the result tends to x0 as lam grows)"
    )


def check_lam_values(lam: torch.Tensor, compute: torch.dtype) -> None:
    """Raises ValueError unless every lam is positive, finite and finite in ``compute``."""
    big = torch.finfo(compute).max
    if bool(((lam > 0) & (lam <= big)).all()):  # NaN fails both comparisons
        return
    if not bool((lam > 0).all()):
        raise ValueError("lam must be positive everywhere (got a value <= 0 or NaN)")
    if not bool(torch.isfinite(lam).all()):
        raise ValueError("lam must be finite everywhere (got inf)")
    raise ValueError(_lam_too_large(float(lam.max()), compute))


#: lam = sigmoid(bias - LAM_BIAS_OFFSET) + eps: a zero bias starts at sigmoid(-9) ~ 1.2e-4
LAM_BIAS_OFFSET = 9.0


def lam_from_bias(bias: torch.Tensor, eps: float) -> torch.Tensor:
    """The regulariser of every learnable reverse convolution: ``sigmoid(bias - 9) + eps``.

    Computed in at least float32 (the solve's precision) even for half-precision
    parameters: in bfloat16, ``sigmoid(-9) + 1e-5`` would keep only 3 digits.

    >>> round(float(lam_from_bias(torch.zeros(()), 1e-5)), 7)
    0.0001334
    """
    if bias.dtype in (torch.float16, torch.bfloat16):
        bias = bias.float()
    return torch.sigmoid(bias - LAM_BIAS_OFFSET) + eps
