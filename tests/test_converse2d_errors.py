"""Bad input to converse2d / conv_down: clear errors that name the argument, raised before any FFT."""

from __future__ import annotations

import pytest
import torch

from conversenet.functional import conv_down, converse2d


class _FFTCalled(AssertionError):
    pass


@pytest.fixture
def no_fft(monkeypatch):
    """Makes every FFT entry point raise, to prove validation happens before any work."""

    def boom(*args, **kwargs):
        raise _FFTCalled("an FFT ran before the input was validated")

    for name in ("fft2", "rfft2", "ifft2", "irfft2", "fftn", "rfftn"):
        monkeypatch.setattr(torch.fft, name, boom)


def _good():
    return torch.randn(2, 3, 8, 9), torch.softmax(torch.randn(1, 3, 9), -1).reshape(1, 3, 3, 3)


def test_no_fft_fixture_is_effective(no_fft):
    x, k = _good()
    with pytest.raises(_FFTCalled):
        converse2d(x, k, 1e-2)


# (id, kwargs overrides, expected exception, regex naming the argument)
CASES = [
    ("x_3d", dict(x=torch.randn(3, 8, 9)), ValueError, r"\bx\b.*4-D"),
    ("x_5d", dict(x=torch.randn(1, 2, 3, 8, 9)), ValueError, r"\bx\b.*4-D"),
    ("weight_channels", dict(weight=torch.ones(1, 2, 3, 3) / 9), ValueError, r"weight.*channels"),
    ("weight_batch", dict(weight=torch.ones(3, 3, 3, 3) / 9), ValueError, r"weight.*batch"),
    ("weight_3d", dict(weight=torch.ones(3, 3, 3) / 9), ValueError, r"weight.*4-D"),
    ("lam_zero", dict(lam=0.0), ValueError, r"lam.*positive"),
    ("lam_negative", dict(lam=-1e-3), ValueError, r"lam.*positive"),
    ("lam_negative_tensor", dict(lam=torch.tensor([1e-2, -1e-2, 1e-2])), ValueError, r"lam.*positive"),
    ("lam_nan", dict(lam=float("nan")), ValueError, r"lam"),
    ("lam_shape_vector", dict(lam=torch.full((4,), 1e-2)), ValueError, r"lam.*shape"),
    ("lam_shape_batch", dict(lam=torch.full((3, 3, 1, 1), 1e-2)), ValueError, r"lam.*shape"),
    ("lam_shape_spatial", dict(lam=torch.full((1, 3, 2, 2), 1e-2)), ValueError, r"lam.*shape"),
    ("lam_bool", dict(lam=True), ValueError, r"lam"),
    ("lam_string", dict(lam="0.1"), ValueError, r"lam"),
    ("scale_zero", dict(scale=0), ValueError, r"scale"),
    ("scale_negative", dict(scale=-2), ValueError, r"scale"),
    ("scale_float", dict(scale=2.0), ValueError, r"scale.*integer"),
    ("scale_bool", dict(scale=True), ValueError, r"scale.*integer"),
    ("padding_negative", dict(padding=-1), ValueError, r"padding"),
    ("padding_float", dict(padding=1.5), ValueError, r"padding"),
    ("kernel_too_large", dict(weight=torch.ones(1, 3, 11, 3) / 33), ValueError, r"weight"),
    ("padding_mode_unknown", dict(padding_mode="zeros"), ValueError, r"padding_mode"),
    ("reflect_padding_too_large", dict(padding=8, padding_mode="reflect"), ValueError, r"padding"),
    ("x_int", dict(x=torch.ones(2, 3, 8, 9, dtype=torch.int64)), TypeError, r"\bx\b.*dtype"),
    ("x_uint8", dict(x=torch.ones(2, 3, 8, 9, dtype=torch.uint8)), TypeError, r"\bx\b.*dtype"),
    ("x_complex", dict(x=torch.ones(2, 3, 8, 9, dtype=torch.complex64)), TypeError, r"\bx\b.*dtype"),
    ("x_bool", dict(x=torch.ones(2, 3, 8, 9, dtype=torch.bool)), TypeError, r"\bx\b.*dtype"),
    ("x_not_tensor", dict(x=[[1.0]]), TypeError, r"\bx\b"),
    ("weight_int", dict(weight=torch.ones(1, 3, 3, 3, dtype=torch.int32)), TypeError, r"weight.*dtype"),
    ("x0_wrong_shape", dict(x0=torch.zeros(2, 3, 8, 9), scale=2), ValueError, r"x0.*shape"),
    ("x0_wrong_channels", dict(x0=torch.zeros(2, 2, 8, 9)), ValueError, r"x0.*shape"),
    ("x0_unknown", dict(x0="bicubic"), ValueError, r"x0"),
    ("x0_int_tensor", dict(x0=torch.zeros(2, 3, 8, 9, dtype=torch.int64)), TypeError, r"x0.*dtype"),
]


