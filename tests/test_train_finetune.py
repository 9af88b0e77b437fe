"""Fine-tuning, ``model.args.pretrained``: a new run starts from given weights; a resumed run
does not read them again (its checkpoint wins, the file may be gone); bad values are refused
before any training, naming the key."""

from __future__ import annotations

import pytest
import torch

from conversenet.models import create
from conversenet.train import ConfigError, config_from_dict
from conversenet.train.checkpoint import export_weights, load_checkpoint
from conversenet.train.trainer import build_model

from _train_helpers import max_diff, run_cli, run_trainer, tiny_config, write_config


# the trainer sets its own thread count (threads: 1): restored after each test
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def trained(tmp_path):
    """A tiny run of 4 iterations and its raw weights exported as a plain file."""
    cfg = tiny_config(tmp_path, **{"train.total_iter": 4, "train.milestones": []})
    assert run_trainer(cfg, tmp_path / "first") == 0
    weights = tmp_path / "first.pth"
    export_weights(tmp_path / "first" / "last.pth", weights, ema=False)
    return weights


def test_new_run_starts_from_the_weights_file(tmp_path, trained):
    start = torch.load(trained, weights_only=True)
    # lr 1e-12: Adam's one step moves each weight by about 1e-12, so the model is still the start
    cfg = tiny_config(tmp_path, **{"model.args.pretrained": str(trained), "train.total_iter": 1, "train.lr": 1e-12,
                                   "train.milestones": [], "train.ema_decay": 0.9})
    assert run_trainer(cfg, tmp_path / "ft") == 0
    ck = load_checkpoint(tmp_path / "ft" / "last.pth")
    assert ck["iteration"] == 1
    assert max_diff(ck["model"], start) <= 1e-9
    assert max_diff(ck["ema"], start) <= 1e-6      # the EMA averages from the start (float32 rounding)
    assert ck["config"]["model"]["args"]["pretrained"] == str(trained)
    # without model.args.pretrained the same config starts from the seeded random weights instead
    cfg0 = tiny_config(tmp_path, **{"train.total_iter": 1, "train.lr": 1e-12, "train.milestones": []})
    assert run_trainer(cfg0, tmp_path / "scratch") == 0
    assert max_diff(load_checkpoint(tmp_path / "scratch" / "last.pth")["model"], start) > 1e-3


def test_resumed_run_takes_the_checkpoint_not_the_pretrained_file(tmp_path, trained):
    cfg = tiny_config(tmp_path, **{"model.args.pretrained": str(trained), "train.total_iter": 2,
                                   "train.milestones": []})
    assert run_trainer(cfg, tmp_path / "ft") == 0
    at2 = load_checkpoint(tmp_path / "ft" / "last.pth")["model"]
    # the pretrained file is gone (a new machine): resuming must not need it
    trained.unlink()
    cfg4 = tiny_config(tmp_path, **{"model.args.pretrained": str(trained), "train.total_iter": 4,
                                    "train.milestones": []})
    assert run_trainer(cfg4, tmp_path / "ft", resume=True) == 0
    ck = load_checkpoint(tmp_path / "ft" / "last.pth")
    assert ck["iteration"] == 4 and max_diff(ck["model"], at2) > 0.0


def test_builtin_pretrained_is_the_packaged_weight_set():
    cfg = config_from_dict({"model": {"name": "converse_unet_blind_gray", "args": {"pretrained": "builtin"}}})
    ref = create("converse_unet_blind_gray", pretrained="builtin").state_dict()
    assert max_diff(build_model(cfg).state_dict(), ref) == 0.0
    assert max_diff(build_model(cfg, pretrained=False).state_dict(), ref) > 1e-3


@pytest.mark.parametrize("value", ["missing.pth", 7])
def test_bad_pretrained_is_refused_naming_the_key(tmp_path, value, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(tmp_path, **{"model.args.pretrained": value})
    with pytest.raises(ConfigError, match=r"^model\.args: .*(not found: missing\.pth|got 7)"):
        run_trainer(cfg, tmp_path / "r")
    assert not (tmp_path / "r" / "last.pth").exists()


def test_weights_of_another_model_are_refused_before_training(tmp_path, trained):
    cfg = tiny_config(tmp_path, **{"model.args": {"width": 6, "num_blocks": 1, "pretrained": str(trained)}})
    with pytest.raises(ConfigError, match="model.args"):
        run_trainer(cfg, tmp_path / "r")
    assert not (tmp_path / "r").exists()
    # the CLI says it in one line, exit status 2
    res = run_cli([str(write_config(tmp_path / "c.yaml", cfg)), "--out", str(tmp_path / "r2")])
    assert res.returncode == 2 and "model.args" in res.stderr
    assert "Traceback" not in res.stderr
