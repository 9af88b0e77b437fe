"""Model zoo: parameter counts, shapes, gradients, save/reload, registry errors, semantics."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conversenet import models
from conversenet.models import WeightsError, create, list_models

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.usefixtures("one_thread")]  # tiny tensors (tests/conftest.py)




def nparams(m):
    return sum(p.numel() for p in m.parameters())


# small versions of every registered model, so that the sweep stays fast
SMALL = {
    "ConverseDnCNN": dict(width=8, num_blocks=2),
    "ConvDnCNN": dict(width=8, num_blocks=2),
    "ConvTDnCNN": dict(width=8, num_blocks=2),
    "DnCNN": dict(width=8, depth=4),
    "SRResNet": dict(width=8, num_blocks=1),
    "ConverseSRResNet": dict(width=8, num_blocks=1),
    "ConvSRResNet": dict(width=8, num_blocks=1),
    "ConvTSRResNet": dict(width=8, num_blocks=1),
    "ConverseNet": dict(width=8, num_blocks=1, iterations=2),
    "ConvNet": dict(width=8, num_blocks=1, iterations=2),
    "ConverseUSRNet": dict(width=8, num_blocks=1, iterations=2),
    "ConvUSRNet": dict(width=8, num_blocks=1, iterations=2),
    "ConverseUNet": dict(widths=(8, 16), blocks=(1, 1)),
}


def small(name, **kw):
    cls = models.model_info(name)["class"]
    return create(name, **SMALL[cls], **kw), SMALL[cls]


def run(model, x, kernel=None):
    return model(x, kernel) if model.needs_kernel else model(x)


def inputs(model, dtype=torch.float32, h=13, w=18, n=2):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, model.in_channels, h, w, generator=g, dtype=dtype)
    k = None
    if model.needs_kernel:
        k = torch.rand(n, 7, 7, generator=g, dtype=dtype)
        k = k / k.sum((-2, -1), keepdim=True)
    return x, k


# ---------------------------------------------------------------- parameter counts
@pytest.mark.parametrize(
    "name,count",
    [
        # paper Table 4
        ("converse_dncnn", 734_913),
        ("conv_dncnn", 734_913),
        ("convt_dncnn", 734_913),
        ("dncnn", 557_057),
        # released checkpoints (sums of the tensors in the files, weights README)
        ("converse_dncnn_official", 796_353),
        ("converse_srresnet_official", 699_072),
        ("conversenet_official", 243_267),
        ("converse_usrnet_official", 307_987),
        # MSRResNet of KAIR/BasicSR (published count of that network)
        ("srresnet", 1_517_571),
    ],
)
def test_param_counts(name, count):
    assert nparams(create(name)) == count


def test_twins_have_converse_param_count():
    # Conv/ConvT twins swap a k x k depthwise op for another with the same parameters
    assert nparams(create("conv_srresnet")) == nparams(create("converse_srresnet"))
    assert nparams(create("convt_srresnet")) == nparams(create("converse_srresnet"))
    assert nparams(create("convnet")) == nparams(create("conversenet"))


def test_conversenet_weights_shared_across_iterations():
    a = models.ConverseNet(width=8, num_blocks=2, iterations=1)
    b = models.ConverseNet(width=8, num_blocks=2, iterations=5)
    assert nparams(a) == nparams(b)


# ---------------------------------------------------------------- every model
@pytest.mark.parametrize("name", list_models())
def test_attributes_and_shape(name):
    model, _ = small(name)
    assert model.task in ("denoise", "sr", "deblur")
    assert model.needs_kernel == (name in ("converse_usrnet", "conv_usrnet", "converse_usrnet_official"))
    assert model.scale == (4 if model.task == "sr" else 1)
    x, k = inputs(model)
    with torch.no_grad():
        y = run(model, x, k)
    assert y.shape == (2, model.in_channels, 13 * model.scale, 18 * model.scale)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", list_models())
def test_float64_backward(name):
    model, _ = small(name)
    model = model.double()
    x, k = inputs(model, torch.float64, n=1)
    x.requires_grad_(True)
    run(model, x, k).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float64 and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", list_models())
def test_save_reload_identical(name, tmp_path):
    model, kw = small(name)
    # perturb every tensor so that zero-initialised ones (alpha, bias) matter too
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(0.01 * torch.randn_like(t).abs())
    model.eval()
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    fresh = create(name, pretrained=path, **kw)
    assert not fresh.training
    x, k = inputs(model)
    with torch.no_grad():
        assert torch.equal(run(model, x, k), run(fresh, x, k))


# ---------------------------------------------------------------- registry
def test_list_models_contains_required():
    need = {
        "converse_dncnn", "conv_dncnn", "convt_dncnn", "dncnn", "srresnet", "converse_srresnet",
        "conv_srresnet", "convt_srresnet", "srresnet_pixelshuffle", "srresnet_nearest",
        "srresnet_convt", "srresnet_converse", "conversenet", "convnet", "converse_usrnet",
        "conv_usrnet", "converse_dncnn_official", "converse_srresnet_official",
        "conversenet_official", "converse_usrnet_official",
    }
    assert need <= set(list_models())
    assert set(list_models("sr")) == {n for n in list_models() if "srresnet" in n}


def test_unknown_name_lists_valid():
    with pytest.raises(ValueError, match="unknown model name 'dncnn3'.*converse_dncnn"):
        create("dncnn3")


def test_unknown_override_lists_valid():
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['widht'\].*width"):
        create("converse_dncnn", widht=8)


def test_official_only_where_released():
    with pytest.raises(ValueError, match="no official weights for 'dncnn'.*converse_dncnn_official"):
        create("dncnn", pretrained="official")


def test_bad_pretrained_value():
    with pytest.raises(ValueError, match="pretrained must be"):
        create("dncnn", pretrained=3)


def test_presets_differ_from_paper_defaults_where_the_file_does():
    off = create("converse_dncnn_official")
    assert off.m_body[0].conv1[3].kernel_size == (7, 7) and off.m_body[0].conv1[3].padding == 6
    paper = create("converse_dncnn")
    assert paper.m_body[0].conv1[3].kernel_size == (5, 5) and paper.m_body[0].conv1[3].padding == 4
    assert paper.m_body[0].conv1[3].padding_mode == "circular"


def test_overrides_reach_the_operator():
    m = create("converse_dncnn", width=8, num_blocks=1, kernel_size=3, padding=2,
               padding_mode="reflect", eps=1e-4, x0="zero", kernel_init="uniform")
    op = m.m_body[0].conv1[3]
    assert (op.kernel_size, op.padding, op.padding_mode, op.eps, op.x0, op.kernel_init) == (
        (3, 3), 2, "reflect", 1e-4, "zero", "uniform")


# ---------------------------------------------------------------- input checks
def test_wrong_channels_and_types():
    m = models.ConverseDnCNN(width=8, num_blocks=1)
    with pytest.raises(ValueError, match="x must have shape"):
        m(torch.rand(1, 3, 8, 8))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        m(np.zeros((1, 1, 8, 8)))
    with pytest.raises(TypeError, match="floating"):
        m(torch.zeros(1, 1, 8, 8, dtype=torch.int64))


def test_bad_constructor_args():
    with pytest.raises(ValueError, match="upsampler"):
        models.SRResNet(upsampler="bicubic")
    with pytest.raises(ValueError, match="scale"):
        models.ConverseSRResNet(scale=5)
    with pytest.raises(ValueError, match="num_blocks"):
        models.ConverseNet(num_blocks=0)
    with pytest.raises(ValueError, match="padding_mode"):
        models.ConverseDnCNN(padding_mode="mirror")


@pytest.mark.parametrize("cls", [models.ConverseUSRNet, models.ConvUSRNet])
def test_kernel_argument(cls):
    m = cls(width=8, num_blocks=1, iterations=2).eval()
    x = torch.rand(2, 3, 12, 10)
    k = torch.rand(2, 7, 7)
    with torch.no_grad():
        a = m(x, k)
        b = m(x, k[:, None])
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="kernel must have shape"):
        m(x, torch.rand(2, 5, 5))
    with pytest.raises(ValueError, match="kernel batch"):
        m(x, torch.rand(3, 7, 7))
    with pytest.raises(TypeError, match="kernel must be a torch.Tensor"):
        m(x, None)


@pytest.mark.parametrize("scale", [2, 3])
def test_sr_other_scales(scale):
    for cls in (models.SRResNet, models.ConverseSRResNet, models.ConvSRResNet, models.ConvTSRResNet):
        m = cls(width=8, num_blocks=1, scale=scale)
        with torch.no_grad():
            assert m(torch.rand(1, 3, 7, 9)).shape == (1, 3, 7 * scale, 9 * scale)


def test_usrnet_scale_first_step():
    m = models.ConverseUSRNet(width=8, num_blocks=1, iterations=2, scale=2)
    with torch.no_grad():
        assert m(torch.rand(1, 3, 8, 10), torch.rand(1, 7, 7)).shape == (1, 3, 16, 20)


# ---------------------------------------------------------------- semantics
def test_dncnn_residual_learning():
    m = models.DnCNN(width=8, depth=3).eval()
    with torch.no_grad():
        m.model[-1].weight.zero_()
        m.model[-1].bias.zero_()
    x = torch.rand(1, 1, 9, 11)
    assert torch.equal(m(x), x)


def _bilinear_half_pixel(img, s):
    """Naive bilinear upsampling with half-pixel centres and edge clamping (float64)."""
    c, h, w = img.shape
    out = np.zeros((c, h * s, w * s))
    for i in range(h * s):
        yi = min(max((i + 0.5) / s - 0.5, 0.0), h - 1)
        y0 = int(np.floor(yi)); y1 = min(y0 + 1, h - 1); fy = yi - y0
        for j in range(w * s):
            xj = min(max((j + 0.5) / s - 0.5, 0.0), w - 1)
            x0 = int(np.floor(xj)); x1 = min(x0 + 1, w - 1); fx = xj - x0
            out[:, i, j] = ((1 - fy) * (1 - fx) * img[:, y0, x0] + (1 - fy) * fx * img[:, y0, x1]
                            + fy * (1 - fx) * img[:, y1, x0] + fy * fx * img[:, y1, x1])
    return out


@pytest.mark.parametrize("cls", [models.SRResNet, models.ConverseSRResNet])
def test_sr_global_skip_is_bilinear_half_pixel(cls):
    m = cls(width=8, num_blocks=1).double().eval()
    with torch.no_grad():
        m.conv_last.weight.zero_()
        if m.conv_last.bias is not None:
            m.conv_last.bias.zero_()
    x = torch.rand(1, 3, 5, 7, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)[0].numpy()
    np.testing.assert_allclose(y, _bilinear_half_pixel(x[0].numpy(), 4), atol=1e-12)


def _circ_conv(x, k):
    """Circular 2-D convolution, kernel centre (kh//2, kw//2), independent of the package."""
    kh, kw = k.shape[-2:]
    c = x.shape[1]
    xp = F.pad(x, (kw - 1 - kw // 2, kw // 2, kh - 1 - kh // 2, kh // 2), mode="circular")
    n = x.shape[0]
    w = k.flip(-2, -1).reshape(n * c, 1, kh, kw)
    return F.conv2d(xp.reshape(1, n * c, *xp.shape[-2:]), w, groups=n * c).reshape(x.shape)


def test_kernel_converse_minimises_data_objective():
    # d(y, k) = argmin ||y - k*x||^2 + lam ||x - y||^2 : its gradient must vanish there
    torch.manual_seed(0)
    d = models.KernelConverse(3).double()
    with torch.no_grad():
        d.alpha.copy_(torch.tensor([0.0, 3.0, 7.0]).reshape(1, 3, 1, 1))
    y = torch.rand(2, 3, 12, 10, dtype=torch.float64)
    k = torch.rand(2, 3, 7, 7, dtype=torch.float64)
    k = k / k.sum((-2, -1), keepdim=True)
    x = d(y, k).detach().requires_grad_(True)
    lam = (torch.sigmoid(d.alpha - 9) + 1e-3).detach()
    obj = (y - _circ_conv(x, k)).square().sum() + (lam * (x - y).square()).sum()
    (g,) = torch.autograd.grad(obj, x)
    assert g.abs().max() < 1e-9
    assert (x - y).abs().max() > 1e-3  # and the step did something


def test_conv_usrnet_data_step_uses_prior_estimate():
    torch.manual_seed(0)
    m = models.ConvUSRNet(width=8, num_blocks=1, iterations=2).double()
    y = torch.rand(1, 3, 12, 10, dtype=torch.float64)
    z = torch.rand(1, 3, 12, 10, dtype=torch.float64)
    k = torch.rand(1, 3, 7, 7, dtype=torch.float64)
    k = k / k.sum((-2, -1), keepdim=True)
    x = m.d(y, k, 1, z).detach().requires_grad_(True)
    lam = (torch.sigmoid(m.d.bias[1] - 9) + 1e-3).detach().reshape(1, 3, 1, 1)
    obj = (y - _circ_conv(x, k)).square().sum() + (lam * (x - z).square()).sum()
    (g,) = torch.autograd.grad(obj, x)
    assert g.abs().max() < 1e-9


def test_builtin_missing_is_clear(package_weights):
    with pytest.raises(WeightsError, match=r"no built-in weights for 'conv_dncnn'.*conversenet/weights/conv_dncnn.pth"):
        create("conv_dncnn", pretrained="builtin")
    with pytest.raises(WeightsError, match=r"no file for weight set 'dncnn'.*conversenet/weights/dncnn.pth"):
        create("dncnn", pretrained="builtin")  # the record exists, its file does not (in this stand-in folder)


def test_builtin_found(package_weights):
    src = package_weights("conv_dncnn_tiny", "conv_dncnn", {"width": 8, "num_blocks": 1})
    got = create("conv_dncnn_tiny", pretrained="builtin")
    same = create("conv_dncnn_tiny", pretrained=True)  # the weight set called so, whatever its origin
    x = torch.rand(1, 1, 9, 9)
    with torch.no_grad():
        assert torch.equal(src(x), got(x)) and torch.equal(src(x), same(x))
    with pytest.raises(ValueError, match="no official weights for 'conv_dncnn_tiny'"):
        create("conv_dncnn_tiny", pretrained="official")


@pytest.mark.parametrize("name", list_models())
def test_accelerator_matches_cpu(name, device):
    if device.type == "cpu":
        pytest.skip("accelerator check; the CPU path is covered above")
    model, _ = small(name)
    model = model.double().eval()
    x, k = inputs(model, torch.float64)
    with torch.no_grad():
        ref = run(model, x, k)
        got = run(model.to(device), x.to(device), None if k is None else k.to(device))
    torch.testing.assert_close(got.cpu(), ref, rtol=1e-9, atol=1e-9)