@pytest.mark.parametrize("overrides,exc,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_before_any_fft(no_fft, overrides, exc, pattern):
    x, k = _good()
    args = dict(x=x, weight=k, lam=1e-2, scale=1, padding=0, padding_mode="circular", x0="interp")
    args.update(overrides)
    with pytest.raises(exc, match=pattern):
        converse2d(**args)


def test_kernel_too_large_accounts_for_padding_and_scale():
    x = torch.randn(1, 1, 4, 4)
    k = torch.ones(1, 1, 9, 9) / 81
    with pytest.raises(ValueError, match="weight"):
        converse2d(x, k, 1e-2)
    # the same kernel fits once padding or scale make the solved problem big enough
    assert converse2d(x, k, 1e-2, padding=3).shape == (1, 1, 4, 4)
    assert converse2d(x, k, 1e-2, scale=3).shape == (1, 1, 12, 12)


def test_requires_grad_lam_validated_too():
    x, k = _good()
    lam = torch.full((3,), -1e-2, requires_grad=True)
    with pytest.raises(ValueError, match="lam"):
        converse2d(x, k, lam)


def test_inputs_not_modified():
    x, k = _good()
    lam = torch.tensor([1e-2, 1e-3, 1e-1])
    x0 = torch.randn(2, 3, 16, 18)
    copies = [t.clone() for t in (x, k, lam, x0)]
    converse2d(x, k, lam, 2, 2, "reflect", x0)
    for a, b in zip((x, k, lam, x0), copies):
        assert torch.equal(a, b)


CONV_DOWN_CASES = [
    ("x_3d", dict(x=torch.randn(3, 8, 9)), ValueError, r"\bx\b"),
    ("x_int", dict(x=torch.ones(1, 3, 8, 8, dtype=torch.int64)), TypeError, r"\bx\b.*dtype"),
    ("weight_channels", dict(weight=torch.ones(1, 2, 3, 3)), ValueError, r"weight"),
    ("weight_batch", dict(weight=torch.ones(4, 3, 3, 3)), ValueError, r"weight"),
    ("scale_zero", dict(scale=0), ValueError, r"scale"),
    ("scale_float", dict(scale=2.0), ValueError, r"scale"),
    ("not_divisible", dict(scale=3), ValueError, r"scale"),
    ("kernel_too_large", dict(weight=torch.ones(1, 3, 9, 3)), ValueError, r"weight"),
]


@pytest.mark.parametrize("overrides,exc,pattern", [c[1:] for c in CONV_DOWN_CASES], ids=[c[0] for c in CONV_DOWN_CASES])
def test_conv_down_bad_input(overrides, exc, pattern):
    args = dict(x=torch.randn(2, 3, 8, 8), weight=torch.ones(1, 3, 3, 3), scale=2)
    args.update(overrides)
    with pytest.raises(exc, match=pattern):
        conv_down(**args)
