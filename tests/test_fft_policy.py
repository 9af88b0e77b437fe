"""The CPU FFT policy (conversenet/functional/_fft_policy.py): every implementation of the
solver's rfft2/irfft2, forced one at a time, against explicit float64 DFT sums; the
override, the decision record, the disk cache; Converse2D the same whatever is chosen.
No timing is asserted: which implementation wins is the machine's business."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _reference import eq6, softmax_kernel
from conversenet import _tuning
from conversenet.functional import _fft, _fft_policy, converse2d

HAS_SCIPY = _fft_policy.scipy_fft() is not None
HAS_DUCC = _fft_policy.ducc_fft() is not None  # optional, never a dependency
# sizes with the split available (158 = 2*79, 268 = 4*67, 524 = 4*131), odd and even W
SIZES = [(158, 30), (268, 13), (40, 33), (524, 12)]


def _dft(n: int, inverse: bool = False) -> np.ndarray:
    """Explicit DFT matrix, entries exp(-+2 pi i k m / n) (divided by n when inverse)."""
    k = np.arange(n)
    mat = np.exp((1.0 if inverse else -1.0) * 2j * np.pi * ((k[:, None] * k[None, :]) % n) / n)
    return mat / n if inverse else mat


def _ref_rfft2(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[-2:]
    return np.einsum("ab,...bc,dc->...ad", _dft(h), x.astype(np.complex128), _dft(w)[: w // 2 + 1])


def _ref_irfft2(z: np.ndarray, h: int, w: int) -> np.ndarray:
    """Hermitian completion of the half-plane, then the explicit inverse DFT, real part."""
    full = np.zeros(z.shape[:-1] + (w,), dtype=np.complex128)
    full[..., : w // 2 + 1] = z
    rows = (-np.arange(h)) % h
    for v in range(w // 2 + 1, w):
        full[..., v] = np.conj(z[..., rows, w - v])
    return np.einsum("ab,...bc,dc->...ad", _dft(h, True), full, _dft(w, True)).real


def _paths(h):
    paths = ["torch", "axes"]
    if _fft_policy.split_factor(h) is not None:
        paths.append("split")
    if HAS_SCIPY:
        paths.append("scipy")
    if HAS_DUCC:
        paths.append("ducc")
    return paths


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float64, 1e-12)])
def test_every_path_matches_explicit_dft(h, w, dtype, tol):
    gen = torch.Generator().manual_seed(h * w)
    x = torch.randn(2, 3, h, w, generator=gen, dtype=torch.float64)
    ref = _ref_rfft2(x.numpy())
    zr = torch.randn(2, 3, h, w // 2 + 1, generator=gen, dtype=torch.complex128)
    back_ref = _ref_irfft2(zr.numpy(), h, w)
    for path in _paths(h):
        spec = _fft.rfft2(x.to(dtype), path=path)
        assert spec.shape == ref.shape and spec.dtype == (torch.complex64 if dtype == torch.float32 else torch.complex128)
        err = np.abs(spec.to(torch.complex128).numpy() - ref).max() / np.abs(ref).max()
        assert err < tol, (path, err)
        back = _fft.irfft2(zr.to(spec.dtype), (h, w), path=path)
        assert back.shape == x.shape and back.dtype == dtype
        err = np.abs(back.double().numpy() - back_ref).max() / np.abs(back_ref).max()
        assert err < tol, (path, err)


@pytest.mark.parametrize("path", ["axes", "split"])
def test_grouped_paths_match_explicit_dft(monkeypatch, path):
    """Without autograd, many planes go a few at a time (3 per group here) into one output."""
    h, w = 158, 30
    monkeypatch.setattr(_tuning, "FFT_GROUP_ELEMS", 3 * h * (w // 2 + 1))
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, h, w, generator=gen, dtype=torch.float64)  # 8 planes: 3 + 3 + 2
    assert _fft._groups(x, h * (w // 2 + 1)) == 3
    spec = _fft.rfft2(x, path=path)
    assert spec.is_contiguous()
    ref = _ref_rfft2(x.numpy())
    assert np.abs(spec.numpy() - ref).max() / np.abs(ref).max() < 1e-12
    back = _fft.irfft2(spec, (h, w), path=path)
    assert np.abs(back.numpy() - x.numpy()).max() < 1e-12


def test_non_contiguous_and_conjugate_inputs():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 40, 66, generator=gen, dtype=torch.float64)[:, :, ::2]  # strided
    ref = _ref_rfft2(x.numpy())
    z = torch.randn(3, 40, 17, generator=gen, dtype=torch.complex128)
    zc = z.conj()  # a lazily conjugated view
    back_ref = _ref_irfft2(np.conj(z.numpy()), 40, 33)
    for path in _paths(40):
        assert np.abs(_fft.rfft2(x, path=path).numpy() - ref).max() < 1e-10
        assert np.abs(_fft.irfft2(zc, (40, 33), path=path).numpy() - back_ref).max() < 1e-12


def test_autograd_paths_and_scipy_refusal():
    """torch/axes/split record gradients; scipy refuses a tensor that requires grad."""
    h, w = 158, 12
    x = torch.randn(2, h, w, dtype=torch.float64)
    for path in ("torch", "axes", "split"):
        xg = x.clone().requires_grad_()
        _fft.irfft2(_fft.rfft2(xg, path=path), (h, w), path=path).sum().backward()
        assert torch.allclose(xg.grad, torch.ones_like(x))
    if HAS_SCIPY:
        with pytest.raises(ValueError, match="scipy"):
            _fft.rfft2(x.clone().requires_grad_(), path="scipy")
        with torch.no_grad():  # the same tensor without a graph being recorded: fine
            _fft.rfft2(x.clone().requires_grad_(), path="scipy")
    if HAS_DUCC:
        with pytest.raises(ValueError, match="ducc"):
            _fft.rfft2(x.clone().requires_grad_(), path="ducc")
    with pytest.raises(ValueError, match="split"):
        _fft.rfft2(torch.randn(2, 64, 8), path="split")  # 64 has no split factor
    with pytest.raises(ValueError, match="path must be"):
        _fft.rfft2(x, path="fftw")
    # under autograd the policy never offers scipy
    assert not {"scipy", "ducc"} & set(_fft.available(x.clone().requires_grad_(), h))


def test_split_factor_rule():
    assert _fft_policy.split_factor(524) == 4 and _fft_policy.split_factor(268) == 4
    assert _fft_policy.split_factor(2 * 79) == 2 and _fft_policy.split_factor(8 * 97) == 8
    assert _fft_policy.split_factor(131) is None  # a prime alone: nothing to split
    assert _fft_policy.split_factor(512) is None and _fft_policy.split_factor(9 * 67) is None
    assert _fft.ct_split(524, torch.device("meta")) is None  # CPUs only


def test_force_and_env_override(monkeypatch):
    monkeypatch.delenv(_fft_policy.ENV, raising=False)
    assert _fft_policy.forced() is None
    with _fft_policy.force("split"):
        assert _fft_policy.forced() == "split"
        with _fft_policy.force("auto"):
            assert _fft_policy.forced() is None
    monkeypatch.setenv(_fft_policy.ENV, "axes")
    assert _fft_policy.forced() == "axes"
    monkeypatch.setenv(_fft_policy.ENV, "fftw")
    with pytest.raises(ValueError, match="CONVERSENET_FFT"):
        _fft_policy.forced()
    with pytest.raises(ValueError, match="path"):
        with _fft_policy.force("fftw"):
            pass


def test_forced_path_is_the_one_that_runs(monkeypatch):
    """Forcing reaches the implementation: count calls of each one."""
    calls = []
    for name in list(_fft._RFFT2):
        fn = _fft._RFFT2[name]
        monkeypatch.setitem(_fft._RFFT2, name, lambda x, _n=name, _f=fn: (calls.append(_n), _f(x))[1])
    x = torch.randn(4, 158, 64)
    for path in _paths(158):
        with _fft_policy.force(path):
            _fft.rfft2(x)
        assert calls[-1] == path
    with _fft_policy.force("split"):  # not available for H = 64: torch
        _fft.rfft2(torch.randn(4, 64, 64))
    assert calls[-1] == "torch"


def test_measured_decision_is_recorded_and_logged(monkeypatch, caplog):
    monkeypatch.delenv(_fft_policy.ENV, raising=False)
    monkeypatch.setattr(_tuning, "FFT_BUDGET_S", 0.0)  # one timed round
    _fft_policy.clear()
    x = torch.randn(5, 158, 40)
    with caplog.at_level(logging.DEBUG, logger="conversenet.fft"), torch.no_grad():
        spec = _fft.rfft2(x)
        back = _fft.irfft2(spec, (158, 40))
    assert torch.allclose(back, x, atol=1e-5)
    rows = {d["op"]: d for d in _fft_policy.decisions()}
    assert set(rows) == {"rfft2", "irfft2"}
    for d in rows.values():
        assert d["size"] == "158x40" and d["batch"] == "8" and d["dtype"] == "float32"
        assert d["autograd"] is False
        assert set(d["ms"]) == set(_paths(158))
        assert d["ms"][d["path"]] == min(d["ms"].values())  # the fastest (ties at the recorded rounding)
    assert sum("fft rfft2|158x40|b8" in r.getMessage() for r in caplog.records) == 1
    text = _fft_policy.format_decisions()
    assert "rfft2" in text and "158x40" in text and "torch.fft" in text
    # the same key again: no new measurement
    with caplog.at_level(logging.DEBUG, logger="conversenet.fft"), torch.no_grad():
        _fft.rfft2(torch.randn(7, 158, 40))
    assert sum("fft rfft2|158x40|b8" in r.getMessage() for r in caplog.records) == 1
    # with autograd: a separate decision among differentiable implementations only
    _fft.rfft2(x.clone().requires_grad_())
    grad_rows = [d for d in _fft_policy.decisions() if d["autograd"]]
    assert len(grad_rows) == 1 and not {"scipy", "ducc"} & set(grad_rows[0]["ms"])
    _fft_policy.clear()


def test_exact_decisions_are_per_plane_count_and_measured_at_it(monkeypatch):
    """exact=True (the s = 1 filter): 3 and 4 planes are two decisions, each measured with its
    own count; bucketed (the transforms): one decision for both, measured at the bucket's top."""
    monkeypatch.delenv(_fft_policy.ENV, raising=False)
    monkeypatch.setattr(_tuning, "FFT_BUDGET_S", 0.0)
    made = []

    def cands():
        def maker(name):
            def make(k):
                made.append((name, k))
                return lambda: None
            return make
        return {"torch": maker("torch"), "fused": maker("fused")}

    _fft_policy.clear()
    try:
        for planes in (3, 4, 3):
            _fft_policy.choose("s1_filter", 132, 132, planes, torch.float32, False, cands(), exact=True)
        assert sorted(set(made)) == [("fused", 3), ("fused", 4), ("torch", 3), ("torch", 4)]
        rows = sorted((d["batch"], d["exact"]) for d in _fft_policy.decisions())
        assert rows == [("3", True), ("4", True)]
        text = _fft_policy.format_decisions()
        assert "batch=3 " in text and "batch=4 " in text and "batch<=" not in text
        made.clear()
        for planes in (3, 4):
            _fft_policy.choose("s1_filter", 140, 140, planes, torch.float32, False, cands())
        assert sorted(set(made)) == [("fused", 4), ("torch", 4)]
        assert [d["batch"] for d in _fft_policy.decisions() if d["size"] == "140x140"] == ["4"]
        assert "batch<=4" in _fft_policy.format_decisions()
    finally:
        _fft_policy.clear()


