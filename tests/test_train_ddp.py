"""torchrun with two CPU processes (gloo): same global batch, same first-step gradients
as one process; only rank 0 writes files."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from _train_helpers import REPO, cli_env, max_diff, run_cli, tiny_config, write_config

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed/gloo unavailable")
def test_torchrun_two_processes_match_one_process(tmp_path):
    cfg = tiny_config(tmp_path, **{"train.total_iter": 3, "train.val_every": 3, "train.checkpoint_every": 3,
                                   "train.log_every": 1, "debug.dump_grads_at_step": 1,
                                   "data.batch_size": 4, "data.num_workers": 1})
    path = write_config(tmp_path / "tiny.yaml", cfg)
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "conversenet", "train", str(path), "--out", str(ddp)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr.count("training converse_dncnn") == 1  # rank-0-only logging
    assert "2 process(es), global batch 4" in res.stderr

    one = tmp_path / "one"
    res1 = run_cli([str(path), "--out", str(one)])
    assert res1.returncode == 0, res1.stderr

    g2 = torch.load(ddp / "grads_step1.pt", weights_only=True)
    g1 = torch.load(one / "grads_step1.pt", weights_only=True)
    assert g2["world_size"] == 2 and g1["world_size"] == 1
    assert g1["grads"].keys() == g2["grads"].keys() and len(g1["grads"]) > 0
    assert max(float(v.abs().max()) for v in g1["grads"].values()) > 1e-4  # a real gradient
    assert max_diff(g1["grads"], g2["grads"]) <= 1e-5
    assert abs(g1["loss"] - g2["loss"]) <= 1e-6
    # and training stays in step (Adam on equal gradients up to rounding)
    s2 = torch.load(ddp / "last.pth", weights_only=True)
    s1 = torch.load(one / "last.pth", weights_only=True)
    assert s2["iteration"] == s1["iteration"] == 3 and s2["world_size"] == 2
    assert max_diff(s1["model"], s2["model"]) <= 1e-4
    # only rank 0 writes: one CSV row per logged iteration, no per-rank files
    rows = (ddp / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("iter,") and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "3"]
