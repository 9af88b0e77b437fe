"""Every packaged config (conversenet/configs) runs for 2 iterations at preset=cpu (on generated images)."""

from __future__ import annotations

import pytest
import torch

from conversenet.train import Trainer, load_config
from conversenet.train.checkpoint import load_checkpoint

from _train_helpers import CONFIG_DIR, make_images

pytestmark = pytest.mark.slow

CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if not p.name.startswith("base"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    return (make_images(d / "train", n=3, size=(56, 60), rgb=True),
            make_images(d / "val", n=2, size=(48, 52), rgb=True, seed=1))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(CONFIG_DIR).as_posix())
def test_config_runs_two_iterations_at_cpu_preset(path, folders, tmp_path):
    from conversenet import models

    name = load_config(path).model.name
    if name not in models.list_models():
        pytest.skip(f"model {name!r} is not registered yet")
    train, val = folders
    n = torch.get_num_threads()
    try:
        cfg = load_config(path, ["preset=cpu", "train.total_iter=2", "train.val_every=2",
                                 f"data.train={train}", f"data.val={val}", "data.val_images=1",
                                 "data.val_crop=32", "degradation.val_kernel=null", "threads=1"])
        assert Trainer(cfg, out_dir=tmp_path / "run", verbose=False).run() == 0
    finally:
        torch.set_num_threads(n)
    ck = load_checkpoint(tmp_path / "run" / "last.pth")
    assert ck["iteration"] == 2 and ck["model_name"] == name
    assert torch.isfinite(torch.tensor(ck["best_psnr"]))
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