def test_disk_cache_roundtrip_and_bad_file(monkeypatch, tmp_path):
    path = tmp_path / "sub" / "fft.json"
    monkeypatch.setenv(_fft_policy.CACHE_ENV, str(path))
    monkeypatch.delenv(_fft_policy.ENV, raising=False)
    monkeypatch.setattr(_tuning, "FFT_BUDGET_S", 0.0)
    _fft_policy.clear()
    with torch.no_grad():
        _fft.rfft2(torch.randn(3, 158, 40))
    data = json.loads(path.read_text())
    (entries,) = data["machines"].values()
    (key,) = entries
    assert key.startswith("rfft2|158x40|b4|float32")
    # a decision on disk is used without measuring: plant "axes" and check it is taken
    entries[key]["path"] = "axes"
    path.write_text(json.dumps(data))
    _fft_policy.clear()
    called = []
    monkeypatch.setattr(_fft_policy, "_measure", lambda *a: called.append(1) or {})
    with torch.no_grad():
        _fft.rfft2(torch.randn(3, 158, 40))
    assert not called and _fft_policy.decisions()[0]["path"] == "axes"
    # malformed files are ignored, never executed or fatal
    for bad in ("{not json", json.dumps({"machines": {"x": 1}}), json.dumps([1, 2]),
                json.dumps({"machines": {next(iter(data["machines"])): {key: {"path": "os.system", "ms": {}}}}})):
        path.write_text(bad)
        _fft_policy.clear()
        monkeypatch.setattr(_fft_policy, "_measure", lambda c, *a: {k: 1.0 for k in c})
        with torch.no_grad():
            out = _fft.rfft2(torch.randn(3, 158, 40, dtype=torch.float64))
        assert out.shape == (3, 158, 21)
    _fft_policy.clear()


