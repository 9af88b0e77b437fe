"""Checks in one module (issue 13, item 5): conversenet.checks is the one home of the argument
checks and of the lam parametrisation sigmoid(b - 9) + eps; the layers and models use it."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conversenet import checks
from conversenet.models.deblur import ImageDataStep, KernelConverse
from conversenet.nn import Converse1d, Converse2d, Converse3d

PKG = Path(checks.__file__).parent


def _sources():
    for path in sorted(PKG.rglob("*.py")):
        yield path, path.read_text(encoding="utf-8")


def test_lam_parametrisation_exists_once():
    """sigmoid appears in code (not docstrings or comments) only in conversenet/checks.py."""
    users = []
    for path, text in _sources():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Attribute) and node.attr == "sigmoid":
                users.append(path.relative_to(PKG).as_posix())
    assert users == ["checks.py"], users


def test_no_private_copies_of_the_shared_checks():
    """No module defines its own version of a shared check (the names they had before)."""
    old = {"_check_int", "_check_float", "_check_padding", "_lam_tensor", "_lam_nd", "_check_inputs",
           "_check_x", "_check_weight", "_pair", "_ntuple", "_check_lam_values", "check_pos_int", "check_image"}
    found = []
    for path, text in _sources():
        if path.name == "checks.py":
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.name in old:
                found.append(f"{path.relative_to(PKG)}:{node.name}")
    assert not found, found


@pytest.mark.parametrize("make,get", [
    (lambda: Converse2d(3, 3), lambda m: m.bias),
    (lambda: Converse1d(3, 3), lambda m: m.bias),
    (lambda: Converse3d(3, 3), lambda m: m.bias),
    (lambda: KernelConverse(3, eps=1e-3), lambda m: m.alpha),
])
def test_every_layer_uses_the_one_parametrisation(make, get):
    m = make()
    with torch.no_grad():
        get(m).copy_(torch.tensor([-3.0, 0.0, 4.0]).reshape(get(m).shape))
    b = np.array([-3.0, 0.0, 4.0])
    expect = 1 / (1 + np.exp(-(b - 9))) + m.eps  # independent float64 formula
    np.testing.assert_allclose(m.lam.detach().double().reshape(-1).numpy(), expect, rtol=1e-6)
    assert torch.equal(m.lam, checks.lam_from_bias(get(m), m.eps))


def test_image_data_step_lam_per_iteration():
    d = ImageDataStep(2, 3, eps=1e-3)
    with torch.no_grad():
        d.bias.copy_(torch.tensor([[0.0, 1.0], [2.0, 3.0], [9.0, -9.0]]))
    y = torch.rand(1, 2, 8, 8, dtype=torch.float64)
    k = torch.full((1, 2, 3, 3), 1 / 9, dtype=torch.float64)
    from conversenet.functional import converse2d

    for i in range(3):
        lam = (1 / (1 + torch.exp(-(d.bias[i].double() - 9))) + 1e-3).detach()
        assert torch.allclose(d.double()(y, k, i), converse2d(y, k, lam, 1, 0), atol=1e-12)


def test_half_parameters_get_a_float32_lam():
    bias = torch.zeros(3, dtype=torch.bfloat16)
    lam = checks.lam_from_bias(bias, 1e-5)
    assert lam.dtype == torch.float32
    assert math.isclose(float(lam[0]), 1 / (1 + math.exp(9)) + 1e-5, rel_tol=1e-6)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: checks.check_int("scale", True), ValueError, "scale must be an integer, got True"),
    (lambda: checks.check_int("padding", -1, 0), ValueError, "padding must be >= 0, got -1"),
    (lambda: checks.check_positive_int("channels", 2.0), ValueError, "channels must be a positive int"),
    (lambda: checks.check_int_tuple("kernel_size", (3, 0), 2), ValueError, "or a pair of them"),
    (lambda: checks.check_positive_number("eps", float("inf")), ValueError, "eps must be a positive number"),
    (lambda: checks.check_choice("x0", None, ("interp",), " or a tensor"), ValueError,
     r"x0 must be one of \('interp',\) or a tensor, got None"),
    (lambda: checks.check_tensor("x", np.zeros(2)), TypeError, "x must be a torch.Tensor, got ndarray"),
    (lambda: checks.check_image(torch.zeros(1, 2, 3, 3, dtype=torch.int32), 2), TypeError, "real floating"),
    (lambda: checks.check_padding(3, "circular", (2, 9), ("circular",)), ValueError,
     r"padding <= min\(H, W\)=2"),
    (lambda: checks.check_lam(torch.ones(2, 3), 1, 3, 2, torch.device("cpu"), torch.float32), ValueError,
     r"lam must be a float, a C-vector, 1xCx1x1 or NxCx1x1"),
    (lambda: checks.check_lam(1e39, 1, 3, 2, torch.device("cpu"), torch.float32), ValueError, "too large"),
    (lambda: checks.check_input_and_kernel(torch.zeros(2, 3, 5), torch.zeros(1, 3, 0), 1), ValueError,
     "at least 1, got 0"),
])
def test_check_messages_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_same_check_same_message_across_layers():
    """functional, nn and data reject a bad scale with one message."""
    from conversenet.data.degradations import downsample
    from conversenet.functional import converse1d, converse2d

    msgs = set()
    for call in (lambda: converse2d(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 3, 3), 0.1, 0),
                 lambda: converse1d(torch.rand(1, 1, 4), torch.rand(1, 1, 3), 0.1, 0),
                 lambda: Converse2d(1, 3, scale=0),
                 lambda: downsample(torch.rand(1, 1, 4, 4), 0)):
        with pytest.raises(ValueError) as e:
            call()
        msgs.add(str(e.value))
    assert msgs == {"scale must be >= 1, got 0"}
