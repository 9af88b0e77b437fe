"""A small tester base for the operator's fast paths (in the spirit of kornia's BaseTester).

A test class subclasses :class:`BaseTester` and calls its checks from short test methods:

* :meth:`BaseTester.assert_close` with per-dtype tolerances (:data:`BaseTester.TOL`), relative
  to the size of the expected values (solves amplify rounding by about 1/lam);
* :meth:`BaseTester.reference64`: the float64 result of an independent reference;
* :meth:`BaseTester.gradcheck`: ``torch.autograd.gradcheck`` (and ``gradgradcheck``) in float64;
* :meth:`BaseTester.noncontiguous`: the same values in a non-contiguous layout;
* :meth:`BaseTester.spy`: counts the calls of a fast path, so a test can show the path it
  checks is the one that ran (not a fallback).

Fixtures shared by many test files live in conftest.py; this module holds no fixtures.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch


class BaseTester:
    #: (rtol, atol) per dtype, both relative to max |expected| (float32: a few ulps times
    #: the conditioning of the small solves used here; float64: the same in double)
    TOL: Dict[torch.dtype, Tuple[float, float]] = {
        torch.float64: (1e-9, 1e-10),
        torch.float32: (2e-4, 2e-5),
    }
    DTYPES = (torch.float32, torch.float64)

    # ------------------------------------------------------------------ comparisons
    @classmethod
    def assert_close(cls, actual, expected, dtype: torch.dtype = None) -> None:
        """``actual`` equals ``expected`` within the tolerance of ``dtype`` (default:
        actual's dtype), scaled by max |expected| (both converted to float64 on the CPU)."""
        a = _f64(actual)
        e = _f64(expected)
        assert a.shape == e.shape, f"shape {tuple(a.shape)} != {tuple(e.shape)}"
        dtype = dtype or (actual.dtype if isinstance(actual, torch.Tensor) else torch.float64)
        rtol, atol = cls.TOL[dtype]
        scale = max(float(e.abs().max()) if e.numel() else 0.0, 1e-30)
        err = float((a - e).abs().max()) if e.numel() else 0.0
        assert err <= atol * scale + rtol * scale, (
            f"max abs error {err:.3e} > {atol * scale + rtol * scale:.3e} ({dtype}, max |expected| {scale:.3e})")

    @staticmethod
    def reference64(fn: Callable, *inputs):
        """``fn`` on float64 copies of the tensor inputs (others passed as they are)."""
        return fn(*[t.detach().double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                    for t in inputs])

    # ------------------------------------------------------------------ gradients
    @staticmethod
    def gradcheck(fn: Callable, inputs: Sequence[torch.Tensor], second_order: bool = True) -> None:
        """gradcheck (and gradgradcheck) of ``fn`` at float64 copies of ``inputs`` that
        require grad."""
        ins = tuple(t.detach().double().requires_grad_() for t in inputs)
        assert torch.autograd.gradcheck(fn, ins, eps=1e-6, atol=1e-6, rtol=1e-4)
        if second_order:
            assert torch.autograd.gradgradcheck(fn, ins, eps=1e-6, atol=1e-5, rtol=1e-3)

    # ------------------------------------------------------------------ layouts
    @staticmethod
    def noncontiguous(t: torch.Tensor) -> torch.Tensor:
        """The same values with the last two axes stored transposed (a non-contiguous view)."""
        out = t.transpose(-1, -2).contiguous().transpose(-1, -2)
        assert torch.equal(out, t) and not out.is_contiguous()
        return out

    # ------------------------------------------------------------------ which path ran
    @staticmethod
    def spy(monkeypatch, owner, name: str) -> List[int]:
        """Counts the calls of ``owner.name`` for the rest of the test (the original still
        runs; pytest's ``monkeypatch`` puts it back)."""
        original = getattr(owner, name)
        calls: List[int] = []

        def wrapper(*args, **kwargs):
            calls.append(1)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)
        return calls


def _f64(t) -> torch.Tensor:
    if isinstance(t, np.ndarray):
        return torch.from_numpy(t.astype(np.float64))
    return torch.as_tensor(t).detach().to("cpu", torch.float64)