@pytest.mark.parametrize("s,h,w,padding,x0", [(1, 146, 22, 6, "interp"), (2, 75, 22, 2, "interp"), (2, 12, 9, 3, "zero")])
def test_converse2d_equal_whatever_path(s, h, w, padding, x0):
    """The solver (no-grad and autograd paths) gives Eq. 6's float64 result under every
    forced implementation (padded sizes 158 = 2*79, 79 -> 158, 18 -> 36)."""
    gen = torch.Generator().manual_seed(11)
    y = torch.randn(1, 3, h, w, generator=gen, dtype=torch.float64)
    k = softmax_kernel(gen, 1, 3, 5, 5)
    lam = torch.tensor([2e-3, 5e-2, 0.3], dtype=torch.float64).reshape(1, 3, 1, 1)
    crop = (slice(None), slice(None), slice(s * padding, -s * padding), slice(s * padding, -s * padding))
    yp = F.pad(y, (padding,) * 4, mode="circular")
    if x0 == "interp":
        ref = eq6(yp, k, lam, s)[crop]
    else:
        from _reference import dense_converse

        ref = torch.from_numpy(dense_converse(y.numpy(), k.numpy(), lam.reshape(1, 3).numpy(), s, padding, "circular", "zero"))
        if ref.shape[-1] != s * w:
            ref = ref[crop]
    g = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    grads = []
    for path in ["torch", "axes", "split", "scipy", "ducc"]:
        if (path == "scipy" and not HAS_SCIPY) or (path == "ducc" and not HAS_DUCC):
            continue
        with _fft_policy.force(path):
            with torch.no_grad():
                out = converse2d(y, k, lam, s, padding, "circular", x0)
                out32 = converse2d(y.float(), k.float(), lam.float(), s, padding, "circular", x0)
            yg = y.clone().requires_grad_()
            (converse2d(yg, k, lam, s, padding, "circular", x0) * g).sum().backward()
        assert float((out - ref).abs().max()) < 1e-9, path
        assert float((out32.double() - ref).abs().max()) < 1e-4, path
        grads.append(yg.grad)
    for gr in grads[1:]:
        assert torch.allclose(gr, grads[0], atol=1e-10)


