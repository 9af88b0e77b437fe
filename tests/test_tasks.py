"""The per-task table (conversenet.tasks) and the one inference path built on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conversenet import evaluate as ev
from conversenet import restore as R
from conversenet.data import add_awgn_np, imresize, usrnet_degrade_np
from conversenet.inference import run_model
from conversenet.models import create, get_weights
from conversenet.tasks import TASK_NAMES, TASKS, Protocol, get_task


def test_table_rows_and_defaults():
    assert TASK_NAMES == ("denoise", "sr", "deblur") and set(TASKS) == set(TASK_NAMES)
    for t in TASKS.values():
        for blind in (False, True):
            name = t.default_model(blind=blind)
            ws = get_weights(name)  # every default is a registered weight set of the task
            assert ws.task == t.name
            assert ws.takes_kernel == (t.name == "deblur" and not blind)
    assert R.DEFAULT_MODELS == {"denoise": "converse_dncnn_official", "sr": "converse_srresnet_official",
                                "deblur": "converse_usrnet_official", "deblur_blind": "conversenet_official"}
    assert [t.options for t in TASKS.values()] == [("sigma",), ("scale",), ("sigma", "kernel")]
    # only a denoiser's input is the clean image plus noise of --sigma (visualisation, sigma warning)
    assert [t.noisy_input for t in TASKS.values()] == [True, False, False]
    with pytest.raises(ValueError, match="task must be one of"):
        get_task("inpaint")


def test_default_by_channels_when_a_row_has_one():
    t = get_task("denoise")
    # denoising: the blind grey / colour denoisers by channels; the paper's model otherwise
    assert (t.default_model(channels=1), t.default_model(channels=3)) == (
        "converse_unet_blind_gray", "converse_unet_blind_color")
    assert t.default_model() == "converse_dncnn_official"
    assert [row.picks_by_channels for row in TASKS.values()] == [True, False, False]
    assert get_task("sr").default_model(channels=3) == get_task("sr").default_model()
    row = type(t)(**{**t.__dict__, "defaults": {"default": "a", "default_3": "b"}})
    assert (row.default_model(channels=1), row.default_model(channels=3)) == ("a", "b")


def test_protocols_are_the_published_ones():
    """Table 4 / 5 / 7 settings (docs/REPRODUCTION.md), written out here, not read from code."""
    k = np.full((7, 7), 1 / 49.0)
    assert get_task("denoise").protocol() == Protocol("denoise", sigma=25.0)
    assert get_task("sr").protocol(scale=4) == Protocol("sr", scale=4, crop_border=4, test_y=True, multiple=4)
    assert get_task("deblur").protocol(kernel=k, kernel_name="k") == Protocol(
        "deblur", sigma=2.55, crop_border=1, kernel_name="k", kernel=k, multiple=8)
    assert get_task("sr").protocol(sigma=25, scale=2).sigma == 0.0  # SR adds no noise


def test_degrade_matches_the_data_functions():
    gt = (np.random.default_rng(0).random((21, 19, 3)) * 255).astype(np.uint8)
    k = np.full((7, 7), 1 / 49.0)
    g, lq = ev.degrade(gt, get_task("denoise").protocol(sigma=10))
    assert np.array_equal(lq, add_awgn_np((gt / 255.0).astype(np.float32), 10, 0))
    g, lq = ev.degrade(gt, get_task("sr").protocol(scale=2))
    assert g.shape == (20, 18, 3) and np.array_equal(lq, imresize((g / 255.0).astype(np.float32), 0.5))
    g, lq = ev.degrade(gt, get_task("deblur").protocol(kernel=k))
    assert g.shape == (16, 16, 3) and np.array_equal(lq, usrnet_degrade_np(g, k, 1, 2.55, 0))


def test_protocol_for_checks_options_against_the_table():
    den = create("converse_dncnn", width=4, num_blocks=1)
    sr = create("converse_srresnet", width=4, num_blocks=1)
    with pytest.raises(ev.EvalError, match="--kernel does not apply to the denoising protocol"):
        ev.protocol_for(den, kernel=np.ones((3, 3)))
    with pytest.raises(ev.EvalError, match="adds no noise"):
        ev.protocol_for(sr, sigma=5)
    with pytest.raises(ev.EvalError, match="does not match the model's scale"):
        ev.protocol_for(sr, scale=2)
    with pytest.raises(ev.EvalError, match="scale 1"):
        ev.protocol_for(den, scale=2)


def test_evaluate_trainer_and_restore_share_run_model():
    """evaluate.restore_lq is run_model on the whole image, clamped and rounded."""
    net = create("converse_usrnet", width=4, num_blocks=1, iterations=1).eval()
    k = np.full((7, 7), 1 / 49.0)
    proto = get_task("deblur").protocol(kernel=k)
    lq = np.random.default_rng(1).random((16, 16, 3)).astype(np.float32)
    out = ev.restore_lq(net, lq, proto)
    x = torch.from_numpy(lq.transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        ref = net(x, torch.from_numpy(k).float()[None, None])
    ref8 = (ref[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(out, ref8)
    assert torch.equal(run_model(net, x, torch.from_numpy(k).float(), tile=0), ref)
