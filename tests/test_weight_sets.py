"""Weight-set records (conversenet.models.weights.WeightSet) and the one loader
(``create(name, pretrained=...)`` and ``load_weights(model_or_name, path)``)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import conversenet
from conversenet.models import LoadedModel, WeightsError, create, list_models, load_weights, model_info
from conversenet.models import weights as W

AUTHORS = {  # facts of the released files (shared/weights/official/README.md), not read from the code
    "converse_dncnn_official": ("converse_dncnn.pth", "denoise", 1),
    "converse_srresnet_official": ("converse_srresnet.pth", "sr", 3),
    "converse_usrnet_official": ("converse_usrnet.pth", "deblur", 3),
    "conversenet_official": ("conversenet.pth", "deblur", 3),
}


def test_every_record_is_complete_and_a_create_name():
    sets = W.list_weights()
    assert {w.name for w in W.list_weights(origin="authors")} == set(AUTHORS)
    assert [w.name for w in W.list_weights(origin="package")] == [
        "converse_unet_blind_color", "converse_unet_blind_gray", "dncnn"]
    for ws in sets:
        assert ws.name in list_models() and model_info(ws.name)["weights"] == ws.name
        net = create(ws.name)
        assert (net.task, net.takes_kernel, net.in_channels, net.scale) == (ws.task, ws.takes_kernel,
                                                                            ws.channels, ws.scale)
        assert len(ws.sha256) == 64 and int(ws.sha256, 16) >= 0
        assert ws.scores and all(s.command.startswith("conversenet eval") and s.metrics for s in ws.scores)
        assert ws.source and ws.licence
    for name, (file, task, ch) in AUTHORS.items():
        ws = W.get_weights(name)
        assert (ws.file, ws.task, ws.channels, ws.origin) == (file, task, ch, "authors")
        assert ws.url == W.OFFICIAL_URL + file
        assert model_info(name)["official_file"] == file
    assert W.get_weights("converse_dncnn_official").sigma == 25.0
    assert dict(W.get_weights("converse_dncnn_official").args) == {"kernel_size": 7, "padding": 6}


def test_package_record_hash_is_that_of_the_shipped_file():
    ws = W.get_weights("dncnn")
    f = Path(conversenet.__file__).resolve().parent / "weights" / ws.file
    assert hashlib.sha256(f.read_bytes()).hexdigest() == ws.sha256
    assert W.locate(ws) == W.Location("found", f, "package")


def test_lookup_errors_name_what_exists():
    with pytest.raises(WeightsError, match="no weight set named 'nope'.*converse_dncnn_official"):
        W.get_weights("nope")
    assert [w.name for w in W.weights_for("converse_dncnn", origin="authors")] == ["converse_dncnn_official"]
    assert W.weights_for("convt_dncnn") == []
    with pytest.raises(ValueError, match="already registered"):
        W.register_weights(W.get_weights("dncnn"))
    with pytest.raises(ValueError, match="origin"):
        W.WeightSet(name="x", model="dncnn", task="denoise", file="x.pth", sha256="0" * 64, origin="web")
    with pytest.raises(ValueError, match="task/takes_kernel"):
        W.register_weights(W.WeightSet(name="bad_task", model="dncnn", task="sr", file="bad.pth",
                                       sha256="0" * 64, origin="package"))
    assert "bad_task" not in list_models() and "bad_task" not in {w.name for w in W.list_weights()}


def test_locate_reports_found_download_and_missing(tmp_path, monkeypatch):
    ws = W.get_weights("conversenet_official")
    env = tmp_path / "env"
    env.mkdir()
    monkeypatch.setenv(W.ENV_VAR, str(env))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    hub = tmp_path / "hub" / "checkpoints" / "conversenet"
    assert W.locate(ws) == W.Location("download", hub / ws.file, f"from {ws.url}")
    assert W.locate(ws, download=False).status == "missing"
    (env / ws.file).write_bytes(b"x")
    assert W.locate(ws) == W.Location("found", env / ws.file, f"${W.ENV_VAR}")


def test_load_weights_recognises_the_authors_file_and_says_so(official_dir, tmp_path):
    renamed = tmp_path / "whatever.pth"
    renamed.write_bytes((official_dir / "conversenet.pth").read_bytes())
    for asked in (None, "conversenet", "conversenet_official"):
        lm = load_weights(asked, renamed)
        assert isinstance(lm, LoadedModel) and lm.name == "conversenet_official"
        assert lm.weights is W.get_weights("conversenet_official")
        assert "recognised by its SHA-256 as weight set conversenet_official" in lm.source
    net = create("conversenet")
    lm = load_weights(net, renamed)  # a module: loaded into it, the record still named
    assert lm.model is net and "conversenet_official" in lm.source


def test_load_weights_errors(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found"):
        load_weights("dncnn", tmp_path / "none.pth")
    f = tmp_path / "small.pth"
    torch.save(create("converse_dncnn", width=4, num_blocks=1).state_dict(), f)
    with pytest.raises(WeightsError, match="does not fit model 'dncnn'"):
        load_weights("dncnn", f)
    with pytest.raises(WeightsError, match="cannot tell which network"):
        load_weights(None, f)
    (tmp_path / "small.json").write_text('{"model": "conversenet"}')
    with pytest.raises(WeightsError, match="describes the file as 'conversenet'"):
        load_weights("converse_dncnn", f)
    (tmp_path / "small.json").write_text('{"model": "converse_dncnn", "args": {"width": 4, "num_blocks": 1}}')
    lm = load_weights(None, f, task="denoise")
    assert lm.name == "converse_dncnn" and lm.weights is None
    with pytest.raises(WeightsError, match="holds a denoise network"):
        load_weights(None, f, task="sr")


def test_create_pretrained_values():
    with pytest.raises(ValueError, match="no weight set named 'convt_dncnn'"):
        create("convt_dncnn", pretrained=True)
    with pytest.raises(ValueError, match="pretrained must be"):
        create("dncnn", pretrained=1.5)


def test_info_lists_every_weight_set_and_where_it_is(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(conversenet.__file__).resolve().parent.parent),
           "CONVERSENET_WEIGHTS_DIR": str(tmp_path), "TORCH_HOME": str(tmp_path / "torch")}
    r = subprocess.run([sys.executable, "-m", "conversenet", "info"], capture_output=True, text=True, env=env,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"weight sets ({len(W.list_weights())}):" in out
    for ws in W.list_weights():
        assert f"  {ws.name}: " in out
    hub = tmp_path / "torch" / "hub" / "checkpoints" / "conversenet"
    assert out.count(f"would download to {hub}") == len(AUTHORS)
    assert "found: " in out and "dncnn.pth (package)" in out


def test_info_score_text_keeps_a_recorded_third_decimal():
    from conversenet.cli.info import _score_text
    # a record keeps a third decimal where two would hide a verdict (32.368 < 32.37)
    assert _score_text("psnr", 32.368) == "32.368"
    assert _score_text("psnr", 32.46) == "32.46"
    assert _score_text("psnr", 30.0) == "30.00"
    assert _score_text("ssim", 0.89706) == "0.8971"
    for ws in W.list_weights():  # every record prints with 2 or 3 decimals, never a float's noise
        for sc in ws.scores:
            for k, v in sc.metrics.items():
                text = _score_text(k, v)
                assert abs(float(text) - v) < 5e-4 and len(text.split(".")[1]) in (2, 3, 4), (ws.name, k, v)


@pytest.fixture
def without_shipped_blind():
    """The shipped blind-denoiser records removed for a test and put back after it (set up
    before ``package_weights``, so torn down after it)."""
    shipped = [W.get_weights(n) for n in ("converse_unet_blind_gray", "converse_unet_blind_color")]
    for ws in shipped:
        W.unregister_weights(ws.name)
    yield
    for ws in shipped:
        if ws.name in {w.name for w in W.list_weights()}:
            W.unregister_weights(ws.name)
        W.register_weights(ws)


def test_a_new_record_attaches_to_its_preset_and_loads(without_shipped_blind, package_weights):
    """How a weight set is added (issue #15's blind denoisers): one record; the registry
    preset of the same network gets it, and create/restore find it."""
    args = dict(model_info("converse_unet_blind_gray")["defaults"])
    assert model_info("converse_unet_blind_gray")["weights"] is None
    src = package_weights("converse_unet_blind_gray", "converse_unet", args, sigma=None)
    assert model_info("converse_unet_blind_gray")["weights"] == "converse_unet_blind_gray"
    got = create("converse_unet_blind_gray", pretrained="builtin")
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(src(x), got(x))
    with pytest.raises(ValueError, match="taken by a model with other arguments"):
        package_weights("converse_unet_blind_color", "converse_unet", {"in_channels": 1})
    W.unregister_weights("converse_unet_blind_gray")
    assert model_info("converse_unet_blind_gray")["weights"] is None  # the preset stays, without weights
    assert "converse_unet_blind_gray" in list_models()