ROW_PATHS = ["torch"] + (["scipy"] if HAS_SCIPY else []) + (["ducc"] if HAS_DUCC else [])


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("path", ROW_PATHS + [None])
def test_irfft2_rows_matches_explicit_dft(h, w, dtype, tol, path):
    """Rows top..top+R of the inverse, for every implementation: the explicit float64 DFT's."""
    gen = torch.Generator().manual_seed(h + w)
    z = torch.randn(2, 3, h, w // 2 + 1, generator=gen, dtype=torch.complex128)
    full = _ref_irfft2(z.numpy(), h, w)
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    for top, rows in [(0, h), (5, h - 11), (h - 1, 1)]:
        out = torch.full((2, 3, rows, w), float("nan"), dtype=dtype)
        work = z.to(cdtype, copy=True)  # overwritten
        got = _fft.irfft2_rows(work, (h, w), top, out, path=path)
        assert got is out
        ref = full[..., top : top + rows, :]
        err = np.abs(out.double().numpy() - ref).max() / np.abs(full).max()
        assert err < tol, (path, top, rows, err)


def test_irfft2_rows_checks_its_arguments():
    z = torch.zeros(2, 20, 9, dtype=torch.complex64)
    out = torch.empty(2, 10, 16)
    with pytest.raises(ValueError, match="z must be a contiguous CPU"):
        _fft.irfft2_rows(z, (20, 20), 0, out)          # 20 // 2 + 1 = 11 columns, z has 9
    with pytest.raises(ValueError, match="z must be a contiguous CPU"):
        _fft.irfft2_rows(z.transpose(1, 2).contiguous().transpose(1, 2), (20, 16), 0, out)
    with pytest.raises(ValueError, match="out must be a contiguous CPU tensor of shape"):
        _fft.irfft2_rows(z, (20, 16), 0, torch.empty(2, 10, 15))
    with pytest.raises(ValueError, match="out must be"):
        _fft.irfft2_rows(z, (20, 16), 0, torch.empty(2, 10, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="rows 11..21 are outside the 20 rows"):
        _fft.irfft2_rows(z, (20, 16), 11, out)
    with pytest.raises(ValueError, match="does not apply here"):
        _fft.irfft2_rows(z, (20, 16), 0, out, path="axes")


def test_planar_solve_takes_the_measured_row_inverse(monkeypatch):
    """A planar no-grad s = 1 solve large enough to be measured runs its inverse through
    irfft2_rows (decision recorded as op irfft2_rows), channel group by channel group, and
    equals Eq. 6's float64 result."""
    gen = torch.Generator().manual_seed(21)
    c, h, w, pad = 6, 60, 70, 3
    y = torch.randn(1, c, h, w, generator=gen, dtype=torch.float64)
    k = softmax_kernel(gen, 1, c, 5, 5)
    lam = torch.linspace(0.01, 0.2, c, dtype=torch.float64).reshape(1, c, 1, 1)
    assert 4 * (h + 2 * pad) * ((w + 2 * pad) // 2 + 1) >= _tuning.FFT_MIN_MEASURED  # a group's spectrum
    monkeypatch.setattr(_tuning, "FFT_BUDGET_S", 0.0)
    monkeypatch.setattr(_tuning, "SOLVE_CHUNK_ELEMS", 4 * (h + 2 * pad) * (w + 2 * pad))  # groups 4 + 2
    monkeypatch.delenv(_fft_policy.ENV, raising=False)
    calls = []
    real = _fft.irfft2_rows
    monkeypatch.setattr(_fft, "irfft2_rows", lambda z, *a, **kw: (calls.append(z.shape[1]), real(z, *a, **kw))[1])
    _fft_policy.clear()
    try:
        with torch.no_grad():
            out = converse2d(y.float(), k.float(), lam.float(), 1, pad, "circular")
            out64 = converse2d(y, k, lam, 1, pad, "circular")
        ops = {d["op"] for d in _fft_policy.decisions()}
    finally:
        _fft_policy.clear()
    assert "irfft2_rows" in ops and calls == [4, 2, 4, 2]
    ref = eq6(F.pad(y, (pad,) * 4, mode="circular"), k, lam, 1)[..., pad:-pad, pad:-pad]
    assert out.is_contiguous() and out64.is_contiguous()
    assert float((out64 - ref).abs().max()) < 1e-11
    assert float((out.double() - ref).abs().max()) < 2e-5
