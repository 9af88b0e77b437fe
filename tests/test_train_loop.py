"""The training loop: it learns, it resumes exactly (in process, after SIGINT and after
SIGKILL), checkpoints are never half-written, and its outputs (CSV, plot) are complete."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conversenet.train import Trainer, config_from_dict
from conversenet.train.checkpoint import load_checkpoint

from _train_helpers import cli_env, max_diff, run_cli, run_trainer, state, tiny_config, write_config


# the trainer sets its own thread count (threads: 1): restored after each test
pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_loss_decreases_and_validation_psnr_rises(tmp_path):
    cfg = tiny_config(tmp_path, **{"model.args": {"width": 8, "num_blocks": 1}, "train.lr": 2e-3,
                                   "train.milestones": [], "train.total_iter": 150, "train.val_every": 25,
                                   "train.log_every": 25, "train.checkpoint_every": 50})
    assert run_trainer(cfg, tmp_path / "run") == 0
    rows = _rows(tmp_path / "run" / "metrics.csv")
    loss = [float(r["loss"]) for r in rows if r["loss"]]
    psnr = [float(r["psnr"]) for r in rows if r["psnr"]]
    assert len(loss) == 6 and len(psnr) == 6
    assert loss[-1] < 0.5 * loss[0]
    assert psnr[-1] > psnr[0] + 5.0
    ck = load_checkpoint(tmp_path / "run" / "best.pth")
    assert ck["best_psnr"] == pytest.approx(max(psnr), abs=1e-4)  # the CSV keeps 6 digits
    assert ck["iteration"] == ck["best_iter"] == 25 * (1 + psnr.index(max(psnr)))


def test_resume_in_process_is_exact_with_ema_and_scheduler(tmp_path):
    over = {"train.total_iter": 8, "train.milestones": [3, 6], "train.ema_decay": 0.9,
            "train.checkpoint_every": 4, "train.val_every": 4}
    full = tiny_config(tmp_path, **over)
    assert run_trainer(full, tmp_path / "a") == 0
    half = tiny_config(tmp_path, **{**over, "train.total_iter": 4})
    assert run_trainer(half, tmp_path / "b") == 0
    assert load_checkpoint(tmp_path / "b" / "last.pth")["iteration"] == 4
    assert run_trainer(full, tmp_path / "b", resume=True) == 0
    a, b = load_checkpoint(tmp_path / "a" / "last.pth"), load_checkpoint(tmp_path / "b" / "last.pth")
    assert a["iteration"] == b["iteration"] == 8
    assert max_diff(a["model"], b["model"]) <= 1e-6
    assert max_diff(a["ema"], b["ema"]) <= 1e-6
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 8
    assert b["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.25)
    # the CSV of the resumed run has no duplicated iterations
    ra, rb = _rows(tmp_path / "a" / "metrics.csv"), _rows(tmp_path / "b" / "metrics.csv")
    assert [r["iter"] for r in ra] == [r["iter"] for r in rb]


def test_resume_follows_an_edited_schedule_and_says_so(tmp_path, capsys):
    # the checkpoint's scheduler state holds its own milestones; an edited config must win
    first = tiny_config(tmp_path, **{"train.total_iter": 4, "train.milestones": [100]})
    assert run_trainer(first, tmp_path / "r") == 0
    edited = tiny_config(tmp_path, **{"train.total_iter": 8, "train.milestones": [2, 6], "train.gamma": 0.1})
    Trainer(config_from_dict(edited), out_dir=tmp_path / "r", resume=True).run()
    err = capsys.readouterr()
    assert "configured schedule" in err.out + err.err and "lr now 0.0001" in err.out + err.err
    ck = load_checkpoint(tmp_path / "r" / "last.pth")
    # 1e-3, one milestone (2) passed at resume, the second (6) during the resumed part
    assert ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.1 ** 2, rel=1e-9)
    assert sorted(ck["scheduler"]["milestones"]) == [2, 6]
    # an unchanged config resumes exactly: no notice, and the learning rate is left alone
    assert Trainer(config_from_dict({**edited, "train": {**edited["train"], "total_iter": 9}}),
                   out_dir=tmp_path / "r", resume=True).run() == 0
    out = capsys.readouterr()
    assert "configured schedule" not in out.out + out.err
    assert load_checkpoint(tmp_path / "r" / "last.pth")["optimizer"]["param_groups"][0]["lr"] == \
        pytest.approx(1e-5, rel=1e-9)


def test_ema_switched_on_at_resume_averages_from_the_resumed_weights(tmp_path, capsys):
    # reference: the same run without EMA, its weights kept at every iteration
    base = {"train.milestones": [], "train.snapshot_every": 1}
    assert run_trainer(tiny_config(tmp_path, **{**base, "train.total_iter": 6}), tmp_path / "ref") == 0
    assert run_trainer(tiny_config(tmp_path, **{**base, "train.total_iter": 4}), tmp_path / "r") == 0
    on = tiny_config(tmp_path, **{**base, "train.total_iter": 6, "train.ema_decay": 0.5})
    Trainer(config_from_dict(on), out_dir=tmp_path / "r", resume=True).run()
    assert "EMA (decay 0.5) starts at iteration 4" in "".join(capsys.readouterr())
    snap = {i: torch.load(tmp_path / "ref" / "snapshots" / f"iter_{i:07d}.pth", weights_only=True)
            for i in (4, 5, 6)}
    expect = {}
    for k, w4 in snap[4].items():
        e = w4.double()
        for i in (5, 6):
            e = 0.5 * e + 0.5 * snap[i][k].double() if w4.is_floating_point() else snap[i][k]
        expect[k] = e
    ck = load_checkpoint(tmp_path / "r" / "last.pth")
    assert max_diff(ck["model"], snap[6]) <= 1e-6  # EMA does not change the training itself
    assert max_diff(ck["ema"], expect) <= 1e-6
    assert max_diff(ck["ema"], snap[6]) > 1e-6      # and it is an average, not a copy


def test_fresh_run_refuses_to_overwrite_and_resume_needs_a_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, **{"train.total_iter": 2})
    assert run_trainer(cfg, tmp_path / "r") == 0
    with pytest.raises(FileExistsError, match="--resume"):
        run_trainer(cfg, tmp_path / "r")
    assert run_trainer(cfg, tmp_path / "r", overwrite=True) == 0
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_trainer(cfg, tmp_path / "empty", resume=True)


def test_plot_and_missing_matplotlib_notice(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    cfg = tiny_config(tmp_path, **{"train.total_iter": 4, "log.plot": True})
    assert run_trainer(cfg, tmp_path / "p") == 0
    png = (tmp_path / "p" / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    assert Trainer(config_from_dict(cfg), out_dir=tmp_path / "q").run() == 0
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert not (tmp_path / "q" / "curves.png").exists()


FINAL = {"last.pth", "best.pth", "config.yaml", "metrics.csv", "curves.png"}
TMP = re.compile(r"^\..+\.\d+\.[A-Za-z0-9_]+\.tmp$")  # .NAME.PID.RANDOM.tmp (conversenet._atomic)


def _kill_and_resume(tmp_path: Path, sig: int):
    total = 120
    cfg = tiny_config(tmp_path, **{"train.total_iter": total, "train.checkpoint_every": 5,
                                   "train.val_every": 100, "train.log_every": 5})
    path = write_config(tmp_path / "tiny.yaml", cfg)
    out = tmp_path / "killed"
    # SIGINT goes to the whole process group, as Ctrl-C does (a DataLoader worker included)
    over = ["data.num_workers=1"] if sig == signal.SIGINT else []
    over.append("debug.iter_sleep_s=0.05")  # >= 6 s to interrupt it, however loaded the machine
    proc = subprocess.Popen([sys.executable, "-m", "conversenet", "train", str(path), *over, "--out", str(out)],
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    seen_ckpt_loads = 0
    try:
        # watch the folder while it trains: only final names or hidden temp names, and every
        # checkpoint seen under its final name is complete
        while proc.poll() is None:
            if out.is_dir():
                names = {p.name for p in out.iterdir()}
                assert all(n in FINAL or TMP.match(n) for n in names), names
                if "last.pth" in names:
                    it = load_checkpoint(out / "last.pth")["iteration"]
                    seen_ckpt_loads += 1
                    if it >= 10:
                        break
            time.sleep(0.02)
        assert proc.poll() is None, f"run ended before it could be interrupted: {proc.communicate()}"
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped_at = load_checkpoint(out / "last.pth")["iteration"]
    assert 10 <= stopped_at < total
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
        assert "Traceback" not in err and "continue with --resume" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert seen_ckpt_loads > 0
    assert all(n in FINAL or TMP.match(n) for n in (p.name for p in out.iterdir()))

    res = run_cli([str(path), "--out", str(out), "--resume", "--quiet"])
    assert res.returncode == 0, res.stderr
    assert load_checkpoint(out / "last.pth")["iteration"] == total
    assert not any(n.endswith(".tmp") for n in (p.name for p in out.iterdir()))  # stale temps removed

    ref = tmp_path / "reference"  # the same run without interruption (in this process, also 1 thread)
    assert run_trainer(cfg, ref) == 0
    assert max_diff(state(ref / "last.pth"), state(out / "last.pth")) <= 1e-6
    assert load_checkpoint(ref / "last.pth")["optimizer"]["state"][0]["step"] == \
        load_checkpoint(out / "last.pth")["optimizer"]["state"][0]["step"]
    return stopped_at


def test_sigint_saves_a_checkpoint_and_resume_is_exact(tmp_path):
    _kill_and_resume(tmp_path, signal.SIGINT)


def test_sigkill_then_resume_is_exact(tmp_path):
    _kill_and_resume(tmp_path, signal.SIGKILL)


def test_tensorboard_is_optional(tmp_path, capsys):
    cfg = tiny_config(tmp_path, **{"train.total_iter": 2, "log.tensorboard": True})
    assert Trainer(config_from_dict(cfg), out_dir=tmp_path / "tb").run() == 0
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert "tensorboard package is missing" in capsys.readouterr().err
    else:
        assert any((tmp_path / "tb" / "tb").iterdir())


def test_global_batch_must_split_evenly_across_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="data.batch_size: 4 is not divisible by the 3 processes"):
        Trainer(config_from_dict(tiny_config(tmp_path)), out_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_curves_label_a_thousandths_of_a_db_psnr_axis_in_db(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt
    from conversenet.train.trainer import curves_figure, plot_curves
    rows = ["iter,lr,loss,psnr,it_per_s,elapsed_s"]
    rows += [f"{i * 50},1e-4,{-31 + 0.01 * i},,1.0,{i}" for i in range(1, 41)]
    rows += [f"{k * 1000},,,{29.2629 + 0.0006 * k},,{k}" for k in range(1, 9)]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    assert plot_curves(tmp_path / "metrics.csv", tmp_path / "curves.png", "x")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = curves_figure(tmp_path / "metrics.csv", "x")  # the figure plot_curves saves
    fig.canvas.draw()
    ax = fig.axes[1]
    offset = ax.yaxis.get_offset_text().get_text()
    labels = [t.get_text().replace("\u2212", "-") for t in ax.get_yticklabels() if t.get_text()]
    plt.close(fig)
    assert offset == ""  # no "+2.926e1" above the axis
    assert labels and all(float(t) > 29 for t in labels), labels  # each tick reads as dB
