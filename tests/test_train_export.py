"""Exporting a training checkpoint as plain weights (``conversenet train CKPT --export OUT.pth``):
the file loads with ``weights_only=True`` into ``create(name, pretrained=OUT)`` strictly and
holds exactly the EMA (default) or raw model weights of the checkpoint, in float32."""

from __future__ import annotations

import torch

from conversenet.models import create
from conversenet.train import Trainer, config_from_dict
from conversenet.train.checkpoint import export_weights, load_checkpoint

from _train_helpers import run_cli, tiny_config


def _train(tmp_path, model_args, name="converse_dncnn", ema=0.5):
    cfg = tiny_config(tmp_path, **{"model.name": name, "model.args": model_args, "train.total_iter": 4,
                                   "train.checkpoint_every": 4, "train.val_every": 4, "train.ema_decay": ema})
    out = tmp_path / "run"
    n = torch.get_num_threads()
    try:
        assert Trainer(config_from_dict(cfg), out_dir=out, verbose=False).run() == 0
    finally:
        torch.set_num_threads(n)
    return out / "last.pth"


def test_cli_export_ema_and_raw_weights_load_strictly(tmp_path):
    args = {"width": 4, "num_blocks": 1}
    ckpt = _train(tmp_path, args)
    ck = load_checkpoint(ckpt)
    # EMA and raw weights must differ, otherwise the choice below would not be tested
    assert any(not torch.equal(ck["ema"][k], ck["model"][k]) for k in ck["model"])

    out = tmp_path / "w.pth"
    r = run_cli([str(ckpt), "--export", str(out)])
    assert r.returncode == 0, r.stderr
    assert "EMA weights from iteration 4" in r.stdout
    sd = torch.load(out, map_location="cpu", weights_only=True)  # a plain state dict, no pickled objects
    assert set(sd) == set(ck["ema"])
    for k, v in sd.items():
        assert v.dtype == torch.float32 and torch.equal(v, ck["ema"][k].float())

    # it loads strictly through the registry and computes what the EMA network computes
    net = create("converse_dncnn", pretrained=out, **args)
    ref = create("converse_dncnn", **args)
    ref.load_state_dict(ck["ema"])
    x = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(net(x), ref.eval()(x))

    raw = tmp_path / "raw.pth"
    r = run_cli([str(ckpt), "--export", str(raw), "--no-ema", "--quiet"])
    assert r.returncode == 0, r.stderr
    sd = torch.load(raw, map_location="cpu", weights_only=True)
    assert all(torch.equal(sd[k], ck["model"][k].float()) for k in ck["model"])


def test_cli_export_refuses_bad_input_without_writing(tmp_path):
    ckpt = _train(tmp_path, {"width": 4, "num_blocks": 1}, ema=0.0)
    out = tmp_path / "w.pth"
    out.write_bytes(b"keep")
    r = run_cli([str(ckpt), "--export", str(out)])
    assert r.returncode == 2 and "exists" in r.stderr and out.read_bytes() == b"keep"
    not_ckpt = tmp_path / "plain.pth"
    torch.save({"a": torch.ones(1)}, not_ckpt)
    r = run_cli([str(not_ckpt), "--export", str(tmp_path / "o.pth")])
    assert r.returncode == 2 and "not a conversenet training checkpoint" in r.stderr
    assert not (tmp_path / "o.pth").exists()
    r = run_cli([str(ckpt), "--export", str(tmp_path / "o.txt")])
    assert r.returncode == 2 and ".pth" in r.stderr
    r = run_cli([str(ckpt), "preset=cpu", "--export", str(tmp_path / "o.pth")])
    assert r.returncode == 2 and not (tmp_path / "o.pth").exists()


def test_export_keeps_integer_buffers_and_refuses_missing_ema(tmp_path):
    import pytest

    ckpt = _train(tmp_path, {"width": 4, "depth": 3}, name="dncnn", ema=0.0)
    out = tmp_path / "d.pth"
    with pytest.raises(ValueError, match="ema"):
        export_weights(ckpt, out, ema=True)
    assert not out.exists()
    sd = export_weights(ckpt, out, ema=None)  # no EMA in the run: the raw model
    ck = load_checkpoint(ckpt)
    ints = [k for k, v in ck["model"].items() if not v.is_floating_point()]
    assert ints and all(sd[k].dtype == ck["model"][k].dtype and torch.equal(sd[k], ck["model"][k]) for k in ints)
    net = create("dncnn", pretrained=out, width=4, depth=3)
    own = net.state_dict()
    assert set(own) == set(sd) and all(torch.equal(own[k], sd[k]) for k in sd)


def test_snapshots_hold_the_weights_of_their_iteration(tmp_path):
    """``train.snapshot_every``: plain weights of every N-th iteration, equal to what a run
    stopped at that iteration holds (the same seed makes the two runs identical)."""
    args = {"width": 4, "num_blocks": 1}
    n = torch.get_num_threads()
    try:
        outs = {}
        for total in (2, 4):
            cfg = tiny_config(tmp_path / str(total), **{"model.name": "converse_dncnn", "model.args": args,
                                                        "train.total_iter": total, "train.snapshot_every": 2,
                                                        "train.milestones": [100],
                                                        "train.checkpoint_every": 4, "train.val_every": 4})
            outs[total] = tmp_path / str(total) / "run"
            assert Trainer(config_from_dict(cfg), out_dir=outs[total], verbose=False).run() == 0
    finally:
        torch.set_num_threads(n)
    snaps = sorted(p.name for p in (outs[4] / "snapshots").iterdir())
    assert snaps == ["iter_0000002.pth", "iter_0000004.pth"]
    for total, name in ((2, "iter_0000002.pth"), (4, "iter_0000004.pth")):
        sd = torch.load(outs[4] / "snapshots" / name, map_location="cpu", weights_only=True)
        ref = load_checkpoint(outs[total] / "last.pth")["model"]
        assert set(sd) == set(ref)
        assert all(torch.equal(sd[k], ref[k].float()) for k in ref)
    create("converse_dncnn", pretrained=outs[4] / "snapshots" / "iter_0000002.pth", **args)


def test_snapshot_every_must_not_be_negative(tmp_path):
    from conversenet.train.config import ConfigError
    import pytest
    with pytest.raises(ConfigError, match="train.snapshot_every"):
        config_from_dict(tiny_config(tmp_path, **{"train.snapshot_every": -1}))
