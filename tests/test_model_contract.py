"""The model contract (conversenet.models.base): every registry model declares task,
channels, scale, takes_kernel and min_input_size, and runs through ``restore(x, kernel)``;
a user's own module is wrapped once by ``as_restoration_model``."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from conversenet.models import ModuleAdapter, RestorationModel, as_restoration_model, create, list_models
from conversenet.models.base import TASKS, class_contract
from conversenet.nn import Converse2d

# small constructor arguments per class, so that every registry model runs quickly
_SMALL = {
    "ConverseDnCNN": dict(width=4, num_blocks=1), "ConvDnCNN": dict(width=4, num_blocks=1),
    "ConvTDnCNN": dict(width=4, num_blocks=1), "DnCNN": dict(width=4, depth=3),
    "SRResNet": dict(width=4, num_blocks=1), "ConverseSRResNet": dict(width=4, num_blocks=1),
    "ConvSRResNet": dict(width=4, num_blocks=1), "ConvTSRResNet": dict(width=4, num_blocks=1),
    "ConverseNet": dict(width=4, num_blocks=1), "ConvNet": dict(width=4, num_blocks=1),
    "ConverseUSRNet": dict(width=4, num_blocks=1, iterations=1),
    "ConvUSRNet": dict(width=4, num_blocks=1, iterations=1),
    "ConverseUNet": dict(widths=(4, 8), blocks=(1, 1)),
}


def _min_side_by_loop(model: nn.Module) -> int:
    """Independent statement of the rule: max over Converse2d layers of (padding if
    circular) and (k - 2 * padding), over circular Conv2d layers of their padding, and the
    blur kernel side for kernel models."""
    need = model.blur_kernel_size if model.takes_kernel else 1
    for m in model.modules():
        if type(m) is Converse2d and m.weight is not None:
            k = m.weight.shape[-1]
            need = max(need, m.padding if m.padding_mode == "circular" else 0, k - 2 * m.padding)
        elif type(m) is nn.Conv2d and m.padding_mode == "circular":
            pads = [k // 2 for k in m.kernel_size] if m.padding == "same" else list(m.padding)
            need = max([need] + pads)
    return max(need, 1)


@pytest.mark.parametrize("name", list_models())
def test_every_registry_model_declares_the_contract(name):
    net = create(name)
    assert isinstance(net, RestorationModel)
    assert net.task in TASKS and class_contract(type(net)) == (net.task, net.takes_kernel)
    assert net.out_channels == net.in_channels >= 1
    assert net.scale == (4 if net.task == "sr" else 1)
    assert net.takes_kernel == (net.blur_kernel_size is not None and type(net).__name__.endswith("USRNet"))
    assert net.needs_kernel == net.takes_kernel  # the older name still reads the same
    if type(net).min_input_size is RestorationModel.min_input_size:  # the base-class rule
        assert net.min_input_size == _min_side_by_loop(net)
    else:  # a network that pads inside declares less
        assert 1 <= net.min_input_size <= _min_side_by_loop(net)


@pytest.mark.parametrize("name", list_models())
def test_restore_runs_every_registry_model(name):
    cls = type(create(name))
    net = create(name, **_SMALL.get(cls.__name__, {})).eval()
    side = max(16, net.min_input_size)
    x = torch.rand(2, net.in_channels, side, side)
    k = torch.full((7, 7), 1 / 49.0) if net.takes_kernel else None
    with torch.no_grad():
        y = net.restore(x, k)
        ref = net(x, k[None, None].expand(2, 1, 7, 7)) if net.takes_kernel else net(x)
    assert y.shape == (2, net.out_channels, side * net.scale, side * net.scale)
    assert torch.equal(y, ref)
    m = net.min_input_size  # the declared minimum is accepted
    with torch.no_grad():
        assert net.restore(torch.rand(1, net.in_channels, m, m), k).shape[-1] == m * net.scale


def test_restore_checks_the_kernel_argument():
    den = create("converse_dncnn", width=4, num_blocks=1)
    with pytest.raises(ValueError, match="does not take a blur kernel"):
        den.restore(torch.rand(1, 1, 16, 16), torch.ones(7, 7))
    usr = create("converse_usrnet", width=4, num_blocks=1, iterations=1)
    with pytest.raises(ValueError, match="needs a blur kernel"):
        usr.restore(torch.rand(1, 3, 16, 16))


class _Plain(nn.Module):
    """A user's network with no attributes at all."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.c(x)


class _KernelNet(nn.Module):
    task = "deblur"

    def __init__(self):
        super().__init__()
        self.in_channels, self.needs_kernel, self.blur_kernel_size = 3, True, 5
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x, kernel):
        return x * self.w + kernel.mean()


def test_adapter_defaults_for_a_plain_module():
    m = _Plain()
    a = as_restoration_model(m, task="denoise")
    assert isinstance(a, ModuleAdapter) and a.module is m
    assert (a.task, a.in_channels, a.scale, a.takes_kernel, a.declares_channels) == ("denoise", 3, 1, False, False)
    assert a.describe() == "_Plain" and a.min_input_size == 1
    assert list(a.parameters())[0] is m.c.weight  # shares the module's parameters
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(a.restore(x), m(x))


def test_adapter_reads_declared_attributes_and_passes_the_kernel():
    m = _KernelNet()
    a = as_restoration_model(m, task="denoise")  # the module's own task wins
    assert (a.task, a.takes_kernel, a.blur_kernel_size) == ("deblur", True, 5)
    x, k = torch.zeros(2, 3, 6, 6), torch.full((5, 5), 0.04)
    assert torch.allclose(a.restore(x, k), torch.full_like(x, 0.04))
    assert class_contract(_KernelNet) == ("deblur", False)  # needs_kernel is an instance attribute


def test_package_models_are_not_wrapped_and_bad_input_is_refused():
    net = create("dncnn", width=4, depth=3)
    assert as_restoration_model(net) is net
    with pytest.raises(TypeError, match="nn.Module"):
        as_restoration_model("dncnn")
