"""Helpers shared by the tests: generated images and image folders, file digests, tiny
training configs and CLI runs (fixtures are in conftest.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "conversenet" / "configs"  # the packaged training configs, read from the files


def random_image(seed: int, shape, dtype=np.uint8) -> np.ndarray:
    """Uniform random integer image of ``shape`` over the whole range of ``dtype``."""
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def make_images(folder: Path, n: int = 4, size=(40, 48), rgb: bool = False, seed: int = 0) -> Path:
    """Smooth random images (so that denoising is learnable) saved as PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    for i in range(n):
        chans = []
        for _ in range(3 if rgb else 1):
            a, b, c, d = rng.uniform(-1, 1, 4)
            f = 0.5 + 0.25 * np.sin(6 * a * xx + 5 * b * yy) + 0.2 * np.cos(4 * c * xx - 3 * d * yy)
            chans.append(np.clip(f, 0, 1))
        arr = (np.stack(chans, -1) * 255).round().astype(np.uint8)
        Image.fromarray(arr[..., 0] if not rgb else arr).save(folder / f"img{i:02d}.png")
    return folder


def tiny_config(tmp: Path, **over) -> Dict:
    """A tiny grayscale denoising config (registry model shrunk to width 4, one block)."""
    train = make_images(tmp / "train", n=4)
    val = make_images(tmp / "val", n=2, size=(32, 32), seed=1)
    cfg = {
        "name": "tiny",
        "seed": 3,
        "threads": 1,
        "model": {"name": "converse_dncnn", "args": {"width": 4, "num_blocks": 1}},
        "degradation": {"sigma": 25.0},
        "data": {"train": str(train), "val": str(val), "patch_size": 16, "batch_size": 4,
                 "num_workers": 0, "val_images": 0},
        "train": {"total_iter": 12, "lr": 1e-3, "milestones": [8], "val_every": 6,
                  "checkpoint_every": 2, "log_every": 2},
        "log": {"progress": False, "plot": False},
    }
    for k, v in over.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return cfg


def write_config(path: Path, cfg: Dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_cli(args: List[str], timeout: Optional[float] = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conversenet", "train", *args], capture_output=True,
                          text=True, env=cli_env(), timeout=timeout)


def state(path: Path) -> Dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def max_diff(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def run_trainer(cfg_dict: Dict, out: Path, **kw) -> int:
    """Train the config dict in this process, quietly, into ``out`` (``Trainer`` keywords in ``kw``)."""
    from conversenet.train import Trainer, config_from_dict

    return Trainer(config_from_dict(cfg_dict), out_dir=out, verbose=False, **kw).run()
